"""The discovery v4 wire codec, sans-I/O: packet types, encoding, decoding, hash and signature.

``packet = hash || signature || packet-type || packet-data`` (devp2p discv4.md), where
``hash = keccak256(signature || type || data)`` and ``signature`` is the 65-byte recoverable
secp256k1 signature of ``keccak256(type || data)``. Ping and Pong carry the sender's ENR sequence
number (EIP-868), ENRRequest/ENRResponse fetch a record. Decoding follows EIP-8: extra list elements
and bytes after the list are ignored, a Ping's version is not checked. Nothing here does I/O or looks
at the clock except ``expired()``, which takes the time as an argument.

Every decoding failure raises ``WireError`` whose ``reason`` names the counter the transport bumps.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from pimail import rlpcodec
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import KeyError_, recover, sign

MAX_PACKET_SIZE = 1280  # bytes; discv4.md "The maximum size of any packet is 1280 bytes"
HASH_SIZE = 32
SIGNATURE_SIZE = 65
HEAD_SIZE = HASH_SIZE + SIGNATURE_SIZE  # 97, then the type byte
PROTOCOL_VERSION = 4
MAX_NEIGHBORS = 12  # nodes per Neighbors packet that always fit in 1280 bytes (geth v4wire.MaxNeighbors)
EXPIRATION_S = 20  # how far ahead our packets expire (geth v4_udp expiration)

PING = 0x01
PONG = 0x02
FINDNODE = 0x03
NEIGHBORS = 0x04
ENR_REQUEST = 0x05
ENR_RESPONSE = 0x06

PACKET_NAMES = {PING: "ping", PONG: "pong", FINDNODE: "findnode", NEIGHBORS: "neighbors",
                ENR_REQUEST: "enrrequest", ENR_RESPONSE: "enrresponse"}


class WireError(ValueError):
    """A datagram that is not a valid discovery packet; ``reason`` is a short counter name."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Endpoint:
    """``[ip, udp-port, tcp-port]``; ``ip`` is "" when the packet carried no usable address."""

    ip: str
    udp: int
    tcp: int

    def encode_item(self) -> list[object]:
        return [_ip_bytes(self.ip), self.udp, self.tcp]


@dataclass(frozen=True)
class NodeInfo:
    """One entry of a Neighbors packet: ``[ip, udp-port, tcp-port, node-pubkey(64)]``."""

    ip: str
    udp: int
    tcp: int
    pubkey: bytes


@dataclass(frozen=True)
class Ping:
    version: int
    sender: Endpoint
    recipient: Endpoint
    expiration: int
    enr_seq: int | None = None
    type = PING

    def items(self) -> list[object]:
        out: list[object] = [self.version, self.sender.encode_item(), self.recipient.encode_item(),
                             self.expiration]
        if self.enr_seq is not None:
            out.append(self.enr_seq)
        return out


@dataclass(frozen=True)
class Pong:
    recipient: Endpoint  # the address the Ping came from, as we saw it
    ping_hash: bytes
    expiration: int
    enr_seq: int | None = None
    type = PONG

    def items(self) -> list[object]:
        out: list[object] = [self.recipient.encode_item(), self.ping_hash, self.expiration]
        if self.enr_seq is not None:
            out.append(self.enr_seq)
        return out


@dataclass(frozen=True)
class FindNode:
    target: bytes  # a 64-byte public key; only its keccak256 matters
    expiration: int
    type = FINDNODE

    def items(self) -> list[object]:
        return [self.target, self.expiration]


@dataclass(frozen=True)
class Neighbors:
    nodes: tuple[NodeInfo, ...]
    expiration: int
    type = NEIGHBORS

    def items(self) -> list[object]:
        nodes = [[_ip_bytes(n.ip), n.udp, n.tcp, n.pubkey] for n in self.nodes]
        return [nodes, self.expiration]


@dataclass(frozen=True)
class ENRRequest:
    expiration: int
    type = ENR_REQUEST

    def items(self) -> list[object]:
        return [self.expiration]


