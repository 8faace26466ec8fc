"""The Status packet and the control messages (codes 2, 3, 11, 12): good and bad input."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pytest
import rlp

from pimail.envelope.bloom import FULL_BLOOM
from pimail.envelope.pow import pow_to_bits
from pimail.whisper import status as st
from pimail.whisper.status import StatusPacket

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
D: dict[str, Any] = json.loads((VECTORS / "derived_encodings.json").read_text())


def bits(x: float) -> int:
    return int.from_bytes(struct.pack(">d", x), "big")


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
    with pytest.raises(st.StatusError):
        st.decode_batch_ack(rlp.encode(b"short"))
    with pytest.raises(st.StatusError):
        st.MessageResponse.decode(rlp.encode([2, [h, []]]))


def test_float_bits_and_geth_status_example() -> None:
    for text, hex_rlp in D["pow_float64_bits_rlp"].items():
        assert rlp.encode(pow_to_bits(float(text))).hex() == hex_rlp
    example = bytes.fromhex(D["whisper_status_geth_1_8_27_example"]["rlp"])
    st = StatusPacket.decode(example)
    assert (st.pow, st.fields, st.light, st.confirmations, st.rate_limits) == (0.2, 4, False, False, None)
