"""What is particular to the SQLite backend: file format, schema versions, key packing, planner."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimail.archive import open_archive
from pimail.archive.base import ArchiveError, HistoryQuery, RetentionPolicy, SchemaTooNew
from pimail.archive.retention import parse_duration, parse_size, policy_from_config
from pimail.archive.sqlite import (
    BUCKET_EXPR,
    BUCKET_SHIFT,
    SCHEMA_VERSION,
    TOPIC_SPAN_BITS,
    V1_HASH_EXPR,
    Row,
    SqliteArchive,
    key_bucket,
    make_key,
    span_ceiling,
    span_floor,
    topic_bytes,
    topic_int,
)
from pimail.config import ArchiveConfig
from pimail.envelope.bloom import bloom_matches, topic_to_bloom, topics_to_bloom
from pimail.errors import UserError
from tests.archive.conftest import block_writer, make_envelope, run, topic_n
from tests.waiting import eventually

ALL = (0, 2**32 - 1)
BASE = 1_700_000_000


def test_file_is_wal_incremental_and_versioned(tmp_path: Path) -> None:
    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", synchronous="full")
        await a.open()
        await a.submit([make_envelope(1)])
        await a.close()

    run(main())
    conn = sqlite3.connect(tmp_path / "a.sqlite")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # INCREMENTAL
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("SELECT count(*) FROM envelopes").fetchone()[0] == 1


def test_newer_schema_refuses_to_open(tmp_path: Path) -> None:
    run(_open_close(tmp_path / "a.sqlite"))
    conn = sqlite3.connect(tmp_path / "a.sqlite")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match=r"newer pimail"):
        run(_open_close(tmp_path / "a.sqlite"))


def test_version_1_archive_is_migrated_in_place(tmp_path: Path) -> None:
    """A file written by schema 1 (it had an index by hash prefix) opens as 2 with every envelope."""
    path = tmp_path / "a.sqlite"
    envs = [make_envelope(i, BASE + i % 5, topic_n(i % 3)) for i in range(300)]

    async def fill() -> None:
        a = SqliteArchive(path, flush_interval_ms=1)
        await a.open()
        await a.submit(envs)
        await a.close()

    run(fill())
    conn = sqlite3.connect(path)  # turn it back into exactly what pimail's schema 1 left on disk
    conn.execute(f"CREATE INDEX envelopes_hash ON envelopes({BUCKET_EXPR}, {V1_HASH_EXPR})")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()

    async def reopen() -> tuple[int, bool, list[bytes]]:
        a = SqliteArchive(path, flush_interval_ms=1)
        await a.open()
        try:
            present = all([await a.contains(e.sent, e.hash) for e in envs])
            page = await a.query(HistoryQuery(*ALL, limit=1000))
            return (await a.stats()).count, present, [e.raw for e in page.envelopes]
        finally:
            await a.close()

    count, present, raws = run(reopen())
    assert count == 300 and present
    assert raws == [e.raw for e in sorted(envs, key=lambda e: e.cursor)]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 2
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "envelopes_hash" not in indexes and "envelopes_topic" in indexes
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_a_new_archive_is_created_at_the_latest_version_in_one_step(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="pimail.archive.sqlite"):
        run(_open_close(tmp_path / "new.sqlite"))
    lines = [r.getMessage() for r in caplog.records if "schema" in r.getMessage()]
    assert not [m for m in lines if "migrated" in m], lines  # not "version 1" and then "2"
    assert any(m.endswith(f"created (schema version {SCHEMA_VERSION})") for m in lines), lines
    # the same tables and indexes as an archive that went through every migration
    import sqlite_utils

    from pimail.archive.sqlite import layout

    old = sqlite3.connect(tmp_path / "old.sqlite")
    old.execute("PRAGMA auto_vacuum = INCREMENTAL")
    db = sqlite_utils.Database(old)
    for step in layout.MIGRATIONS:
        step(db)
    new = sqlite3.connect(tmp_path / "new.sqlite")
    schema = "SELECT type, name, sql FROM sqlite_master ORDER BY name"
    assert new.execute(schema).fetchall() == old.execute(schema).fetchall()
    meta = "SELECT key, value FROM meta ORDER BY key"
    assert new.execute(meta).fetchall() == old.execute(meta).fetchall() == [("count", 0), ("topic_gen", 0)]
    assert new.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_foreign_files_refuse_to_open(tmp_path: Path) -> None:
    other = tmp_path / "other.sqlite"
    sqlite3.connect(other).execute("CREATE TABLE t(x)")
    with pytest.raises(ArchiveError, match="not a pimail archive"):
        run(_open_close(other))
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(ArchiveError):
        run(_open_close(junk))


async def _open_close(path: Path) -> None:
    a = SqliteArchive(path)
    await a.open()
    await a.close()


def test_bad_options() -> None:
    with pytest.raises(ValueError):
        SqliteArchive("x.sqlite", synchronous="sometimes")
    with pytest.raises(ValueError):
        SqliteArchive("x.sqlite", flush_max_envelopes=0)


def test_hash_prefix_collision_is_kept_apart(tmp_path: Path) -> None:
    """Two envelopes of one second whose hashes share their first four bytes (found by search)."""
    one, two = make_envelope(17877, BASE), make_envelope(90723, BASE)
    assert one.hash[:4] == two.hash[:4] and one.hash != two.hash

    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=1)
        await a.open()
        await a.submit([one])
        await a.submit([two])
        await a.submit([two, one])  # both still recognised as duplicates
        assert a.inserted_total == 2
        assert await a.contains(one.sent, one.hash) and await a.contains(two.sent, two.hash)
        for descending in (False, True):
            page = await a.query(HistoryQuery(*ALL, limit=1, descending=descending))
            nxt = await a.query(HistoryQuery(*ALL, limit=1, cursor=page.next_cursor, descending=descending))
            assert {page.envelopes[0].hash, nxt.envelopes[0].hash} == {one.hash, two.hash}
            assert nxt.next_cursor is None
        await a.close()
        b = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=1)  # a second colliding batch
        await b.open()
        await b.submit([two, one, make_envelope(3, BASE)])
        assert b.inserted_total == 1 and (await b.stats()).count == 3
        await b.close()

    run(main())


def test_submit_rejects_bad_records(tmp_path: Path) -> None:
    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite")
        await a.open()
        good = make_envelope(1)
        for bad in (
            good.__class__(good.sent, good.hash[:31], good.topic, good.expiry, good.raw),
            good.__class__(-1, good.hash, good.topic, good.expiry, good.raw),
            good.__class__(good.sent, good.hash, b"abc", good.expiry, good.raw),
            good.__class__(good.sent, good.hash, good.topic, good.sent - 1, good.raw),
        ):
            with pytest.raises(ValueError):
                a.submit([bad])
        assert await a.submit([]) is None
        await a.close()

    run(main())


def test_full_write_queue_fails_fast(tmp_path: Path) -> None:
    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=10_000, flush_max_envelopes=100,
                          max_pending_envelopes=50)
        await a.open()
        first = a.submit([make_envelope(i) for i in range(40)])
        second = a.submit([make_envelope(100 + i) for i in range(20)])  # would exceed 50 pending
        with pytest.raises(ArchiveError, match="queue is full"):
            await second
        await a.close()
        assert first.done() and first.exception() is None

    run(main())


def test_bad_limits_and_filters(tmp_path: Path) -> None:
    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite")
        await a.open()
        with pytest.raises(ValueError):
            await a.query(HistoryQuery(*ALL, bloom=b"\xff" * 63))
        with pytest.raises(ValueError):
            await a.query(HistoryQuery(*ALL, topics=(b"abc",)))
        await a.close()
        with pytest.raises(ArchiveError):
            await a.query(HistoryQuery(*ALL))

    run(main())


def test_pruning_gives_pages_back_without_full_vacuum(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"

    async def main() -> None:
        a = SqliteArchive(path, flush_interval_ms=1)
        await a.open()
        await a.submit([make_envelope(i, BASE + i, size=2000) for i in range(2000)])
        await a.vacuum()
        full_size = path.stat().st_size
        a.set_retention(RetentionPolicy(max_count=200))
        assert (await a.prune()).deleted == 1800
        freed = await a.vacuum()
        assert freed > 0
        assert path.stat().st_size < full_size / 4
        assert await a.check() == []
        await a.close()

    run(main())


def test_check_reports_counter_damage(tmp_path: Path) -> None:
    path = tmp_path / "a.sqlite"

    async def main() -> list[str]:
        a = SqliteArchive(path)
        await a.open()
        await a.submit([make_envelope(i) for i in range(3)])
        await a.close()
        conn = sqlite3.connect(path)
        conn.execute("UPDATE meta SET value = value + 5 WHERE key = 'count'")
        conn.execute("DELETE FROM topics")
        conn.commit()
        conn.close()
        a = SqliteArchive(path)
        await a.open()
        problems = await a.check()
        await a.close()
        return problems

    problems = run(main())
    assert any("counter says 8 but the table holds 3" in p for p in problems)
    assert any("missing from the topics table" in p for p in problems)


@pytest.mark.parametrize("mode", ["scan", "ranges"])
@settings(max_examples=25, deadline=None)
@given(
    specs=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 30)), max_size=80),
    page=st.integers(1, 9),
    descending=st.booleans(),
    wanted=st.lists(st.integers(0, 30), min_size=1, max_size=4),
    by_bloom=st.booleans(),
    spread=st.sampled_from([1, 7001]),  # 7001 s apart: the envelopes fall into several index buckets
)
def test_both_query_plans_page_correctly(mode: str, specs: list[tuple[int, int]], page: int,
                                         descending: bool, wanted: list[int], by_bloom: bool,
                                         spread: int) -> None:
    """The planner walks the time range or the (bucket, topic) index; both must page the same way."""
    envs = [make_envelope(i, BASE + s * spread, topic_n(t)) for i, (s, t) in enumerate(specs)]
    topics = tuple(topic_n(t) for t in wanted)
    bloom = topics_to_bloom(topics) if by_bloom else None
    lower, upper = BASE + spread, BASE + 4 * spread

    def matches(e: object) -> bool:
        topic = e.topic  # type: ignore[attr-defined]
        return bloom_matches(bloom, topic_to_bloom(topic)) if bloom else topic in topics

    async def main(tmp: Path) -> None:
        a = SqliteArchive(tmp / "a.sqlite", flush_interval_ms=1)
        if mode == "scan":
            a.max_topic_ranges = 0
        elif mode == "ranges":
            a.max_topic_ranges = 1000
        await a.open()
        await a.submit([e for e in envs if e.sent >= BASE + 3 * spread])  # newer first,
        await a.submit([e for e in envs if e.sent < BASE + 3 * spread])  # then older ones
        q = HistoryQuery(lower, upper, () if bloom else topics, bloom, page, None, descending)
        got = [e async for e in a.iterate(q, page_size=page)]
        expect = sorted((e for e in envs if lower <= e.sent <= upper and matches(e)),
                        key=lambda e: e.cursor, reverse=descending)
        assert [e.hash for e in got] == [e.hash for e in expect]
        await a.close()

    with tempfile.TemporaryDirectory() as tmp:
        run(main(Path(tmp)))


def test_open_archive_picks_the_backend(tmp_path: Path) -> None:
    a = open_archive(ArchiveConfig(max_age="7d", max_bytes="1GB"), tmp_path, None)
    assert isinstance(a, SqliteArchive)
    assert a.path == tmp_path / "archive.sqlite"
    assert a.retention == RetentionPolicy(max_age_s=7 * 86400, max_count=0, max_bytes=10**9,
                                          min_free_disk_bytes=256 * 10**6)
    for bad in (ArchiveConfig(url="mysql://x"), ArchiveConfig(max_age="forever"),
                ArchiveConfig(synchronous="off"), ArchiveConfig(min_free_disk="-3MB")):
        with pytest.raises(UserError):
            open_archive(bad, tmp_path, None)


def test_retention_parsing() -> None:
    assert parse_size("8GB") == 8 * 10**9
    assert parse_size("256MB") == 256 * 10**6
    assert parse_size("1GiB") == 2**30
    assert parse_size(0) == 0
    assert parse_duration("30d") == 30 * 86400
    assert parse_duration("12h") == 43200
    for bad in ("8 parsecs", "", "-1GB", "GB"):
        with pytest.raises(UserError, match="size"):
            parse_size(bad)
    with pytest.raises(UserError, match=r"archive\.max_age"):
        parse_duration("soon", "archive.max_age")
    with pytest.raises(UserError, match="max_count"):
        policy_from_config(ArchiveConfig(max_count=-1))


def test_health_reason_starts_ok(tmp_path: Path) -> None:
    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite")
        await a.open()
        assert a.health_reason == "ok"
        s = await a.stats()
        assert s.extra["health"] == "ok" and s.extra["schema_version"] == SCHEMA_VERSION
        await a.close()

    asyncio.run(main())


def test_io_error_fails_the_batch_reports_and_recovers(tmp_path: Path) -> None:
    """An I/O error (injected at the storage edge) fails that batch only; health shows it until a
    later batch is written through a fresh connection."""
    from pimail.health import HealthModel, HealthState

    health = HealthModel()
    health.mark_started()

    async def main() -> None:
        # no ack log: every group goes straight into SQLite (the log's own failures: test_acklog)
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=1, health=health, index_interval_s=0)
        await a.open()
        real_insert = a._insert
        calls = {"n": 0}

        def failing_once(rows: list[Row], tail: bool) -> None:
            calls["n"] += 1
            if calls["n"] == 1:
                exc = sqlite3.OperationalError("disk I/O error")
                exc.sqlite_errorcode = 10  # type: ignore[attr-defined]  # SQLITE_IOERR
                raise exc
            real_insert(rows, tail)

        a._insert = failing_once  # type: ignore[method-assign]
        with pytest.raises(ArchiveError, match="I/O error"):
            await a.submit([make_envelope(1)])
        # the health report hops onto the loop
        await eventually(lambda: health.state is HealthState.FAILING, what="failing after the I/O error")
        assert "cannot write" in (a.health_reason or "")
        await a.submit([make_envelope(2)])
        await eventually(lambda: health.state is HealthState.HEALTHY, what="healthy after a good write")
        assert health.state is HealthState.HEALTHY and a.health_reason == "ok"
        lost, kept = make_envelope(1), make_envelope(2)
        assert not await a.contains(lost.sent, lost.hash) and await a.contains(kept.sent, kept.hash)
        await a.close()

    run(main())


def test_retention_drops_topics_that_have_no_envelopes_left(tmp_path: Path) -> None:
    import time

    async def main() -> None:
        now = int(time.time())
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=1, prune_interval_s=0,
                          retention=RetentionPolicy(max_age_s=86400), index_interval_s=0)
        await a.open()
        old = [make_envelope(i, now - 10 * 86400, topic_n(1)) for i in range(5)]
        new = [make_envelope(10 + i, now - 60, topic_n(2)) for i in range(5)]
        await a.submit(old + new)
        assert (await a.stats()).extra["distinct_topics"] == 2
        assert len((await a.query(HistoryQuery(*ALL, bloom=topic_to_bloom(topic_n(1))))).envelopes) == 5
        assert (await a.prune()).deleted == 5
        s = await a.stats()
        assert s.count == 5 and s.extra["distinct_topics"] == 1
        assert (await a.query(HistoryQuery(*ALL, bloom=topic_to_bloom(topic_n(1))))).envelopes == []
        assert len((await a.query(HistoryQuery(*ALL, topics=(topic_n(2),)))).envelopes) == 5
        assert await a.check() == []
        await a.close()

    run(main())


def test_topic_spans_are_rounded_to_blocks_and_rarely_rewritten(tmp_path: Path) -> None:
    """topics rows hold block-aligned spans: a commit that keeps every topic inside its block
    writes no topics row; queries still find every envelope on both sides of a block edge."""
    block_s = 1 << (BUCKET_SHIFT - 32 + TOPIC_SPAN_BITS)  # seconds of sent time per block
    edge = (BASE // block_s + 1) * block_s  # a block boundary of sent time
    a_topic, b_topic = topic_n(1), topic_n(2)
    early = [make_envelope(i, edge - 100 - i, a_topic) for i in range(3)]  # last block before the edge
    same_block = [make_envelope(10 + i, edge - 3 * 16384 - i, a_topic) for i in range(3)]  # older buckets
    late = [make_envelope(20 + i, edge + 50 + i, a_topic) for i in range(3)]  # first block after it
    far = [make_envelope(30 + i, edge + 3 * block_s + i, b_topic) for i in range(3)]

    def block_of(sent: int) -> int:
        return key_bucket(make_key(sent, 0)) >> TOPIC_SPAN_BITS

    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=1, prune_interval_s=0, index_interval_s=0)
        await a.open()
        await a.submit(early + far)
        conn = sqlite3.connect(tmp_path / "a.sqlite")
        spans = {topic_bytes(t): (lo, hi) for t, lo, hi in conn.execute("SELECT * FROM topics")}
        first, last = spans[a_topic]
        assert first == span_floor(first) and last == span_ceiling(last) and last - first == 15
        assert first >> TOPIC_SPAN_BITS == block_of(edge - 1)
        assert a._wconn is not None
        changes = a._wconn.total_changes
        await a.submit(same_block)  # a known topic, inside its block: envelopes and the counter only
        assert a._wconn.total_changes - changes == len(same_block) + 1
        await a.submit(late)  # the next block: the row grows by one block
        (last2,) = conn.execute("SELECT last_bucket FROM topics WHERE topic = ?",
                                (topic_int(a_topic),)).fetchone()
        assert last2 == last + 16 and last2 >> TOPIC_SPAN_BITS == block_of(edge)
        conn.close()
        want = sorted(early + same_block + late, key=lambda e: e.cursor)
        for descending in (False, True):
            for q in (HistoryQuery(*ALL, topics=(a_topic,), limit=2, descending=descending),
                      HistoryQuery(*ALL, bloom=topic_to_bloom(a_topic), limit=2, descending=descending),
                      HistoryQuery(edge - 150, edge + 51, topics=(a_topic,), limit=1, descending=descending)):
                got = [e.hash async for e in a.iterate(q, page_size=q.limit)]
                expect = [e.hash for e in want if q.lower <= e.sent <= q.upper]
                assert got == (expect[::-1] if descending else expect)
        assert await a.check() == []
        await a.close()

    run(main())


def test_a_due_group_takes_what_is_already_waiting(tmp_path: Path) -> None:
    """Once flush_max envelopes are waiting, one commit takes all that wait (up to 4 × flush_max)."""
    groups: list[int] = []

    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=10_000, flush_max_envelopes=100,
                          prune_interval_s=0, on_durable=lambda envs: groups.append(len(envs)))
        await a.open()
        for total, expect in ((350, [350]), (1000, [400, 400, 200])):
            groups.clear()
            envs = [make_envelope(total * 10 + i, BASE + i) for i in range(total)]
            with a._cond:  # the writer sees them all queued at once, as after a long commit
                futs = [a.submit(envs[i : i + 100]) for i in range(0, total, 100)]
            await asyncio.gather(*futs)
            assert groups == expect
        assert (await a.stats()).count == 1350
        await a.close()

    run(main())


# -- durability and adaptive group commit (issue 17) --------------------------------------------------


def test_acks_are_power_loss_safe_by_default_and_normal_is_the_opt_out(tmp_path: Path) -> None:
    """The writer connection runs with synchronous=FULL (2) by default, from the config too;
    "normal" (1) is what an operator gets only by asking for it."""

    async def main() -> None:
        for archive, want in (
            (SqliteArchive(tmp_path / "default.sqlite"), 2),
            (open_archive(ArchiveConfig(), tmp_path / "cfg", None), 2),
            (open_archive(ArchiveConfig(synchronous="normal"), tmp_path / "normal", None), 1),
        ):
            assert isinstance(archive, SqliteArchive)
            await archive.open()
            await archive.submit([make_envelope(1)])
            assert archive._wconn is not None
            assert archive._wconn.execute("PRAGMA synchronous").fetchone()[0] == want
            assert (await archive.stats()).extra["synchronous"] == ("full" if want == 2 else "normal")
            await archive.close()

    assert ArchiveConfig().synchronous == "full"
    run(main())


def test_submissions_behind_a_busy_writer_commit_as_one_group_when_it_is_free(tmp_path: Path) -> None:
    """A busy node: what queues while the writer works is one group, committed as soon as the writer
    is free (a full group by bytes), not after another flush interval."""
    groups: list[int] = []

    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=600_000, flush_max_envelopes=10_000,
                          prune_interval_s=0, busy_group_bytes=1500,
                          on_durable=lambda envs: groups.append(len(envs)))
        await a.open()
        parked, release = block_writer(a)
        assert await asyncio.to_thread(parked.wait, 30)
        envs = [make_envelope(100 + i, BASE + i) for i in range(40)]
        futs = [a.submit([e]) for e in envs]  # 40 submits of one envelope, ≥ 1500 bytes in all
        assert sum(len(e.raw) for e in envs) >= 1500
        release.set()
        # the 10-minute interval never elapses here: only the full group can have committed them
        await asyncio.wait_for(asyncio.gather(*futs), 30)
        assert groups == [40]
        await a.close()

    run(main())


def test_a_quiet_node_commits_a_lone_envelope_at_the_end_of_the_interval(tmp_path: Path) -> None:
    """A quiet node: a single envelope (far below a full group) is committed by the interval alone,
    never before it has waited the interval, and alone in its group."""
    groups: list[tuple[int, float]] = []
    interval_ms = 300

    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=interval_ms, prune_interval_s=0,
                          on_durable=lambda envs: groups.append((len(envs), time.monotonic())))
        await a.open()
        submitted = time.monotonic()
        await asyncio.wait_for(a.submit([make_envelope(7)]), 30)
        assert len(groups) == 1 and groups[0][0] == 1
        assert groups[0][1] - submitted >= interval_ms / 1000 * 0.99  # not one moment early
        await a.close()

    run(main())
