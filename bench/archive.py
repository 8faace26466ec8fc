"""Archive benchmark: ingest rate, bloom page latency, bytes on disk, bytes written.

``.venv/bin/python -m bench.archive [--quick] [--count N] [--dir DIR]``

Envelopes are real and 300 bytes of RLP each, over 5000 topics (status-go's partitioned-topic
count) with sent times rising through 30 days, as a node archives them. Their hashes are computed
before the clock starts (the Whisper layer has them already). The archive runs with the group
commit the daemon ships (``[archive]`` defaults: every 1000 ms or 10,000 envelopes). Ingest goes
through ``submit`` in batches of 500 from the event loop, with up to two groups' worth in flight (the
Whisper layer does not wait for one batch to be durable before submitting the next), timed until
every future is durable. Pages are 100 envelopes with a bloom of one to three stored topics over the
whole range, followed by their cursor for two more pages, in both directions. Bytes written come
from /proc/self/io over the ingest and the final checkpoint (the WAL's last pages reaching the main
file), so every archived byte is counted to where it comes to rest.

The wear curve (``--only curve``) then trickles envelopes one per submit at 5, 20, 50 and 200 env/s
into an archive of 100,000 for the default ``flush_interval_ms`` and two others, with the shipped ack
log (groups acked from an fsync'd append log, the SQLite index written behind it every
``index_interval_s``), and once more for the default interval without the log (``index_interval_s =
0``: every group committed to SQLite, what pimail did before the log), and prints bytes written per
envelope, GB per day at that rate, and the ack latency (submit to durable). Bytes written are this
process's ``write_bytes`` in /proc/self/io over the whole point: the log's appends and resets, the
index batches, the WAL, and a final index batch and checkpoint (so every envelope is counted to where
it comes to rest in the main file). The filesystem's own journal (jbd2) is not in that figure, for
either design.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import rlp

from bench.common import Result, print_table
from pimail.archive.base import Archive, ArchivedEnvelope, HistoryQuery
from pimail.archive.sqlite import BUCKET_SHIFT, TOPIC_SPAN_BITS, SqliteArchive
from pimail.config import ArchiveConfig
from pimail.crypto.keccak import keccak256
from pimail.envelope.bloom import topics_to_bloom

AREA = "archive"
ENVELOPE_BYTES = 300
TOPICS = 5000
SPAN_S = 30 * 86400
CHUNK = 50_000
SUBMIT_BATCH = 500
SHIPPED = ArchiveConfig()  # the group commit `pimail run` uses
IN_FLIGHT = 2 * SHIPPED.flush_max_envelopes // SUBMIT_BATCH  # submits not yet durable
TRICKLE_RATE = 20  # envelopes/s, one per submit
TRICKLE_COUNT = 200
PAGE = 100


def _proc_write_bytes() -> int:
    with open("/proc/self/io", encoding="ascii") as f:
        for line in f:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    return 0


def make_envelopes(start: int, n: int, total: int, t0: int, topics: list[bytes]) -> list[ArchivedEnvelope]:
    rng = random.Random(start)
    out = []
    ttl = 86400
    for i in range(start, start + n):
        sent = t0 + i * SPAN_S // total
        topic = topics[rng.randrange(len(topics))]
        fill = i.to_bytes(8, "big") * 40

        fields: list[object] = [sent + ttl, ttl, topic, fill[:270], i]
        first: bytes = rlp.encode(fields)
        fields[3] = fill[: 270 + ENVELOPE_BYTES - len(first)]
        raw: bytes = rlp.encode(fields)
        out.append(ArchivedEnvelope(sent, keccak256(raw), topic, sent + ttl, raw, sent + 1))
    return out


async def ingest(archive: Archive, total: int, t0: int, topics: list[bytes]
                 ) -> tuple[float, float, int, int]:
    """Wall and CPU seconds spent ingesting (generation excluded), raw bytes archived, bytes written."""
    busy = 0.0
    cpu = 0.0
    raw_bytes = 0
    written = 0
    for start in range(0, total, CHUNK):
        envs = make_envelopes(start, min(CHUNK, total - start), total, t0, topics)
        raw_bytes += sum(len(e.raw) for e in envs)
        w0 = _proc_write_bytes()
        t = time.perf_counter()
        c = time.process_time()
        window: list[asyncio.Future[None]] = []
        for i in range(0, len(envs), SUBMIT_BATCH):  # like a relay: a bounded number in flight
            window.append(archive.submit(envs[i : i + SUBMIT_BATCH]))
            if len(window) >= IN_FLIGHT:
                await window.pop(0)
        await asyncio.gather(*window)
        busy += time.perf_counter() - t
        cpu += time.process_time() - c
        written += _proc_write_bytes() - w0
    return busy, cpu, raw_bytes, written


async def page_latency(archive: SqliteArchive, topics: list[bytes], rounds: int
                       ) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds per page (CPU: every thread of the process; the writer is idle)."""
    rng = random.Random(7)
    samples: list[float] = []
    cpu: list[float] = []
    for r in range(rounds):
        bloom = topics_to_bloom(rng.sample(topics, rng.randint(1, 3)))
        cursor = None
        for _ in range(3):
            q = HistoryQuery(0, 2**32 - 1, (), bloom, PAGE, cursor, descending=bool(r % 2))
            t = time.perf_counter()
            c = time.process_time()
            page = await archive.query(q)
            samples.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
            cursor = page.next_cursor
            if cursor is None:
                break
    return samples, cpu


