"""The ``[ip, peerID, topic]`` triple both protocols carry: one decoder, strict for waku, lenient
for shh/6."""

from __future__ import annotations

import pytest

from pimail.relay.confirmations import WireError
from pimail.relay.limits import RateLimits
from pimail.waku import status as ws
from pimail.whisper import status as st


def test_round_trip() -> None:
    limits = RateLimits(1, 2, 3)
    assert limits.to_rlp() == [1, 2, 3]
    for strict in (True, False):
        assert RateLimits.from_rlp([b"\x01", b"\x02", b"\x03"], strict=strict) == limits


def test_lenient_ignores_extra_items_strict_refuses_them() -> None:
    four = [b"\x01", b"\x02", b"\x03", b"\x04"]
    assert RateLimits.from_rlp(four, strict=False) == RateLimits(1, 2, 3)
    with pytest.raises(WireError, match="list of 3 integers"):
        RateLimits.from_rlp(four, strict=True)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("raw", [[b"\x01", b"\x02"], b"\x01\x02\x03", [b"\x01", [b"\x02"], b"\x03"]])
def test_short_or_wrong_typed_is_refused(strict: bool, raw: object) -> None:
    with pytest.raises(WireError):
        RateLimits.from_rlp(raw, strict=strict)


def test_error_class_is_the_callers() -> None:
    with pytest.raises(ws.WakuStatusError, match="packet rate limits"):
        RateLimits.from_rlp([b"\x01"], "packet rate limits", strict=True, error=ws.WakuStatusError)
    with pytest.raises(st.StatusError):
        RateLimits.from_rlp([b"\x01", b"\x02", [b""]], strict=False, error=st.StatusError)


def test_both_protocols_use_the_one_type() -> None:
    assert ws.RateLimits is st.RateLimits is RateLimits
