"""Real pimail nodes on 127.0.0.1 for the end-to-end Whisper tests, and a raw shh/6 peer that can
send anything (including garbage) and records what it receives."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pimail.archive.base import Archive
from pimail.config import NodeConfig, WhisperConfig
from pimail.crypto.keys import NodeKey
from pimail.envelope.codec import Envelope
from pimail.health import HealthModel
from pimail.node.capability import Capability, PeerLike
from pimail.node.peer import Peer
from pimail.node.server import NodeServer
from pimail.whisper.service import WhisperService


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


@dataclass
class Node:
    server: NodeServer
    whisper: WhisperService
    seen: list[Envelope]

    async def stop(self) -> None:
        await self.server.stop()
        await self.whisper.close()


class _Seen:
    def __init__(self, out: list[Envelope]) -> None:
        self.out = out

    def on_envelope(self, env: Envelope) -> None:
        self.out.append(env)


async def start_node(
    tmp: Path,
    config: WhisperConfig | None = None,
    *,
    archive: Archive | None = None,
    clock_trusted: Callable[[], bool] = lambda: True,
    client_id: str | None = None,
    health: HealthModel | None = None,
) -> Node:
    whisper = WhisperService(config or WhisperConfig(min_pow=0.000002), archive=archive,
                             clock_trusted=clock_trusted, health=health, trusted=set())
    tmp.mkdir(parents=True, exist_ok=True)
    server = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=tmp), [whisper],
                        client_id=client_id)
    await server.start()
    seen: list[Envelope] = []
    whisper.listeners.append(_Seen(seen))
    return Node(server, whisper, seen)


@dataclass
class RawShh(Capability):
    """A scriptable shh/6 peer: records every message; the test decides what to send."""

    name: str = "shh"
    version: int = 6
    length: int = 128
    received: list[tuple[int, bytes]] = field(default_factory=list)
    peers: list[PeerLike] = field(default_factory=list)
    auto_status: bytes | None = None  # sent to every peer on connect (to play a listening node)

    async def peer_started(self, peer: PeerLike) -> None:
        self.peers.append(peer)
        if self.auto_status is not None:
            peer.send(self.name, 0, self.auto_status)

    async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
        self.received.append((code, payload))

    def peer_stopped(self, peer: PeerLike) -> None:
        pass

    def codes(self) -> list[int]:
        return [c for c, _ in self.received]

    def payloads(self, code: int) -> list[bytes]:
        return [p for c, p in self.received if c == code]


async def raw_peer(tmp: Path, target: Node, client_id: str | None = None) -> tuple[NodeServer, RawShh, Peer]:
    cap = RawShh()
    tmp.mkdir(parents=True, exist_ok=True)
    server = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=tmp), [cap],
                        client_id=client_id)
    await server.start()
    peer = await server.connect(target.server.enode)
    await until(lambda: bool(cap.peers), what="raw peer started")
    await until(lambda: 0 in cap.codes(), what="Status from pimail")
    return server, cap, peer
