"""A SQLite connection that lives on a worker thread of its own, for background scans.

The background check and the salvage read an archive in slices, each slice a blocking call in a
thread. When their task is cancelled (the node stops), the cancelled ``await`` returns at once but
the slice goes on running in its thread; closing the connection from another thread then frees
the statement under the running query, and CPython's sqlite3 module crashes the whole process
(a segfault at shutdown, seen once in CI). Here every call and the close run on the same single
worker thread, in order: ``close()`` can only run once the call in flight has returned, and a
cancelled call is interrupted (``sqlite3.Connection.interrupt`` is made for being called from
another thread) so that a long scan ends at its next step instead of at its end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import sqlite3
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ConnectionThread:
    """One connection, one worker thread; ``call`` runs ``fn(conn)`` there (see the module)."""

    def __init__(self, name: str) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._conn: sqlite3.Connection | None = None
        self._closed = False

    async def open(self, connect: Callable[[], sqlite3.Connection]) -> None:
        """Open the connection on the worker (its errors are raised here)."""
        conn = await asyncio.wrap_future(self._executor.submit(connect))
        if self._closed:  # closed while opening: nobody will use it
            self._executor.submit(conn.close)
            return
        self._conn = conn

    async def call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """``fn(conn)`` on the worker thread; cancelling the caller interrupts the running statement."""
        conn = self._conn
        if conn is None:
            raise sqlite3.ProgrammingError("the connection is not open")
        future = self._executor.submit(fn, conn)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            conn.interrupt()  # the statement stops at its next step with "interrupted"
            raise

    async def close(self) -> None:
        """Close after the call in flight has returned (queued behind it on the worker)."""
        if self._closed:
            return
        self._closed = True
        conn, self._conn = self._conn, None
        done = self._executor.submit(conn.close) if conn is not None else None
        self._executor.shutdown(wait=False)  # the worker ends once the queued close has run
        if done is not None:
            # shielded: a second cancellation must not take the queued close off the worker's queue
            with contextlib.suppress(sqlite3.Error):
                await asyncio.shield(asyncio.wrap_future(done))
