"""The real `pimail run` process on the wire: a peer handshakes in both formats, and SIGTERM
sends it Disconnect 0x08 (client quitting) before the process exits 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import pytest

from pimail.crypto.keys import NodeKey
from pimail.devp2p.messages import DisconnectReason, Hello, decode_msg_id
from tests.node.rawpeer import RawPeer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"pimail did not listen on {port} within {timeout} s")


@pytest.mark.parametrize("eip8", [True, False], ids=["eip8", "legacy"])
async def test_pimail_run_speaks_rlpx_and_says_goodbye(tmp_path: Path, eip8: bool) -> None:
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pimail", "run", "--data-dir", str(tmp_path), "--listen", f"127.0.0.1:{port}",
        "--no-metrics", "--no-page", "--no-leds", "--clock-trust", "always",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=env)
    log_lines: list[str] = []
    ready = asyncio.Event()

    async def read_log() -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            log_lines.append(line.decode(errors="replace"))
            if " ready: " in log_lines[-1]:
                ready.set()  # signal handlers are in place from here on

    log_task = asyncio.ensure_future(read_log())
    try:
        await asyncio.to_thread(wait_for_port, port)
        node_pub = NodeKey.load(tmp_path / "nodekey").public
        raw = await RawPeer.open(port)
        await raw.handshake(node_pub, eip8=eip8)
        raw.send_hello(caps=(("shh", 6),))
        frames = await raw.read_frames(2)  # its Hello, then shh Status
        code, off = decode_msg_id(frames[0])
        hello = Hello.decode(frames[0][off:])
        assert code == 0 and hello.node_id == node_pub and ("shh", 6) in hello.capabilities
        assert hello.version == 5 and hello.client_id.startswith("pimail/")
        assert decode_msg_id(frames[1])[0] == 16  # Status, the first shh message
        await asyncio.wait_for(ready.wait(), 20)
        # the daemon installs its SIGTERM handler just after logging "ready" (a SIGTERM inside that
        # window kills it outright, no goodbyes): give it a moment
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        await raw.read_until_closed(timeout=15)
        assert raw.disconnect_reason() == DisconnectReason.CLIENT_QUITTING, "".join(log_lines[-20:])
        assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        log_task.cancel()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
