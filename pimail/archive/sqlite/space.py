"""The SQLite archive's disk space: the reserve file, eviction on a full disk, retention, vacuum.

Everything here runs on the writer thread (retention in bounded batches between group commits),
except ``set_retention``, ``prune`` and ``vacuum``, which hand work to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from pathlib import Path

from pimail.archive.base import ArchiveError, PruneResult, RetentionPolicy
from pimail.archive.common import PruneTally
from pimail.archive.sqlite.core import HEALTH_DISK_LOW, SQLITE_FULL, SqliteCore, errcode, free_disk
from pimail.archive.sqlite.layout import ADD_COUNT_SQL, BUCKET_SHIFT, COUNT_SQL, SENT_MAX, make_key
from pimail.health import Severity

log = logging.getLogger(__name__)

PRUNE_BATCH = 2000  # rows deleted per retention transaction (keeps each one short)
FREELIST_KEEP_PAGES = 256  # free pages kept for reuse after pruning (1 MB at 4 KiB pages)
RESERVE_BYTES = 1024 * 1024  # <archive>.reserve: given up on a full disk so eviction has room to run
EVICT_STEPS = 4096  # delete-chunk and give-back steps at most in one eviction


class SqliteSpace(SqliteCore):
    """Reserve, eviction, retention and vacuum of ``SqliteArchive``."""

    # -- a full disk -------------------------------------------------------------------------------

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
                        if errcode(exc) != SQLITE_FULL or chunk == 1:
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
                self._prune_run = PruneTally()
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
                    run.add(reason, deleted)
                    done = False
        except sqlite3.Error as exc:
            self._rollback()
            log.error("archive retention failed: %s", exc)
        except Exception:
            self._rollback()
            log.exception("archive retention: unexpected error")
        if done:
            self._prune_run = None
            run.finish()

    def _retention_reaches_tail(self) -> bool:
        """Whether a retention run now could have to count or delete envelopes that are only in the
        ack log (then the writer indexes them first; otherwise the timer's run leaves them be)."""
        tail = self._tail.snapshot()
        conn = self._wconn
        if not tail.keys or conn is None:
            return False
        p = self.retention
        bounds = tail.bounds()
        if p.max_age_s > 0 and bounds is not None and bounds[0] < time.time() - p.max_age_s:
            return True
        try:
            if p.max_count > 0 and int(conn.execute(COUNT_SQL).fetchone()[0]) + len(tail.keys) > p.max_count:
                return True
            if p.max_bytes > 0:
                page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
                free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
                if (pages - free) * page_size + self._tail.nbytes > p.max_bytes:
                    return True
        except sqlite3.Error:
            return True
        if p.min_free_disk_bytes > 0:
            disk_free = free_disk(self.path.parent)
            if disk_free is not None and disk_free < p.min_free_disk_bytes:
                return True
        return False

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
            disk_free = free_disk(self.path.parent)
            if disk_free is not None and disk_free < p.min_free_disk_bytes:
                if total == 0:
                    self._raise(HEALTH_DISK_LOW, Severity.DEGRADED,
                                f"disk almost full ({disk_free // 1_000_000} MB free) and the archive "
                                "is empty")
                    return "", 0
                deleted = self._delete_oldest(conn, PRUNE_BATCH, None)
                self._give_back_pages(conn, 0)
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                return "min_free_disk", deleted
            self._clear(HEALTH_DISK_LOW)
        self._give_back_pages(conn, FREELIST_KEEP_PAGES)
        return "", 0

    async def vacuum(self) -> int:
        """Return every free page to the filesystem and truncate the WAL; bytes freed."""

        def work() -> int:
            conn = self._conn()
            before = self._file_bytes()
            self._give_back_pages(conn, 0)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            return max(0, before - self._file_bytes())

        return await self._writer_job(work)

