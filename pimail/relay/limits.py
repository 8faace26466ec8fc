"""Token buckets for the rate limits a peer advertises (honoured when we send) and ours (enforced
on what we receive). Sans-I/O: the caller passes the monotonic time."""

from __future__ import annotations


class TokenBucket:
    """Refilled at ``rate`` tokens per second up to ``capacity``; starts full."""

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        if rate <= 0:
            raise ValueError("a token bucket needs a positive rate")
        self.rate = float(rate)
        self.capacity = max(float(capacity), 1.0)
        self.tokens = self.capacity
        self.last = now

    def level(self, now: float) -> float:
        """Tokens available at ``now``."""
        elapsed = max(0.0, now - self.last)
        self.last = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        return self.tokens

    def available(self, amount: float, now: float) -> bool:
        return self.level(now) >= amount

    def take(self, amount: float, now: float) -> bool:
        """Take ``amount`` if available; False (nothing taken) otherwise."""
        if self.level(now) >= amount:
            self.tokens -= amount
            return True
        return False
