"""``pimail pair`` against a real control socket served by a PairingController on its own event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pimail.appliance.control import CommandRegistry, ControlServer, socket_path
from pimail.appliance.pairing import PairingController, fingerprint, register_control_commands
from pimail.cli import main
from pimail.cli import pair as pair_cli
from pimail.crypto.keys import NodeKey
from pimail.health import HealthModel, HealthState

T = TypeVar("T")


class DaemonStandIn:
    """The pieces of a daemon that ``pimail pair`` talks to, on a loop in a background thread."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.health = HealthModel()
        self.health.mark_started()
        self.pairing = self.run(self._make)
        self.registry = CommandRegistry()
        register_control_commands(self.registry, self.pairing, default_minutes=10)
        self.server = ControlServer(socket_path(data_dir, env={}), self.registry)
        self.call(self.server.start)

    def _make(self) -> PairingController:
        return PairingController(self.data_dir, [], self.health)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the daemon's loop (the controller is loop-affine)."""
        fut: Future[T] = Future()

        def go() -> None:
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(go)
        return fut.result(10)

    def call(self, coro_fn: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro_fn(), self.loop).result(10)

    def close(self) -> None:
        self.call(self.server.stop)
        self.call(self.pairing.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonStandIn]:
    d = DaemonStandIn(tmp_path)
    try:
        yield d
    finally:
        d.close()


def pair(capsys: pytest.CaptureFixture[str], data_dir: Path, *args: str) -> tuple[int, str, str]:
    rc = main(["pair", "--data-dir", str(data_dir), *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_pair_opens_the_window_and_status_and_cancel_report_it(
    daemon: DaemonStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = pair(capsys, daemon.data_dir, "--minutes", "3")
    assert rc == 0 and "pairing open for 3 min" in out
    assert daemon.run(lambda: daemon.pairing.window_open)
    assert daemon.health.state is HealthState.PAIRING
    rc, out, _ = pair(capsys, daemon.data_dir, "--status")
    assert rc == 0 and "pairing window open until" in out and "access: open" in out
    rc, out, _ = pair(capsys, daemon.data_dir, "--cancel")
    assert rc == 0 and "pairing window closed" in out and "window cancelled" in out
    assert daemon.health.state is HealthState.HEALTHY


def test_default_minutes_come_from_the_config(
    daemon: DaemonStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    (daemon.data_dir / "pimail.toml").write_text("[status]\npairing_minutes = 7\n")
    rc, out, _ = pair(capsys, daemon.data_dir)
    assert rc == 0 and "pairing open for 7 min" in out
    remaining = daemon.run(lambda: daemon.pairing.snapshot()["window_remaining_s"])
    assert 7 * 60 - 5 <= remaining <= 7 * 60


def test_wait_reports_the_paired_phone(
    daemon: DaemonStandIn, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pair_cli, "WAIT_POLL_S", 0.05)
    phone = NodeKey.generate().public
    # The phone asks for history shortly after the window opens.
    daemon.loop.call_soon_threadsafe(lambda: daemon.loop.call_later(0.3, daemon.pairing.admit, phone))
    rc, out, _ = pair(capsys, daemon.data_dir, "--minutes", "1", "--wait")
    assert rc == 0 and f"paired {fingerprint(phone)}" in out
    assert "access: 1 paired + 0 configured" in out
    daemon.call(daemon.pairing.flush)
    rc, out, _ = pair(capsys, daemon.data_dir, "--list")
    assert rc == 0 and phone.hex() in out and fingerprint(phone) in out


def test_out_of_range_minutes_are_refused_by_the_daemon(
    daemon: DaemonStandIn, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = pair(capsys, daemon.data_dir, "--minutes", "100000")
    assert rc == 1 and "minutes" in err and err.count("\n") == 1
    assert not daemon.run(lambda: daemon.pairing.window_open)
    rc, _, err = pair(capsys, daemon.data_dir, "--minutes", "0")
    assert rc == 2 and "--minutes" in err


def test_no_daemon_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = pair(capsys, tmp_path)
    assert rc == 1 and out == "" and "no running pimail" in err and err.count("\n") == 1


def test_list_without_a_daemon(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = pair(capsys, tmp_path, "--list")
    assert rc == 0 and "no paired phones" in out
    (tmp_path / "paired_clients.json").write_text("garbage")
    rc, _, err = pair(capsys, tmp_path, "--list")
    assert rc == 1 and "not a valid paired-clients file" in err


def test_control_commands_reject_bad_arguments(daemon: DaemonStandIn) -> None:
    from pimail.appliance.control import CommandError

    async def bad() -> None:
        with pytest.raises(CommandError, match="number"):
            await daemon.registry.dispatch("pair.start", {"minutes": "ten"})
        with pytest.raises(CommandError, match="number"):
            await daemon.registry.dispatch("pair.start", {"minutes": True})

    daemon.call(bad)
    assert not daemon.run(lambda: daemon.pairing.window_open)


def test_forget_through_the_daemon(daemon: DaemonStandIn, capsys: pytest.CaptureFixture[str]) -> None:
    phone = NodeKey.generate().public

    def pair_one() -> None:
        daemon.pairing.start(1)
        daemon.pairing.admit(phone)

    daemon.run(pair_one)
    rc, out, _ = pair(capsys, daemon.data_dir, "--forget", phone.hex()[:12])
    assert rc == 0 and f"forgot {fingerprint(phone)}" in out and "access: open" in out
    rc, _, err = pair(capsys, daemon.data_dir, "--forget", phone.hex()[:12])
    assert rc == 1 and "no paired client matches" in err
