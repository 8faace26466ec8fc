"""Whisper proof of work: the legacy (geth ≤ 1.8) and current (status-go ≥ 0.35) formulas.

PROTOCOL.md §3.4. Both compute ``2**bits / size / (ttl + diff)``; they differ in what is hashed,
which zero bits count and what "size" is.
"""

from __future__ import annotations

import enum
import math
import struct

from pimail.crypto.keccak import keccak256, keccak256_pair

ENVELOPE_HEADER_LEN = 20  # geth EnvelopeHeaderLength
_ZERO24 = b"\x00" * 24
_TRAILING_ZEROS = bytes((b & -b).bit_length() - 1 if b else 0 for b in range(256))


class PowFormula(enum.Enum):
    """Which PoW definition a requirement is judged by."""

    LEGACY = "legacy"  # go-ethereum ≤ 1.8.27: trailing zeros of keccak(keccak(rlp-no-nonce)‖0*24‖nonce)
    CURRENT = "current"  # status-go ≥ 0.35 / EIP-627 style: leading zeros of keccak(rlp-no-nonce‖nonce)
    EITHER = "either"  # meets a requirement if either formula does (pimail's default)
    BOTH = "both"  # meets a requirement only if both do (forwarding to a peer of unknown kind)


def pow_meets(pows: tuple[float, float], requirement: float, formula: PowFormula) -> bool:
    """True if a (legacy, current) pair reaches ``requirement`` under ``formula``."""
    if requirement <= 0:
        return True
    legacy, current = pows
    if formula is PowFormula.LEGACY:
        return legacy >= requirement
    if formula is PowFormula.CURRENT:
        return current >= requirement
    if formula is PowFormula.EITHER:
        return legacy >= requirement or current >= requirement
    return legacy >= requirement and current >= requirement


def trailing_zero_bits(h: bytes) -> int:
    """Index of the lowest set bit of ``h`` read big-endian (geth returns 0 for all-zero)."""
    n = int.from_bytes(h, "big")
    if n == 0:
        return 0
    return (n & -n).bit_length() - 1


def leading_zero_bits(h: bytes) -> int:
    return len(h) * 8 - int.from_bytes(h, "big").bit_length()


def legacy_pow(rlp_no_nonce: bytes, nonce: int, data_len: int, ttl: int, diff: int = 0) -> float:
    """go-ethereum 1.8 PoW (formula 1)."""
    buf = keccak256(rlp_no_nonce) + _ZERO24 + nonce.to_bytes(8, "big")
    bits = trailing_zero_bits(keccak256(buf))
    return _pow(bits, ENVELOPE_HEADER_LEN + data_len, ttl + diff)


def current_pow(rlp_no_nonce: bytes, nonce: int, ttl: int, diff: int = 0) -> float:
    """status-go / geth-1.9 PoW (formula 3)."""
    bits = leading_zero_bits(keccak256(rlp_no_nonce + nonce.to_bytes(8, "big")))
    return _pow(bits, len(rlp_no_nonce), ttl + diff)


def both_pows(
    rlp_no_nonce: bytes, nonce: int, data_len: int, ttl: int, diff: int = 0
) -> tuple[float, float]:
    """(legacy, current) PoW of one envelope.

    keccak(rlp-no-nonce) (legacy) and keccak(rlp-no-nonce‖nonce) (current) come from one absorption
    of the shared prefix.
    """
    nb = nonce.to_bytes(8, "big")
    t = ttl + diff
    seed, current_hash = keccak256_pair(rlp_no_nonce, nb)
    # Trailing zero bits of the big-endian legacy hash: whole zero bytes, then the last non-zero one.
    rest = keccak256(seed + _ZERO24 + nb).rstrip(b"\x00")
    legacy_bits = (32 - len(rest)) * 8 + _TRAILING_ZEROS[rest[-1]] if rest else 0
    current_bits = 256 - int.from_bytes(current_hash, "big").bit_length()
    if t <= 0:
        return 0.0, 0.0
    return (
        math.ldexp(1.0, legacy_bits) / (ENVELOPE_HEADER_LEN + data_len) / t,
        math.ldexp(1.0, current_bits) / len(rlp_no_nonce) / t,
    )


def _pow(bits: int, size: int, ttl: int) -> float:
    if size <= 0 or ttl <= 0:
        return 0.0
    return math.ldexp(1.0, bits) / size / ttl


def target_bits(target_pow: float, data_len: int, ttl: int) -> int:
    """geth powToFirstBit: bits needed so that 2**bits/((20+len(data))*ttl) ≥ target."""
    if target_pow <= 0:
        return 0
    x = math.log2(target_pow * (ENVELOPE_HEADER_LEN + data_len) * ttl)
    return max(1, math.ceil(x))


def pow_from_bits(value: int) -> float:
    """The float64 whose IEEE-754 bit pattern is ``value`` (Status field 1 / code 2)."""
    return struct.unpack(">d", value.to_bytes(8, "big"))[0]  # type: ignore[no-any-return]


def pow_to_bits(value: float) -> int:
    """IEEE-754 bit pattern of ``value`` as an unsigned integer (sent as a minimal RLP uint)."""
    return int.from_bytes(struct.pack(">d", value), "big")
