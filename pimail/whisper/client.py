"""A one-peer Whisper session for client tools (``pimail post`` / ``pimail watch``).

Dials one node as an ordinary peer with a throwaway key, runs a ``WhisperService`` over the
connection and waits for the peer's Status, so callers know its PoW requirement and formula.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from pimail.config import NodeConfig, WhisperConfig
from pimail.crypto.keys import Enode, KeyError_, NodeKey
from pimail.errors import RuntimeFailure, UserError
from pimail.node.peer import Peer
from pimail.node.server import NodeServer
from pimail.whisper.service import PeerState, WhisperService

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0


@dataclass
class ClientSession:
    node: NodeServer
    whisper: WhisperService
    peer: Peer
    state: PeerState


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
    enode: Enode, config: WhisperConfig | None = None, timeout: float = CONNECT_TIMEOUT_S
) -> AsyncIterator[ClientSession]:
    whisper = WhisperService(config or WhisperConfig(min_pow=0.0), archive=None,
                             clock_trusted=lambda: True, health=None, trusted=set())
    with tempfile.TemporaryDirectory(prefix="pimail-client-") as tmp:
        node = NodeServer(NodeKey.generate(),
                          NodeConfig(listen="127.0.0.1:0", data_dir=Path(tmp), max_peers=2), [whisper])
        await node.start()
        try:
            try:
                peer = await node.connect(enode, timeout=timeout)
            except (OSError, ConnectionError, TimeoutError) as exc:
                reason = str(exc) or type(exc).__name__
                raise RuntimeFailure(f"cannot connect to {enode.host}:{enode.port}: {reason}") from None
            try:
                state = await whisper.wait_status(peer, timeout)
            except (TimeoutError, ConnectionError):
                why = peer.close_reason or "no Whisper Status received"
                raise RuntimeFailure(f"{enode.host}:{enode.port} did not speak shh/6: {why}") from None
            yield ClientSession(node, whisper, peer, state)
        finally:
            await node.stop()
            await whisper.close()


async def wait_closed_or(peer: Peer, seconds: float | None) -> bool:
    """Sleep ``seconds`` (None = forever) unless the peer goes away first; True if it did."""
    try:
        await asyncio.wait_for(peer.closed_event.wait(), seconds)
    except TimeoutError:
        return False
    return True
