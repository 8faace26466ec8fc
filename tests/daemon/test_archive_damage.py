"""The daemon on a damaged or unreadable archive: it starts, says so truthfully through the one
health model, keeps relaying, moves a damaged file aside and salvages it in the background."""

from __future__ import annotations

import asyncio
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory

from pimail.appliance.statushtml import render_page
from pimail.archive.base import ArchiveError, HistoryQuery
from pimail.archive.sqlite import PAGE_SIZE
from pimail.archive.sqlite.guard import HEALTH_DAMAGED, HEALTH_UNREADABLE
from pimail.cli.status import render
from pimail.configfile import load_config
from pimail.crypto.keys import Enode
from pimail.daemon import Daemon
from pimail.envelope.seal import seal
from pimail.health import HealthState
from pimail.whisper.client import client_session
from tests.archive.test_damage import damaged_wal_copy, fill, leaf_pages, originals
from tests.daemon.test_daemon_inprocess import write_config


async def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Event-driven enough for a test: polls a condition, bounded in time (not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return False


def node_dir(archive: str = "") -> tuple[Path, Path]:
    root = Path(tempfile.mkdtemp(prefix="pmd-"))
    data = root / "data"
    data.mkdir()
    write_config(root / "pimail.toml", data, archive=archive)
    return root / "pimail.toml", data


def conditions(daemon: Daemon) -> dict[str, str]:
    return {c["key"]: c["severity"] for c in daemon.status_snapshot()["health"]["conditions"]}


async def relays_and_archives(daemon: Daemon) -> None:
    assert daemon.server is not None and daemon.key is not None
    enode = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port)
    before = daemon.counters["archived"]
    async with client_session(enode) as session:
        env = seal(int(time.time()) + 120, 120, b"\x0b\xad\xf0\x0d", b"y" * 64, 0.01).envelope
        assert session.whisper.post(env)
        assert await wait_for(lambda: daemon.counters["archived"] > before)


def run_daemon(conf: Path, scenario: Callable[[Daemon], object]) -> None:
    async def main() -> None:
        daemon = Daemon(load_config(conf).config, config_path=conf, pin_factory=MockFactory(), env={})
        await daemon.start()
        try:
            await scenario(daemon)  # type: ignore[misc]
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(main(), 120))


