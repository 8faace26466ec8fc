"""The PostgreSQL archive's shared state: settings, the connection pool, health, the schema
(migrations under an advisory lock) and the day partitions. The rooms (writer, reader, retention)
build on this; ``PostgresArchive`` joins them."""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from pimail.archive.base import (
    Archive,
    ArchiveError,
    DurableCallback,
    PruneResult,
    RetentionPolicy,
    SchemaTooNew,
)
from pimail.archive.common import BUSY_GROUP_BYTES, GroupPolicy, GroupQueue, HealthConditions
from pimail.archive.postgres.layout import (
    CONNECT_TIMEOUT_S,
    DAY_S,
    DEFAULT_POOL_MAX,
    LOCK_MIGRATE,
    LOCK_PARTITION,
    MIGRATIONS,
    PARTITION_AHEAD_DAYS,
    PARTITION_PAST_DAYS,
    SCHEMA_VERSION,
    Partition,
    day_start,
    describe_url,
    partition_name,
)
from pimail.config import ArchiveConfig
from pimail.health import HealthModel, Severity

log = logging.getLogger(__name__)


class PgCore(Archive):
    """State and plumbing shared by the rooms of ``PostgresArchive`` (see its docstring)."""

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
        busy_group_bytes: int = BUSY_GROUP_BYTES,
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
        self._health = HealthConditions(health, "archive: PostgreSQL recovered (%s)")
        self._schema_key = zlib.crc32(schema.encode()) & 0x7FFFFFFF
        self._pool: AsyncConnectionPool | None = None
        self._group = GroupPolicy(self._flush_interval_s, flush_max_envelopes, busy_group_bytes)
        self._queue = GroupQueue(self._max_pending, "archive: PostgreSQL is behind", bound_waiting=True)
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


    async def _shutdown_pool(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _require_pool(self) -> AsyncConnectionPool:
        if self._pool is None or self._closed:
            raise ArchiveError("the archive is not open")
        return self._pool


    def _raise(self, key: str, severity: Severity, message: str) -> None:
        self._health.report(key, severity, message)
        self.health_reason = self._health.reason

    def _clear(self, key: str) -> None:
        self._health.clear(key)
        self.health_reason = self._health.reason

    # ------------------------------------------------------------------ schema

    async def _migrate(self) -> None:
        pool = self._require_pool()
        async with pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_MIGRATE, self._schema_key))
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
            if current == 0:  # one transaction makes it: it is created at the latest version
                log.info("archive: creating PostgreSQL schema %s (version %d)", self.schema, SCHEMA_VERSION)
            for version in range(current + 1, SCHEMA_VERSION + 1):
                if current:
                    log.info("archive: migrating PostgreSQL schema %s to version %d", self.schema, version)
                for statement in MIGRATIONS[version]:
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

    async def _list_partitions(self, conn: psycopg.AsyncConnection[Any]) -> list[Partition]:
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
            parts.append(Partition(str(name), nums[0], nums[1]))
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
        today = day_start(now)
        first = today - PARTITION_PAST_DAYS * DAY_S
        if self._retention.max_age_s:
            first = max(first, day_start(now - self._retention.max_age_s))
        return first, today + PARTITION_AHEAD_DAYS * DAY_S

    async def _ensure_partitions_ahead(self) -> None:
        now = int(time.time())
        for day in (day_start(now), day_start(now) + DAY_S * PARTITION_AHEAD_DAYS):
            if day not in self._partitions:
                await self._ensure_partition(day)

    async def _ensure_partition(self, day: int) -> None:
        """Create the partition for one UTC day, moving any rows of that day out of the default."""
        name = partition_name(day)
        pool = self._require_pool()
        for attempt in range(3):
            try:
                async with pool.connection() as conn, conn.transaction():
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock(%s, %s)", (LOCK_PARTITION, self._schema_key)
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

