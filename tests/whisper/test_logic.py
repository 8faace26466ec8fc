"""Validation outcomes, the pool and the packet rate limiter."""

from __future__ import annotations

import gc
import os
import tracemalloc

import pytest

from pimail.envelope.codec import Envelope, decode_envelope_list, encode_envelope_list
from pimail.envelope.pow import PowFormula
from pimail.envelope.seal import seal
from pimail.relay.pool import EnvelopePool, KnownSet, PacketRateLimiter, footprint
from pimail.relay.validation import Outcome, Rules, judge
from pimail.whisper import status as st
from pimail.whisper.service import peer_formula
from pimail.whisper.status import ENVELOPE_OTHER_ERROR, ENVELOPE_TIME_NOT_SYNCED

NOW = 1_800_000_000


def env_at(sent: int, ttl: int = 50, data: bytes = b"x" * 100, nonce: int = 0) -> Envelope:
    return Envelope.build(sent + ttl, ttl, b"abcd", data, nonce)


def test_accepts_current_envelope() -> None:
    assert judge(env_at(NOW - 5), Rules(min_pow=0), NOW).outcome is Outcome.ACCEPT


def test_future_within_allowance_recomputes_pow_with_diff() -> None:
    env = env_at(NOW + 5)
    assert judge(env, Rules(min_pow=0), NOW).outcome is Outcome.ACCEPT
    legacy_now, _ = env.pows()
    legacy_diff, _ = env.pows(6)
    assert legacy_diff < legacy_now  # diff lengthens the effective TTL


def test_future_beyond_ten_seconds_is_time_error() -> None:
    v = judge(env_at(NOW + 11), Rules(min_pow=0), NOW)
    assert v.outcome is Outcome.TIME_ERROR and "future" in v.reason
    assert v.code(st.ERROR_CODES) == ENVELOPE_TIME_NOT_SYNCED


def test_expired_recently_dropped_silently_and_very_old_is_time_error() -> None:
    assert judge(env_at(NOW - 60), Rules(min_pow=0), NOW).outcome is Outcome.DROP  # expired 10 s ago
    v = judge(env_at(NOW - 100), Rules(min_pow=0), NOW)
    assert v.outcome is Outcome.TIME_ERROR and "very old" in v.reason


def test_untrusted_clock_skips_time_rules() -> None:
    assert judge(env_at(NOW - 10_000), Rules(min_pow=0), None).outcome is Outcome.ACCEPT
    assert judge(env_at(NOW + 10_000), Rules(min_pow=0), None).outcome is Outcome.ACCEPT


def test_oversized_is_error() -> None:
    v = judge(env_at(NOW, data=b"x" * 2000), Rules(min_pow=0, max_size=1000), NOW)
    assert v.outcome is Outcome.ERROR and "oversized" in v.reason
    assert v.code(st.ERROR_CODES) == ENVELOPE_OTHER_ERROR


def _low_pow_envelope(target: float) -> Envelope:
    for nonce in range(1000):
        env = env_at(NOW, nonce=nonce)
        legacy, current = env.pows()
        if legacy < target and current < target:
            return env
    raise AssertionError("no low-PoW nonce found")


def test_low_pow_under_both_formulas_is_error() -> None:
    env = _low_pow_envelope(0.01)
    for formula in PowFormula:
        v = judge(env, Rules(min_pow=0.01, formula=formula), NOW)
        assert v.outcome is Outcome.ERROR and "low PoW" in v.reason


def test_either_formula_and_tolerance() -> None:
    sealed = seal(NOW + 50, 50, b"abcd", b"x" * 100, 0.002, 5).envelope
    legacy, current = sealed.pows()
    assert legacy >= 0.002 and current >= 0.002
    # One that only the legacy formula likes: accepted under EITHER/LEGACY, refused under CURRENT.
    for nonce in range(100_000):
        e = env_at(NOW, nonce=nonce)
        lg, cu = e.pows()
        if lg >= 0.002 > cu:
            break
    assert judge(e, Rules(0.002, PowFormula.EITHER), NOW).outcome is Outcome.ACCEPT
    assert judge(e, Rules(0.002, PowFormula.LEGACY), NOW).outcome is Outcome.ACCEPT
    assert judge(e, Rules(0.002, PowFormula.CURRENT), NOW).outcome is Outcome.ERROR
    assert judge(e, Rules(0.002, PowFormula.BOTH), NOW).outcome is Outcome.ERROR
    assert judge(e, Rules(0.5, PowFormula.CURRENT, pow_tolerance=0.0001), NOW).outcome is Outcome.ACCEPT


def test_bloom_rule() -> None:
    env = env_at(NOW)
    other = bytes(64)
    assert judge(env, Rules(0, bloom=other), NOW).outcome is Outcome.ERROR
    assert judge(env, Rules(0, bloom=other, bloom_tolerance=env.bloom), NOW).outcome is Outcome.ACCEPT


