"""ObservedArchive: durable writes counted, failed ones reported, everything else passed through."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pimail.archive.base import ArchiveError, HistoryQuery
from pimail.archive.observed import ObservedArchive
from pimail.archive.sqlite import SqliteArchive
from tests.archive.conftest import make_envelope, run


def test_durable_writes_are_counted_failed_ones_reported_and_the_rest_passes_through(tmp_path: Path) -> None:
    durable: list[int] = []
    errors: list[str] = []
    inner = SqliteArchive(tmp_path / "archive.sqlite", flush_interval_ms=2, max_pending_envelopes=3)
    archive = ObservedArchive(inner, durable.append, errors.append)

    async def scenario() -> None:
        await archive.open()
        try:
            envs = [make_envelope(i) for i in range(3)]
            await archive.submit(envs)
            assert durable == [3] and errors == []
            with pytest.raises(ArchiveError):  # more than the writer's queue holds: refused
                await archive.submit([make_envelope(i) for i in range(10, 14)])
            await asyncio.sleep(0)  # the future failed at once: its callbacks run on the next turn
            assert durable == [3] and len(errors) == 1 and errors[0]
            assert await archive.contains(envs[0].sent, envs[0].hash)
            page = await archive.query(HistoryQuery(0, 2**32 - 1))
            assert {e.hash for e in page.envelopes} == {e.hash for e in envs}
            assert (await archive.stats()).count == 3
            assert await archive.vacuum() >= 0  # a backend extra, reached through the wrapper
        finally:
            await archive.close()

    run(scenario())
