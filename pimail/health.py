"""One health model for the whole node.

Components *report conditions*; nobody decides "healthy" on their own. The model derives one
state that LEDs, the systemd watchdog and ``STATUS=``, ``pimail status``, metrics and the status
page all read. It stands on the ground floor because the node, the archive and the relay report
into it; the loop-stall detector that also reports here is the appliance's
(``pimail.appliance.looplag``).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


class HealthState(enum.Enum):
    STARTING = "starting"
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    FAILING = "failing"
    PAIRING = "pairing"


class Severity(enum.IntEnum):
    DEGRADED = 1
    FAILING = 2


@dataclass(frozen=True)
class Condition:
    """Something wrong, reported by a component under a stable key (e.g. ``"archive.disk_low"``)."""

    key: str
    severity: Severity
    message: str
    since: float


Listener = Callable[["HealthModel"], None]


class HealthModel:
    """Collects conditions and derives the node's state.

    Safe to report from any thread (the loop-stall detector reports from its own); listeners run in
    the reporting thread, so they must only do thread-safe work (set an LED, send a datagram).
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._conditions: dict[str, Condition] = {}
        self._started = False
        self._pairing_until: float | None = None
        self._listeners: list[Listener] = []

    # -- reporting -------------------------------------------------------------------------------
    def report(self, key: str, severity: Severity, message: str) -> None:
        """Raise (or update) a condition."""
        with self._lock:
            old = self._conditions.get(key)
            if old and old.severity == severity and old.message == message:
                return
            self._conditions[key] = Condition(key, severity, message, old.since if old else time.time())
            if old is None or old.severity != severity:
                log.log(
                    logging.ERROR if severity is Severity.FAILING else logging.WARNING,
                    "health: %s (%s)",
                    message,
                    severity.name.lower(),
                )
            self._changed()

    def clear(self, key: str) -> None:
        """Clear a condition (no-op if not raised)."""
        with self._lock:
            old = self._conditions.pop(key, None)
            if old is not None:
                log.info("health: cleared: %s", old.message)
                self._changed()

    def mark_started(self) -> None:
        """Archive open and listener up: leave STARTING."""
        with self._lock:
            if not self._started:
                self._started = True
                self._changed()

    def set_pairing(self, until: float | None) -> None:
        with self._lock:
            self._pairing_until = until
            self._changed()

    # -- reading ---------------------------------------------------------------------------------
    @property
    def conditions(self) -> list[Condition]:
        with self._lock:
            return sorted(self._conditions.values(), key=lambda c: (-c.severity, c.key))

    @property
    def state(self) -> HealthState:
        with self._lock:
            return self._state()

    def _state(self) -> HealthState:
        if any(c.severity is Severity.FAILING for c in self._conditions.values()):
            return HealthState.FAILING
        if not self._started:
            return HealthState.STARTING
        if self._pairing_until is not None and self._pairing_until > time.time():
            return HealthState.PAIRING
        if self._conditions:
            return HealthState.DEGRADED
        return HealthState.HEALTHY

    @property
    def summary(self) -> str:
        """One line: the state and the worst condition, e.g. ``degraded: disk low (120 MB free)``."""
        conds = self.conditions
        return f"{self.state.value}: {conds[0].message}" if conds else self.state.value

    def snapshot(self) -> dict[str, Any]:
        """JSON-ready: state, summary and every condition (for status, metrics, the status page)."""
        with self._lock:
            return {
                "state": self.state.value,
                "summary": self.summary,
                "conditions": [
                    {
                        "key": c.key,
                        "severity": c.severity.name.lower(),
                        "message": c.message,
                        "since": c.since,
                    }
                    for c in self.conditions
                ],
                "pairing_until": self._pairing_until,
            }

    def subscribe(self, listener: Listener) -> None:
        with self._lock:
            self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        with self._lock, contextlib.suppress(ValueError):
            self._listeners.remove(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            try:
                listener(self)
            except Exception:
                log.exception("health listener %r failed", listener)
