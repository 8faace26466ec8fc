"""The one health model."""

from __future__ import annotations

import threading
import time

from pimail.health import HealthModel, HealthState, Severity


def test_states_follow_conditions() -> None:
    h = HealthModel()
    seen: list[HealthState] = []
    h.subscribe(lambda m: seen.append(m.state))
    assert h.state is HealthState.STARTING
    h.mark_started()
    assert h.state is HealthState.HEALTHY and h.summary == "healthy"
    h.report("disk.low", Severity.DEGRADED, "disk low (100 MB free)")
    assert h.state is HealthState.DEGRADED and h.summary == "degraded: disk low (100 MB free)"
    h.report("archive.unwritable", Severity.FAILING, "archive unwritable")
    assert h.state is HealthState.FAILING
    assert [c.key for c in h.conditions] == ["archive.unwritable", "disk.low"]  # worst first
    h.set_pairing(time.time() + 60)
    assert h.state is HealthState.FAILING  # failing beats pairing
    h.clear("archive.unwritable")
    assert h.state is HealthState.PAIRING
    h.set_pairing(None)
    h.clear("disk.low")
    h.clear("never.raised")
    assert h.state is HealthState.HEALTHY
    assert seen[-1] is HealthState.HEALTHY and HealthState.FAILING in seen


def test_same_report_twice_notifies_once_and_snapshot_is_plain_data() -> None:
    h = HealthModel()
    calls = []
    h.subscribe(lambda m: calls.append(1))
    h.report("clock.untrusted", Severity.DEGRADED, "clock not synchronized")
    h.report("clock.untrusted", Severity.DEGRADED, "clock not synchronized")
    assert len(calls) == 1
    snap = h.snapshot()
    assert snap["state"] == "starting"
    assert snap["conditions"][0]["key"] == "clock.untrusted"
    assert snap["conditions"][0]["severity"] == "degraded"


def test_a_broken_listener_does_not_break_reporting() -> None:
    h = HealthModel()

    def boom(_: HealthModel) -> None:
        raise RuntimeError("listener bug")

    h.subscribe(boom)
    h.report("x", Severity.DEGRADED, "x")
    h.unsubscribe(boom)
    h.unsubscribe(boom)  # twice is fine
    assert h.state is HealthState.STARTING


def test_reports_from_threads_are_safe() -> None:
    h = HealthModel()
    h.mark_started()

    def worker(n: int) -> None:
        for i in range(200):
            h.report(f"k{n}.{i % 5}", Severity.DEGRADED, f"m{i}")
            h.clear(f"k{n}.{(i + 2) % 5}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(c.key.startswith("k") for c in h.conditions)
