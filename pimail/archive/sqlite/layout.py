"""The SQLite archive's file layout: key packing, schema, migrations, the statements on it.

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
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from pimail.archive.base import ArchivedEnvelope, ArchiveError, SchemaTooNew
from pimail.crypto.keccak import keccak256

if TYPE_CHECKING:
    import sqlite_utils  # imported by migrate() only: an archive at SCHEMA_VERSION never needs it

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
KEY_BIAS = 1 << 31  # sent is a uint32; biasing keeps (sent << 32) inside a signed 64-bit integer
LOW_MASK = 0xFFFFFFFF
PROBE_WINDOW = 16  # slots tried for hash-prefix collisions within one second
SENT_MAX = 2**32 - 1
PAGE_SIZE = 8192  # fewer, fuller pages than 4096 for ~300 B rows (see bench/archive.py)
WAL_AUTOCHECKPOINT_PAGES = 2000  # 16 MB: index pages reach the main file once per checkpoint
# The writer's page cache. Appends touch the right edge of the key B-tree and a few pages per topic
# of the topic index; the kernel's page cache holds the rest of the file. A cache, once filled,
# stays resident until the connection closes (docs/PERFORMANCE.md, "Memory"); no mmap either:
# mapped pages would count as pimail's RSS.
WRITER_CACHE_KIB = 4096

Row = tuple[int, int, int, int | None, bytes]  # id, topic, ttl, arr, raw


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


def _create_tables(db: sqlite_utils.Database) -> None:
    """The tables, the topic index and the trigger every version has."""
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
    db.execute(
        "CREATE TRIGGER topics_added AFTER INSERT ON topics BEGIN "
        "UPDATE meta SET value = value + 1 WHERE key = 'topic_gen'; END"
    )


# A new archive is made at SCHEMA_VERSION at once, in plain SQL: the same tables as version 1's
# sqlite-utils definitions migrated to the latest (tests/archive/test_migrate.py compares the two),
# without importing sqlite-utils, which would stay resident (~5 MB) until the next restart.
LATEST_SCHEMA = (
    'CREATE TABLE "envelopes" (\n   "id" INTEGER PRIMARY KEY,\n   "topic" INTEGER NOT NULL,\n'
    '   "ttl" INTEGER NOT NULL,\n   "arr" INTEGER,\n   "raw" BLOB NOT NULL\n)',
    'CREATE TABLE "topics" (\n   "topic" INTEGER PRIMARY KEY,\n   "first_bucket" INTEGER NOT NULL,\n'
    '   "last_bucket" INTEGER NOT NULL\n)',
    'CREATE TABLE "meta" (\n   "key" TEXT PRIMARY KEY,\n   "value" INTEGER NOT NULL\n)',
    "INSERT INTO meta (key, value) VALUES ('topic_gen', 0), ('count', 0)",
    f"CREATE INDEX envelopes_topic ON envelopes({BUCKET_EXPR}, topic)",
    "CREATE TRIGGER topics_added AFTER INSERT ON topics BEGIN "
    "UPDATE meta SET value = value + 1 WHERE key = 'topic_gen'; END",
)


def _create_latest(conn: sqlite3.Connection) -> None:
    for statement in LATEST_SCHEMA:
        conn.execute(statement)


def _migrate_v1(db: sqlite_utils.Database) -> None:
    _create_tables(db)
    db.execute(f"CREATE INDEX envelopes_hash ON envelopes({BUCKET_EXPR}, {V1_HASH_EXPR})")


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
    if version == 0:
        conn.execute("BEGIN IMMEDIATE")
        try:
            _create_latest(conn)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("archive %s: created (schema version %d)", path, SCHEMA_VERSION)
        return
    import sqlite_utils  # ~5 MB with click, dateutil and pluggy: only when there is a migration to run

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


def prepare(conn: sqlite3.Connection, path: Path, *, synchronous: str,
            autocheckpoint_pages: Callable[[sqlite3.Connection], int]) -> None:
    """Set the writer connection up (WAL, page size, vacuum mode, sync level) and migrate.

    ``autocheckpoint_pages`` is asked once the page size is settled."""
    if int(conn.execute("PRAGMA user_version").fetchone()[0]) == 0:
        # must precede the first write (WAL mode writes the header): free pages can then
        # go back to the filesystem without a full VACUUM
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # before auto_vacuum, or it is ignored
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise ArchiveError(f"{path}: cannot switch to WAL mode (got {mode})")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute("PRAGMA temp_store = MEMORY")
    # Debian builds SQLite with SECURE_DELETE: zero-filling every freed page doubles the
    # writes of retention and needs disk space exactly when the disk is full
    conn.execute("PRAGMA secure_delete = FAST")
    conn.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint_pages(conn)}")
    conn.execute(f"PRAGMA journal_size_limit = {WAL_AUTOCHECKPOINT_PAGES * PAGE_SIZE}")
    conn.execute(f"PRAGMA cache_size = -{WRITER_CACHE_KIB}")
    migrate(conn, path)
    # A WAL left behind by a crash is only reset by a checkpoint; if the node is killed again
    # before the next automatic one (a crash loop), the WAL would grow without bound.
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def row_to_envelope(row: Row) -> ArchivedEnvelope:
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
# two subqueries: "SELECT min(id), max(id)" in one query would scan the whole table
MIN_MAX_SQL = "SELECT (SELECT min(id) FROM envelopes), (SELECT max(id) FROM envelopes)"


def rows_to_envelopes(rows: Iterable[Row]) -> list[ArchivedEnvelope]:
    return [row_to_envelope(r) for r in rows]
