"""PairingController: open/allowlist policy, the pairing window, persistence, health, the button."""

from __future__ import annotations

import asyncio
import json
import logging
import stat
import time
from pathlib import Path

import pytest

from pimail.appliance import pairing as pairing_mod
from pimail.appliance.pairing import PAIRED_FILE, PairButton, PairingController, fingerprint
from pimail.crypto.keys import NodeKey
from pimail.errors import UserError
from pimail.health import HealthModel, HealthState
from tests.waiting import eventually


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()  # the health model reads the real clock for the pairing deadline

    def __call__(self) -> float:
        return self.now


def client() -> bytes:
    return NodeKey.generate().public


def started_health() -> HealthModel:
    health = HealthModel()
    health.mark_started()
    return health


def test_no_allowlist_and_no_pairing_is_open(tmp_path: Path) -> None:
    ctl = PairingController(tmp_path)
    assert ctl.is_open and ctl.admit(client()) and ctl.admit(client())
    assert not (tmp_path / PAIRED_FILE).exists()  # being open pairs nobody
    assert ctl.snapshot()["mode"] == "open"


def test_configured_allowlist_admits_only_those(tmp_path: Path) -> None:
    allowed = client()
    ctl = PairingController(tmp_path, ["0x" + allowed.hex()])
    assert not ctl.is_open
    assert ctl.admit(allowed)
    assert not ctl.admit(client())
    assert ctl.refused == 1


def test_bad_allowed_clients_entry_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="allowed_clients"):
        PairingController(tmp_path, ["abc"])


def test_window_pairs_the_first_new_client_persists_it_and_refuses_the_second(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock, health = FakeClock(), started_health()
    ctl = PairingController(tmp_path, [], health, clock=clock)
    until = ctl.start(10)
    assert until == clock.now + 600
    assert health.state is HealthState.PAIRING and ctl.window_open

    first, second = client(), client()
    with caplog.at_level(logging.INFO, logger="pimail.appliance.pairing"):
        assert ctl.admit(first)
    assert f"paired client {fingerprint(first)}" in caplog.text
    assert not ctl.window_open and health.state is HealthState.HEALTHY
    assert not ctl.admit(second)
    assert ctl.admit(first)  # the paired phone keeps access

    path = tmp_path / PAIRED_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    doc = json.loads(path.read_text())
    assert [c["pubkey"] for c in doc["clients"]] == [first.hex()]
    assert doc["clients"][0]["fingerprint"] == fingerprint(first)
    assert not list(tmp_path.glob("*.tmp"))

    snap = ctl.snapshot()
    assert snap["mode"] == "allowlist" and not snap["window_open"]
    assert snap["last_result"] == {"outcome": "paired", "at": clock.now, "fingerprint": fingerprint(first)}

    # After a restart the paired phone is still allowed and strangers are not.
    again = PairingController(tmp_path)
    assert again.admit(first) and not again.admit(second)


def test_pairing_adds_to_a_configured_allowlist(tmp_path: Path) -> None:
    configured, new = client(), client()
    ctl = PairingController(tmp_path, [configured.hex()])
    ctl.start(1)
    assert ctl.admit(configured) and ctl.window_open  # already allowed: does not use up the window
    assert ctl.admit(new) and not ctl.window_open
    assert ctl.allowed == {configured, new}


def test_window_expires_lazily_with_the_clock(tmp_path: Path) -> None:
    clock, health = FakeClock(), started_health()
    ctl = PairingController(tmp_path, [client().hex()], health, clock=clock)
    ctl.start(2)
    clock.now += 121
    assert not ctl.admit(client())
    assert ctl.last_result is not None and ctl.last_result.outcome == "expired"
    assert health.state is HealthState.HEALTHY


def test_window_expiry_timer_tells_the_health_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairing_mod, "MIN_WINDOW_MINUTES", 0.001)
    health = started_health()
    changes: list[HealthState] = []
    health.subscribe(lambda h: changes.append(h.state))

    async def scenario() -> None:
        ctl = PairingController(tmp_path, [], health)
        ctl.start(0.002)  # 120 ms
        assert health.state is HealthState.PAIRING
        await eventually(lambda: ctl.last_result is not None, what="the window expires")
        assert ctl.last_result is not None and ctl.last_result.outcome == "expired"
        await ctl.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))
    assert changes[0] is HealthState.PAIRING and changes[-1] is HealthState.HEALTHY


def test_cancel_and_window_bounds(tmp_path: Path) -> None:
    ctl = PairingController(tmp_path)
    assert not ctl.cancel()
    ctl.start(5)
    assert ctl.cancel() and not ctl.window_open
    assert ctl.last_result is not None and ctl.last_result.outcome == "cancelled"
    for bad in (0, -1, 24 * 60 + 1):
        with pytest.raises(UserError, match="minutes"):
            ctl.start(bad)


