"""The heartbeat file and the backfill window it implies."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pimail.mailserver.sync import BACKFILL_MARGIN_S, Heartbeat, missed_window
from tests.waiting import eventually


def test_heartbeat_round_trip(tmp_path: Path) -> None:
    hb = Heartbeat(tmp_path / "data")
    assert hb.last_up() is None
    hb.beat(1234)
    assert hb.last_up() == 1234
    assert (tmp_path / "data" / "mailserver.heartbeat").read_text() == "1234\n"


def test_heartbeat_garbage_file_means_unknown(tmp_path: Path) -> None:
    (tmp_path / "mailserver.heartbeat").write_text("not a number")
    assert Heartbeat(tmp_path).last_up() is None


def test_heartbeat_task_writes_and_stops(tmp_path: Path) -> None:
    async def main() -> None:
        hb = Heartbeat(tmp_path, interval_s=0.05)
        hb.start()
        await eventually(lambda: hb.last_up() is not None, what="a heartbeat written")
        await hb.stop()

    asyncio.run(main())


def test_missed_window() -> None:
    assert missed_window(None, 10_000, 3600) is None  # first start: nothing to backfill
    assert missed_window(9_000, 10_000, 3600) == (9_000 - BACKFILL_MARGIN_S, 10_000)
    assert missed_window(0, 100_000, 3600) == (100_000 - 3600, 100_000)  # capped by backfill_max_s
    assert missed_window(20_000, 10_000, 3600) is None  # clock went backwards
