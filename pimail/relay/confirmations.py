"""Confirmations shared by shh/6 and waku/x: Batch Ack (11) and Message Response (12).

Both protocols use the same shapes (PROTOCOL.md §3.8, §5); only the error codes in a Message
Response differ (they are Go ``iota`` artefacts, trap 21), so the codes are a parameter of the
adapter, not of this codec. Sans-I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from pimail import rlpcodec
from pimail.envelope.codec import UINT64_MAX, EnvelopeError, decode_uint

MESSAGE_RESPONSE_VERSION = 1
HASH_LEN = 32


class WireError(ValueError):
    """A control message of shh or waku is malformed (the peer is disconnected with 0x10)."""


def decode_rlp(payload: bytes, what: str) -> object:
    try:
        return rlpcodec.decode(payload)
    except rlpcodec.RlpError as exc:
        raise WireError(f"{what} is not valid RLP: {exc}") from exc


def decode_uint_field(raw: object, what: str, max_value: int = UINT64_MAX) -> int:
    try:
        return decode_uint(raw, what, max_value)
    except EnvelopeError as exc:
        raise WireError(str(exc)) from exc


@dataclass(frozen=True)
class ErrorCodes:
    """The Message Response codes one codebase emits for time errors and every other error."""

    time_not_synced: int
    other: int


@dataclass(frozen=True)
class EnvelopeErrorReport:
    """One entry of a Message Response."""

    hash: bytes
    code: int
    description: str


@dataclass(frozen=True)
class MessageResponse:
    """Code 12: ``[1, [batchHash, [[envHash, code, description], ...]]]``."""

    batch_hash: bytes
    errors: tuple[EnvelopeErrorReport, ...] = ()

    def encode(self) -> bytes:
        errs = [[e.hash, e.code, e.description.encode()] for e in self.errors]
        encoded: bytes = rlpcodec.encode([MESSAGE_RESPONSE_VERSION, [self.batch_hash, errs]])
        return encoded

    @classmethod
    def decode(cls, payload: bytes) -> MessageResponse:
        items = decode_rlp(payload, "message response")
        if not isinstance(items, list) or len(items) < 2:
            raise WireError("message response must be [version, response]")
        if decode_uint_field(items[0], "message response version") != MESSAGE_RESPONSE_VERSION:
            raise WireError("unknown message response version")
        body = items[1]
        if not isinstance(body, list) or len(body) < 2 or not isinstance(body[0], bytes):
            raise WireError("message response body must be [hash, errors]")
        if not isinstance(body[1], list):
            raise WireError("message response errors must be a list")
        errors = []
        for e in body[1]:
            if not isinstance(e, list) or len(e) < 3 or not isinstance(e[0], bytes):
                raise WireError("malformed envelope error")
            desc = e[2] if isinstance(e[2], bytes) else b""
            errors.append(EnvelopeErrorReport(e[0], decode_uint_field(e[1], "error code"),
                                              desc.decode(errors="replace")))
        return cls(body[0], tuple(errors))


def encode_batch_ack(batch_hash: bytes) -> bytes:
    encoded: bytes = rlpcodec.encode(batch_hash)
    return encoded


def decode_batch_ack(payload: bytes) -> bytes:
    raw = decode_rlp(payload, "batch ack")
    if not isinstance(raw, bytes) or len(raw) != HASH_LEN:
        raise WireError("batch ack must be a 32-byte hash")
    return raw
