"""The data dir's write probe: faults seen every round, a real write only every few minutes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pimail.appliance.writeprobe import PROBE_FILE, WriteProbe


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fs(read_only: bool, real: os.statvfs_result) -> os.statvfs_result:
    flags = real.f_flag | os.ST_RDONLY if read_only else real.f_flag & ~os.ST_RDONLY
    fields = list(real)
    fields[8] = flags  # f_flag
    return os.statvfs_result(fields)


def test_a_quiet_data_dir_is_written_once_per_interval_not_every_round(tmp_path: Path) -> None:
    clock = Clock()
    probe = WriteProbe(tmp_path, interval_s=600.0, clock=clock)
    for _ in range(100):  # 100 rounds of 5 s
        assert probe.check() is None
        clock.now += 5.0
    assert probe.writes == 1  # 500 s: only the first round wrote
    clock.now += 100.0
    assert probe.check() is None
    assert probe.writes == 2
    assert not (tmp_path / PROBE_FILE).exists()  # nothing left behind


def test_a_read_only_remount_is_seen_at_the_next_round_and_clears_when_fixed(tmp_path: Path) -> None:
    clock = Clock()
    read_only = [False]
    probe = WriteProbe(tmp_path, clock=clock, statvfs=lambda p: _fs(read_only[0], os.statvfs(p)))
    assert probe.check() is None
    read_only[0] = True
    clock.now += 5.0
    error = probe.check()
    assert error is not None and "read-only" in error
    read_only[0] = False
    clock.now += 5.0
    writes = probe.writes
    assert probe.check() is None
    assert probe.writes == writes + 1  # after a fault the real write runs again at once


def test_a_vanished_or_replaced_data_dir_is_reported(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    probe = WriteProbe(data, clock=Clock())
    assert probe.check() is None
    data.rename(tmp_path / "data.old")  # moved aside, with the archive's files in it
    error = probe.check()
    assert error is not None and str(data) in error
    data.mkdir()  # a new directory at the same path (a mount over it is the same case)
    error = probe.check()
    assert error is not None and "replaced" in error
    shutil.rmtree(data)
    assert probe.check() is not None


def test_a_directory_that_refuses_new_files_fails_the_real_write(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / PROBE_FILE).mkdir()  # O_CREAT on a directory's name fails for root too (EISDIR)
    probe = WriteProbe(data, clock=Clock())
    error = probe.check()
    assert error is not None and str(data) in error
