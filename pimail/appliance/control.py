"""The control socket: how ``pimail status``, ``pimail pair`` and friends talk to the running daemon.

A Unix stream socket, mode 0660, at ``$RUNTIME_DIRECTORY/control.sock`` under systemd
(``RuntimeDirectory=pimail`` → ``/run/pimail/control.sock``), else ``<data dir>/control.sock``.
One JSON object per line each way::

    → {"command": "status", "args": {}}
    ← {"ok": true, "result": {...}}        or  {"ok": false, "error": "one line"}

Commands live in a ``CommandRegistry``; any component registers its own (the pairing engineer's
``pair.start`` / ``pair.cancel``, the daemon's ``status`` and ``reload``). Requests are bounded
(size, connections, time); a bad request gets an error response, never a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pimail.errors import RuntimeFailure

log = logging.getLogger(__name__)

SOCKET_NAME = "control.sock"
RUNTIME_SOCKET = Path("/run/pimail") / SOCKET_NAME  # systemd RuntimeDirectory=pimail
MAX_REQUEST_BYTES = 64 * 1024
MAX_RESPONSE_BYTES = 16 * 1024 * 1024
MAX_CONNECTIONS = 16
REQUEST_TIMEOUT_S = 10.0
SOCKET_MODE = 0o660
MAX_UNIX_PATH = 107  # sockaddr_un.sun_path is 108 bytes including the NUL

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class CommandError(Exception):
    """A command refused its arguments or could not run: the client sees ``error``."""


@dataclass(frozen=True)
class Command:
    name: str
    handler: Handler
    help: str


class CommandRegistry:
    """Named async commands that take a JSON object of arguments and return a JSON-able result."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}

    def register(self, name: str, handler: Handler, help: str = "") -> None:
        if name in self._commands:
            raise ValueError(f"control command {name!r} is already registered")
        self._commands[name] = Command(name, handler, help)

    def names(self) -> list[str]:
        return sorted(self._commands)

    def help(self) -> dict[str, str]:
        return {name: self._commands[name].help for name in self.names()}

    async def dispatch(self, name: str, args: dict[str, Any]) -> Any:
        command = self._commands.get(name)
        if command is None:
            raise CommandError(f"unknown command {name!r} (known: {', '.join(self.names())})")
        return await command.handler(args)


def socket_path(data_dir: Path, env: dict[str, str] | None = None) -> Path:
    """Where the daemon puts its socket."""
    env = dict(os.environ) if env is None else env
    runtime = env.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return (Path(runtime) if runtime else data_dir) / SOCKET_NAME


def find_socket(data_dir: Path | None, env: dict[str, str] | None = None) -> Path | None:
    """Where a client finds a running daemon's socket: runtime dir, /run/pimail, the data dir."""
    env = dict(os.environ) if env is None else env
    candidates = []
    if env.get("RUNTIME_DIRECTORY"):
        candidates.append(Path(env["RUNTIME_DIRECTORY"].split(":")[0]) / SOCKET_NAME)
    if data_dir is not None:
        candidates.append(data_dir / SOCKET_NAME)
    candidates.append(RUNTIME_SOCKET)
    for candidate in candidates:
        with contextlib.suppress(OSError):
            if stat.S_ISSOCK(candidate.stat().st_mode):
                return candidate
    return None


class ControlServer:
    """Serves a ``CommandRegistry`` on a Unix socket."""

    def __init__(self, path: Path, registry: CommandRegistry) -> None:
        self.path = path
        self.registry = registry
        self._server: asyncio.AbstractServer | None = None
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if len(os.fsencode(self.path)) > MAX_UNIX_PATH:
            raise RuntimeFailure(f"control socket path is too long for a Unix socket: {self.path}")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        await self._remove_stale()
        # umask keeps the socket from ever being wider than 0660, even for an instant
        old = os.umask(0o117)
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST_BYTES
            )
        finally:
            os.umask(old)
        os.chmod(self.path, SOCKET_MODE)
        log.info("control socket at %s", self.path)

    async def _remove_stale(self) -> None:
        """Remove a socket left by a crashed daemon; refuse if another daemon answers on it."""
        try:
            mode = self.path.lstat().st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise RuntimeFailure(f"{self.path} exists and is not a socket; move it away")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(self.path)), 1.0)
        except (OSError, TimeoutError):
            self.path.unlink(missing_ok=True)
            return
        writer.close()
        raise RuntimeFailure(f"another pimail is running with control socket {self.path}")

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
            # only our own socket: a server that never started must not remove another daemon's
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(self.path.lstat().st_mode):
                    self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            if self._slots.locked():
                # read the request first: closing on unread data would reset the connection
                with contextlib.suppress(ValueError, asyncio.LimitOverrunError):
                    await asyncio.wait_for(reader.readline(), 1.0)
                await self._reply(writer, {"ok": False, "error": "too many control connections"})
                return
            async with self._slots:
                await asyncio.wait_for(self._one_connection(reader, writer), REQUEST_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass  # server stopping: end this connection quietly (asyncio's stream callback dislikes re-raise)
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readline()
            except (asyncio.LimitOverrunError, ValueError):
                await self._reply(writer, {"ok": False, "error": f"request over {MAX_REQUEST_BYTES} bytes"})
                return
            if not line:
                return
            await self._reply(writer, await self._handle(line))

    async def _handle(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            return {"ok": False, "error": "request is not JSON"}
        if not isinstance(request, dict) or not isinstance(request.get("command"), str):
            return {"ok": False, "error": 'request must be {"command": NAME, "args": {...}}'}
        args = request.get("args", {})
        if not isinstance(args, dict):
            return {"ok": False, "error": "args must be a JSON object"}
        try:
            result = await self.registry.dispatch(request["command"], args)
        except CommandError as exc:
            return {"ok": False, "error": str(exc)}
        except Exception as exc:
            log.exception("control command %r failed", request["command"])
            return {"ok": False, "error": f"{request['command']} failed: {type(exc).__name__}: {exc}"}
        return {"ok": True, "result": result}

    @staticmethod
    async def _reply(writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        writer.write(json.dumps(response, default=str).encode() + b"\n")
        await writer.drain()


def call(path: Path, command: str, args: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    """Blocking client for CLI commands. Raises RuntimeFailure with a one-line reason."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise RuntimeFailure(f"no pimail daemon is running ({path} does not exist)") from None
        except ConnectionRefusedError:
            raise RuntimeFailure(f"no pimail daemon is listening on {path} (stale socket)") from None
        except PermissionError:
            raise RuntimeFailure(
                f"permission denied on {path}: run as the pimail user or a member of its group"
            ) from None
        except OSError as exc:
            raise RuntimeFailure(f"cannot reach the daemon at {path}: {exc.strerror or exc}") from None
        try:
            sock.sendall(json.dumps({"command": command, "args": args or {}}).encode() + b"\n")
            buf = bytearray()
            while not buf.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
                if len(buf) > MAX_RESPONSE_BYTES:
                    raise RuntimeFailure("daemon response is too large")
        except TimeoutError:
            raise RuntimeFailure(f"the daemon did not answer within {timeout:g} s") from None
        except OSError as exc:
            raise RuntimeFailure(f"control socket error: {exc.strerror or exc}") from None
    try:
        response = json.loads(buf)
    except ValueError:
        raise RuntimeFailure("the daemon sent an unreadable response") from None
    if not isinstance(response, dict):
        raise RuntimeFailure("the daemon sent an unreadable response")
    if not response.get("ok"):
        raise RuntimeFailure(str(response.get("error", "the daemon refused the command")))
    return response.get("result")
