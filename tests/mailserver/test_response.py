"""Code-125 payloads: the byte-string concatenation, never over 100 bytes, and Status' parse rules."""

from __future__ import annotations

import pytest
import rlp

from pimail.mailserver.response import (
    MAX_SUCCESS_LEN,
    RequestComplete,
    RequestFailed,
    ResponseError,
    decode,
    parse_body,
    request_id_from_bytes,
)

RID = bytes(range(32))
LAST = b"\x22" * 32
CURSOR = (1234).to_bytes(4, "big") + b"\x33" * 32


def test_success_without_cursor_is_64_bytes() -> None:
    enc = RequestComplete(RID, LAST).encode()
    assert enc == b"\xb8\x40" + RID + LAST  # one RLP string of 64 bytes, not a list
    assert decode(enc) == RequestComplete(RID, LAST, None)


def test_success_with_cursor_is_exactly_100_bytes() -> None:
    c = RequestComplete(RID, LAST, CURSOR)
    assert len(c.body()) == MAX_SUCCESS_LEN == 100
    assert rlp.decode(c.encode()) == RID + LAST + CURSOR
    assert decode(c.encode()) == c


def test_error_form() -> None:
    f = RequestFailed(RID, "rate limit exceeded")
    assert rlp.decode(f.encode()) == b"ERROR=" + RID + b"rate limit exceeded"
    assert decode(f.encode()) == f


def test_encoder_refuses_bad_fields() -> None:
    with pytest.raises(ResponseError):
        RequestComplete(RID, LAST, b"\x00" * 40)
    with pytest.raises(ResponseError):
        RequestComplete(RID[:31])
    with pytest.raises(ResponseError):
        RequestFailed(b"", "x")


def test_long_error_text_is_truncated() -> None:
    body = RequestFailed(RID, "x" * 10_000).body()
    assert len(body) <= 6 + 32 + 512


@pytest.mark.parametrize(
    "body",
    [b"", b"\x01" * 31, b"\x01" * 101, b"ERROR" + b"\x01" * 200],
)
def test_client_parse_rules_reject(body: bytes) -> None:
    with pytest.raises(ResponseError):
        parse_body(body)


def test_client_parse_rules_accept_short_forms() -> None:
    assert parse_body(RID) == RequestComplete(RID)
    assert parse_body(RID + LAST + b"\x01" * 10) == RequestComplete(RID, LAST, None)


def test_decode_rejects_list_and_garbage() -> None:
    with pytest.raises(ResponseError):
        decode(rlp.encode([RID, LAST]))
    with pytest.raises(ResponseError):
        decode(b"\xb8")


def test_bytes_to_hash() -> None:
    assert request_id_from_bytes(b"\x01") == b"\x00" * 31 + b"\x01"
    assert request_id_from_bytes(bytes(range(40))) == bytes(range(8, 40))
