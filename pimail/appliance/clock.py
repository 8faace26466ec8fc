"""Clock trust: a Raspberry Pi has no RTC and boots with a stale clock until NTP has synced.

Until the clock is trusted the node still relays, but does not archive or judge expiry by wall
time (the Whisper service asks ``ClockTrust.trusted``), and health shows a DEGRADED condition.

Modes (``[archive] clock_trust``):

* ``always`` — trust the clock from the start.
* ``synced`` — trust it only once it is synchronized: systemd-timesyncd's
  ``/run/systemd/timesync/synchronized`` exists, or the kernel (adjtimex) reports a synced clock.
* ``auto`` (default) — like ``synced`` where a time-sync mechanism exists (systemd-timesyncd on a
  systemd-booted machine, e.g. the Pi image); elsewhere (containers, CI, a laptop without it) trust
  the clock and log one warning.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pimail.health import HealthModel, Severity

log = logging.getLogger(__name__)

HEALTH_KEY = "clock.untrusted"
TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")  # touched by timesyncd on sync
TIMESYNC_RUNTIME_DIR = Path("/run/systemd/timesync")
SYSTEMD_BOOTED = Path("/run/systemd/system")  # sd_booted()
TIMESYNCD_BINARIES = (Path("/lib/systemd/systemd-timesyncd"), Path("/usr/lib/systemd/systemd-timesyncd"))
TIME_ERROR = 5  # adjtimex return value: clock not synchronized (linux/timex.h)
MODES = ("auto", "always", "synced")


def kernel_clock_synced() -> bool | None:
    """Ask the kernel whether the clock is synchronized (adjtimex, read-only).

    None when the call is unavailable (not Linux, or filtered by a seccomp policy).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)  # the C library we run on (find_library forks)
        buf = ctypes.create_string_buffer(512)  # struct timex (≈208 bytes); modes = 0 reads only
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


class ClockTrust:
    """Whether wall-clock time may be used for archiving and expiry. Call ``refresh()`` periodically."""

    def __init__(
        self,
        mode: str = "auto",
        *,
        health: HealthModel | None = None,
        flag_path: Path = TIMESYNC_FLAG,
        mechanism_paths: Sequence[Path] = (TIMESYNC_RUNTIME_DIR,),
        booted_path: Path = SYSTEMD_BOOTED,
        timesyncd_binaries: Sequence[Path] = TIMESYNCD_BINARIES,
        kernel_synced: Callable[[], bool | None] = kernel_clock_synced,
        warn: bool = True,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"clock_trust must be one of {', '.join(MODES)} (got {mode!r})")
        self.mode = mode
        self._health = health
        self._flag_path = flag_path
        self._mechanism_paths = tuple(mechanism_paths)
        self._booted_path = booted_path
        self._timesyncd_binaries = tuple(timesyncd_binaries)
        self._kernel_synced = kernel_synced
        self._trusted = False
        self._synced_since: float | None = None
        self.source = "none"  # what made the decision: always | timesyncd | kernel | no-sync-mechanism
        self._warned = not warn  # the "no time sync here" warning is logged once per process
        self.refresh()

    def bind_health(self, health: HealthModel) -> None:
        """Report to ``health`` from now on (a clock built before the daemon's health model)."""
        self._health = health
        self.refresh()

    @property
    def trusted(self) -> bool:
        """Cheap: the value from the last ``refresh()`` (the Whisper service calls this per envelope)."""
        return self._trusted

    def __call__(self) -> bool:
        return self._trusted

    def mechanism_present(self) -> bool:
        """Is there something that will synchronize the clock (so waiting for it makes sense)?"""
        if any(p.exists() for p in self._mechanism_paths):
            return True
        return self._booted_path.exists() and any(p.exists() for p in self._timesyncd_binaries)

    def synchronized(self) -> tuple[bool, str]:
        """(synced, source) from timesyncd's flag file, else the kernel."""
        if self._flag_path.exists():
            return True, "timesyncd"
        if self._kernel_synced() is True:
            return True, "kernel"
        return False, "none"

    def refresh(self) -> bool:
        was = self._trusted
        if self.mode == "always":
            trusted, source = True, "always"
        else:
            trusted, source = self.synchronized()
            if not trusted and self.mode == "auto" and not self.mechanism_present():
                trusted, source = True, "no-sync-mechanism"
                if not self._warned:
                    self._warned = True
                    log.warning(
                        "clock: no time synchronization found on this machine; trusting the system "
                        "clock as it is (set [archive] clock_trust = \"synced\" to wait for NTP)"
                    )
        self._trusted, self.source = trusted, source
        if trusted and not was:
            self._synced_since = time.time()
            if source in ("timesyncd", "kernel"):
                log.info("clock: synchronized (%s); archiving by wall-clock time", source)
        elif was and not trusted:
            log.warning("clock: lost synchronization; relaying only, not archiving")
        if self._health is not None:
            if trusted:
                self._health.clear(HEALTH_KEY)
            else:
                self._health.report(
                    HEALTH_KEY, Severity.DEGRADED, "clock not synchronized yet: relaying, not archiving"
                )
        return trusted

    def snapshot(self) -> dict[str, Any]:
        return {
            "trusted": self._trusted,
            "mode": self.mode,
            "source": self.source,
            "now": time.time(),
            "trusted_since": self._synced_since,
        }
