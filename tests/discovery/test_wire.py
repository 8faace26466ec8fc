"""The discv4 packet codec: EIP-8's vectors, round trips, and every malformed input refused by name."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimail import rlpcodec
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import NodeKey
from pimail.discovery import wire

KEY = NodeKey.generate()
ENDPOINT = wire.Endpoint("127.0.0.1", 30303, 30303)
EXP = 2_000_000_000


def _examples() -> list[wire.Packet]:
    node = wire.NodeInfo("127.0.0.2", 30304, 30305, NodeKey.generate().public)
    return [
        wire.Ping(4, ENDPOINT, wire.Endpoint("127.0.0.2", 30304, 0), EXP, 7),
        wire.Pong(ENDPOINT, b"\x11" * 32, EXP, 3),
        wire.FindNode(KEY.public, EXP),
        wire.Neighbors((node,) * wire.MAX_NEIGHBORS, EXP),
        wire.ENRRequest(EXP),
        wire.ENRResponse(b"\x22" * 32, rlpcodec.encode([b"\x01" * 64, 1, b"id", b"v4"])),
    ]


def test_eip8_discovery_vectors_decode(vectors: Any) -> None:
    v = vectors("discv4_eip8.json")
    assert "eips.ethereum.org/EIPS/eip-8" in v["source"]
    signer = bytes.fromhex(v["signer_pubkey"])
    for name, case in v["packets"].items():
        decoded = wire.decode(bytes.fromhex(case["hex"]))
        assert decoded.sender_pubkey == signer, name
        assert wire.PACKET_NAMES[decoded.packet.type] == case["type"], name
        assert decoded.packet.expiration == v["expiration"], name
        if case["type"] == "ping":
            assert isinstance(decoded.packet, wire.Ping) and decoded.packet.version == case["version"]
        if case["type"] == "neighbors":
            assert isinstance(decoded.packet, wire.Neighbors)
            assert len(decoded.packet.nodes) == case["node_count"]
        assert wire.expired(v["expiration"], now=2_000_000_000.0)


def test_eip8_ping_fields(vectors: Any) -> None:
    case = vectors("discv4_eip8.json")["packets"]["ping_v4_extra_elements"]
    packet = wire.decode(bytes.fromhex(case["hex"])).packet
    assert packet == wire.Ping(4, wire.Endpoint("127.0.0.1", 3322, 5544), wire.Endpoint("::1", 2222, 3333),
                               1136239445, 1)


@pytest.mark.parametrize("packet", _examples(), ids=lambda p: wire.PACKET_NAMES[p.type])
def test_round_trip_and_signer(packet: wire.Packet) -> None:
    datagram, digest = wire.encode(KEY.private, packet)
    assert len(datagram) <= wire.MAX_PACKET_SIZE
    decoded = wire.decode(datagram)
    assert decoded.packet == packet
    assert decoded.sender_pubkey == KEY.public
    assert decoded.hash == digest == datagram[:32]


@pytest.mark.parametrize("packet", _examples(), ids=lambda p: wire.PACKET_NAMES[p.type])
def test_every_truncation_is_refused(packet: wire.Packet) -> None:
    datagram, _ = wire.encode(KEY.private, packet)
    for cut in range(len(datagram)):
        with pytest.raises(wire.WireError) as info:
            wire.decode(datagram[:cut])
        assert info.value.reason in ("too_small", "bad_hash"), cut


@pytest.mark.parametrize("packet", _examples(), ids=lambda p: wire.PACKET_NAMES[p.type])
def test_truncated_body_with_valid_hash_and_signature_is_malformed(packet: wire.Packet) -> None:
    # a sender that signs a cut-off body: hash and signature pass, the RLP does not
    datagram, _ = wire.encode(KEY.private, packet)
    body = datagram[wire.HEAD_SIZE:]
    for cut in (2, len(body) // 2, len(body) - 1):
        short = body[:cut]
        sig = KEY.sign(keccak256(short))
        forged = keccak256(sig + short) + sig + short
        with pytest.raises(wire.WireError) as info:
            wire.decode(forged)
        assert info.value.reason == "malformed"


def test_wrong_hash() -> None:
    datagram, _ = wire.encode(KEY.private, _examples()[0])
    bad = bytes([datagram[0] ^ 1]) + datagram[1:]
    with pytest.raises(wire.WireError) as info:
        wire.decode(bad)
    assert info.value.reason == "bad_hash"


def test_wrong_signature_is_refused_or_names_another_key() -> None:
    datagram, _ = wire.encode(KEY.private, _examples()[0])
    body = datagram[wire.HEAD_SIZE:]
    sig = bytearray(datagram[32:97])
    sig[64] = 7  # no such recovery id
    forged = keccak256(bytes(sig) + body) + bytes(sig) + body
    with pytest.raises(wire.WireError) as info:
        wire.decode(forged)
    assert info.value.reason == "bad_signature"
    sig = bytearray(datagram[32:97])
    sig[5] ^= 0x40  # a different signature recovers a different key, never ours
    forged = keccak256(bytes(sig) + body) + bytes(sig) + body
    try:
        assert wire.decode(forged).sender_pubkey != KEY.public
    except wire.WireError as exc:
        assert exc.reason == "bad_signature"


def test_oversized_packet() -> None:
    datagram, _ = wire.encode(KEY.private, _examples()[0])
    padded = datagram + b"\x00" * (wire.MAX_PACKET_SIZE + 1 - len(datagram))
    with pytest.raises(wire.WireError) as info:
        wire.decode(padded)
    assert info.value.reason == "too_large"
    with pytest.raises(ValueError):
        wire.encode(KEY.private, wire.Neighbors((wire.NodeInfo("127.0.0.1", 1, 1, KEY.public),) * 20, EXP))


def test_unknown_type_and_extra_data() -> None:
    body = b"\x09" + rlpcodec.encode([1, 2])
    sig = KEY.sign(keccak256(body))
    with pytest.raises(wire.WireError) as info:
        wire.decode(keccak256(sig + body) + sig + body)
    assert info.value.reason == "unknown_type"
    # EIP-8: extra elements and trailing bytes after the list are ignored
    body = b"\x05" + rlpcodec.encode([EXP, b"future", [1, 2]]) + b"trailing junk"
    sig = KEY.sign(keccak256(body))
    assert wire.decode(keccak256(sig + body) + sig + body).packet == wire.ENRRequest(EXP)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400))
def test_fuzz_random_bytes_only_raise_wire_error(data: bytes) -> None:
    try:
        wire.decode(data)
    except wire.WireError as exc:
        assert exc.reason


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=8), st.binary(max_size=600))
def test_fuzz_signed_bodies_only_raise_wire_error(ptype: int, payload: bytes) -> None:
    # correctly hashed and signed, so the fuzzer reaches the field parsers
    body = bytes((ptype,)) + payload
    sig = KEY.sign(keccak256(body))
    try:
        decoded = wire.decode(keccak256(sig + body) + sig + body)
    except wire.WireError as exc:
        assert exc.reason in ("malformed", "unknown_type")
    else:
        assert decoded.sender_pubkey == KEY.public


_rlp_items = st.recursive(st.binary(max_size=70), lambda inner: st.lists(inner, max_size=6), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=1, max_value=6), st.lists(_rlp_items, max_size=6))
def test_fuzz_structured_fields_only_raise_wire_error(ptype: int, fields: list[Any]) -> None:
    body = bytes((ptype,)) + rlpcodec.encode(fields)
    sig = KEY.sign(keccak256(body))
    try:
        wire.decode(keccak256(sig + body) + sig + body)
    except wire.WireError as exc:
        assert exc.reason == "malformed"
