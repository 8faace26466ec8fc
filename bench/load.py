"""End-to-end load run against a real mailserver process, and the same load against others.

``python -m bench.load [--quick] [--target ENODE [--target-pid PID] [--target-name NAME]
[--target-form F] [--target-password P]]... [--protocol shh|waku] [--procs N --conns N]``

pimail side: ``pimail run`` as a subprocess (tmp data dir, 127.0.0.1, ephemeral port, status page and
metrics off, READY=1 read from a fake NOTIFY_SOCKET), with its shipped archive defaults (power-loss
safe acks, adaptive group commit). The server's per-peer flood limit is raised for this run
(``rate_limit_packets_per_s``), as a load test is a deliberate flood.

The load comes from several generator processes (bench/loadgen.py) posting as relaying peers do;
what is measured, in order, is in bench/loadmeasure.py: ingest flat out (with the server's
CPU-seconds per 1,000 envelopes, its CPU use and a "generator-bound" verdict under 90 %), history
of the whole window (≥ 100,000 envelopes) five times (median, min, max), 100-envelope pages,
ack latency p99 at 50 env/s and at 80 % of the measured maximum, RSS and bytes written, and
exec-to-READY=1 with a pre-filled archive (1M; quick 100k).

Each ``--target`` (status-go's statusd, go-ethereum's ``wnode -mailserver``, another pimail) gets
the same load, one after the other, in the same run; ``--target-pid`` may be the server or a
wrapper around it (``timeout``, a shell): the process listening on the enode's port is measured,
and without ``--target-pid`` that process is looked up. A target that sends no Batch Acks
(go-ethereum 1.8) is counted through history, with its quiet period subtracted (it never sends
125). ``--target-form legacy --target-password wwww`` for ``wnode -test``.
"""

from __future__ import annotations

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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Result, print_table
from bench.loadmeasure import (
    DEFAULT_PASSWORD,
    Measures,
    Sizes,
    Target,
    archive_count,
    compare_rows,
    disk_bytes,
    history,
    measure,
    rows_for,
    side_by_side,
)
from bench.procfs import proc_cpu_s, proc_status_kb, proc_write_bytes, server_pid
from pimail.mailserver.client import client_whisper_config

__all__ = [  # what bench/faults.py and the tests take from here
    "ServerProc", "archive_count", "disk_bytes", "history", "post_load", "preseal", "proc_cpu_s",
    "proc_status_kb", "proc_write_bytes", "run_load",
]

AREA = "load"
REPO = Path(__file__).resolve().parents[1]
TTL = 3600
SENT_PER_SECOND = 2000  # preseal: envelopes per second of sent time
BATCH = 50  # envelopes per Messages packet
WINDOW = 32  # post_load (the faults' single-process poster): unacknowledged packets per connection
POW_TARGET = 0.000002  # pimail's (and status-go's) default min_pow
TOPIC = b"\xbe\x4c\x00\x01"
# The posting peers, like history clients, take whatever the server relays back (go-ethereum 1.8
# sends megabyte Messages packets under load).
LOAD_CLIENT = client_whisper_config()


# -- the server under test -------------------------------------------------------------------------


def server_config(root: Path, rate_limit: float = 100_000.0) -> Path:
    conf = root / "pimail.toml"
    conf.write_text(
        '[node]\nlisten = "127.0.0.1:0"\nmax_peers = 400\nmax_pending_handshakes = 256\n'
        f"[whisper]\nrate_limit_packets_per_s = {rate_limit}\nrate_limit_tolerance = 100000\n"
        '[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\nmax_age = "0"\n'
        "[mailserver]\nmin_request_interval_s = 0\nbucket_rate_per_s = 0\n"
        "[status]\npage = false\nmetrics = false\n"
    )
    return conf


def cpu_limit_prefix() -> tuple[list[str], str]:
    """A command prefix pinning to one core, and what was applied (cgroup quota handled by caller)."""
    if shutil.which("taskset"):
        return ["taskset", "-c", "0"], "taskset -c 0"
    return [], "no taskset"


