"""The fleet backend: several pimail nodes archive into (and serve from) one PostgreSQL database.

Same ``Archive`` contract as the SQLite store, with these PostgreSQL specifics:

* psycopg 3 with an ``AsyncConnectionPool``: every round trip is awaited on the event loop's own
  socket readiness, so the loop never blocks on the database.
* Schema in its own PostgreSQL schema (default ``pimail``), versioned by a ``schema_version`` table;
  migrations run under an advisory lock so nodes starting together do not race; an archive written
  by a newer pimail refuses to open (``SchemaTooNew``).
* ``envelopes`` is keyed by ``(sent, hash)`` and inserted with ``ON CONFLICT DO NOTHING``: every node
  of a fleet archives the same relayed envelope and only the first insert counts. Each batch goes
  in key order, so nodes inserting the same envelopes at once wait for each other, never deadlock.
* Indexes: the key (time ranges, cursors, ``contains``) and ``(topic, sent, hash)`` (topic
  requests: one ordered index range per topic, merged); schema version 1 also had one on ``hash``,
  which version 2 drops (every lookup takes the whole key). A request bloom is turned into the
  stored topics it matches (geth BloomFilterMatch) through a small ``topics`` table holding each
  topic's bloom, then served like a topic request. ``day_counts`` keeps envelopes and bytes per
  day in step with every insert and delete, so stats and retention never ``count(*)``.
* Time partitioning: one range partition per UTC day of ``sent``, created on demand (and a day
  ahead by the maintenance timer) plus a default partition for times outside the window. Age
  retention drops whole day partitions; only the boundary day is trimmed row by row.
* Size accounting is logical: ``bytes`` = stored envelope bytes + ``ROW_OVERHEAD_BYTES`` per row, so
  ``max_bytes`` is comparable across servers and falls as soon as rows go (PostgreSQL reuses the
  space; the physical size is reported in ``stats().extra["relation_bytes"]``). ``min_free_disk``
  does not apply: the disk belongs to the database server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool, PoolTimeout

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
    RetentionPolicy,
    SchemaTooNew,
    decode_cursor,
)
from pimail.config import ArchiveConfig
from pimail.envelope.bloom import BLOOM_LEN, is_full, topic_to_bloom
from pimail.health import HealthModel, Severity

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
DAY_S = 86400  # one partition per UTC day of sent time
PARTITION_PAST_DAYS = 400  # older days go to the default partition (a year of history + slack)
PARTITION_AHEAD_DAYS = 1  # the maintenance timer creates tomorrow's partition today
ROW_OVERHEAD_BYTES = 100  # heap tuple header, line pointer, key/topic/hash index entries
MAX_TOPIC_RANGES = 256  # up to this many topics: one ordered index range per topic; else a filtered scan
EVICT_BATCH_ROWS = 5000  # rows per DELETE when retention trims inside a partition
SENT_MAX = 2**32 - 1  # sent is a uint32 on the wire
DEFAULT_POOL_MAX = 4
CONNECT_TIMEOUT_S = 10.0
PRUNE_LOCK_WAIT_S = 30.0  # how long one node waits for another's retention run
POOL_WAIT_S = 30.0  # longest a query waits for a free connection before failing
MAX_WAITING = 256  # queries queued for a connection beyond this fail at once (ArchiveError)

# advisory lock namespaces (the second key is crc32 of the schema name, so schemas do not contend)
_LOCK_MIGRATE = 0x70696D01
_LOCK_PARTITION = 0x70696D02
_LOCK_PRUNE = 0x70696D03

HEALTH_WRITE = "archive.write_failed"
HEALTH_BACKLOG = "archive.backlog"
HEALTH_RETENTION = "archive.retention_failed"

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE envelopes (
            sent bigint NOT NULL,
            hash bytea NOT NULL,
            topic bytea NOT NULL,
            expiry bigint NOT NULL,
            arrived bigint NOT NULL,
            size integer NOT NULL,
            raw bytea NOT NULL,
            PRIMARY KEY (sent, hash)
        ) PARTITION BY RANGE (sent)""",
        "CREATE INDEX envelopes_topic_sent ON envelopes (topic, sent, hash)",
        "CREATE INDEX envelopes_hash ON envelopes (hash)",
        "CREATE TABLE envelopes_default PARTITION OF envelopes DEFAULT",
        # every topic ever stored, with its bloom: a request bloom becomes the set of stored topics
        # it matches (geth BloomFilterMatch), served by the (topic, sent, hash) index
        "CREATE TABLE topics (topic bytea PRIMARY KEY, bloom bit(512) NOT NULL)",
        # live envelopes and bytes per UTC day of sent, kept in step by every insert and delete,
        # so stats and retention never count(*) a fleet-sized table
        "CREATE TABLE day_counts (day bigint PRIMARY KEY, n bigint NOT NULL, bytes bigint NOT NULL)",
    ],
    # every lookup takes the whole key (sent, hash): the primary key serves it, and the hash index
    # was only costing writes
    2: ["DROP INDEX IF EXISTS envelopes_hash"],
}

_COLUMNS = "sent, hash, topic, expiry, raw, arrived"

