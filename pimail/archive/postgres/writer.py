"""The PostgreSQL archive's writers: group commit from the shared queue, two batches in flight,
each inserted in one transaction (rows in key order, so nodes never deadlock)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import psycopg

from pimail.archive.base import ArchivedEnvelope, ArchiveError
from pimail.archive.common import Pending
from pimail.archive.postgres.core import PgCore
from pimail.archive.postgres.layout import (
    HEALTH_WRITE,
    INSERT_SQL,
    INSERT_TOPICS_SQL,
    MAX_KNOWN_TOPICS,
    WRITE_ATTEMPTS,
    day_start,
    one_line,
)
from pimail.envelope.bloom import topic_to_bloom
from pimail.health import Severity

log = logging.getLogger(__name__)


class PgWriter(PgCore):
    """Submit and the write loops of ``PostgresArchive``."""

    def submit(self, envelopes: Sequence[ArchivedEnvelope]) -> asyncio.Future[None]:
        future = self._queue.submit(envelopes, not (self._closing or self._closed or not self._writers))
        if not future.done():
            self._wake.set()
            if self._group.full(self._queue.waiting, self._queue.waiting_bytes):
                self._full.set()
        return future

    def _take_batch(self) -> list[Pending]:
        taken = self._queue.take(self._flush_max)
        if not self._group.full(self._queue.waiting, self._queue.waiting_bytes):
            self._full.clear()
        return taken

    async def _write_loop(self) -> None:
        while True:
            if not self._queue.items:
                if self._closing:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = self._queue.oldest_at()
            if not self._closing and oldest is not None and not self._full.is_set():
                # group commit (GroupPolicy): wait until the oldest envelope has waited one flush
                # interval, unless a full group is waiting already or fills up meanwhile
                wait = self._group.deadline(oldest) - time.monotonic()
                if wait > 0:
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._full.wait(), wait)
                    continue  # look again: the other writer may have taken the group
            taken = self._take_batch()
            if not taken:  # the other writer took it while this one waited
                continue
            envs = [e for p in taken for e in p.envelopes]
            try:
                await self._write(envs)
            except Exception as exc:  # any failure fails exactly this batch's futures
                reason = f"archive cannot write to PostgreSQL {self.where}: {one_line(exc)}"
                self._raise(HEALTH_WRITE, Severity.FAILING, reason)
                self._queue.finish(taken, ArchiveError(reason), None)
                continue
            self._clear(HEALTH_WRITE)
            self._queue.finish(taken, None, self._on_durable)  # the callback before the futures

    async def _write(self, envs: list[ArchivedEnvelope]) -> None:
        first, last = self._partition_window(int(time.time()))
        for day in sorted({day_start(e.sent) for e in envs}):
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
                        await conn.execute(INSERT_TOPICS_SQL, (new_topics, blooms))
                    cur = await conn.execute(INSERT_SQL, cols)
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
        self._queue.fail_all(exc)
