"""The embedded archive: one SQLite file in WAL mode, written by one thread with group commit.

Layout (schema version 2), chosen to keep the file within ~1.1× the raw envelope bytes:

``envelopes(id INTEGER PRIMARY KEY, topic, ttl, arr, raw)``
    ``id`` packs the (sent, hash) key into one 64-bit integer: ``(sent − 2³¹) << 32 | h`` where
    ``h`` is the first four bytes of the envelope hash. Ordering by ``id`` is ordering by
    (sent, hash); the full hash is ``keccak(raw)`` and is recomputed on read instead of being
    stored. Two different envelopes of the same second whose hashes share four leading bytes
    (about one in four billion) are kept apart by probing ``h+1 … h+15``; lookups by hash verify
    ``keccak(raw)``, so a probe never confuses them. ``ttl`` = expiry − sent and ``arr`` =
    arrival − sent keep those small. Duplicates are ignored.
``envelopes_topic`` index (bucket, topic, id), bucket = ``id >> 46`` (2¹⁴ s ≈ 4.5 h of sent time)
    serves topic and bloom queries without walking the time range. Leading with the time bucket
    keeps new entries in one small region of the index instead of scattering them over every
    topic, which is what keeps the bytes written per archived byte low.
No index by hash: ``contains`` and every other lookup take the whole key (sent, hash), a probe
    of at most ``PROBE_WINDOW`` ids in the primary key. Version 1 had a second index (bucket, hash
    prefix) for hash-only lookups; it cost ~0.25 bytes written per archived byte and is dropped by
    the migration to version 2.
``topics(topic, first_bucket, last_bucket)``
    the distinct stored topics: a bloom is turned into the set of stored topics it matches (geth
    BloomFilterMatch), and a query walks only the buckets between the first and last of them. The
    span is rounded out to blocks of 16 buckets (3 days), so a row is written only when a topic
    first appears or reaches a new block: with a few thousand busy topics, exact last buckets had
    every commit rewrite the whole table (~0.17 bytes written per archived byte at 1M stored). A
    query walks at most 15 empty buckets more per topic, and none past the newest envelope. Topics
    whose span ends before the oldest envelope are dropped by retention. Spans stored exactly (by
    an older pimail) are valid too, as is any span that covers the topic's envelopes. The
    envelope count lives in ``meta``.

Threads: the event loop only queues work. One writer thread owns the only writing connection: it
groups submitted envelopes into one transaction (every ``flush_interval_ms`` or
``flush_max_envelopes``), resolves the submit futures after COMMIT (durable with
``synchronous=NORMAL`` against a crash of the process, with ``FULL`` against power loss too), and
runs retention in bounded batches between commits. Reads run in a small pool whose threads each
hold their own connection.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

from pimail.archive.base import (
    MAX_QUERY_LIMIT,
    Archive,
    ArchivedEnvelope,
    ArchiveError,
    ArchiveStats,
    DurableCallback,
    HistoryPage,
    HistoryQuery,
    InvalidCursor,
    PruneResult,
    RawHistoryPage,
    RetentionPolicy,
    SchemaTooNew,
    decode_cursor,
    encode_cursor,
)
from pimail.crypto.keccak import keccak256
from pimail.envelope.bloom import BLOOM_LEN, is_full, topic_to_bloom
from pimail.health import HealthModel, Severity

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 2
KEY_BIAS = 1 << 31  # sent is a uint32; biasing keeps (sent << 32) inside a signed 64-bit integer
LOW_MASK = 0xFFFFFFFF
PROBE_WINDOW = 16  # slots tried for hash-prefix collisions within one second
SENT_MAX = 2**32 - 1

PRUNE_BATCH = 2000  # rows deleted per retention transaction (keeps each one short)
FREELIST_KEEP_PAGES = 256  # free pages kept for reuse after pruning (1 MB at 4 KiB pages)
DISK_FULL_RETRIES = 8  # evict-and-retry rounds for one batch before giving up on it
READER_THREADS = 2
MAX_INFLIGHT_READS = 32  # further readers wait on the loop (never on a thread)
MAX_TOPIC_RANGES = 64  # above this many matching topics, walk the time range with a topic filter
BUSY_TIMEOUT_MS = 5000
WAL_MIN_PAGES = 64
PAGE_SIZE = 8192  # fewer, fuller pages than 4096 for ~300 B rows (see bench/archive.py)
WAL_AUTOCHECKPOINT_PAGES = 2000  # 16 MB: index pages reach the main file once per checkpoint
GROUP_CAP_FACTOR = 4  # a due group takes up to 4 × flush_max envelopes already waiting (see _collect)
RESERVE_BYTES = 1024 * 1024  # <archive>.reserve: given up on a full disk so eviction has room to run
EVICT_STEPS = 4096  # delete-chunk and give-back steps at most in one eviction

SQLITE_FULL = 13
SQLITE_IOERR = 10
SQLITE_BUSY = 5
SQLITE_LOCKED = 6

HEALTH_DISK_FULL = "archive.disk_full"
HEALTH_WRITE = "archive.write_failed"
HEALTH_DISK_LOW = "archive.disk_low"


# -- key packing -----------------------------------------------------------------------------------


def make_key(sent: int, low: int) -> int:
    return ((sent - KEY_BIAS) << 32) | (low & LOW_MASK)


def key_sent(key: int) -> int:
    return (key >> 32) + KEY_BIAS


def hash_low(envelope_hash: bytes) -> int:
    return int.from_bytes(envelope_hash[:4], "big")


def topic_int(topic: bytes) -> int:
    return int.from_bytes(topic, "big", signed=True)


def topic_bytes(value: int) -> bytes:
    return value.to_bytes(4, "big", signed=True)


def probe_keys(sent: int, envelope_hash: bytes) -> list[int]:
    low = hash_low(envelope_hash)
    return [make_key(sent, low + k) for k in range(PROBE_WINDOW)]


BUCKET_SHIFT = 46  # 2**14 s ≈ 4.5 h of sent time per bucket
BUCKET_EXPR = f"(id >> {BUCKET_SHIFT})"  # time bucket of sent time (leads the topic index)


def key_bucket(key: int) -> int:
    return key >> BUCKET_SHIFT


TOPIC_SPAN_BITS = 4  # topics rows keep their bucket span rounded out to blocks of 16 buckets (3 days)


def span_floor(bucket: int) -> int:
    """First bucket of ``bucket``'s block (what ``topics.first_bucket`` stores)."""
    return (bucket >> TOPIC_SPAN_BITS) << TOPIC_SPAN_BITS


