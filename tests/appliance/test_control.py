"""The control socket: JSON lines over a real Unix socket, bounded, with defined errors."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimail.appliance import control
from pimail.errors import RuntimeFailure


def short_dir() -> Path:
    return Path(tempfile.mkdtemp(prefix="pmc-"))  # Unix socket paths must stay under 108 bytes


def serve(scenario: Callable[[control.ControlServer], Awaitable[None]], path: Path | None = None) -> None:
    async def main() -> None:
        reg = control.CommandRegistry()

        async def echo(args: dict[str, Any]) -> Any:
            return {"echo": args}

        async def fail(args: dict[str, Any]) -> Any:
            raise control.CommandError("not now")

        async def crash(args: dict[str, Any]) -> Any:
            raise ZeroDivisionError("oops")

        reg.register("echo", echo, "echo args")
        reg.register("fail", fail)
        reg.register("crash", crash)
        server = control.ControlServer(path or short_dir() / control.SOCKET_NAME, reg)
        await server.start()
        try:
            await scenario(server)
        finally:
            await server.stop()
        assert not server.path.exists()

    asyncio.run(asyncio.wait_for(main(), 20))


async def call(path: Path, command: str, args: dict[str, Any] | None = None) -> Any:
    return await asyncio.to_thread(control.call, path, command, args)


def test_round_trip_and_mode() -> None:
    async def scenario(server: control.ControlServer) -> None:
        assert stat.S_IMODE(os.stat(server.path).st_mode) == 0o660
        assert await call(server.path, "echo", {"a": 1}) == {"echo": {"a": 1}}
        with pytest.raises(RuntimeFailure, match=r"^not now$"):
            await call(server.path, "fail")
        with pytest.raises(RuntimeFailure, match="crash failed: ZeroDivisionError: oops"):
            await call(server.path, "crash")
        with pytest.raises(RuntimeFailure, match="unknown command 'nope'"):
            await call(server.path, "nope")

    serve(scenario)


async def raw(path: Path, payload: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path), limit=control.MAX_RESPONSE_BYTES)
    writer.write(payload)
    await writer.drain()
    writer.write_eof()
    out = []
    while line := await reader.readline():
        out.append(json.loads(line))
    writer.close()
    return out


def test_bad_requests_get_error_responses() -> None:
    async def scenario(server: control.ControlServer) -> None:
        p = server.path
        assert (await raw(p, b"not json\n"))[0] == {"ok": False, "error": "request is not JSON"}
        assert "must be" in (await raw(p, b"[1,2]\n"))[0]["error"]
        assert "must be" in (await raw(p, b'{"command": 5}\n'))[0]["error"]
        bad_args = await raw(p, b'{"command": "echo", "args": []}\n')
        assert bad_args[0]["error"] == "args must be a JSON object"
        assert (await raw(p, b"\xff\xfe\n"))[0]["ok"] is False
        big = b'{"command": "echo", "args": {"x": "' + b"a" * (control.MAX_REQUEST_BYTES + 10) + b'"}}\n'
        assert "over" in (await raw(p, big))[0]["error"]
        two = await raw(p, b'{"command": "echo"}\n{"command": "echo", "args": {"n": 2}}\n')
        assert [r["result"] for r in two] == [{"echo": {}}, {"echo": {"n": 2}}]

    serve(scenario)


def test_connection_limit() -> None:
    async def scenario(server: control.ControlServer) -> None:
        idle = [await asyncio.open_unix_connection(str(server.path)) for _ in range(control.MAX_CONNECTIONS)]
        await asyncio.sleep(0.05)
        refused = await raw(server.path, b'{"command": "echo"}\n')
        assert refused == [{"ok": False, "error": "too many control connections"}]
        for _, w in idle:
            w.close()

    serve(scenario)


def test_stale_socket_is_replaced_and_a_live_one_is_not() -> None:
    d = short_dir()
    path = d / control.SOCKET_NAME
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on: a crashed daemon's leftover

    async def scenario(server: control.ControlServer) -> None:
        assert await call(path, "echo") == {"echo": {}}
        other = control.ControlServer(path, control.CommandRegistry())
        with pytest.raises(RuntimeFailure, match="another pimail is running"):
            await other.start()
        await other.stop()
        assert path.exists(), "a server that never started leaves the running one's socket alone"
        assert await call(path, "echo") == {"echo": {}}

    serve(scenario, path)


def test_a_regular_file_in_the_way_is_an_error() -> None:
    path = short_dir() / control.SOCKET_NAME
    path.write_text("x")

    async def main() -> None:
        with pytest.raises(RuntimeFailure, match="not a socket"):
            await control.ControlServer(path, control.CommandRegistry()).start()

    asyncio.run(main())


def test_client_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(RuntimeFailure, match="no pimail daemon is running"):
        control.call(tmp_path / "missing.sock", "status")
    stale = tmp_path / "s.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(stale))
    s.close()
    with pytest.raises(RuntimeFailure, match="stale socket"):
        control.call(stale, "status")


def test_client_times_out_on_a_silent_server() -> None:
    path = short_dir() / "silent.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.listen(1)
    try:
        with pytest.raises(RuntimeFailure, match=r"did not answer within 0\.2 s"):
            control.call(path, "status", timeout=0.2)
    finally:
        s.close()


def test_registry_rejects_duplicates_and_lists_help() -> None:
    reg = control.CommandRegistry()

    async def h(args: dict[str, Any]) -> Any:
        return None

    reg.register("b", h, "bee")
    reg.register("a", h)
    with pytest.raises(ValueError):
        reg.register("a", h)
    assert reg.names() == ["a", "b"] and reg.help() == {"a": "", "b": "bee"}


def test_socket_location(tmp_path: Path) -> None:
    assert control.socket_path(tmp_path, {}) == tmp_path / "control.sock"
    runtime = control.socket_path(tmp_path, {"RUNTIME_DIRECTORY": "/run/pimail"})
    assert runtime == Path("/run/pimail/control.sock")
    assert control.find_socket(tmp_path, {}) in (None, control.RUNTIME_SOCKET)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "control.sock"))
    try:
        assert control.find_socket(tmp_path, {}) == tmp_path / "control.sock"
    finally:
        s.close()


def test_too_long_path_is_refused(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / control.SOCKET_NAME

    async def main() -> None:
        with pytest.raises(RuntimeFailure, match="too long"):
            await control.ControlServer(deep, control.CommandRegistry()).start()

    asyncio.run(main())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=200).filter(lambda b: b"\n" not in b), min_size=1, max_size=4))
def test_arbitrary_request_lines_get_one_answer_each(lines: list[bytes]) -> None:
    async def scenario(server: control.ControlServer) -> None:
        replies = await raw(server.path, b"".join(line + b"\n" for line in lines))
        assert len(replies) == len(lines)
        for reply in replies:
            assert isinstance(reply["ok"], bool)
            assert reply["ok"] or isinstance(reply["error"], str)

    serve(scenario)
