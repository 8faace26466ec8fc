"""Rate limits: the ``[ip, peerID, topic]`` triple shh/6 and waku peers advertise, and the token
buckets behind them (the peer's honoured when we send, ours enforced on what we receive). Sans-I/O:
the caller passes the monotonic time."""

from __future__ import annotations

from dataclasses import dataclass

from pimail.relay.confirmations import WireError, decode_uint_field


@dataclass(frozen=True)
class RateLimits:
    """Per-second limits ``[ip, peerID, topic]`` as a Status carries them; 0 means no limit."""

    ip: int = 0
    peer_id: int = 0
    topic: int = 0

    def to_rlp(self) -> list[int]:
        return [self.ip, self.peer_id, self.topic]

    @classmethod
    def from_rlp(cls, raw: object, what: str = "rate limits", *, strict: bool,
                 error: type[WireError] = WireError) -> RateLimits:
        """Decode the triple. ``strict``: exactly three items (waku, as status-go's waku decoder);
        otherwise three or more, extras ignored (shh/6, as status-go's whisper). Raises ``error``."""
        if not isinstance(raw, list) or (len(raw) != 3 if strict else len(raw) < 3):
            raise error(f"{what} must be a list of 3 integers")
        try:
            ip, peer_id, topic = (decode_uint_field(x, what) for x in raw[:3])
        except WireError as exc:
            raise error(str(exc)) from exc
        return cls(ip, peer_id, topic)


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