def shipped_archive(path: Path, **options: object) -> SqliteArchive:
    """A ``SqliteArchive`` with the group commit and ack log `pimail run` uses (``options`` override)."""
    from pimail.archive.retention import parse_size

    settings: dict[str, object] = {
        "prune_interval_s": 0, "flush_interval_ms": SHIPPED.flush_interval_ms,
        "flush_max_envelopes": SHIPPED.flush_max_envelopes, "synchronous": SHIPPED.synchronous,
        "index_interval_s": SHIPPED.index_interval_s, "log_max_bytes": parse_size(SHIPPED.log_max_bytes)}
    settings.update(options)
    return SqliteArchive(path, **settings)  # type: ignore[arg-type]


def on_disk(path: Path) -> int:
    """The archive's files: the database and its ack log (the WAL is empty after a checkpoint)."""
    return sum(f.stat().st_size for f in (path, path.with_name(path.name + ".acklog")) if f.exists())


async def trickle(archive: SqliteArchive, total: int, t0: int, topics: list[bytes]) -> float:
    """Bytes written per envelope when envelopes arrive one by one at TRICKLE_RATE (a quiet node):
    each group commit then writes whole pages for a handful of envelopes."""
    envs = make_envelopes(total, TRICKLE_COUNT, total + TRICKLE_COUNT, t0, topics)
    await archive.vacuum()
    w0 = _proc_write_bytes()
    futs = []
    for env in envs:
        futs.append(archive.submit([env]))
        await asyncio.sleep(1 / TRICKLE_RATE)
    await asyncio.gather(*futs)
    await archive.vacuum()  # include the checkpoint
    return (_proc_write_bytes() - w0) / len(envs)


CURVE_RATES = (5, 20, 50, 200)  # envelopes/s, one per submit, as relayed one by one
CURVE_INTERVALS_MS = (SHIPPED.flush_interval_ms, 250, 4000)  # the default and two others
DAY_S = 86400
ACK_TARGET_RATE = 50  # ack latency p99 ≤ 2 × flush_interval_ms at this rate (issue 17)


