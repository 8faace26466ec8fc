"""Three status LEDs (green, amber, red) on BCM pins, driven only by the health model.

| state     | green                  | amber                     | red        |
|-----------|------------------------|---------------------------|------------|
| starting  | off                    | slow blink (1 s period)   | off        |
| healthy   | on                     | off                       | off        |
| degraded  | on                     | on                        | off        |
| pairing   | fast blink (0.4 s)     | fast blink, together      | off        |
| failing   | off                    | off                       | on         |
| stopped   | off                    | off                       | off        |

Activity, in healthy and degraded only: each archive write flickers the green LED (briefly
inverted), each history delivery flickers the amber LED. Flickers are rate-limited so a busy node
shows a steady twinkle, not a stuck LED.

The pin factory comes from gpiozero (lgpio on a Pi; ``MockFactory`` in tests). On a machine
without GPIO the panel disables itself with one log line and every call is a no-op.
"""

from __future__ import annotations

import asyncio
import glob
import logging
import os
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from pimail.config import LedConfig
from pimail.health import HealthModel, HealthState

log = logging.getLogger(__name__)

FLICKER_S = 0.06  # how long an activity flicker inverts the LED
FLICKER_MIN_GAP_S = 0.25  # at most one flicker per LED per this interval
SLOW_BLINK_S = 0.5  # starting: 0.5 s on, 0.5 s off
FAST_BLINK_S = 0.2  # pairing


@dataclass(frozen=True)
class Pattern:
    """What one LED does: ``off``, ``on`` or ``blink`` (on and off for ``half_period_s`` each)."""

    mode: str
    half_period_s: float = 0.0


OFF = Pattern("off")
ON = Pattern("on")

PATTERNS: dict[HealthState | None, dict[str, Pattern]] = {
    HealthState.STARTING: {"green": OFF, "amber": Pattern("blink", SLOW_BLINK_S), "red": OFF},
    HealthState.HEALTHY: {"green": ON, "amber": OFF, "red": OFF},
    HealthState.DEGRADED: {"green": ON, "amber": ON, "red": OFF},
    HealthState.PAIRING: {
        "green": Pattern("blink", FAST_BLINK_S),
        "amber": Pattern("blink", FAST_BLINK_S),
        "red": OFF,
    },
    HealthState.FAILING: {"green": OFF, "amber": OFF, "red": ON},
    None: {"green": OFF, "amber": OFF, "red": OFF},  # stopped
}
ACTIVITY_STATES = (HealthState.HEALTHY, HealthState.DEGRADED)


def gpio_present() -> bool:
    """A GPIO character device exists (or gpiozero was told which pin factory to use)."""
    return bool(glob.glob("/dev/gpiochip*")) or bool(os.environ.get("GPIOZERO_PIN_FACTORY"))


class LedPanel:
    """Drives the LEDs from health state changes and activity events."""

    def __init__(self, config: LedConfig, health: HealthModel, *, pin_factory: Any = None) -> None:
        self._config = config
        self._health = health
        self._leds: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._state: HealthState | None = None
        self._patterns: dict[str, Pattern] = dict(PATTERNS[None])
        self._last_flicker: dict[str, float] = {}
        self._flickering: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.disabled_reason = ""
        if not config.enabled:
            self.disabled_reason = "disabled in config ([leds] enabled = false)"
        elif pin_factory is None and not gpio_present():
            self.disabled_reason = "no GPIO on this machine"
        else:
            self._open(pin_factory)
        if self._leds:
            log.info(
                "LEDs on BCM %s",
                ", ".join(f"{name} {getattr(config, name)}" for name in self._leds),
            )
        elif config.enabled:
            log.info("LEDs off: %s", self.disabled_reason)
        health.subscribe(self._on_health)
        self._on_health(health)

    def _open(self, pin_factory: Any) -> None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # gpiozero's pin-factory fallback warnings
                from gpiozero import LED

                for name in ("green", "amber", "red"):
                    pin = getattr(self._config, name)
                    if pin:
                        self._leds[name] = LED(
                            pin,
                            active_high=self._config.active_high,
                            initial_value=False,
                            pin_factory=pin_factory,
                        )
        except Exception as exc:  # gpiozero raises many kinds (BadPinFactory, PinInvalidPin, OSError)
            self.close()
            self.disabled_reason = f"GPIO unavailable ({type(exc).__name__}: {exc})"
            log.warning("LEDs off: %s", self.disabled_reason)

    @property
    def enabled(self) -> bool:
        return bool(self._leds)

    @property
    def patterns(self) -> dict[str, Pattern]:
        """What each LED is doing now (also for LEDs that are not wired)."""
        with self._lock:
            return dict(self._patterns)

    def led(self, name: str) -> Any:
        """The gpiozero ``LED`` for ``name`` (tests read ``.is_lit``)."""
        return self._leds[name]

    def attach_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Flickers end by a timer on this loop (no thread per flicker)."""
        self._loop = loop

    # -- health ---------------------------------------------------------------------------------------
    def _on_health(self, health: HealthModel) -> None:
        self.show(health.state)

    def show(self, state: HealthState | None) -> None:
        """Set every LED to the pattern for ``state`` (None = stopped, all off)."""
        with self._lock:
            if state == self._state and self._patterns == PATTERNS[state]:
                return
            self._state = state
            self._patterns = dict(PATTERNS[state])
            for name in self._leds:
                self._apply(name)

    def _apply(self, name: str) -> None:
        led = self._leds.get(name)
        if led is None:
            return
        pattern = self._patterns[name]
        try:
            if pattern.mode == "on":
                led.on()
            elif pattern.mode == "off":
                led.off()
            else:
                # gpiozero blinks in its own background thread
                led.blink(on_time=pattern.half_period_s, off_time=pattern.half_period_s, background=True)
        except Exception as exc:
            log.warning("LED %s: %s", name, exc)

    # -- activity -------------------------------------------------------------------------------------
    def archived(self) -> None:
        """Envelopes became durable: flicker green."""
        self._flicker("green")

    def delivered(self) -> None:
        """History was delivered to a client: flicker amber."""
        self._flicker("amber")

    def _flicker(self, name: str) -> None:
        if name not in self._leds or self._loop is None:
            return
        with self._lock:
            if self._state not in ACTIVITY_STATES or name in self._flickering:
                return
            now = time.monotonic()
            if now - self._last_flicker.get(name, 0.0) < FLICKER_MIN_GAP_S:
                return
            self._last_flicker[name] = now
            self._flickering.add(name)
            led = self._leds[name]
            if self._patterns[name].mode == "on":
                led.off()
            else:
                led.on()
        self._loop.call_later(FLICKER_S, self._end_flicker, name)

    def _end_flicker(self, name: str) -> None:
        with self._lock:
            self._flickering.discard(name)
            self._apply(name)

    def close(self) -> None:
        """All LEDs off and the pins released."""
        with self._lock:
            self._health.unsubscribe(self._on_health)
            for led in self._leds.values():
                try:
                    led.off()
                    led.close()
                except Exception as exc:
                    log.debug("closing LED: %s", exc)
            self._leds.clear()
            self._state = None
            self._patterns = dict(PATTERNS[None])
