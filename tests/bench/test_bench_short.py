"""CI versions of the benchmark entry point, the load run (against a second pimail as --target) and
each fault of the fault suite. Figures are never asserted; what must hold is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import faults
from bench.load import ServerProc, run_load

REPO = Path(__file__).resolve().parents[2]


def _bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.parametrize(("args", "message"), [
    (["--areas", "nope"], "unknown area nope"),
    (["--target", "enode://zz@127.0.0.1:1"], "--target"),
    (["--target-pid", "1"], "--target-pid needs --target"),
])
def test_bench_bad_arguments_exit_2_with_one_line(args: list[str], message: str) -> None:
    r = _bench(*args)
    assert r.returncode == 2
    assert message in r.stderr.strip().splitlines()[-1]


def test_bench_entry_point_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    r = _bench("--quick", "--areas", "whisper", "--json", str(out), timeout=120)
    assert r.returncode == 0, r.stderr[-1000:]
    doc = json.loads(out.read_text())
    assert doc["areas"] == ["whisper"] and doc["failed"] == []
    names = [row["name"] for row in doc["results"]]
    assert any("validations" in n for n in names)
    assert all(row["area"] == "whisper" and row["value"] > 0 for row in doc["results"])
    assert "whisper" in r.stdout and "validations" in r.stdout


def test_load_against_a_second_pimail_as_target(tmp_path: Path) -> None:
    other = ServerProc(tmp_path)
    other.start()
    try:
        # the second pimail is given by a PID that is its own: found as the listener of its port
        rows = run_load(True, other.enode, other.pid, n=1500, prefill_n=5000, history_runs=2, pages=2,
                        latency_s=1.0, procs=2, conns=2)
    finally:
        other.stop()
    by = {r.name: r for r in rows if r.area == "load"}
    ingest = by["ingest into the archive, end to end"]
    assert ingest.value > 0 and "1,500 acked, archive holds 1,500, 2 processes × 2 connections" in ingest.note
    assert "server busy" in by["server CPU-seconds per 1,000 envelopes posted"].note
    history_note = by["history delivery (whole window, 1000/page)"].note
    assert history_note.startswith("1,500 envelopes a run, median of 2")
    assert by["server RSS after the run"].value > 10
    assert by["bytes on disk per envelope"].value > 200  # an envelope is ~300 B raw
    assert by["exec to READY=1 with 5,000 archived"].value > 0
    assert "ack latency p99 at 50 env/s" in by and "ack latency p99 at 80 % of max" in by
    # the target is named after its Hello's client name: "pimail"
    theirs = {r.name: r for r in rows if r.area == "pimail"}
    # the other pimail acknowledged all 1,500 and its history returned them all
    assert "1,500 of 1,500 acked" in theirs["ingest into the archive, end to end"].note
    assert f"PID {other.pid} " in theirs["ingest into the archive, end to end"].note
    assert theirs["history delivery (whole window, 1000/page)"].note.startswith("1,500 envelopes a run")
    compare = {r.name: r for r in rows if r.area == "compare"}
    assert compare["ingest into the archive, end to end pimail/pimail"].value > 0
    assert "server RSS after the run pimail/pimail" in compare
    assert "100-envelope page p95 pimail/pimail" in compare


def test_fault_kill9_short() -> None:
    o = faults.fault_kill9(2)
    assert o.held, o.detail
    assert "0 corrupt archives, 0 of" in o.detail


def test_fault_halfopen_short() -> None:
    o = faults.fault_halfopen(100)
    assert o.held, o.detail


def test_fault_peers_short() -> None:
    o = faults.fault_peers(12, 3)
    assert o.held, o.detail


def test_fault_fuzz_short() -> None:
    o = faults.fault_fuzz(10_000, 100)
    assert o.held, o.detail


def test_fuzz_reports_an_unexpected_exception() -> None:
    def broken(data: bytes) -> object:
        if len(data) > 10:
            raise IndexError("decoder bug")
        raise ValueError("expected")

    done, bad, _ = faults.fuzz_inprocess(500, targets=[("broken", broken, (ValueError,), bytes(40))])
    assert done == 500
    assert "IndexError: decoder bug" in bad["broken"]


@pytest.mark.skipif(os.geteuid() != 0, reason="disk-full fault mounts a tmpfs (root only; CI runs as root)")
def test_fault_diskfull() -> None:
    o = faults.fault_diskfull()
    assert o.held is not False, o.detail
    if o.held is None:
        assert o.detail.startswith("not run: mount tmpfs failed")
