"""The measurements of one load run against one mailserver (pimail or another), side by side.

``measure(target, sizes)`` runs, in order:

1. ingest, flat out: ``sizes.n`` envelopes from the multi-process generator (bench/loadgen.py),
   timed from the release to the last Batch Ack; the server's CPU-seconds per 1,000 envelopes, its
   CPU use in the timed phase (share of one core) and the time its threads spent waiting for a
   CPU (a crowded machine). Under 90 % busy the verdict says "generator-bound".
   A server without acks (go-ethereum 1.8) is counted through history until it holds all.
2. history of the whole window (≥ 100,000 envelopes at the default sizes), ``sizes.history_runs``
   times over fresh connections: the median with min and max.
3. 100-envelope pages: p50 and p95.
4. ack latency, post to Batch Ack, p99 at 50 env/s and at 80 % of step 1's rate (servers with
   acks only), from posting clients that ask for nothing relayed (as phones post).
5. RSS, peak RSS, bytes written per archived byte and on disk (pimail: its archive is readable).
"""

from __future__ import annotations

import asyncio
import statistics
import tempfile
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import Result, spread, weighted_percentile
from bench.loadgen import Generator, GenResult, Link, new_plan
from bench.procfs import proc_cpu_s, proc_sched_s, proc_status_kb, proc_write_bytes

BUSY_FLOOR = 0.9  # the server under this share of one core while ingesting: the generator set the pace
QUIET_S = 2.0  # go-ethereum never sends 125: a history fetch ends after this much silence
DEFAULT_PASSWORD = "status-offline-inbox"  # Status's mailserver password (pimail's default)
LOW_RATE = 50.0  # env/s: a quiet node's ack latency
HIGH_SHARE = 0.8  # of the measured maximum: a busy node's ack latency
SETTLE_LIMIT_S = 60.0


@dataclass(frozen=True)
class Target:
    """One mailserver under load."""

    name: str
    enode: str
    pid: int | None = None
    pid_note: str = ""
    data_dir: Path | None = None  # pimail's: its archive can be counted directly
    acks: bool = True  # it sends Batch Acks (go-ethereum 1.8 does not)
    form: str = "direct"  # how history is asked: direct (pimail, status-go) or legacy (wnode)
    password: str = DEFAULT_PASSWORD
    flush_interval_ms: int | None = None  # pimail's group-commit interval: the low-rate ack target


@dataclass(frozen=True)
class Sizes:
    n: int = 100_000
    procs: int = 4
    conns: int = 2  # per generator process
    history_runs: int = 5
    pages: int = 10
    latency_s: float = 10.0  # each latency phase
    protocol: str = "auto"


@dataclass
class Measures:
    label: str
    values: dict[str, float] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


class CpuWindow:
    """The server's CPU and run-queue wait between ``start()`` and ``stop()`` (called by the
    generator right before the release and right after the last report)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.t = [0.0, 0.0]
        self.cpu: list[float | None] = [None, None]
        self.sched: list[tuple[float, float] | None] = [None, None]

    def _read(self, i: int) -> None:
        self.t[i] = time.monotonic()
        if self.pid:
            self.cpu[i] = proc_cpu_s(self.pid)
            self.sched[i] = proc_sched_s(self.pid)

    def start(self) -> None:
        self._read(0)

    def stop(self) -> None:
        self._read(1)

    @property
    def wall(self) -> float:
        return max(self.t[1] - self.t[0], 1e-9)

    @property
    def cpu_s(self) -> float | None:
        a, b = self.cpu
        return None if a is None or b is None else b - a

    @property
    def wait_share(self) -> float | None:
        a, b = self.sched
        return None if a is None or b is None else (b[1] - a[1]) / self.wall


def verdict(busy: float, wait: float | None, in_flight_waits: int) -> str:
    """What set the pace: the server (≥ 90 % of one core), a crowded machine (busy + waiting for a
    CPU ≥ 90 %), or the generator (then how often it stood at its in-flight cap, i.e. waited for
    the server's acks)."""
    if busy >= BUSY_FLOOR:
        return "server-bound"
    if wait is not None and busy + wait >= BUSY_FLOOR:
        return f"generator-bound by CPU time, but the server waited for a CPU {wait:.0%} of the time"
    capped = f"; in-flight cap reached {in_flight_waits:,} times" if in_flight_waits else ""
    return "generator-bound" + capped


async def history(enode_url: str, lower: int, upper: int, limit: int = 1000,
                  stop_after: int | None = None, form: str = "direct",
                  password: str = DEFAULT_PASSWORD, protocol: str = "auto") -> tuple[int, float, float, bool]:
    """(envelopes, seconds, seconds to first envelope, completed with 125) for one history fetch,
    as a Status client asks: a history-only connection (empty bloom, light: nothing live is pushed
    at it) paging with the server's cursors."""
    from pimail.config import NodeConfig
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.mailserver.client import HistoryClient, HistoryOptions, HistorySummary, client_whisper_config
    from pimail.node.server import NodeServer
    from pimail.whisper.client import ClientStack

    enode = Enode.parse(enode_url)
    with tempfile.TemporaryDirectory(prefix="pimail-hist-") as tmp:
        key = NodeKey.generate()
        stack = ClientStack(client_whisper_config(), protocol, live=False)
        cn = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=Path(tmp)), stack.capabilities)
        await cn.start()
        try:
            summary = HistorySummary()
            opts = HistoryOptions(form=form, password=password, lower=lower, upper=upper, limit=limit,
                                  quiet_s=QUIET_S)
            n, first = 0, 0.0
            t0 = time.perf_counter()
            gen = HistoryClient(key, stack, cn).fetch(enode, opts, summary)
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
            await stack.close()


