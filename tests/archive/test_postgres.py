"""The PostgreSQL fleet backend against a real server (``PIMAIL_TEST_PG_URL``).

Behaviour shared with SQLite is in the contract suite (test_contract.py); these tests cover what is
PostgreSQL's own: migrations, several nodes on one database, day partitions, retention by dropping
partitions, failures and health.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import psycopg
import pytest

from pimail.archive import open_archive
from pimail.archive.base import (
    ArchivedEnvelope,
    ArchiveError,
    HistoryQuery,
    InvalidCursor,
    RetentionPolicy,
    SchemaTooNew,
    encode_cursor,
)
from pimail.archive.postgres import (
    DAY_S,
    MAX_TOPIC_RANGES,
    ROW_OVERHEAD_BYTES,
    SCHEMA_VERSION,
    PostgresArchive,
    describe_url,
)
from pimail.config import ArchiveConfig
from pimail.envelope.bloom import bloom_matches, topic_to_bloom, topics_to_bloom
from pimail.envelope.codec import Envelope
from pimail.health import HealthModel, Severity

T = TypeVar("T")
TIMEOUT_S = 60.0


def run(coro: Awaitable[T]) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, TIMEOUT_S)

    return asyncio.run(bounded())


def admin(pg_url: str, schema: str, statement: str, params: Any = None) -> list[tuple[Any, ...]]:
    """Run one statement in the test's schema on a separate, synchronous connection."""
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("SET search_path TO {}").format(psycopg.sql.Identifier(schema)))
        cur = conn.execute(statement, params)
        return cur.fetchall() if cur.description else []


def assert_counters_match(pg_url: str, schema: str) -> None:
    """The per-day counters behind stats() and retention agree with the rows themselves."""
    counted = admin(pg_url, schema, "SELECT day, n, bytes FROM day_counts WHERE n <> 0 ORDER BY day")
    actual = admin(pg_url, schema, f"SELECT sent - mod(sent, {DAY_S}), count(*), sum(size) FROM envelopes"
                   " GROUP BY 1 ORDER BY 1")
    assert counted == actual


