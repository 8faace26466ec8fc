"""The waku Status options list, built by hand from PROTOCOL.md §5 (waku/1 and waku/0 forms)."""

from __future__ import annotations

import contextlib
import struct

import pytest
import rlp
from hypothesis import given, settings
from hypothesis import strategies as hs

from pimail.envelope.bloom import FULL_BLOOM
from pimail.waku import status as ws

T1, T2 = b"\x01\x02\x03\x04", b"\xaa\xbb\xcc\xdd"


def bits(value: float) -> int:
    return int.from_bytes(struct.pack(">d", value), "big")


def test_waku1_status_is_the_bare_list_with_uint_keys() -> None:
    opts = ws.StatusOptions(pow=0.002, bloom=FULL_BLOOM, light=False, confirmations=True,
                            packet_limits=ws.RateLimits(0, 50, 0), bytes_limits=ws.RateLimits(0, 1000, 0))
    by_hand = rlp.encode([
        [0, bits(0.002)],
        [1, FULL_BLOOM],
        [2, False],
        [3, True],
        [4, [0, 50, 0]],
        [6, [0, 1000, 0]],
    ])
    assert opts.encode(1) == by_hand
    # after the 2-byte list header, the first pair: ca [80 (key 0), 88 3f60624dd2f1a9fc]
    assert by_hand[:1] == b"\xf8"
    assert by_hand[2:13] == bytes.fromhex("ca8088") + bytes.fromhex("3f60624dd2f1a9fc")
    assert ws.StatusOptions.decode(by_hand, 1) == opts


def test_waku0_status_is_version_and_string_keys_without_key_6() -> None:
    opts = ws.StatusOptions(pow=0.2, bloom=FULL_BLOOM, light=True, confirmations=False,
                            packet_limits=ws.RateLimits(1, 2, 3), topic_interest=(T1,),
                            bytes_limits=ws.RateLimits(0, 9, 0))
    by_hand = rlp.encode([0, [
        [b"0", bits(0.2)],
        [b"1", FULL_BLOOM],
        [b"2", True],
        [b"3", False],
        [b"4", [1, 2, 3]],
        [b"5", [T1]],
    ]])
    assert opts.encode(0) == by_hand
    decoded = ws.StatusOptions.decode(by_hand, 0)
    assert decoded.pow == 0.2 and decoded.light is True and decoded.topic_interest == (T1,)
    assert decoded.bytes_limits is None


def test_missing_keys_take_status_go_defaults() -> None:
    opts = ws.StatusOptions.decode(rlp.encode([]), 1).with_defaults()
    assert opts.pow == 0.001 and opts.bloom == FULL_BLOOM
    assert opts.light is False and opts.confirmations is False
    assert opts.packet_limits == ws.RateLimits() and opts.bytes_limits == ws.RateLimits()
    assert opts.topic_interest is None
    v0 = ws.StatusOptions.decode(rlp.encode([0, []]), 0).with_defaults()
    assert v0.pow == 0.001 and v0.bloom == FULL_BLOOM


def test_unknown_keys_are_ignored_even_with_huge_values() -> None:
    huge = b"\x00" * 200_000
    payload = rlp.encode([[99, huge], [2**64 - 1, [huge, [huge]]], [3, True]])
    opts = ws.StatusOptions.decode(payload, 1)
    assert opts == ws.StatusOptions(confirmations=True)
    v0 = rlp.encode([0, [[b"99", huge], [b"pow", 7], [b"3", True], [b"6", [0, 1, 0]]]])
    assert ws.StatusOptions.decode(v0, 0) == ws.StatusOptions(confirmations=True)  # key 6 is v1 only


def test_order_is_irrelevant_and_a_later_duplicate_wins() -> None:
    a = rlp.encode([[3, True], [0, bits(0.5)], [0, bits(0.25)]])
    assert ws.StatusOptions.decode(a, 1) == ws.StatusOptions(pow=0.25, confirmations=True)


def test_empty_bloom_means_full_node() -> None:
    assert ws.StatusOptions.decode(rlp.encode([[1, b""]]), 1).bloom == FULL_BLOOM


