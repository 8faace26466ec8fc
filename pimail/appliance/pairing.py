"""Pairing: who may ask this mailserver for history.

The effective allowlist is ``[mailserver] allowed_clients`` (config) ∪ the clients paired so far
(``<data_dir>/paired_clients.json``). With both empty the mailserver is open, as a stock status-go
mailserver is. While a pairing window is open, the first client not yet on the list that asks for
history is added, persisted and logged with a short fingerprint of its key, and the window closes.

``PairingController`` implements the mailserver's ``AccessPolicy`` (``admit(pubkey) -> bool``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pimail.errors import UserError
from pimail.health import HealthModel, Severity
from pimail.mailserver.access import parse_client_key

log = logging.getLogger(__name__)

PAIRED_FILE = "paired_clients.json"
FILE_VERSION = 1
MAX_PAIRED_CLIENTS = 256  # a home node pairs a handful of phones; bounds the file and the set
MAX_PAIRED_FILE_BYTES = 256 * 1024
MIN_WINDOW_MINUTES = 1
MAX_WINDOW_MINUTES = 24 * 60
HEALTH_KEY = "pairing.store"


def fingerprint(pubkey: bytes) -> str:
    """Short, human-comparable form of a client key: first 8 and last 4 hex digits."""
    h = pubkey.hex()
    return f"{h[:8]}…{h[-4:]}"


@dataclass(frozen=True)
class PairedClient:
    pubkey: bytes
    paired_at: float

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.pubkey)


@dataclass(frozen=True)
class PairingResult:
    """The outcome of the last pairing window, for the log, ``pimail pair`` and the status page."""

    outcome: str  # "paired" | "expired" | "cancelled"
    at: float
    fingerprint: str | None = None


class PairingStore:
    """``paired_clients.json``: a versioned JSON list, replaced atomically (tmp + fsync + rename)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / PAIRED_FILE
        self._lock = threading.Lock()
        self._written_seq = -1

    def load(self) -> list[PairedClient]:
        """Read the list; raise ValueError with a one-line reason if the file is unusable."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise ValueError(f"cannot read {self.path}: {exc.strerror or exc}") from None
        if len(raw) > MAX_PAIRED_FILE_BYTES:
            raise ValueError(f"{self.path} is larger than {MAX_PAIRED_FILE_BYTES} bytes")
        try:
            doc = json.loads(raw)
            if not isinstance(doc, dict) or doc.get("version") != FILE_VERSION:
                raise ValueError(f"expected an object with version {FILE_VERSION}")
            entries = doc["clients"]
            if not isinstance(entries, list):
                raise ValueError("'clients' is not a list")
            clients = []
            for entry in entries[:MAX_PAIRED_CLIENTS]:
                clients.append(PairedClient(parse_client_key(entry["pubkey"]), float(entry["paired_at"])))
        except (ValueError, KeyError, TypeError, AttributeError, UserError) as exc:
            raise ValueError(f"{self.path} is not a valid paired-clients file: {exc}") from None
        return clients

    def write(self, clients: list[PairedClient], seq: int) -> None:
        """Replace the file with ``clients`` unless a newer snapshot (higher ``seq``) is already written."""
        doc = {
            "version": FILE_VERSION,
            "clients": [
                {"pubkey": c.pubkey.hex(), "fingerprint": c.fingerprint, "paired_at": c.paired_at}
                for c in clients
            ],
        }
        data = (json.dumps(doc, indent=2, ensure_ascii=False) + "\n").encode()
        with self._lock:
            if seq <= self._written_seq:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            self._written_seq = seq

    def quarantine(self) -> Path | None:
        """Move an unusable file aside (kept for the operator) so the next write can succeed."""
        target = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, target)
        except OSError:
            return None
        return target


class PairingController:
    """Effective allowlist, pairing window, persistence. Implements ``AccessPolicy``.

    Call from the event loop thread. File writes run in the default executor when a loop is
    running (``await flush()`` waits for them), synchronously otherwise.
    """

    def __init__(
        self,
        data_dir: Path,
        allowed_clients: list[str] | tuple[str, ...] = (),
        health: HealthModel | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._store = PairingStore(data_dir)
        self._health = health
        self._clock = clock
        self._configured: set[bytes] = set()
        for entry in allowed_clients:
            self._configured.add(parse_client_key(entry))  # UserError with a one-line reason
        self._paired: dict[bytes, PairedClient] = {}
        # A paired-clients file we could not read means "some clients were paired": stay closed
        # rather than fall back to an open mailserver.
        self._locked = False
        try:
            for client in self._store.load():
                self._paired[client.pubkey] = client
        except ValueError as exc:
            self._locked = True
            moved = self._store.quarantine()
            log.error(
                "pairing: %s; moved it to %s. Only [mailserver] allowed_clients may request history "
                "until a phone is paired again (pimail pair)",
                exc,
                moved or "(could not move it)",
            )
            if health is not None:
                health.report(HEALTH_KEY, Severity.DEGRADED, "paired-clients file unreadable")
        self._window_until: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._seq = 0
        self._pending: set[asyncio.Future[None]] = set()
        self.last_result: PairingResult | None = None
        self.refused = 0  # history requests refused by the allowlist since start

    # -- AccessPolicy ----------------------------------------------------------------------------
    def admit(self, pubkey: bytes) -> bool:
        """May this client (its 64-byte node key) have history? Pairs it if a window is open."""
        pubkey = bytes(pubkey)
        if pubkey in self._configured or pubkey in self._paired:
            return True
        if self.window_open:
            if len(self._paired) >= MAX_PAIRED_CLIENTS:
                log.warning(
                    "pairing: %d clients already paired (the maximum); refusing %s",
                    MAX_PAIRED_CLIENTS,
                    fingerprint(pubkey),
                )
                self.refused += 1
                return False
            self._pair(pubkey)
            return True
        if self.is_open:
            return True
        self.refused += 1
        return False

    @property
    def is_open(self) -> bool:
        """No allowlist at all: every client is served."""
        return not self._configured and not self._paired and not self._locked

    @property
    def window_open(self) -> bool:
        if self._window_until is None:
            return False
        if self._clock() >= self._window_until:
            self._end_window("expired")
            return False
        return True

    @property
    def window_until(self) -> float | None:
        return self._window_until if self.window_open else None

    @property
    def paired(self) -> list[PairedClient]:
        return sorted(self._paired.values(), key=lambda c: c.paired_at)

    @property
    def allowed(self) -> set[bytes]:
        """The effective allowlist (configured ∪ paired)."""
        return self._configured | set(self._paired)

    # -- the window ------------------------------------------------------------------------------
    def start(self, minutes: float) -> float:
        """Open (or extend) the pairing window for ``minutes``; return when it closes (epoch seconds)."""
        if not MIN_WINDOW_MINUTES <= minutes <= MAX_WINDOW_MINUTES:
            raise UserError(
                f"pairing window must be {MIN_WINDOW_MINUTES}..{MAX_WINDOW_MINUTES} minutes (got {minutes})"
            )
        until = self._clock() + minutes * 60
        self._window_until = until
        self._schedule_expiry(minutes * 60)
        if self._health is not None:
            self._health.set_pairing(until)
        log.info(
            "pairing: window open for %g min; the first new phone that asks for history will be paired",
            minutes,
        )
        return until

    def forget(self, which: str) -> list[str]:
        """Unpair the client(s) matching ``which`` (full key, fingerprint or a hex prefix of at least
        8 digits); return their fingerprints. Clients in ``allowed_clients`` stay (edit the config)."""
        text = which.strip().lower().removeprefix("0x")
        if not text:
            raise UserError("name the client to forget (its key, fingerprint or key prefix)")
        matches = []
        for key in self._paired:
            h = key.hex()
            if text in (h, fingerprint(key).lower()) or (len(text) >= 8 and h.startswith(text)):
                matches.append(key)
        if not matches:
            raise UserError(f"no paired client matches {which.strip()[:40]!r}")
        if len(matches) > 1:
            raise UserError(f"{len(matches)} paired clients match {which.strip()[:40]!r}; give more digits")
        for key in matches:
            del self._paired[key]
            log.info("pairing: forgot client %s", fingerprint(key))
        if self.is_open:
            log.warning("pairing: no paired or allowed clients left: the mailserver is open to all again")
        self._persist()
        return [fingerprint(k) for k in matches]

    def cancel(self) -> bool:
        """Close the window early; False if none was open."""
        if not self.window_open:
            return False
        self._end_window("cancelled")
        return True

    def _pair(self, pubkey: bytes) -> None:
        client = PairedClient(pubkey, self._clock())
        self._paired[pubkey] = client
        self._locked = False
        if self._health is not None:
            self._health.clear(HEALTH_KEY)
        self.last_result = PairingResult("paired", client.paired_at, client.fingerprint)
        log.info("pairing: paired client %s; the window is closed", client.fingerprint)
        self._close_window()
        self._persist()

    def _end_window(self, outcome: str) -> None:
        self.last_result = PairingResult(outcome, self._clock())
        if outcome == "expired":
            log.info("pairing: window closed with no new client")
        else:
            log.info("pairing: window cancelled")
        self._close_window()

    def _close_window(self) -> None:
        self._window_until = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._health is not None:
            self._health.set_pairing(None)

    def _schedule_expiry(self, delay_s: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop: the window is checked lazily on every admit()/status read
        # The health model computes PAIRING from the deadline, but LEDs only redraw on a change,
        # so tell everyone when the window lapses.
        self._timer = loop.call_later(delay_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._window_until is not None:
            self._end_window("expired")

    # -- persistence -----------------------------------------------------------------------------
    def _persist(self) -> None:
        self._seq += 1
        snapshot, seq = self.paired, self._seq
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                self._store.write(snapshot, seq)
            except OSError as exc:
                self._write_failed(exc)
            return
        fut = loop.run_in_executor(None, self._store.write, snapshot, seq)
        self._pending.add(fut)
        fut.add_done_callback(self._written)

    def _written(self, fut: asyncio.Future[None]) -> None:
        self._pending.discard(fut)
        exc = None if fut.cancelled() else fut.exception()
        if isinstance(exc, OSError):
            self._write_failed(exc)
        elif exc is not None:
            log.error("pairing: saving paired clients failed: %s", exc)

    def _write_failed(self, exc: OSError) -> None:
        log.error("pairing: cannot save %s: %s (the pairing lasts until restart)", self._store.path, exc)
        if self._health is not None:
            self._health.report(HEALTH_KEY, Severity.DEGRADED, "cannot save paired clients")

    async def flush(self) -> None:
        """Wait until every pairing so far is on disk."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        await self.flush()

    # -- reporting -------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-ready state for ``pimail status``, the control socket and the status page."""
        until = self.window_until
        result = self.last_result
        return {
            "mode": "open" if self.is_open else "allowlist",
            "window_open": until is not None,
            "window_until": until,
            "window_remaining_s": max(0, round(until - self._clock())) if until is not None else None,
            "configured_clients": len(self._configured),
            "paired_clients": [
                {"fingerprint": c.fingerprint, "paired_at": c.paired_at} for c in self.paired
            ],
            "last_result": None
            if result is None
            else {"outcome": result.outcome, "at": result.at, "fingerprint": result.fingerprint},
            "refused_requests": self.refused,
        }


