"""Real pimail nodes on 127.0.0.1 speaking shh/6, waku/x or both over one relay core, and a raw
waku peer that can send anything and records what it receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pimail.archive.base import Archive
from pimail.config import NodeConfig, WakuConfig, WhisperConfig
from pimail.crypto.keys import NodeKey
from pimail.envelope.codec import Envelope
from pimail.node.capability import Capability, PeerLike
from pimail.node.peer import Peer
from pimail.node.server import NodeServer
from pimail.relay.core import RelayCore
from pimail.waku.service import WakuService
from pimail.whisper.service import WhisperService
from tests.whisper.nodes import until

__all__ = ["DualNode", "RawWaku", "raw_waku_peer", "start_dual", "until"]


class WakuV0Only(WakuService):
    """A waku service offering waku/0 alone (an older Status client)."""

    @property
    def versions(self) -> tuple[int, ...]:
        return (0,)


@dataclass
class DualNode:
    server: NodeServer
    core: RelayCore
    whisper: WhisperService | None
    waku: WakuService | None
    seen: list[Envelope]

    async def stop(self) -> None:
        await self.server.stop()
        await self.core.close()


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
) -> DualNode:
    cfg = config or WhisperConfig(min_pow=0.000002)
    core = RelayCore(cfg, archive=archive, clock_trusted=clock_trusted)
    caps: list[Capability] = []
    whisper = WhisperService(cfg, archive=archive, clock_trusted=clock_trusted, core=core) if shh else None
    if whisper is not None:
        caps.append(whisper)
    w: WakuService | None = None
    if waku:
        w = (WakuV0Only if waku0_only else WakuService)(waku_config or WakuConfig(), core)
        caps.append(w)
    tmp.mkdir(parents=True, exist_ok=True)
    server = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=tmp), caps)
    await server.start()
    seen: list[Envelope] = []
    core.listeners.append(_Seen(seen))
    return DualNode(server, core, whisper, w, seen)


@dataclass
class RawWaku(Capability):
    """A scriptable waku peer (waku/1 by default): records every message, sends what the test says."""

    name: str = "waku"
    version: int = 1
    length: int = 128
    received: list[tuple[int, bytes]] = field(default_factory=list)
    peers: list[PeerLike] = field(default_factory=list)

    async def peer_started(self, peer: PeerLike) -> None:
        self.peers.append(peer)

    async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
        self.received.append((code, payload))

    def peer_stopped(self, peer: PeerLike) -> None:
        pass

    def codes(self) -> list[int]:
        return [c for c, _ in self.received]

    def payloads(self, code: int) -> list[bytes]:
        return [p for c, p in self.received if c == code]


async def raw_waku_peer(tmp: Path, target: NodeServer, version: int = 1) -> tuple[NodeServer, RawWaku, Peer]:
    cap = RawWaku(version=version)
    tmp.mkdir(parents=True, exist_ok=True)
    server = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=tmp), [cap])
    await server.start()
    peer = await server.connect(target.enode)
    await until(lambda: bool(cap.peers), what="raw waku peer started")
    await until(lambda: 0 in cap.codes(), what="waku Status from pimail")
    return server, cap, peer
