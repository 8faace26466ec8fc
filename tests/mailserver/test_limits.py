"""Per-peer request limits (status-go minimum interval + token bucket), driven by explicit time."""

from __future__ import annotations

from pimail.mailserver.limits import MinIntervalLimiter, RequestLimits, TokenBucketLimiter

A, B = b"a" * 32, b"b" * 32


def test_min_interval_status_go_semantics() -> None:
    lim = MinIntervalLimiter(1.0)
    assert lim.allow(A, 100.0)
    assert not lim.allow(A, 100.5)
    assert not lim.allow(A, 101.0)  # last + interval must be strictly less than now
    assert lim.allow(B, 100.5)  # per peer
    assert lim.allow(A, 101.01)
    assert not lim.allow(A, 101.5)  # refused requests do not move the stamp; allowed ones do


def test_min_interval_disabled_and_purge() -> None:
    assert all(MinIntervalLimiter(0).allow(A, 1.0) for _ in range(100))
    lim = MinIntervalLimiter(1.0)
    lim.allow(A, 0.0)
    lim.allow(B, 5.0)
    lim.purge(5.5)
    assert len(lim) == 1


def test_token_bucket_burst_and_refill() -> None:
    tb = TokenBucketLimiter(rate_per_s=2.0, burst=3)
    assert [tb.allow(A, 0.0) for _ in range(4)] == [True, True, True, False]
    assert tb.allow(A, 0.5)  # one token back after 0.5 s at 2/s
    assert not tb.allow(A, 0.5)
    assert tb.allow(B, 0.5)
    tb.purge(100.0)
    assert len(tb) == 0


def test_tracked_peers_are_bounded() -> None:
    tb = TokenBucketLimiter(1.0, 1, max_peers=10)
    mi = MinIntervalLimiter(1.0, max_peers=10)
    for i in range(1000):
        pid = i.to_bytes(32, "big")
        tb.allow(pid, 0.0)
        mi.allow(pid, 0.0)
    assert len(tb) == 10 and len(mi) == 10


def test_combined_limits_refusal_does_not_spend_token() -> None:
    lim = RequestLimits(min_interval_s=1.0, bucket_rate_per_s=0.1, bucket_burst=2)
    assert lim.allow(A, 0.0)
    for _ in range(50):
        assert not lim.allow(A, 0.5)  # refused by the interval: bucket untouched
    assert lim.allow(A, 1.5)  # second token still there
    assert not lim.allow(A, 3.0)  # interval fine, bucket empty (0.1/s refill)
    assert lim.allow(A, 12.0)
