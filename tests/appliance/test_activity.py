"""The 24-hour activity log: slots by wall-clock time, deltas of running totals, gauges, the window,
and its small file (written atomically, once per slot, read back after a restart)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pimail.appliance.activity import FILE_NAME, SLOT_S, SLOTS, ActivityLog, slot_of

T0 = 1_796_200_200.0  # a slot boundary (2026-12-02 08:30 UTC)
assert T0 % SLOT_S == 0



def test_counts_go_to_the_slot_they_happened_in_and_gauges_keep_their_peak_or_last_value() -> None:
    log = ActivityLog()
    log.observe(T0 + 1, archived=0, served=0, peers={"shh/6": 1}, archive_bytes=1000)
    log.observe(T0 + 300, archived=4, served=0, peers={"shh/6": 3, "waku/1": 1}, archive_bytes=2000)
    log.observe(T0 + 599, archived=7, served=2, peers={"shh/6": 2}, archive_bytes=3000)
    log.observe(T0 + 2 * SLOT_S + 10, archived=12, served=2, peers={"shh/6": 1}, archive_bytes=3500)
    snap = log.snapshot(T0 + 2 * SLOT_S + 20)
    assert snap["slot_s"] == SLOT_S and len(snap["archived"]) == SLOTS
    assert snap["first_slot_at"] == (slot_of(T0) + 2 - SLOTS + 1) * SLOT_S
    *_, a, gap, c = snap["archived"]
    assert (a, gap, c) == (7, None, 5)  # slot 1 had no observation: the node was not running
    assert snap["served"][-3:] == [2, None, 0]
    assert snap["peers"]["shh/6"][-3:] == [3, None, 1] and snap["peers"]["waku/1"][-3:] == [1, None, 0]
    assert snap["disk_bytes"][-3:] == [3000, None, 3500]


def test_a_restarted_process_counts_from_zero_again() -> None:
    log = ActivityLog()
    log.observe(T0, archived=10, served=0, peers={}, archive_bytes=None)
    log.observe(T0 + 5, archived=3, served=0, peers={}, archive_bytes=None)  # a new process: total reset
    assert log.snapshot(T0 + 5)["archived"][-1] == 13


def test_the_window_is_24_hours_and_the_log_stays_bounded() -> None:
    log = ActivityLog()
    for i in range(3 * SLOTS):
        log.observe(T0 + i * SLOT_S, archived=i, served=0, peers={f"p{i % 20}": 1}, archive_bytes=i)
    now = T0 + (3 * SLOTS - 1) * SLOT_S
    snap = log.snapshot(now)
    assert snap["archived"][0] == 1 and snap["archived"][-1] == 1
    assert len(log._slots) == SLOTS  # only the window is kept
    assert len(snap["peers"]) <= 8


def test_the_file_is_written_once_per_slot_atomically_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    log = ActivityLog.load(path, T0)
    # half an hour of observations every 5 s: one write at each slot boundary, not 360
    t = T0
    for i in range(360):
        log.observe(t, archived=i, served=i // 10, peers={"waku/1": 2}, archive_bytes=10_000 + i)
        if log.save_due(t):
            log.save(t)
        t += 5
    assert log.saves == 2 and path.exists() and not (tmp_path / (FILE_NAME + ".tmp")).exists()
    log.save(t)  # a clean stop writes the partial slot
    assert path.stat().st_size < 64 * 1024
    again = ActivityLog.load(path, t)
    assert again.snapshot(t) == log.snapshot(t)
    assert not again.save_due(t), "a file just read is current"
    doc = json.loads(path.read_text())
    assert doc["format"] == 1 and len(doc["slots"]) == 3


def test_a_day_of_observations_leaves_a_small_file(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    log = ActivityLog.load(path, T0)
    for slot in range(2 * SLOTS):
        t = T0 + slot * SLOT_S
        log.observe(t, archived=slot * 1000, served=slot * 100, peers={"shh/6": 50, "waku/1": 50,
                    "waku/0": 3}, archive_bytes=8_000_000_000)
        if log.save_due(t):
            log.save(t)
    assert log.saves == 2 * SLOTS - 1
    assert len(json.loads(path.read_text())["slots"]) <= SLOTS
    assert path.stat().st_size < 32 * 1024


@pytest.mark.parametrize("content", [b"{not json", b'{"format": 99, "slot_s": 600, "slots": {}}', b"\xff\xfe",
                                     b'{"format": 1, "slot_s": 600, "slots": []}'])
def test_an_unreadable_file_starts_an_empty_day(tmp_path: Path, content: bytes,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / FILE_NAME
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="pimail.appliance.activity"):
        log = ActivityLog.load(path, T0)
    assert all(v is None for v in log.snapshot(T0)["archived"])
    assert "start afresh" in caplog.text


def test_bad_entries_in_a_file_are_skipped_and_old_slots_dropped(tmp_path: Path) -> None:
    path = tmp_path / FILE_NAME
    current = slot_of(T0)
    slots = {
        str(current): {"archived": 5, "served": 1, "disk": 100, "peers": {"shh/6": 2}},
        str(current - 1): {"archived": -1, "served": 0, "peers": {}},  # impossible: skipped
        str(current - 2): {"archived": True, "served": 0, "peers": {}},  # not a count: skipped
        str(current - SLOTS - 5): {"archived": 9, "served": 0, "peers": {}},  # older than a day
        "x": {"archived": 1, "served": 0, "peers": {}},
    }
    path.write_text(json.dumps({"format": 1, "slot_s": SLOT_S, "slots": slots}))
    snap = ActivityLog.load(path, T0).snapshot(T0)
    assert snap["archived"][-3:] == [None, None, 5] and sum(v or 0 for v in snap["archived"]) == 5
    assert snap["peers"] == {"shh/6": [None] * (SLOTS - 1) + [2]}


def test_an_unwritable_place_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    log = ActivityLog(tmp_path / "missing-dir" / FILE_NAME)
    log.observe(T0, archived=1, served=0, peers={}, archive_bytes=None)
    with caplog.at_level(logging.WARNING, logger="pimail.appliance.activity"):
        log.save(T0)
        assert not log.save_due(T0 + 5), "a failed save is tried again in the next slot, not at once"
        for slot in range(1, 4):
            assert log.save_due(T0 + slot * SLOT_S)
            log.save(T0 + slot * SLOT_S)
    assert log.saves == 0 and caplog.text.count("cannot save") == 1  # one warning, not one per slot
