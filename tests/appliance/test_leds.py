"""LED patterns per health state, activity flickers, active-low wiring, and no-GPIO machines."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from gpiozero.pins.mock import MockFactory

from pimail.appliance.leds import PATTERNS, LedPanel
from pimail.config import LedConfig
from pimail.health import HealthModel, HealthState, Severity
from tests.waiting import eventually


@pytest.fixture
def factory() -> Iterator[MockFactory]:
    f = MockFactory()
    yield f
    f.reset()


def lit(panel: LedPanel) -> dict[str, bool]:
    return {name: bool(panel.led(name).is_lit) for name in ("green", "amber", "red")}


def pin_high(factory: MockFactory, pin: int) -> bool:
    return bool(factory.pin(pin).state)


def toggles(factory: MockFactory, pin: int, seconds: float) -> int:
    start = len(factory.pin(pin).states)
    time.sleep(seconds)
    return len(factory.pin(pin).states) - start


def test_steady_patterns_follow_health(factory: MockFactory) -> None:
    h = HealthModel()
    panel = LedPanel(LedConfig(), h, pin_factory=factory)
    assert panel.enabled
    assert panel.patterns["amber"].mode == "blink"  # starting
    h.mark_started()
    assert lit(panel) == {"green": True, "amber": False, "red": False}
    assert pin_high(factory, 17) and not pin_high(factory, 27) and not pin_high(factory, 22)
    h.report("disk.low", Severity.DEGRADED, "disk low")
    assert lit(panel) == {"green": True, "amber": True, "red": False}
    h.report("archive.unwritable", Severity.FAILING, "archive unwritable")
    assert lit(panel) == {"green": False, "amber": False, "red": True}
    h.clear("archive.unwritable")
    h.clear("disk.low")
    assert lit(panel) == {"green": True, "amber": False, "red": False}
    panel.close()
    assert not pin_high(factory, 17)


def test_starting_and_pairing_blink(factory: MockFactory) -> None:
    h = HealthModel()
    panel = LedPanel(LedConfig(), h, pin_factory=factory)
    assert toggles(factory, 27, 1.2) >= 2, "amber blinks slowly while starting"
    assert not pin_high(factory, 17) and not pin_high(factory, 22)
    h.mark_started()
    h.set_pairing(time.time() + 60)
    assert h.state is HealthState.PAIRING
    assert panel.patterns["green"].mode == "blink" and panel.patterns["amber"].mode == "blink"
    assert toggles(factory, 17, 0.7) >= 3, "green blinks fast while pairing"
    h.set_pairing(None)
    assert lit(panel)["green"] and not lit(panel)["amber"]
    panel.close()


def test_active_low_inverts_the_pins(factory: MockFactory) -> None:
    h = HealthModel()
    h.mark_started()
    panel = LedPanel(LedConfig(active_high=False, green=5, amber=6, red=13), h, pin_factory=factory)
    assert lit(panel)["green"]
    assert not pin_high(factory, 5), "active-low: lit means the pin is pulled low"
    assert pin_high(factory, 6) and pin_high(factory, 13)
    panel.close()


def test_activity_flickers_only_when_healthy_and_rate_limited(factory: MockFactory) -> None:
    async def scenario() -> None:
        h = HealthModel()
        h.mark_started()
        panel = LedPanel(LedConfig(), h, pin_factory=factory)
        panel.attach_loop(asyncio.get_running_loop())
        panel.archived()
        assert not panel.led("green").is_lit, "the flicker inverts the lit green LED"
        await eventually(lambda: panel.led("green").is_lit, what="the flicker restores green")
        panel.archived()  # within the rate limit: ignored
        assert panel.led("green").is_lit
        panel.delivered()
        assert panel.led("amber").is_lit, "delivery flashes the (dark) amber LED"
        await eventually(lambda: not panel.led("amber").is_lit, what="the amber flash ends")
        h.report("x", Severity.FAILING, "failing")
        await asyncio.sleep(0.3)
        panel.archived()
        panel.delivered()
        assert lit(panel) == {"green": False, "amber": False, "red": True}, "no activity while failing"
        panel.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_a_missing_led_is_skipped(factory: MockFactory) -> None:
    h = HealthModel()
    h.mark_started()
    panel = LedPanel(LedConfig(amber=0), h, pin_factory=factory)
    with pytest.raises(KeyError):
        panel.led("amber")
    h.report("d", Severity.DEGRADED, "d")
    assert panel.patterns["amber"].mode == "on"  # still reported for status
    assert panel.led("green").is_lit
    panel.close()


def test_disabled_without_gpio_or_by_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPIOZERO_PIN_FACTORY", raising=False)
    monkeypatch.setattr("pimail.appliance.leds.glob.glob", lambda pattern: [])
    h = HealthModel()
    panel = LedPanel(LedConfig(), h)
    assert not panel.enabled and panel.disabled_reason == "no GPIO on this machine"
    h.mark_started()
    panel.archived()
    panel.close()
    off = LedPanel(LedConfig(enabled=False), h)
    assert not off.enabled and "disabled in config" in off.disabled_reason


def test_gpio_errors_disable_cleanly(factory: MockFactory) -> None:
    class Broken:
        def __getattr__(self, name: str) -> object:
            raise OSError("no such chip")

    h = HealthModel()
    panel = LedPanel(LedConfig(), h, pin_factory=Broken())
    assert not panel.enabled and "GPIO unavailable" in panel.disabled_reason
    h.mark_started()  # no exception from the listener


def test_every_state_has_a_pattern_for_every_led() -> None:
    for state in [*HealthState, None]:
        assert set(PATTERNS[state]) == {"green", "amber", "red"}