def archive_count(data_dir: Path) -> int:
    """Distinct envelopes a pimail SQLite archive holds, read-only, without disturbing the writer:
    the rows of the SQLite index and the acknowledged ones still only in its ack log (read first,
    so an index batch committed meanwhile is counted once, by hash)."""
    import sqlite3

    from pimail.archive.sqlite.acklog import AckLog
    from pimail.crypto.keccak import keccak256

    db = data_dir / "archive.sqlite"
    hashes: set[bytes] = set()
    log_path = db.with_name(db.name + ".acklog")
    if log_path.exists():
        log = AckLog(log_path, log_path.stat().st_size, sync=False)
        try:
            hashes.update(keccak256(e.raw) for e in log.open().envelopes)
        finally:
            log.close()
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        hashes.update(keccak256(raw) for (raw,) in con.execute("SELECT raw FROM envelopes"))
    finally:
        con.close()
    return len(hashes)


def disk_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.glob("archive.sqlite*") if p.is_file())


async def _generate(t: Target, sizes: Sizes, gen: Generator, n: int,
                    rate: float | None = None) -> tuple[GenResult, CpuWindow]:
    plan = new_plan(t.enode, n, procs=sizes.procs, conns=sizes.conns, rate=rate, want_acks=t.acks,
                    protocol=sizes.protocol)
    window = CpuWindow(t.pid)
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(None, gen.run, plan, window.start, window.stop)
    return result, window


async def _ingest(t: Target, sizes: Sizes, g: Generator, m: Measures) -> tuple[int, int, int, int]:
    """Step 1; returns (envelopes held, lower, upper of the history window, raw bytes posted)."""
    gen, win = await _generate(t, sizes, g, sizes.n)
    lower, upper = gen.plan.sent_range()
    lower, upper = lower - 5, upper + 5
    secs = gen.seconds()
    conns = f"{gen.plan.procs} processes × {gen.plan.conns} connections"
    if gen.closed:
        m.notes["closed"] = f"{len(gen.closed)} posting connections closed early: {gen.closed[0]}"
    cpu = win.cpu_s
    if cpu is not None:
        busy = cpu / win.wall
        wait = win.wait_share
        m.values["cpu_per_1000"] = cpu / sizes.n * 1000
        m.values["busy_pct"] = busy * 100
        waited = f", waiting for a CPU {wait:.0%}" if wait is not None else ""
        m.notes["cpu"] = (f"server busy {busy:.0%} of one core in the timed phase{waited}: "
                          f"{verdict(busy, wait, gen.in_flight_waits)}; generator "
                          f"{gen.generator_cpu_s:.1f} CPU-s")
        m.notes["busy"] = m.notes["cpu"]
    if t.data_dir is not None:
        held = archive_count(t.data_dir)
        m.notes["ingest"] = f"{gen.acked:,} acked, archive holds {held:,}, {conns}"
        if held < gen.acked:  # an acknowledged envelope must be durable: say so loudly
            m.notes["ingest"] += f"; {gen.acked - held:,} ACKNOWLEDGED ENVELOPES MISSING"
        m.values["ingest"] = min(held, gen.acked) / secs
    elif t.acks:
        held = gen.acked
        m.notes["ingest"] = f"{gen.acked:,} of {sizes.n:,} acked, {conns}"
        m.values["ingest"] = gen.acked / secs
    else:
        # no acks: timed to the Pong after each connection's last packet; the count comes from
        # history, asked until it holds everything or stops growing
        t_settle, prev = time.perf_counter(), -1
        while True:
            held = (await history(t.enode, lower, upper, form=t.form, password=t.password,
                                  protocol=sizes.protocol))[0]
            stalled = held == prev and held > 0
            if held >= sizes.n or stalled or time.perf_counter() - t_settle > SETTLE_LIMIT_S:
                break
            prev = held
            await asyncio.sleep(1.0)
        m.notes["ingest"] = (f"no acks: timed to the Pong after the last packet; history holds "
                             f"{held:,} of {sizes.n:,}, {conns}")
        m.values["ingest"] = min(held, sizes.n) / secs
    m.values["ingest_held"] = held
    return held, lower, upper, gen.raw_bytes


