"""End-to-end load run against a real mailserver process.

``python -m bench.load [--quick] [--target ENODE --target-pid PID] [--cpu-limited]``

pimail side: ``pimail run`` as a subprocess (tmp data dir, 127.0.0.1, ephemeral port, status page and
metrics off, READY=1 read from a fake NOTIFY_SOCKET). The load generator opens several RLPx
connections (NodeServer.connect + WhisperService, via pimail.whisper.client), posts envelopes sealed
before the timed phase so that they meet both PoW formulas at the server's target, and counts Batch
Acks (sent by pimail only once the batch is durable in the archive). The server's per-peer flood
limit is raised for this run (``rate_limit_packets_per_s``), as a load test is a deliberate flood;
the packets carry ``BATCH`` envelopes each.

Measured: ingest rate (archive count at the end, checked against what was sent), history delivery
rate and time to first envelope (pimail.mailserver.client), 100-envelope page p95, server RSS
(/proc/PID/status), bytes on disk per envelope, bytes written per archived byte (/proc/PID/io), and
exec-to-READY=1 with a pre-filled archive (1M; quick 100k).

Another mailserver (``--target``) gets the same load; its ingest is counted through history (its
archive cannot be read from here), and it may never send 125 (go-ethereum), so history ends after a
quiet period, which is subtracted from its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import Result, print_table
from pimail.mailserver.client import client_whisper_config

AREA = "load"
REPO = Path(__file__).resolve().parents[1]
TTL = 3600
SENT_PER_SECOND = 2000  # preseal: envelopes per second of sent time
BATCH = 50  # envelopes per Messages packet
WINDOW = 32  # unacknowledged packets per connection (the server allows 64; its group commit waits up to 1 s)
POW_TARGET = 0.000002  # pimail's (and status-go's) default min_pow
TOPIC = b"\xbe\x4c\x00\x01"
QUIET_S = 2.0
DEFAULT_PASSWORD = "status-offline-inbox"  # Status's mailserver password (pimail's default)
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


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def proc_write_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def archive_count(data_dir: Path) -> int:
    """Envelopes in a pimail SQLite archive, read-only, without disturbing the writer."""
    import sqlite3

    db = data_dir / "archive.sqlite"
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return int(con.execute("SELECT count(*) FROM envelopes").fetchone()[0])
    finally:
        con.close()


def disk_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("archive.sqlite*") if p.is_file())


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
                    timeout: float = 300.0) -> tuple[float, int]:
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
        sessions = [await stack.enter_async_context(client_session(enode, LOAD_CLIENT, timeout=30))
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
                await s.peer.send_wait("shh", st.MESSAGES, payload)
            if want_acks and pending:
                await asyncio.wait_for(done.wait(), timeout)
            elif not want_acks:
                # no acks to wait for: let the last packets leave before the connection closes
                await asyncio.sleep(1.0)
            return got

        t0 = time.perf_counter()
        acked = sum(await asyncio.gather(*(drive(i) for i in range(conns))))
        return time.perf_counter() - t0, acked


async def history(enode_url: str, lower: int, upper: int, limit: int = 1000,
                  stop_after: int | None = None, form: str = "direct",
                  password: str = DEFAULT_PASSWORD) -> tuple[int, float, float, bool]:
    """(envelopes, seconds, seconds to first envelope, completed with 125) for one history fetch."""
    from pimail.config import NodeConfig
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.mailserver.client import HistoryClient, HistoryOptions, HistorySummary, connect_trusted
    from pimail.node.server import NodeServer
    from pimail.whisper.service import WhisperService

    enode = Enode.parse(enode_url)
    with tempfile.TemporaryDirectory(prefix="pimail-hist-") as tmp:
        key = NodeKey.generate()
        cw = WhisperService(client_whisper_config(), archive=None, clock_trusted=lambda: True)
        cn = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=Path(tmp)), [cw])
        await cn.start()
        try:
            await connect_trusted(cn, cw, enode)
            summary = HistorySummary()
            opts = HistoryOptions(form=form, password=password, lower=lower, upper=upper, limit=limit,
                                  quiet_s=QUIET_S)
            n, first = 0, 0.0
            t0 = time.perf_counter()
            gen = HistoryClient(key, cw, cn).fetch(enode, opts, summary)
            assert isinstance(gen, AsyncGenerator)
            try:
                async for _ in gen:
                    n += 1
                    if n == 1:
                        first = time.perf_counter() - t0
                    if stop_after is not None and n >= stop_after:
                        break
            finally:
                await gen.aclose()
            secs = time.perf_counter() - t0
            if stop_after is None and not summary.completed:
                secs -= QUIET_S
            return n, max(secs, 1e-9), first, summary.completed
        finally:
            await cn.stop()
            await cw.close()


# -- one measured run ------------------------------------------------------------------------------


@dataclass
class Measures:
    label: str
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


async def measure(enode: str, pid: int | None, raws: list[bytes], sent: tuple[int, int], conns: int,
                  pages: int, label: str, data_dir: Path | None, acks: bool, form: str = "direct",
                  password: str = DEFAULT_PASSWORD) -> Measures:
    """The same measurements against any mailserver; ``form``/``password`` are how history is asked
    (go-ethereum's wnode only understands the legacy form, with its own password)."""
    m = Measures(label)
    w0 = proc_write_bytes(pid) if pid else None
    secs, acked = await post_load(enode, raws, conns, want_acks=acks)
    lower, upper = sent[0] - 5, sent[1] + 5
    if data_dir is not None:
        held = archive_count(data_dir)
        m.notes["ingest"] = f"{acked:,} acked, archive holds {held:,}, {conns} connections"
        if held < acked:  # an acknowledged envelope must be durable: say so loudly
            m.notes["ingest"] += f"; {acked - held:,} ACKNOWLEDGED ENVELOPES MISSING"
    else:
        held = -1
    if data_dir is None:
        # another server's archive cannot be read from here: count through history until it
        # holds everything or stops growing (the settle time counts as ingest time)
        t_settle, prev = time.perf_counter(), -1
        while True:
            held = (await history(enode, lower, upper, form=form, password=password))[0]
            if held >= len(raws) or (held == prev and held > 0) or time.perf_counter() - t_settle > 60:
                break
            prev = held
            await asyncio.sleep(1.0)
        secs += time.perf_counter() - t_settle
        m.notes["ingest"] = (f"counted through history: {held:,} of {len(raws):,}, time to last "
                             f"{'ack' if acks else 'send'} + settle, {conns} connections")
    n, hsecs, first, completed = await history(enode, lower, upper, form=form, password=password)
    m.values["ingest"] = min(held, len(raws)) / secs
    m.values["ingest_held"] = held
    m.values["history_rate"] = n / hsecs
    m.values["first_ms"] = first * 1000
    m.notes["history"] = f"{n:,} envelopes in {hsecs:.2f} s" + ("" if completed else ", no 125 (quiet end)")
    samples = []
    for _ in range(pages):
        _, psecs, _, _ = await history(enode, lower, upper, limit=100, stop_after=100, form=form,
                                       password=password)
        samples.append(psecs * 1000)
    samples.sort()
    m.values["page_p95_ms"] = samples[max(0, int(len(samples) * 0.95) - 1)] if samples else 0.0
    m.values["page_p50_ms"] = statistics.median(samples) if samples else 0.0
    wal = data_dir / "archive.sqlite-wal" if data_dir is not None else None
    wal_bytes = wal.stat().st_size if wal is not None and wal.exists() else None
    if pid:
        m.values["rss_mb"] = proc_status_kb(pid, "VmRSS") / 1024
        m.values["hwm_mb"] = proc_status_kb(pid, "VmHWM") / 1024
        w1 = proc_write_bytes(pid)
        if w0 is not None and w1 is not None:
            raw_total = sum(len(r) for r in raws)
            m.values["written_per_byte"] = (w1 - w0) / raw_total
            m.notes["written"] = f"sent times rising {SENT_PER_SECOND:,} envelopes per second"
            if wal_bytes is not None:  # not yet copied home: the next checkpoint writes it
                m.notes["written"] += f"; + up to {wal_bytes / raw_total:.2f}x at next checkpoint"
    if data_dir is not None and held > 0:
        m.values["disk_per_env"] = disk_bytes(data_dir) / held
        if wal_bytes is not None:
            m.notes["disk"] = f"incl. the WAL file ({wal_bytes / 1e6:.1f} MB) and 1 MB reserve"
    return m


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


ROWS = [  # key, name, unit, higher is better
    ("ingest", "ingest into the archive, end to end", "env/s", True),
    ("history_rate", "history delivery (one window, 1000/page)", "env/s", True),
    ("first_ms", "history: time to first envelope", "ms", False),
    ("page_p95_ms", "100-envelope page p95", "ms", False),
    ("rss_mb", "server RSS after the run", "MB", False),
    ("hwm_mb", "server peak RSS (VmHWM)", "MB", False),
    ("disk_per_env", "bytes on disk per envelope", "B", False),
    ("written_per_byte", "bytes written per archived byte", "x", False),
]


def run_load(quick: bool, target: str | None = None, target_pid: int | None = None,
             cpu_limited: bool = False, *, n: int | None = None, prefill_n: int | None = None,
             target_form: str = "direct", target_password: str = DEFAULT_PASSWORD) -> list[Result]:
    n = n or (20_000 if quick else 100_000)
    conns = 4 if quick else 8
    pages = 10 if quick else 40
    prefill_n = prefill_n or (100_000 if quick else 1_000_000)
    area = AREA + ("-1cpu" if cpu_limited else "")
    results: list[Result] = []
    t0 = time.perf_counter()
    raws, first, last = preseal(n)
    seal_s = time.perf_counter() - t0
    results.append(Result(area, f"pre-seal {n:,} envelopes (PoW {POW_TARGET:g}, both formulas)",
                          n / seal_s, "env/s", note="setup, outside the timed phase"))
    mine: Measures
    with tempfile.TemporaryDirectory(prefix="pimail-load-") as tmp:
        root = Path(tmp)
        server = ServerProc(root / "srv", cpu_limited=cpu_limited)
        server.root.mkdir()
        server.start()
        try:
            mine = asyncio.run(measure(server.enode, server.pid, raws, (first, last), conns, pages, "pimail",
                                       server.data_dir, True))
        finally:
            server.stop()
        limits = f" [{server.limits}]" if cpu_limited else ""
        for key, name, unit, hib in ROWS:
            if key in mine.values:
                note = mine.notes.get(key.split("_")[0], "") + limits
                results.append(Result(area, name, mine.values[key], unit, higher_is_better=hib, note=note))
        # start-to-READY with a big archive
        big = ServerProc(root / "big", cpu_limited=cpu_limited)
        big.root.mkdir()
        fill_s = prefill(big.data_dir, prefill_n)
        big.start()
        big.stop()
        results.append(Result(area, f"exec to READY=1 with {prefill_n:,} archived", big.ready_s, "s",
                              higher_is_better=False, note=f"prefill took {fill_s:.1f} s{limits}"))
    if target:
        other_raws, other_first, other_last = preseal(n)
        other = asyncio.run(measure(target, target_pid, other_raws, (other_first, other_last), conns,
                                    pages, "target", None, False, target_form, target_password))
        for key, name, unit, hib in ROWS:
            if key in mine.values and key in other.values and other.values[key] > 0:
                results.append(Result("compare", f"{name} pimail/other", mine.values[key] / other.values[key],
                                      "ratio", higher_is_better=hib,
                                      note=f"other: {other.values[key]:,.2f} {unit}"))
    return results


def run(quick: bool) -> list[Result]:
    return run_load(quick)


if __name__ == "__main__":
    import argparse
    import logging

    logging.basicConfig(level=logging.WARNING)
    ap = argparse.ArgumentParser(prog="python -m bench.load")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--target")
    ap.add_argument("--target-pid", type=int)
    ap.add_argument("--target-form", choices=("direct", "envelope", "legacy"), default="direct")
    ap.add_argument("--target-password", default=DEFAULT_PASSWORD)
    ap.add_argument("--cpu-limited", action="store_true")
    a = ap.parse_args()
    print_table(run_load(a.quick, a.target, a.target_pid, a.cpu_limited, target_form=a.target_form,
                         target_password=a.target_password))