# Rows go in key order and counters in day order: every node locks in the same global order, so
# nodes archiving the same envelopes at the same moment wait for each other but never deadlock.
_INSERT = f"""
WITH ins AS (
    INSERT INTO envelopes (sent, hash, topic, expiry, arrived, size, raw)
    SELECT s, h, t, e, a, octet_length(r), r
    FROM unnest(%b::bigint[], %b::bytea[], %b::bytea[], %b::bigint[], %b::bigint[], %b::bytea[])
        AS x(s, h, t, e, a, r)
    ORDER BY s, h
    ON CONFLICT DO NOTHING
    RETURNING sent, size
), counted AS (
    INSERT INTO day_counts (day, n, bytes)
    SELECT sent - mod(sent, {DAY_S}), count(*), sum(size) FROM ins GROUP BY 1 ORDER BY 1
    ON CONFLICT (day) DO UPDATE SET n = day_counts.n + EXCLUDED.n, bytes = day_counts.bytes + EXCLUDED.bytes
)
SELECT count(*), coalesce(sum(size), 0) FROM ins
"""

# Delete the rows a subquery picks and take them off the day counters, in one statement.
_DELETE = f"""
WITH d AS (
    DELETE FROM envelopes WHERE (sent, hash) IN ({{pick}}) RETURNING sent, size
), per_day AS (
    SELECT sent - mod(sent, {DAY_S}) AS day, count(*) AS n, sum(size) AS bytes FROM d GROUP BY 1
), counted AS (
    UPDATE day_counts c SET n = c.n - per_day.n, bytes = c.bytes - per_day.bytes
    FROM per_day WHERE c.day = per_day.day
)
SELECT count(*), coalesce(sum(size), 0) FROM d
"""
WRITE_ATTEMPTS = 3  # a batch is retried after a deadlock or serialization failure
WRITERS = 2  # batches in flight to the server at once: one commits while the next is sent

_INSERT_TOPICS = """
INSERT INTO topics (topic, bloom)
SELECT t, ('x' || encode(b, 'hex'))::bit(512) FROM unnest(%s::bytea[], %s::bytea[]) AS x(t, b)
ON CONFLICT DO NOTHING
"""

MAX_KNOWN_TOPICS = 100_000  # topics this process remembers as stored (skips re-inserting them)


