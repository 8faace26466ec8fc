"""Topic → bloom exactly as go-ethereum's TopicToBloom, including its bit-assignment quirk."""

from __future__ import annotations

from collections.abc import Iterable

BLOOM_LEN = 64
FULL_BLOOM = b"\xff" * BLOOM_LEN
TOPIC_LEN = 4


def topic_to_bloom(topic: bytes) -> bytes:
    """64-byte bloom of one topic.

    geth *assigns* ``b[idx//8] = 1 << (idx%8)`` rather than OR-ing, so when two of the three
    indices fall into the same byte only the later survives (PROTOCOL.md §3.5, trap 12).
    """
    if len(topic) != TOPIC_LEN:
        raise ValueError(f"topic must be 4 bytes (got {len(topic)})")
    b = bytearray(BLOOM_LEN)
    for j in range(3):
        idx = topic[j] + 256 if (topic[3] >> j) & 1 else topic[j]
        b[idx // 8] = 1 << (idx % 8)
    return bytes(b)


_BLOOM_CACHE: dict[bytes, bytes] = {}
_BLOOM_CACHE_MAX = 4096  # distinct topics remembered; cleared wholesale when full


def cached_topic_bloom(topic: bytes) -> bytes:
    """``topic_to_bloom`` with a small bounded memo (a node sees few distinct topics)."""
    bloom = _BLOOM_CACHE.get(topic)
    if bloom is None:
        bloom = topic_to_bloom(topic)
        if len(_BLOOM_CACHE) >= _BLOOM_CACHE_MAX:
            _BLOOM_CACHE.clear()
        _BLOOM_CACHE[topic] = bloom
    return bloom


def topics_to_bloom(topics: Iterable[bytes]) -> bytes:
    """OR of the per-topic blooms."""
    acc = 0
    for t in topics:
        acc |= int.from_bytes(topic_to_bloom(t), "big")
    return acc.to_bytes(BLOOM_LEN, "big")


def bloom_matches(filter_bloom: bytes | None, sample: bytes) -> bool:
    """geth BloomFilterMatch: every bit of ``sample`` is set in ``filter_bloom`` (None/empty = all)."""
    if not filter_bloom:
        return True
    f = int.from_bytes(filter_bloom, "big")
    s = int.from_bytes(sample, "big")
    return f | s == f


def is_full(bloom: bytes) -> bool:
    return not bloom or bloom == FULL_BLOOM
