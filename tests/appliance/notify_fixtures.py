"""A real datagram socket standing in for systemd's NOTIFY_SOCKET, read by a thread like systemd."""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path


class NotifySocket:
    """Bound AF_UNIX datagram socket; a reader thread collects sd_notify messages."""

    def __init__(self, abstract: bool = False) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"pimail-test-{id(self)}-{time.monotonic_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self._dir = tempfile.mkdtemp(prefix="pimail-notify-")
            self.address = str(Path(self._dir) / "notify.sock")
            self.sock.bind(self.address)
        self.sock.settimeout(0.05)
        self._lock = threading.Lock()
        self._messages: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._dir_path = None if abstract else Path(self._dir)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, BlockingIOError):
                continue
            except OSError:
                return
            with self._lock:
                self._messages.append((time.monotonic(), data.decode()))

    @property
    def messages(self) -> list[str]:
        with self._lock:
            return [m for _, m in self._messages]

    def timed(self) -> list[tuple[float, str]]:
        with self._lock:
            return list(self._messages)

    def drain(self) -> list[str]:
        return self.messages

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in m for m in self.messages):
                return True
            time.sleep(0.02)
        return False

    def count(self, text: str) -> int:
        return sum(text in m for m in self.messages)

    def close(self) -> None:
        self._closed.set()
        self._thread.join(2)
        self.sock.close()
        if self._dir_path is not None:
            shutil.rmtree(self._dir_path, ignore_errors=True)
