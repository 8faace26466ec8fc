"""devp2p message encodings: ids, Hello (EIP-8 vector), Disconnect forms, snappy, capability offsets."""

from __future__ import annotations

import pytest
import rlp

from pimail.devp2p import compression
from pimail.devp2p.capabilities import CapabilitySpec, match_capabilities
from pimail.devp2p.messages import (
    Disconnect,
    DisconnectReason,
    Hello,
    MessageError,
    decode_msg_id,
    encode_msg_id,
)
from pimail.node.capability import DisconnectReason as SeamReason
from tests.conftest import load_vector

DERIVED = load_vector("derived_encodings.json")
HELLO_VECTOR = load_vector("eip8_hello.json")


@pytest.mark.parametrize(("code", "hexed"), list(DERIVED["msg_id_rlp"].items()))
def test_msg_id_rlp(code: str, hexed: str) -> None:
    assert encode_msg_id(int(code)).hex() == hexed
    assert decode_msg_id(bytes.fromhex(hexed) + b"\xc0") == (int(code), len(hexed) // 2)


def test_shh_absolute_ids() -> None:
    shared = match_capabilities([CapabilitySpec("shh", 6, 128)], [("shh", 6)])
    for entry in DERIVED["shh6_message_ids_when_only_shared_cap"].values():
        if not isinstance(entry, dict):
            continue
        assert shared[0].offset + entry["code"] == entry["absolute_id"]
        assert encode_msg_id(entry["absolute_id"]).hex() == entry["id_rlp_hex"]


def test_offsets_sorted_by_name_highest_version_wins() -> None:
    local = [CapabilitySpec("waku", 0, 128), CapabilitySpec("waku", 1, 128), CapabilitySpec("shh", 6, 128),
             CapabilitySpec("zzz", 1, 4)]
    shared = match_capabilities(local, [("waku", 1), ("waku", 0), ("shh", 6), ("eth", 63)])
    assert [(s.spec.name, s.spec.version, s.offset) for s in shared] == [("shh", 6, 16), ("waku", 1, 144)]
    assert shared[1].contains(144) and shared[1].contains(271) and not shared[1].contains(272)
    assert match_capabilities(local, [("shh", 5)]) == []


@pytest.mark.parametrize("bad", [b"", b"\xc0", b"\x81\x05", b"\x82\x00\x90", b"\x81"])
def test_bad_msg_ids(bad: bytes) -> None:
    with pytest.raises(MessageError):
        decode_msg_id(bad)


def test_eip8_hello_vector_ignores_extras() -> None:
    hello = Hello.decode(bytes.fromhex(HELLO_VECTOR["hello_rlp_hex"]))
    d = HELLO_VECTOR["decoded"]
    assert hello.version == d["protocolVersion"] == 55
    assert hello.client_id == d["clientId"]
    assert hello.capabilities == tuple((c[0], c[1]) for c in d["capabilities"])
    assert hello.listen_port == d["listenPort"]
    assert hello.node_id.hex() == d["nodeId"]


def test_hello_roundtrip() -> None:
    hello = Hello(5, "pimail/test", (("shh", 6),), 30303, bytes(range(64)))
    assert Hello.decode(hello.encode()) == hello


@pytest.mark.parametrize("payload", [
    b"\x01", rlp.encode([5, b"x"]), rlp.encode([5, b"x", b"notalist", 0, b"id"]),
    rlp.encode([5, b"x", [[b"shh"]], 0, b"id"]), rlp.encode([b"\x01" * 9, b"x", [], 0, b"id"]),
    rlp.encode([5, [b"x"], [], 0, b"id"]), rlp.encode([5, b"x", [], 0, [b"id"]]), b"\xf8\x05"])
def test_bad_hellos(payload: bytes) -> None:
    with pytest.raises(MessageError):
        Hello.decode(payload)


def test_disconnect_forms() -> None:
    assert Disconnect(8).encode().hex() == DERIVED["disconnect_payload_rlp_reason_8"]
    assert Disconnect.decode(bytes.fromhex("c108")).reason == 8
    assert Disconnect.decode(bytes.fromhex("08")).reason == 8  # bare integer (older peers)
    assert Disconnect.decode(bytes.fromhex("c0")).reason == 0
    assert Disconnect.decode(bytes.fromhex("80")).reason == 0
    assert Disconnect(0x0B).reason_name == "read timeout"
    assert Disconnect(0x77).reason_name == "unknown reason 0x77"
    with pytest.raises(MessageError):
        Disconnect.decode(b"\xc1")
    assert SeamReason is DisconnectReason  # the seam re-exports the one enum


def test_ping_frame_data_with_and_without_snappy() -> None:
    ping = bytes.fromhex(DERIVED["ping_payload_rlp"])
    assert (encode_msg_id(2) + compression.compress(ping)).hex() == DERIVED["ping_frame_data_with_snappy"]
    assert (encode_msg_id(2) + ping).hex() == DERIVED["ping_frame_data_without_snappy"]


def test_snappy_roundtrip_and_limits() -> None:
    data = b"whisper " * 10000
    block = compression.compress(data)
    assert len(block) < len(data) // 10
    assert compression.decompress(block) == data
    assert compression.uncompressed_length(block) == len(data)
    with pytest.raises(compression.SnappyError, match="over the cap"):
        compression.decompress(block, max_length=len(data) - 1)


def test_snappy_length_bomb_refused_before_inflating() -> None:
    # declares 2^32-1 bytes in a 7-byte block
    bomb = b"\xff\xff\xff\xff\x0f" + b"\x00\x00"
    with pytest.raises(compression.SnappyError, match="over the cap"):
        compression.decompress(bomb)


@pytest.mark.parametrize("bad", [b"", b"\x80\x80\x80\x80\x80\x01", b"\x05\x00a", b"\x03\xfe\xff\xff"])
def test_corrupt_snappy(bad: bytes) -> None:
    with pytest.raises(compression.SnappyError):
        compression.decompress(bad)