def span_ceiling(bucket: int) -> int:
    """Last bucket of ``bucket``'s block (what ``topics.last_bucket`` stores)."""
    return span_floor(bucket) + (1 << TOPIC_SPAN_BITS) - 1


# -- schema ----------------------------------------------------------------------------------------


V1_HASH_EXPR = "((id & 4294967295) - 2147483648)"  # version 1's hash-prefix index (dropped in 2)


def _migrate_v1(db: sqlite_utils.Database) -> None:
    db.table("envelopes").create(
        {"id": int, "topic": int, "ttl": int, "arr": int, "raw": bytes},
        pk="id",
        not_null={"topic", "ttl", "raw"},
    )
    db.table("topics").create({"topic": int, "first_bucket": int, "last_bucket": int}, pk="topic",
                              not_null={"first_bucket", "last_bucket"})
    db.table("meta").create({"key": str, "value": int}, pk="key", not_null={"value"})
    db.table("meta").insert_all([{"key": "topic_gen", "value": 0}, {"key": "count", "value": 0}])
    db.execute(f"CREATE INDEX envelopes_topic ON envelopes({BUCKET_EXPR}, topic)")
    db.execute(f"CREATE INDEX envelopes_hash ON envelopes({BUCKET_EXPR}, {V1_HASH_EXPR})")
    db.execute(
        "CREATE TRIGGER topics_added AFTER INSERT ON topics BEGIN "
        "UPDATE meta SET value = value + 1 WHERE key = 'topic_gen'; END"
    )


