"""A hand-driven RLPx client for bad-input tests: it speaks exactly the bytes a test asks for."""

from __future__ import annotations

import asyncio
import contextlib

from pimail.crypto.keys import NodeKey
from pimail.devp2p import compression
from pimail.devp2p.messages import DISCONNECT, Disconnect, Hello, decode_msg_id, encode_msg_id
from pimail.rlpx.frame import FrameCodec
from pimail.rlpx.handshake import Initiator, Secrets


class RawPeer:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.key = NodeKey.generate()
        self.codec: FrameCodec | None = None
        self.received: list[bytes] = []  # frame-data received

    @classmethod
    async def open(cls, port: int) -> RawPeer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def handshake(self, remote_pub: bytes, *, eip8: bool = True) -> Secrets:
        init = Initiator(self.key, remote_pub, eip8=eip8)
        self.write(init.auth_packet())
        while True:
            data = await asyncio.wait_for(self.reader.read(65536), 5)
            assert data, "server closed during the handshake"
            secrets = init.receive(data)
            if secrets is not None:
                self.codec = FrameCodec(secrets)
                if init.leftover:
                    self.received += self.codec.feed(init.leftover)
                return secrets

    def send_frame(self, frame_data: bytes) -> bytes:
        assert self.codec is not None
        wire = self.codec.encode(frame_data)
        self.write(wire)
        return wire

    def send_hello(self, *, node_id: bytes | None = None, caps: tuple[tuple[str, int], ...] = (("echo", 1),),
                   version: int = 5) -> None:
        hello = Hello(version, "rawpeer", caps, 0, node_id if node_id is not None else self.key.public)
        self.send_frame(encode_msg_id(0) + hello.encode())

    def send_message(self, msg_id: int, payload: bytes, *, snappy: bool = True) -> None:
        self.send_frame(encode_msg_id(msg_id) + (compression.compress(payload) if snappy else payload))

    async def read_frames(self, count: int, timeout: float = 5.0) -> list[bytes]:
        assert self.codec is not None
        while len(self.received) < count:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                break
            self.received += self.codec.feed(data)
        return self.received

    async def read_until_closed(self, timeout: float = 5.0) -> bytes:
        """Everything the server sends until it closes the connection (bounded in time)."""
        chunks: list[bytes] = []
        async with asyncio.timeout(timeout):
            while True:
                try:
                    data = await self.reader.read(65536)
                except ConnectionResetError:
                    break
                if not data:
                    break
                chunks.append(data)
        raw = b"".join(chunks)
        if self.codec is not None and raw:
            self.received += self.codec.feed(raw)
        return raw

    def disconnect_reason(self) -> int | None:
        """The reason of the Disconnect among the received frames (snappy or not), None if none."""
        for frame in self.received:
            code, off = decode_msg_id(frame)
            if code != DISCONNECT:
                continue
            payload = frame[off:]
            with contextlib.suppress(compression.SnappyError):
                payload = compression.decompress(payload)
            return Disconnect.decode(payload).reason
        return None

    def close(self) -> None:
        self.writer.close()
