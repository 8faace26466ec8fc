"""The SQLite archive's reads: history pages (by time, topic, bloom; cursors both ways), lookups by
key, stats and the integrity check, each on a reader thread with its own connection."""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar

from pimail.archive.base import (
    MAX_QUERY_LIMIT,
    ArchiveError,
    ArchiveStats,
    HistoryPage,
    HistoryQuery,
    InvalidCursor,
    RawHistoryPage,
    decode_cursor,
    encode_cursor,
)
from pimail.archive.sqlite.core import SqliteCore, free_disk, proc_write_bytes
from pimail.archive.sqlite.layout import (
    BUCKET_EXPR,
    COUNT_SQL,
    LOW_MASK,
    MIN_MAX_SQL,
    RAW_COLUMNS,
    ROW_COLUMNS,
    SCHEMA_VERSION,
    SENT_MAX,
    Row,
    key_bucket,
    key_sent,
    make_key,
    probe_keys,
    row_to_envelope,
    topic_bytes,
    topic_int,
)
from pimail.archive.sqlite.tail import topic_filter
from pimail.crypto.keccak import keccak256
from pimail.envelope.bloom import BLOOM_LEN, is_full, topic_to_bloom

T = TypeVar("T")

READER_THREADS = 2
# Per reader connection. History reads a key range once, front to back: only the interior pages of
# the B-trees are worth keeping (a 1M-envelope index has ~100 of 4 KB), and the kernel caches the
# file anyway (docs/PERFORMANCE.md, "Memory").
READER_CACHE_KIB = 1024
MAX_INFLIGHT_READS = 32  # further readers wait on the loop (never on a thread)


class TopicCache:
    """Per-reader snapshot of the stored topics and their blooms, reloaded when a topic appears."""

    def __init__(self) -> None:
        self.gen = -1
        self.blooms: list[tuple[int, int]] = []  # (topic, bloom as int)
        self.matches: collections.OrderedDict[bytes, list[int]] = collections.OrderedDict()

    def refresh(self, conn: sqlite3.Connection) -> None:
        gen = int(conn.execute("SELECT value FROM meta WHERE key = 'topic_gen'").fetchone()[0])
        if gen == self.gen:
            return
        rows = conn.execute("SELECT topic FROM topics").fetchall()
        self.blooms = [(int(t), int.from_bytes(topic_to_bloom(topic_bytes(int(t))), "big")) for (t,) in rows]
        self.matches.clear()
        self.gen = gen

    def matching(self, bloom: bytes) -> list[int]:
        """Stored topics whose bloom is covered by ``bloom`` (geth BloomFilterMatch)."""
        cached = self.matches.get(bloom)
        if cached is not None:
            self.matches.move_to_end(bloom)
            return cached
        f = int.from_bytes(bloom, "big")
        found = [t for t, b in self.blooms if f | b == f]
        self.matches[bloom] = found
        if len(self.matches) > 64:
            self.matches.popitem(last=False)
        return found


