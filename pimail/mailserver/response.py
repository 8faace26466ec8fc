"""P2P Request Complete (code 125) payloads — PROTOCOL.md §4.2.6, trap 18.

The packet payload is one RLP *byte string* (not a list), the plain concatenation of

    success:  requestID(32) ‖ lastEnvelopeHash(32) ‖ cursor(0 or 36)     → 64 or 100 bytes
    failure:  "ERROR=" ‖ requestID(32) ‖ UTF-8 error text

Status clients disconnect a mailserver whose success payload is shorter than 32 or longer than
100 bytes, so the encoder refuses to build one.
"""

from __future__ import annotations

from dataclasses import dataclass

from pimail import rlpcodec
from pimail.archive.base import CURSOR_LEN

HASH_LEN = 32
ERROR_PREFIX = b"ERROR="
MAX_SUCCESS_LEN = HASH_LEN + HASH_LEN + CURSOR_LEN  # 100: status clients reject anything longer
MAX_ERROR_TEXT_BYTES = 512  # keep error packets small; the text is for logs and humans


class ResponseError(ValueError):
    """A request-complete payload is malformed (what a Status client would disconnect for)."""


def request_id_from_bytes(raw: bytes) -> bytes:
    """go-ethereum ``BytesToHash``: keep the last 32 bytes, left-pad shorter input with zeros."""
    if len(raw) >= HASH_LEN:
        return raw[-HASH_LEN:]
    return b"\x00" * (HASH_LEN - len(raw)) + raw


@dataclass(frozen=True)
class RequestComplete:
    """A successful answer: the request is done; ``cursor`` (36 bytes) means "more pages"."""

    request_id: bytes
    last_envelope_hash: bytes = b"\x00" * HASH_LEN
    cursor: bytes | None = None

    def __post_init__(self) -> None:
        if len(self.request_id) != HASH_LEN:
            raise ResponseError(f"request id must be {HASH_LEN} bytes (got {len(self.request_id)})")
        if len(self.last_envelope_hash) != HASH_LEN:
            raise ResponseError("last envelope hash must be 32 bytes")
        if self.cursor is not None and len(self.cursor) != CURSOR_LEN:
            raise ResponseError(f"cursor must be {CURSOR_LEN} bytes (got {len(self.cursor)})")

    def body(self) -> bytes:
        """The concatenated byte string (64 or 100 bytes)."""
        out = self.request_id + self.last_envelope_hash + (self.cursor or b"")
        assert len(out) <= MAX_SUCCESS_LEN
        return out

    def encode(self) -> bytes:
        """The code-125 packet payload: ``rlp(body)``."""
        encoded: bytes = rlpcodec.encode(self.body())
        return encoded


@dataclass(frozen=True)
class RequestFailed:
    """An error answer: ``ERROR=‖requestID‖text``."""

    request_id: bytes
    message: str

    def __post_init__(self) -> None:
        if len(self.request_id) != HASH_LEN:
            raise ResponseError(f"request id must be {HASH_LEN} bytes (got {len(self.request_id)})")

    def body(self) -> bytes:
        text = self.message.encode("utf-8", "replace")[:MAX_ERROR_TEXT_BYTES]
        return ERROR_PREFIX + self.request_id + text

    def encode(self) -> bytes:
        encoded: bytes = rlpcodec.encode(self.body())
        return encoded


Response = RequestComplete | RequestFailed


def parse_body(body: bytes) -> Response:
    """Parse the byte string inside a 125 packet with Status' client rules.

    < 32 bytes ⇒ error; starts with ``ERROR=`` and ≥ 38 bytes ⇒ failure; otherwise > 100 bytes ⇒
    error; the last envelope hash is read if ≥ 64 bytes; a cursor only if the rest is ≥ 36 bytes.
    """
    if len(body) < HASH_LEN:
        raise ResponseError(f"request-complete payload too short ({len(body)} bytes)")
    if body.startswith(ERROR_PREFIX) and len(body) >= len(ERROR_PREFIX) + HASH_LEN:
        rid = body[len(ERROR_PREFIX) : len(ERROR_PREFIX) + HASH_LEN]
        text = body[len(ERROR_PREFIX) + HASH_LEN :].decode("utf-8", "replace")
        return RequestFailed(rid, text)
    if len(body) > MAX_SUCCESS_LEN:
        raise ResponseError(f"request-complete payload too long ({len(body)} bytes)")
    rid = body[:HASH_LEN]
    last = body[HASH_LEN : 2 * HASH_LEN] if len(body) >= 2 * HASH_LEN else b"\x00" * HASH_LEN
    rest = body[2 * HASH_LEN :]
    cursor = rest[:CURSOR_LEN] if len(rest) >= CURSOR_LEN else None
    return RequestComplete(rid, last, cursor)


def decode(payload: bytes) -> Response:
    """Decode a code-125 packet payload (``rlp(byte string)``)."""
    try:
        body = rlpcodec.decode(payload)
    except rlpcodec.RlpError as exc:
        raise ResponseError(f"request-complete payload is not valid RLP: {exc}") from exc
    if not isinstance(body, bytes):
        raise ResponseError("request-complete payload must be an RLP byte string, not a list")
    return parse_body(body)