def _cpu_cgroup_root() -> tuple[Path, int] | None:
    """(mount point, version) of a cgroup hierarchy with the cpu controller, from /proc/mounts."""
    found: tuple[Path, int] | None = None
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    for line in mounts:
        parts = line.split()
        if len(parts) < 4:
            continue
        where, fstype, opts = Path(parts[1]), parts[2], parts[3].split(",")
        if fstype == "cgroup2":
            try:
                if "cpu" in (where / "cgroup.controllers").read_text().split():
                    return where, 2
            except OSError:
                continue
        elif fstype == "cgroup" and "cpu" in opts and found is None:
            found = (where, 1)
    return found


def cgroup_path(pid: int) -> Path | None:
    root = _cpu_cgroup_root()
    return None if root is None else root[0] / f"pimail-bench-{os.getpid()}-{pid}"


def cgroup_limit(pid: int, quota_pct: int = 50) -> str:
    """Put ``pid`` in a fresh cpu cgroup limited to quota_pct% of one core, if we may (v2 or v1)."""
    root = _cpu_cgroup_root()
    if root is None:
        return "no cpu cgroup mounted, no quota"
    group = root[0] / f"pimail-bench-{os.getpid()}-{pid}"
    try:
        group.mkdir()
        if root[1] == 2:
            (group / "cpu.max").write_text(f"{quota_pct * 1000} 100000\n")
        else:
            (group / "cpu.cfs_period_us").write_text("100000\n")
            (group / "cpu.cfs_quota_us").write_text(f"{quota_pct * 1000}\n")
        (group / "cgroup.procs").write_text(f"{pid}\n")
    except OSError as exc:
        with contextlib.suppress(OSError):
            group.rmdir()
        return f"no cgroup quota ({exc.strerror or exc})"
    return f"cgroup v{root[1]} cpu quota {quota_pct}% of one core"


