"""The PostgreSQL archive's retention: one node of the fleet at a time (an advisory lock), whole day
partitions dropped where they fit, the rest trimmed in bounded batches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from pimail.archive.base import ArchiveError, PruneResult, RetentionPolicy
from pimail.archive.common import PruneTally
from pimail.archive.postgres.core import PgCore
from pimail.archive.postgres.layout import (
    DAY_S,
    DELETE_SQL,
    EVICT_BATCH_ROWS,
    HEALTH_RETENTION,
    LOCK_PRUNE,
    PRUNELOCK_WAIT_S,
    ROW_OVERHEAD_BYTES,
    Partition,
    day_start,
    one_line,
)
from pimail.health import Severity

log = logging.getLogger(__name__)


class PgRetention(PgCore):
    """Retention of ``PostgresArchive`` (``prune``, the maintenance timer)."""

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

    async def _maintenance_loop(self) -> None:
        while True:
            await asyncio.sleep(self._prune_interval_s)
            try:
                await self._ensure_partitions_ahead()
                await self.prune()
            except Exception as exc:
                self._raise(HEALTH_RETENTION, Severity.DEGRADED,
                            f"archive retention on PostgreSQL failed: {one_line(exc)}")
            else:
                self._clear(HEALTH_RETENTION)

    async def prune(self) -> PruneResult:
        """Apply the retention policy now; joins a run already in progress (like SQLite's)."""
        self._require_pool()
        return await asyncio.shield(self._start_prune_run())

    async def _prune_run(self) -> PruneResult:
        tally = PruneTally()
        while True:
            self._prune_again = False
            result = await self._prune_once()
            tally.add(result.reason, result.deleted)
            if not self._prune_again or self._closing:
                return tally.finish()

    async def _prune_once(self) -> PruneResult:
        pool = self._require_pool()
        policy = self._retention
        try:
            async with pool.connection() as conn:
                # one node of the fleet prunes at a time; the others wait for it, then find less due
                deadline = time.monotonic() + PRUNELOCK_WAIT_S
                while True:
                    cur = await conn.execute(
                        "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_PRUNE, self._schema_key)
                    )
                    row = await cur.fetchone()
                    if row and row[0]:
                        break
                    if time.monotonic() > deadline:
                        log.info("archive: another node has been pruning for %.0f s; skipping this round",
                                 PRUNELOCK_WAIT_S)
                        return PruneResult(0, "")
                    await asyncio.sleep(0.1)
                try:
                    result = await self._prune_locked(conn, policy)
                except BaseException:
                    await conn.close()  # ends the session: PostgreSQL drops its advisory lock
                    raise
                await conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_PRUNE, self._schema_key))
                return result
        except (psycopg.Error, PoolTimeout) as exc:
            raise ArchiveError(f"PostgreSQL retention failed: {one_line(exc)}") from None

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

    async def _drop_partition(self, conn: psycopg.AsyncConnection[Any], part: Partition) -> tuple[int, int]:
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
        cur = await conn.execute(DELETE_SQL.format(pick=pick), params)
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
            oldest_day = day_start(int(row[0]))
            name = self._partitions.get(oldest_day)
            if name is not None:
                cur = await conn.execute("SELECT n, bytes FROM day_counts WHERE day = %s", (oldest_day,))
                day = await cur.fetchone()
                size = 0 if day is None else (
                    int(day[1]) + int(day[0]) * ROW_OVERHEAD_BYTES if by_bytes else int(day[0])
                )
                if 0 < size <= excess:
                    part = Partition(name, oldest_day, oldest_day + DAY_S)
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