def test_writes_happen_off_the_loop_and_flush_waits(tmp_path: Path) -> None:
    first = client()

    async def scenario() -> None:
        ctl = PairingController(tmp_path)
        ctl.start(1)
        assert ctl.admit(first)
        await ctl.flush()
        assert first.hex() in (tmp_path / PAIRED_FILE).read_text()
        await ctl.close()

    asyncio.run(asyncio.wait_for(scenario(), 10))


def test_unreadable_file_fails_closed_and_is_kept_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / PAIRED_FILE).write_text("{not json")
    health = started_health()
    with caplog.at_level(logging.ERROR):
        ctl = PairingController(tmp_path, [], health)
    assert "not a valid paired-clients file" in caplog.text
    assert not ctl.is_open and not ctl.admit(client())  # never silently open
    assert health.state is HealthState.DEGRADED
    kept = list(tmp_path.glob(f"{PAIRED_FILE}.corrupt-*"))
    assert len(kept) == 1 and kept[0].read_text() == "{not json"
    # Pairing again recovers.
    phone = client()
    ctl.start(1)
    assert ctl.admit(phone)
    assert health.state is HealthState.HEALTHY
    assert PairingController(tmp_path).admit(phone)


@pytest.mark.parametrize(
    "content",
    [
        '{"version": 2, "clients": []}',
        '{"version": 1, "clients": [{"pubkey": "abcd", "paired_at": 1}]}',
        '{"version": 1, "clients": [{"pubkey": 5, "paired_at": 1}]}',
        '{"version": 1, "clients": {}}',
        "[]",
    ],
)
def test_malformed_files_are_rejected(tmp_path: Path, content: str) -> None:
    (tmp_path / PAIRED_FILE).write_text(content)
    assert not PairingController(tmp_path).is_open


def test_save_failure_keeps_the_pairing_and_degrades_health(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    health = started_health()
    ctl = PairingController(not_a_dir, [], health)
    ctl.start(1)
    phone = client()
    assert ctl.admit(phone) and ctl.admit(phone)
    assert health.state is HealthState.DEGRADED
    assert "cannot save" in health.summary


def test_paired_set_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pairing_mod, "MAX_PAIRED_CLIENTS", 2)
    ctl = PairingController(tmp_path)
    for _ in range(2):
        ctl.start(1)
        assert ctl.admit(client())
    ctl.start(1)
    assert not ctl.admit(client())
    assert len(ctl.paired) == 2


def test_gpio_button_opens_the_window() -> None:
    from gpiozero.pins.mock import MockFactory

    factory = MockFactory()

    async def scenario(tmp: Path) -> None:
        health = started_health()
        ctl = PairingController(tmp, [], health)
        button = PairButton(5, ctl, 3, asyncio.get_running_loop(), pin_factory=factory)
        try:
            pin = factory.pin(5)
            pin.drive_low()  # pressed (pull-up, button to ground)
            for _ in range(100):
                if ctl.window_open:
                    break
                await asyncio.sleep(0.01)
            assert ctl.window_open and health.state is HealthState.PAIRING
        finally:
            button.close()
            await ctl.close()

    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(asyncio.wait_for(scenario(Path(tmp)), 10))


def test_forget_by_fingerprint_prefix_or_key(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctl = PairingController(tmp_path)
    phones = []
    for _ in range(3):
        phones.append(client())
        ctl.start(1)
        assert ctl.admit(phones[-1])
    assert ctl.forget(fingerprint(phones[0])) == [fingerprint(phones[0])]
    assert ctl.forget(phones[1].hex()[:10].upper()) == [fingerprint(phones[1])]
    with pytest.raises(UserError, match="no paired client"):
        ctl.forget(phones[0].hex())
    with pytest.raises(UserError):
        ctl.forget("   ")
    assert not ctl.admit(phones[0]) and ctl.admit(phones[2])
    assert PairingController(tmp_path).allowed == {phones[2]}  # persisted
    with caplog.at_level(logging.WARNING):
        ctl.forget("0x" + phones[2].hex())
    assert ctl.is_open and "open to all again" in caplog.text


def test_forget_ambiguous_prefix_is_refused(tmp_path: Path) -> None:
    ctl = PairingController(tmp_path)
    a, b = bytes([0xAB] * 4) + client()[4:], bytes([0xAB] * 4) + client()[4:]
    for key in (a, b):
        ctl.start(1)
        ctl.admit(key)
    with pytest.raises(UserError, match="2 paired clients match"):
        ctl.forget("abababab")
    assert len(ctl.paired) == 2
