"""LoopLagMonitor's recent ticks: lateness and loop-thread CPU per tick, bounded, numbered."""

from __future__ import annotations

import asyncio
import time

from pimail.appliance.health import LOOP_RECENT_TICKS, HealthModel, LoopLagMonitor


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