class SqliteReader(SqliteCore):
    """Queries, lookups, stats and checks of ``SqliteArchive``."""

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            conn.execute(f"PRAGMA cache_size = -{READER_CACHE_KIB}")
            conn.execute("PRAGMA temp_store = MEMORY")
            self._reader_local.conn = conn
            self._reader_local.topics = TopicCache()
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if not self._opened or self._readers is None or self._read_slots is None:
            raise ArchiveError("the archive is not open")
        loop = asyncio.get_running_loop()

        def work() -> T:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise ArchiveError(f"archive read failed: {exc}") from exc

        async with self._read_slots:
            return await loop.run_in_executor(self._readers, work)

    async def query(self, q: HistoryQuery) -> HistoryPage:
        self._check_query(q)
        return await self._read(lambda conn: self._query_sync(conn, q))

    async def query_raw(self, q: HistoryQuery) -> RawHistoryPage:
        """``query`` for streaming: the stored bytes of one page and the cursor of its last envelope.

        Same rows, order, errors and paging as ``query``, without building an ``ArchivedEnvelope``
        (and hashing) per row: only the last row is hashed, for its cursor. The mailserver streams
        history through this when the backend offers it.
        """
        self._check_query(q)
        return await self._read(lambda conn: self._query_raw_sync(conn, q))

    @staticmethod
    def _check_query(q: HistoryQuery) -> None:
        if not 1 <= q.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_QUERY_LIMIT} (got {q.limit})")
        if q.cursor is not None and q.cursor != b"":
            decode_cursor(q.cursor)  # malformed ⇒ InvalidCursor before any I/O
        if q.bloom is not None and q.bloom != b"" and len(q.bloom) != BLOOM_LEN:
            raise ValueError(f"bloom must be {BLOOM_LEN} bytes (got {len(q.bloom)})")
        if any(len(t) != 4 for t in q.topics):
            raise ValueError("topics must be 4 bytes each")

    def _query_sync(self, conn: sqlite3.Connection, q: HistoryQuery) -> HistoryPage:
        rows = self._page_rows(conn, q, ROW_COLUMNS)
        more = len(rows) > q.limit
        envs = [row_to_envelope(r) for r in rows[: q.limit]]
        return HistoryPage(envs, envs[-1].cursor if more and envs else None)

    def _query_raw_sync(self, conn: sqlite3.Connection, q: HistoryQuery) -> RawHistoryPage:
        rows: list[tuple[int, bytes]] = self._page_rows(conn, q, RAW_COLUMNS)
        more = len(rows) > q.limit
        del rows[q.limit :]
        if not rows:
            return RawHistoryPage([], None, False)
        key, raw = rows[-1]
        last = encode_cursor(key_sent(int(key)), keccak256(bytes(raw)))
        return RawHistoryPage([r[1] for r in rows], last, more)

    def _page_rows(self, conn: sqlite3.Connection, q: HistoryQuery, columns: str) -> list[Any]:
        """Up to ``q.limit + 1`` rows (``columns``, id first) of the page ``q`` asks for."""
        lower, upper = max(0, q.lower), min(SENT_MAX, q.upper)
        if lower > upper:
            return []
        lo_key, hi_key = make_key(lower, 0), make_key(upper, LOW_MASK)  # inclusive bounds
        tail = self._tail.snapshot()  # before the SQLite snapshot (see pimail.archive.sqlite.tail)
        conn.execute("BEGIN")  # one snapshot for the cursor lookup and the page
        try:
            if q.cursor:
                sent, h = decode_cursor(q.cursor)
                ckey = self._find_key(conn, sent, h)
                if ckey is None:
                    ckey = tail.find(sent, h)
                if ckey is None:
                    raise InvalidCursor("cursor does not match any stored envelope")
                if q.descending:
                    hi_key = min(hi_key, ckey - 1)
                else:
                    lo_key = max(lo_key, ckey + 1)
            rows: list[Any] = []
            if lo_key <= hi_key:
                rows = self._select(conn, q, lo_key, hi_key, q.limit + 1, columns)
        finally:
            conn.execute("COMMIT")
        if tail.keys and lo_key <= hi_key:
            rows = self._merge_tail(rows, tail.page(lo_key, hi_key, topic_filter(q), q.limit + 1,
                                                    q.descending), q, columns)
        return rows

    @staticmethod
    def _merge_tail(rows: list[Any], extra: list[Row], q: HistoryQuery, columns: str) -> list[Any]:
        """The first ``q.limit + 1`` of the table's rows and the tail's, in the query's order; a row
        in both (indexed while this read ran) counts once."""
        if not extra:
            return rows
        picked: dict[int, Any] = {int(r[0]): r for r in rows}
        for row in extra:
            picked.setdefault(row[0], row if columns == ROW_COLUMNS else (row[0], row[4]))
        keys = sorted(picked, reverse=q.descending)[: q.limit + 1]
        return [picked[k] for k in keys]

    def _select(self, conn: sqlite3.Connection, q: HistoryQuery, lo: int, hi: int, n: int,
                columns: str = ROW_COLUMNS) -> list[Any]:
        order = "DESC" if q.descending else "ASC"
        topics: list[int] | None
        cache: TopicCache = self._reader_local.topics
        if q.topics:
            topics = sorted({topic_int(t) for t in q.topics})
        elif q.bloom is None or q.bloom == b"" or is_full(q.bloom):
            topics = None
        else:
            cache.refresh(conn)
            topics = cache.matching(q.bloom)
        if topics is None:
            return conn.execute(
                f"SELECT {columns} FROM envelopes WHERE id BETWEEN ? AND ? ORDER BY id {order} LIMIT ?",
                (lo, hi, n),
            ).fetchall()
        if not topics:
            return []
        if len(topics) > self.max_topic_ranges:
            # a bloom matching many topics matches many rows: walking the time range finds n soon
            marks = ",".join("?" * len(topics))
            return conn.execute(
                f"SELECT {columns} FROM envelopes WHERE id BETWEEN ? AND ? AND +topic IN ({marks}) "
                f"ORDER BY id {order} LIMIT ?",
                (lo, hi, *topics, n),
            ).fetchall()
        # a few topics: walk the time buckets in order through the (bucket, topic) index
        first, last = conn.execute(MIN_MAX_SQL).fetchone()
        if first is None:
            return []
        lo, hi = max(lo, int(first)), min(hi, int(last))
        if lo > hi:
            return []
        marks = ",".join("?" * len(topics))
        span = conn.execute(  # read in this snapshot: the readers' topic cache may be older
            f"SELECT min(first_bucket), max(last_bucket) FROM topics WHERE topic IN ({marks})", topics
        ).fetchone()
        if span[0] is None:
            return []
        buckets = range(max(key_bucket(lo), int(span[0])), min(key_bucket(hi), int(span[1])) + 1)
        sql = (f"SELECT id FROM envelopes WHERE {BUCKET_EXPR} = ? AND topic IN ({marks}) "
               f"AND id BETWEEN ? AND ? ORDER BY id {order} LIMIT ?")
        ids: list[int] = []
        for bucket in reversed(buckets) if q.descending else buckets:
            ids += [r[0] for r in conn.execute(sql, (bucket, *topics, lo, hi, n - len(ids)))]
            if len(ids) >= n:
                break
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        found = conn.execute(f"SELECT {columns} FROM envelopes WHERE id IN ({marks})", ids).fetchall()
        found.sort(key=lambda r: int(r[0]), reverse=q.descending)
        return found

    @staticmethod
    def _find_key(conn: sqlite3.Connection, sent: int, envelope_hash: bytes) -> int | None:
        """The id of the stored envelope (sent, hash), verified by keccak; None if absent."""
        if not 0 <= sent <= SENT_MAX:
            return None
        keys = probe_keys(sent, envelope_hash)
        marks = ",".join("?" * len(keys))
        sql = f"SELECT id, raw FROM envelopes WHERE id IN ({marks}) ORDER BY id"
        for key, raw in conn.execute(sql, keys):
            if keccak256(bytes(raw)) == envelope_hash:
                return int(key)
        return None

    async def contains(self, sent: int, envelope_hash: bytes) -> bool:
        if len(envelope_hash) != 32:
            return False
        if 0 <= sent <= SENT_MAX and self._tail.snapshot().find(sent, envelope_hash) is not None:
            return True
        return await self._read(lambda conn: self._find_key(conn, sent, envelope_hash) is not None)

    async def stats(self) -> ArchiveStats:
        def work(conn: sqlite3.Connection) -> ArchiveStats:
            with self._tail.lock:  # the writer moves the tail into the table under it: count once
                tail = self._tail.snapshot()
                conn.execute("BEGIN")
                try:
                    count = int(conn.execute(COUNT_SQL).fetchone()[0])
                    topics = int(conn.execute("SELECT count(*) FROM topics").fetchone()[0])
                    lo, hi = conn.execute(MIN_MAX_SQL).fetchone()
                    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
                    free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                finally:
                    conn.execute("COMMIT")
            oldest = None if lo is None else key_sent(int(lo))
            newest = None if hi is None else key_sent(int(hi))
            span = tail.bounds()
            if span is not None:
                oldest = span[0] if oldest is None else min(oldest, span[0])
                newest = span[1] if newest is None else max(newest, span[1])
            wb = proc_write_bytes()
            extra: dict[str, object] = {
                "path": str(self.path),
                "schema_version": SCHEMA_VERSION,
                "synchronous": self.synchronous.lower(),
                "distinct_topics": topics,
                "file_bytes": self._file_bytes(),
                "free_pages": free,
                "added_since_start": self.inserted_total,
                "pending_envelopes": self._queue.count,
                "log_envelopes": len(tail.keys),  # acknowledged, in the ack log, not yet indexed
                "log_file_bytes": self._log_file_bytes(),
                "health": self.health_reason,
            }
            if wb is not None and self._write_bytes_at_open is not None:
                extra["process_disk_write_bytes"] = wb - self._write_bytes_at_open
            return ArchiveStats(
                count=count + len(tail.keys),
                bytes=(pages - free) * page_size,
                oldest_sent=oldest,
                newest_sent=newest,
                free_disk_bytes=free_disk(self.path.parent),
                bytes_written_since_start=self.archived_bytes,
                retention=self.retention,
                extra=extra,
            )

        return await self._read(work)

    async def check(self) -> list[str]:
        """Problems found by ``PRAGMA integrity_check`` and the schema/counter checks ([] = fine)."""

        def work(conn: sqlite3.Connection) -> list[str]:
            problems = [str(r[0]) for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            if version != SCHEMA_VERSION:
                problems.append(f"schema version {version}, expected {SCHEMA_VERSION}")
            rows = int(conn.execute("SELECT count(*) FROM envelopes").fetchone()[0])
            counted = int(conn.execute(COUNT_SQL).fetchone()[0])
            if rows != counted:
                problems.append(f"the envelope counter says {counted} but the table holds {rows}")
            missing = conn.execute(
                "SELECT count(*) FROM (SELECT DISTINCT topic FROM envelopes) "
                "WHERE topic NOT IN (SELECT topic FROM topics)"
            ).fetchone()[0]
            if missing:
                problems.append(f"{missing} stored topics are missing from the topics table")
            return problems

        return await self._read(work)

    def scan_raw(self, conn: sqlite3.Connection, after_key: int | None, n: int
                 ) -> list[Row]:
        """Rows in key order after ``after_key`` (used by export; runs in a reader thread)."""
        lo = -(2**63) if after_key is None else after_key + 1
        return conn.execute(
            f"SELECT {ROW_COLUMNS} FROM envelopes WHERE id >= ? ORDER BY id LIMIT ?", (lo, n)
        ).fetchall()

    async def read_rows_after(self, after_key: int | None, n: int
                              ) -> list[Row]:
        return await self._read(lambda conn: self.scan_raw(conn, after_key, n))

