"""The envelope pool: accepted envelopes cached until they expire (PROTOCOL.md §3.6–3.7).

Deduplicates by hash, is bounded by memory (evicting the earliest expiry first) and is swept of
expired envelopes by the service every second. Sans-I/O: the caller passes the time.

The bound is in bytes of RAM, counted as what a pooled envelope really costs, not its wire size: a
decoded ``Envelope`` holds its raw bytes once (Data and the RLP without the nonce are slices made
on demand) and ~500 bytes of fixed Python objects (the slotted instance, hash, topic, integers, the
PoW pair, and the pool's own dict entry and heap entry). Measured with tracemalloc at 83 B–4 KB
envelopes; tests/whisper/test_logic.py keeps the estimate honest both ways.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping

from pimail.envelope.codec import Envelope

ENVELOPE_OBJECT_BYTES = 520  # fixed per pooled envelope: instance, hash, topic, ints, PoW pair, dict + heap
_HASH_MASK = (1 << 256) - 1  # a heap entry's low 256 bits: the envelope hash


def _entry(expiry: int, envelope_hash: bytes) -> int:
    """The heap entry of one envelope: its expiry above its hash, so ints order by expiry first."""
    return (expiry << 256) | int.from_bytes(envelope_hash, "big")


def _hash_of(entry: int) -> bytes:
    return (entry & _HASH_MASK).to_bytes(32, "big")


def footprint(env: Envelope) -> int:
    """Bytes of memory one pooled envelope occupies (tracemalloc: raw + ~500 at 83 B–4 KB)."""
    return len(env.raw) + ENVELOPE_OBJECT_BYTES


class EnvelopePool:
    def __init__(self, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError("pool max_bytes must be positive")
        self.max_bytes = max_bytes  # memory budget in bytes of RAM, counted by ``footprint``
        self._by_hash: dict[bytes, Envelope] = {}
        # heap of (expiry << 256) | hash as one int: one int comparison per step instead of a tuple's
        # (envelopes of one second share an expiry, so tuples went on to compare their hashes);
        # stale entries are skipped lazily
        self._heap: list[int] = []
        self.bytes = 0
        self.evicted = 0
        self.expired = 0

    def __len__(self) -> int:
        return len(self._by_hash)

    def __contains__(self, envelope_hash: bytes) -> bool:
        return envelope_hash in self._by_hash

    def get(self, envelope_hash: bytes) -> Envelope | None:
        return self._by_hash.get(envelope_hash)

    @property
    def getter(self) -> Callable[[bytes], Envelope | None]:
        """``get`` as the dict's own method: the forwarder's inner loop calls it per envelope and peer."""
        return self._by_hash.get

    def __iter__(self) -> Iterator[Envelope]:
        return iter(list(self._by_hash.values()))

    def add(self, env: Envelope) -> tuple[bool, list[bytes]]:
        """Insert ``env``. Returns (is_new, hashes evicted to make room)."""
        h = env.hash
        if h in self._by_hash:
            return False, []
        size = footprint(env)
        if size > self.max_bytes:
            return False, []
        self._by_hash[h] = env
        heapq.heappush(self._heap, _entry(env.expiry, h))
        self.bytes += size
        evicted: list[bytes] = []
        while self.bytes > self.max_bytes:
            victim = self._pop_earliest()
            if victim is None:
                break
            evicted.append(victim)
            self.evicted += 1
        return h not in evicted, evicted

    def _pop_earliest(self) -> bytes | None:
        while self._heap:
            h = _hash_of(heapq.heappop(self._heap))
            env = self._by_hash.pop(h, None)
            if env is not None:
                self.bytes -= footprint(env)
                return h
        return None

    def remove(self, envelope_hash: bytes) -> bool:
        env = self._by_hash.pop(envelope_hash, None)
        if env is None:
            return False
        self.bytes -= footprint(env)
        if len(self._heap) > 2 * len(self._by_hash) + 64:  # keep lazy deletions bounded
            self._heap = [_entry(e.expiry, h) for h, e in self._by_hash.items()]
            heapq.heapify(self._heap)
        return True

    def sweep(self, now: int) -> list[bytes]:
        """Remove envelopes whose expiry is before ``now``; return their hashes."""
        gone: list[bytes] = []
        bound = _entry(now, bytes(32))  # below it: an expiry before ``now``
        while self._heap and self._heap[0] < bound:
            h = _hash_of(heapq.heappop(self._heap))
            env = self._by_hash.pop(h, None)
            if env is not None:
                self.bytes -= footprint(env)
                gone.append(h)
        self.expired += len(gone)
        return gone


class KnownSet:
    """Hashes a peer is known to have (sent by it or to it); bounded, oldest forgotten first."""

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._items: OrderedDict[bytes, None] = OrderedDict()

    def __contains__(self, h: bytes) -> bool:
        return h in self._items

    @property
    def members(self) -> Mapping[bytes, None]:
        """The hashes, for ``in`` without a method call (the forwarder's inner loop); read only."""
        return self._items

    def __len__(self) -> int:
        return len(self._items)

    def add(self, h: bytes) -> None:
        if h in self._items:
            return
        self._items[h] = None
        if len(self._items) > self.limit:
            self._items.popitem(last=False)

    def add_many(self, hashes: Iterable[bytes]) -> None:
        """``add`` for each hash, in order (one call per forwarded packet)."""
        items, limit = self._items, self.limit
        for h in hashes:
            if h not in items:
                items[h] = None
                if len(items) > limit:
                    items.popitem(last=False)

    def discard(self, h: bytes) -> None:
        self._items.pop(h, None)


class PacketRateLimiter:
    """Per-peer Messages-packet limit: a token bucket refilled at ``rate`` per second holding
    ``rate + tolerance`` tokens. A packet that finds the bucket empty is a violation (the service
    disconnects the peer), so a peer may burst ``tolerance`` packets over the sustained rate.
    """

    def __init__(self, rate: float, tolerance: int, now: float) -> None:
        self.rate = rate
        self.capacity = max(1.0, rate + tolerance)
        self.tokens = self.capacity
        self.last = now

    def allow(self, now: float) -> bool:
        elapsed = max(0.0, now - self.last)
        self.last = now
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False
