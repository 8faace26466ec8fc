"""A one-peer session for client tools (``pimail post`` / ``watch`` / ``history``), over waku or shh.

Dials one node as an ordinary peer with a throwaway key, runs a relay core with the waku and/or
shh/6 adapter over the connection (waku/1 when the remote offers it, unless told otherwise) and
waits for the peer's Status, so callers know its PoW requirement and formula.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pimail.config import NodeConfig, WakuConfig, WhisperConfig
from pimail.crypto.keys import Enode, KeyError_, NodeKey
from pimail.envelope.codec import Envelope
from pimail.errors import RuntimeFailure, UserError
from pimail.node.capability import Capability, PeerLike
from pimail.node.peer import Peer
from pimail.node.server import NodeServer
from pimail.relay.core import RelayCore, RelayPeer
from pimail.waku.service import WakuService
from pimail.whisper.service import WhisperService

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
EMPTY_BLOOM = bytes(64)  # matches no envelope: "send me nothing live"


PROTOCOLS = ("auto", "waku", "shh")


class ClientStack:
    """A client's relay core with the adapters for ``protocol``: ``"shh"`` (shh/6 only),
    ``"waku"`` (waku/1, waku/0 only) or ``"auto"`` (both offered; waku used when the remote has it).

    Exposes what client tools used of a ``WhisperService``: ``listeners``, ``post``,
    ``mark_trusted``, ``wait_status`` (for the protocol chosen with that peer).

    ``live=False`` is a history-only client, as a Status phone fetching history is: its Status asks
    for no live envelopes (an empty bloom, light node), so the mailserver does not push its relay
    pool at it. status-go and go-ethereum push a new full-bloom peer their whole pool in one
    Messages packet at their next transmission cycle, and past 16 MB (devp2p's message limit,
    about 50,000 envelopes) that write fails and they drop the connection."""

    def __init__(self, config: WhisperConfig, protocol: str = "auto", *, live: bool = True) -> None:
        if protocol not in PROTOCOLS:
            raise UserError(f"--protocol must be one of {', '.join(PROTOCOLS)} (got {protocol!r})")
        self.protocol = protocol
        self.core = RelayCore(config, archive=None, clock_trusted=lambda: True)
        self.capabilities: list[Capability] = []
        self.waku: WakuService | None = None
        self.whisper: WhisperService | None = None
        if protocol in ("auto", "waku"):
            self.waku = WakuService(WakuConfig(rate_limit_packets_per_s=config.rate_limit_packets_per_s,
                                               rate_limit_tolerance=config.rate_limit_tolerance), self.core)
            self.capabilities.append(self.waku)
        if protocol in ("auto", "shh"):
            self.whisper = WhisperService(config, archive=None, clock_trusted=lambda: True, core=self.core)
            self.capabilities.append(self.whisper)
        if not live:
            for service in (self.waku, self.whisper):
                if service is not None:
                    service.advertised_bloom = EMPTY_BLOOM
                    service.advertised_light = True

    @property
    def listeners(self) -> list[Any]:
        return self.core.listeners

    @property
    def counters(self) -> dict[str, int]:
        return self.core.counters

    def post(self, envelope: Envelope) -> bool:
        return self.core.post(envelope)

    def mark_trusted(self, node_id: bytes) -> None:
        self.core.mark_trusted(node_id)

    def chosen(self, peer: PeerLike) -> str:
        """The capability used with ``peer``: waku when both sides have it, else shh."""
        shared = {name for name, _version in getattr(peer, "capabilities", ())}
        if self.waku is not None and "waku" in shared:
            return "waku"
        if self.whisper is not None and "shh" in shared:
            return "shh"
        raise ConnectionError("the peer shares neither waku nor shh/6 with this client")

    async def wait_status(self, peer: PeerLike, timeout: float) -> RelayPeer:
        return await self.core.wait_status(peer, self.chosen(peer), timeout)

    async def close(self) -> None:
        await self.core.close()


@dataclass
class ClientSession:
    node: NodeServer
    whisper: ClientStack  # the name client tools always used; speaks whichever protocol was chosen
    peer: Peer
    state: RelayPeer
    protocol: str  # "shh/6", "waku/1" or "waku/0"


def parse_enode(text: str, flag: str = "--peer") -> Enode:
    try:
        enode = Enode.parse(text)
    except (KeyError_, ValueError) as exc:
        raise UserError(f"{flag}: {exc}") from None
    if enode.host is None or enode.port is None:
        raise UserError(f"{flag} needs host:port (enode://<key>@host:port)")
    return enode


@contextlib.asynccontextmanager
async def client_session(
    enode: Enode, config: WhisperConfig | None = None, timeout: float = CONNECT_TIMEOUT_S,
    protocol: str = "auto", *, live: bool = True,
) -> AsyncIterator[ClientSession]:
    """One connection; ``live=False`` asks the node for no relayed envelopes (see ``ClientStack``)."""
    stack = ClientStack(config or WhisperConfig(min_pow=0.0), protocol, live=live)
    with tempfile.TemporaryDirectory(prefix="pimail-client-") as tmp:
        node = NodeServer(NodeKey.generate(),
                          NodeConfig(listen="127.0.0.1:0", data_dir=Path(tmp), max_peers=2),
                          stack.capabilities)
        await node.start()
        try:
            try:
                peer = await node.connect(enode, timeout=timeout)
            except (OSError, ConnectionError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                raise RuntimeFailure(f"cannot connect to {enode.host}:{enode.port}: {reason}") from None
            try:
                state = await stack.wait_status(peer, timeout)
            except (TimeoutError, ConnectionError) as exc:
                why = peer.close_reason or str(exc) or "no Status received"
                want = {"auto": "waku or shh/6", "waku": "waku", "shh": "shh/6"}[protocol]
                raise RuntimeFailure(f"{enode.host}:{enode.port} did not speak {want}: {why}") from None
            yield ClientSession(node, stack, peer, state, state.protocol)
        finally:
            await node.stop()
            await stack.close()


async def wait_closed_or(peer: Peer, seconds: float | None) -> bool:
    """Sleep ``seconds`` (None = forever) unless the peer goes away first; True if it did."""
    try:
        await asyncio.wait_for(peer.closed_event.wait(), seconds)
    except TimeoutError:
        return False
    return True
