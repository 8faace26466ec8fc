"""``pimail archive check|export|recover`` on damaged archives, as real processes."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from pimail.archive.sqlite import PAGE_SIZE
from tests.archive.test_cli import pimail
from tests.archive.test_damage import damaged_wal_copy, fill, leaf_pages, originals, stored


def garbage_pages(path: Path) -> int:
    """Random bytes over one leaf page of the envelope table; the rows it held."""
    leaves = leaf_pages(path)
    pageno, cells = leaves[len(leaves) // 2]
    with open(path, "r+b") as f:
        f.seek((pageno - 1) * PAGE_SIZE)
        f.write(random.Random(5).randbytes(PAGE_SIZE))
    return cells


def test_check_tells_a_damaged_archive_and_how_to_recover(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    fill(node / "archive.sqlite", originals(1500))
    garbage_pages(node / "archive.sqlite")
    res = pimail("check", "--data-dir", str(node))
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert "problem:" in res.stdout and "pimail archive recover" in res.stdout
    res = pimail("export", "--data-dir", str(node), str(tmp_path / "a.gz"))  # opens, then meets the page
    assert res.returncode == 1 and "the file is damaged" in res.stderr
    assert "pimail archive recover" in res.stderr
    assert not (tmp_path / "a.gz").exists() and not (tmp_path / "a.gz.partial").exists()
    os.truncate(node / "archive.sqlite", (node / "archive.sqlite").stat().st_size // 2)
    res = pimail("check", "--data-dir", str(node), "--json")
    data = json.loads(res.stdout)
    assert res.returncode == 1 and data["ok"] is False and "truncated" in data["problems"][0]
    res = pimail("export", "--data-dir", str(node), str(tmp_path / "b.gz"))
    assert res.returncode == 1 and "is damaged" in res.stderr and "pimail archive recover" in res.stderr
    assert not (tmp_path / "b.gz").exists()


def test_recover_the_nodes_own_damaged_archive_moves_it_aside_and_salvages(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    path = node / "archive.sqlite"
    envs = originals(1500)
    fill(path, envs)
    lost = garbage_pages(path)
    size = path.stat().st_size
    res = pimail("recover", "--data-dir", str(node), "--json", str(path))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    moved = Path(data["moved_to"])
    assert moved.name.startswith("archive.sqlite.damaged-") and moved.stat().st_size == size
    assert data["state"] == "done" and data["unreadable_ranges"] == 1 and data["rejected"] == 0
    assert 1500 - lost <= data["salvaged"] < 1500 and data["read"] == data["salvaged"]
    got = stored(path)
    want = {e.hash: e.raw for e in envs}
    assert len(got) == data["salvaged"] and all(want[h] == raw for h, raw in got.items())
    # by hand again from the kept file: everything readable is already there
    again = pimail("recover", "--data-dir", str(node), str(moved))
    assert again.returncode == 0 and "0 salvaged" in again.stdout and "already present" in again.stdout


def test_recover_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    res = pimail("recover", "--data-dir", str(tmp_path), str(tmp_path / "nope.sqlite"))
    assert res.returncode == 2 and "no such file" in res.stderr


def test_a_damaged_wal_is_reported_by_any_archive_command_and_recovered_by_hand(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    envs = originals(400)
    damaged_wal_copy(node, envs)
    res = pimail("stats", "--data-dir", str(node), "--json")
    assert res.returncode == 0 and "WAL is damaged" in res.stderr and "pimail archive recover" in res.stderr
    kept = next(node.glob("archive.sqlite-wal.damaged-*"))
    before = json.loads(res.stdout)["count"]
    assert before < 400
    res = pimail("recover", "--data-dir", str(node), "--json", str(kept))
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["salvaged"] == 400 - before and data["rejected"] == 0
    assert len(stored(node / "archive.sqlite")) == 400
