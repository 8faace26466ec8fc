"""Real pimail nodes on 127.0.0.1 for the end-to-end tests — shh/6, waku/x or both over one relay
core — and raw shh/6 or waku peers that can send anything (garbage included) and record what they
receive. Shared by tests/whisper, tests/waku and tests/mailserver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pimail.archive.base import Archive
from pimail.config import NodeConfig, WakuConfig, WhisperConfig
from pimail.crypto.keys import NodeKey
from pimail.envelope.codec import Envelope
from pimail.health import HealthModel
from pimail.node.capability import Capability, PeerLike
from pimail.node.peer import Peer
from pimail.node.server import NodeServer
from pimail.relay.core import RelayCore
from pimail.waku.service import WakuService
from pimail.whisper.service import WhisperService

DEFAULT_MIN_POW = 0.000002


async def until(cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)


# -- pimail nodes ---------------------------------------------------------------------------------
class WakuV0Only(WakuService):
    """A waku service offering waku/0 alone (an older Status client)."""

    @property
    def versions(self) -> tuple[int, ...]:
        return (0,)


@dataclass
class DualNode:
    """A node with shh/6, waku or both (``None``: that protocol is off)."""

    server: NodeServer
    core: RelayCore
    whisper: WhisperService | None
    waku: WakuService | None
    seen: list[Envelope]

    async def stop(self) -> None:
        await self.server.stop()
        await self.core.close()


@dataclass
class Node(DualNode):
    """A shh/6-only node (what the Whisper tests run)."""

    whisper: WhisperService


class _Seen:
    def __init__(self, out: list[Envelope]) -> None:
        self.out = out

    def on_envelope(self, env: Envelope) -> None:
        self.out.append(env)


async def start_dual(
    tmp: Path,
    *,
    shh: bool = True,
    waku: bool = True,
    waku0_only: bool = False,
    archive: Archive | None = None,
    config: WhisperConfig | None = None,
    waku_config: WakuConfig | None = None,
    clock_trusted: Callable[[], bool] = lambda: True,
    client_id: str | None = None,
    health: HealthModel | None = None,
) -> DualNode:
    cfg = config or WhisperConfig(min_pow=DEFAULT_MIN_POW)
    core = RelayCore(cfg, archive=archive, clock_trusted=clock_trusted, health=health)
    caps: list[Capability] = []
    whisper = WhisperService(cfg, archive=archive, clock_trusted=clock_trusted, core=core) if shh else None
    if whisper is not None:
        caps.append(whisper)
    w: WakuService | None = None
    if waku:
        w = (WakuV0Only if waku0_only else WakuService)(waku_config or WakuConfig(), core)
        caps.append(w)
    tmp.mkdir(parents=True, exist_ok=True)
    server = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=tmp), caps,
                        client_id=client_id)
    await server.start()
    seen: list[Envelope] = []
    core.listeners.append(_Seen(seen))
    return DualNode(server, core, whisper, w, seen)


async def start_node(tmp: Path, config: WhisperConfig | None = None, **kw: Any) -> Node:
    """A shh/6-only node; ``kw`` as for ``start_dual`` (archive, clock_trusted, client_id, health)."""
    d = await start_dual(tmp, waku=False, config=config, **kw)
    assert d.whisper is not None
    return Node(d.server, d.core, d.whisper, None, d.seen)


# -- raw peers ------------------------------------------------------------------------------------
@dataclass
class RawPeer(Capability):
    """A scriptable peer of one capability: records every message; the test decides what to send."""

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


@dataclass
class RawShh(RawPeer):
    """A raw shh/6 peer."""


@dataclass
class RawWaku(RawPeer):
    """A raw waku peer (waku/1 by default)."""

    name: str = "waku"
    version: int = 1


async def connect_raw(tmp: Path, target: NodeServer, cap: RawPeer,
                      client_id: str | None = None) -> tuple[NodeServer, RawPeer, Peer]:
    """Start a node with ``cap`` alone, connect it to ``target`` and wait for target's Status."""
    tmp.mkdir(parents=True, exist_ok=True)
    server = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=tmp), [cap],
                        client_id=client_id)
    await server.start()
    peer = await server.connect(target.enode)
    await until(lambda: bool(cap.peers), what=f"raw {cap.name} peer started")
    await until(lambda: 0 in cap.codes(), what=f"{cap.name} Status from pimail")
    return server, cap, peer


async def raw_peer(tmp: Path, target: DualNode,
                   client_id: str | None = None) -> tuple[NodeServer, RawShh, Peer]:
    cap = RawShh()
    server, _, peer = await connect_raw(tmp, target.server, cap, client_id)
    return server, cap, peer


async def raw_waku_peer(tmp: Path, target: NodeServer, version: int = 1) -> tuple[NodeServer, RawWaku, Peer]:
    cap = RawWaku(version=version)
    server, _, peer = await connect_raw(tmp, target, cap)
    return server, cap, peer
