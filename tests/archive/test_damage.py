"""A damaged archive file, for real: truncated, garbage pages at known offsets, a damaged WAL, a
0-byte file, an unreadable file. Each is made on a real SQLite file written by SqliteArchive, then
opened, checked and salvaged."""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pimail.archive.base import ArchivedEnvelope, HistoryQuery
from pimail.archive.sqlite import PAGE_SIZE, SqliteArchive
from pimail.archive.sqlite.guard import salvage_into, salvage_wal_into
from pimail.archive.sqlite.salvage import (
    ArchiveDamaged,
    ArchiveUnreadable,
    RowScanner,
    damaged_files,
    open_read_only,
    quarantine,
    validate_row,
)
from tests.archive.conftest import make_envelope, run, topic_n

N = 3000
NOW = int(time.time()) - 7200


def originals(n: int = N) -> list[ArchivedEnvelope]:
    return [make_envelope(i, NOW + i, topic_n(i % 7), size=200) for i in range(n)]


def fill(path: Path, envs: list[ArchivedEnvelope]) -> None:
    async def main() -> None:
        a = SqliteArchive(path, flush_interval_ms=2)
        await a.open()
        await a.submit(envs)
        await a.close()

    run(main())


def stored(path: Path) -> dict[bytes, bytes]:
    """hash -> raw of everything a (healthy) archive holds."""

    async def main() -> dict[bytes, bytes]:
        a = SqliteArchive(path)
        await a.open()
        try:
            return {e.hash: e.raw async for e in a.iterate(HistoryQuery(0, 2**32 - 1))}
        finally:
            await a.close()

    return run(main())


def leaf_pages(path: Path) -> list[tuple[int, int]]:
    """(page number, cells) of the envelope table's leaf pages, from SQLite's dbstat."""
    conn = sqlite3.connect(path)
    try:
        return [(int(p), int(c)) for p, c in conn.execute(
            "SELECT pageno, ncell FROM dbstat WHERE name = 'envelopes' AND pagetype = 'leaf' "
            "ORDER BY pageno")]
    finally:
        conn.close()


def open_fails(path: Path) -> BaseException:
    async def main() -> None:
        a = SqliteArchive(path)
        await a.open()
        await a.close()

    with pytest.raises((ArchiveDamaged, ArchiveUnreadable)) as info:
        run(main())
    return info.value


def salvage(source: Path, into: Path, **options: Any) -> tuple[Any, dict[bytes, bytes]]:
    async def main() -> object:
        a = SqliteArchive(into, flush_interval_ms=2)
        await a.open()
        try:
            return await salvage_into(a, source, **options)
        finally:
            await a.close()

    report = run(main())
    return report, stored(into)


@pytest.fixture
def archive(tmp_path: Path) -> tuple[Path, dict[bytes, bytes]]:
    path = tmp_path / "archive.sqlite"
    envs = originals()
    fill(path, envs)
    return path, {e.hash: e.raw for e in envs}


