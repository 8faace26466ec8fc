"""Keccak-256 (the original Keccak, not NIST SHA3) as used everywhere in RLPx and Whisper."""

from __future__ import annotations

from Crypto.Hash import keccak as _keccak


def keccak256(*parts: bytes) -> bytes:
    """Return keccak256 of the concatenation of ``parts``."""
    h = _keccak.new(digest_bits=256)
    for p in parts:
        h.update(p)
    return h.digest()


def keccak_sponge(initial: bytes = b"") -> _keccak.Keccak_Hash:
    """A running Keccak-256 state (used for RLPx MACs); ``digest()`` does not finalise it."""
    h = _keccak.new(digest_bits=256, update_after_digest=True)
    if initial:
        h.update(initial)
    return h