@dataclass(frozen=True)
class ENRResponse:
    request_hash: bytes
    record: bytes  # the RLP of the record, checked by pimail.discovery.enr
    type = ENR_RESPONSE

    def items(self) -> list[object]:
        return [self.request_hash, rlpcodec.decode(self.record)]


Packet: TypeAlias = "Ping | Pong | FindNode | Neighbors | ENRRequest | ENRResponse"


@dataclass(frozen=True)
class Decoded:
    """A verified packet: what it says, who signed it (64-byte key) and its hash (for Pong replies)."""

    packet: Packet
    sender_pubkey: bytes
    hash: bytes


# -- encoding ----------------------------------------------------------------------------------------
def encode(private_key: bytes, packet: Packet) -> tuple[bytes, bytes]:
    """Sign and frame ``packet``; return ``(datagram, hash)``. Raises ``ValueError`` if over 1280 bytes."""
    body = bytes((packet.type,)) + rlpcodec.encode(packet.items())
    signature = sign(private_key, keccak256(body))
    digest = keccak256(signature + body)
    datagram = digest + signature + body
    if len(datagram) > MAX_PACKET_SIZE:
        name = PACKET_NAMES[packet.type]
        raise ValueError(f"{name} packet is {len(datagram)} bytes (max {MAX_PACKET_SIZE})")
    return datagram, digest


def _ip_bytes(ip: str) -> bytes:
    if not ip:
        return b""
    return ipaddress.ip_address(ip).packed


def expired(expiration: int, now: float) -> bool:
    """True when the packet's absolute UNIX expiration lies in the past."""
    return expiration < now


# -- decoding ----------------------------------------------------------------------------------------
def decode(datagram: bytes) -> Decoded:
    """Check size, hash and signature, then parse; raise ``WireError`` on any fault."""
    if len(datagram) > MAX_PACKET_SIZE:
        raise WireError(f"packet is {len(datagram)} bytes (max {MAX_PACKET_SIZE})", "too_large")
    if len(datagram) < HEAD_SIZE + 1:
        raise WireError(f"packet is {len(datagram)} bytes (header alone is {HEAD_SIZE + 1})", "too_small")
    digest = datagram[:HASH_SIZE]
    if keccak256(datagram[HASH_SIZE:]) != digest:
        raise WireError("packet hash does not match its contents", "bad_hash")
    body = datagram[HEAD_SIZE:]
    try:
        pubkey = recover(keccak256(body), datagram[HASH_SIZE:HEAD_SIZE])
    except KeyError_ as exc:
        raise WireError(f"bad signature: {exc}", "bad_signature") from None
    ptype = body[0]
    parse = _PARSERS.get(ptype)
    if parse is None:
        raise WireError(f"unknown packet type 0x{ptype:02x}", "unknown_type")
    name = PACKET_NAMES[ptype]
    try:
        fields = rlpcodec.decode(body[1:], strict=False)  # EIP-8: ignore data after the list
    except rlpcodec.RlpError as exc:
        raise WireError(f"{name}: {exc}", "malformed") from None
    if not isinstance(fields, list):
        raise WireError(f"{name}: packet data is not an RLP list", "malformed")
    try:
        packet = parse(fields)
    except (ValueError, IndexError, TypeError) as exc:
        raise WireError(f"{name}: {exc}", "malformed") from None
    return Decoded(packet, pubkey, bytes(digest))


def _bytes(item: rlpcodec.Item, what: str) -> bytes:
    if not isinstance(item, bytes):
        raise ValueError(f"{what} is a list, expected a string")
    return item


def _uint(item: rlpcodec.Item, what: str, max_bytes: int = 8) -> int:
    raw = _bytes(item, what)
    if len(raw) > max_bytes:
        raise ValueError(f"{what} is {len(raw)} bytes (max {max_bytes})")
    if raw[:1] == b"\x00":
        raise ValueError(f"{what} has leading zero bytes")
    return int.from_bytes(raw, "big")


def _ip(item: rlpcodec.Item, what: str, *, strict: bool) -> str:
    raw = _bytes(item, what)
    if len(raw) in (4, 16):
        return str(ipaddress.ip_address(raw))
    if strict:
        raise ValueError(f"{what} is {len(raw)} bytes (an IP address is 4 or 16)")
    return ""


