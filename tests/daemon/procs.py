"""Run ``pimail run`` as a real subprocess with a real NOTIFY_SOCKET, and talk to it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pimail.appliance import control
from tests.appliance.notify_fixtures import NotifySocket

REPO = Path(__file__).resolve().parents[2]


class DaemonProcess:
    """One node: its own short data dir (Unix socket paths are limited), config file, notify socket."""

    def __init__(
        self,
        extra_config: str = "",
        watchdog_usec: int = 600_000,
        args: list[str] | None = None,
        runtime_dir: bool = False,
        before_start: Callable[[Path], None] | None = None,
        prefix: list[str] | None = None,
    ):
        self.root = Path(tempfile.mkdtemp(prefix="pmd-"))
        self.data_dir = self.root / "data"
        self.runtime_dir = self.root / "run" if runtime_dir else None
        self.config = self.root / "pimail.toml"
        self.config.write_text(
            "[node]\nlisten = \"127.0.0.1:0\"\n"
            "[archive]\nclock_trust = \"always\"\nmin_free_disk = \"1MB\"\n"
            "[status]\npage = false\nmetrics_listen = \"127.0.0.1:0\"\n" + extra_config
        )
        if before_start is not None:  # e.g. put a damaged archive in place
            self.data_dir.mkdir()
            before_start(self.data_dir)
        self.notify = NotifySocket()
        env = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "RUNTIME_DIRECTORY")}
        env.update(NOTIFY_SOCKET=self.notify.address, WATCHDOG_USEC=str(watchdog_usec), PYTHONUNBUFFERED="1")
        if self.runtime_dir is not None:
            env["RUNTIME_DIRECTORY"] = str(self.runtime_dir)  # what systemd sets for RuntimeDirectory=
        self.log_path = self.root / "stderr.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "pimail", "run", "--config", str(self.config),
             "--data-dir", str(self.data_dir), *(args or [])],
            cwd=REPO, env=env, stdout=self._log, stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 30) -> None:
        if not self.notify.wait_for("READY=1", timeout):
            self.close()
            raise AssertionError(f"no READY=1 within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "RUNTIME_DIRECTORY"}
        if self.runtime_dir is not None:
            env["RUNTIME_DIRECTORY"] = str(self.runtime_dir)
        return subprocess.run(
            [sys.executable, "-m", "pimail", *args, "--data-dir", str(self.data_dir)],
            cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env,
        )

    @property
    def socket_path(self) -> Path:
        return (self.runtime_dir or self.data_dir) / control.SOCKET_NAME

    def status(self) -> dict[str, Any]:
        """The daemon's status over its control socket (what `pimail status --json` prints)."""
        result = control.call(self.socket_path, "status", timeout=10)
        assert isinstance(result, dict)
        return result

    def status_cli(self) -> dict[str, Any]:
        proc = self.cli("status", "--json")
        assert proc.returncode in (0, 3), proc.stderr
        result: dict[str, Any] = json.loads(proc.stdout)
        return result

    def watchdog_times(self) -> list[float]:
        return [t for t, m in self.notify.timed() if "WATCHDOG=1" in m]

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        self.notify.close()
        shutil.rmtree(self.root, ignore_errors=True)


def wait_until(predicate: Any, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False
