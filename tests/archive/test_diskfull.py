"""A full disk: the archive on a small tmpfs is filled to ENOSPC; ingest carries on after eviction."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from pimail.archive.base import ArchiveError, HistoryQuery, RetentionPolicy
from pimail.archive.sqlite import HEALTH_DISK_FULL, RESERVE_BYTES, SqliteArchive
from pimail.health import HealthModel, HealthState
from tests.archive.conftest import make_envelope, run

FS_SIZE = "6m"
BASE = 1_700_000_000


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        reason = "the disk-full test mounts a tmpfs and needs root (CI runs as root)"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_SIZE}", "tmpfs", str(mnt)],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        reason = f"cannot mount a tmpfs here: {res.stderr.strip()}"
        print(f"SKIP: {reason}")
        pytest.skip(reason)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


# Envelope sizes change how much WAL a delete needs (B-tree rebalancing around the deleted rows):
# eviction must make room whatever the row size.
@pytest.mark.parametrize("size", [1000, 300, 3000])
def test_full_disk_evicts_and_keeps_ingesting(small_fs: Path, size: int) -> None:
    per_batch = 200 * 1000 // size
    health = HealthModel()
    health.mark_started()
    states: list[HealthState] = []
    health.subscribe(lambda h: states.append(h.state))

    async def main() -> None:
        a = SqliteArchive(small_fs / "archive.sqlite", flush_interval_ms=1, health=health,
                          retention=RetentionPolicy(), prune_interval_s=0)
        await a.open()
        failed = 0
        i = 0
        # about 3× the filesystem's size in envelopes, one batch at a time
        while i < 18_000_000 // size:
            batch = [make_envelope(i + k, BASE + (i + k) // 100, size=size) for k in range(per_batch)]
            i += per_batch
            try:
                await a.submit(batch)
            except ArchiveError:
                failed += 1
        s = await a.stats()
        assert HealthState.DEGRADED in states, "a full disk must show as degraded health"
        assert failed == 0, "eviction should have made room for every batch"
        assert s.oldest_sent is not None and s.oldest_sent > BASE, "the oldest envelopes went first"
        last = [make_envelope(i - per_batch + k, BASE + (i - per_batch + k) // 100, size=size)
                for k in range(per_batch)]
        for env in last[:: max(1, per_batch // 10)]:
            assert await a.contains(env.sent, env.hash)
        page = await a.query(HistoryQuery(0, 2**32 - 1, limit=10, descending=True))
        assert page.envelopes[0].sent == BASE + (i - 1) // 100
        assert await a.check() == []
        assert health.state is HealthState.HEALTHY and a.health_reason == "ok"
        assert all(c.key != HEALTH_DISK_FULL for c in health.conditions)
        # the reserve is back after every eviction: the next full disk finds it
        assert (small_fs / "archive.sqlite.reserve").stat().st_size == RESERVE_BYTES
        await a.close()

    run(main(), timeout=240)


def test_min_free_disk_keeps_the_disk_from_filling(small_fs: Path) -> None:
    async def main() -> None:
        a = SqliteArchive(small_fs / "archive.sqlite", flush_interval_ms=1, prune_interval_s=0,
                          retention=RetentionPolicy(min_free_disk_bytes=3_000_000))
        await a.open()
        for n in range(0, 6000, 200):
            await a.submit([make_envelope(n + k, BASE + (n + k) // 100, size=1000) for k in range(200)])
            await a.prune()
        st = os.statvfs(small_fs)
        assert st.f_bavail * st.f_frsize >= 3_000_000 - 1_000_000  # at most one batch below the floor
        assert (await a.stats()).count < 6000
        assert await a.check() == []
        await a.close()

    run(main(), timeout=240)


def test_prune_timer_runs_by_itself(tmp_path: Path) -> None:
    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=1, prune_interval_s=0.05,
                          retention=RetentionPolicy(max_count=10))
        await a.open()
        await a.submit([make_envelope(k, BASE + k) for k in range(50)])
        for _ in range(200):
            if (await a.stats()).count == 10:
                break
            await asyncio.sleep(0.02)
        assert (await a.stats()).count == 10
        await a.close()

    run(main())
