"""Envelope decoding (the checked and the fast path): good and bad input."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import rlp
from hypothesis import given, settings
from hypothesis import strategies as hs

from pimail.envelope.codec import Envelope, EnvelopeError, decode_envelope_list, encode_envelope_list
from pimail.rlpcodec import RlpError, scan_item

GOOD = Envelope.build(1_700_000_050, 50, b"abcd", b"hello" * 10, 12345)


def test_decode_roundtrip_keeps_raw_and_matches_rlp_package() -> None:
    env = Envelope.decode(GOOD.raw)
    assert env.raw == GOOD.raw and env.hash == GOOD.hash
    assert (env.expiry, env.ttl, env.topic, env.data, env.nonce) == (
        GOOD.expiry, GOOD.ttl, GOOD.topic, GOOD.data, GOOD.nonce)
    assert env.rlp_without_nonce == rlp.encode([env.expiry, env.ttl, env.topic, env.data])
    assert env.size == 20 + len(env.data) and env.sent == 1_700_000_000


def test_an_envelope_keeps_one_copy_of_its_bytes_and_no_instance_dict() -> None:
    """Data and the RLP without the nonce are cut from ``raw`` when asked for (the pool's budget,
    pimail/relay/pool.py, counts one copy)."""
    env = decode_envelope_list(encode_envelope_list([GOOD.raw]))[0]
    assert not hasattr(env, "__dict__")
    assert env.data == GOOD.data and env.data_len == len(GOOD.data)
    assert env.pows() is env.pows()  # the diff-0 pair is kept
    assert "data=<50 bytes>" in repr(env) and "nonce=12345" in repr(env)


def test_fields_that_are_not_what_raw_encodes_are_refused() -> None:
    with pytest.raises(EnvelopeError, match="not the encoding"):
        Envelope(GOOD.expiry, GOOD.ttl, GOOD.topic, b"other data", GOOD.nonce, GOOD.raw)
    with pytest.raises(EnvelopeError, match="not valid RLP"):
        Envelope(GOOD.expiry, GOOD.ttl, GOOD.topic, GOOD.data, GOOD.nonce, GOOD.raw[:-3])


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
