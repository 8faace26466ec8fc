"""The one health model and the event-loop stall detector."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from pimail.appliance.health import HealthModel, HealthState, LoopLagMonitor, Severity


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


def test_loop_stall_is_reported_failing_while_it_lasts_and_clears_after() -> None:
    asyncio.run(_stall())


class FakeClock:
    """Wall time the test moves: what the monitor sees does not depend on the machine's load."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _ticks_past(mon: LoopLagMonitor, count: int) -> None:
    target = mon.ticks + count

    async def wait() -> None:
        while mon.ticks < target:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), 30)


async def _stall() -> None:
    h = HealthModel()
    h.mark_started()
    states: list[HealthState] = []
    h.subscribe(lambda m: states.append(m.state))
    wall = FakeClock()
    mon = LoopLagMonitor(h, tick_s=0.02, stall_s=0.3, recover_ticks=3, clock=wall)
    mon.start()
    await _ticks_past(mon, 2)
    assert h.state is HealthState.HEALTHY and not mon.stalled
    # block the loop: only the watcher thread can notice; 1 s passes on the monitor's clock
    wall.now += 1.0
    deadline = time.monotonic() + 30
    while HealthState.FAILING not in states and time.monotonic() < deadline:
        time.sleep(0.01)
    assert HealthState.FAILING in states, "the watcher thread reports during the stall"
    assert "event loop stalled" in h.summary
    await _ticks_past(mon, 5)  # one late tick, then recover_ticks good ones
    assert h.state is HealthState.HEALTHY and not mon.stalled
    assert mon.max_lag_s == pytest.approx(1.0 - 0.02)
    await mon.stop()


def test_a_busy_but_live_loop_is_not_failing() -> None:
    asyncio.run(_busy())


async def _busy() -> None:
    h = HealthModel()
    h.mark_started()
    wall = FakeClock()
    mon = LoopLagMonitor(h, tick_s=0.02, stall_s=0.5, clock=wall)
    mon.start()
    for _ in range(10):
        wall.now += 0.05  # short blocking bursts, well under stall_s
        await _ticks_past(mon, 1)
    assert mon.max_lag_s > 0
    assert h.state is HealthState.HEALTHY
    await mon.stop()
