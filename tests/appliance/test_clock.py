"""Clock trust: auto / always / synced against fake timesyncd paths and a fake kernel answer."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pimail.appliance.clock import HEALTH_KEY, ClockTrust, kernel_clock_synced
from pimail.health import HealthModel, HealthState


def make(tmp_path: Path, mode: str, *, kernel: bool | None = False, mechanism: bool = False,
         health: HealthModel | None = None) -> ClockTrust:
    runtime = tmp_path / "run-timesync"
    if mechanism:
        runtime.mkdir(exist_ok=True)
    return ClockTrust(
        mode,
        health=health,
        flag_path=runtime / "synchronized",
        mechanism_paths=(runtime,),
        booted_path=tmp_path / "not-booted",
        timesyncd_binaries=(tmp_path / "no-timesyncd",),
        kernel_synced=lambda: kernel,
    )


def test_always_trusts(tmp_path: Path) -> None:
    c = make(tmp_path, "always", mechanism=True)
    assert c.trusted and c() and c.source == "always"


def test_synced_waits_for_the_timesyncd_flag(tmp_path: Path) -> None:
    h = HealthModel()
    h.mark_started()
    c = make(tmp_path, "synced", mechanism=True, health=h)
    assert not c.trusted
    assert h.state is HealthState.DEGRADED and "clock not synchronized" in h.summary
    (tmp_path / "run-timesync" / "synchronized").touch()
    assert c.refresh() and c.trusted and c.source == "timesyncd"
    assert h.state is HealthState.HEALTHY
    (tmp_path / "run-timesync" / "synchronized").unlink()
    assert not c.refresh()
    assert any(cond.key == HEALTH_KEY for cond in h.conditions)


def test_synced_accepts_the_kernel_sync_status(tmp_path: Path) -> None:
    assert make(tmp_path, "synced", kernel=True).source == "kernel"
    assert not make(tmp_path, "synced", kernel=None).trusted  # adjtimex unavailable: not synced


def test_synced_waits_even_without_a_mechanism(tmp_path: Path) -> None:
    assert not make(tmp_path, "synced", mechanism=False).trusted


def test_auto_waits_where_timesync_exists(tmp_path: Path) -> None:
    c = make(tmp_path, "auto", mechanism=True)
    assert not c.trusted and c.mechanism_present()
    (tmp_path / "run-timesync" / "synchronized").touch()
    assert c.refresh()


def test_auto_waits_on_a_systemd_machine_with_timesyncd_installed(tmp_path: Path) -> None:
    (tmp_path / "booted").mkdir()
    (tmp_path / "timesyncd").touch()
    c = ClockTrust("auto", flag_path=tmp_path / "flag", mechanism_paths=(), booted_path=tmp_path / "booted",
                   timesyncd_binaries=(tmp_path / "timesyncd",), kernel_synced=lambda: False)
    assert not c.trusted


def test_auto_trusts_with_one_warning_where_nothing_syncs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "pimail.appliance.clock")
    h = HealthModel()
    c = make(tmp_path, "auto", mechanism=False, health=h)
    c.refresh()
    c.refresh()
    assert c.trusted and c.source == "no-sync-mechanism"
    assert len([r for r in caplog.records if "no time synchronization" in r.message]) == 1
    assert h.conditions == []


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match="clock_trust"):
        ClockTrust("sometimes")


def test_kernel_probe_answers_or_says_unknown() -> None:
    assert kernel_clock_synced() in (True, False, None)
