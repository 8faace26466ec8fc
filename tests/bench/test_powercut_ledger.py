"""The power-cut fault's comparison (bench/powercut/ledger.py): acknowledged against archived.
No QEMU and no clock: ack times are given, the archive's contents are a set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.powercut.ledger import Ledger, ModeSummary, judge_cut
from bench.powercut.run import guest_config, topic_for

REPO = Path(__file__).resolve().parents[2]


def _h(i: int) -> bytes:
    return i.to_bytes(32, "big")


def _ledger() -> Ledger:
    """Cut 1: three batches of two acked at t = 1, 2, 3; cut 2: one batch at t = 11."""
    led = Ledger()
    for k, t in enumerate((1.0, 2.0, 3.0)):
        led.record(1, t, [_h(2 * k), _h(2 * k + 1)])
    led.record(2, 11.0, [_h(100), _h(101)])
    return led


def test_all_acked_present_holds() -> None:
    v = judge_cut(_ledger(), 1, {_h(i) for i in range(6)} | {_h(999)}, cut_at=4.0)
    assert (v.acked, v.missing, v.lost_batches, v.oldest_lost_ack_s) == (6, 0, 0, None)
    assert v.held and v.tail_only


def test_lost_newest_batches_are_a_tail_with_their_age_at_the_cut() -> None:
    # the batches acked at t = 2 and 3 are gone (one envelope of the first of them survived)
    v = judge_cut(_ledger(), 1, {_h(0), _h(1), _h(3)}, cut_at=4.5)
    assert (v.acked, v.missing, v.lost_batches) == (6, 3, 2)
    assert v.oldest_lost_ack_s == pytest.approx(2.5)
    assert v.tail_only and not v.held


def test_a_hole_before_a_surviving_batch_is_not_a_tail() -> None:
    v = judge_cut(_ledger(), 1, {_h(0), _h(1), _h(4), _h(5)}, cut_at=4.0)
    assert (v.missing, v.lost_batches) == (2, 1)
    assert not v.tail_only


def test_each_cut_is_judged_on_its_own_acks_only() -> None:
    led = _ledger()
    v2 = judge_cut(led, 2, {_h(100)}, cut_at=12.0)
    assert (v2.acked, v2.missing) == (2, 1)
    assert led.count() == 8 and led.count(1) == 6
    assert led.acked(2) == {_h(100), _h(101)}


def test_a_batch_acked_twice_counts_its_envelopes_once() -> None:
    led = Ledger()
    led.record(1, 1.0, [_h(1), _h(2)])
    led.record(1, 2.0, [_h(2), _h(3)])  # a retransmitted envelope in a later batch
    v = judge_cut(led, 1, {_h(1), _h(2)}, cut_at=3.0)
    assert (v.acked, v.missing, v.lost_batches) == (3, 1, 1)


def _summary(missing: int = 0, corrupt: int = 0, ready: int = 31, boots: int = 31, cuts: int = 30,
             final: int | None = 0, empty_cut: bool = False) -> ModeSummary:
    led = Ledger()
    verdicts = []
    for c in range(1, cuts + 1):
        if not (empty_cut and c == 1):
            led.record(c, float(c), [_h(10 * c), _h(10 * c + 1)])
        present = led.acked(c)
        if c == cuts and missing:
            present = set()
        verdicts.append(judge_cut(led, c, present, float(c) + 0.5))
    return ModeSummary("default", tuple(verdicts), boots, ready, corrupt, final)


def test_mode_summary_holds_only_when_everything_held() -> None:
    assert _summary().held(30)
    assert not _summary(missing=2).held(30)
    assert not _summary(corrupt=1).held(30)
    assert not _summary(ready=30).held(30)
    assert not _summary(cuts=29, boots=30, ready=30).held(30)
    assert not _summary(final=1).held(30)
    assert not _summary(empty_cut=True).held(30)  # a cut that acked nothing proves nothing


def test_mode_summary_line_states_the_loss() -> None:
    s = _summary(missing=2)
    assert (s.acked, s.missing, s.cuts_with_loss) == (60, 2, 1)
    line = s.line()
    assert "60 acknowledged, 2 missing (3.3 %) in 1 of 30 cuts" in line
    assert "acked up to 0.5 s before the cut" in line
    assert "READY 31/31" in line


def test_guest_config_keeps_the_default_durability_unless_asked() -> None:
    import tomllib

    default = tomllib.loads(guest_config(None))
    normal = tomllib.loads(guest_config("normal"))
    assert "synchronous" not in default["archive"]
    assert normal["archive"]["synchronous"] == "normal"
    assert default["node"]["listen"].endswith(":30303")
    assert topic_for(0, 1) != topic_for(1, 1) and len(topic_for(0, 70000 % 65536)) == 4


def test_guest_config_is_valid_for_pimail(tmp_path: Path) -> None:
    from pimail import configfile

    for sync in (None, "normal"):
        path = tmp_path / f"{sync}.toml"
        path.write_text(guest_config(sync))
        loaded = configfile.load_config(path)
        assert loaded.config.whisper.min_pow == 0.0


def test_faults_refuses_a_cut_count_below_one() -> None:
    out = subprocess.run([sys.executable, "-m", "bench.faults", "--only", "powercut", "--cuts", "0"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "--cuts must be at least 1" in out.stderr


def test_shellcheck_is_clean_on_the_vm_scripts() -> None:
    import shutil

    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing (scripts/ensure-deps test installs it)"
    here = REPO / "bench" / "powercut"
    proc = subprocess.run([shellcheck, "-x", "build-vm.sh", "pimail-powercut-report"], cwd=here,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
