"""One health model for the whole node.

Components *report conditions*; nobody decides "healthy" on their own. The model derives one
state that LEDs, the systemd watchdog and ``STATUS=``, ``pimail status``, metrics and the status
page all read.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass


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
    """Collects conditions and derives the node's state."""

    def __init__(self) -> None:
        self._conditions: dict[str, Condition] = {}
        self._started = False
        self._pairing_until: float | None = None
        self._listeners: list[Listener] = []

    # -- reporting -------------------------------------------------------------------------------
    def report(self, key: str, severity: Severity, message: str) -> None:
        """Raise (or update) a condition."""
        old = self._conditions.get(key)
        if old and old.severity == severity and old.message == message:
            return
        self._conditions[key] = Condition(key, severity, message, old.since if old else time.time())
        self._changed()

    def clear(self, key: str) -> None:
        """Clear a condition (no-op if not raised)."""
        if self._conditions.pop(key, None) is not None:
            self._changed()

    def mark_started(self) -> None:
        """Archive open and listener up: leave STARTING."""
        if not self._started:
            self._started = True
            self._changed()

    def set_pairing(self, until: float | None) -> None:
        self._pairing_until = until
        self._changed()

    # -- reading ---------------------------------------------------------------------------------
    @property
    def conditions(self) -> list[Condition]:
        return sorted(self._conditions.values(), key=lambda c: (-c.severity, c.key))

    @property
    def state(self) -> HealthState:
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

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in list(self._listeners):
            listener(self)
