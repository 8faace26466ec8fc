"""The seam between the transport and sub-protocols such as shh/6.

A ``Capability`` is registered with the node server. After a peer's Hello shares the capability,
the server calls ``peer_started``; every message in the capability's id range is handed to
``handle_message`` with its *relative* code and its (decompressed) RLP payload; ``peer_stopped``
runs once when the connection ends. The transport never parses sub-protocol payloads.
"""

from __future__ import annotations

import abc
from typing import Protocol

from pimail.devp2p.messages import DisconnectReason

__all__ = ["Capability", "DisconnectReason", "PeerLike", "ProtocolError", "shared_version"]


class ProtocolError(Exception):
    """Raised by a capability handler: the transport disconnects the peer with ``reason``."""

    def __init__(self, message: str, reason: DisconnectReason = DisconnectReason.SUBPROTOCOL_ERROR):
        super().__init__(message)
        self.reason = reason


class PeerLike(Protocol):
    """What a capability may use of a connected peer (implemented by ``pimail.node.peer.Peer``)."""

    @property
    def pubkey(self) -> bytes:
        """64-byte remote node public key (RLPx-authenticated)."""

    @property
    def node_id(self) -> bytes:
        """keccak256(pubkey): geth's enode.ID."""

    @property
    def client_id(self) -> str:
        """Client name from the peer's Hello, e.g. ``Geth/wnode/v1.8.27-stable/linux-amd64/go1.11``."""

    @property
    def remote_address(self) -> tuple[str, int]: ...

    @property
    def inbound(self) -> bool: ...

    @property
    def closed(self) -> bool: ...

    def send(self, capability: str, code: int, payload: bytes) -> bool:
        """Queue a message (relative code, RLP payload). False if the write buffer is full."""

    async def send_wait(self, capability: str, code: int, payload: bytes) -> None:
        """Queue a message, waiting while the peer's write buffer is full (backpressure)."""

    def disconnect(self, reason: DisconnectReason) -> None:
        """Send Disconnect with ``reason`` and close."""


def shared_version(peer: PeerLike, name: str, default: int) -> int:
    """The version of capability ``name`` negotiated with ``peer`` (after the Hello exchange)."""
    for cap_name, version in getattr(peer, "capabilities", ()):
        if cap_name == name:
            return int(version)
    return default


class Capability(abc.ABC):
    """A sub-protocol served by this node."""

    name: str
    version: int
    length: int  # number of message ids it uses

    @property
    def versions(self) -> tuple[int, ...]:
        """Every version offered in Hello (default: just ``version``)."""
        return (self.version,)

    @abc.abstractmethod
    async def peer_started(self, peer: PeerLike) -> None:
        """Peer is connected and shares this capability (e.g. send Status here)."""

    @abc.abstractmethod
    async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
        """One message; raise ``ProtocolError`` to disconnect the peer."""

    @abc.abstractmethod
    def peer_stopped(self, peer: PeerLike) -> None:
        """The connection ended (either side)."""
