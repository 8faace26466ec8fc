"""Operator-facing daemon figures: time to READY=1, stop time, status snapshot and control socket cost.

``python -m bench.daemon [--quick]``. The start/stop figures run ``pimail run`` as a subprocess with
a real NOTIFY_SOCKET, as systemd would; the snapshot/control figures run a Daemon in this process
with real peers connected over TCP.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result, print_table

AREA = "daemon"
REPO = Path(__file__).resolve().parents[1]
READY_TARGET_S = 5.0  # on a desktop core; the unit allows TimeoutStartSec=120 for a slow SD card
STOP_TARGET_S = 3.0  # SIGTERM to exit with an idle archive (TimeoutStopSec=60)
STATUS_RTT_TARGET_MS = 50.0  # `pimail status` feels instant


def _config(root: Path) -> Path:
    conf = root / "pimail.toml"
    conf.write_text(
        '[node]\nlisten = "127.0.0.1:0"\n[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\n'
        '[status]\npage = false\nmetrics = false\n'
    )
    return conf


def start_stop_once() -> tuple[float, float]:
    """Seconds from exec to READY=1, and from SIGTERM to exit."""
    root = Path(tempfile.mkdtemp(prefix="pmb-"))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    addr = str(root / "notify.sock")
    sock.bind(addr)
    sock.settimeout(0.5)
    env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "RUNTIME_DIRECTORY")}
    env["NOTIFY_SOCKET"] = addr
    try:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "pimail", "run", "--config", str(_config(root)), "--data-dir",
             str(root / "data")],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        ready = None
        deadline = t0 + 120
        while ready is None and time.perf_counter() < deadline:
            try:
                if sock.recv(4096).startswith(b"READY=1"):
                    ready = time.perf_counter() - t0
            except TimeoutError:
                if proc.poll() is not None:
                    raise RuntimeError("pimail run exited before READY=1") from None
        if ready is None:
            proc.kill()
            raise RuntimeError("no READY=1 within 120 s")
        t1 = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        if proc.wait(60) != 0:
            raise RuntimeError(f"pimail run exited with {proc.returncode} after SIGTERM")
        return ready, time.perf_counter() - t1
    finally:
        sock.close()
        shutil.rmtree(root, ignore_errors=True)


async def _inprocess(peers: int, calls: int) -> tuple[float, float]:
    """(status snapshots per second, control-socket status round trip p50 in ms) with ``peers`` peers."""
    from pimail.appliance import control
    from pimail.configfile import load_config
    from pimail.crypto.keys import Enode
    from pimail.daemon import Daemon
    from pimail.whisper.client import client_session

    root = Path(tempfile.mkdtemp(prefix="pmb-"))
    conf = _config(root)
    loaded = load_config(conf)
    loaded.config.node.data_dir = root / "data"
    daemon = Daemon(loaded.config, config_path=conf, env={})
    await daemon.start()
    sessions = []
    try:
        assert daemon.server is not None and daemon.key is not None
        enode = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port)
        for _ in range(peers):
            cm = client_session(enode)
            await cm.__aenter__()
            sessions.append(cm)
        while daemon.status_snapshot()["peer_count"] < peers:
            await asyncio.sleep(0.05)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 1.0:
            daemon.status_snapshot()
            n += 1
        per_s = n / (time.perf_counter() - t0)
        path = control.socket_path(root / "data", {})
        rtts = []
        for _ in range(calls):
            t = time.perf_counter()
            await asyncio.to_thread(control.call, path, "status")
            rtts.append((time.perf_counter() - t) * 1000)
        return per_s, statistics.median(rtts)
    finally:
        for cm in sessions:
            await cm.__aexit__(None, None, None)
        await daemon.stop()
        shutil.rmtree(root, ignore_errors=True)


def run(quick: bool) -> list[Result]:
    rounds = 1 if quick else 3
    starts, stops = zip(*(start_stop_once() for _ in range(rounds)), strict=True)
    peers = 4 if quick else 16
    per_s, rtt = asyncio.run(_inprocess(peers, 20 if quick else 100))
    return [
        Result(AREA, "pimail run: exec to READY=1 (median)", statistics.median(starts), "s",
               READY_TARGET_S, higher_is_better=False),
        Result(AREA, "SIGTERM to exit, archive flushed (median)", statistics.median(stops), "s",
               STOP_TARGET_S, higher_is_better=False),
        Result(AREA, f"status snapshot with {peers} peers", per_s, "calls/s"),
        Result(AREA, f"control socket `status` round trip p50 ({peers} peers)", rtt, "ms",
               STATUS_RTT_TARGET_MS, higher_is_better=False),
    ]


if __name__ == "__main__":
    print_table(run("--quick" in sys.argv))
