"""The SQLite archive's writer thread: group commit, inserts, recovery from a full disk or an I/O
error, and the retention batches between commits.

Submitted envelopes wait in the shared group-commit queue; the writer takes a group (``_collect``),
inserts it in one transaction, and resolves the group's futures after COMMIT (durable with
``synchronous=NORMAL`` against a crash of the process, with ``FULL`` against power loss too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Sequence

from pimail.archive.base import ArchivedEnvelope, ArchiveError
from pimail.archive.common import Pending, PruneTally
from pimail.archive.sqlite.core import (
    HEALTH_DISK_FULL,
    HEALTH_WRITE,
    SQLITE_BUSY,
    SQLITE_FULL,
    SQLITE_IOERR,
    SQLITE_LOCKED,
    Job,
    errcode,
)
from pimail.archive.sqlite.layout import (
    ADD_COUNT_SQL,
    INSERT_SQL,
    KEY_BIAS,
    LOW_MASK,
    PROBE_WINDOW,
    TOPIC_SEEN_SQL,
    Row,
    key_bucket,
    key_sent,
    make_key,
    span_ceiling,
    span_floor,
)
from pimail.archive.sqlite.space import SqliteSpace
from pimail.health import Severity

log = logging.getLogger(__name__)

DISK_FULL_RETRIES = 8  # evict-and-retry rounds for one batch before giving up on it
GROUP_CAP_FACTOR = 4  # a due group takes up to 4 × flush_max envelopes already waiting (see _collect)


class SqliteWriter(SqliteSpace):
    """Submit, group commit and the writer thread's loop of ``SqliteArchive``."""

    def submit(self, envelopes: Sequence[ArchivedEnvelope]) -> asyncio.Future[None]:
        return self._queue.submit(envelopes, self._opened)

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
                self._prune_run = PruneTally()
            if self._prune_asked or self._prune_run is not None:
                self._prune_asked = False
                self._prune_step()
            if stop:
                break
        self._shutdown_writer()

    def _collect(self, next_prune: float) -> tuple[list[Pending], list[Job], bool]:
        """Wait until a group is due (``self.group``: the oldest envelope has waited the flush
        interval, or a full group waits) or there is other work; then take the group.

        A due group takes everything already waiting (up to GROUP_CAP_FACTOR × flush_max): under
        load the queue fills while the previous group commits, and one commit of all of it makes
        those envelopes durable no later and dirties the index pages once instead of once per
        flush_max (bench/archive at 1M stored: 2.98 → 2.70 bytes written per archived byte)."""
        batch: list[Pending] = []
        count = 0
        cap = GROUP_CAP_FACTOR * self.flush_max
        queue = self._queue
        with self._cond:
            while True:
                busy = self._prune_run is not None or self._prune_asked
                now = time.monotonic()
                oldest = queue.oldest_at()
                due = self._stopping or bool(self._jobs) or busy or (oldest is not None and (
                    self.group.full(queue.waiting, queue.waiting_bytes)
                    or now >= self.group.deadline(oldest)))
                if due:
                    break
                if oldest is not None:
                    deadline = self.group.deadline(oldest)
                else:
                    deadline = next_prune if self.prune_interval_s > 0 else now + 3600
                if now >= deadline:
                    break
                self._cond.wait(deadline - now)
            while queue.items and count < cap:
                p = queue.pop()
                batch.append(p)
                count += len(p.envelopes)
            jobs = list(self._jobs)
            self._jobs.clear()
            stop = self._stopping and not queue.items
        return batch, jobs, stop

    def _write_batch(self, batch: list[Pending]) -> None:
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
        self._queue.finish(batch, error, self.on_durable)

    def _write_with_recovery(self, envelopes: list[ArchivedEnvelope]) -> None:
        """Insert durably; on a full disk evict the oldest envelopes and retry; never raise sqlite3."""
        for attempt in range(DISK_FULL_RETRIES + 1):
            try:
                if self._wconn is None:
                    self._reopen_writer()
                self._insert(envelopes)
            except sqlite3.Error as exc:
                self._rollback()
                code = errcode(exc)
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

    def _shutdown_writer(self) -> None:
        if self._prune_run is not None:
            run, self._prune_run = self._prune_run, None
            run.finish()
        if self._wconn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._drop_writer()

