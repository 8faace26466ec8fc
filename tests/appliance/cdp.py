"""A small driver for headless Chromium over the DevTools protocol (a websocket on 127.0.0.1).

Enough for the status page's browser tests: open a page at a given viewport width (as a phone, with
its viewport meta honoured, below 600 px), evaluate an expression in it (the page itself carries
no scripts; DevTools evaluates regardless) and take a full-page screenshot. The websocket client is
the few lines of RFC 6455 a local, trusted peer needs: masked text frames out, unmasked frames in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from tests.appliance.pairing_fixtures import chromium_args

START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 60.0
_LISTENING = re.compile(rb"DevTools listening on (ws://127\.0\.0\.1:(\d+)/\S+)")


class WebSocket:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def connect(cls, url: str) -> WebSocket:
        m = re.match(r"ws://([^/:]+):(\d+)(/.*)", url)
        assert m, url
        host, port, path = m.group(1), int(m.group(2)), m.group(3)
        assert host == "127.0.0.1", "the driver talks to a local browser only"
        reader, writer = await asyncio.open_connection(host, port, limit=64 * 1024 * 1024)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head[:200]
        return cls(reader, writer)

    async def send(self, text: str) -> None:
        data = text.encode()
        mask = os.urandom(4)
        n = len(data)
        if n < 126:
            head = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 1 << 16:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        self.writer.write(head + mask + masked)
        await self.writer.drain()

    async def recv(self) -> str:
        message = b""
        while True:
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                (n,) = struct.unpack("!H", await self.reader.readexactly(2))
            elif n == 127:
                (n,) = struct.unpack("!Q", await self.reader.readexactly(8))
            payload = await self.reader.readexactly(n)
            opcode = b0 & 0x0F
            if opcode == 0x8:
                raise ConnectionError("the browser closed the DevTools connection")
            if opcode in (0x9, 0xA):  # ping / pong: not used by Chromium here
                continue
            message += payload
            if b0 & 0x80:
                return message.decode()

    def close(self) -> None:
        self.writer.close()


class Browser:
    """``async with Browser() as b: await b.open(url, width)`` …; one page, one profile, then gone."""

    def __init__(self) -> None:
        self._profile = Path(tempfile.mkdtemp(prefix="pimail-chromium-"))
        self._proc: asyncio.subprocess.Process | None = None
        self._ws: WebSocket | None = None
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    async def __aenter__(self) -> Browser:
        self._proc = await asyncio.create_subprocess_exec(
            *chromium_args(self._profile), "--remote-debugging-address=127.0.0.1",
            "--remote-debugging-port=0", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        assert self._proc.stderr is not None
        port = await asyncio.wait_for(self._port(self._proc.stderr), START_TIMEOUT_S)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET /json/list HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CALL_TIMEOUT_S)
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        assert length, head  # DevTools keeps the connection open: read exactly the body
        body = await asyncio.wait_for(reader.readexactly(int(length.group(1))), CALL_TIMEOUT_S)
        writer.close()
        targets = json.loads(body)
        page = next(t for t in targets if t.get("type") == "page")
        self._ws = await WebSocket.connect(page["webSocketDebuggerUrl"])
        await self.call("Page.enable")
        return self

    async def _port(self, stderr: asyncio.StreamReader) -> int:
        while True:
            line = await stderr.readline()
            if not line:
                raise AssertionError("chromium exited before DevTools listened")
            m = _LISTENING.search(line)
            if m:
                # keep draining stderr so chromium never blocks on a full pipe
                asyncio.get_running_loop().create_task(self._drain(stderr))
                return int(m.group(2))

    @staticmethod
    async def _drain(stderr: asyncio.StreamReader) -> None:
        with contextlib.suppress(Exception):
            while await stderr.read(65536):
                pass

    async def __aexit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._ws is not None:
            self._ws.close()
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        self._next_id += 1
        ident = self._next_id
        await self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))

        async def answer() -> dict[str, Any]:
            assert self._ws is not None
            while True:
                msg = json.loads(await self._ws.recv())
                if msg.get("id") == ident:
                    if "error" in msg:
                        raise AssertionError(f"{method}: {msg['error']}")
                    result: dict[str, Any] = msg.get("result", {})
                    return result
                self._events.append(msg)

        return await asyncio.wait_for(answer(), CALL_TIMEOUT_S)

    async def _event(self, name: str) -> dict[str, Any]:
        assert self._ws is not None
        for i, msg in enumerate(self._events):
            if msg.get("method") == name:
                return self._events.pop(i)
        while True:
            msg = json.loads(await asyncio.wait_for(self._ws.recv(), CALL_TIMEOUT_S))
            if msg.get("method") == name:
                return msg
            self._events.append(msg)

    async def open(self, url: str, width: int, height: int = 900) -> None:
        """Load ``url`` in a viewport ``width`` CSS pixels wide (a phone below 600 px)."""
        await self.call("Emulation.setDeviceMetricsOverride", width=width, height=height,
                        deviceScaleFactor=1, mobile=width < 600)
        self._events.clear()
        await self.call("Page.navigate", url=url)
        await self._event("Page.loadEventFired")

    async def evaluate(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path) -> None:
        """The whole page (not just the viewport) as a PNG."""
        metrics = await self.call("Page.getLayoutMetrics")
        size = metrics.get("cssContentSize") or metrics["contentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
        shot = await self.call("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))
