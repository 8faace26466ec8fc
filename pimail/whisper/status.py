"""shh/6 control messages: Status (0), PoW requirement (2), bloom exchange (3) and rate limits (20).
PROTOCOL.md §3.1, §3.2, §3.8. Sans-I/O. Batch Ack (11) and Message Response (12) are shared with
waku and live in ``pimail.relay.confirmations`` (re-exported here).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from pimail import rlpcodec
from pimail.envelope.bloom import BLOOM_LEN, FULL_BLOOM
from pimail.envelope.codec import UINT64_MAX, EnvelopeError, decode_uint
from pimail.envelope.pow import pow_from_bits, pow_to_bits
from pimail.relay.confirmations import (
    MESSAGE_RESPONSE_VERSION,
    EnvelopeErrorReport,
    ErrorCodes,
    MessageResponse,
    WireError,
    decode_batch_ack,
    encode_batch_ack,
)
from pimail.relay.limits import RateLimits

__all__ = [
    "MESSAGE_RESPONSE_VERSION", "EnvelopeErrorReport", "MessageResponse", "RateLimits", "StatusError",
    "StatusPacket", "decode_batch_ack", "encode_batch_ack",
]

VERSION = 6

# Relative message codes (PROTOCOL.md §3.1).
STATUS = 0
MESSAGES = 1
POW_REQUIREMENT = 2
BLOOM_EXCHANGE = 3
BATCH_ACK = 11
MESSAGE_RESPONSE = 12
RATE_LIMITS = 20
P2P_SYNC_REQUEST = 123
P2P_SYNC_RESPONSE = 124
P2P_REQUEST_COMPLETE = 125
P2P_REQUEST = 126
P2P_MESSAGE = 127
PROTOCOL_LENGTH = 128

# status-go v0.78 monorepo whisper iota values (PROTOCOL.md §3.8, trap 21).
ENVELOPE_TIME_NOT_SYNCED = 37
ENVELOPE_OTHER_ERROR = 38
ERROR_CODES = ErrorCodes(ENVELOPE_TIME_NOT_SYNCED, ENVELOPE_OTHER_ERROR)


class StatusError(WireError):
    """A shh control message is malformed (the peer is disconnected with 0x10)."""


def _decode(payload: bytes, what: str) -> object:
    try:
        return rlpcodec.decode(payload)
    except rlpcodec.RlpError as exc:
        raise StatusError(f"{what} is not valid RLP: {exc}") from exc


def _uint(raw: object, what: str, max_value: int = UINT64_MAX) -> int:
    try:
        return decode_uint(raw, what, max_value)
    except EnvelopeError as exc:
        raise StatusError(str(exc)) from exc


def decode_pow_value(raw: object, what: str) -> float:
    """A PoW float carried as its IEEE-754 bits in an RLP uint; NaN, ±Inf and negatives refused."""
    value = pow_from_bits(_uint(raw, what))
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise StatusError(f"{what} is not a usable PoW value ({value!r})")
    return value


def _bool(raw: object, what: str) -> bool:
    if raw == b"\x01":
        return True
    if raw == b"":
        return False
    raise StatusError(f"{what} is not an RLP boolean")


def _bloom(raw: object, what: str) -> bytes:
    if not isinstance(raw, bytes):
        raise StatusError(f"{what} must be a byte string")
    if len(raw) == 0:
        return FULL_BLOOM
    if len(raw) != BLOOM_LEN:
        raise StatusError(f"{what} must be {BLOOM_LEN} bytes (got {len(raw)})")
    return raw


@dataclass(frozen=True)
class StatusPacket:
    """Whisper Status. ``fields`` is how many elements the peer sent (1..6, extras ignored)."""

    version: int = VERSION
    pow: float = 0.0
    bloom: bytes = FULL_BLOOM
    light: bool = False
    confirmations: bool = True
    rate_limits: RateLimits | None = field(default_factory=RateLimits)
    fields: int = 6

    def encode(self) -> bytes:
        items: list[object] = [self.version, pow_to_bits(self.pow), self.bloom, self.light,
                               self.confirmations]
        if self.rate_limits is not None:
            items.append(self.rate_limits.to_rlp())
        encoded: bytes = rlpcodec.encode(items)
        return encoded

    @classmethod
    def decode(cls, payload: bytes) -> StatusPacket:
        """Decode like geth/status-go: positional, missing trailing fields tolerated."""
        items = _decode(payload, "Status")
        if not isinstance(items, list) or not items:
            raise StatusError("Status must be a non-empty list")
        version = _uint(items[0], "Status version")
        if version != VERSION:
            raise StatusError(f"peer speaks shh/{version}, not shh/{VERSION}")
        n = len(items)
        pow_req = decode_pow_value(items[1], "Status PoW") if n > 1 else 0.0
        bloom = _bloom(items[2], "Status bloom") if n > 2 else FULL_BLOOM
        light = _bool(items[3], "Status light flag") if n > 3 else False
        confirmations = _bool(items[4], "Status confirmations flag") if n > 4 else False
        limits = RateLimits.from_rlp(items[5], strict=False, error=StatusError) if n > 5 else None
        return cls(version, pow_req, bloom, light, confirmations, limits, min(n, 6))


def encode_pow_requirement(value: float) -> bytes:
    encoded: bytes = rlpcodec.encode(pow_to_bits(value))
    return encoded


def decode_pow_requirement(payload: bytes) -> float:
    return decode_pow_value(_decode(payload, "PoW requirement"), "PoW requirement")


def encode_bloom_exchange(bloom: bytes) -> bytes:
    encoded: bytes = rlpcodec.encode(bloom)
    return encoded


def decode_bloom_exchange(payload: bytes) -> bytes:
    raw = _decode(payload, "bloom filter")
    if not isinstance(raw, bytes) or len(raw) != BLOOM_LEN:
        size = len(raw) if isinstance(raw, bytes) else "a list"
        raise StatusError(f"bloom filter must be {BLOOM_LEN} bytes (got {size})")
    return raw