async def _history_runs(t: Target, sizes: Sizes, m: Measures, lower: int, upper: int, held: int) -> None:
    rates, firsts, counts = [], [], []
    ended_quiet = False
    for _ in range(sizes.history_runs):
        n, hsecs, first, completed = await history(t.enode, lower, upper, form=t.form, password=t.password,
                                                   protocol=sizes.protocol)
        rates.append(n / hsecs)
        firsts.append(first * 1000)
        counts.append(n)
        ended_quiet |= not completed
    r, f = spread(rates), spread(firsts)
    m.values["history_rate"] = r.median
    m.values["first_ms"] = f.median
    got = f"{min(counts):,}" if min(counts) == max(counts) else f"{min(counts):,}–{max(counts):,}"
    short = f"; {held - min(counts):,} FEWER THAN HELD" if min(counts) < held else ""
    m.notes["history"] = (f"{got} envelopes a run, {r.note()} env/s" + short
                          + (", no 125 (quiet end)" if ended_quiet else ""))
    m.notes["first"] = f.note(",.1f", " ms")
    samples = []
    for _ in range(sizes.pages):
        _, psecs, _, _ = await history(t.enode, lower, upper, limit=100, stop_after=100, form=t.form,
                                       password=t.password, protocol=sizes.protocol)
        samples.append(psecs * 1000)
    samples.sort()
    if samples:
        m.values["page_p95_ms"] = samples[max(0, int(len(samples) * 0.95 + 0.5) - 1)]
        m.values["page_p50_ms"] = statistics.median(samples)
        m.notes["page"] = f"{len(samples)} fetches of the first 100, fresh connection each"


async def _latency(t: Target, sizes: Sizes, g: Generator, m: Measures, key: str, rate: float) -> None:
    n = max(sizes.procs * sizes.conns, int(rate * sizes.latency_s))
    gen, _ = await _generate(t, sizes, g, n, rate=rate)
    lat = gen.latencies()
    closed = f"; {len(gen.closed)} connections closed: {gen.closed[0]}" if gen.closed else ""
    if not lat:
        m.notes[key] = "no acks" + closed
        return
    p99 = weighted_percentile(lat, 0.99) * 1000
    p50 = weighted_percentile(lat, 0.50) * 1000
    m.values[key] = p99
    posting = max(max((c.last_send for c in gen.conns), default=gen.start) - gen.start, 1e-9)
    achieved = gen.sent / posting
    late = f", {gen.late_packets} packets late" if gen.late_packets else ""
    m.notes[key] = (f"{rate:,.0f} env/s offered ({achieved:,.0f} sent/s), {gen.acked:,} envelopes, "
                    f"p50 {p50:,.0f} ms, max {max(v for v, _ in lat) * 1000:,.0f} ms{late}{closed}")


async def _open(link: Link) -> Generator:
    g = Generator(link)
    await asyncio.get_running_loop().run_in_executor(None, g.__enter__)
    return g


