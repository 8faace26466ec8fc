"""One devp2p connection above RLPx framing, as a sans-I/O state machine (PROTOCOL.md §2).

``P2PSession`` owns the connection's ``FrameCodec``. Feed it socket bytes with ``receive_data``; it
returns typed events and queues any automatic replies (Pong) for ``data_to_send``. Sending a
message (``send_message``, ``ping``, ``disconnect``) also queues wire bytes. Every protocol
violation raises ``SessionError`` carrying the disconnect reason (``None``: close silently) and the
name of the counter the node should increment.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from pimail.devp2p import compression
from pimail.devp2p.capabilities import CapabilitySpec, SharedCapability, match_capabilities
from pimail.devp2p.messages import (
    BASE_PROTOCOL_LENGTH,
    BASE_PROTOCOL_VERSION,
    DISCONNECT,
    EMPTY_LIST,
    HELLO,
    MAX_HELLO_BYTES,
    PING,
    PONG,
    Disconnect,
    DisconnectReason,
    Hello,
    MessageError,
    decode_msg_id,
    encode_msg_id,
)
from pimail.rlpx.frame import FrameCodec, FrameError

MAX_MESSAGE_SIZE = (1 << 24) - 1  # uncompressed payload cap (geth)
UNREADABLE_REASON = -1  # DisconnectReceived.reason when the payload could not be decoded
PRE_HELLO_FRAME_SLACK = 16  # message id and RLP list header around a maximal Hello


class SessionState(enum.Enum):
    AWAITING_HELLO = "awaiting hello"  # our Hello is sent, theirs not yet received
    ACTIVE = "active"
    CLOSED = "closed"  # a Disconnect was sent or received, or the stream broke


class SessionError(Exception):
    """The peer broke the protocol; close with ``reason`` (None = without a Disconnect message)."""

    def __init__(self, message: str, reason: DisconnectReason | None, counter: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.counter = counter


@dataclass(frozen=True)
class HelloReceived:
    hello: Hello
    shared: tuple[SharedCapability, ...]


@dataclass(frozen=True)
class MessageReceived:
    capability: str
    code: int  # relative to the capability's offset
    payload: bytes  # decompressed RLP payload


@dataclass(frozen=True)
class PingReceived:
    """A Ping arrived; the Pong is already queued."""


@dataclass(frozen=True)
class PongReceived:
    pass


@dataclass(frozen=True)
class DisconnectReceived:
    reason: int
    reason_name: str


Event = HelloReceived | MessageReceived | PingReceived | PongReceived | DisconnectReceived


class P2PSession:
    """The devp2p state machine for one connection."""

    def __init__(
        self,
        codec: FrameCodec,
        local_hello: Hello,
        capabilities: Sequence[CapabilitySpec],
        remote_pubkey: bytes,
        *,
        max_message_size: int = MAX_MESSAGE_SIZE,
    ) -> None:
        self.codec = codec
        self.local_hello = local_hello
        self.capabilities = list(capabilities)
        self.remote_pubkey = remote_pubkey
        self.max_message_size = max_message_size
        self.state = SessionState.AWAITING_HELLO
        self.remote_hello: Hello | None = None
        self.shared: tuple[SharedCapability, ...] = ()
        self._by_name: dict[str, SharedCapability] = {}
        self.snappy = False
        self._out: list[bytes] = []
        self.bytes_in = 0
        self.messages_in = 0
        self.messages_out = 0
        self._out.append(codec.encode(encode_msg_id(HELLO) + local_hello.encode()))
        # Until the peer's Hello arrives only a Hello (≤ 2 KiB) or a Disconnect is legal: refuse big
        # frames before buffering them, so unidentified connections cannot make us hold megabytes.
        self._frame_cap = codec.max_frame_size
        codec.max_frame_size = min(self._frame_cap, MAX_HELLO_BYTES + PRE_HELLO_FRAME_SLACK)

    # -- outgoing -------------------------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Drain the wire bytes queued so far."""
        if not self._out:
            return b""
        data = self._out[0] if len(self._out) == 1 else b"".join(self._out)
        self._out.clear()
        return data

    def _queue(self, msg_id: int, payload: bytes) -> None:
        if self.snappy:
            if len(payload) > MAX_MESSAGE_SIZE:
                raise ValueError(f"message of {len(payload)} bytes exceeds the devp2p limit")
            payload = compression.compress(payload)
        self._out.append(self.codec.encode(encode_msg_id(msg_id) + payload))
        self.messages_out += 1

    def send_message(self, capability: str, code: int, payload: bytes) -> None:
        """Queue a sub-protocol message (relative code, RLP payload). Only once ACTIVE."""
        if self.state is not SessionState.ACTIVE:
            raise RuntimeError(f"cannot send {capability} messages in state {self.state.value}")
        shared = self._by_name.get(capability)
        if shared is None:
            raise KeyError(f"capability {capability!r} is not shared with this peer")
        if not 0 <= code < shared.spec.length:
            raise ValueError(f"{capability} code {code} outside 0..{shared.spec.length - 1}")
        self._queue(shared.offset + code, payload)

    def ping(self) -> None:
        if self.state is not SessionState.CLOSED:
            self._queue(PING, EMPTY_LIST)

    def disconnect(self, reason: DisconnectReason) -> None:
        """Queue a Disconnect (list form) and close the session; idempotent."""
        if self.state is SessionState.CLOSED:
            return
        self._queue(DISCONNECT, Disconnect(int(reason)).encode())
        self.state = SessionState.CLOSED

    def close(self) -> None:
        """Mark the session closed without sending anything (the stream broke)."""
        self.state = SessionState.CLOSED

    def shared_capability(self, name: str) -> SharedCapability | None:
        return self._by_name.get(name)

    # -- incoming -------------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> list[Event]:
        """Decode received bytes into events; raises SessionError on any violation."""
        if self.state is SessionState.CLOSED:
            return []
        self.bytes_in += len(data)
        try:
            frames = self.codec.feed(data)
        except FrameError as exc:
            reason = DisconnectReason.PROTOCOL_BREACH if exc.send_disconnect else None
            raise SessionError(str(exc), reason, exc.counter) from exc
        events: list[Event] = []
        for frame in frames:
            event = self._frame(frame)
            if event is not None:
                events.append(event)
                if isinstance(event, DisconnectReceived):
                    break  # nothing after a Disconnect counts
        return events

    def _breach(self, message: str, counter: str = "protocol_breach") -> SessionError:
        return SessionError(message, DisconnectReason.PROTOCOL_BREACH, counter)

    def _frame(self, frame: bytes) -> Event | None:
        try:
            msg_id, off = decode_msg_id(frame)
        except MessageError as exc:
            raise self._breach(str(exc)) from exc
        self.messages_in += 1
        payload = frame[off:]
        if self.state is SessionState.AWAITING_HELLO:
            if msg_id == HELLO:
                return self._hello(payload)
            if msg_id == DISCONNECT:
                return self._disconnect(payload)
            raise self._breach(f"message id {msg_id} before Hello")
        if msg_id == HELLO:
            raise self._breach("second Hello")
        if self.snappy:
            try:
                payload = compression.decompress(payload, self.max_message_size)
            except compression.SnappyError as exc:
                if msg_id == DISCONNECT:  # some clients send it plain: take the reason anyway
                    return self._disconnect(payload)
                raise self._breach(str(exc), "snappy_rejected") from exc
        elif len(payload) > self.max_message_size:
            raise self._breach(f"message of {len(payload)} bytes over the cap", "message_too_large")
        if msg_id >= BASE_PROTOCOL_LENGTH:
            for shared in self.shared:
                if shared.contains(msg_id):
                    return MessageReceived(shared.spec.name, msg_id - shared.offset, payload)
            raise self._breach(f"message id {msg_id} outside every shared capability", "unknown_message_id")
        if msg_id == PING:
            self._queue(PONG, EMPTY_LIST)
            return PingReceived()
        if msg_id == PONG:
            return PongReceived()
        if msg_id == DISCONNECT:
            return self._disconnect(payload)
        return None  # ids 4..15 are reserved; geth ignores them

    def _disconnect(self, payload: bytes) -> DisconnectReceived:
        self.state = SessionState.CLOSED
        try:
            msg = Disconnect.decode(payload)
        except MessageError:
            return DisconnectReceived(UNREADABLE_REASON, "unreadable reason")
        return DisconnectReceived(msg.reason, msg.reason_name)

    def _hello(self, payload: bytes) -> HelloReceived:
        if len(payload) > MAX_HELLO_BYTES:
            raise self._breach(f"Hello of {len(payload)} bytes (max {MAX_HELLO_BYTES})")
        try:
            hello = Hello.decode(payload)
        except MessageError as exc:
            raise self._breach(str(exc)) from exc
        if len(hello.node_id) != 64 or not any(hello.node_id):
            raise SessionError("Hello carries an invalid node id", DisconnectReason.INVALID_IDENTITY,
                               "invalid_identity")
        if hello.node_id != self.remote_pubkey:
            raise SessionError("Hello node id differs from the handshake key",
                               DisconnectReason.UNEXPECTED_IDENTITY, "identity_mismatch")
        shared = match_capabilities(self.capabilities, hello.capabilities)
        if not shared:
            offered = ", ".join(f"{n}/{v}" for n, v in hello.capabilities) or "none"
            raise SessionError(f"no shared capability (peer offers {offered})", DisconnectReason.USELESS_PEER,
                               "useless_peer")
        self.remote_hello = hello
        self.shared = tuple(shared)
        self._by_name = {s.spec.name: s for s in shared}
        self.snappy = hello.version >= BASE_PROTOCOL_VERSION
        self.codec.max_frame_size = self._frame_cap
        self.state = SessionState.ACTIVE
        return HelloReceived(hello, self.shared)
