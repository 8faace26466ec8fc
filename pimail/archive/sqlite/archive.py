"""``SqliteArchive``: the embedded archive, one SQLite file in WAL mode written by one thread with
group commit (the file's layout: ``layout``; the rooms: ``writer``, ``space``, ``reader`` on the
shared state of ``core``). This module opens and closes it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sqlite3
import threading

from pimail.archive.base import ArchiveError
from pimail.archive.sqlite.core import proc_write_bytes
from pimail.archive.sqlite.layout import SCHEMA_VERSION, prepare
from pimail.archive.sqlite.reader import MAX_INFLIGHT_READS, READER_THREADS, SqliteReader
from pimail.archive.sqlite.salvage import classify, preflight, probe
from pimail.archive.sqlite.wal import WalDamage
from pimail.archive.sqlite.wal import keep as keep_damaged_wal
from pimail.archive.sqlite.writer import SqliteWriter

log = logging.getLogger(__name__)

WAL_MIN_PAGES = 64
RELEASE_BARRIER_S = 1.0  # release_memory: how long a reader thread waits for the others


class SqliteArchive(SqliteWriter, SqliteReader):
    """The SQLite archive (see ``pimail.archive.sqlite``).

    ``on_durable`` is called from the writer thread after each commit with the envelopes of that
    group; keep it short (the next group waits for it).

    ``wal_damage`` says what the last open found in a damaged WAL (and where its copy is kept).
    """

    wal_damage: WalDamage | None = None

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

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot create {self.path.parent}: {exc.strerror}") from exc
        preflight(self.path)  # bounded: stats and the header (see salvage)
        try:
            conn = self._connect()
        except ArchiveError as exc:
            if isinstance(exc.__cause__, sqlite3.Error):
                raise classify(self.path, exc.__cause__) from exc
            raise
        try:
            self.wal_damage = keep_damaged_wal(conn, self.path)  # before the checkpoint resets it
            prepare(conn, self.path, synchronous=self.synchronous,
                    autocheckpoint_pages=self._autocheckpoint_pages)
            probe(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise classify(self.path, exc) from exc
        except ArchiveError:
            conn.close()
            raise
        except BaseException:
            conn.close()
            raise
        self._wconn = conn
        self._make_reserve()
        self._open_log()  # the writer's: acknowledged envelopes a crash left in the ack log go in
        self._write_bytes_at_open = proc_write_bytes()
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

    async def release_memory(self) -> None:
        """Empty the page caches of the writer and of each reader (``PRAGMA shrink_memory``): after
        a burst they hold up to ``WRITER_CACHE_KIB`` + ``READERS`` × ``READER_CACHE_KIB`` of pages
        the kernel's page cache has as well (docs/PERFORMANCE.md, "Memory")."""
        if not self._opened or self._readers is None:
            return
        await self._writer_job(lambda: self._conn().execute("PRAGMA shrink_memory").close())
        # Reader connections belong to their threads: one task per reader thread, each holding
        # its thread at a barrier until the others have had theirs (at most a second).
        barrier = threading.Barrier(READER_THREADS)

        def shrink_reader() -> None:
            conn: sqlite3.Connection | None = getattr(self._reader_local, "conn", None)
            try:
                if conn is not None:
                    conn.execute("PRAGMA shrink_memory").close()
            finally:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=RELEASE_BARRIER_S)

        loop = asyncio.get_running_loop()
        try:
            await asyncio.gather(*(loop.run_in_executor(self._readers, shrink_reader)
                                   for _ in range(READER_THREADS)))
        except sqlite3.Error as exc:
            raise ArchiveError(f"archive cache release failed: {exc}") from exc

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