async def measure(t: Target, sizes: Sizes) -> Measures:
    """Every step against one server (module docstring). Ingest comes from relaying peers (full
    nodes, connected while the pool is empty); they leave before history is asked, as the bench's
    long-lived envelopes would otherwise keep a pool no real node holds (status-go and go-ethereum
    scan their whole pool for every peer every 300 ms). Ack latency is measured from posting
    clients (phones: nothing is relayed to them)."""
    m = Measures(t.name)
    loop = asyncio.get_running_loop()
    g = await _open(Link(t.enode, sizes.procs, sizes.conns, sizes.protocol, live=True))
    try:
        w0 = proc_write_bytes(t.pid) if t.pid else None
        held, lower, upper, raw_total = await _ingest(t, sizes, g, m)
        w1 = proc_write_bytes(t.pid) if t.pid else None
    finally:
        await loop.run_in_executor(None, g.close)
    await _history_runs(t, sizes, m, lower, upper, held)
    if t.acks and m.values.get("ingest", 0) > 0:
        g = await _open(Link(t.enode, sizes.procs, sizes.conns, sizes.protocol, live=False))
        try:
            await _latency(t, sizes, g, m, "ack_p99_low_ms", LOW_RATE)
            await _latency(t, sizes, g, m, "ack_p99_high_ms", HIGH_SHARE * m.values["ingest"])
        finally:
            await loop.run_in_executor(None, g.close)
    wal = t.data_dir / "archive.sqlite-wal" if t.data_dir is not None else None
    wal_bytes = wal.stat().st_size if wal is not None and wal.exists() else None
    if t.pid:
        m.values["rss_mb"] = proc_status_kb(t.pid, "VmRSS") / 1024
        m.values["hwm_mb"] = proc_status_kb(t.pid, "VmHWM") / 1024
        if w0 is not None and w1 is not None:
            m.values["written_per_byte"] = (w1 - w0) / raw_total
            m.notes["written"] = "during the ingest phase"
            if wal_bytes is not None:  # not yet copied home: the next checkpoint writes it
                m.notes["written"] += f"; WAL holds {wal_bytes / 1e6:.1f} MB for the next checkpoint"
    if t.data_dir is not None and held > 0:
        m.values["disk_per_env"] = disk_bytes(t.data_dir) / archive_count(t.data_dir)
        if wal_bytes is not None:
            m.notes["disk"] = f"incl. the WAL file ({wal_bytes / 1e6:.1f} MB) and 1 MB reserve"
    return m


ROWS = [  # key, name, unit, higher is better
    ("ingest", "ingest into the archive, end to end", "env/s", True),
    ("cpu_per_1000", "server CPU-seconds per 1,000 envelopes posted", "s", False),
    ("busy_pct", "server CPU use while ingesting (one core = 100)", "%", False),
    ("history_rate", "history delivery (whole window, 1000/page)", "env/s", True),
    ("first_ms", "history: time to first envelope", "ms", False),
    ("page_p95_ms", "100-envelope page p95", "ms", False),
    ("ack_p99_low_ms", "ack latency p99 at 50 env/s", "ms", False),
    ("ack_p99_high_ms", "ack latency p99 at 80 % of max", "ms", False),
    ("rss_mb", "server RSS after the run", "MB", False),
    ("hwm_mb", "server peak RSS (VmHWM)", "MB", False),
    ("disk_per_env", "bytes on disk per envelope", "B", False),
    ("written_per_byte", "bytes written per archived byte", "x", False),
]
NOTE_KEY = {"ack_p99_low_ms": "ack_p99_low_ms", "ack_p99_high_ms": "ack_p99_high_ms"}


def rows_for(area: str, m: Measures, targets: dict[str, float] | None = None,
             suffix: str = "", first_suffix: str = "") -> list[Result]:
    """Result rows of one server; ``suffix`` goes on every note, ``first_suffix`` on the first."""
    out: list[Result] = []
    for key, name, unit, hib in ROWS:
        if key not in m.values:
            continue
        note = m.notes.get(NOTE_KEY.get(key, key.split("_")[0]), "") + suffix
        if not out:
            note += first_suffix
        if key == "ingest" and "closed" in m.notes:
            note += "; " + m.notes["closed"]
        out.append(Result(area, name, m.values[key], unit, target=(targets or {}).get(key),
                          higher_is_better=hib, note=note))
    return out


def compare_rows(mine: Measures, other: Measures, ingest_target: float | None = None) -> list[Result]:
    """pimail/other for every measure both have."""
    out = []
    for key, name, unit, hib in ROWS:
        if key in mine.values and key in other.values and other.values[key] > 0:
            out.append(Result("compare", f"{name} pimail/{other.label}", mine.values[key] / other.values[key],
                              "ratio", target=ingest_target if key == "ingest" else None,
                              higher_is_better=hib, note=f"{other.label}: {other.values[key]:,.2f} {unit}"))
    return out


def side_by_side(all_m: list[Measures]) -> str:
    """A Markdown table: one column per server, then pimail/other ratios."""
    if not all_m:
        return ""
    mine, others = all_m[0], all_m[1:]
    head = ["measure", *(m.label for m in all_m), *(f"pimail/{o.label}" for o in others)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, name, unit, _hib in ROWS:
        if not any(key in m.values for m in all_m):
            continue
        cells = [f"{name} ({unit})"]
        for m in all_m:
            v = m.values.get(key)
            cells.append("–" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.3g}"))
        for o in others:
            a, b = mine.values.get(key), o.values.get(key)
            cells.append(f"{a / b:.2f}" if a is not None and b else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