def test_pool_dedup_expiry_and_byte_bound() -> None:
    a, b, c = env_at(NOW, ttl=10), env_at(NOW, ttl=20), env_at(NOW, ttl=30)
    pool = EnvelopePool(max_bytes=footprint(a) * 2 + 1)
    assert pool.add(a) == (True, [])
    assert pool.add(a) == (False, [])
    assert pool.add(b)[0]
    is_new, evicted = pool.add(c)  # over the cap: the earliest expiry (a) goes
    assert is_new and evicted == [a.hash]
    assert a.hash not in pool and len(pool) == 2 and pool.bytes == footprint(b) + footprint(c)
    assert pool.sweep(NOW + 25) == [b.hash]
    assert pool.sweep(NOW + 25) == []
    assert pool.remove(c.hash) and pool.bytes == 0 and len(pool) == 0


def test_pool_sweeps_by_expiry_alone_and_returns_each_hash_whole() -> None:
    """Many envelopes share an expiry (one second of traffic): the sweep takes exactly those
    expired before ``now`` (not at it), evicts earliest first, and gives back the same 32-byte
    hashes, leading zero bytes included, whatever order the hashes sort in."""
    envs = [env_at(NOW + (i % 3), ttl=10, nonce=i) for i in range(60)]
    pool = EnvelopePool(max_bytes=10**9)
    for e in envs:
        pool.add(e)
    zero_led = Envelope.build(NOW + 11, 11, b"abcd", b"z" * 100, 0)
    zero_led.hash = bytes(3) + zero_led.hash[3:]  # a hash starting with zero bytes
    pool.add(zero_led)
    assert sorted(pool.sweep(NOW + 11)) == sorted(e.hash for e in envs if e.expiry == NOW + 10)
    assert len(pool) == 41 and zero_led.hash in pool  # expiring at NOW + 11: kept at NOW + 11
    swept = pool.sweep(NOW + 12)
    assert sorted(swept) == sorted([zero_led.hash] + [e.hash for e in envs if e.expiry == NOW + 11])
    assert zero_led.hash in swept and len(pool) == 20
    small = EnvelopePool(max_bytes=footprint(envs[0]) * 2 + 1)
    late, early = env_at(NOW + 5, ttl=10, nonce=1), env_at(NOW, ttl=10, nonce=2)
    small.add(late)
    small.add(early)
    assert small.add(env_at(NOW + 9, ttl=10, nonce=3))[1] == [early.hash]


@pytest.mark.parametrize("data_len", [64, 300, 1000, 4000])
def test_pool_budget_matches_measured_memory(data_len: int) -> None:
    """pool.bytes (what the budget counts) never undercounts the memory the pooled envelopes take
    (measured with tracemalloc from a decoded Messages packet, as the service receives them) by
    more than 10 %, and overcounts by at most 30 % (tracemalloc misses objects reused from
    CPython's free lists, so a long-running process measures a little less than a fresh one):
    ``pool_max_bytes`` is a budget of real memory."""
    raws = [Envelope.build(NOW + 50, 50, bytes(4), os.urandom(data_len), i).raw for i in range(2000)]
    packet = encode_envelope_list(raws)
    del raws
    gc.collect()
    tracemalloc.start()
    try:
        envs = decode_envelope_list(packet)
        for e in envs:
            e.pows()
        pool = EnvelopePool(max_bytes=10**9)
        for e in envs:
            pool.add(e)
        del envs
        gc.collect()
        used, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(pool) == 2000
    assert used <= 1.1 * pool.bytes and pool.bytes <= 1.3 * used, (pool.bytes, used)


def test_pool_rejects_envelope_larger_than_cap() -> None:
    pool = EnvelopePool(max_bytes=10)
    assert pool.add(env_at(NOW)) == (False, [])


def test_known_set_is_bounded() -> None:
    known = KnownSet(3)
    for i in range(5):
        known.add(bytes([i]))
    assert len(known) == 3 and bytes([0]) not in known and bytes([4]) in known


def test_rate_limiter_tolerance() -> None:
    lim = PacketRateLimiter(rate=10, tolerance=5, now=0.0)
    assert all(lim.allow(0.0) for _ in range(15))
    assert not lim.allow(0.0)
    assert lim.allow(0.2)  # refilled 2 tokens
    assert lim.allow(0.2) and not lim.allow(0.2)


def test_peer_formula() -> None:
    assert peer_formula("Geth/wnode/v1.8.27-stable/linux-amd64/go1.11", 4) is PowFormula.LEGACY
    # cmd/wnode names itself this way, but it is go-ethereum 1.8 whisper with a 4-field Status
    assert peer_formula("wnode/v6.0/linux/go1.19.8", 4) is PowFormula.LEGACY
    assert peer_formula("Geth/v1.9.25-stable/linux-amd64/go1.15", 4) is PowFormula.BOTH
    assert peer_formula("something", 3) is PowFormula.LEGACY
    assert peer_formula("StatusIM/v0.78.0/linux-amd64/go1.13", 6) is PowFormula.CURRENT
    assert peer_formula("StatusIM/v0.36.0/linux-amd64/go1.12", 5) is PowFormula.CURRENT
    assert peer_formula("StatusIM/v0.30.0-beta.0/linux-amd64/go1.11", 5) is PowFormula.BOTH
    assert peer_formula("something", 5) is PowFormula.BOTH