def describe_url(url: str) -> str:
    """``user@host:port/db`` of a connection URL, never its password (for logs and errors)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparsable PostgreSQL URL>"
    user = str(params.get("user") or "")
    host = str(params.get("host") or "localhost")
    port = str(params.get("port") or "5432")
    db = str(params.get("dbname") or user)
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def _day_start(sent: int) -> int:
    return sent - sent % DAY_S


def _partition_name(day_start: int) -> str:
    return "envelopes_p" + time.strftime("%Y%m%d", time.gmtime(day_start))


@dataclass(frozen=True)
class _Partition:
    name: str
    lower: int  # inclusive
    upper: int  # exclusive


class _Pending:
    """One submit() call waiting for the writer."""

    __slots__ = ("envelopes", "future")

    def __init__(self, envelopes: list[ArchivedEnvelope], future: asyncio.Future[None]) -> None:
        self.envelopes = envelopes
        self.future = future


class PostgresArchive(Archive):
    """``Archive`` on a PostgreSQL server shared by several nodes.

    ``url`` is a libpq URL (``postgresql://user:pass@host:5432/db``). ``schema`` is the PostgreSQL
    schema holding pimail's tables (created if absent), so one database can hold several fleets.
    Retention is enforced by whichever node's timer fires first (an advisory lock keeps two nodes
    from pruning at once), so give every node of a fleet the same retention settings.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "pimail",
        retention: RetentionPolicy | None = None,
        flush_interval_ms: int = 200,
        flush_max_envelopes: int = 2000,
        max_pending_envelopes: int = 0,
        prune_interval_s: float = 60.0,
        pool_max: int = DEFAULT_POOL_MAX,
        health: HealthModel | None = None,
        on_durable: DurableCallback | None = None,
        config: ArchiveConfig | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        if config is not None:  # open_archive passes the [archive] section; it wins over the defaults
            flush_interval_ms = config.flush_interval_ms
            flush_max_envelopes = config.flush_max_envelopes
            prune_interval_s = config.prune_interval_s
        if not (url.startswith("postgresql://") or url.startswith("postgres://")):
            raise ArchiveError("a PostgreSQL archive URL must start with postgresql://")
        if not schema or len(schema) > 48:
            raise ArchiveError("the PostgreSQL schema name must be 1..48 characters")
        if flush_interval_ms < 0 or flush_max_envelopes < 1 or max_pending_envelopes < 0 or pool_max < 2:
            raise ValueError("flush_interval_ms must be ≥ 0, flush_max_envelopes ≥ 1, pool_max ≥ 2")
        self.url = url
        self.schema = schema
        self.where = describe_url(url) + f" (schema {schema})"
        self._retention = retention or RetentionPolicy()
        self._flush_interval_s = flush_interval_ms / 1000
        self._flush_max = flush_max_envelopes
        self._max_pending = max_pending_envelopes or max(20_000, 10 * flush_max_envelopes)
        self._prune_interval_s = prune_interval_s
        self._pool_max = pool_max
        self._connect_timeout_s = connect_timeout_s
        self._on_durable = on_durable
        self.health = health
        self.health_reason = "ok"
        self._conditions: dict[str, str] = {}
        self._last_backlog_log = 0.0
        self._schema_key = zlib.crc32(schema.encode()) & 0x7FFFFFFF
        self._pool: AsyncConnectionPool | None = None
        self._pending: list[_Pending] = []
        self._pending_count = 0
        self._wake = asyncio.Event()
        self._full = asyncio.Event()
        self._writers: list[asyncio.Task[None]] = []
        self._maintenance: asyncio.Task[None] | None = None
        self._prune_task: asyncio.Task[PruneResult] | None = None
        self._prune_again = False
        self._partitions: dict[int, str] = {}  # day start -> partition name (known to exist)
        self._known_topics: set[bytes] = set()  # topics known to be in the topics table
        self._closing = False
        self._closed = False
        self._bytes_written = 0
        self._inserted = 0
        self._duplicates = 0

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self._retention.min_free_disk_bytes:
            log.debug("archive: min_free_disk does not apply to PostgreSQL (the server owns the disk)")
        schema_ident = sql.Identifier(self.schema)

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.set_autocommit(True)
            await conn.execute(sql.SQL("SET search_path TO {}").format(schema_ident))

        try:  # one direct attempt first: a refused connection fails now, with the server's reason
            connect_s = max(1, int(self._connect_timeout_s))
            probe = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.url, connect_timeout=connect_s), connect_s + 1
            )
            await probe.close()
        except TimeoutError:
            raise ArchiveError(f"cannot reach PostgreSQL at {self.where}: timed out") from None
        except (psycopg.Error, OSError) as exc:
            raise ArchiveError(f"cannot reach PostgreSQL at {self.where}: {_one_line(exc)}") from None
        pool = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=self._pool_max,
            open=False,
            configure=configure,
            timeout=POOL_WAIT_S,
            max_waiting=MAX_WAITING,
            kwargs={"connect_timeout": max(1, int(connect_timeout_s := self._connect_timeout_s)),
                    "application_name": f"pimail/{self.schema}"},  # which fleet, in pg_stat_activity
            name="pimail-archive",
        )
        try:
            await pool.open(wait=True, timeout=connect_timeout_s)
        except (PoolTimeout, psycopg.Error, OSError) as exc:
            await pool.close()
            raise ArchiveError(f"cannot reach PostgreSQL at {self.where}: {_one_line(exc)}") from None
        self._pool = pool
        try:
            await self._migrate()
            await self._load_partitions()
            await self._ensure_partitions_ahead()
        except SchemaTooNew:
            await self._shutdown_pool()
            raise
        except (psycopg.Error, PoolTimeout) as exc:
            await self._shutdown_pool()
            raise ArchiveError(f"PostgreSQL archive at {self.where}: {_one_line(exc)}") from None
        self._writers = [asyncio.create_task(self._write_loop(), name=f"pimail-pg-writer-{i}")
                         for i in range(WRITERS)]
        if self._prune_interval_s > 0:
            self._maintenance = asyncio.create_task(self._maintenance_loop(), name="pimail-pg-maintenance")
        log.info("archive: PostgreSQL %s open (schema version %d)", self.where, SCHEMA_VERSION)

    async def close(self) -> None:
        if self._closed:
            return
        self._closing = True
        if self._prune_task is not None and not self._prune_task.done():
            self._prune_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, ArchiveError):
                await self._prune_task
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        if self._writers:
            self._wake.set()
            self._full.set()
            await asyncio.gather(*self._writers)
        self._closed = True
        self._fail_pending(ArchiveError("the archive is closed"))
        await self._shutdown_pool()
        log.info("archive: PostgreSQL %s closed", self.where)

    async def _shutdown_pool(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _require_pool(self) -> AsyncConnectionPool:
        if self._pool is None or self._closed:
            raise ArchiveError("the archive is not open")
        return self._pool

    # ------------------------------------------------------------------ schema

    async def _migrate(self) -> None:
        pool = self._require_pool()
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_MIGRATE, self._schema_key))
            await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
            )
            cur = await conn.execute("SELECT version FROM schema_version WHERE id = 1")
            row = await cur.fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"the PostgreSQL archive at {self.where} has schema version {current}, newer than "
                    f"this pimail understands ({SCHEMA_VERSION}); upgrade pimail"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                log.info("archive: migrating PostgreSQL schema %s to version %d", self.schema, version)
                for statement in _MIGRATIONS[version]:
                    await conn.execute(statement)
            if current != SCHEMA_VERSION:
                await conn.execute(
                    "INSERT INTO schema_version (id, version) VALUES (1, %s)"
                    " ON CONFLICT (id) DO UPDATE SET version = EXCLUDED.version",
                    (SCHEMA_VERSION,),
                )

    async def schema_version(self) -> int:
        """The schema version stored in the database."""
        async with self._require_pool().connection() as conn:
            cur = await conn.execute("SELECT version FROM schema_version WHERE id = 1")
            row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _list_partitions(self, conn: psycopg.AsyncConnection[Any]) -> list[_Partition]:
        cur = await conn.execute(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'envelopes'::regclass"
        )
        parts = []
        for name, bound in await cur.fetchall():
            if not str(name).startswith("envelopes_p") or "FROM" not in str(bound):
                continue
            # "FOR VALUES FROM ('1764115200') TO ('1764201600')"
            nums = [int(tok.strip("()' ")) for tok in str(bound).split("FROM")[1].split("TO")]
            parts.append(_Partition(str(name), nums[0], nums[1]))
        parts.sort(key=lambda p: p.lower)
        return parts

    async def _load_partitions(self) -> None:
        async with self._require_pool().connection() as conn:
            parts = await self._list_partitions(conn)
        self._partitions = {p.lower: p.name for p in parts}

    async def partitions(self) -> list[tuple[str, int, int]]:
        """Day partitions as (name, lower inclusive, upper exclusive), oldest first."""
        async with self._require_pool().connection() as conn:
            return [(p.name, p.lower, p.upper) for p in await self._list_partitions(conn)]

    def _partition_window(self, now: int) -> tuple[int, int]:
        """Day starts that get their own partition: [first, last]."""
        today = _day_start(now)
        first = today - PARTITION_PAST_DAYS * DAY_S
        if self._retention.max_age_s:
            first = max(first, _day_start(now - self._retention.max_age_s))
        return first, today + PARTITION_AHEAD_DAYS * DAY_S

    async def _ensure_partitions_ahead(self) -> None:
        now = int(time.time())
        for day in (_day_start(now), _day_start(now) + DAY_S * PARTITION_AHEAD_DAYS):
            if day not in self._partitions:
                await self._ensure_partition(day)

    async def _ensure_partition(self, day: int) -> None:
        """Create the partition for one UTC day, moving any rows of that day out of the default."""
        name = _partition_name(day)
        pool = self._require_pool()
        for attempt in range(3):
            try:
                async with pool.connection() as conn, conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, %s)", (_LOCK_PARTITION, self._schema_key)
                    )
                    cur = await conn.execute(
                        "SELECT 1 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                        " WHERE i.inhparent = 'envelopes'::regclass AND c.relname = %s",
                        (name,),
                    )
                    if await cur.fetchone() is None:
                        ident = sql.Identifier(name)
                        # Lock the default first so no row of this day lands there while we attach.
                        await conn.execute("LOCK TABLE envelopes_default IN ACCESS EXCLUSIVE MODE")
                        await conn.execute(
                            sql.SQL("CREATE TABLE {} (LIKE envelopes INCLUDING DEFAULTS)").format(ident)
                        )
                        await conn.execute(
                            sql.SQL(
                                "WITH moved AS (DELETE FROM envelopes_default WHERE sent >= %s AND sent < %s"
                                " RETURNING *) INSERT INTO {} SELECT * FROM moved"
                            ).format(ident),
                            (day, day + DAY_S),
                        )
                        await conn.execute(  # DDL takes no bind parameters: literals
                            sql.SQL("ALTER TABLE envelopes ATTACH PARTITION {} FOR VALUES FROM ({}) TO ({})")
                            .format(ident, sql.Literal(day), sql.Literal(day + DAY_S))
                        )
                        log.debug("archive: created partition %s", name)
                self._partitions[day] = name
                return
            except psycopg.errors.DuplicateTable:
                self._partitions[day] = name
                return
            except (psycopg.errors.CheckViolation, psycopg.errors.LockNotAvailable,
                    psycopg.errors.DeadlockDetected):
                if attempt == 2:
                    raise
                await asyncio.sleep(0.05 * (attempt + 1))

    # ------------------------------------------------------------------ writing

    def submit(self, envelopes: Sequence[ArchivedEnvelope]) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        batch = list(envelopes)
        for env in batch:
            if len(env.hash) != 32 or len(env.topic) != 4 or not 0 <= env.sent <= SENT_MAX \
                    or env.expiry < env.sent:
                raise ValueError(f"not an archivable envelope record: sent={env.sent} "
                                 f"expiry={env.expiry} hash/topic lengths {len(env.hash)}/{len(env.topic)}")
        if not batch:
            future.set_result(None)
            return future
        if self._closing or self._closed or not self._writers:
            future.set_exception(ArchiveError("the archive is not open"))
            return future
        if self._pending_count + len(batch) > self._max_pending:
            now = time.monotonic()
            if now - self._last_backlog_log > 10:
                self._last_backlog_log = now
                log.warning("archive: PostgreSQL is behind (%d envelopes waiting to be written): dropping "
                            "new ones until it catches up", self._pending_count)
            future.set_exception(ArchiveError("archive write queue is full"))
            return future
        self._pending.append(_Pending(batch, future))
        self._pending_count += len(batch)
        self._wake.set()
        if self._pending_count >= self._flush_max:
            self._full.set()
        return future

    def _take_batch(self) -> list[_Pending]:
        taken: list[_Pending] = []
        n = 0
        while self._pending and (not taken or n + len(self._pending[0].envelopes) <= self._flush_max):
            item = self._pending.pop(0)
            taken.append(item)
            n += len(item.envelopes)
        self._pending_count -= n
        if self._pending_count < self._flush_max:
            self._full.clear()
        return taken

    async def _write_loop(self) -> None:
        while True:
            if not self._pending:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            if not self._closing and self._pending_count < self._flush_max and self._flush_interval_s > 0:
                # group commit: gather for one flush interval unless a full batch is already waiting
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self._flush_interval_s)
            taken = self._take_batch()
            if not taken:  # the other writer took it while this one waited
                continue
            envs = [e for p in taken for e in p.envelopes]
            try:
                await self._write(envs)
            except Exception as exc:  # any failure fails exactly this batch's futures
                reason = f"archive cannot write to PostgreSQL {self.where}: {_one_line(exc)}"
                self._raise(HEALTH_WRITE, Severity.FAILING, reason)
                for p in taken:
                    if not p.future.done():
                        p.future.set_exception(ArchiveError(reason))
                continue
            self._clear(HEALTH_WRITE)
            if self._on_durable is not None:  # before the futures, as in SqliteArchive
                try:
                    self._on_durable(envs)
                except Exception:
                    log.exception("archive: durable callback failed")
            for p in taken:
                if not p.future.done():
                    p.future.set_result(None)

    async def _write(self, envs: list[ArchivedEnvelope]) -> None:
        first, last = self._partition_window(int(time.time()))
        for day in sorted({_day_start(e.sent) for e in envs}):
            if first <= day <= last and day not in self._partitions:
                await self._ensure_partition(day)
        cols: tuple[list[Any], ...] = ([], [], [], [], [], [])
        for e in envs:
            for col, value in zip(cols, (e.sent, e.hash, e.topic, e.expiry, e.arrived, e.raw), strict=True):
                col.append(value)
        new_topics = sorted({e.topic for e in envs} - self._known_topics)
        pool = self._require_pool()
        for attempt in range(WRITE_ATTEMPTS):
            try:
                async with pool.connection() as conn, conn.transaction():
                    if new_topics:  # same transaction: whoever sees an envelope also sees its topic
                        blooms = [topic_to_bloom(t) for t in new_topics]
                        await conn.execute(_INSERT_TOPICS, (new_topics, blooms))
                    cur = await conn.execute(_INSERT, cols)
                    row = await cur.fetchone()
                break
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure):
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                log.debug("archive: write batch collided with another node's; retrying")
                await asyncio.sleep(0.01 * (attempt + 1))
        if len(self._known_topics) + len(new_topics) > MAX_KNOWN_TOPICS:
            self._known_topics.clear()
        self._known_topics.update(new_topics)
        added, added_bytes = (int(row[0]), int(row[1])) if row else (0, 0)
        self._bytes_written += added_bytes
        self._inserted += added
        self._duplicates += len(envs) - added

    def _fail_pending(self, exc: Exception) -> None:
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(exc)
        self._pending.clear()
        self._pending_count = 0

    # ------------------------------------------------------------------ reading

    async def query(self, q: HistoryQuery) -> HistoryPage:
        if not 1 <= q.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_QUERY_LIMIT} (got {q.limit})")
        cursor_item = decode_cursor(q.cursor) if q.cursor else None  # malformed ⇒ InvalidCursor
        if q.bloom is not None and q.bloom != b"" and len(q.bloom) != BLOOM_LEN:
            raise ValueError(f"bloom must be {BLOOM_LEN} bytes (got {len(q.bloom)})")
        if any(len(t) != 4 for t in q.topics):
            raise ValueError("topics must be 4 bytes each")
        pool = self._require_pool()
        lower, upper = max(0, q.lower), min(SENT_MAX, q.upper)
        if lower > upper:
            return HistoryPage([], None)
        params: dict[str, Any] = {"lo": lower, "hi": upper, "n": q.limit + 1}
        if cursor_item is not None:
            params["cs"], params["ch"] = cursor_item
        if q.topics:
            params["topics"] = sorted(set(q.topics))
            stmt = self._page_statement(q, cursor_item is not None, "topics", len(params["topics"]))
        elif q.bloom and not is_full(q.bloom):
            params["bloom"] = format(int.from_bytes(q.bloom, "big"), f"0{BLOOM_LEN * 8}b")  # bit(512) text
            stmt = self._page_statement(q, cursor_item is not None, "bloom", 0)
        else:
            stmt = self._page_statement(q, cursor_item is not None, "all", 0)
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(stmt, params)
                rows = await cur.fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise ArchiveError(f"PostgreSQL query failed: {_one_line(exc)}") from None
        if not rows or not rows[0][0]:
            raise InvalidCursor("cursor does not match any stored envelope")
        if rows[0][1] is None:  # the LEFT JOIN's empty page
            return HistoryPage([], None)
        envs = [_row_to_envelope(r[1:]) for r in rows[: q.limit]]
        return HistoryPage(envs, envs[-1].cursor if len(rows) > q.limit else None)

    @staticmethod
    def _page_statement(q: HistoryQuery, has_cursor: bool, mode: str, n_topics: int) -> sql.Composed:
        """One statement = one snapshot and one round trip: the cursor's check and the page.

        ``mode`` "all" walks the key range. "topics" (``%(topics)s``): a short list walks each
        topic's (topic, sent, hash) index range in order and merges them, however rare the topics;
        a long one walks the key range with a topic filter. "bloom" (``%(bloom)s``): the stored
        topics the bloom matches (geth BloomFilterMatch on the topics table), then either plan by
        their number; the unused branch is skipped by a one-time filter.
        """
        desc = q.descending

        def order(alias: str) -> sql.SQL:
            a = f"{alias}." if alias else ""
            return sql.SQL(f"ORDER BY {a}sent DESC, {a}hash DESC" if desc else f"ORDER BY {a}sent, {a}hash")

        conds: list[sql.Composable] = [sql.SQL("c.ok"), sql.SQL("e.sent >= %(lo)s AND e.sent <= %(hi)s")]
        if has_cursor:
            conds.append(sql.SQL("(e.sent, e.hash) < (%(cs)s, %(ch)s)" if desc
                                 else "(e.sent, e.hash) > (%(cs)s, %(ch)s)"))
            found = sql.SQL("EXISTS (SELECT 1 FROM envelopes WHERE sent = %(cs)s AND hash = %(ch)s)")
        else:
            found = sql.SQL("true")
        cols = sql.SQL(", ".join(f"e.{c.strip()}" for c in _COLUMNS.split(",")))
        where = sql.SQL(" AND ").join(conds)

        def per_topic(source: str, guard: str = "") -> sql.Composed:
            return sql.SQL(
                "SELECT x.* FROM {source} CROSS JOIN LATERAL ("
                "SELECT {cols} FROM envelopes e WHERE e.topic = t.topic AND {where} {o_e} LIMIT %(n)s) x "
                "{guard} {o_x} LIMIT %(n)s"
            ).format(source=sql.SQL(source), cols=cols, where=where, o_e=order("e"), guard=sql.SQL(guard),
                     o_x=order("x"))

        def filtered(topic_filter: str) -> sql.Composed:
            return sql.SQL("SELECT {cols} FROM envelopes e WHERE {where} AND {tf} {o_e} LIMIT %(n)s").format(
                cols=cols, where=where, tf=sql.SQL(topic_filter), o_e=order("e"))

        prefix = sql.SQL("")
        if mode == "topics" and n_topics <= MAX_TOPIC_RANGES:
            inner = per_topic("unnest(%(topics)s::bytea[]) AS t(topic)")
        elif mode == "topics":
            inner = filtered("e.topic = ANY(%(topics)s::bytea[])")
        elif mode == "bloom":
            match = "(bloom & %(bloom)s::bit(512)) = bloom"
            prefix = sql.SQL(
                f"WITH m AS MATERIALIZED (SELECT topic FROM topics WHERE {match} "
                f"LIMIT {MAX_TOPIC_RANGES + 1}), "
                "nm AS MATERIALIZED (SELECT count(*) AS k FROM m) "
            )
            inner = sql.SQL("({sparse}) UNION ALL ({dense})").format(
                sparse=per_topic("m AS t", f"WHERE (SELECT k FROM nm) <= {MAX_TOPIC_RANGES}"),
                dense=filtered(f"(SELECT k FROM nm) > {MAX_TOPIC_RANGES} "
                               f"AND e.topic IN (SELECT topic FROM topics WHERE {match})"),
            )
        else:
            inner = filtered("true")
        return sql.SQL(
            "{prefix}SELECT c.ok, p.* FROM (SELECT {found} AS ok) c "
            "LEFT JOIN LATERAL ({inner}) p ON true {o_p}"
        ).format(prefix=prefix, found=found, inner=inner, o_p=order("p"))

    async def contains(self, sent: int, envelope_hash: bytes) -> bool:
        if len(envelope_hash) != 32 or not 0 <= sent < 2**32:
            return False
        try:
            async with self._require_pool().connection() as conn:
                cur = await conn.execute(
                    "SELECT 1 FROM envelopes WHERE sent = %s AND hash = %s", (sent, envelope_hash)
                )
                return await cur.fetchone() is not None
        except (psycopg.Error, PoolTimeout) as exc:
            raise ArchiveError(f"PostgreSQL query failed: {_one_line(exc)}") from None

    async def get(self, sent: int, envelope_hash: bytes) -> ArchivedEnvelope | None:
        """One stored envelope by its key, or None."""
        async with self._require_pool().connection() as conn:
            cur = await conn.execute(
                f"SELECT {_COLUMNS} FROM envelopes WHERE sent = %s AND hash = %s", (sent, envelope_hash)
            )
            row = await cur.fetchone()
        return None if row is None else _row_to_envelope(row)

    async def stats(self) -> ArchiveStats:
        try:
            async with self._require_pool().connection() as conn:
                cur = await conn.execute(
                    "SELECT (SELECT coalesce(sum(n), 0) FROM day_counts),"
                    " (SELECT coalesce(sum(bytes), 0) FROM day_counts),"
                    " (SELECT min(sent) FROM envelopes), (SELECT max(sent) FROM envelopes)"
                )
                row = await cur.fetchone()
                assert row is not None
                count, raw_bytes, oldest, newest = (int(row[0]), int(row[1]), row[2], row[3])
                cur = await conn.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0), count(*)"
                    " FROM pg_inherits i WHERE i.inhparent = 'envelopes'::regclass"
                )
                rel = await cur.fetchone()
                assert rel is not None
        except (psycopg.Error, PoolTimeout) as exc:
            raise ArchiveError(f"PostgreSQL query failed: {_one_line(exc)}") from None
        return ArchiveStats(
            count=count,
            bytes=raw_bytes + count * ROW_OVERHEAD_BYTES,
            oldest_sent=None if oldest is None else int(oldest),
            newest_sent=None if newest is None else int(newest),
            free_disk_bytes=None,
            bytes_written_since_start=self._bytes_written,
            retention=self._retention,
            extra={
                "backend": "postgresql",
                "server": self.where,
                "relation_bytes": int(rel[0]),
                "partitions": int(rel[1]),
                "envelope_bytes": raw_bytes,
                "inserted_since_start": self._inserted,
                "duplicates_since_start": self._duplicates,
                "pending": self._pending_count,
            },
        )

    # ------------------------------------------------------------------ retention

    def set_retention(self, policy: RetentionPolicy) -> None:
        self._retention = policy
        self._prune_again = True  # a run in progress goes round once more with the new policy
        if self._pool is None or self._closing:
            return
        with contextlib.suppress(RuntimeError):  # no running loop: the timer applies it later
            self._start_prune_run()

    def _start_prune_run(self) -> asyncio.Task[PruneResult]:
        if self._prune_task is None or self._prune_task.done():
            loop = asyncio.get_running_loop()
            self._prune_task = loop.create_task(self._prune_run(), name="pimail-pg-prune")
            self._prune_task.add_done_callback(_log_prune_failure)
        return self._prune_task

    # ------------------------------------------------------------------ health

    def _raise(self, key: str, severity: Severity, message: str) -> None:
        if self._conditions.get(key) != message:
            log.warning("%s", message)
        self._conditions[key] = message
        self.health_reason = message
        if self.health is not None:
            self.health.report(key, severity, message)

    def _clear(self, key: str) -> None:
        if self._conditions.pop(key, None) is None:
            return
        log.info("archive: PostgreSQL recovered (%s)", key)
        self.health_reason = next(iter(self._conditions.values()), "ok")
        if self.health is not None:
            self.health.clear(key)

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self._prune_interval_s)
            try:
                await self._ensure_partitions_ahead()
                await self.prune()
            except Exception as exc:
                self._raise(HEALTH_RETENTION, Severity.DEGRADED,
                            f"archive retention on PostgreSQL failed: {_one_line(exc)}")
            else:
                self._clear(HEALTH_RETENTION)

    async def prune(self) -> PruneResult:
        """Apply the retention policy now; joins a run already in progress (like SQLite's)."""
        self._require_pool()
        return await asyncio.shield(self._start_prune_run())

    async def _prune_run(self) -> PruneResult:
        deleted = 0
        reasons: list[str] = []
        while True:
            self._prune_again = False
            result = await self._prune_once()
            deleted += result.deleted
            reasons += [r for r in result.reason.split(",") if r and r not in reasons]
            if not self._prune_again or self._closing:
                if deleted:
                    log.info("archive retention: deleted %d envelopes (%s)", deleted, ", ".join(reasons))
                return PruneResult(deleted, ",".join(reasons))

    async def _prune_once(self) -> PruneResult:
        pool = self._require_pool()
        policy = self._retention
        try:
            async with pool.connection() as conn:
                # one node of the fleet prunes at a time; the others wait for it, then find less due
                deadline = time.monotonic() + PRUNE_LOCK_WAIT_S
                while True:
                    cur = await conn.execute(
                        "SELECT pg_try_advisory_lock(%s, %s)", (_LOCK_PRUNE, self._schema_key)
                    )
                    row = await cur.fetchone()
                    if row and row[0]:
                        break
                    if time.monotonic() > deadline:
                        log.info("archive: another node has been pruning for %.0f s; skipping this round",
                                 PRUNE_LOCK_WAIT_S)
                        return PruneResult(0, "")
                    await asyncio.sleep(0.1)
                try:
                    result = await self._prune_locked(conn, policy)
                except BaseException:
                    await conn.close()  # ends the session: PostgreSQL drops its advisory lock
                    raise
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (_LOCK_PRUNE, self._schema_key))
                return result
        except (psycopg.Error, PoolTimeout) as exc:
            raise ArchiveError(f"PostgreSQL retention failed: {_one_line(exc)}") from None

    async def _totals(self, conn: psycopg.AsyncConnection[Any]) -> tuple[int, int]:
        """(envelopes, logical bytes) from the day counters."""
        cur = await conn.execute("SELECT coalesce(sum(n), 0), coalesce(sum(bytes), 0) FROM day_counts")
        row = await cur.fetchone()
        n, raw = (int(row[0]), int(row[1])) if row else (0, 0)
        return n, raw + n * ROW_OVERHEAD_BYTES

    async def _prune_locked(self, conn: psycopg.AsyncConnection[Any], policy: RetentionPolicy) -> PruneResult:
        deleted: dict[str, int] = {}
        if policy.max_age_s:
            deleted["max_age"] = await self._prune_age(conn, int(time.time()) - policy.max_age_s)
        if policy.max_count:
            excess = (await self._totals(conn))[0] - policy.max_count
            if excess > 0:
                deleted["max_count"] = await self._evict_oldest(conn, excess, by_bytes=False)
        if policy.max_bytes:
            excess = (await self._totals(conn))[1] - policy.max_bytes
            if excess > 0:
                deleted["max_bytes"] = await self._evict_oldest(conn, excess, by_bytes=True)
        deleted = {k: v for k, v in deleted.items() if v}
        return PruneResult(sum(deleted.values()), ",".join(deleted))

    async def _drop_partition(self, conn: psycopg.AsyncConnection[Any], part: _Partition) -> tuple[int, int]:
        """Drop one day partition; (envelopes, logical bytes) it held."""
        ident = sql.Identifier(part.name)
        async with conn.transaction():
            # writers into this day finish first; their counts are then included below
            await conn.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(ident))
            cur = await conn.execute(
                "DELETE FROM day_counts WHERE day >= %s AND day < %s RETURNING n, bytes",
                (part.lower, part.upper),
            )
            rows = await cur.fetchall()
            await conn.execute(sql.SQL("DROP TABLE {}").format(ident))
        self._partitions.pop(part.lower, None)
        n = sum(int(r[0]) for r in rows)
        log.debug("archive: dropped partition %s (%d envelopes)", part.name, n)
        return n, sum(int(r[1]) for r in rows) + n * ROW_OVERHEAD_BYTES

    async def _delete(self, conn: psycopg.AsyncConnection[Any], pick: str, params: Sequence[Any]
                      ) -> tuple[int, int]:
        """Delete the (sent, hash) rows ``pick`` selects; (envelopes, logical bytes) deleted."""
        cur = await conn.execute(_DELETE.format(pick=pick), params)
        row = await cur.fetchone()
        n, raw = (int(row[0]), int(row[1])) if row else (0, 0)
        return n, raw + n * ROW_OVERHEAD_BYTES

    async def _prune_age(self, conn: psycopg.AsyncConnection[Any], cutoff: int) -> int:
        """Delete everything sent before ``cutoff``: whole day partitions, then the boundary rows."""
        deleted = 0
        for part in await self._list_partitions(conn):
            if part.upper <= cutoff:
                deleted += (await self._drop_partition(conn, part))[0]
        while True:
            n, _ = await self._delete(
                conn, "SELECT sent, hash FROM envelopes WHERE sent < %s ORDER BY sent, hash LIMIT %s",
                (cutoff, EVICT_BATCH_ROWS),
            )
            deleted += n
            if n < EVICT_BATCH_ROWS:
                return deleted

    async def _evict_oldest(self, conn: psycopg.AsyncConnection[Any], excess: int, *, by_bytes: bool) -> int:
        """Delete the oldest envelopes until ``excess`` rows (or logical bytes) are gone.

        A whole day partition that holds the oldest rows and fits inside the excess is dropped;
        the rest goes in bounded DELETE batches.
        """
        deleted = 0
        while excess > 0:
            cur = await conn.execute("SELECT min(sent) FROM envelopes")
            row = await cur.fetchone()
            if row is None or row[0] is None:
                return deleted
            oldest_day = _day_start(int(row[0]))
            name = self._partitions.get(oldest_day)
            if name is not None:
                cur = await conn.execute("SELECT n, bytes FROM day_counts WHERE day = %s", (oldest_day,))
                day = await cur.fetchone()
                size = 0 if day is None else (
                    int(day[1]) + int(day[0]) * ROW_OVERHEAD_BYTES if by_bytes else int(day[0])
                )
                if 0 < size <= excess:
                    part = _Partition(name, oldest_day, oldest_day + DAY_S)
                    n, nbytes = await self._drop_partition(conn, part)
                    deleted += n
                    excess -= nbytes if by_bytes else n
                    continue
            if by_bytes:  # the oldest rows whose running total stays within the excess (at least one)
                n, nbytes = await self._delete(
                    conn,
                    "SELECT sent, hash FROM (SELECT sent, hash,"
                    " sum(size + %s) OVER (ORDER BY sent, hash) - (size + %s) AS before"
                    " FROM (SELECT sent, hash, size FROM envelopes ORDER BY sent, hash LIMIT %s) oldest"
                    ") w WHERE before < %s",
                    (ROW_OVERHEAD_BYTES, ROW_OVERHEAD_BYTES, EVICT_BATCH_ROWS, excess),
                )
                excess -= nbytes
            else:
                n, _ = await self._delete(
                    conn, "SELECT sent, hash FROM envelopes ORDER BY sent, hash LIMIT %s",
                    (min(excess, EVICT_BATCH_ROWS),),
                )
                excess -= n
            if n == 0:
                return deleted
            deleted += n
        return deleted


def _log_prune_failure(task: asyncio.Task[PruneResult]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.debug("archive: retention run failed: %s", task.exception())  # its callers report it


def _row_to_envelope(row: Sequence[Any]) -> ArchivedEnvelope:
    sent, h, topic, expiry, raw, arrived = row
    return ArchivedEnvelope(int(sent), bytes(h), bytes(topic), int(expiry), bytes(raw), int(arrived))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