@dataclass
class ServerProc:
    """``pimail run`` in a subprocess; READY=1 through a fake NOTIFY_SOCKET."""

    root: Path
    cpu_limited: bool = False
    rate_limit: float = 100_000.0
    proc: subprocess.Popen[bytes] | None = None
    ready_s: float = 0.0
    enode: str = ""
    limits: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 300.0) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        addr = str(self.root / "notify.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(addr)
        sock.bind(addr)
        sock.settimeout(0.2)
        env = {k: v for k, v in os.environ.items()
               if k not in ("JOURNAL_STREAM", "RUNTIME_DIRECTORY", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
        env["NOTIFY_SOCKET"] = addr
        self.env = env
        prefix, self.limits = cpu_limit_prefix() if self.cpu_limited else ([], "")
        log = open(self.root / "stderr.log", "wb")  # noqa: SIM115 — the child keeps it
        try:
            t0 = time.perf_counter()
            self.proc = subprocess.Popen(
                [*prefix, sys.executable, "-m", "pimail", "run", "--config",
                 str(server_config(self.root, self.rate_limit)), "--data-dir", str(self.data_dir)],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log,
            )
            if self.cpu_limited:
                self.limits += ", " + cgroup_limit(self.proc.pid)
            deadline = t0 + timeout
            while True:
                try:
                    if b"READY=1" in sock.recv(4096).split(b"\n"):
                        self.ready_s = time.perf_counter() - t0
                        break
                except TimeoutError:
                    if self.proc.poll() is not None:
                        tail = (self.root / "stderr.log").read_text(errors="replace")[-500:]
                        raise RuntimeError(
                            f"pimail run exited {self.proc.returncode} before READY=1: {tail}") from None
                    if time.perf_counter() > deadline:
                        raise RuntimeError("pimail run: no READY=1 in time") from None
        finally:
            sock.close()
            log.close()
        # the advertised address may be the LAN one; the bench dials loopback
        url = str(self.status()["enode"])
        self.enode = url.split("@")[0] + "@127.0.0.1:" + url.rsplit(":", 1)[1].split("?")[0]

    def status(self) -> dict[str, Any]:
        from pimail.appliance import control

        result: dict[str, Any] = control.call(control.socket_path(self.data_dir, self.env), "status",
                                              timeout=30)
        return result

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self._drop_cgroup()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self._drop_cgroup()

    def _drop_cgroup(self) -> None:
        group = cgroup_path(self.pid) if self.cpu_limited else None
        if group is not None:
            with contextlib.suppress(OSError):
                group.rmdir()


# -- the load generator ----------------------------------------------------------------------------


def preseal(n: int, target: float = POW_TARGET, salt: bytes | None = None,
            per_second: int = SENT_PER_SECOND) -> tuple[list[bytes], int, int]:
    """``n`` distinct envelopes meeting both PoW formulas at ``target``; returns (raws, first sent,
    last sent). Sent times rise by one second every ``per_second`` envelopes and end now, as a busy
    network's would (one sent second for all would make every row key land in one second's range
    in random order: the worst case for the archive's write pattern, not a relay's)."""
    from pimail.envelope.seal import seal

    salt = salt if salt is not None else os.urandom(8)
    first = int(time.time()) - (n - 1) // per_second
    raws = []
    for i in range(n):
        sent = first + i // per_second
        data = salt + i.to_bytes(8, "big") + bytes(200 + i % 80)
        res = seal(sent + TTL, TTL, TOPIC, data, target, work_time_s=5.0)
        if not res.met:
            raise RuntimeError(f"could not seal envelope {i} at PoW {target}")
        raws.append(res.envelope.raw)
    return raws, first, first + (n - 1) // per_second


def _chunks(items: list[bytes], size: int) -> Iterator[list[bytes]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


async def post_load(enode_url: str, raws: list[bytes], conns: int, *, want_acks: bool = True,
                    timeout: float = 300.0, protocol: str = "auto") -> tuple[float, int]:
    """Post ``raws`` over ``conns`` connections; (seconds from first send to last ack, acked envs).

    Without acks (a server that sends none), the time is to the last send.
    """
    from pimail.crypto.keccak import keccak256
    from pimail.crypto.keys import Enode
    from pimail.envelope.codec import encode_envelope_list
    from pimail.whisper import status as st
    from pimail.whisper.client import client_session

    enode = Enode.parse(enode_url)
    shares = [raws[i::conns] for i in range(conns)]
    acked = 0
    async with contextlib.AsyncExitStack() as stack:
        sessions = [await stack.enter_async_context(client_session(enode, LOAD_CLIENT, timeout=30,
                                                                         protocol=protocol))
                    for _ in range(conns)]

        async def drive(idx: int) -> int:
            s = sessions[idx]
            pending: dict[bytes, int] = {}
            slots = asyncio.Semaphore(WINDOW)
            done = asyncio.Event()
            got = 0

            class Acks:
                def on_batch_ack(self, peer: object, h: bytes) -> None:
                    nonlocal got
                    if peer is s.peer and h in pending:
                        got += pending.pop(h)
                        slots.release()
                        if not pending:
                            done.set()

            s.whisper.listeners.append(Acks())
            for chunk in _chunks(shares[idx], BATCH):
                payload = encode_envelope_list(chunk)
                if want_acks:
                    await slots.acquire()
                    pending[keccak256(payload)] = len(chunk)
                    done.clear()
                await s.peer.send_wait(s.whisper.chosen(s.peer), st.MESSAGES, payload)
            if want_acks and pending:
                await asyncio.wait_for(done.wait(), timeout)
            elif not want_acks:
                # no acks to wait for: let the last packets leave before the connection closes
                await asyncio.sleep(1.0)
            return got

        t0 = time.perf_counter()
        acked = sum(await asyncio.gather(*(drive(i) for i in range(conns))))
        return time.perf_counter() - t0, acked


def prefill(data_dir: Path, n: int) -> float:
    """Fill a pimail SQLite archive with ``n`` envelopes directly (no server); returns seconds."""
    from pimail.archive import open_archive
    from pimail.archive.base import ArchivedEnvelope
    from pimail.config import ArchiveConfig
    from pimail.envelope.codec import Envelope

    async def fill() -> float:
        archive = open_archive(ArchiveConfig(max_age="0", min_free_disk="0"), data_dir, None)
        await archive.open()
        t0 = time.perf_counter()
        base = int(time.time()) - 86_400 * 7
        blob = os.urandom(300)
        try:
            chunk = 20_000
            for off in range(0, n, chunk):
                batch = []
                for i in range(off, min(n, off + chunk)):
                    sent = base + i // 20
                    env = Envelope.build(sent + 60, 60, (i % 64).to_bytes(4, "big"),
                                         blob[: 220 + i % 80] + i.to_bytes(8, "big"), i)
                    batch.append(ArchivedEnvelope(sent, env.hash, env.topic, env.expiry, env.raw, sent))
                await archive.submit(batch)
            return time.perf_counter() - t0
        finally:
            await archive.close()

    data_dir.mkdir(parents=True, exist_ok=True)
    return asyncio.run(fill())


# -- the run ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetSpec:
    """A ``--target`` as given: the enode, and optionally its PID (or a wrapper's), name, history form
    and password."""

    enode: str
    pid: int | None = None
    name: str = ""
    form: str = "direct"
    password: str = DEFAULT_PASSWORD


def enode_port(enode: str) -> int | None:
    try:
        return int(enode.rsplit(":", 1)[1].split("?")[0])
    except (IndexError, ValueError):
        return None


async def probe(enode: str, protocol: str) -> tuple[bool, str, str]:
    """(sends Batch Acks, protocol spoken, client name) from one short session with the server."""
    from pimail.crypto.keys import Enode
    from pimail.whisper.client import client_session

    async with client_session(Enode.parse(enode), LOAD_CLIENT, timeout=30, protocol=protocol) as s:
        status = s.state.status
        acks = bool(getattr(status, "confirmations", False))
        if getattr(status, "fields", 6) < 5:
            acks = False  # a 4-field shh Status (go-ethereum 1.8): no confirmations at all
        return acks, s.protocol, s.peer.client_id


def resolve_target(spec: TargetSpec, index: int, protocol: str) -> Target:
    pid, note = server_pid(enode_port(spec.enode), spec.pid)
    acks, spoken, client = asyncio.run(probe(spec.enode, protocol))
    name = spec.name or (client.split("/")[0] if client else f"target{index + 1}")
    return Target(name, spec.enode, pid, f"{note}; {client}, {spoken}", None, acks, spec.form, spec.password)


def sizes_for(quick: bool, n: int | None = None, **kw: Any) -> Sizes:
    base = Sizes(n=n or (100_000 if quick else 200_000), pages=10 if quick else 40,
                 latency_s=10.0 if quick else 20.0)
    return Sizes(**{**base.__dict__, **{k: v for k, v in kw.items() if v is not None}})


def run_load(quick: bool, target: str | None = None, target_pid: int | None = None,
             cpu_limited: bool = False, *, n: int | None = None, prefill_n: int | None = None,
             target_form: str = "direct", target_password: str = DEFAULT_PASSWORD,
             protocol: str = "auto", targets: list[TargetSpec] | None = None,
             procs: int | None = None, conns: int | None = None, history_runs: int | None = None,
             pages: int | None = None, latency_s: float | None = None,
             tables: list[str] | None = None) -> list[Result]:
    """pimail, then each target, under the same load; rows per server and pimail/other ratios.
    ``tables`` (if given) receives the side-by-side Markdown table."""
    from pimail.config import ArchiveConfig

    specs = list(targets or [])
    if target:
        specs.insert(0, TargetSpec(target, target_pid, "", target_form, target_password))
    sizes = sizes_for(quick, n, procs=procs, conns=conns, history_runs=history_runs, pages=pages,
                      latency_s=latency_s, protocol=protocol)
    prefill_n = prefill_n or (100_000 if quick else 1_000_000)
    area = AREA + ("-1cpu" if cpu_limited else "")
    flush_ms = ArchiveConfig().flush_interval_ms
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pimail-load-") as tmp:
        root = Path(tmp)
        server = ServerProc(root / "srv", cpu_limited=cpu_limited)
        server.root.mkdir()
        server.start()
        try:
            me = Target("pimail", server.enode, server.pid, "", server.data_dir, True,
                        flush_interval_ms=flush_ms)
            mine = asyncio.run(measure(me, sizes))
        finally:
            server.stop()
        limits = f" [{server.limits}]" if cpu_limited else ""
        results += rows_for(area, mine, {"ack_p99_low_ms": 2.0 * flush_ms, "ack_p99_high_ms": 1000.0},
                            limits)
        # start-to-READY with a big archive
        big = ServerProc(root / "big", cpu_limited=cpu_limited)
        big.root.mkdir()
        fill_s = prefill(big.data_dir, prefill_n)
        big.start()
        big.stop()
        results.append(Result(area, f"exec to READY=1 with {prefill_n:,} archived", big.ready_s, "s",
                              higher_is_better=False, note=f"prefill took {fill_s:.1f} s{limits}"))
    everyone: list[Measures] = [mine]
    for i, spec in enumerate(specs):
        other_t = resolve_target(spec, i, protocol)
        other = asyncio.run(measure(other_t, sizes))
        everyone.append(other)
        results += rows_for(other_t.name[:11], other, first_suffix=f" [{other_t.pid_note}]")
        results += compare_rows(mine, other, ingest_target=1.5)
    if tables is not None:
        tables.append(side_by_side(everyone))
    return results


def run(quick: bool) -> list[Result]:
    return run_load(quick)


class _TargetOption:
    """argparse action: ``--target`` starts a target, the ``--target-*`` options after it are its own."""

    @staticmethod
    def make(key: str) -> type:
        import argparse

        class Action(argparse.Action):
            def __call__(self, parser: argparse.ArgumentParser, ns: argparse.Namespace, value: Any,
                         option: str | None = None) -> None:
                specs: list[dict[str, Any]] = ns.target_specs
                if key == "enode":
                    specs.append({"enode": value})
                    return
                if not specs:
                    parser.error(f"{option} must follow the --target it belongs to")
                if key in specs[-1]:
                    parser.error(f"{option} given twice for one --target")
                specs[-1][key] = value

        return Action


def _parse(argv: list[str] | None = None) -> Any:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    ap.set_defaults(target_specs=[])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--target", action=_TargetOption.make("enode"), help="another mailserver's enode "
                    "(repeatable; the --target-* options after it are its own)")
    ap.add_argument("--target-pid", type=int, action=_TargetOption.make("pid"),
                    help="its PID, or a wrapper's (timeout, a shell); default: whoever listens on its port")
    ap.add_argument("--target-name", action=_TargetOption.make("name"), help="its name in the table")
    ap.add_argument("--target-form", action=_TargetOption.make("form"),
                    choices=("direct", "envelope", "legacy"),
                    help="how to ask it for history (default direct; go-ethereum wnode: legacy)")
    ap.add_argument("--target-password", action=_TargetOption.make("password"),
                    help="its mailserver password for the envelope forms (wnode -test: wwww)")
    ap.add_argument("--cpu-limited", action="store_true")
    ap.add_argument("--protocol", choices=("auto", "waku", "shh"), default="auto",
                    help="post and fetch over waku/1 or shh/6 (default auto: waku when the server offers it)")
    ap.add_argument("-n", type=int, help="envelopes ingested (default 100,000; full 200,000)")
    ap.add_argument("--procs", type=int, help="generator processes (default 4)")
    ap.add_argument("--conns", type=int, help="connections per generator process (default 2)")
    a = ap.parse_args(argv)
    a.specs = [TargetSpec(**spec) for spec in a.target_specs]
    return a


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    args = _parse()
    side: list[str] = []
    print_table(run_load(args.quick, None, None, args.cpu_limited, protocol=args.protocol, n=args.n,
                         targets=args.specs, procs=args.procs, conns=args.conns, tables=side))
    if side and args.specs:
        print()
        print(side[0])
