"""LoopLagMonitor's recent ticks: lateness and loop-thread CPU per tick, bounded, numbered.

The monitor reads its wall and CPU clocks through injectable functions; here they are clocks the
test moves, so what is asserted does not depend on how busy the machine is."""

from __future__ import annotations

import asyncio
import time

import pytest

from pimail.appliance.looplag import LOOP_RECENT_TICKS, LoopLagMonitor
from pimail.health import HealthModel, HealthState


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def ticks_past(mon: LoopLagMonitor, count: int, timeout: float = 30.0) -> None:
    target = mon.ticks + count

    async def wait() -> None:
        while mon.ticks < target:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout)


def test_recent_ticks_tell_a_busy_loop_from_a_waiting_one() -> None:
    asyncio.run(_ticks())


async def _ticks() -> None:
    wall, cpu = FakeClock(), FakeClock()
    h = HealthModel()
    h.mark_started()
    mon = LoopLagMonitor(h, tick_s=0.01, stall_s=5.0, clock=wall, cpu_clock=cpu)
    mon.start()
    try:
        await ticks_past(mon, 2)
        assert len(mon.recent) == min(mon.ticks, LOOP_RECENT_TICKS)
        assert all(t == (0.0, 0.0) for t in mon.recent), "on time, no CPU: the clocks did not move"
        before = mon.ticks
        # while a tick sleeps: 0.5 s pass on the wall, 0.45 s of them on the loop thread's CPU (busy)
        wall.now += 0.5
        cpu.now += 0.45
        await ticks_past(mon, 2)
        busy = [t for t in mon.recent if t[0] > 0]
        assert len(busy) == 1
        assert busy[0] == pytest.approx((0.5 - 0.01, 0.45))
        # 0.3 s on the wall with no CPU: the thread waited for a core (or the GIL), not a busy loop
        wall.now += 0.3
        await ticks_past(mon, 2)
        waited = [t for t in list(mon.recent) if t[0] == pytest.approx(0.3 - 0.01)]
        assert len(waited) == 1 and waited[0][1] == 0.0
        assert mon.ticks > before
        await ticks_past(mon, LOOP_RECENT_TICKS + 10)
        assert len(mon.recent) == LOOP_RECENT_TICKS  # bounded
        assert mon.max_lag_s == pytest.approx(0.5 - 0.01)
        assert not mon.stalled
    finally:
        await mon.stop()


def test_loop_stall_is_reported_failing_while_it_lasts_and_clears_after() -> None:
    asyncio.run(_stall())


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