@pytest.mark.parametrize(
    ("pairs", "message"),
    [
        ([[0, [1]]], "PoW option must be an integer"),
        ([[0, bits(float("nan"))]], "not a usable PoW"),
        ([[0, bits(-1.0)]], "not a usable PoW"),
        ([[1, b"\xff" * 10]], "64 bytes"),
        ([[1, [b"\xff" * 64]]], "byte string"),
        ([[2, b"\x00"]], "not an RLP boolean"),
        ([[2, 2]], "not an RLP boolean"),
        ([[3, [1]]], "not an RLP boolean"),
        ([[4, [1, 2]]], "3 integers"),
        ([[4, 5]], "3 integers"),
        ([[4, [1, 2, [3]]]], "must be an integer"),
        ([[5, T1]], "list of 4-byte topics"),
        ([[5, [b"\x01\x02\x03"]]], "4 bytes"),
        ([[6, [0, 0]]], "3 integers"),
        ([[[0], 1]], "key must be a scalar"),
        ([[0, 1, 2]], "pair"),
        ([5], "pair"),
        ([[b"\x00\x01", 1]], "leading zero"),
    ],
)
def test_wrong_types_are_refused(pairs: list[object], message: str) -> None:
    with pytest.raises(ws.WakuStatusError, match=message):
        ws.StatusOptions.decode(rlp.encode(pairs), 1)


def test_waku0_shape_errors() -> None:
    with pytest.raises(ws.WakuStatusError, match=r"\[version, options\]"):
        ws.StatusOptions.decode(rlp.encode([[b"0", 1]]), 0)
    with pytest.raises(ws.WakuStatusError, match="version 1"):
        ws.StatusOptions.decode(rlp.encode([1, []]), 0)
    with pytest.raises(ws.WakuStatusError, match="list of"):
        ws.StatusOptions.decode(rlp.encode([0, b"x"]), 0)
    with pytest.raises(ws.WakuStatusError, match="not an RLP boolean"):
        ws.StatusOptions.decode(rlp.encode([0, [[b"2", [1]]]]), 0)
    with pytest.raises(ws.WakuStatusError):
        ws.StatusOptions.decode(rlp.encode(b"not a list"), 1)
    with pytest.raises(ws.WakuStatusError, match="not valid RLP"):
        ws.StatusOptions.decode(b"\xc5\x01", 1)


def test_topic_interest_limit() -> None:
    ok = [i.to_bytes(4, "big") for i in range(ws.MAX_TOPIC_INTEREST)]
    assert len(ws.StatusOptions.decode(rlp.encode([[5, ok]]), 1).topic_interest or ()) == 10_000
    with pytest.raises(ws.WakuStatusError, match="10001 topics"):
        ws.StatusOptions.decode(rlp.encode([[5, [*ok, T2]]]), 1)
    # an empty interest is valid and means "nothing"
    assert ws.StatusOptions.decode(rlp.encode([[5, []]]), 1).topic_interest == ()


def test_status_update_carries_only_what_changed() -> None:
    update = ws.StatusOptions(pow=0.01)
    assert update.encode(1) == rlp.encode([[0, bits(0.01)]])
    assert update.encode(0) == rlp.encode([0, [[b"0", bits(0.01)]]])
    assert ws.StatusOptions.decode(rlp.encode([]), 1).empty


def test_message_codes() -> None:
    assert (ws.STATUS, ws.MESSAGES, ws.BATCH_ACK, ws.MESSAGE_RESPONSE, ws.STATUS_UPDATE) == (0, 1, 11, 12, 22)
    assert (ws.P2P_REQUEST_COMPLETE, ws.P2P_REQUEST, ws.P2P_MESSAGE) == (125, 126, 127)
    assert ws.ERROR_CODES.time_not_synced == 21 and ws.ERROR_CODES.other == 22
    assert ws.PROTOCOL_LENGTH == 128


_rlp_leaf = hs.one_of(hs.binary(max_size=70), hs.integers(0, 2**70))
_rlp_item = hs.recursive(_rlp_leaf, lambda inner: hs.lists(inner, max_size=6), max_leaves=30)


@settings(max_examples=400, deadline=None)
@given(hs.binary(max_size=300), hs.sampled_from([0, 1]))
def test_fuzz_raw_bytes_never_raise_anything_else(data: bytes, version: int) -> None:
    with contextlib.suppress(ws.WakuStatusError):
        ws.StatusOptions.decode(data, version)


@settings(max_examples=400, deadline=None)
@given(hs.lists(hs.tuples(hs.one_of(hs.integers(0, 8), hs.sampled_from([b"0", b"1", b"5", b"x"])),
                          _rlp_item), max_size=8), hs.sampled_from([0, 1]))
def test_fuzz_option_lists(pairs: list[tuple[object, object]], version: int) -> None:
    body = [[k, v] for k, v in pairs]
    payload = rlp.encode(body if version == 1 else [0, body])
    try:
        opts = ws.StatusOptions.decode(payload, version)
    except ws.WakuStatusError:
        return
    assert ws.StatusOptions.decode(opts.encode(version), version) == opts  # what we accept round-trips
