"""Per-peer request limits: status-go's minimum interval plus a token bucket. Sans-I/O.

Both take the current (monotonic) time as an argument, so tests drive them without sleeping, and
both keep at most ``max_peers`` entries (oldest evicted first), so a stream of fresh node ids
cannot grow them without bound.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

DEFAULT_MAX_TRACKED_PEERS = 10_000  # entries per limiter before the least recently seen is evicted


class MinIntervalLimiter:
    """status-go ``rateLimiter`` (mailserver/limiter.go) semantics.

    A request is allowed if the peer has no previous *allowed* request or if
    ``last + interval < now``; an allowed request records ``now``. Refused requests do not move
    the timestamp. ``interval <= 0`` disables the limiter.
    """

    def __init__(self, interval_s: float, max_peers: int = DEFAULT_MAX_TRACKED_PEERS) -> None:
        self.interval_s = interval_s
        self.max_peers = max_peers
        self._last: OrderedDict[bytes, float] = OrderedDict()

    def would_allow(self, peer_id: bytes, now: float) -> bool:
        """Whether ``allow`` would say yes, without recording anything."""
        if self.interval_s <= 0:
            return True
        last = self._last.get(peer_id)
        return last is None or last + self.interval_s < now

    def allow(self, peer_id: bytes, now: float) -> bool:
        if self.interval_s <= 0:
            return True
        if not self.would_allow(peer_id, now):
            return False
        self._last[peer_id] = now
        self._last.move_to_end(peer_id)
        while len(self._last) > self.max_peers:
            self._last.popitem(last=False)
        return True

    def purge(self, now: float) -> None:
        """Forget entries whose interval has passed (status-go runs this every second)."""
        for peer_id in [p for p, t in self._last.items() if t + self.interval_s < now]:
            del self._last[peer_id]

    def __len__(self) -> int:
        return len(self._last)


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class TokenBucketLimiter:
    """A token bucket per peer: ``burst`` requests at once, refilled at ``rate_per_s``.

    ``rate_per_s <= 0`` disables the limiter.
    """

    def __init__(self, rate_per_s: float, burst: int, max_peers: int = DEFAULT_MAX_TRACKED_PEERS) -> None:
        self.rate_per_s = rate_per_s
        self.burst = max(1, burst)
        self.max_peers = max_peers
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()

    def allow(self, peer_id: bytes, now: float) -> bool:
        if self.rate_per_s <= 0:
            return True
        b = self._buckets.get(peer_id)
        if b is None:
            b = _Bucket(float(self.burst), now)
            self._buckets[peer_id] = b
            while len(self._buckets) > self.max_peers:
                self._buckets.popitem(last=False)
        else:
            b.tokens = min(float(self.burst), b.tokens + (now - b.stamp) * self.rate_per_s)
            b.stamp = now
            self._buckets.move_to_end(peer_id)
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return True
        return False

    def purge(self, now: float) -> None:
        """Forget buckets that have refilled completely (they behave exactly like new ones)."""
        full_after = self.burst / self.rate_per_s if self.rate_per_s > 0 else 0.0
        for peer_id in [p for p, b in self._buckets.items() if now - b.stamp >= full_after]:
            del self._buckets[peer_id]

    def __len__(self) -> int:
        return len(self._buckets)


class RequestLimits:
    """Both limiters together: a request must pass the minimum interval *and* find a token.

    The interval is checked first so that a refused request does not spend a token.
    """

    def __init__(
        self,
        min_interval_s: float,
        bucket_rate_per_s: float,
        bucket_burst: int,
        max_peers: int = DEFAULT_MAX_TRACKED_PEERS,
    ) -> None:
        self.interval = MinIntervalLimiter(min_interval_s, max_peers)
        self.bucket = TokenBucketLimiter(bucket_rate_per_s, bucket_burst, max_peers)

    def allow(self, peer_id: bytes, now: float) -> bool:
        if not self.interval.would_allow(peer_id, now):
            return False
        if not self.bucket.allow(peer_id, now):
            return False
        return self.interval.allow(peer_id, now)

    def purge(self, now: float) -> None:
        self.interval.purge(now)
        self.bucket.purge(now)