def _migrate_v2(db: sqlite_utils.Database) -> None:
    # lookups take the whole key now; the hash index's pages go to the freelist, and retention's
    # incremental vacuum hands them back to the filesystem
    db.execute("DROP INDEX envelopes_hash")


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [_migrate_v1, _migrate_v2]
assert len(MIGRATIONS) == SCHEMA_VERSION


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the file to SCHEMA_VERSION (creating it when empty); refuse newer or foreign files."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has archive schema version {version} but this pimail knows up to "
            f"{SCHEMA_VERSION}: it was written by a newer pimail; upgrade pimail (or point "
            "--data-dir elsewhere)"
        )
    if version == SCHEMA_VERSION:
        return
    if version == 0:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if tables:
            raise ArchiveError(f"{path} is an SQLite file but not a pimail archive (no schema version)")
        if int(conn.execute("PRAGMA auto_vacuum").fetchone()[0]) != 2:
            raise ArchiveError(f"{path}: could not enable incremental auto-vacuum on a new archive")
    db = sqlite_utils.Database(conn)
    for v in range(version, SCHEMA_VERSION):
        conn.execute("BEGIN IMMEDIATE")
        try:
            MIGRATIONS[v](db)
            conn.execute(f"PRAGMA user_version = {v + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("archive %s: schema migrated to version %d", path, v + 1)


# -- helpers ---------------------------------------------------------------------------------------


def _errcode(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def _proc_write_bytes() -> int | None:
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _free_disk(directory: Path) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


def _row_to_envelope(row: Row) -> ArchivedEnvelope:
    key, topic, ttl, arr, raw = row
    sent = key_sent(key)
    raw = bytes(raw)
    return ArchivedEnvelope(
        sent=sent,
        hash=keccak256(raw),
        topic=topic_bytes(topic),
        expiry=sent + ttl,
        raw=raw,
        arrived=0 if arr is None else sent + arr,
    )


ROW_COLUMNS = "id, topic, ttl, arr, raw"
RAW_COLUMNS = "id, raw"  # what streaming history needs (query_raw)
INSERT_SQL = f"INSERT OR IGNORE INTO envelopes({ROW_COLUMNS}) VALUES (?, ?, ?, ?, ?)"
# written only when a topic is new or reaches a later bucket (a no-op upsert writes no page)
TOPIC_SEEN_SQL = (
    "INSERT INTO topics(topic, first_bucket, last_bucket) VALUES (?, ?, ?) ON CONFLICT(topic) DO UPDATE "
    "SET first_bucket = min(first_bucket, excluded.first_bucket), "
    "last_bucket = max(last_bucket, excluded.last_bucket) "
    "WHERE excluded.first_bucket < topics.first_bucket OR excluded.last_bucket > topics.last_bucket"
)
COUNT_SQL = "SELECT value FROM meta WHERE key = 'count'"
ADD_COUNT_SQL = "UPDATE meta SET value = value + ? WHERE key = 'count'"
Row = tuple[int, int, int, int | None, bytes]
# two subqueries: "SELECT min(id), max(id)" in one query would scan the whole table
MIN_MAX_SQL = "SELECT (SELECT min(id) FROM envelopes), (SELECT max(id) FROM envelopes)"


@dataclass
class _Pending:
    envelopes: Sequence[ArchivedEnvelope]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Job:
    """Work for the writer thread other than ingest (prune, vacuum)."""

    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


@dataclass
class _PruneRun:
    deleted: int = 0
    reasons: list[str] = field(default_factory=list)
    waiters: list[tuple[asyncio.Future[PruneResult], asyncio.AbstractEventLoop]] = field(default_factory=list)


def _settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _post(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any = None,
          error: BaseException | None = None) -> None:
    with contextlib.suppress(RuntimeError):  # loop already closed: nobody is waiting any more
        loop.call_soon_threadsafe(_settle, future, result, error)


class _TopicCache:
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


class SqliteArchive(Archive):
    """The SQLite archive (see the module docstring).

    ``on_durable`` is called from the writer thread after each commit with the envelopes of that
    group; keep it short (the next group waits for it).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        flush_interval_ms: int = 200,
        flush_max_envelopes: int = 2000,
        synchronous: str = "normal",
        retention: RetentionPolicy | None = None,
        health: HealthModel | None = None,
        prune_interval_s: float = 60.0,
        on_durable: DurableCallback | None = None,
        max_pending_envelopes: int = 0,
        wal_autocheckpoint_pages: int = WAL_AUTOCHECKPOINT_PAGES,
    ) -> None:
        if synchronous.lower() not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        if flush_interval_ms < 0 or flush_max_envelopes < 1:
            raise ValueError("flush_interval_ms must be ≥ 0 and flush_max_envelopes ≥ 1")
        self.path = Path(path)
        self.flush_interval_s = flush_interval_ms / 1000
        self.flush_max = flush_max_envelopes
        self.synchronous = synchronous.upper()
        self.retention = retention or RetentionPolicy()
        self.health = health
        self.prune_interval_s = prune_interval_s
        self.on_durable = on_durable
        self.max_pending = max_pending_envelopes or max(20_000, 10 * flush_max_envelopes)
        self.wal_autocheckpoint_pages = wal_autocheckpoint_pages
        #: query planner threshold (see _select); tests force one path or the other
        self.max_topic_ranges = MAX_TOPIC_RANGES
        self.health_reason = "ok"
        #: envelopes actually added (not duplicates) by this instance since open
        self.inserted_total = 0
        self.archived_bytes = 0

        self._cond = threading.Condition()
        self._queue: collections.deque[_Pending] = collections.deque()
        self._queued_envelopes = 0
        self._jobs: collections.deque[_Job] = collections.deque()
        self._prune_run: _PruneRun | None = None
        self._prune_asked = False
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._read_slots: asyncio.Semaphore | None = None
        self._conditions: dict[str, str] = {}
        self._write_bytes_at_open: int | None = None
        self._last_backlog_log = 0.0
        self._opened = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._need_reserve = True

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        if self._opened:
            return
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self._open_sync)
        self._readers = concurrent.futures.ThreadPoolExecutor(READER_THREADS,
                                                              thread_name_prefix="archive-read")
        self._read_slots = asyncio.Semaphore(MAX_INFLIGHT_READS)
        self._writer = threading.Thread(target=self._writer_main, name="archive-writer", daemon=True)
        self._opened = True
        self._writer.start()

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise ArchiveError(f"cannot open the archive {self.path}: {exc}") from exc
        return conn

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        conn = self._connect()
        try:
            if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
                # must precede the first write (WAL mode writes the header): free pages can then
                # go back to the filesystem without a full VACUUM
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before auto_vacuum, or it is ignored
                conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ArchiveError(f"{self.path}: cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")
            # Debian builds SQLite with SECURE_DELETE: zero-filling every freed page doubles the
            # writes of retention and needs disk space exactly when the disk is full
            conn.execute("PRAGMA secure_delete = FAST")
            conn.execute(f"PRAGMA wal_autocheckpoint = {self._autocheckpoint_pages(conn)}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_AUTOCHECKPOINT_PAGES * PAGE_SIZE}")
            conn.execute("PRAGMA cache_size = -16000")
            migrate(conn, self.path)
            # A WAL left behind by a crash is only reset by a checkpoint; if the node is killed again
            # before the next automatic one (a crash loop), the WAL would grow without bound.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise ArchiveError(f"cannot open the archive {self.path}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        self._make_reserve()
        self._write_bytes_at_open = _proc_write_bytes()
        log.info("archive open: %s (schema %d, synchronous=%s)", self.path, SCHEMA_VERSION,
                 self.synchronous.lower())

    def _autocheckpoint_pages(self, conn: sqlite3.Connection) -> int:
        """The configured WAL size, but at most 1/16 of the filesystem (a WAL of several MB would
        crowd out the archive itself on a tiny filesystem)."""
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return self.wal_autocheckpoint_pages
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        cap = st.f_blocks * st.f_frsize // 16 // page_size
        return max(WAL_MIN_PAGES, min(self.wal_autocheckpoint_pages, cap))

    async def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        await asyncio.to_thread(self._stop_threads)
        log.info("archive closed: %s", self.path)

    def _stop_threads(self) -> None:
        """Wait for the writer to flush and stop, then for the readers (blocking: run in a thread)."""
        if self._writer is not None:
            self._writer.join()
        if self._readers is not None:
            self._readers.shutdown(wait=True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        self._reader_local = threading.local()

    # -- writing -----------------------------------------------------------------------------------

    def submit(self, envelopes: Sequence[ArchivedEnvelope]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        for env in envelopes:
            if len(env.hash) != 32 or len(env.topic) != 4 or not 0 <= env.sent <= SENT_MAX \
                    or env.expiry < env.sent:
                raise ValueError(f"not an archivable envelope record: sent={env.sent} "
                                 f"expiry={env.expiry} hash/topic lengths {len(env.hash)}/{len(env.topic)}")
        if not envelopes:
            fut.set_result(None)
            return fut
        if not self._opened:
            fut.set_exception(ArchiveError("the archive is not open"))
            return fut
        with self._cond:
            if self._queued_envelopes + len(envelopes) > self.max_pending:
                full = True
            else:
                full = False
                self._queue.append(_Pending(envelopes, fut, loop))
                self._queued_envelopes += len(envelopes)
                self._cond.notify()
        if full:
            now = time.monotonic()
            if now - self._last_backlog_log > 10:
                self._last_backlog_log = now
                log.warning("archive is behind (%d envelopes waiting to be written): dropping new ones "
                            "until it catches up", self._queued_envelopes)
            fut.set_exception(ArchiveError("archive write queue is full"))
        return fut

    def _writer_main(self) -> None:
        next_prune = time.monotonic() + min(self.prune_interval_s, 1.0)
        while True:
            batch, jobs, stop = self._collect(next_prune)
            if batch:
                self._write_batch(batch)
            for job in jobs:
                self._run_job(job)
            now = time.monotonic()
            if self.prune_interval_s > 0 and now >= next_prune:
                next_prune = now + self.prune_interval_s
                self._prune_asked = True
            if self._prune_asked and self._prune_run is None:
                self._prune_run = _PruneRun()
            if self._prune_asked or self._prune_run is not None:
                self._prune_asked = False
                self._prune_step()
            if stop:
                break
        self._shutdown_writer()

    def _collect(self, next_prune: float) -> tuple[list[_Pending], list[_Job], bool]:
        """Wait for a group of envelopes (M of them, or N ms after the first) or other work.

        When the group is due, it takes everything already waiting (up to GROUP_CAP_FACTOR × M):
        under load the queue fills while the previous group commits, and one commit of all of it
        makes those envelopes durable no later and dirties the index pages once instead of once
        per M (bench/archive at 1M stored: 2.98 → 2.70 bytes written per archived byte)."""
        batch: list[_Pending] = []
        count = 0
        cap = GROUP_CAP_FACTOR * self.flush_max
        with self._cond:
            first_at: float | None = None
            while True:
                busy = self._prune_run is not None or self._prune_asked
                due = self._stopping or bool(self._jobs) or busy
                while self._queue and (count < self.flush_max or (due and count < cap)):
                    p = self._queue.popleft()
                    batch.append(p)
                    count += len(p.envelopes)
                    if first_at is None:
                        first_at = time.monotonic()
                    if count >= self.flush_max:
                        due = True
                if due or count >= self.flush_max:
                    break
                now = time.monotonic()
                if first_at is not None:
                    deadline = first_at + self.flush_interval_s
                else:
                    deadline = next_prune if self.prune_interval_s > 0 else now + 3600
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            jobs = list(self._jobs)
            self._jobs.clear()
            stop = self._stopping and not self._queue
        return batch, jobs, stop

    def _write_batch(self, batch: list[_Pending]) -> None:
        envelopes = [env for p in batch for env in p.envelopes]
        error: BaseException | None = None
        try:
            self._write_with_recovery(envelopes)
        except ArchiveError as exc:
            error = exc
        except Exception as exc:  # a bug must fail this batch, not stop the writer
            log.exception("archive writer: unexpected error writing %d envelopes", len(envelopes))
            self._rollback()
            error = ArchiveError(f"archive write failed: {exc}")
        with self._cond:
            self._queued_envelopes -= len(envelopes)
        # the callback runs before the futures resolve, so whoever awaits them sees its effects
        if error is None and self.on_durable is not None:
            try:
                self.on_durable(envelopes)
            except Exception:
                log.exception("archive durable callback failed")
        for p in batch:
            _post(p.loop, p.future, None, error)

    def _write_with_recovery(self, envelopes: list[ArchivedEnvelope]) -> None:
        """Insert durably; on a full disk evict the oldest envelopes and retry; never raise sqlite3."""
        for attempt in range(DISK_FULL_RETRIES + 1):
            try:
                if self._wconn is None:
                    self._reopen_writer()
                self._insert(envelopes)
            except sqlite3.Error as exc:
                self._rollback()
                code = _errcode(exc)
                if code == SQLITE_FULL and attempt < DISK_FULL_RETRIES:
                    self._raise(HEALTH_DISK_FULL, Severity.DEGRADED,
                                "archive disk full: evicting the oldest envelopes to make room")
                    if self._evict_for_space(sum(len(e.raw) for e in envelopes)):
                        continue
                if code == SQLITE_FULL:
                    self._raise(HEALTH_DISK_FULL, Severity.FAILING,
                                "archive disk full and eviction cannot make room: not archiving")
                    raise ArchiveError("archive disk full") from exc
                if code in (SQLITE_BUSY, SQLITE_LOCKED) and attempt < DISK_FULL_RETRIES:
                    time.sleep(0.05)
                    continue
                self._raise(HEALTH_WRITE, Severity.FAILING, f"archive cannot write: {exc}")
                log.error("archive write of %d envelopes failed: %s", len(envelopes), exc)
                if code == SQLITE_IOERR:
                    self._drop_writer()
                raise ArchiveError(f"archive write failed: {exc}") from exc
            else:
                if self._need_reserve:
                    self._make_reserve()
                self._clear(HEALTH_DISK_FULL)
                self._clear(HEALTH_WRITE)
                return

    def _insert(self, envelopes: list[ArchivedEnvelope]) -> None:
        conn = self._conn()
        unique: dict[bytes, ArchivedEnvelope] = {}
        for env in envelopes:
            unique.setdefault(env.hash, env)
        from_bytes = int.from_bytes
        rows: list[Row] = sorted(
            (
                ((env.sent - KEY_BIAS) << 32) | from_bytes(env.hash[:4], "big"),
                from_bytes(env.topic, "big", signed=True),
                env.expiry - env.sent,
                (env.arrived - env.sent) if env.arrived else None,
                env.raw,
            )
            for env in unique.values()
        )
        conn.execute("BEGIN IMMEDIATE")
        cur = conn.executemany(INSERT_SQL, rows)
        if cur.rowcount == len(rows):
            added = rows
        else:  # some keys were taken: redo row by row to tell duplicates from hash-prefix collisions
            conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            added = self._insert_one_by_one(conn, rows)
        spans: dict[int, tuple[int, int]] = {}  # topic -> (first, last) key among the added rows
        for key, topic, *_ in added:
            span = spans.get(topic)
            spans[topic] = (key, key) if span is None else (min(span[0], key), max(span[1], key))
        conn.executemany(TOPIC_SEEN_SQL, ((t, span_floor(key_bucket(a)), span_ceiling(key_bucket(b)))
                                          for t, (a, b) in spans.items()))
        if added:
            conn.execute(ADD_COUNT_SQL, (len(added),))
        conn.execute("COMMIT")
        self.inserted_total += len(added)
        self.archived_bytes += sum(len(r[4]) for r in added)

    def _insert_one_by_one(self, conn: sqlite3.Connection, rows: list[Row]) -> list[Row]:
        added: list[Row] = []
        for row in rows:
            key, topic, ttl, arr, raw = row
            sent, low = key_sent(key), key & LOW_MASK
            for k in range(PROBE_WINDOW):
                probe = make_key(sent, low + k)
                if conn.execute(INSERT_SQL, (probe, topic, ttl, arr, raw)).rowcount == 1:
                    added.append(row)
                    break
                found = conn.execute("SELECT raw FROM envelopes WHERE id = ?", (probe,)).fetchone()
                if found is not None and bytes(found[0]) == raw:
                    break  # already stored
            else:
                log.warning("archive: %d envelopes of second %d share a hash prefix; dropping one",
                            PROBE_WINDOW, sent)
        return added

    def _conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise sqlite3.OperationalError("archive writer connection is closed")
        return self._wconn

    def _rollback(self) -> None:
        if self._wconn is not None and self._wconn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.execute("ROLLBACK")

    def _drop_writer(self) -> None:
        if self._wconn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.close()
        self._wconn = None

    def _reopen_writer(self) -> None:
        try:
            self._open_sync()
        except ArchiveError as exc:
            raise sqlite3.OperationalError(str(exc)) from exc

    def _evict_for_space(self, batch_bytes: int) -> bool:
        """Make room after SQLITE_FULL; False if there was nothing to delete or even that failed.

        Deleting needs a little space itself (WAL frames: B-tree rebalancing rewrites the pages
        next to the deleted ones), so the reserve file goes first and the WAL restarts in place.
        The oldest envelopes then go in chunks of about a quarter of the reserve, with the WAL
        restarted after each, so the WAL reuses the same few hundred KB instead of growing; a
        chunk that still hits the full disk is halved. At least a twentieth of the archive goes
        (or twice the reserve's worth), so a full disk is not met again at the next batch.

        Freed pages stay in the file for the next inserts, which then need no new disk space;
        but the WAL, the reserve and the failed batch do. So free pages go back to the filesystem
        (incremental_vacuum, a step at a time within the space there is, then a truncating
        checkpoint) until the filesystem has room for the reserve, a full WAL and twice the batch.
        The reserve is then re-created at once, before the next insert can take the space.
        """
        conn = self._wconn
        if conn is None:
            return False
        self._drop_reserve()
        with contextlib.suppress(sqlite3.Error):  # copy committed frames home; the WAL restarts in place
            conn.execute("PRAGMA wal_checkpoint(RESTART)")
        deleted = 0
        returned = 0
        try:
            total = int(conn.execute(COUNT_SQL).fetchone()[0])
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            wal_bytes = int(conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]) * page_size
            want_free = RESERVE_BYTES + wal_bytes + 2 * batch_bytes
            per_row = max(1, pages * page_size // max(1, total))
            target = min(total, max(PRUNE_BATCH // 4, total // 20, 2 * RESERVE_BYTES // per_row))
            chunk = max(1, RESERVE_BYTES // 4 // per_row)
            emptied = False
            for _ in range(EVICT_STEPS):
                st = os.statvfs(self.path.parent)
                fs_free = st.f_bavail * st.f_frsize
                if (deleted >= target or emptied) and fs_free >= want_free:
                    break
                free_pages = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                if emptied and free_pages == 0:
                    break  # nothing left to delete or give back
                if not emptied and (deleted < target or free_pages * page_size < want_free - fs_free):
                    try:
                        got = self._delete_oldest(conn, min(chunk, max(1, target - deleted)), None)
                    except sqlite3.Error as exc:
                        if _errcode(exc) != SQLITE_FULL or chunk == 1:
                            raise
                        chunk //= 2
                        continue
                    emptied = got == 0
                    deleted += got
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(RESTART)")
                    continue
                step = max(1, min(free_pages, fs_free // (3 * page_size)))
                conn.executescript(f"PRAGMA incremental_vacuum({step});")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                returned += step
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except (OSError, sqlite3.Error) as exc:
            self._rollback()
            log.error("archive: evicting to make room failed after %d envelopes: %s", deleted, exc)
        if deleted == 0 and returned == 0:
            return False
        log.warning("archive disk full: evicted the %d oldest envelopes, %d KB back to the filesystem",
                    deleted, returned * page_size // 1024)
        self._make_reserve()
        return True

    @property
    def _reserve_path(self) -> Path:
        return self.path.with_name(self.path.name + ".reserve")

    def _make_reserve(self) -> None:
        """Keep RESERVE_BYTES of disk allocated so eviction can run on a full disk; if that is not
        possible now, ``_need_reserve`` says to try again after the next successful write."""
        path = self._reserve_path
        try:
            if not (path.exists() and path.stat().st_size >= RESERVE_BYTES):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, RESERVE_BYTES)
                finally:
                    os.close(fd)
            self._need_reserve = False
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            self._need_reserve = True
            log.debug("archive reserve file not (yet) possible: %s", exc)

    def _drop_reserve(self) -> None:
        with contextlib.suppress(OSError):
            self._reserve_path.unlink()

    def _delete_oldest(self, conn: sqlite3.Connection, n: int, below_key: int | None) -> int:
        """Delete up to n oldest envelopes (only those with id < below_key when given)."""
        row = conn.execute("SELECT id FROM envelopes ORDER BY id LIMIT 1 OFFSET ?", (n - 1,)).fetchone()
        if row is None:
            row = conn.execute("SELECT max(id) FROM envelopes").fetchone()
            if row is None or row[0] is None:
                return 0
        bound = int(row[0])
        if below_key is not None:
            bound = min(bound, below_key - 1)
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.execute("DELETE FROM envelopes WHERE id <= ?", (bound,))
            conn.execute(ADD_COUNT_SQL, (-cur.rowcount,))
            conn.execute(
                f"DELETE FROM topics WHERE last_bucket < "
                f"coalesce((SELECT min(id) FROM envelopes) >> {BUCKET_SHIFT}, {2**62})"
            )
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return int(cur.rowcount)

    def _give_back_pages(self, conn: sqlite3.Connection, keep: int) -> int:
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if free <= keep:
            return 0
        # executescript steps the pragma to completion (execute() would free a single page)
        conn.executescript(f"PRAGMA incremental_vacuum({free - keep});")
        return free - keep

    def _shutdown_writer(self) -> None:
        if self._prune_run is not None:
            run, self._prune_run = self._prune_run, None
            for fut, loop in run.waiters:
                _post(loop, fut, PruneResult(run.deleted, ",".join(run.reasons)))
        if self._wconn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._drop_writer()

    # -- retention ---------------------------------------------------------------------------------

    def set_retention(self, policy: RetentionPolicy) -> None:
        self.retention = policy
        with self._cond:
            self._prune_asked = True
            self._cond.notify()

    async def prune(self) -> PruneResult:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[PruneResult] = loop.create_future()
        if not self._opened:
            raise ArchiveError("the archive is not open")

        def join() -> None:
            if self._prune_run is None:
                self._prune_run = _PruneRun()
            self._prune_run.waiters.append((fut, loop))

        await self._writer_job(join)
        return await fut

    def _prune_step(self) -> None:
        """One bounded retention batch; finishes the run when nothing more is due."""
        run = self._prune_run
        if run is None:
            return
        conn = self._wconn
        done = True
        try:
            if conn is not None:
                reason, deleted = self._prune_once(conn)
                if deleted:
                    run.deleted += deleted
                    if reason not in run.reasons:
                        run.reasons.append(reason)
                    done = False
        except sqlite3.Error as exc:
            self._rollback()
            log.error("archive retention failed: %s", exc)
        except Exception:
            self._rollback()
            log.exception("archive retention: unexpected error")
        if done:
            self._prune_run = None
            if run.deleted:
                log.info("archive retention: deleted %d envelopes (%s)", run.deleted, ", ".join(run.reasons))
            for fut, loop in run.waiters:
                _post(loop, fut, PruneResult(run.deleted, ",".join(run.reasons)))

    def _prune_once(self, conn: sqlite3.Connection) -> tuple[str, int]:
        p = self.retention
        if p.max_age_s > 0:
            cutoff = int(time.time()) - p.max_age_s
            if cutoff > 0:
                cutoff_key = make_key(min(cutoff, SENT_MAX), 0)
                oldest = conn.execute("SELECT min(id) FROM envelopes").fetchone()[0]
                if oldest is not None and oldest < cutoff_key:
                    return "max_age", self._delete_oldest(conn, PRUNE_BATCH, cutoff_key)
        total = int(conn.execute(COUNT_SQL).fetchone()[0])
        if p.max_count > 0 and total > p.max_count:
            return "max_count", self._delete_oldest(conn, min(PRUNE_BATCH, total - p.max_count), None)
        if p.max_bytes > 0 and total > 0:
            page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
            pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
            free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
            live = (pages - free) * page_size
            if live > p.max_bytes:
                per_row = max(1, live // total)
                n = min(PRUNE_BATCH, max(1, (live - p.max_bytes) // per_row + 1))
                deleted = self._delete_oldest(conn, n, None)
                self._give_back_pages(conn, FREELIST_KEEP_PAGES)
                return "max_bytes", deleted
        if p.min_free_disk_bytes > 0:
            free_disk = _free_disk(self.path.parent)
            if free_disk is not None and free_disk < p.min_free_disk_bytes:
                if total == 0:
                    self._raise(HEALTH_DISK_LOW, Severity.DEGRADED,
                                f"disk almost full ({free_disk // 1_000_000} MB free) and the archive "
                                "is empty")
                    return "", 0
                deleted = self._delete_oldest(conn, PRUNE_BATCH, None)
                self._give_back_pages(conn, 0)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return "min_free_disk", deleted
            self._clear(HEALTH_DISK_LOW)
        self._give_back_pages(conn, FREELIST_KEEP_PAGES)
        return "", 0

    # -- other writer jobs -------------------------------------------------------------------------

    async def _writer_job(self, fn: Callable[[], T]) -> T:
        if not self._opened:
            raise ArchiveError("the archive is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._cond:
            self._jobs.append(_Job(fn, fut, loop))
            self._cond.notify()
        return await fut

    def _run_job(self, job: _Job) -> None:
        try:
            result = job.fn()
        except sqlite3.Error as exc:
            self._rollback()
            _post(job.loop, job.future, None, ArchiveError(str(exc)))
        except BaseException as exc:
            _post(job.loop, job.future, None, exc)
        else:
            _post(job.loop, job.future, result)

    async def vacuum(self) -> int:
        """Return every free page to the filesystem and truncate the WAL; bytes freed."""

        def work() -> int:
            conn = self._conn()
            before = self._file_bytes()
            self._give_back_pages(conn, 0)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return max(0, before - self._file_bytes())

        return await self._writer_job(work)

    def _file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # -- health ------------------------------------------------------------------------------------

    def _raise(self, key: str, severity: Severity, message: str) -> None:
        if self._conditions.get(key) != message:
            log.warning("%s", message)
        self._conditions[key] = message
        self.health_reason = message
        if self.health is not None:
            self._health_call(self.health.report, key, severity, message)

    def _clear(self, key: str) -> None:
        if self._conditions.pop(key, None) is None:
            return
        log.info("archive recovered (%s)", key)
        self.health_reason = next(iter(self._conditions.values()), "ok")
        if self.health is not None:
            self._health_call(self.health.clear, key)

    def _health_call(self, fn: Callable[..., None], *args: Any) -> None:
        # The health model belongs to the event loop: hop onto it when called from the writer.
        loop = self._loop
        if loop is not None and threading.current_thread() is not threading.main_thread() \
                and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)
                return
        fn(*args)

    # -- reading -----------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
        if conn is None:
            conn = self._connect()
            conn.execute("PRAGMA query_only = 1")
            conn.execute("PRAGMA cache_size = -8000")
            conn.execute("PRAGMA temp_store = MEMORY")
            self._reader_local.conn = conn
            self._reader_local.topics = _TopicCache()
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
        envs = [_row_to_envelope(r) for r in rows[: q.limit]]
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
        conn.execute("BEGIN")  # one snapshot for the cursor lookup and the page
        try:
            if q.cursor:
                sent, h = decode_cursor(q.cursor)
                ckey = self._find_key(conn, sent, h)
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
        return rows

    def _select(self, conn: sqlite3.Connection, q: HistoryQuery, lo: int, hi: int, n: int,
                columns: str = ROW_COLUMNS) -> list[Any]:
        order = "DESC" if q.descending else "ASC"
        topics: list[int] | None
        cache: _TopicCache = self._reader_local.topics
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
        return await self._read(lambda conn: self._find_key(conn, sent, envelope_hash) is not None)

    async def stats(self) -> ArchiveStats:
        def work(conn: sqlite3.Connection) -> ArchiveStats:
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
            wb = _proc_write_bytes()
            extra: dict[str, object] = {
                "path": str(self.path),
                "schema_version": SCHEMA_VERSION,
                "synchronous": self.synchronous.lower(),
                "distinct_topics": topics,
                "file_bytes": self._file_bytes(),
                "free_pages": free,
                "added_since_start": self.inserted_total,
                "pending_envelopes": self._queued_envelopes,
                "health": self.health_reason,
            }
            if wb is not None and self._write_bytes_at_open is not None:
                extra["process_disk_write_bytes"] = wb - self._write_bytes_at_open
            return ArchiveStats(
                count=count,
                bytes=(pages - free) * page_size,
                oldest_sent=None if lo is None else key_sent(int(lo)),
                newest_sent=None if hi is None else key_sent(int(hi)),
                free_disk_bytes=_free_disk(self.path.parent),
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


def rows_to_envelopes(rows: Iterable[Row]) -> list[ArchivedEnvelope]:
    return [_row_to_envelope(r) for r in rows]
