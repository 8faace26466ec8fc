"""The event-loop stall detector: it measures the loop's lag and reports into the health model."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import threading
import time
from collections.abc import Callable

from pimail.health import HealthModel, Severity

LOOP_HEALTH_KEY = "loop.stalled"
LOOP_TICK_S = 0.25  # how often the loop proves it is alive
LOOP_STALL_S = 5.0  # no tick for this long = the loop is stalled (FAILING)
LOOP_RECOVER_TICKS = 8  # on-time ticks after a stall before the condition clears
LOOP_RECENT_TICKS = 64  # ticks kept for ``pimail status`` (16 s at the default tick)


class LoopLagMonitor:
    """Measures event-loop lag and reports FAILING when the loop stalls.

    A task on the loop ticks every ``tick_s`` and records how late it woke up. A small thread
    watches the ticks: when none has arrived for ``stall_s`` the loop is stalled, and the thread
    reports it (a stalled loop cannot report on itself). The systemd watchdog is fed from the loop,
    so a stall also stops ``WATCHDOG=1`` on its own.
    """

    def __init__(
        self,
        health: HealthModel,
        *,
        tick_s: float = LOOP_TICK_S,
        stall_s: float = LOOP_STALL_S,
        recover_ticks: int = LOOP_RECOVER_TICKS,
        clock: Callable[[], float] = time.monotonic,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        self._health = health
        self._clock = clock  # wall time of the loop (injectable so tests need not depend on load)
        self._cpu_clock = cpu_clock  # CPU time of the loop thread
        self._tick_s = tick_s
        self._stall_s = stall_s
        self._recover_ticks = recover_ticks
        self._last_tick = self._clock()
        self._good_ticks = 0
        self._stalled = False
        self.lag_s = 0.0  # lateness of the last tick
        self.max_lag_s = 0.0  # worst lateness since start
        self.ticks = 0  # ticks since start; the last entry of ``recent`` is tick number ``ticks``
        # (lateness s, loop-thread CPU s over the tick's interval) of the latest ticks: lateness
        # with little CPU means the process waited for a core (or the GIL), not a busy loop
        self.recent: collections.deque[tuple[float, float]] = collections.deque(maxlen=LOOP_RECENT_TICKS)
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        self._last_tick = self._clock()
        self._task = asyncio.get_running_loop().create_task(self._ticker(), name="loop-lag")
        self._thread = threading.Thread(target=self._watch, name="pimail-loop-watch", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._thread is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 2.0)

    @property
    def stalled(self) -> bool:
        return self._stalled

    async def _ticker(self) -> None:
        while True:
            expected = self._clock() + self._tick_s
            cpu0 = self._cpu_clock()
            await asyncio.sleep(self._tick_s)
            now = self._clock()
            self.lag_s = max(0.0, now - expected)
            self.max_lag_s = max(self.max_lag_s, self.lag_s)
            self.ticks += 1
            self.recent.append((self.lag_s, self._cpu_clock() - cpu0))
            self._last_tick = now
            if self.lag_s >= self._stall_s:
                self._mark_stalled(self.lag_s)
            elif self._stalled:
                self._good_ticks += 1
                if self._good_ticks >= self._recover_ticks:
                    self._stalled = False
                    self._health.clear(LOOP_HEALTH_KEY)

    def _watch(self) -> None:
        while not self._stop.wait(self._tick_s):
            silent = self._clock() - self._last_tick
            if silent >= self._stall_s and not self._stalled:
                self._mark_stalled(silent)

    def _mark_stalled(self, seconds: float) -> None:
        self._good_ticks = 0
        self._stalled = True
        self._health.report(
            LOOP_HEALTH_KEY, Severity.FAILING, f"event loop stalled ({seconds:.1f} s without a tick)"
        )
