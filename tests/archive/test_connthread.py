"""The background scans' connection thread: a cancelled scan never closes its connection under a
statement still running in another thread (that crashed the interpreter once, in CI)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from pimail.archive.sqlite.connthread import ConnectionThread

WAIT_S = 60.0  # a bound for a hang, never a measure


def _db(path: Path) -> Path:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE t (x INTEGER)")
    conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    conn.commit()
    conn.close()
    return path


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, check_same_thread=False)


async def _cancelled_mid_call(db: Path, fn: Callable[[sqlite3.Connection], object],
                              started: threading.Event) -> ConnectionThread:
    """A worker whose call of ``fn`` was cancelled once ``fn`` had started."""
    worker = ConnectionThread("test-scan")
    await worker.open(lambda: _connect(db))
    call = asyncio.ensure_future(worker.call(fn))
    assert await asyncio.to_thread(started.wait, WAIT_S)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    return worker


def test_close_after_a_cancelled_call_waits_for_the_call_to_return(tmp_path: Path) -> None:
    db = _db(tmp_path / "a.db")
    started, release = threading.Event(), threading.Event()
    seen: list[object] = []

    def slow_slice(conn: sqlite3.Connection) -> int:
        started.set()
        release.wait(WAIT_S)
        # still using the connection after the caller was cancelled and close() was asked for
        seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
        return 0

    async def main() -> None:
        worker = await _cancelled_mid_call(db, slow_slice, started)
        closing = asyncio.ensure_future(worker.close())
        await asyncio.sleep(0)  # close() has queued its close behind the running call
        assert not closing.done()
        release.set()
        await asyncio.wait_for(closing, WAIT_S)

    asyncio.run(main())
    assert seen == [100]  # the statement ran on an open connection, to its end


def test_cancelling_interrupts_a_long_statement(tmp_path: Path) -> None:
    db = _db(tmp_path / "b.db")
    outcome: list[str] = []
    running = threading.Event()

    def mark(n: int) -> int:
        running.set()  # called while the statement steps: an interrupt now cannot be missed
        return n

    def endless(conn: sqlite3.Connection) -> None:
        conn.create_function("mark", 1, mark)
        try:  # counts to 10^12 unless interrupted
            conn.execute("WITH RECURSIVE c(n) AS (SELECT 1 UNION ALL SELECT mark(n) + 1 FROM c "
                         "WHERE n < 1000000000000) SELECT max(n) FROM c").fetchone()
            outcome.append("finished")
        except sqlite3.OperationalError as exc:
            outcome.append(str(exc))
            raise

    async def main() -> None:
        worker = await _cancelled_mid_call(db, endless, running)
        await asyncio.wait_for(worker.close(), WAIT_S)

    asyncio.run(main())
    assert outcome == ["interrupted"]


def test_calls_after_close_are_refused_and_open_errors_are_raised(tmp_path: Path) -> None:
    async def main() -> None:
        worker = ConnectionThread("test-scan")
        await worker.open(lambda: _connect(_db(tmp_path / "c.db")))
        assert await worker.call(lambda conn: conn.execute("SELECT count(*) FROM t").fetchone()[0]) == 100
        await worker.close()
        await worker.close()  # twice is fine
        with pytest.raises(sqlite3.ProgrammingError):
            await worker.call(lambda conn: conn.execute("SELECT 1").fetchone())

        failing = ConnectionThread("test-scan")

        def refuse() -> sqlite3.Connection:
            raise sqlite3.OperationalError("unable to open database file")

        with pytest.raises(sqlite3.OperationalError, match="unable to open"):
            await failing.open(refuse)
        await failing.close()

    asyncio.run(main())


def test_a_full_check_cancelled_mid_slice_finishes_the_slice_on_an_open_connection(tmp_path: Path) -> None:
    from pimail.archive.sqlite.check import FullCheck

    db = _db(tmp_path / "d.db")  # not an archive: the first slice is only a place to stop
    started, release = threading.Event(), threading.Event()
    seen: list[object] = []

    class HeldCheck(FullCheck):
        def _slice(self, conn: sqlite3.Connection, *, after: int | None) -> tuple[int, int | None]:
            started.set()
            release.wait(WAIT_S)
            seen.append(conn.execute("SELECT count(*) FROM t").fetchone()[0])
            return 0, None

    async def main() -> None:
        check = HeldCheck(db, slice_rows=10)
        # the check's count statement reads the archive's meta table: give it one
        conn = sqlite3.connect(db)
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value)")
        conn.execute("INSERT OR REPLACE INTO meta VALUES ('count', 100)")
        conn.commit()
        conn.close()
        task = asyncio.ensure_future(check.run({"rows": 0}))
        assert await asyncio.to_thread(started.wait, WAIT_S)
        task.cancel()
        await asyncio.sleep(0)
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, WAIT_S)

    asyncio.run(main())
    assert seen == [100]
