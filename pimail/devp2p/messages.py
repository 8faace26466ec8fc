"""devp2p base-protocol messages (PROTOCOL.md §2.1–2.6) as frozen dataclasses with encode/decode."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from pimail import rlpcodec

BASE_PROTOCOL_VERSION = 5  # geth baseProtocolVersion; ≥ 5 enables snappy
BASE_PROTOCOL_LENGTH = 16  # ids 0x00-0x0f are reserved for p2p; capabilities start at 16
MAX_HELLO_BYTES = 2 * 1024  # geth baseProtocolMaxMsgSize

HELLO = 0x00
DISCONNECT = 0x01
PING = 0x02
PONG = 0x03

EMPTY_LIST = b"\xc0"


class DisconnectReason(enum.IntEnum):
    """devp2p disconnect reasons (PROTOCOL.md §2.5)."""

    REQUESTED = 0x00
    TCP_ERROR = 0x01
    PROTOCOL_BREACH = 0x02
    USELESS_PEER = 0x03
    TOO_MANY_PEERS = 0x04
    ALREADY_CONNECTED = 0x05
    INCOMPATIBLE_VERSION = 0x06
    INVALID_IDENTITY = 0x07
    CLIENT_QUITTING = 0x08
    UNEXPECTED_IDENTITY = 0x09
    CONNECTED_TO_SELF = 0x0A
    READ_TIMEOUT = 0x0B
    SUBPROTOCOL_ERROR = 0x10


class MessageError(ValueError):
    """A base-protocol message could not be decoded (a protocol breach)."""


def encode_msg_id(code: int) -> bytes:
    """RLP of the message id as an integer: 0 → 0x80, 1..127 one byte, larger as a string."""
    if code == 0:
        return b"\x80"
    if code < 0x80:
        return bytes((code,))
    if code < 0x100:  # shh/6 ids from offset 16 reach 143 (p2p response 127 + 16)
        return bytes((0x81, code))
    return rlpcodec.encode(code)


def decode_msg_id(frame_data: bytes) -> tuple[int, int]:
    """(message id, offset of the payload) from frame-data; raises MessageError."""
    if not frame_data:
        raise MessageError("empty frame")
    first = frame_data[0]
    if first < 0x80:
        return first, 1
    if first == 0x80:
        return 0, 1
    if 0x81 <= first <= 0x88:
        n = first - 0x80
        raw = frame_data[1 : 1 + n]
        if len(raw) != n or raw[0] == 0 or (n == 1 and raw[0] < 0x80):
            raise MessageError("non-canonical or truncated message id")
        return int.from_bytes(raw, "big"), 1 + n
    raise MessageError(f"message id is not an RLP integer (first byte {first:#x})")


def _uint(value: Any, what: str) -> int:
    if not isinstance(value, bytes):
        raise MessageError(f"{what} must be an integer")
    if len(value) > 8:
        raise MessageError(f"{what} too large")
    return int.from_bytes(value, "big")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, bytes):
        raise MessageError(f"{what} must be a string")
    return value.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class Hello:
    """``[protocolVersion, clientId, [[cap, version], ...], listenPort, nodeId, ...]``."""

    version: int
    client_id: str
    capabilities: tuple[tuple[str, int], ...]
    listen_port: int
    node_id: bytes  # 64-byte public key

    def encode(self) -> bytes:
        caps = [[name.encode(), ver] for name, ver in self.capabilities]
        return rlpcodec.encode(
            [self.version, self.client_id.encode(), caps, self.listen_port, self.node_id]
        )

    @classmethod
    def decode(cls, payload: bytes) -> Hello:
        """Decode a Hello payload, ignoring any extra trailing elements (EIP-8)."""
        try:
            items = rlpcodec.decode(payload)
        except rlpcodec.RlpError as exc:
            raise MessageError(f"Hello is not RLP: {exc}") from exc
        if not isinstance(items, list) or len(items) < 5:
            raise MessageError("Hello must be a list of at least 5 elements")
        caps_raw = items[2]
        if not isinstance(caps_raw, list):
            raise MessageError("Hello capabilities must be a list")
        caps: list[tuple[str, int]] = []
        for cap in caps_raw:
            if not isinstance(cap, list) or len(cap) < 2:
                raise MessageError("Hello capability must be [name, version]")
            caps.append((_text(cap[0], "capability name"), _uint(cap[1], "capability version")))
        node_id = items[4]
        if not isinstance(node_id, bytes):
            raise MessageError("Hello node id must be a string")
        return cls(
            version=_uint(items[0], "Hello version"),
            client_id=_text(items[1], "Hello client id"),
            capabilities=tuple(caps),
            listen_port=_uint(items[3], "Hello listen port"),
            node_id=node_id,
        )


@dataclass(frozen=True)
class Disconnect:
    """``[reason]``; a bare integer and an empty payload are accepted on receive."""

    reason: int

    def encode(self) -> bytes:
        return rlpcodec.encode([self.reason])

    @classmethod
    def decode(cls, payload: bytes) -> Disconnect:
        try:
            item = rlpcodec.decode(payload, strict=False)
        except rlpcodec.RlpError as exc:
            raise MessageError(f"Disconnect is not RLP: {exc}") from exc
        if isinstance(item, list):
            if not item:
                return cls(DisconnectReason.REQUESTED)
            item = item[0]
        return cls(_uint(item, "disconnect reason"))

    @property
    def reason_name(self) -> str:
        try:
            return DisconnectReason(self.reason).name.lower().replace("_", " ")
        except ValueError:
            return f"unknown reason {self.reason:#x}"