@pytest.mark.parametrize("newest_first", [True, False])
def test_a_truncated_file_is_reported_damaged_at_open_and_its_first_half_is_salvaged(
        tmp_path: Path, archive: tuple[Path, dict[bytes, bytes]], newest_first: bool) -> None:
    path, want = archive
    os.truncate(path, path.stat().st_size // 2)
    exc = open_fails(path)
    assert isinstance(exc, ArchiveDamaged) and "truncated" in exc.why
    report, got = salvage(path, tmp_path / "fresh.sqlite", newest_first=newest_first)
    assert report.state == "done"
    assert set(got) < set(want) and all(got[h] == want[h] for h in got)
    assert len(got) > N // 4, "the readable half holds many envelopes"
    assert report.salvaged == len(got) and report.unreadable_ranges >= 1


@pytest.mark.parametrize("newest_first", [True, False])
def test_garbage_pages_at_known_offsets_lose_only_their_rows(
        tmp_path: Path, archive: tuple[Path, dict[bytes, bytes]], newest_first: bool) -> None:
    path, want = archive
    leaves = leaf_pages(path)
    hit = [leaves[len(leaves) // 4], leaves[len(leaves) // 2], leaves[3 * len(leaves) // 4]]
    rnd = random.Random(18)
    with open(path, "r+b") as f:
        for pageno, _cells in hit:
            f.seek((pageno - 1) * PAGE_SIZE)
            f.write(rnd.randbytes(PAGE_SIZE))
    report, got = salvage(path, tmp_path / "fresh.sqlite", newest_first=newest_first)
    lost = sum(cells for _, cells in hit)
    assert all(got[h] == want[h] for h in got), "only original envelopes come back, byte for byte"
    assert N - lost <= len(got) < N
    assert report.unreadable_ranges == 3 and report.rejected == 0
    assert report.expected == N


def test_salvage_keeps_expired_envelopes_within_retention_and_leaves_older_ones_out(tmp_path: Path) -> None:
    """History outlives the TTL: an envelope that expired yesterday was valid when archived and
    goes back; one older than max_age would be pruned at once and stays out."""
    now = int(time.time())
    recent = [make_envelope(i, now - 86400 + i, topic_n(1)) for i in range(30)]  # expired, 1 day old
    old = [make_envelope(100 + i, now - 40 * 86400 + i, topic_n(2)) for i in range(20)]  # 40 days
    path = tmp_path / "archive.sqlite"
    fill(path, old + recent)
    report, got = salvage(path, tmp_path / "fresh.sqlite", max_age_s=30 * 86400)
    assert set(got) == {e.hash for e in recent}
    assert report.salvaged == 30 and report.beyond_retention >= 1 and report.rejected == 0


def test_salvage_stops_before_the_disk_falls_below_min_free(
        tmp_path: Path, archive: tuple[Path, dict[bytes, bytes]]) -> None:
    path, _ = archive
    report, got = salvage(path, tmp_path / "fresh.sqlite", disk_dir=tmp_path, min_free_bytes=2**62)
    assert report.state == "done" and not got and "stopped early" in report.error
    assert path.exists()


def test_a_row_whose_bytes_disagree_with_its_key_is_rejected(
        archive: tuple[Path, dict[bytes, bytes]]) -> None:
    path, _ = archive
    conn = open_read_only(path)
    try:
        rows = RowScanner(conn).next_slice(3)
    finally:
        conn.close()
    key, topic, ttl, arr, raw = rows[0]
    assert validate_row(rows[0]).raw == bytes(raw)
    flipped = bytes(raw[:-1]) + bytes([raw[-1] ^ 1])  # one bit in the payload: another hash
    for bad in [(key, topic, ttl, arr, flipped), (key + (1 << 32), topic, ttl, arr, raw),
                (key, topic ^ 1, ttl, arr, raw), (key, topic, ttl, arr, b"\xc0garbage")]:
        with pytest.raises(ValueError):
            validate_row(bad)


def test_a_zero_byte_file_is_damaged_not_silently_replaced(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite"
    fill(path, originals(10))
    os.truncate(path, 0)
    exc = open_fails(path)
    assert isinstance(exc, ArchiveDamaged) and "empty (0 bytes)" in exc.why
    assert path.stat().st_size == 0, "the open must not turn it into a new archive"


def test_a_directory_in_its_place_is_unreadable_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "archive.sqlite"
    path.mkdir()
    (path / "keep").write_text("x")
    exc = open_fails(path)
    assert isinstance(exc, ArchiveUnreadable) and "directory" in exc.why and "move" in exc.fix
    assert (path / "keep").is_file()


def test_a_mode_000_file_is_unreadable_with_the_fix(archive: tuple[Path, dict[bytes, bytes]]) -> None:
    """Root reads any file, so as root the check runs without the power to override permissions."""
    path, _ = archive
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a mode-000 file stays readable")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    code = ("import json, sys; from pathlib import Path\n"
            "from pimail.archive.sqlite.salvage import ArchiveUnreadable, preflight\n"
            "try:\n    preflight(Path(sys.argv[1]))\nexcept ArchiveUnreadable as e:\n"
            "    print(json.dumps([e.why, e.fix]))\n")
    os.chmod(path, 0)
    try:
        res = subprocess.run([*prefix, sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                             timeout=60, cwd=Path(__file__).resolve().parents[2])
    finally:
        os.chmod(path, 0o600)
    assert res.returncode == 0, res.stderr
    why, fix = json.loads(res.stdout)
    assert "permission denied" in why and "mode ----------" in why and "chmod 600" in fix


def damaged_wal_copy(tmp_path: Path, envs: list[ArchivedEnvelope]) -> Path:
    """What a power cut leaves after eight commits none of which was checkpointed, with garbage
    over one WAL frame in the middle."""
    live = tmp_path / "live"
    live.mkdir()
    src = live / "archive.sqlite"

    async def crash_copy() -> None:
        a = SqliteArchive(src, flush_interval_ms=2, wal_autocheckpoint_pages=100_000,
                          index_interval_s=0)  # straight into the WAL: this is about its frames
        await a.open()
        for i in range(0, len(envs), 50):
            await a.submit(envs[i:i + 50])
        for suffix in ("", "-wal"):
            shutil.copy(f"{src}{suffix}", tmp_path / f"archive.sqlite{suffix}")
        await a.close()

    run(crash_copy())
    wal = tmp_path / "archive.sqlite-wal"
    frames = (wal.stat().st_size - 32) // (24 + PAGE_SIZE)
    assert frames > 8
    with open(wal, "r+b") as f:
        f.seek(32 + (frames // 2) * (24 + PAGE_SIZE))
        f.write(random.Random(7).randbytes(24 + PAGE_SIZE))
    return tmp_path / "archive.sqlite"


def test_a_damaged_wal_is_kept_reported_and_its_dropped_frames_salvaged(tmp_path: Path) -> None:
    """SQLite replays a WAL only up to a garbage frame and drops the commits after it without a
    word; the open keeps a copy of the WAL first, says so, and the dropped frames' envelopes are
    salvaged from their page images."""
    envs = originals(400)
    want = {e.hash: e.raw for e in envs}
    path = damaged_wal_copy(tmp_path, envs)
    damaged = Path(f"{path}-wal").read_bytes()

    async def main() -> tuple[object, dict[bytes, bytes], dict[bytes, bytes]]:
        a = SqliteArchive(path, flush_interval_ms=2)
        await a.open()  # the main file is sound: it opens, with the commits before the damage
        try:
            found = a.wal_damage
            assert found is not None and "WAL is damaged" in found.why and "later commits" in found.why
            assert found.kept.name.startswith("archive.sqlite-wal.damaged-")
            assert found.kept.read_bytes() == damaged, "the WAL as it was, before the open reset it"
            before = {e.hash: e.raw async for e in a.iterate(HistoryQuery(0, 2**32 - 1))}
            report = await salvage_wal_into(a, found.kept, after=found.replayed)
            after = {e.hash: e.raw async for e in a.iterate(HistoryQuery(0, 2**32 - 1))}
            return report, before, after
        finally:
            await a.close()

    report, before, after = run(main())
    assert 0 < len(before) < 400, "the commits after the bad frame were not replayed"
    assert all(want[h] == raw for h, raw in after.items())
    assert len(after) > len(before) and report.salvaged == len(after) - len(before)
    assert len(after) >= 400 - 50, "at most the rows of the garbage frame's page stay lost"
    # opened again, the archive is sound and says nothing more about the WAL
    async def reopen() -> None:
        a = SqliteArchive(path)
        await a.open()
        try:
            assert a.wal_damage is None and await a.check() == []
        finally:
            await a.close()

    run(reopen())


def test_quarantine_renames_with_a_timestamp_and_never_deletes(
        archive: tuple[Path, dict[bytes, bytes]]) -> None:
    path, _ = archive
    Path(f"{path}-wal").write_bytes(b"")
    size = path.stat().st_size
    moved = quarantine(path, now=1_800_000_000)
    assert moved.name == "archive.sqlite.damaged-20270115T080000Z"
    assert moved.stat().st_size == size and Path(f"{moved}-wal").exists() and not path.exists()
    path.write_bytes(b"x")
    again = quarantine(path, now=1_800_000_000)
    assert again.name.endswith("-2") and moved.exists()
    assert damaged_files(path.parent, path.name) == [moved, again]