def _endpoint(item: rlpcodec.Item, what: str) -> Endpoint:
    if not isinstance(item, list) or len(item) < 3:
        raise ValueError(f"{what} is not an [ip, udp, tcp] list")
    # geth 1.8 and others put junk in "from"; an unusable IP is kept as "" rather than refused
    return Endpoint(_ip(item[0], f"{what} ip", strict=False), _uint(item[1], f"{what} udp", 2),
                    _uint(item[2], f"{what} tcp", 2))


def _optional_seq(fields: list[rlpcodec.Item], index: int) -> int | None:
    # EIP-868 enr-seq; a list or an over-long string in that place is an EIP-8 extra, not a seq
    if len(fields) <= index:
        return None
    item = fields[index]
    if not isinstance(item, bytes) or len(item) > 8 or item[:1] == b"\x00":
        return None
    return int.from_bytes(item, "big")


def _need(fields: list[rlpcodec.Item], count: int) -> None:
    if len(fields) < count:
        raise ValueError(f"{len(fields)} fields, expected at least {count}")


def _parse_ping(f: list[rlpcodec.Item]) -> Ping:
    _need(f, 4)
    # EIP-8: the version is not checked (any size of integer string is accepted)
    version = int.from_bytes(_bytes(f[0], "version")[:8], "big")
    return Ping(version, _endpoint(f[1], "from"), _endpoint(f[2], "to"), _uint(f[3], "expiration"),
                _optional_seq(f, 4))


def _parse_pong(f: list[rlpcodec.Item]) -> Pong:
    _need(f, 3)
    ping_hash = _bytes(f[1], "ping-hash")
    if len(ping_hash) != HASH_SIZE:
        raise ValueError(f"ping-hash is {len(ping_hash)} bytes")
    return Pong(_endpoint(f[0], "to"), ping_hash, _uint(f[2], "expiration"), _optional_seq(f, 3))


def _parse_findnode(f: list[rlpcodec.Item]) -> FindNode:
    _need(f, 2)
    target = _bytes(f[0], "target")
    if len(target) != 64:
        raise ValueError(f"target is {len(target)} bytes (a public key is 64)")
    return FindNode(target, _uint(f[1], "expiration"))


def _parse_neighbors(f: list[rlpcodec.Item]) -> Neighbors:
    _need(f, 2)
    items = f[0]
    if not isinstance(items, list):
        raise ValueError("nodes is not a list")
    nodes: list[NodeInfo] = []
    for i, entry in enumerate(items):
        if not isinstance(entry, list) or len(entry) < 4:
            raise ValueError(f"node {i} is not an [ip, udp, tcp, id] list")
        pubkey = _bytes(entry[3], f"node {i} id")
        if len(pubkey) != 64:
            raise ValueError(f"node {i} id is {len(pubkey)} bytes")
        nodes.append(NodeInfo(_ip(entry[0], f"node {i} ip", strict=True), _uint(entry[1], f"node {i} udp", 2),
                              _uint(entry[2], f"node {i} tcp", 2), pubkey))
    return Neighbors(tuple(nodes), _uint(f[1], "expiration"))


def _parse_enr_request(f: list[rlpcodec.Item]) -> ENRRequest:
    _need(f, 1)
    return ENRRequest(_uint(f[0], "expiration"))


def _parse_enr_response(f: list[rlpcodec.Item]) -> ENRResponse:
    _need(f, 2)
    request_hash = _bytes(f[0], "request-hash")
    if len(request_hash) != HASH_SIZE:
        raise ValueError(f"request-hash is {len(request_hash)} bytes")
    record = f[1]
    if not isinstance(record, list):
        raise ValueError("record is not a list")
    return ENRResponse(request_hash, rlpcodec.encode(record))


_PARSERS: dict[int, Callable[[list[rlpcodec.Item]], Packet]] = {
    PING: _parse_ping, PONG: _parse_pong, FINDNODE: _parse_findnode, NEIGHBORS: _parse_neighbors,
    ENR_REQUEST: _parse_enr_request, ENR_RESPONSE: _parse_enr_response,
}
