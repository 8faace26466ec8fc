"""SqliteArchive.release_memory: the page caches of the writer and both readers are emptied, and the
archive works on as before (the caches fill again)."""

from __future__ import annotations

import _sqlite3
import asyncio
import ctypes
from pathlib import Path

from pimail.archive.base import HistoryQuery
from pimail.archive.sqlite import SqliteArchive
from tests.archive.conftest import make_envelope, run


def sqlite_memory_used() -> int:
    """Bytes SQLite has allocated in this process (sqlite3_memory_used, from the library the
    sqlite3 module runs on)."""
    fn = ctypes.CDLL(_sqlite3.__file__).sqlite3_memory_used
    fn.restype = ctypes.c_int64
    return int(fn())


def test_release_memory_empties_the_page_caches_and_the_archive_works_on(tmp_path: Path) -> None:
    envs = [make_envelope(i, sent=1_700_000_000 + i, size=600) for i in range(3000)]

    async def main() -> tuple[int, int, int, int, int]:
        archive = SqliteArchive(tmp_path / "archive.sqlite", flush_interval_ms=2)
        await archive.open()
        try:
            for i in range(0, len(envs), 500):
                await archive.submit(envs[i : i + 500])
            q = HistoryQuery(lower=0, upper=2**32 - 1)

            async def read_all() -> int:
                # two readers at once, so both reader threads have a connection with a full cache
                pages = await asyncio.gather(archive.query(q), archive.query(q))
                return sum(len(p.envelopes) for p in pages)

            first = await read_all()
            full = sqlite_memory_used()
            await archive.release_memory()
            released = sqlite_memory_used()
            again = await read_all()  # reads still answer, from the file (and the caches refill)
            await archive.submit([make_envelope(10_000, sent=1_700_100_000)])
            stats = await archive.stats()
            return first, full, released, again, stats.count
        finally:
            await archive.close()

    first, full, released, again, count = run(main())
    assert first == again == 2 * min(3000, HistoryQuery(0, 0).limit) and count == 3001
    assert full - released > 1_000_000, (full, released)  # 3000 × 600 B of pages were cached
