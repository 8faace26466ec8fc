"""``PostgresArchive``: the fleet backend (see ``pimail.archive.postgres``). This module opens and
closes it; the rooms are ``layout``, ``core``, ``writer``, ``reader`` and ``retention``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from pimail.archive.base import ArchiveError, SchemaTooNew
from pimail.archive.postgres.layout import MAX_WAITING, POOL_WAIT_S, SCHEMA_VERSION, WRITERS, one_line
from pimail.archive.postgres.reader import PgReader
from pimail.archive.postgres.retention import PgRetention
from pimail.archive.postgres.writer import PgWriter

log = logging.getLogger(__name__)


class PostgresArchive(PgWriter, PgReader, PgRetention):
    """``Archive`` on a PostgreSQL server shared by several nodes.

    ``url`` is a libpq URL (``postgresql://user:pass@host:5432/db``). ``schema`` is the PostgreSQL
    schema holding pimail's tables (created if absent), so one database can hold several fleets.
    Retention is enforced by whichever node's timer fires first (an advisory lock keeps two nodes
    from pruning at once), so give every node of a fleet the same retention settings.
    """

    async def open(self) -> None:
        if self._pool is not None:
            return
        if self._retention.min_free_disk_bytes:
            log.debug("archive: min_free_disk does not apply to PostgreSQL (the server owns the disk)")
        schema_ident = sql.Identifier(self.schema)

        async def configure(conn: psycopg.AsyncConnection[Any]) -> None:
            await conn.set_autocommit(True)
            await conn.execute(sql.SQL("SET search_path TO {}").format(schema_ident))
            # an ack means the commit is on the server's disk: every setting but "off" waits for
            # the local WAL flush (remote_write/remote_apply also wait for standbys; kept)
            cur = await conn.execute("SHOW synchronous_commit")
            row = await cur.fetchone()
            if row is None or str(row[0]).lower() == "off":
                await conn.execute("SET synchronous_commit TO on")

        try:  # one direct attempt first: a refused connection fails now, with the server's reason
            connect_s = max(1, int(self._connect_timeout_s))
            probe = await asyncio.wait_for(
                psycopg.AsyncConnection.connect(self.url, connect_timeout=connect_s), connect_s + 1
            )
            await probe.close()
        except TimeoutError:
            raise ArchiveError(f"cannot reach PostgreSQL at {self.where}: timed out") from None
        except (psycopg.Error, OSError) as exc:
            raise ArchiveError(f"cannot reach PostgreSQL at {self.where}: {one_line(exc)}") from None
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
            raise ArchiveError(f"cannot reach PostgreSQL at {self.where}: {one_line(exc)}") from None
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
            raise ArchiveError(f"PostgreSQL archive at {self.where}: {one_line(exc)}") from None
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