def register_control_commands(registry: Any, controller: PairingController, default_minutes: float) -> None:
    """``pair.start {minutes}``, ``pair.cancel`` and ``pair.status`` on the daemon's control socket
    (``registry`` is an ``appliance.control.CommandRegistry``)."""
    from pimail.appliance.control import CommandError

    async def start(args: dict[str, Any]) -> dict[str, Any]:
        minutes = args.get("minutes", default_minutes)
        if isinstance(minutes, bool) or not isinstance(minutes, int | float):
            raise CommandError("minutes must be a number")
        try:
            controller.start(minutes)
        except UserError as exc:
            raise CommandError(str(exc)) from None
        return controller.snapshot()

    async def cancel(args: dict[str, Any]) -> dict[str, Any]:
        controller.cancel()
        return controller.snapshot()

    async def status(args: dict[str, Any]) -> dict[str, Any]:
        return controller.snapshot()

    registry.register("pair.start", start, "open the pairing window {minutes}")
    registry.register("pair.cancel", cancel, "close the pairing window")
    async def forget(args: dict[str, Any]) -> dict[str, Any]:
        which = args.get("client")
        if not isinstance(which, str):
            raise CommandError("client must be a key, fingerprint or key prefix")
        try:
            forgotten = controller.forget(which)
        except UserError as exc:
            raise CommandError(str(exc)) from None
        return {**controller.snapshot(), "forgotten": forgotten}

    registry.register("pair.status", status, "pairing window, last result, paired clients")
    registry.register("pair.forget", forget, "unpair a client {client: key | fingerprint | prefix}")


class PairButton:
    """A push button (gpiozero ``Button`` on a BCM pin) that opens a pairing window.

    gpiozero calls back from its own thread; the press is handed to the event loop.
    """

    def __init__(
        self,
        pin: int,
        controller: PairingController,
        minutes: float,
        loop: asyncio.AbstractEventLoop,
        pin_factory: Any = None,
    ) -> None:
        from gpiozero import Button  # imported here: only nodes with a button need the GPIO stack

        self._controller = controller
        self._minutes = minutes
        self._loop = loop
        self._button = Button(pin, pull_up=True, bounce_time=0.05, pin_factory=pin_factory)
        self._button.when_pressed = self._pressed

    def _pressed(self) -> None:
        self._loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        log.info("pairing: button pressed")
        try:
            self._controller.start(self._minutes)
        except UserError as exc:
            log.error("pairing: button: %s", exc)

    def close(self) -> None:
        self._button.close()