def test_a_truncated_archive_is_moved_aside_salvaged_and_the_node_keeps_relaying() -> None:
    conf, data = node_dir()
    path = data / "archive.sqlite"
    fill(path, originals(2000))
    os.truncate(path, path.stat().st_size // 2)

    async def scenario(daemon: Daemon) -> None:
        assert daemon.health.state is HealthState.DEGRADED  # not healthy, not refusing to start
        assert conditions(daemon)[HEALTH_DAMAGED] == "degraded"
        kept = sorted(data.glob("archive.sqlite.damaged-*[0-9TZ]"))
        assert len(kept) == 1 and kept[0].stat().st_size > 0, "moved aside, never deleted"
        assert daemon.archive_guard is not None
        assert await wait_for(lambda: (daemon.status_snapshot()["archive"]["salvage"] or {}).get("state")
                              == "done")
        assert await wait_for(lambda: daemon.status_snapshot()["archive"]["check"]["state"] == "ok")
        snap = daemon.status_snapshot()["archive"]
        assert snap["state"] == "ok" and snap["damaged_files"] == [str(kept[0])]
        salvaged = snap["salvage"]["salvaged"]
        assert 0 < salvaged < 2000 and snap["salvage"]["expected"] == 2000
        await daemon._refresh_stats()
        assert daemon.status_snapshot()["archive"]["count"] == salvaged
        await relays_and_archives(daemon)
        msg = next(c["message"] for c in daemon.status_snapshot()["health"]["conditions"]
                   if c["key"] == HEALTH_DAMAGED)
        assert str(kept[0]) in msg and "remove it" in msg
        text = render(daemon.status_snapshot())  # what `pimail status` prints
        assert f"salvage    done: {snap['salvage']['read']} of ~2000 read, {salvaged} salvaged" in text
        assert f"kept       {kept[0]}" in text and "check      ok" in text
        # the operator removes the damaged file: the condition clears
        kept[0].unlink()
        for side in data.glob("archive.sqlite.damaged-*"):
            side.unlink()
        await daemon._refresh_stats()
        assert HEALTH_DAMAGED not in conditions(daemon)
        assert daemon.health.state is HealthState.HEALTHY

    run_daemon(conf, scenario)


def test_garbage_pages_that_pass_the_open_are_found_by_the_background_check() -> None:
    conf, data = node_dir()
    path = data / "archive.sqlite"
    fill(path, originals(2000))
    leaves = leaf_pages(path)
    pageno = leaves[len(leaves) // 2][0]
    with open(path, "r+b") as f:
        f.seek((pageno - 1) * PAGE_SIZE)
        f.write(random.Random(3).randbytes(PAGE_SIZE))

    async def scenario(daemon: Daemon) -> None:
        guard = daemon.archive_guard
        assert guard is not None
        assert await wait_for(lambda: guard.check_state.get("state") == "damaged")
        assert "unreadable" in guard.check_state["problems"][0]
        assert await wait_for(lambda: (guard.salvage is not None and guard.salvage.state == "done"))
        assert HEALTH_DAMAGED in conditions(daemon) and daemon.health.state is HealthState.DEGRADED
        assert len(list(data.glob("archive.sqlite.damaged-*[0-9TZ]"))) == 1
        assert 2000 - leaves[len(leaves) // 2][1] <= guard.salvage.salvaged < 2000
        await relays_and_archives(daemon)

    run_daemon(conf, scenario)


def test_a_zero_byte_archive_is_kept_and_reported() -> None:
    conf, data = node_dir()
    (data / "archive.sqlite").write_bytes(b"")

    async def scenario(daemon: Daemon) -> None:
        kept = list(data.glob("archive.sqlite.damaged-*[0-9TZ]"))
        assert len(kept) == 1 and kept[0].stat().st_size == 0
        assert "empty (0 bytes)" in (daemon.archive_guard.damage if daemon.archive_guard else "")
        assert conditions(daemon)[HEALTH_DAMAGED] == "degraded"
        await relays_and_archives(daemon)

    run_daemon(conf, scenario)


def test_an_unreadable_archive_is_left_alone_and_picked_up_once_fixed() -> None:
    conf, data = node_dir()
    blocker = data / "archive.sqlite"
    blocker.mkdir()

    async def scenario(daemon: Daemon) -> None:
        assert daemon.health.state is HealthState.DEGRADED
        assert conditions(daemon) == {HEALTH_UNREADABLE: "degraded"}
        snap = daemon.status_snapshot()["archive"]
        assert snap["state"] == "unreadable" and "directory" in snap["unreadable"]["why"]
        assert blocker.is_dir() and not list(data.glob("archive.sqlite.damaged-*"))
        assert "archive    unreadable: it is a directory" in render(daemon.status_snapshot())
        page = render_page(daemon.status_snapshot())
        assert "<h2>Archive</h2>" in page and "it is a directory" in page
        assert daemon.server is not None and daemon.server.listen_port  # still relaying
        blocker.rmdir()  # the operator's fix
        await daemon._refresh_stats()
        assert daemon.status_snapshot()["archive"]["state"] == "ok"
        assert daemon.health.state is HealthState.HEALTHY
        await relays_and_archives(daemon)

    run_daemon(conf, scenario)


def test_a_damaged_wal_keeps_the_archive_in_place_and_salvages_the_dropped_commits() -> None:
    conf, data = node_dir()
    damaged_wal_copy(data, originals(400))
    size = (data / "archive.sqlite").stat().st_size

    async def scenario(daemon: Daemon) -> None:
        guard = daemon.archive_guard
        assert guard is not None and guard.state == "ok"
        assert "WAL is damaged" in guard.damage and conditions(daemon)[HEALTH_DAMAGED] == "degraded"
        assert not list(data.glob("archive.sqlite.damaged-*")), "a sound main file stays in place"
        kept = list(data.glob("archive.sqlite-wal.damaged-*[0-9TZ]"))
        assert len(kept) == 1
        assert await wait_for(lambda: guard.salvage is not None and guard.salvage.state == "done")
        await daemon._refresh_stats()
        assert daemon.status_snapshot()["archive"]["count"] == 400
        assert (data / "archive.sqlite").stat().st_size >= size
        await relays_and_archives(daemon)

    run_daemon(conf, scenario)


def test_damage_found_by_a_read_while_running_replaces_the_file_at_once() -> None:
    conf, data = node_dir()
    path = data / "archive.sqlite"
    fill(path, originals(2000))
    leaves = leaf_pages(path)

    async def scenario(daemon: Daemon) -> None:
        guard = daemon.archive_guard
        assert guard is not None and daemon.archive is not None
        assert await wait_for(lambda: guard.check_state.get("state") == "ok")
        assert daemon.health.state is HealthState.HEALTHY
        pageno, cells = leaves[len(leaves) // 2]  # a page no reader has cached yet
        with open(path, "r+b") as f:
            f.seek((pageno - 1) * PAGE_SIZE)
            f.write(random.Random(9).randbytes(PAGE_SIZE))
        cursor = None
        with pytest.raises(ArchiveError, match="malformed"):  # what a phone's history request meets
            for _ in range(10):
                page = await daemon.archive.query(HistoryQuery(0, 2**32 - 1, cursor=cursor))
                cursor = page.next_cursor
                if cursor is None:
                    break
        assert await wait_for(lambda: guard.salvage is not None and guard.salvage.state == "done")
        assert "malformed" in guard.damage and HEALTH_DAMAGED in conditions(daemon)
        assert len(list(data.glob("archive.sqlite.damaged-*[0-9TZ]"))) == 1
        assert 2000 - cells <= guard.salvage.salvaged < 2000
        page = await daemon.archive.query(HistoryQuery(0, 2**32 - 1))  # the fresh archive serves
        assert len(page.envelopes) == 1000
        await relays_and_archives(daemon)

    run_daemon(conf, scenario)


def test_the_background_check_can_be_turned_off() -> None:
    conf, data = node_dir(archive="check_after_start = false\n")
    fill(data / "archive.sqlite", originals(100))

    async def scenario(daemon: Daemon) -> None:
        assert daemon.archive_guard is not None
        await asyncio.sleep(0)
        assert daemon.archive_guard.check_state == {"state": "not run"}
        assert not daemon.archive_guard._tasks
        assert daemon.health.state is HealthState.HEALTHY

    run_daemon(conf, scenario)
