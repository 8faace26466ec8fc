"""Memory of ``pimail run``: RSS idle and after a load, and where it goes.

``python -m bench.memory [--quick] [--before REV] [--bare-env] [--breakdown]``

Each figure is a real ``pimail run`` subprocess (tmp data dir, 127.0.0.1, READY=1 read from a fake
NOTIFY_SOCKET) started with the environment the systemd unit gives it (``MALLOC_ARENA_MAX``, see
``systemd/pimail.service``); ``--bare-env`` leaves that out, to show what it is worth. Measured:

- idle: the default config (status page and metrics on, bound to 127.0.0.1), a new data dir, 10 s
  after READY=1 (the first housekeeping round has run); then the same node restarted on its data
  dir (what a Pi runs after a reboot);
- after the load: an archive pre-filled with 1M envelopes (quick 100k), 20 peers posting 20,000
  envelopes at once (bench.load's generator, acks awaited), one history answer over the whole
  archive; RSS right after, and 10 s later (the figure: the daemon's housekeeping has run), and
  the peak (VmHWM).

RSS is split into anonymous memory (the Python heap, SQLite page caches, thread stacks) and file
pages (the shared libraries that were touched) from /proc/PID/status; ``--breakdown`` adds the
largest mappings of /proc/PID/smaps. ``--before main`` also runs the server from a ``git archive``
export of that revision (with no malloc settings, as it shipped), for a before/after in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Result, print_table

AREA = "memory"
REPO = Path(__file__).resolve().parents[1]
IDLE_TARGET_MB = 40.0
LOADED_TARGET_MB = 60.0
SETTLE_S = 5.0  # after READY=1: the first timers (retention, LEDs, discovery) have run
HOUSEKEEPING_S = 5.0  # pimail.daemon.STATS_INTERVAL_S
PEERS = 20
POSTED = 20_000
UNIT_ENV = {"MALLOC_ARENA_MAX": "2"}  # as systemd/pimail.service sets it

IDLE_CONFIG = (
    '[node]\nlisten = "127.0.0.1:0"\n'
    '[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\n'
    '[status]\nmetrics_listen = "127.0.0.1:0"\npage_listen = "127.0.0.1:0"\n'
)


@dataclass
class Memory:
    rss_mb: float
    hwm_mb: float
    anon_mb: float
    file_mb: float
    threads: int
    mappings: list[tuple[str, float]] = field(default_factory=list)
    right_after_mb: float | None = None  # RSS the moment the load ended

    def note(self) -> str:
        text = (f"anon {self.anon_mb:.1f} + file {self.file_mb:.1f} MB, peak {self.hwm_mb:.1f}, "
                f"{self.threads} threads")
        if self.right_after_mb is not None:
            text += f"; {self.right_after_mb:.1f} MB right after the load"
        return text


def read_memory(pid: int, top: int = 0) -> Memory:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        status[key] = value.split()[0] if value.split() else "0"
    mappings: list[tuple[str, float]] = []
    if top:
        sizes: Counter[str] = Counter()
        name = ""
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                name = parts[5].rsplit("/", 1)[-1] if len(parts) > 5 else "[anonymous mappings]"
            elif parts and parts[0] == "Rss:":
                sizes[name] += int(parts[1])
        mappings = [(n, kb / 1024) for n, kb in sizes.most_common(top)]
    return Memory(int(status["VmRSS"]) / 1024, int(status["VmHWM"]) / 1024, int(status["RssAnon"]) / 1024,
                  int(status["RssFile"]) / 1024, int(status["Threads"]), mappings)


class Server:
    """``pimail run`` from ``tree`` with ``env`` added to this process's environment."""

    def __init__(self, root: Path, config: str, env: dict[str, str], tree: Path,
                 python: tuple[str, ...] = ("-m", "pimail")) -> None:
        self.root, self.config, self.extra_env, self.tree = root, config, env, tree
        self.python = python  # how the interpreter is told to run pimail
        self.proc: subprocess.Popen[bytes] | None = None
        self.env: dict[str, str] = {}

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 300.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        conf = self.root / "pimail.toml"
        conf.write_text(self.config)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        addr = str(self.root / "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(addr)
        sock.bind(addr)
        sock.settimeout(0.2)
        env = {k: v for k, v in os.environ.items()
               if k not in ("JOURNAL_STREAM", "RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC",
                            "MALLOC_ARENA_MAX")}
        env.update(self.extra_env)
        env["NOTIFY_SOCKET"] = addr
        env["PYTHONPATH"] = str(self.tree)  # the checkout under test, not the venv's editable one
        self.env = env
        with open(self.root / "stderr.log", "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, *self.python, "run", "--config", str(conf),
                 "--data-dir", str(self.data_dir)],
                cwd=self.tree, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if b"READY=1" in sock.recv(4096).split(b"\n"):
                        return
                except TimeoutError:
                    if self.proc.poll() is not None:
                        tail = (self.root / "stderr.log").read_text(errors="replace")[-500:]
                        raise RuntimeError(f"pimail run exited {self.proc.returncode}: {tail}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError("pimail run: no READY=1 in time") from None
        finally:
            sock.close()

    def enode(self) -> str:
        from pimail.appliance import control

        status = control.call(control.socket_path(self.data_dir, self.env), "status", timeout=30)
        url = str(status["enode"])
        return url.split("@")[0] + "@127.0.0.1:" + url.rsplit(":", 1)[1].split("?")[0]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def idle(root: Path, env: dict[str, str], tree: Path, top: int) -> tuple[Memory, Memory]:
    """(first start on a new data dir, restart on the same data dir), each 10 s after READY=1."""
    out = []
    for _ in range(2):
        server = Server(root, IDLE_CONFIG, env, tree)
        server.start()
        try:
            time.sleep(SETTLE_S + HOUSEKEEPING_S)
            out.append(read_memory(server.pid, top))
        finally:
            server.stop()
    return out[0], out[1]


def loaded(root: Path, env: dict[str, str], tree: Path, top: int, prefilled: Path, posted: int) -> Memory:
    """RSS after ``PEERS`` peers posted ``posted`` envelopes and one history answer over everything."""
    from bench.load import history, post_load, preseal, server_config

    shutil.copytree(prefilled, root / "data")
    config = server_config(root).read_text()
    server = Server(root, config, env, tree)
    server.start()
    try:
        enode = server.enode()
        raws, _first, _last = preseal(posted)
        asyncio.run(post_load(enode, raws, PEERS))
        n = asyncio.run(history(enode, 0, int(time.time()) + 60))[0]
        if n < posted:
            raise RuntimeError(f"history answered {n} envelopes, fewer than the {posted} posted")
        right_after = read_memory(server.pid)
        time.sleep(SETTLE_S + HOUSEKEEPING_S)  # the daemon's housekeeping has had its turn
        settled = read_memory(server.pid, top)
        settled.right_after_mb = right_after.rss_mb
        return settled
    finally:
        server.stop()


def measure(quick: bool, trees: dict[str, tuple[Path, dict[str, str]]], top: int) -> list[Result]:
    from bench.load import prefill

    archived = 100_000 if quick else 1_000_000
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pimail-mem-") as tmp:
        base = Path(tmp)
        fill_s = prefill(base / "prefilled", archived)
        for label, (tree, env) in trees.items():
            tag = f" [{label}]" if len(trees) > 1 else ""
            envs = " ".join(f"{k}={v}" for k, v in env.items()) or "no malloc settings"
            first, restart = idle(base / f"idle-{label}", env, tree, top)
            after = loaded(base / f"load-{label}", env, tree, top, base / "prefilled", POSTED)
            results += [
                Result(AREA, f"idle RSS, first start{tag}", first.rss_mb, "MB", IDLE_TARGET_MB,
                       higher_is_better=False, note=first.note()),
                Result(AREA, f"idle RSS, restart on its data dir{tag}", restart.rss_mb, "MB", IDLE_TARGET_MB,
                       higher_is_better=False, note=restart.note() + f"; {envs}"),
                Result(AREA, f"RSS after the load, {archived // 1000}k archived{tag}", after.rss_mb, "MB",
                       LOADED_TARGET_MB, higher_is_better=False,
                       note=after.note() + f"; {PEERS} peers posted {POSTED:,}, one history answer "
                       f"over all; prefill {fill_s:.0f} s"),
            ]
            for name, memory in (("idle (restart)", restart), ("after the load", after)):
                for mapping, mb in memory.mappings:
                    results.append(Result(AREA, f"  {name}{tag}: {mapping}", mb, "MB"))
    return results


def export_tree(rev: str, dest: Path) -> Path:
    """``git archive rev`` of this repository into ``dest`` (read-only use of the repo)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "x", "-C", str(dest)], input=archive, check=True)
    # bytecode ahead, as the .deb ships it: a first start that compiles would weigh more
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(dest / "pimail")], check=True)
    return dest


def run(quick: bool) -> list[Result]:
    return measure(quick, {"this tree": (REPO, UNIT_ENV)}, 0)


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="100k archived instead of 1M")
    ap.add_argument("--before", metavar="REV",
                    help="also run the server from git REV (e.g. main), side by side")
    ap.add_argument("--bare-env", action="store_true", help="also run this tree without MALLOC_ARENA_MAX")
    ap.add_argument("--breakdown", action="store_true", help="largest mappings of /proc/PID/smaps")
    a = ap.parse_args()
    trees: dict[str, tuple[Path, dict[str, str]]] = {}
    with tempfile.TemporaryDirectory(prefix="pimail-mem-tree-") as tmp:
        if a.before:
            trees[a.before] = (export_tree(a.before, Path(tmp) / "before"), {})
        if a.bare_env:
            trees["this tree, no malloc env"] = (REPO, {})
        trees["this tree"] = (REPO, UNIT_ENV)
        print_table(measure(a.quick, trees, 12 if a.breakdown else 0))


if __name__ == "__main__":
    main()
