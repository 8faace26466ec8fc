"""The Whisper envelope: ``rlp([Expiry, TTL, Topic, Data, Nonce])`` kept with its raw bytes."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import rlp

from pimail.crypto.hashing import keccak256
from pimail.whisper import pow as powmod
from pimail.whisper.bloom import TOPIC_LEN, topic_to_bloom

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


class EnvelopeError(ValueError):
    """An envelope is malformed (bad RLP, field count, non-canonical integer, bad topic length)."""


def decode_uint(raw: object, what: str, max_value: int) -> int:
    """Decode a canonical RLP unsigned integer (no leading zeros; 0 is the empty string)."""
    if not isinstance(raw, bytes):
        raise EnvelopeError(f"{what} must be an integer, got a list")
    if raw[:1] == b"\x00":
        raise EnvelopeError(f"{what} is not a canonical integer (leading zero)")
    if len(raw) > 8:
        raise EnvelopeError(f"{what} is too large")
    value = int.from_bytes(raw, "big")
    if value > max_value:
        raise EnvelopeError(f"{what} is out of range")
    return value


@dataclass(frozen=True, eq=False)
class Envelope:
    """A Whisper envelope. ``raw`` is the RLP as received; its keccak is the envelope hash."""

    expiry: int
    ttl: int
    topic: bytes
    data: bytes
    nonce: int
    raw: bytes = field(repr=False)

    @classmethod
    def build(cls, expiry: int, ttl: int, topic: bytes, data: bytes, nonce: int) -> Envelope:
        """Create an envelope from fields, encoding it canonically."""
        if len(topic) != TOPIC_LEN:
            raise EnvelopeError("topic must be 4 bytes")
        raw: bytes = rlp.encode([expiry, ttl, topic, data, nonce])
        return cls(expiry, ttl, topic, data, nonce, raw)

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        try:
            items = rlp.decode(raw, strict=True)
        except Exception as exc:  # rlp raises several DecodingError subclasses
            raise EnvelopeError(f"envelope is not valid RLP: {exc}") from exc
        return cls.from_rlp_items(items, raw)

    @classmethod
    def from_rlp_items(cls, items: object, raw: bytes) -> Envelope:
        """Build from an already-decoded RLP item whose encoding is ``raw``."""
        if not isinstance(items, list) or len(items) != 5:
            n = len(items) if isinstance(items, list) else "a string"
            raise EnvelopeError(f"envelope must be a list of 5 fields (got {n})")
        expiry = decode_uint(items[0], "expiry", UINT32_MAX)
        ttl = decode_uint(items[1], "ttl", UINT32_MAX)
        topic, data = items[2], items[3]
        if not isinstance(topic, bytes) or len(topic) != TOPIC_LEN:
            raise EnvelopeError("topic must be a 4-byte string")
        if not isinstance(data, bytes):
            raise EnvelopeError("data must be a byte string")
        nonce = decode_uint(items[4], "nonce", UINT64_MAX)
        return cls(expiry, ttl, topic, data, nonce, raw)

    def encode(self) -> bytes:
        return self.raw

    @cached_property
    def hash(self) -> bytes:
        return keccak256(self.raw)

    @property
    def sent(self) -> int:
        """Sent time = Expiry − TTL (the mailserver's key time)."""
        return self.expiry - self.ttl

    @property
    def size(self) -> int:
        """Size for limits: EnvelopeHeaderLength + len(Data)."""
        return powmod.ENVELOPE_HEADER_LEN + len(self.data)

    @cached_property
    def bloom(self) -> bytes:
        return topic_to_bloom(self.topic)

    @cached_property
    def rlp_without_nonce(self) -> bytes:
        encoded: bytes = rlp.encode([self.expiry, self.ttl, self.topic, self.data])
        return encoded

    def pow_legacy(self, diff: int = 0) -> float:
        return powmod.legacy_pow(self.rlp_without_nonce, self.nonce, len(self.data), self.ttl, diff)

    def pow_current(self, diff: int = 0) -> float:
        return powmod.current_pow(self.rlp_without_nonce, self.nonce, self.ttl, diff)

    def meets(self, requirement: float, formula: powmod.PowFormula, diff: int = 0) -> bool:
        """True if this envelope's PoW reaches ``requirement`` under ``formula``."""
        if requirement <= 0:
            return True
        F = powmod.PowFormula
        if formula is F.LEGACY:
            return self.pow_legacy(diff) >= requirement
        if formula is F.CURRENT:
            return self.pow_current(diff) >= requirement
        if formula is F.EITHER:
            return self.pow_legacy(diff) >= requirement or self.pow_current(diff) >= requirement
        return self.pow_legacy(diff) >= requirement and self.pow_current(diff) >= requirement
