"""The full check of a live SQLite archive, run in the background after READY.

Two phases on a connection of its own (read-only, in a thread, never on the loop):

1. ``rows``: every row of the envelope table in key order, ``slice_rows`` at a time (each slice
   its own short read transaction, so checkpoints go on between slices). This reads every page of
   the table, overflow pages included, and gives the progress (rows read of the stored count).
2. ``quick_check``: ``PRAGMA quick_check`` over the whole file (indexes, free list, page
   accounting); one statement, so the phase shows no percentage.

A damaged page shows as a problem of one phase; the caller decides what to do with the file.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path
from typing import Any

from pimail.archive.base import ArchiveError
from pimail.archive.sqlite.connthread import ConnectionThread
from pimail.archive.sqlite.layout import COUNT_SQL
from pimail.archive.sqlite.salvage import is_corruption

QUICK_CHECK_MAX_ERRORS = 20


class FullCheck:
    """One full check of the archive at ``path`` (see the module)."""

    def __init__(self, path: Path, slice_rows: int) -> None:
        self.path = path
        self.slice_rows = slice_rows

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
            conn.execute("PRAGMA query_only = 1")
            conn.execute("PRAGMA cache_size = -2000")  # the scan touches each page once
        except sqlite3.Error as exc:
            raise ArchiveError(f"cannot open {self.path} for the check: {exc}") from exc
        return conn

    def _slice(self, conn: sqlite3.Connection, *, after: int | None) -> tuple[int, int | None]:
        """(rows read, last key) of the next slice after ``after``."""
        lo = -(2**63) if after is None else after + 1
        n, last = 0, None
        for key, _raw in conn.execute("SELECT id, raw FROM envelopes WHERE id >= ? ORDER BY id LIMIT ?",
                                      (lo, self.slice_rows)):
            n, last = n + 1, int(key)
        return n, last

    @staticmethod
    def _quick_check(conn: sqlite3.Connection) -> list[str]:
        rows = conn.execute(f"PRAGMA quick_check({QUICK_CHECK_MAX_ERRORS})").fetchall()
        return [str(r[0]) for r in rows if r[0] != "ok"]

    async def run(self, progress: dict[str, Any]) -> list[str]:
        """The problems found ([] = sound); updates ``progress`` (phase, rows, expected) as it goes.

        Every read runs on the check's own connection thread, so a cancelled check closes its
        connection only after the slice in flight has ended (``connthread``)."""
        worker = ConnectionThread("archive-check")
        try:
            await worker.open(self._connect)
            return await self._run(worker, progress)
        finally:
            await worker.close()

    async def _run(self, worker: ConnectionThread, progress: dict[str, Any]) -> list[str]:
        try:
            counted = await worker.call(lambda conn: conn.execute(COUNT_SQL).fetchone())
            progress["expected"] = int(counted[0])
        except (sqlite3.Error, TypeError) as exc:
            if isinstance(exc, sqlite3.Error) and not is_corruption(exc):
                raise ArchiveError(f"the check could not read {self.path}: {exc}") from exc
            return [f"the envelope counter cannot be read: {exc}"]
        after: int | None = None
        while True:
            try:
                n, last = await worker.call(functools.partial(self._slice, after=after))
            except sqlite3.DatabaseError as exc:
                if not is_corruption(exc):
                    raise ArchiveError(f"the check could not read {self.path}: {exc}") from exc
                return [f"envelope table unreadable after {progress['rows']} rows: {exc}"]
            progress["rows"] += n
            if last is None or n < self.slice_rows:
                break
            after = last
        progress["phase"] = "quick_check"
        try:
            return await worker.call(self._quick_check)
        except sqlite3.DatabaseError as exc:
            if not is_corruption(exc):
                raise ArchiveError(f"the check could not read {self.path}: {exc}") from exc
            return [f"quick_check: {exc}"]
