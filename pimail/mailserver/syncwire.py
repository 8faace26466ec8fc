"""Mailserver-to-mailserver sync messages (codes 123/124) — PROTOCOL.md §4.2.9. Sans-I/O.

Request (123):  ``[Lower, Upper, Bloom, Limit, Cursor]``; Limit 1..1000, Lower ≤ Upper (else the
requester is disconnected, as status-go does).
Response (124): ``[Envelopes, Cursor, Final, Error]``, once per bundle with Final=false, then a
final one with the next cursor (empty ⇒ done) or with Error set.
"""

from __future__ import annotations

from dataclasses import dataclass

from pimail import rlpcodec
from pimail.archive.base import CURSOR_LEN, MAX_QUERY_LIMIT
from pimail.envelope.bloom import BLOOM_LEN
from pimail.envelope.codec import UINT32_MAX, EnvelopeError, decode_uint

from .request import _bool


class SyncWireError(ValueError):
    """A 123/124 payload that does not decode or validate: disconnect the sender."""


def _u32(raw: object, what: str) -> int:
    try:
        return decode_uint(raw, what, UINT32_MAX)
    except EnvelopeError as exc:
        raise SyncWireError(str(exc)) from exc


def _rlp_list(payload: bytes, what: str) -> list[object]:
    try:
        items: object = rlpcodec.decode(payload)
    except rlpcodec.RlpError as exc:
        raise SyncWireError(f"{what} is not valid RLP: {exc}") from exc
    if not isinstance(items, list):
        raise SyncWireError(f"{what} must be an RLP list")
    return items


@dataclass(frozen=True)
class SyncMailRequest:
    lower: int
    upper: int
    bloom: bytes
    limit: int
    cursor: bytes = b""

    def encode(self) -> bytes:
        encoded: bytes = rlpcodec.encode([self.lower, self.upper, self.bloom, self.limit, self.cursor])
        return encoded

    @classmethod
    def decode(cls, payload: bytes) -> SyncMailRequest:
        items = _rlp_list(payload, "sync request")
        if len(items) != 5:
            raise SyncWireError(f"sync request must have 5 fields (got {len(items)})")
        bloom, cursor = items[2], items[4]
        if not isinstance(bloom, bytes) or not isinstance(cursor, bytes):
            raise SyncWireError("sync request bloom and cursor must be byte strings")
        req = cls(_u32(items[0], "Lower"), _u32(items[1], "Upper"), bloom, _u32(items[3], "Limit"), cursor)
        req.validate()
        return req

    def validate(self) -> None:
        if self.limit == 0:
            raise SyncWireError("invalid 'Limit' value, expected value greater than 0")
        if self.limit > MAX_QUERY_LIMIT:
            raise SyncWireError(f"invalid 'Limit' value, expected value lower than {MAX_QUERY_LIMIT}")
        if self.lower > self.upper:
            raise SyncWireError("invalid 'Lower' value, can't be greater than 'Upper'")
        if self.bloom and len(self.bloom) != BLOOM_LEN:
            raise SyncWireError(f"sync request bloom must be {BLOOM_LEN} bytes")
        if self.cursor and len(self.cursor) != CURSOR_LEN:
            raise SyncWireError(f"sync request cursor must be {CURSOR_LEN} bytes")


def encode_list_of_raw(raws: list[bytes]) -> bytes:
    """RLP list header + already-encoded items, without re-encoding them."""
    body = b"".join(raws)
    n = len(body)
    if n < 56:
        return bytes([0xC0 + n]) + body
    ln = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0xF7 + len(ln)]) + ln + body


@dataclass(frozen=True)
class SyncResponse:
    envelopes: list[bytes]  # raw envelope RLP, as stored
    cursor: bytes = b""
    final: bool = False
    error: str = ""

    def encode(self) -> bytes:
        rest: bytes = rlpcodec.encode([self.cursor, self.final, self.error.encode()])
        # splice the raw envelopes in as the first element without decoding them
        head = encode_list_of_raw(self.envelopes)
        rest_body = _strip_list_header(rest)
        return encode_list_of_raw([head, rest_body])

    @classmethod
    def decode(cls, payload: bytes) -> SyncResponse:
        items = _rlp_list(payload, "sync response")
        if len(items) != 4:
            raise SyncWireError(f"sync response must have 4 fields (got {len(items)})")
        envs, cursor, final, error = items
        if not isinstance(envs, list) or not isinstance(cursor, bytes) or not isinstance(error, bytes):
            raise SyncWireError("sync response fields have the wrong types")
        raws = [rlpcodec.encode(e) for e in envs]
        try:
            fin = _bool(final, "Final")
        except ValueError as exc:
            raise SyncWireError(str(exc)) from exc
        if cursor and len(cursor) != CURSOR_LEN:
            raise SyncWireError(f"sync response cursor must be {CURSOR_LEN} bytes")
        return cls(raws, cursor, fin, error.decode("utf-8", "replace"))


def _strip_list_header(encoded: bytes) -> bytes:
    first = encoded[0]
    if first <= 0xF7:
        return encoded[1:]
    return encoded[1 + (first - 0xF7) :]
