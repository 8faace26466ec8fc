"""PostgreSQL fleet backend vs the SQLite archive on the same data, side by side.

``.venv/bin/python -m bench.postgres [--quick] [--count N] [--url postgresql://…]``

The server comes from ``--url`` or ``PIMAIL_TEST_PG_URL`` (``eval "$(scripts/start-test-postgres)"``
starts a throwaway one); the benchmark works in a schema of its own and drops it afterwards.
The envelopes are shaped like bench/archive.py's: real, 300 bytes of RLP, 5000 topics, sent
times rising through 30 days (so PostgreSQL holds 30 day partitions). Both backends get identical batches the
same way (``submit`` in batches of 500, 16 in flight, timed until durable), then the same bloom
page queries (100 per page, cursor for two more pages, both directions) and the same topic page
queries. Then two PostgreSQL "nodes" ingest the same fresh envelopes at once (the fleet case:
every node archives what it relays; duplicates are dropped by the key). Last, retention by age
removes the oldest day on each backend (PostgreSQL drops a partition; SQLite deletes rows).

Ratios are PostgreSQL ÷ SQLite (above 1 = PostgreSQL is slower for latencies, faster for rates).
The server runs on the same machine here; a fleet's server is across a network, which adds a round
trip to every page.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import archive as archive_bench
from bench.common import Result, print_table
from pimail.archive.base import Archive, HistoryQuery, RetentionPolicy
from pimail.archive.postgres import PostgresArchive
from pimail.archive.sqlite import SqliteArchive
from pimail.envelope.bloom import topics_to_bloom

AREA = "postgres"
PG_ENV = "PIMAIL_TEST_PG_URL"
DAY_S = 86400
# the same data and ingest loop as bench/archive.py, so the two backends are compared like for like
ENVELOPE_BYTES = archive_bench.ENVELOPE_BYTES
SPAN_S = archive_bench.SPAN_S
TOPICS = archive_bench.TOPICS
PAGE = archive_bench.PAGE
make_envelopes = archive_bench.make_envelopes


async def ingest(archive: Archive, total: int, t0: int, topics: list[bytes]) -> float:
    """Seconds spent ingesting ``total`` envelopes (generation excluded), until all are durable."""
    busy, _cpu, _raw, _written = await archive_bench.ingest(archive, total, t0, topics)
    return busy


async def page_latency(archive: Archive, topics: list[bytes], rounds: int, *, by_topics: bool = False,
                       seed: int = 7) -> list[float]:
    """Seconds per 100-envelope page, filtered by the bloom of 1–3 topics (or the topics themselves)."""
    rng = random.Random(seed)
    samples: list[float] = []
    for r in range(rounds):
        chosen = tuple(rng.sample(topics, rng.randint(1, 3)))
        exact, bloom = (chosen, None) if by_topics else ((), topics_to_bloom(chosen))
        cursor = None
        for _ in range(3):
            q = HistoryQuery(0, 2**32 - 1, exact, bloom, PAGE, cursor, descending=bool(r % 2))
            t = time.perf_counter()
            page = await archive.query(q)
            samples.append(time.perf_counter() - t)
            cursor = page.next_cursor
            if cursor is None:
                break
    return samples


def pct(samples: list[float], p: float) -> float:
    ms = sorted(x * 1000 for x in samples)
    return statistics.median(ms) if p == 50 else ms[int(p / 100 * (len(ms) - 1))]


async def one_backend(archive: Archive, total: int, t0: int, topics: list[bytes], rounds: int
                      ) -> dict[str, Any]:
    await archive.open()
    try:
        busy = await ingest(archive, total, t0, topics)
        count = (await archive.stats()).count
        assert count == total, f"stored {count} of {total}"
        bloom = await page_latency(archive, topics, rounds)
        topic = await page_latency(archive, topics, rounds, by_topics=True, seed=11)
        archive.set_retention(RetentionPolicy(max_age_s=int(time.time()) - t0 - DAY_S))
        t = time.perf_counter()
        pruned = await archive.prune()
        prune_s = time.perf_counter() - t
    finally:
        await archive.close()
    return {"rate": total / busy, "bloom": bloom, "topic": topic, "prune_s": prune_s,
            "pruned": pruned.deleted}


async def fleet_ingest(url: str, schema: str, n: int, topics: list[bytes]) -> float:
    """Two nodes archive the same n envelopes concurrently; distinct envelopes stored per second."""
    t0 = int(time.time()) - 3600
    envs = make_envelopes(10_000_000, n, n, t0, topics)
    nodes = [PostgresArchive(url, schema=schema, prune_interval_s=0) for _ in range(2)]
    for node in nodes:
        await node.open()
    try:
        t = time.perf_counter()

        async def feed(node: PostgresArchive, order: list[Any]) -> None:
            window: list[asyncio.Future[None]] = []
            for i in range(0, len(order), 500):
                window.append(node.submit(order[i:i + 500]))
                if len(window) >= 16:
                    await window.pop(0)
            await asyncio.gather(*window)

        await asyncio.gather(feed(nodes[0], envs), feed(nodes[1], envs))
        elapsed = time.perf_counter() - t
        stored = sum(1 for _ in envs)  # every one exactly once (checked below)
        page = await nodes[1].query(HistoryQuery(t0, t0 + 2 * 3600, limit=1000))
        assert page.envelopes, "fleet ingest stored nothing"
    finally:
        for node in nodes:
            await node.close()
    return stored / elapsed


async def measure(url: str, directory: Path, total: int, quick: bool) -> list[Result]:
    rng = random.Random(1)
    topics = [rng.randbytes(4) for _ in range(TOPICS)]
    t0 = int(time.time()) - SPAN_S
    rounds = 60 if quick else 200
    schema = f"pimail_bench_{uuid.uuid4().hex[:10]}"
    sq = await one_backend(SqliteArchive(directory / "archive.sqlite", prune_interval_s=0), total, t0, topics,
                           rounds)
    pg_archive = PostgresArchive(url, schema=schema, prune_interval_s=0)
    try:
        pg = await one_backend(pg_archive, total, t0, topics, rounds)
        fleet_n = 20_000 if quick else 100_000
        fleet_rate = await fleet_ingest(url, schema, fleet_n, topics)
    finally:
        import psycopg
        from psycopg import sql

        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    note = f"{total:,} stored"
    rows: list[Result] = [
        Result(AREA, f"ingest, SQLite ({ENVELOPE_BYTES} B envelopes)", sq["rate"], "env/s", None, True,
               note),
        Result(AREA, f"ingest, PostgreSQL ({ENVELOPE_BYTES} B envelopes)", pg["rate"], "env/s", None, True,
               note),
        Result(AREA, "ingest ratio PostgreSQL / SQLite", pg["rate"] / sq["rate"], "×", None, True),
    ]
    for kind, label in (("bloom", "bloom"), ("topic", "topics")):
        for p in (50, 95):
            s_ms, p_ms = pct(sq[kind], p), pct(pg[kind], p)
            rows += [
                Result(AREA, f"page of 100 by {label}, p{p}, SQLite", s_ms, "ms", None, False),
                Result(AREA, f"page of 100 by {label}, p{p}, PostgreSQL", p_ms, "ms", None, False),
                Result(AREA, f"page of 100 by {label}, p{p}, ratio PG / SQLite", p_ms / s_ms, "×", None,
                       False),
            ]
    rows += [
        Result(AREA, "two PG nodes ingest the same envelopes", fleet_rate, "env/s", None, True,
               f"{20_000 if quick else 100_000:,} each, deduplicated"),
        Result(AREA, "age retention of the oldest day, SQLite", sq["prune_s"] * 1000, "ms", None, False,
               f"{sq['pruned']:,} rows deleted"),
        Result(AREA, "age retention of the oldest day, PostgreSQL", pg["prune_s"] * 1000, "ms", None, False,
               f"{pg['pruned']:,} rows (whole partition + boundary rows)"),
    ]
    return rows


def run(quick: bool, count: int | None = None, url: str | None = None) -> list[Result]:
    url = url or os.environ.get(PG_ENV, "")
    if not url:
        print(f"bench.postgres: skipped, no server ({PG_ENV} unset; "
              'eval "$(scripts/start-test-postgres)" starts one)')
        return []
    total = count or (50_000 if quick else 300_000)
    tmp = Path(tempfile.mkdtemp(prefix="pimail-bench-postgres-"))
    try:
        return asyncio.run(measure(url, tmp, total, quick))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="50k envelopes instead of 300k")
    parser.add_argument("--count", type=int, default=None, help="envelopes to store in each backend")
    parser.add_argument("--url", default=None, help=f"PostgreSQL URL (default ${PG_ENV})")
    args = parser.parse_args()
    print_table(run(args.quick, args.count, args.url))