def live_envelopes(start: int, n: int, sent0: int, rate: int, topics: list[bytes]) -> list[ArchivedEnvelope]:
    """``n`` envelopes sent from ``sent0`` on at ``rate`` per second (newer than everything stored)."""
    envs = make_envelopes(start, n, n, sent0, topics)  # sent0 + i·30 d/n: re-time them to the rate
    return [ArchivedEnvelope(sent0 + i // rate, e.hash, e.topic, e.expiry - e.sent + sent0 + i // rate,
                             e.raw, sent0 + i // rate) for i, e in enumerate(envs)]


async def wear_point(path: Path, interval_ms: int, rate: int, seconds: float, start: int, sent0: int,
                     topics: list[bytes], synchronous: str, index_s: float) -> tuple[float, float, float]:
    """Bytes written per envelope (the log, the index batches, the WAL and the final index batch and
    checkpoint) and the ack latency p50/p99 (ms) when envelopes arrive one by one at ``rate`` for
    ``seconds``."""
    archive = shipped_archive(path, flush_interval_ms=interval_ms, synchronous=synchronous,
                              index_interval_s=index_s)
    await archive.open()
    try:
        n = max(10, int(rate * seconds))
        envs = live_envelopes(start, n, sent0, rate, topics)
        await archive.vacuum()  # start from a checkpointed file and an empty WAL
        loop = asyncio.get_running_loop()
        latencies: list[float] = []

        def acked(t: float) -> Callable[[asyncio.Future[None]], None]:
            return lambda _f: latencies.append(time.perf_counter() - t)

        w0 = _proc_write_bytes()
        t0 = loop.time()
        futs = []
        for i, env in enumerate(envs):
            delay = t0 + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            fut = archive.submit([env])
            fut.add_done_callback(acked(time.perf_counter()))
            futs.append(fut)
        await asyncio.gather(*futs)
        await archive.vacuum()  # the last index batch and the checkpoint: every page where it rests
        written = _proc_write_bytes() - w0
    finally:
        await archive.close()
    lat = sorted(x * 1000 for x in latencies)
    return written / n, statistics.median(lat), lat[int(0.99 * (len(lat) - 1))]


BUCKET_S = 1 << (BUCKET_SHIFT - 32)  # sent seconds per bucket of the topic index (~4.5 h)
BLOCK_S = BUCKET_S << TOPIC_SPAN_BITS  # sent seconds per block of the topics table's spans (~3 days)
STEADY_RATE = 50
STEADY_FILL_S = BUCKET_S // 2  # the steady-state points: the current bucket half full at that rate


async def fill(archive: SqliteArchive, envs: list[ArchivedEnvelope]) -> None:
    for i in range(0, len(envs), SUBMIT_BATCH * IN_FLIGHT):
        await asyncio.gather(*(archive.submit(envs[j : j + SUBMIT_BATCH])
                               for j in range(i, min(len(envs), i + SUBMIT_BATCH * IN_FLIGHT), SUBMIT_BATCH)))


async def wear_curve(directory: Path, total: int, quick: bool, synchronous: str) -> list[Result]:
    """The SD-wear curve: bytes written per 300 B envelope at CURVE_RATES for CURVE_INTERVALS_MS with
    the ack log, and for the default interval without it, on an archive already holding ``total``
    envelopes, with GB/day (what a node at that rate writes).

    Wear depends on how full the current bucket of the topic index is (a new envelope's index entry
    lands at its topic's place in the bucket: the more entries the bucket holds, the more pages a
    commit touches). Each curve point therefore starts in a bucket of its own, empty but for a few
    envelopes per topic (every point alike: the best case, early in a bucket); ``steady_state``
    measures the middle of a bucket."""
    rng = random.Random(1)
    topics = [rng.randbytes(4) for _ in range(TOPICS)]
    path = directory / "curve.sqlite"
    t0 = int(time.time()) - SPAN_S
    block = (t0 + SPAN_S) // BLOCK_S * BLOCK_S + BLOCK_S  # a block of its own: one topics row write each
    archive = shipped_archive(path)
    await archive.open()
    try:
        await ingest(archive, total, t0, topics)
        # ~every topic's span covers the block (4 per topic: 98 % of the topics)
        await fill(archive, live_envelopes(total, 4 * TOPICS, block, 4 * TOPICS, topics))
    finally:
        await archive.close()
    seconds = 8.0 if quick else SHIPPED.index_interval_s  # one index batch and the final one
    results = []
    start = total + 4 * TOPICS
    settings = [(ms, SHIPPED.index_interval_s) for ms in CURVE_INTERVALS_MS]
    settings.append((SHIPPED.flush_interval_ms, 0.0))  # before the log: every group into SQLite
    point = 0
    for interval, index_s in settings:
        for rate in CURVE_RATES:
            point += 1
            # a bucket of its own (the block's first holds the seed; the last point shares the first
            # point's, which holds the fewest envelopes)
            sent0 = block + (1 + (point - 1) % ((1 << TOPIC_SPAN_BITS) - 1)) * BUCKET_S
            per_env, p50, p99 = await wear_point(path, interval, rate, seconds, start, sent0, topics,
                                                 synchronous, index_s)
            start += int(rate * seconds) + 10
            results += curve_result(per_env, p50, p99, rate, interval, index_s, synchronous, "")
    return results


async def steady_state(directory: Path, total: int, quick: bool, synchronous: str) -> list[Result]:
    """Wear at STEADY_RATE env/s into a topic-index bucket already half full at that rate (what a node
    at that rate has in the middle of a bucket), with the ack log and without."""
    rng = random.Random(1)
    topics = [rng.randbytes(4) for _ in range(TOPICS)]
    path = directory / "steady.sqlite"
    t0 = int(time.time()) - SPAN_S
    archive = shipped_archive(path)
    await archive.open()
    try:
        await ingest(archive, total, t0, topics)
    finally:
        await archive.close()
    seconds = 8.0 if quick else SHIPPED.index_interval_s
    results: list[Result] = []
    start = total
    sent0 = ((t0 + SPAN_S) // BLOCK_S + 1) * BLOCK_S  # a bucket (and a block) of its own
    fill_n = (STEADY_FILL_S // 8 if quick else STEADY_FILL_S) * STEADY_RATE
    archive = shipped_archive(path)
    await archive.open()
    try:
        await fill(archive, live_envelopes(start, fill_n, sent0, STEADY_RATE, topics))
    finally:
        await archive.close()
    start += fill_n
    sent0 += fill_n // STEADY_RATE
    for index_s in (SHIPPED.index_interval_s, 0.0):
        per_env, p50, p99 = await wear_point(path, SHIPPED.flush_interval_ms, STEADY_RATE, 2 * seconds,
                                             start, sent0, topics, synchronous, index_s)
        start += int(STEADY_RATE * 2 * seconds) + 10
        sent0 += int(2 * seconds) + 2
        results += curve_result(per_env, p50, p99, STEADY_RATE, SHIPPED.flush_interval_ms, index_s,
                                synchronous, f", bucket holding {fill_n:,}")
    return results


def curve_result(per_env: float, p50: float, p99: float, rate: int, interval: int, index_s: float,
                 synchronous: str, where: str) -> list[Result]:
    """The point's bytes written per envelope (with GB/day); at ACK_TARGET_RATE its ack p99 too."""
    gb_day = per_env * rate * DAY_S / 1e9
    default = interval == SHIPPED.flush_interval_ms and index_s == SHIPPED.index_interval_s and not where
    how = (f"log, index {index_s:g} s" if index_s else "no log") + (" (steady)" if where else "")
    target = 6 * ENVELOPE_BYTES if default and rate == ACK_TARGET_RATE else None
    out = [Result(AREA, f"written/envelope {rate} env/s, {interval} ms, {how}", per_env, "B", target, False,
                  f"{per_env / ENVELOPE_BYTES:.1f}x, {gb_day:.2f} GB/day, ack p50 {p50:.0f} ms "
                  f"p99 {p99:.0f} ms, synchronous={synchronous}{where}")]
    if rate == ACK_TARGET_RATE:
        out.append(Result(AREA, f"ack p99 {rate} env/s, {interval} ms, {how}", p99, "ms",
                          2 * interval if default else None, False, f"p50 {p50:.0f} ms"))
    return out


async def measure(directory: Path, total: int, quick: bool) -> list[Result]:
    rng = random.Random(1)
    topics = [rng.randbytes(4) for _ in range(TOPICS)]
    t0 = int(time.time()) - SPAN_S
    archive = shipped_archive(directory / "archive.sqlite")
    await archive.open()
    try:
        busy, cpu, raw_bytes, written = await ingest(archive, total, t0, topics)
        w0 = _proc_write_bytes()
        await archive.vacuum()  # checkpoint: everything in the main file
        written += _proc_write_bytes() - w0
        file_bytes = on_disk(directory / "archive.sqlite")
        stats = await archive.stats()
        assert stats.count == total, f"stored {stats.count} of {total}"
        latencies, cpu_times = await page_latency(archive, topics, 60 if quick else 200)
        trickle_bytes = await trickle(archive, total, t0, topics)
    finally:
        await archive.close()
    lat_ms = sorted(x * 1000 for x in latencies)
    p50 = statistics.median(lat_ms)
    p95 = lat_ms[int(0.95 * (len(lat_ms) - 1))]
    cpu_ms = sorted(x * 1000 for x in cpu_times)
    cpu_p95 = cpu_ms[int(0.95 * (len(cpu_ms) - 1))]
    per_env = file_bytes / total
    raw_per_env = raw_bytes / total
    note = f"{total:,} stored"
    return [
        Result(AREA, f"ingest rate ({ENVELOPE_BYTES} B envelopes, to {total:,})", total / busy, "env/s",
               60_000, True, f"{total / cpu:,.0f} per CPU-second"),
        Result(AREA, "page of 100 with bloom, p50", p50, "ms", None, False, note),
        Result(AREA, "page of 100 with bloom, p95", p95, "ms", 10, False, f"CPU p95 {cpu_p95:.2f} ms"),
        Result(AREA, "bytes on disk per envelope", per_env, "B", 1.1 * raw_per_env + 48, False,
               f"raw {raw_per_env:.0f} B, the ack log's file included"),
        Result(AREA, "bytes written per archived byte", written / raw_bytes, "ratio", 2.5, False,
               "/proc/self/io write_bytes, final checkpoint included"),
        Result(AREA, f"bytes written per envelope at {TRICKLE_RATE} env/s", trickle_bytes, "B", None, False,
               f"flush every {archive.flush_interval_s * 1000:.0f} ms"),
    ]


def run(quick: bool, count: int | None = None, directory: Path | None = None, *, curve: bool = True,
        main: bool = True, steady: bool = True, synchronous: str = SHIPPED.synchronous) -> list[Result]:
    total = count or (100_000 if quick else 1_000_000)
    results: list[Result] = []
    parts: list[tuple[bool, Callable[[Path], Coroutine[Any, Any, list[Result]]]]] = [
        (main, lambda tmp: measure(tmp, total, quick)),
        # the curve on a smaller archive: wear depends on the current time bucket, not the total
        (curve, lambda tmp: wear_curve(tmp, min(total, 100_000), quick, synchronous)),
        (steady, lambda tmp: steady_state(tmp, min(total, 100_000), quick, synchronous)),
    ]
    for wanted, part in parts:
        if not wanted:
            continue
        tmp = Path(tempfile.mkdtemp(prefix="pimail-bench-archive-", dir=directory))
        try:
            results += asyncio.run(part(tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="100k envelopes instead of 1M")
    parser.add_argument("--count", type=int, default=None, help="envelopes to store")
    parser.add_argument("--dir", type=Path, default=None, help="where to put the archive (default /tmp)")
    parser.add_argument("--only", choices=("main", "curve", "steady"), default=None,
                        help="only the ingest/page/disk figures, the wear curve, or the steady-state point")
    parser.add_argument("--synchronous", choices=("normal", "full"), default=SHIPPED.synchronous,
                        help=f"the wear curve's SQLite synchronous mode (default {SHIPPED.synchronous})")
    args = parser.parse_args()
    print_table(run(args.quick, args.count, args.dir, curve=args.only in (None, "curve"),
                    main=args.only in (None, "main"), steady=args.only in (None, "steady"),
                    synchronous=args.synchronous))