def make_env(sent: int, topic: bytes = b"\x01\x02\x03\x04", size: int = 64, nonce: int = 0
             ) -> ArchivedEnvelope:
    ttl = 50
    data = (nonce.to_bytes(8, "big") * (size // 8 + 1))[:size]
    e = Envelope.build(sent + ttl, ttl, topic, data, nonce)
    return ArchivedEnvelope(sent, e.hash, e.topic, e.expiry, e.raw, arrived=sent + 1)


def archive(pg_url: str, schema: str, **kw: Any) -> PostgresArchive:
    kw.setdefault("flush_interval_ms", 5)
    kw.setdefault("prune_interval_s", 0)
    return PostgresArchive(pg_url, schema=schema, **kw)


async def everything(a: PostgresArchive, descending: bool = False) -> list[ArchivedEnvelope]:
    return [e async for e in a.iterate(HistoryQuery(0, 2**32 - 1, descending=descending), page_size=37)]


# -- schema and migrations ------------------------------------------------------------------------------


def test_open_creates_schema_partitions_and_version(pg_url: str, schema: str) -> None:
    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            assert await a.schema_version() == SCHEMA_VERSION
            names = [p[0] for p in await a.partitions()]
            today = int(time.time()) // DAY_S * DAY_S
            assert "envelopes_p" + time.strftime("%Y%m%d", time.gmtime(today)) in names
            assert "envelopes_p" + time.strftime("%Y%m%d", time.gmtime(today + DAY_S)) in names
            assert a.health_reason == "ok"
        finally:
            await a.close()
        # a second open (another node, or a restart) migrates nothing and keeps the data layout
        b = archive(pg_url, schema)
        await b.open()
        await b.close()

    run(scenario())
    rows = admin(pg_url, schema, "SELECT version FROM schema_version")
    assert rows == [(SCHEMA_VERSION,)]
    default = admin(pg_url, schema, "SELECT c.relname FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = 'envelopes_default'",
                    (schema,))
    assert default == [("envelopes_default",)]


def test_a_new_schema_is_created_at_the_latest_version_in_one_line(
    pg_url: str, schema: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def make() -> None:
        a = archive(pg_url, schema)
        await a.open()
        await a.close()

    with caplog.at_level(logging.INFO, logger="pimail.archive.postgres"):
        run(make())
    said = [m for m in (r.getMessage() for r in caplog.records) if "creating" in m or "migrat" in m]
    assert said == [f"archive: creating PostgreSQL schema {schema} (version {SCHEMA_VERSION})"], said


def test_newer_schema_refuses_to_open(pg_url: str, schema: str) -> None:
    async def make() -> None:
        a = archive(pg_url, schema)
        await a.open()
        await a.close()

    run(make())
    admin(pg_url, schema, "UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))

    async def reopen() -> None:
        b = archive(pg_url, schema)
        with pytest.raises(SchemaTooNew, match="upgrade pimail"):
            await b.open()
        with pytest.raises(ArchiveError):  # not half-open: no queries on a refused archive
            await b.stats()

    run(reopen())


def test_version_1_schema_is_migrated(pg_url: str, schema: str) -> None:
    """Schema 1 had an index on hash alone; version 2 drops it and keeps every row."""
    now = int(time.time())
    envs = [make_env(now - i, nonce=i) for i in range(20)]

    async def make() -> None:
        a = archive(pg_url, schema)
        await a.open()
        await a.submit(envs)
        await a.close()

    run(make())
    admin(pg_url, schema, "CREATE INDEX envelopes_hash ON envelopes (hash)")
    admin(pg_url, schema, "UPDATE schema_version SET version = 1")

    async def reopen() -> tuple[int, int, bool]:
        b = archive(pg_url, schema)
        await b.open()
        try:
            present = all([await b.contains(e.sent, e.hash) for e in envs])
            return await b.schema_version(), (await b.stats()).count, present
        finally:
            await b.close()

    assert run(reopen()) == (2, 20, True)
    defs = admin(pg_url, schema, "SELECT indexdef FROM pg_indexes WHERE schemaname = %s", (schema,))
    assert defs and not [d for (d,) in defs if d.endswith("(hash)")], defs


def test_nodes_starting_together_migrate_once(pg_url: str, schema: str) -> None:
    async def scenario() -> None:
        nodes = [archive(pg_url, schema) for _ in range(4)]
        await asyncio.gather(*(n.open() for n in nodes))
        try:
            assert [await n.schema_version() for n in nodes] == [SCHEMA_VERSION] * 4
            await nodes[0].submit([make_env(int(time.time()))])
            assert (await nodes[3].stats()).count == 1
        finally:
            await asyncio.gather(*(n.close() for n in nodes))

    run(scenario())


# -- bad configuration and an unreachable server ----------------------------------------------------


def test_unreachable_server_fails_with_one_line_without_password() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    url = f"postgresql://fleet:s3cret@127.0.0.1:{port}/pimail"

    async def scenario() -> None:
        a = PostgresArchive(url, connect_timeout_s=1.0)
        with pytest.raises(ArchiveError) as info:
            await asyncio.wait_for(a.open(), 120)  # fails, does not hang
        text = str(info.value)
        assert "s3cret" not in text and f"127.0.0.1:{port}/pimail" in text and "\n" not in text

    run(scenario())


def test_bad_urls_and_settings_are_rejected() -> None:
    with pytest.raises(ArchiveError, match="postgresql://"):
        PostgresArchive("mysql://x@y/z")
    with pytest.raises(ArchiveError, match="schema"):
        PostgresArchive("postgresql://x@y/z", schema="")
    with pytest.raises(ValueError):
        PostgresArchive("postgresql://x@y/z", flush_max_envelopes=0)
    assert describe_url("postgresql://u:pw@db.example:6543/fleet") == "u@db.example:6543/fleet"
    assert "pw" not in describe_url("postgresql://u:pw@db.example/fleet")


def test_open_archive_dispatches_postgres_urls(pg_url: str) -> None:
    cfg = ArchiveConfig(url=pg_url, flush_interval_ms=7, flush_max_envelopes=123, max_age="2d")
    a = open_archive(cfg, data_dir=__import__("pathlib").Path("/nonexistent"), health=None)
    assert isinstance(a, PostgresArchive)
    assert a.schema == "pimail"
    assert a._flush_max == 123 and a._retention.max_age_s == 2 * DAY_S


# -- writing -----------------------------------------------------------------------------------------


def test_duplicates_within_and_across_batches_are_stored_once(pg_url: str, schema: str) -> None:
    now = int(time.time())
    envs = [make_env(now - i, nonce=i) for i in range(20)]

    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await asyncio.gather(a.submit(envs + envs[:5]), a.submit(envs[10:]))
            await a.submit(envs)
            stats = await a.stats()
            assert stats.count == 20
            assert stats.extra["inserted_since_start"] == 20
            assert stats.extra["duplicates_since_start"] == 5 + 10 + 20
            assert stats.bytes_written_since_start == sum(len(e.raw) for e in envs)
            assert stats.bytes == sum(len(e.raw) + ROW_OVERHEAD_BYTES for e in envs)
            assert (stats.oldest_sent, stats.newest_sent) == (now - 19, now)
            stored = await everything(a)
            assert [e.cursor for e in stored] == sorted(e.cursor for e in envs)
            assert {e.hash: e for e in stored} == {e.hash: e for e in envs}  # every field round-trips
            assert await a.contains(envs[3].sent, envs[3].hash)
            assert not await a.contains(envs[3].sent, b"\x00" * 32)
            assert not await a.contains(envs[3].sent + 1, envs[3].hash)
            assert not await a.contains(envs[3].sent, b"short")
        finally:
            await a.close()

    run(scenario())
    assert_counters_match(pg_url, schema)


def test_bad_records_and_full_queue_have_defined_outcomes(pg_url: str, schema: str) -> None:
    async def scenario() -> None:
        a = archive(pg_url, schema, flush_interval_ms=1000, flush_max_envelopes=10, max_pending_envelopes=15)
        with pytest.raises(ArchiveError, match="not open"):
            await a.submit([make_env(1000)])
        await a.open()
        try:
            good = make_env(int(time.time()))
            with pytest.raises(ValueError):
                a.submit([ArchivedEnvelope(good.sent, good.hash[:5], good.topic, good.expiry, good.raw)])
            with pytest.raises(ValueError):
                a.submit([ArchivedEnvelope(2**32, good.hash, good.topic, 2**32 + 5, good.raw)])
            with pytest.raises(ValueError):
                a.submit([ArchivedEnvelope(good.sent, good.hash, good.topic, good.sent - 1, good.raw)])
            first = a.submit([make_env(2000 + i, nonce=i) for i in range(9)])
            overflow = a.submit([make_env(3000 + i, nonce=i) for i in range(9)])
            with pytest.raises(ArchiveError, match="queue is full"):
                await overflow
            await first
            assert (await a.stats()).count == 9
            assert await a.submit([]) is None
        finally:
            await a.close()
        with pytest.raises(ArchiveError):
            await a.submit([good])

    run(scenario())


def test_close_flushes_everything_pending(pg_url: str, schema: str) -> None:
    async def scenario() -> None:
        a = archive(pg_url, schema, flush_interval_ms=60_000)
        await a.open()
        futures = [a.submit([make_env(10_000 + i, nonce=i)]) for i in range(50)]
        await a.close()  # long flush interval: close must write the group now
        assert all(f.done() and f.exception() is None for f in futures)
        b = archive(pg_url, schema)
        await b.open()
        try:
            assert (await b.stats()).count == 50
        finally:
            await b.close()

    run(scenario())


def test_durable_callback_and_loop_keeps_running_during_big_ingest(pg_url: str, schema: str) -> None:
    durable: list[int] = []
    now = int(time.time())

    async def scenario() -> None:
        a = archive(pg_url, schema, flush_max_envelopes=2000,
                    on_durable=lambda envs: durable.append(len(envs)))
        await a.open()
        seen: set[int] = set()  # how much was durable at each turn of the loop
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                seen.add(sum(durable))
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        try:
            envs = [make_env(now - i % 3600, nonce=i) for i in range(20_000)]
            await asyncio.gather(*(a.submit(envs[i:i + 500]) for i in range(0, len(envs), 500)))
            stop.set()
            await t
            assert sum(durable) == 20_000 and max(durable) <= 2000
            # the loop kept turning while PostgreSQL worked: it saw the ingest part-way through
            # (≥ 10 commits of ≤ 2000), not only before and after — no timing involved
            assert any(0 < d < 20_000 for d in seen)
        finally:
            await a.close()

    run(scenario())


def test_write_failure_fails_the_batch_reports_health_and_recovers(pg_url: str, schema: str) -> None:
    health = HealthModel()

    async def scenario() -> None:
        a = archive(pg_url, schema, health=health)
        await a.open()
        try:
            admin(pg_url, schema, """
                CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$;
                CREATE TRIGGER refuse BEFORE INSERT ON envelopes FOR EACH ROW EXECUTE FUNCTION refuse();
            """)
            with pytest.raises(ArchiveError, match="disk on fire"):
                await a.submit([make_env(int(time.time()))])
            assert "disk on fire" in (a.health_reason or "")
            cond = {c.key: c for c in health.conditions}["archive.write_failed"]
            assert cond.severity == Severity.FAILING
            admin(pg_url, schema, "DROP TRIGGER refuse ON envelopes")
            await a.submit([make_env(int(time.time()))])
            assert a.health_reason == "ok"
            assert "archive.write_failed" not in {c.key for c in health.conditions}
        finally:
            await a.close()

    run(scenario())


def test_lost_server_connections_are_replaced(pg_url: str, schema: str) -> None:
    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await a.submit([make_env(5000)])
            # the DBA restarts the server / a network blip: every pimail backend is killed
            killed = admin(pg_url, schema, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                           " WHERE application_name = %s AND pid <> pg_backend_pid()", (f"pimail/{schema}",))
            assert killed and all(ok for (ok,) in killed)
            outcomes = []
            for i in range(3):  # a batch may fail with ArchiveError while the pool notices
                try:
                    await a.submit([make_env(6000 + i, nonce=i)])
                    outcomes.append("ok")
                except ArchiveError:
                    outcomes.append("failed")
            assert outcomes[-1] == "ok"
            assert (await a.stats()).count == 1 + outcomes.count("ok")
            assert a.health_reason == "ok"
        finally:
            await a.close()

    run(scenario())


# -- reading -----------------------------------------------------------------------------------------


def test_paging_both_directions_with_equal_timestamps_and_inserts_between_pages(
    pg_url: str, schema: str
) -> None:
    base = int(time.time()) - 3 * DAY_S
    envs = [make_env(base + (i // 7) * 3600, nonce=i) for i in range(120)]  # 7 per timestamp, 3 days

    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await a.submit(envs[:100])
            for descending in (False, True):
                seen: list[bytes] = []
                cursor = None
                pages = 0
                while True:
                    page = await a.query(HistoryQuery(base, base + 10 * DAY_S, limit=9, cursor=cursor,
                                                      descending=descending))
                    seen += [e.cursor for e in page.envelopes]
                    pages += 1
                    if pages == 3 and not descending:
                        await a.submit(envs[100:])  # later than every cursor so far: still served
                    if page.next_cursor is None:
                        break
                    assert page.next_cursor == page.envelopes[-1].cursor and len(page.envelopes) == 9
                    cursor = page.next_cursor
                expect = sorted(e.cursor for e in envs)
                assert seen == (expect[::-1] if descending else expect)
        finally:
            await a.close()

    run(scenario())


def test_range_is_inclusive_and_filters_follow_geth_bloom_semantics(pg_url: str, schema: str) -> None:
    topics = [bytes([i, i * 7 % 256, i * 13 % 256, i % 8]) for i in range(1, 25)]
    base = 1_700_000_000
    envs = [make_env(base + i, topic=topics[i % len(topics)], nonce=i) for i in range(200)]

    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await a.submit(envs)
            page = await a.query(HistoryQuery(base + 10, base + 19, limit=1000))
            assert [e.sent for e in page.envelopes] == list(range(base + 10, base + 20))
            wanted = (topics[2], topics[5])
            page = await a.query(HistoryQuery(base, base + 199, topics=wanted, limit=1000))
            assert {e.hash for e in page.envelopes} == {e.hash for e in envs if e.topic in wanted}
            req = topics_to_bloom(wanted)
            page = await a.query(HistoryQuery(base, base + 199, bloom=req, limit=1000))
            expect = {e.hash for e in envs if bloom_matches(req, topic_to_bloom(e.topic))}
            assert {e.hash for e in page.envelopes} == expect
            assert expect >= {e.hash for e in envs if e.topic in wanted}
            full = await a.query(HistoryQuery(base, base + 199, bloom=b"\xff" * 64, limit=1000))
            assert len(full.envelopes) == 200
            # topics take precedence over the bloom; an empty range is an empty page
            page = await a.query(HistoryQuery(base, base + 199, topics=(topics[0],), bloom=b"\x00" * 64))
            assert page.envelopes and all(e.topic == topics[0] for e in page.envelopes)
            assert (await a.query(HistoryQuery(base + 5, base + 4))).envelopes == []
        finally:
            await a.close()

    run(scenario())


def test_many_topics_take_the_filtered_scan_and_page_the_same(pg_url: str, schema: str) -> None:
    """Above MAX_TOPIC_RANGES topics the query walks the time range with a filter instead of one
    index range per topic; results and paging must not change."""
    base = 1_700_000_000
    topics = [i.to_bytes(2, "big") + b"\x5a\x01" for i in range(MAX_TOPIC_RANGES + 60)]
    envs = [make_env(base + i // 2, topic=topics[i % len(topics)], nonce=i) for i in range(2 * len(topics))]

    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await a.submit(envs)
            for chosen in (tuple(topics), tuple(topics[:10])):  # filtered scan, then per-topic ranges
                for descending in (False, True):
                    q = HistoryQuery(base, base + 10**6, topics=chosen, limit=37, descending=descending)
                    got = [e async for e in a.iterate(q, page_size=37)]
                    expect = sorted((e.cursor for e in envs if e.topic in chosen), reverse=descending)
                    assert [e.cursor for e in got] == expect
            wide = topics_to_bloom(topics)  # matches every stored topic (and more)
            got = [e async for e in a.iterate(HistoryQuery(base, base + 10**6, bloom=wide), page_size=100)]
            assert len(got) == len(envs)
            nothing = topic_to_bloom(b"\xff\xfe\xfd\xfc")
            page = await a.query(HistoryQuery(base, base + 10**6, bloom=nothing, cursor=envs[0].cursor))
            assert page.envelopes == [] and page.next_cursor is None
            with pytest.raises(InvalidCursor):  # the cursor is checked even when no topic matches
                await a.query(HistoryQuery(base, base + 10**6, bloom=nothing, cursor=b"\x01" * 36))
        finally:
            await a.close()

    run(scenario())


def test_bad_queries_have_defined_errors(pg_url: str, schema: str) -> None:
    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            env = make_env(1_700_000_000)
            await a.submit([env])
            q = HistoryQuery(0, 2**32 - 1)
            with pytest.raises(InvalidCursor):
                await a.query(HistoryQuery(0, 2**32 - 1, cursor=encode_cursor(env.sent, b"\x11" * 32)))
            with pytest.raises(InvalidCursor):
                await a.query(HistoryQuery(0, 2**32 - 1, cursor=b"\x00" * 35))
            with pytest.raises(ValueError):
                await a.query(HistoryQuery(0, 10, limit=0))
            with pytest.raises(ValueError):
                await a.query(HistoryQuery(0, 10, limit=1001))
            with pytest.raises(ValueError):
                await a.query(HistoryQuery(0, 10, bloom=b"\xff" * 63))
            with pytest.raises(ValueError):
                await a.query(HistoryQuery(0, 10, topics=(b"abc",)))
            # a cursor of a stored envelope outside the range is valid and yields an empty page
            page = await a.query(HistoryQuery(0, 10, cursor=env.cursor))
            assert page.envelopes == [] and page.next_cursor is None
            # an empty cursor means "from the start"
            assert len((await a.query(HistoryQuery(0, 2**32 - 1, cursor=b""))).envelopes) == 1
            assert len((await a.query(q)).envelopes) == 1
        finally:
            await a.close()

    run(scenario())


# -- several nodes on one database ------------------------------------------------------------------------


def test_two_nodes_share_one_archive(pg_url: str, schema: str) -> None:
    now = int(time.time())

    async def scenario() -> None:
        n1, n2 = archive(pg_url, schema), archive(pg_url, schema)
        await n1.open()
        await n2.open()
        try:
            relayed = [make_env(now - i, nonce=i) for i in range(30)]
            only1 = make_env(now, topic=b"\xaa\xbb\xcc\xdd", nonce=1000)
            only2 = make_env(now, topic=b"\xaa\xbb\xcc\xdd", nonce=2000)
            # both nodes see (and archive) the relayed envelopes at the same time
            await asyncio.gather(n1.submit([*relayed, only1]), n2.submit([*relayed[::-1], only2]))
            for node in (n1, n2):
                page = await node.query(HistoryQuery(now - 100, now + 100, limit=1000))
                assert len(page.envelopes) == 32
                assert await node.contains(only1.sent, only1.hash)
                assert await node.contains(only2.sent, only2.hash)
            # a cursor issued by one node is understood by the other (same key space)
            p1 = await n1.query(HistoryQuery(now - 100, now + 100, limit=10))
            p2 = await n2.query(HistoryQuery(now - 100, now + 100, limit=10, cursor=p1.next_cursor))
            p1b = await n1.query(HistoryQuery(now - 100, now + 100, limit=10, cursor=p1.next_cursor))
            assert p2 == p1b
        finally:
            await n2.close()
        # node 2 goes away; node 1 still serves what node 2 archived
        try:
            assert await n1.contains(only2.sent, only2.hash)
            assert (await n1.stats()).count == 32
        finally:
            await n1.close()

    run(scenario())


def test_two_nodes_archiving_the_same_envelopes_at_once_never_fail(pg_url: str, schema: str) -> None:
    """Every node of a fleet archives what it relays, at the same moment and in its own order; the
    inserts must not deadlock each other (each batch goes in key order)."""
    now = int(time.time())

    async def scenario() -> None:
        nodes = [archive(pg_url, schema, flush_interval_ms=0) for _ in range(3)]
        for n in nodes:
            await n.open()
        try:
            for round_ in range(6):
                envs = [make_env(now - i % 500, nonce=round_ * 10_000 + i) for i in range(1500)]
                orders = [envs, envs[::-1], envs[500:] + envs[:500]]
                await asyncio.gather(*(
                    n.submit(order[i:i + 300]) for n, order in zip(nodes, orders, strict=True)
                    for i in range(0, len(order), 300)
                ))
            counts = [(await n.stats()).count for n in nodes]
            assert counts == [6 * 1500] * 3
            assert all(n.health_reason == "ok" for n in nodes)
        finally:
            for n in nodes:
                await n.close()

    run(scenario())
    assert admin(pg_url, schema, "SELECT count(*) FROM envelopes") == [(6 * 1500,)]
    assert_counters_match(pg_url, schema)


def test_two_nodes_prune_without_double_deleting(pg_url: str, schema: str) -> None:
    now = int(time.time())

    async def scenario() -> None:
        policy = RetentionPolicy(max_count=50)
        n1 = archive(pg_url, schema, retention=policy)
        n2 = archive(pg_url, schema, retention=policy)
        await n1.open()
        await n2.open()
        try:
            await n1.submit([make_env(now - i, nonce=i) for i in range(200)])
            r1, r2 = await asyncio.gather(n1.prune(), n2.prune())
            assert r1.deleted + r2.deleted == 150
            assert (await n2.stats()).count == 50
        finally:
            await n1.close()
            await n2.close()

    run(scenario())
    assert_counters_match(pg_url, schema)


# -- partitions and retention ---------------------------------------------------------------------------


def partition_oids(pg_url: str, schema: str) -> dict[str, int]:
    rows = admin(pg_url, schema, "SELECT c.relname, c.oid FROM pg_class c JOIN pg_namespace n"
                 " ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname LIKE 'envelopes_p%%'",
                 (schema,))
    return {str(r): int(o) for r, o in rows}


def day_partition(day: int) -> str:
    return "envelopes_p" + time.strftime("%Y%m%d", time.gmtime(day))


def _partition_of(pg_url: str, schema: str) -> dict[int, str]:
    rows = admin(pg_url, schema, "SELECT sent, tableoid::regclass::text FROM envelopes")
    return {int(s): str(t) for s, t in rows}


def test_rows_land_in_day_partitions_and_default(pg_url: str, schema: str) -> None:
    today = int(time.time()) // DAY_S * DAY_S

    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await a.submit([make_env(today - 2 * DAY_S + 5), make_env(today + 60), make_env(1000),
                            make_env(today + 10 * DAY_S)])
        finally:
            await a.close()

    run(scenario())
    where = _partition_of(pg_url, schema)
    assert where[today - 2 * DAY_S + 5] == day_partition(today - 2 * DAY_S)
    assert where[today + 60] == day_partition(today)
    assert where[1000] == "envelopes_default"  # 1970: outside the partition window
    assert where[today + 10 * DAY_S] == "envelopes_default"  # far future


def test_new_partition_takes_its_rows_out_of_the_default(pg_url: str, schema: str) -> None:
    today = int(time.time()) // DAY_S * DAY_S
    future_day = today + 10 * DAY_S
    envs = [make_env(future_day + i * 60, nonce=i) for i in range(10)]

    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await a.submit(envs)
            assert set(_partition_of(pg_url, schema).values()) == {"envelopes_default"}
            await a._ensure_partition(future_day)  # that day comes into the window
            assert (await a.stats()).count == 10
            got = await everything(a)
            assert [e.hash for e in got] == [e.hash for e in sorted(envs, key=lambda e: e.cursor)]
        finally:
            await a.close()

    run(scenario())
    assert_counters_match(pg_url, schema)
    assert set(_partition_of(pg_url, schema).values()) == {
        "envelopes_p" + time.strftime("%Y%m%d", time.gmtime(future_day))
    }


def test_age_retention_drops_whole_partitions(pg_url: str, schema: str) -> None:
    now = int(time.time())
    today = now // DAY_S * DAY_S
    # 4 envelopes per day over the last 6 days, plus two ancient ones in the default partition
    envs = [make_env(today - d * DAY_S + h * 3600, nonce=d * 10 + h) for d in range(6) for h in range(4)]
    envs += [make_env(1000, nonce=999), make_env(2000, nonce=998)]
    # the cutoff falls at noon two days ago whatever the time of day (2.5 days from before noon
    # put it a day earlier, where the partition of three days ago still held rows after it)
    max_age = (now - today) + int(1.5 * DAY_S)
    cutoff = now - max_age

    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await a.submit(envs)
            before = {p[0] for p in await a.partitions()}
            oids_before = partition_oids(pg_url, schema)
            a.set_retention(RetentionPolicy(max_age_s=max_age))
            result = await a.prune()
            expect_gone = [e for e in envs if e.sent < cutoff]
            assert result.deleted == len(expect_gone) and result.reason == "max_age"
            left = await everything(a)
            assert {e.hash for e in left} == {e.hash for e in envs if e.sent >= cutoff}
            after = {p[0] for p in await a.partitions()}
            dropped = before - after
            # every day entirely older than the cutoff is gone as a table; the boundary day is kept
            # (which days those are depends on the time of day: the cutoff is 2.5 days back from now)
            days = [today - d * DAY_S for d in range(6)]
            whole_days_before_cutoff = {day for day in days if day + DAY_S <= cutoff}
            assert len(whole_days_before_cutoff) >= 2
            assert dropped == {"envelopes_p" + time.strftime("%Y%m%d", time.gmtime(day))
                               for day in whole_days_before_cutoff}
            assert "envelopes_p" + time.strftime("%Y%m%d", time.gmtime(cutoff // DAY_S * DAY_S)) in after
            oids_after = partition_oids(pg_url, schema)
            assert all(oids_after[n] == oids_before[n] for n in after if n in oids_before)
            assert (await a.prune()).deleted == 0
            # retention never recreates dropped days: an old envelope now lands in the default
            await a.submit([make_env(today - 5 * DAY_S + 7, nonce=4242)])
            assert {p[0] for p in await a.partitions()} == after
        finally:
            await a.close()

    run(scenario())
    assert_counters_match(pg_url, schema)


def test_count_retention_keeps_the_newest(pg_url: str, schema: str) -> None:
    today = int(time.time()) // DAY_S * DAY_S
    envs = [make_env(today - d * DAY_S + i * 60, nonce=d * 100 + i) for d in range(3) for i in range(40)]

    async def scenario() -> None:
        a = archive(pg_url, schema, retention=RetentionPolicy(max_count=55))
        await a.open()
        try:
            await a.submit(envs)
            n_parts = len(await a.partitions())
            result = await a.prune()
            assert (result.deleted, result.reason) == (65, "max_count")
            newest = sorted(envs, key=lambda e: e.cursor)[-55:]
            assert [e.hash for e in await everything(a)] == [e.hash for e in newest]
            # the oldest day (40 rows ≤ 65 excess) went as a whole table
            assert len(await a.partitions()) == n_parts - 1
        finally:
            await a.close()

    run(scenario())
    assert_counters_match(pg_url, schema)


def test_bytes_retention_keeps_under_the_cap(pg_url: str, schema: str) -> None:
    now = int(time.time())
    envs = [make_env(now - 1000 + i, size=200 + i % 50, nonce=i) for i in range(300)]

    async def scenario() -> None:
        a = archive(pg_url, schema)
        await a.open()
        try:
            await a.submit(envs)
            total = (await a.stats()).bytes
            cap = total // 3
            a.set_retention(RetentionPolicy(max_bytes=cap))
            result = await a.prune()
            stats = await a.stats()
            assert result.reason == "max_bytes" and result.deleted == 300 - stats.count
            assert stats.bytes <= cap
            # oldest first, and no more than needed: one more envelope would not fit
            kept = sorted(envs, key=lambda e: e.cursor)[-stats.count:]
            assert [e.hash for e in await everything(a)] == [e.hash for e in kept]
            one_more = sorted(envs, key=lambda e: e.cursor)[-stats.count - 1]
            assert stats.bytes + len(one_more.raw) + ROW_OVERHEAD_BYTES > cap
        finally:
            await a.close()

    run(scenario())
    assert_counters_match(pg_url, schema)


def test_maintenance_timer_prunes_and_creates_partitions_ahead(pg_url: str, schema: str) -> None:
    now = int(time.time())

    async def scenario() -> None:
        a = archive(pg_url, schema, prune_interval_s=0.05, retention=RetentionPolicy(max_count=5))
        await a.open()
        try:
            await a.submit([make_env(now - i, nonce=i) for i in range(20)])
            for _ in range(200):
                if (await a.stats()).count == 5:
                    break
                await asyncio.sleep(0.05)
            assert (await a.stats()).count == 5
        finally:
            await a.close()

    run(scenario())


def test_sessions_commit_synchronously_even_when_the_server_default_is_off(pg_url: str, schema: str) -> None:
    """An ack waits for a synchronous commit: with synchronous_commit=off as the session default
    (libpq options), the archive's own connections run with it on."""
    sep = "&" if "?" in pg_url else "?"
    url = pg_url + sep + "options=" + "-c%20synchronous_commit%3Doff"

    async def scenario() -> None:
        probe = await psycopg.AsyncConnection.connect(url)
        cur = await probe.execute("SHOW synchronous_commit")
        assert (await cur.fetchone()) == ("off",)  # the default really is off
        await probe.close()
        a = archive(url, schema)
        await a.open()
        try:
            await a.submit([make_env(int(time.time()))])
            assert a._pool is not None
            for _ in range(3):
                async with a._pool.connection() as conn:
                    cur = await conn.execute("SHOW synchronous_commit")
                    assert (await cur.fetchone()) == ("on",)
        finally:
            await a.close()

    run(scenario())
