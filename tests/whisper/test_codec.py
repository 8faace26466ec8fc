"""Envelope decoding, the Status packet and control messages: good and bad input."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable

import pytest
import rlp
from hypothesis import given, settings
from hypothesis import strategies as hs

from pimail.relay.confirmations import WireError
from pimail.whisper import status as st
from pimail.whisper.bloom import FULL_BLOOM
from pimail.whisper.envelope import Envelope, EnvelopeError, decode_envelope_list, encode_envelope_list
from pimail.whisper.pow import pow_to_bits
from pimail.whisper.rlpscan import RlpError, scan_item

GOOD = Envelope.build(1_700_000_050, 50, b"abcd", b"hello" * 10, 12345)


def bits(x: float) -> int:
    return int.from_bytes(struct.pack(">d", x), "big")


def test_decode_roundtrip_keeps_raw_and_matches_rlp_package() -> None:
    env = Envelope.decode(GOOD.raw)
    assert env.raw == GOOD.raw and env.hash == GOOD.hash
    assert (env.expiry, env.ttl, env.topic, env.data, env.nonce) == (
        GOOD.expiry, GOOD.ttl, GOOD.topic, GOOD.data, GOOD.nonce)
    assert env.rlp_without_nonce == rlp.encode([env.expiry, env.ttl, env.topic, env.data])
    assert env.size == 20 + len(env.data) and env.sent == 1_700_000_000


def test_long_data_envelope_roundtrip() -> None:
    env = Envelope.build(10, 5, b"abcd", b"\x00" * 70_000, 2**64 - 1)
    assert Envelope.decode(env.raw).rlp_without_nonce == rlp.encode([10, 5, b"abcd", b"\x00" * 70_000])


@pytest.mark.parametrize(
    "raw, message",
    [
        (rlp.encode([1, 2, b"abcd", b"x"]), "5 fields"),
        (rlp.encode([1, 2, b"abcd", b"x", 3, 4]), "5 fields"),
        (rlp.encode(b"notalist"), "5 fields"),
        (rlp.encode([1, 2, b"abc", b"x", 3]), "topic"),
        (rlp.encode([1, 2, b"abcd", [b"x"], 3]), "list"),
        (rlp.encode([b"\x00\x01", 2, b"abcd", b"x", 3]), "leading zero"),
        (rlp.encode([b"\x00", 2, b"abcd", b"x", 3]), "leading zero"),
        (rlp.encode([1, 2, b"abcd", b"x", b"\x01" * 9]), "too large"),
        (rlp.encode([2**32, 2, b"abcd", b"x", 3]), "out of range"),
        (bytes.fromhex("ca8101028461626364 7803".replace(" ", "")), "below 0x80"),  # 0x81 0x01
        (bytes.fromhex("f809") + rlp.encode([1, 2, b"abcd", b"", 3])[1:], "long-form"),
        (bytes.fromhex("cbb801010284616263648003"), "long-form"),  # string length 1 in long form
        (GOOD.raw + b"\x00", "trailing"),
        (GOOD.raw[:-1], "RLP"),
        (b"", "RLP"),
    ],
)
def test_bad_envelopes(raw: bytes, message: str) -> None:
    with pytest.raises(EnvelopeError, match=message):
        Envelope.decode(raw)


def test_envelope_list_keeps_each_raw() -> None:
    other = Envelope.build(5, 1, b"wxyz", b"", 0)
    payload = encode_envelope_list([GOOD.raw, other.raw])
    assert payload == rlp.encode([rlp.decode(GOOD.raw), rlp.decode(other.raw)])
    envs = decode_envelope_list(payload)
    assert [e.hash for e in envs] == [GOOD.hash, other.hash]
    assert decode_envelope_list(b"\xc0") == []


@pytest.mark.parametrize("payload", [b"", b"\x80", GOOD.raw[:5], b"\xc2\x01\x02",
                                     encode_envelope_list([GOOD.raw]) + b"\x00"])
def test_bad_envelope_lists(payload: bytes) -> None:
    with pytest.raises(EnvelopeError):
        decode_envelope_list(payload)


def test_status_sends_six_fields() -> None:
    pkt = st.StatusPacket(pow=0.002, rate_limits=st.RateLimits(0, 50, 0))
    items = rlp.decode(pkt.encode())
    assert len(items) == 6
    assert items[0] == b"\x06" and items[1] == bits(0.002).to_bytes(8, "big")
    assert items[2] == FULL_BLOOM and items[3] == b"" and items[4] == b"\x01"
    assert items[5] == [b"", b"\x32", b""]
    assert st.StatusPacket.decode(pkt.encode()) == pkt


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_status_accepts_one_to_six_fields(n: int) -> None:
    full = [6, bits(0.5), b"\x01" * 64, True, True, [1, 2, 3]]
    pkt = st.StatusPacket.decode(rlp.encode(full[:n]))
    assert pkt.fields == n
    assert pkt.pow == (0.5 if n > 1 else 0.0)
    assert pkt.bloom == (b"\x01" * 64 if n > 2 else FULL_BLOOM)
    assert pkt.light is (n > 3)
    assert pkt.confirmations is (n > 4)
    assert pkt.rate_limits == (st.RateLimits(1, 2, 3) if n > 5 else None)


def test_status_ignores_trailing_extras_and_empty_bloom() -> None:
    pkt = st.StatusPacket.decode(rlp.encode([6, 0, b"", False, False, [0, 0, 0], b"extra", [b"more"]]))
    assert pkt.bloom == FULL_BLOOM and pkt.fields == 6 and pkt.pow == 0.0


@pytest.mark.parametrize(
    "items, message",
    [
        ([5, 0], "shh/5"),
        ([6, bits(math.nan)], "PoW"),
        ([6, bits(-1.0)], "PoW"),
        ([6, bits(math.inf)], "PoW"),
        ([6, 0, b"\xff" * 63], "bloom"),
        ([6, 0, b"\xff" * 65], "bloom"),
        ([6, 0, FULL_BLOOM, b"\x02"], "boolean"),
        ([6, 0, FULL_BLOOM, b"\x00"], "boolean"),
        ([6, 0, FULL_BLOOM, False, True, [1, 2]], "rate limits"),
        ([], "non-empty"),
    ],
)
def test_bad_status(items: list[object], message: str) -> None:
    with pytest.raises(st.StatusError, match=message):
        st.StatusPacket.decode(rlp.encode(items))


def test_status_not_rlp() -> None:
    with pytest.raises(st.StatusError):
        st.StatusPacket.decode(b"\xc5\x06")
    with pytest.raises(st.StatusError):
        st.StatusPacket.decode(rlp.encode(b"string"))


def test_pow_requirement_code_2() -> None:
    assert st.decode_pow_requirement(st.encode_pow_requirement(0.2)) == 0.2
    assert st.encode_pow_requirement(0.0) == b"\x80"
    for bad in (math.nan, -0.5, math.inf):
        with pytest.raises(st.StatusError):
            st.decode_pow_requirement(rlp.encode(pow_to_bits(bad)))
    with pytest.raises(st.StatusError):
        st.decode_pow_requirement(rlp.encode([1]))
    with pytest.raises(st.StatusError):
        st.decode_pow_requirement(b"\x89" + b"\x01" * 9)


def test_bloom_exchange_code_3() -> None:
    assert st.decode_bloom_exchange(st.encode_bloom_exchange(b"\x0f" * 64)) == b"\x0f" * 64
    for bad in (b"", b"\x0f" * 63, b"\x0f" * 65):
        with pytest.raises(st.StatusError, match="64 bytes"):
            st.decode_bloom_exchange(rlp.encode(bad))


def test_message_response_and_batch_ack() -> None:
    h = b"\x11" * 32
    report = st.EnvelopeErrorReport(b"\x22" * 32, st.ENVELOPE_TIME_NOT_SYNCED, "future")
    resp = st.MessageResponse(h, (report,))
    items = rlp.decode(resp.encode())
    assert items[0] == b"\x01" and items[1][0] == h
    assert items[1][1] == [[b"\x22" * 32, bytes([37]), b"future"]]
    assert st.MessageResponse.decode(resp.encode()) == resp
    assert st.decode_batch_ack(st.encode_batch_ack(h)) == h
    with pytest.raises(WireError):  # the confirmation codec is shared with waku
        st.decode_batch_ack(rlp.encode(b"short"))
    with pytest.raises(WireError):
        st.MessageResponse.decode(rlp.encode([2, [h, []]]))


EDGE_U32 = [0, 1, 127, 128, 255, 256, 65535, 2**24, 2**32 - 1]
EDGE_U64 = [*EDGE_U32, 2**32, 2**56, 2**64 - 1]
EDGE_LEN = [0, 1, 55, 56, 255, 256, 70_000]


@settings(max_examples=300, deadline=None)
@given(
    expiry=hs.sampled_from(EDGE_U32) | hs.integers(0, 2**32 - 1),
    ttl=hs.sampled_from(EDGE_U32) | hs.integers(0, 2**32 - 1),
    topic=hs.binary(min_size=4, max_size=4),
    data=hs.sampled_from(EDGE_LEN).map(lambda n: b"\x80" * n) | hs.binary(max_size=300),
    nonce=hs.sampled_from(EDGE_U64) | hs.integers(0, 2**64 - 1),
)
def test_fast_decode_equals_rlp_package(expiry: int, ttl: int, topic: bytes, data: bytes, nonce: int) -> None:
    raw = rlp.encode([expiry, ttl, topic, data, nonce])
    env = Envelope.decode(raw)
    got = (env.expiry, env.ttl, env.topic, env.data, env.nonce, env.raw)
    assert got == (expiry, ttl, topic, data, nonce, raw)
    assert env.rlp_without_nonce == rlp.encode([expiry, ttl, topic, data])


@settings(max_examples=500, deadline=None)
@given(pos=hs.integers(0, 10_000), value=hs.integers(0, 255), cut=hs.integers(0, 3))
def test_mutated_envelopes_fast_and_checked_paths_agree(pos: int, value: int, cut: int) -> None:
    base = bytearray(Envelope.build(1_700_000_000, 300, b"abcd", b"payload" * 3, 99999).raw)
    base[pos % len(base)] = value
    raw = bytes(base[: len(base) - cut])

    def outcome(fn: Callable[[], Envelope]) -> object:
        try:
            e = fn()
        except EnvelopeError:
            return "error"
        return (e.expiry, e.ttl, e.topic, e.data, e.nonce, e.rlp_without_nonce)

    try:
        is_list, s, e = scan_item(raw, 0, len(raw))
        ok = e == len(raw)
    except RlpError:
        ok = False
    fast = outcome(lambda: Envelope.decode(raw))
    if not ok:
        assert fast == "error"
        return
    assert fast == outcome(lambda: Envelope._from_scan_checked(raw, is_list, s, e))
    if fast != "error":
        assert rlp.encode(rlp.decode(raw, strict=True)) == raw  # only canonical encodings pass


def _env_bytes(fields: list[bytes]) -> bytes:
    body = b"".join(fields)
    n = len(body)
    header = bytes((0xC0 + n,)) if n <= 55 else bytes((0xF7 + (n.bit_length() + 7) // 8,)) + n.to_bytes(
        (n.bit_length() + 7) // 8, "big")
    return header + body


_EXPIRY = b"\x84\x65\x00\x00\x01"
_TOPIC = b"\x84abcd"
_DATA300 = b"\xb9\x01\x2c" + bytes(300)


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ([b"\x84\x00\x00\x00\x01", b"\x0f", _TOPIC, _DATA300, b"\x01"], "expiry leading zero"),
        ([_EXPIRY, b"\x00", _TOPIC, _DATA300, b"\x01"], "ttl as a zero byte"),
        ([_EXPIRY, b"\x81\x0f", _TOPIC, _DATA300, b"\x01"], "ttl byte < 0x80 with a header"),
        ([_EXPIRY, b"\x0f", _TOPIC, b"\xb8\x10" + bytes(16), b"\x01"], "long form for short data"),
        ([_EXPIRY, b"\x0f", _TOPIC, b"\xb9\x00\x40" + bytes(64), b"\x01"], "data length leading zero"),
        ([_EXPIRY, b"\x0f", _TOPIC, _DATA300, b"\x88\x00" + bytes(7)], "nonce leading zero (8 bytes)"),
        ([_EXPIRY, b"\x0f", _TOPIC, _DATA300, b"\x82\x00\x01"], "nonce leading zero (2 bytes)"),
        ([_EXPIRY, b"\x0f", _TOPIC, _DATA300, b"\x81\x05"], "nonce byte < 0x80 with a header"),
        ([_EXPIRY, b"\x0f", _TOPIC, _DATA300, b"\x89\x01" + bytes(8)], "nonce of 9 bytes"),
        ([_EXPIRY, b"\x0f", b"\x83abc", _DATA300, b"\x01"], "3-byte topic"),
        ([_EXPIRY, b"\x0f", _TOPIC, b"\xc0", b"\x01"], "data as a list"),
        ([_EXPIRY, b"\x0f", _TOPIC, _DATA300], "four fields"),
        ([_EXPIRY, b"\x0f", _TOPIC, _DATA300, b"\x01", b"\x01"], "six fields"),
    ],
)
def test_fast_decode_refuses_each_non_canonical_field(fields: list[bytes], why: str) -> None:
    raw = _env_bytes(fields)
    with pytest.raises(EnvelopeError):
        Envelope.decode(raw)
    with pytest.raises(EnvelopeError):
        decode_envelope_list(encode_envelope_list([raw]))


@pytest.mark.parametrize("nonce", [0, 1, 0x7F, 0x80, 0xFF, 0x100, 2**32 + 5, 2**56 - 1, 2**56, 2**64 - 1])
@pytest.mark.parametrize("data_len", [0, 1, 55, 56, 255, 256, 65535, 65536])
def test_fast_decode_common_shapes_round_trip(nonce: int, data_len: int) -> None:
    data = bytes((i * 3 + 1) & 0xFF for i in range(data_len))
    raw = rlp.encode([1_700_000_000, 15, b"abcd", data, nonce])
    env = Envelope.decode(raw)
    assert (env.expiry, env.ttl, env.topic, env.data, env.nonce) == (1_700_000_000, 15, b"abcd", data, nonce)
    assert env.rlp_without_nonce == rlp.encode([1_700_000_000, 15, b"abcd", data])
    for cut in (1, 9):
        with pytest.raises(EnvelopeError):
            Envelope.decode(raw[:-cut])
