"""The event-loop stall detector: stalls reported and cleared; its recent ticks (lateness and
loop-thread CPU per tick, bounded, numbered)."""

from __future__ import annotations

import asyncio
import time

from pimail.appliance.looplag import LOOP_RECENT_TICKS, LoopLagMonitor
from pimail.health import HealthModel, HealthState


def test_recent_ticks_tell_a_busy_loop_from_a_waiting_one() -> None:
    asyncio.run(_ticks())


async def _ticks() -> None:
    h = HealthModel()
    h.mark_started()
    mon = LoopLagMonitor(h, tick_s=0.02, stall_s=5.0)
    mon.start()
    try:
        await asyncio.sleep(0.1)
        assert mon.ticks >= 2 and len(mon.recent) == min(mon.ticks, LOOP_RECENT_TICKS)
        before = mon.ticks
        end = time.monotonic() + 0.2
        while time.monotonic() < end:  # the loop itself busy: CPU on the loop thread
            pass
        await asyncio.sleep(0.05)
        busy = max(mon.recent, key=lambda t: t[0])
        assert busy[0] >= 0.15 and busy[1] >= 0.15
        time.sleep(0.2)  # the loop thread off CPU (like waiting for a core or the GIL)
        await asyncio.sleep(0.05)
        late = [t for t in list(mon.recent)[-3:] if t[0] >= 0.15]
        assert late and late[0][1] < 0.1
        assert mon.ticks > before
        await asyncio.sleep(0.02 * (LOOP_RECENT_TICKS + 10))
        assert len(mon.recent) == LOOP_RECENT_TICKS  # bounded
        assert mon.max_lag_s >= 0.15
    finally:
        await mon.stop()


def test_loop_stall_is_reported_failing_while_it_lasts_and_clears_after() -> None:
    asyncio.run(_stall())


async def _stall() -> None:
    h = HealthModel()
    h.mark_started()
    states: list[HealthState] = []
    h.subscribe(lambda m: states.append(m.state))
    mon = LoopLagMonitor(h, tick_s=0.02, stall_s=0.3, recover_ticks=3)
    mon.start()
    await asyncio.sleep(0.1)
    assert h.state is HealthState.HEALTHY and not mon.stalled
    time.sleep(0.8)  # block the loop: only the watcher thread can notice
    assert HealthState.FAILING in states, "the watcher thread reports during the stall"
    assert "event loop stalled" in h.summary
    await asyncio.sleep(0.3)
    assert h.state is HealthState.HEALTHY and not mon.stalled
    assert mon.max_lag_s >= 0.5
    await mon.stop()


def test_a_busy_but_live_loop_is_not_failing() -> None:
    asyncio.run(_busy())


async def _busy() -> None:
    h = HealthModel()
    h.mark_started()
    mon = LoopLagMonitor(h, tick_s=0.02, stall_s=0.5)
    mon.start()
    for _ in range(10):
        time.sleep(0.05)  # short blocking bursts, well under stall_s
        await asyncio.sleep(0)
    await asyncio.sleep(0.05)
    assert h.state is HealthState.HEALTHY
    await mon.stop()
