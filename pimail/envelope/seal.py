"""Sealing: find a nonce so an envelope meets a PoW target under BOTH formulas (PROTOCOL.md §3.4).

``seal`` is blocking CPU work with a hard time budget; ``seal_async`` runs it in a bounded worker
pool so the event loop never waits on it. The best nonce seen is kept if the budget runs out.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import time
from dataclasses import dataclass

from pimail.crypto.keccak import keccak256
from pimail.envelope.codec import UINT32_MAX, Envelope
from pimail.envelope.pow import ENVELOPE_HEADER_LEN

DEFAULT_WORK_TIME_S = 5.0  # Status' WorkTime
MAX_CONCURRENT_SEALS = 2  # bounded: at most this many sealing threads
_ZERO24 = b"\x00" * 24
_UINT64_MAX = 2**64 - 1


@dataclass(frozen=True)
class SealResult:
    envelope: Envelope
    pow_legacy: float
    pow_current: float
    met: bool  # both formulas reached the target
    tried: int
    seconds: float


def _bits_needed(target: float, size: int, ttl: int) -> int:
    if target <= 0:
        return 0
    return max(1, math.ceil(math.log2(target * size * ttl)))


def seal(
    expiry: int,
    ttl: int,
    topic: bytes,
    data: bytes,
    target_pow: float,
    work_time_s: float = DEFAULT_WORK_TIME_S,
    current_target: float | None = None,
) -> SealResult:
    """Search nonces from 0 until both formulas meet their targets or ``work_time_s`` runs out.

    ``target_pow`` is the legacy formula's target and, unless ``current_target`` is given, the
    current formula's too (a peer known to judge by one formula may ask more of that one only).
    """
    current_target = target_pow if current_target is None else current_target
    if not 0 < ttl <= UINT32_MAX or not 0 <= expiry <= UINT32_MAX:
        raise ValueError("ttl and expiry must be uint32 (ttl > 0)")
    base = Envelope.build(expiry, ttl, topic, data, 0)
    rlp_nn = base.rlp_without_nonce
    first = keccak256(rlp_nn) + _ZERO24
    need_legacy = _bits_needed(target_pow, ENVELOPE_HEADER_LEN + len(data), ttl)
    need_current = _bits_needed(current_target, len(rlp_nn), ttl)
    start = time.monotonic()
    deadline = start + max(0.0, work_time_s)
    best_nonce, best_score, best_lbits = 0, (-1 << 30, 0), -1
    nonce = 0
    while nonce <= _UINT64_MAX:
        nb = nonce.to_bytes(8, "big")
        h = int.from_bytes(keccak256(first + nb), "big")
        lbits = (h & -h).bit_length() - 1 if h else 0
        # The second hash is only worth computing when the legacy formula is met (or is the best
        # seen so far, to keep a useful fallback); the two hashes are independent.
        if lbits >= need_legacy or lbits > best_lbits:
            best_lbits = max(best_lbits, lbits)
            cbits = 256 - int.from_bytes(keccak256(rlp_nn + nb), "big").bit_length()
            # Score by the weaker formula's margin, so "best" favours meeting both.
            score = (min(lbits - need_legacy, cbits - need_current), lbits + cbits)
            if score > best_score:
                best_nonce, best_score = nonce, score
                if score[0] >= 0:
                    break
        nonce += 1
        if nonce & 0x3FF == 0 and time.monotonic() >= deadline:
            break
    env = Envelope.build(expiry, ttl, topic, data, best_nonce)
    legacy, current = env.pows()
    met = legacy >= target_pow and current >= current_target
    return SealResult(env, legacy, current, met, nonce + 1, time.monotonic() - start)


_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    if _pool is None:
        _pool = concurrent.futures.ThreadPoolExecutor(MAX_CONCURRENT_SEALS, thread_name_prefix="pimail-seal")
    return _pool


async def seal_async(
    expiry: int,
    ttl: int,
    topic: bytes,
    data: bytes,
    target_pow: float,
    work_time_s: float = DEFAULT_WORK_TIME_S,
    current_target: float | None = None,
) -> SealResult:
    """``seal`` in a worker thread (never on the event loop)."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _executor(), seal, expiry, ttl, topic, data, target_pow, work_time_s, current_target
    )


def message_expiry(now: float, ttl: int) -> int:
    """geth: Expiry = now + TTL (seconds)."""
    return int(now) + ttl

