"""The SQLite archive's ack log: replay, damaged logs, reads of the unindexed tail, retention and
close with envelopes only in the log, a second process, and the log's own failures.

A "crash" here is a copy of the archive's files taken while it runs with its writer idle: the page
cache is what a kill -9 leaves, so the copy is the data directory the next start would find
(tests/archive/test_crash.py kills real processes).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest

from pimail.archive.base import ArchivedEnvelope, HistoryQuery, RetentionPolicy
from pimail.archive.bundle import export_bundle, import_bundle
from pimail.archive.sqlite import SqliteArchive
from pimail.archive.sqlite.acklog import HEADER_BYTES, RECORD_OVERHEAD, AckLog
from pimail.envelope.bloom import topic_to_bloom
from tests.archive.conftest import make_envelope, run, topic_n

ALL = (0, 2**32 - 1)
BASE = 1_700_000_000
HOUR = 3600  # index_interval_s that never comes due in a test: the tail stays in the log


def archive_at(path: Path, **options: object) -> SqliteArchive:
    options.setdefault("flush_interval_ms", 1)
    options.setdefault("prune_interval_s", 0)
    options.setdefault("index_interval_s", HOUR)
    return SqliteArchive(path, **options)  # type: ignore[arg-type]


def envelopes(n: int, first: int = 0, topic: bytes = b"\x00\x00\x00\x01") -> list[ArchivedEnvelope]:
    return [make_envelope(first + i, BASE + first + i, topic, size=64) for i in range(n)]


def table_count(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT count(*) FROM envelopes").fetchone()[0])
    finally:
        conn.close()


def log_of(db: Path) -> Path:
    return db.with_name(db.name + ".acklog")


def crash_copy(src: Path, dest_dir: Path) -> Path:
    """The data directory as a kill -9 of the running archive at ``src`` would leave it."""
    dest_dir.mkdir()
    for suffix in ("", "-wal", ".acklog"):
        f = Path(f"{src}{suffix}")
        if f.exists():
            shutil.copyfile(f, dest_dir / f.name)
    return dest_dir / src.name


def logged_records(log: Path) -> int:
    """Valid records in the log of the current epoch (read only, as a second process would)."""
    reader = AckLog(log, 0, sync=False)
    fd = os.open(log, os.O_RDWR)
    try:
        with contextlib.suppress(BlockingIOError):  # the reader must be a non-owner: it only reads
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        found = reader.open()
        reader.close()
    finally:
        os.close(fd)
    return len(found.envelopes)


async def all_hashes(a: SqliteArchive, **query: object) -> list[bytes]:
    return [e.hash async for e in a.iterate(HistoryQuery(*ALL, **query), page_size=7)]  # type: ignore[arg-type]


def crashed_with(tmp_path: Path, envs: list[ArchivedEnvelope],
                 indexed: list[ArchivedEnvelope] | None = None) -> Path:
    """A data dir whose archive holds ``indexed`` in SQLite and ``envs`` only in its ack log."""
    db = tmp_path / "run" / "archive.sqlite"

    async def main() -> Path:
        a = archive_at(db)
        await a.open()
        if indexed:
            await a.submit(list(indexed))
            await a.vacuum()  # indexes the tail
        await a.submit(envs)
        assert (await a.stats()).extra["log_envelopes"] == len(envs)
        copy = crash_copy(db, tmp_path / "crashed")
        await a.close()
        return copy

    return run(main())


# -- replay ----------------------------------------------------------------------------------------


def test_replay_after_a_crash_indexes_every_acknowledged_envelope(tmp_path: Path) -> None:
    envs = envelopes(40)
    db = crashed_with(tmp_path, envs, indexed=envelopes(10, first=100))
    assert table_count(db) == 10  # the 40 were acknowledged from the log only

    async def main() -> None:
        a = archive_at(db)
        await a.open()
        s = await a.stats()
        assert s.count == 50 and s.extra["log_envelopes"] == 0
        for env in envs:
            assert await a.contains(env.sent, env.hash)
        assert await a.check() == []
        await a.close()

    run(main())
    assert table_count(db) == 50
    assert logged_records(log_of(db)) == 0  # the log was reset after the index commit


def test_replay_is_idempotent(tmp_path: Path) -> None:
    envs = envelopes(25)
    db = crashed_with(tmp_path, envs)
    saved = log_of(db).read_bytes()

    async def open_close() -> int:
        a = archive_at(db)
        await a.open()
        n = (await a.stats()).count
        await a.close()
        return n

    assert run(open_close()) == 25
    log_of(db).write_bytes(saved)  # as if the node died after the index commit, before the reset
    assert run(open_close()) == 25
    assert table_count(db) == 25

    async def check() -> None:
        a = archive_at(db)
        await a.open()
        assert await a.check() == []
        assert sorted(await all_hashes(a)) == sorted(e.hash for e in envs)
        await a.close()

    run(check())


def _record_offsets(log: Path, n: int) -> list[int]:
    data = log.read_bytes()
    offsets, pos = [], HEADER_BYTES
    for _ in range(n):
        offsets.append(pos)
        (length,) = struct.unpack_from(">I", data, pos + 4)
        pos += RECORD_OVERHEAD + length
    return [*offsets, pos]


def test_a_torn_last_record_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    envs = envelopes(10)
    db = crashed_with(tmp_path, envs)
    log = log_of(db)
    offsets = _record_offsets(log, 10)
    with open(log, "r+b") as f:  # the last record half written
        f.seek(offsets[9] + (offsets[10] - offsets[9]) // 2)
        f.write(bytes(offsets[10] - offsets[9]))

    async def main() -> None:
        a = archive_at(db)
        await a.open()
        assert (await a.stats()).count == 9
        assert not await a.contains(envs[9].sent, envs[9].hash)
        assert await a.contains(envs[8].sent, envs[8].hash)
        await a.close()

    with caplog.at_level(logging.INFO, logger="pimail.archive.sqlite.acklog"):
        run(main())
    assert any("torn last record" in r.getMessage() for r in caplog.records)


def test_a_corrupt_record_in_the_middle_is_skipped_and_logged_and_the_rest_kept(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    envs = envelopes(12)
    db = crashed_with(tmp_path, envs)
    log = log_of(db)
    offsets = _record_offsets(log, 12)
    with open(log, "r+b") as f:  # one flipped byte in the raw bytes of record 5
        f.seek(offsets[5] + RECORD_OVERHEAD + 10)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x40]))

    async def main() -> None:
        a = archive_at(db)
        await a.open()
        assert (await a.stats()).count == 11
        for i, env in enumerate(envs):
            assert await a.contains(env.sent, env.hash) == (i != 5)
        assert await a.check() == []
        await a.close()

    with caplog.at_level(logging.WARNING, logger="pimail.archive.sqlite.acklog"):
        run(main())
    corrupt = [r.getMessage() for r in caplog.records if "corrupt record" in r.getMessage()]
    assert len(corrupt) == 1 and f"offset {offsets[5]}" in corrupt[0]


def test_an_unreadable_header_replays_every_valid_record(tmp_path: Path) -> None:
    envs = envelopes(8)
    db = crashed_with(tmp_path, envs)
    with open(log_of(db), "r+b") as f:
        f.write(b"garbage!")

    async def main() -> None:
        a = archive_at(db)
        await a.open()
        assert (await a.stats()).count == 8
        await a.close()

    run(main())
    assert logged_records(log_of(db)) == 0


def test_a_leftover_log_is_replayed_and_removed_when_the_log_is_turned_off(tmp_path: Path) -> None:
    envs = envelopes(6)
    db = crashed_with(tmp_path, envs)

    async def main() -> None:
        a = archive_at(db, index_interval_s=0)
        await a.open()
        assert (await a.stats()).count == 6
        await a.submit(envelopes(3, first=50))
        assert table_count(db) == 9  # straight into SQLite
        await a.close()

    run(main())
    assert not log_of(db).exists()


# -- reads, retention, close -----------------------------------------------------------------------


def test_reads_include_the_unindexed_tail_merged_in_order(tmp_path: Path) -> None:
    db = tmp_path / "archive.sqlite"
    t1, t2 = topic_n(1), topic_n(2)
    indexed = envelopes(15, 0, t1) + envelopes(15, 1000, t2)
    logged = envelopes(15, 500, t1) + envelopes(15, 1500, t2) + envelopes(5, 20, t2)  # interleaved

    async def main() -> None:
        a = archive_at(db)
        await a.open()
        await a.submit(indexed)
        await a.vacuum()
        await a.submit(logged)
        s = await a.stats()
        assert s.count == 65 and s.extra["log_envelopes"] == 35
        assert table_count(db) == 30
        everything = sorted(indexed + logged, key=lambda e: e.cursor)
        assert s.oldest_sent == everything[0].sent and s.newest_sent == everything[-1].sent
        # every envelope once, in key order, across pages that mix the table and the tail
        assert await all_hashes(a) == [e.hash for e in everything]
        assert await all_hashes(a, descending=True) == [e.hash for e in reversed(everything)]
        by_topic = [e.hash for e in everything if e.topic == t2]
        assert await all_hashes(a, topics=(t2,)) == by_topic
        assert await all_hashes(a, bloom=topic_to_bloom(t2)) == by_topic
        raw = await a.query_raw(HistoryQuery(*ALL, limit=10, topics=(t1,)))
        assert raw.raws == [e.raw for e in everything if e.topic == t1][:10] and raw.more
        # a cursor that names an envelope only in the tail
        page = await a.query(HistoryQuery(*ALL, limit=40))
        assert page.next_cursor == everything[39].cursor
        rest = await a.query(HistoryQuery(*ALL, cursor=page.next_cursor))
        assert [e.hash for e in rest.envelopes] == [e.hash for e in everything[40:]]
        for env in logged:
            assert await a.contains(env.sent, env.hash)
        out = tmp_path / "backup.bundle"
        assert (await export_bundle(a, out)).count == 65
        await a.close()

    run(main())

    async def restore() -> None:
        b = archive_at(tmp_path / "b" / "archive.sqlite")
        await b.open()
        assert (await import_bundle(b, tmp_path / "backup.bundle")).added == 65
        await b.close()

    run(restore())


def test_duplicates_of_indexed_or_logged_envelopes_are_ignored(tmp_path: Path) -> None:
    async def main() -> None:
        a = archive_at(tmp_path / "archive.sqlite")
        await a.open()
        first, second = envelopes(10), envelopes(10, first=10)
        await a.submit(first)
        await a.vacuum()
        await a.submit(second)
        await a.submit(first + second + first[:3])
        s = await a.stats()
        assert s.count == 20 and s.extra["log_envelopes"] == 10 and a.inserted_total == 20
        await a.close()
        assert table_count(tmp_path / "archive.sqlite") == 20

    run(main())


def test_retention_counts_the_log(tmp_path: Path) -> None:
    async def main() -> None:
        a = archive_at(tmp_path / "archive.sqlite", retention=RetentionPolicy(max_count=10))
        await a.open()
        envs = envelopes(30)
        await a.submit(envs)
        assert (await a.stats()).extra["log_envelopes"] == 30
        assert (await a.prune()).deleted == 20
        s = await a.stats()
        assert s.count == 10 and s.oldest_sent == envs[20].sent
        await a.submit(envelopes(3, first=30))
        a.set_retention(RetentionPolicy(max_count=4))
        await a.prune()
        assert (await a.stats()).count == 4
        assert await all_hashes(a) == [e.hash for e in envelopes(33)[-4:]]
        await a.close()

    run(main())


def test_close_indexes_the_log(tmp_path: Path) -> None:
    db = tmp_path / "archive.sqlite"

    async def main() -> None:
        a = archive_at(db)
        await a.open()
        await a.submit(envelopes(17))
        assert table_count(db) == 0
        await a.close()

    run(main())
    assert table_count(db) == 17
    assert logged_records(log_of(db)) == 0


def test_a_large_group_goes_straight_into_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "archive.sqlite"

    async def main() -> None:
        a = archive_at(db, direct_group_bytes=1000)  # direct from 1000 bytes on
        await a.open()
        await a.submit(envelopes(2))  # small: the log
        await a.submit(envelopes(20, first=10))  # ~2 KB: the log's two first, then the group
        assert table_count(db) == 22 and (await a.stats()).extra["log_envelopes"] == 0
        await a.close()

    run(main())


def test_the_index_comes_due_by_itself(tmp_path: Path) -> None:
    from tests.waiting import eventually

    db = tmp_path / "archive.sqlite"

    async def main() -> None:
        a = archive_at(db, index_interval_s=0.01)
        await a.open()
        await a.submit(envelopes(5))
        await eventually(lambda: table_count(db) == 5, what="the tail indexed behind the log")
        await a.close()

    run(main())


def test_a_second_process_reads_the_log_it_does_not_own(tmp_path: Path) -> None:
    db = tmp_path / "archive.sqlite"

    async def main() -> None:
        node = archive_at(db)
        await node.open()
        await node.submit(envelopes(12))
        cli = archive_at(db)  # pimail archive export while the node runs
        await cli.open()
        assert (await cli.stats()).count == 12
        await cli.submit(envelopes(3, first=100))  # straight into SQLite: the log is the node's
        assert table_count(db) == 3
        await cli.close()
        assert table_count(db) == 3 and logged_records(log_of(db)) == 12
        await node.submit(envelopes(2, first=200))
        assert (await node.stats()).count == 14 + 3
        await node.close()
        assert table_count(db) == 17

    run(main())


# -- what an ack waits for, and the log's failures ---------------------------------------------------


@pytest.mark.parametrize(("synchronous", "syncs"), [("full", True), ("normal", False)])
def test_full_fsyncs_each_append_before_the_ack_and_normal_does_not(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, synchronous: str, syncs: bool) -> None:
    synced: list[int] = []
    real = os.fdatasync

    def counting(fd: int) -> None:
        synced.append(fd)
        real(fd)

    async def main() -> None:
        a = archive_at(tmp_path / "archive.sqlite", synchronous=synchronous)
        await a.open()
        assert a._log is not None
        monkeypatch.setattr(os, "fdatasync", counting)
        await a.submit(envelopes(3))
        await a.submit(envelopes(3, first=3))
        monkeypatch.setattr(os, "fdatasync", real)
        assert (await a.stats()).extra["log_envelopes"] == 6
        assert len(synced) == (2 if syncs else 0)
        await a.close()

    run(main())


def test_a_failing_log_sends_groups_straight_into_sqlite(tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "archive.sqlite"

    async def main() -> None:
        a = archive_at(db)
        await a.open()
        await a.submit(envelopes(4))
        assert a._log is not None

        def broken(rows: object) -> None:
            raise OSError(5, "Input/output error")

        a._log.append = broken  # type: ignore[method-assign]
        await a.submit(envelopes(3, first=10))
        assert table_count(db) == 7  # the tail went first, then the group
        assert (await a.stats()).count == 7
        await a.close()

    with caplog.at_level(logging.WARNING):
        run(main())
    assert any("log write failed" in r.getMessage() for r in caplog.records)


def test_a_full_log_is_indexed_and_reset_before_the_next_append(tmp_path: Path) -> None:
    db = tmp_path / "archive.sqlite"

    async def main() -> None:
        a = archive_at(db)
        await a.open()
        assert a._log is not None
        a._log.capacity = HEADER_BYTES + 5 * (RECORD_OVERHEAD + len(envelopes(1)[0].raw))
        for i in range(12):
            await a.submit(envelopes(1, first=i))
        s = await a.stats()
        assert s.count == 12 and table_count(db) == 10 and s.extra["log_envelopes"] == 2
        await a.close()

    run(main())


def test_a_timer_retention_run_indexes_the_tail_only_when_it_could_reach_it(tmp_path: Path) -> None:
    """The check the writer makes before a timer's retention run (a job would index the tail first,
    so it is called here while the writer idles)."""
    import time

    async def main() -> None:
        a = archive_at(tmp_path / "archive.sqlite", retention=RetentionPolicy(max_count=100))
        await a.open()
        await a.submit(envelopes(30))
        assert len(a._tail) == 30
        assert not a._retention_reaches_tail()  # 30 of 100: nothing to do
        a.retention = RetentionPolicy(max_count=20)
        assert a._retention_reaches_tail()
        a.retention = RetentionPolicy(max_age_s=int(time.time()) - BASE - 10)  # the oldest are too old
        assert a._retention_reaches_tail()
        a.retention = RetentionPolicy(max_age_s=int(time.time()) - BASE + 10)
        assert not a._retention_reaches_tail()
        a.retention = RetentionPolicy(max_bytes=1)
        assert a._retention_reaches_tail()
        assert len(a._tail) == 30
        await a.close()

    run(main())


def test_the_config_sets_the_log_and_refuses_bad_values(tmp_path: Path) -> None:
    from pimail.archive import open_archive
    from pimail.config import ArchiveConfig
    from pimail.errors import UserError

    a = open_archive(ArchiveConfig(index_interval_s=5, log_max_bytes="1MB"), tmp_path, None)
    assert isinstance(a, SqliteArchive) and a.index_interval_s == 5 and a.log_max_bytes == 1_000_000
    off = open_archive(ArchiveConfig(index_interval_s=0), tmp_path, None)
    assert isinstance(off, SqliteArchive) and off.index_interval_s == 0
    with pytest.raises(UserError, match="index_interval_s"):
        open_archive(ArchiveConfig(index_interval_s=-1), tmp_path, None)
    with pytest.raises(UserError, match="log_max_bytes"):
        open_archive(ArchiveConfig(log_max_bytes="lots"), tmp_path, None)
