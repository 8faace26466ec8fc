"""Real nodes on 127.0.0.1 for the transport tests, with a small echo capability."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pimail.config import NodeConfig
from pimail.crypto.keys import Enode, NodeKey
from pimail.node.capability import Capability, PeerLike, ProtocolError
from pimail.node.server import NodeServer

ECHO_REQUEST = 0
ECHO_REPLY = 1
FAIL = 2  # handler raises ProtocolError


@dataclass
class EchoCapability(Capability):
    """``echo/1``: code 0 is answered with code 1 carrying the same payload; code 2 is a protocol error."""

    name: str = "echo"
    version: int = 1
    length: int = 3
    started: list[PeerLike] = field(default_factory=list)
    stopped: list[PeerLike] = field(default_factory=list)
    replies: list[tuple[PeerLike, bytes]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    async def peer_started(self, peer: PeerLike) -> None:
        self.started.append(peer)
        self.event.set()

    async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
        if code == ECHO_REQUEST:
            await peer.send_wait(self.name, ECHO_REPLY, payload)
        elif code == ECHO_REPLY:
            self.replies.append((peer, payload))
            self.event.set()
        elif code == FAIL:
            raise ProtocolError("test asked for a failure")

    def peer_stopped(self, peer: PeerLike) -> None:
        self.stopped.append(peer)
        self.event.set()

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            self.event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("condition not reached in time")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), left)


def fast_config(data_dir: Path, **kw: Any) -> NodeConfig:
    base: dict[str, Any] = dict(listen="127.0.0.1:0", data_dir=data_dir, handshake_timeout_s=2.0,
                                redial_min_s=0.1, redial_max_s=0.4)
    base.update(kw)
    return NodeConfig(**base)


@dataclass
class NodeUnderTest:
    key: NodeKey
    server: NodeServer
    echo: EchoCapability

    @property
    def enode(self) -> Enode:
        return Enode(self.key.public, "127.0.0.1", self.server.listen_port)


@contextlib.asynccontextmanager
async def running_node(tmp: Path, *, caps: list[Capability] | None = None, key: NodeKey | None = None,
                       **cfg: Any) -> AsyncIterator[NodeUnderTest]:
    key = key or NodeKey.generate()
    echo = EchoCapability()
    server = NodeServer(key, fast_config(tmp, **cfg), caps if caps is not None else [echo])
    await server.start()
    try:
        yield NodeUnderTest(key, server, echo)
    finally:
        await server.stop()


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)
