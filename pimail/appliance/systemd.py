"""systemd integration: ``Type=notify`` readiness, watchdog, ``STATUS=`` and ``STOPPING=1``.

Uses systemd-python's ``systemd.daemon.notify`` when installed, otherwise speaks the notify
protocol itself (one datagram per message to ``$NOTIFY_SOCKET``, ``@`` = abstract namespace).
Without ``NOTIFY_SOCKET`` (not started by systemd) every call does nothing.

The watchdog is fed by a task on the event loop, and only while health is not FAILING: a stalled
loop or an unwritable archive stops the pings, and systemd restarts the service
(``WatchdogSec=`` + ``Restart=on-failure``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
from collections.abc import Callable

from pimail.health import HealthModel, HealthState

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 10.0  # STATUS= refresh even without a health change (peer/archive counts move)
MAX_STATUS_CHARS = 200


def _send_raw(address: str, message: str) -> bool:
    target = "\0" + address[1:] if address.startswith("@") else address
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        # never block the event loop on a receiver that does not read: drop the message instead
        sock.setblocking(False)
        try:
            sock.connect(target)
            sock.send(message.encode())
        except OSError as exc:
            log.debug("sd_notify to %s failed: %s", address, exc)
            return False
    return True


def _systemd_python_notify() -> Callable[[str], bool] | None:
    try:
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None

    def notify(message: str) -> bool:
        return bool(daemon.notify(message))

    return notify


def watchdog_interval_s(env: dict[str, str] | None = None) -> float | None:
    """The watchdog timeout from ``WATCHDOG_USEC`` (None when not enabled for this process)."""
    env = dict(os.environ) if env is None else env
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 1_000_000


class SystemdNotifier:
    """Talks to the service manager. Every method is a no-op without ``NOTIFY_SOCKET``."""

    def __init__(
        self,
        *,
        env: dict[str, str] | None = None,
        use_systemd_python: bool = True,
    ) -> None:
        env = dict(os.environ) if env is None else env
        self.socket_path = env.get("NOTIFY_SOCKET") or None
        self.watchdog_s = watchdog_interval_s(env) if self.socket_path else None
        self._send: Callable[[str], bool] | None = None
        if self.socket_path:
            lib = _systemd_python_notify() if use_systemd_python and "NOTIFY_SOCKET" in os.environ else None
            # systemd-python reads NOTIFY_SOCKET from the process environment; fall back to the
            # socket protocol when the caller handed us a different environment.
            if lib is not None and os.environ.get("NOTIFY_SOCKET") == self.socket_path:
                self._send = lib
                self.backend = "systemd-python"
            else:
                path = self.socket_path
                self._send = lambda message: _send_raw(path, message)
                self.backend = "socket"
        else:
            self.backend = "none"
        self._status_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None
        self.watchdog_pings = 0
        self.last_status = ""

    @property
    def enabled(self) -> bool:
        return self._send is not None

    def notify(self, message: str) -> bool:
        if self._send is None:
            return False
        try:
            return self._send(message)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc)
            return False

    def ready(self, status: str = "") -> None:
        self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))
        if self.enabled:
            log.info("told systemd we are ready")

    def stopping(self, status: str = "stopping") -> None:
        self.notify(f"STOPPING=1\nSTATUS={status}")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def status(self, line: str) -> None:
        line = " ".join(line.split())[:MAX_STATUS_CHARS]
        if line != self.last_status:
            self.last_status = line
            self.notify(f"STATUS={line}")

    # -- periodic tasks -------------------------------------------------------------------------------
    def start(self, health: HealthModel, status_line: Callable[[], str]) -> None:
        """Start the watchdog feeder (when enabled) and the STATUS= updater."""
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        if self.watchdog_s:
            self._watchdog_task = loop.create_task(self._feed_watchdog(health), name="sd-watchdog")
            log.info("systemd watchdog: %.1f s; feeding it while health is not failing", self.watchdog_s)
        self._status_task = loop.create_task(self._status_loop(status_line), name="sd-status")

    async def stop(self) -> None:
        for task in (self._watchdog_task, self._status_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watchdog_task = self._status_task = None

    async def _feed_watchdog(self, health: HealthModel) -> None:
        assert self.watchdog_s is not None
        interval = max(0.05, self.watchdog_s / 3)  # sd_watchdog_enabled(3): ping at half or faster
        withheld = False
        while True:
            if health.state is HealthState.FAILING:
                if not withheld:
                    withheld = True
                    log.error("health is failing (%s): not feeding the systemd watchdog", health.summary)
            else:
                if withheld:
                    withheld = False
                    log.info("health recovered: feeding the systemd watchdog again")
                if self.notify("WATCHDOG=1"):
                    self.watchdog_pings += 1
            await asyncio.sleep(interval)

    async def _status_loop(self, status_line: Callable[[], str]) -> None:
        while True:
            try:
                self.status(status_line())
            except Exception:  # a broken status line must never end the watchdog or the node
                log.exception("building the STATUS= line failed")
            await asyncio.sleep(STATUS_INTERVAL_S)
