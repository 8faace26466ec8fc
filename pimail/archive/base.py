"""The ``Archive`` interface every storage backend implements, and its value types.

Backends are tested by one contract suite (tests/archive/test_contract.py). The event loop never
waits on storage I/O: implementations do their blocking work in their own threads/pools and hand
results back through awaitables.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

CURSOR_LEN = 36  # sent_time (4 BE) || envelope hash (32)
MAX_QUERY_LIMIT = 1000  # status-go maxQueryLimit


class ArchiveError(Exception):
    """Storage failed (I/O error, disk full, corrupt file)."""


class InvalidCursor(ArchiveError):
    """A cursor that is malformed or matches no stored envelope (never means "everything")."""


class SchemaTooNew(ArchiveError):
    """The archive was written by a newer pimail; refuse to open it."""


class ArchivedEnvelope(NamedTuple):
    """What the archive stores for one envelope (a named tuple: one is made per envelope ingested,
    at a third of a frozen dataclass's cost)."""

    sent: int  # Expiry − TTL, seconds
    hash: bytes  # keccak of raw
    topic: bytes  # 4 bytes
    expiry: int
    raw: bytes  # envelope RLP exactly as received
    arrived: int = 0  # local arrival time, seconds

    @property
    def cursor(self) -> bytes:
        return self.sent.to_bytes(4, "big") + self.hash


def encode_cursor(sent: int, envelope_hash: bytes) -> bytes:
    return sent.to_bytes(4, "big") + envelope_hash


def decode_cursor(cursor: bytes) -> tuple[int, bytes]:
    if len(cursor) != CURSOR_LEN:
        raise InvalidCursor(f"cursor must be {CURSOR_LEN} bytes (got {len(cursor)})")
    return int.from_bytes(cursor[:4], "big"), cursor[4:]


@dataclass(frozen=True)
class HistoryQuery:
    """An inclusive time range filtered by topics and/or bloom (geth bloom semantics).

    ``topics`` non-empty ⇒ exact topic match; else ``bloom`` (None = everything).
    ``cursor`` = "after this item" (exclusive), in the query's direction.
    """

    lower: int
    upper: int
    topics: tuple[bytes, ...] = ()
    bloom: bytes | None = None
    limit: int = MAX_QUERY_LIMIT
    cursor: bytes | None = None
    descending: bool = False


@dataclass(frozen=True)
class HistoryPage:
    envelopes: list[ArchivedEnvelope]
    next_cursor: bytes | None  # None ⇒ no more pages


@dataclass(frozen=True)
class RawHistoryPage:
    """One history page as stored bytes: what a backend's optional ``query_raw`` returns (the
    mailserver streams these; for backends without it, it builds one from a ``HistoryPage``)."""

    raws: list[bytes]  # envelope RLP exactly as stored, in the query's order
    last_cursor: bytes | None  # cursor (sent ‖ hash) of the last envelope; None when empty
    more: bool  # more rows match after this page

    @property
    def next_cursor(self) -> bytes | None:
        """As ``HistoryPage.next_cursor``: where the next page starts; None ⇒ no more pages."""
        return self.last_cursor if self.more else None


@dataclass(frozen=True)
class RetentionPolicy:
    """All limits combine; 0 means "no limit"."""

    max_age_s: int = 0
    max_count: int = 0
    max_bytes: int = 0
    min_free_disk_bytes: int = 0


@dataclass(frozen=True)
class ArchiveStats:
    count: int
    bytes: int  # live bytes (SQLite: (page_count − freelist_count) × page_size)
    oldest_sent: int | None
    newest_sent: int | None
    free_disk_bytes: int | None
    bytes_written_since_start: int
    retention: RetentionPolicy
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PruneResult:
    deleted: int
    reason: str  # which policy deleted them ("max_age", "max_bytes", … or "" when nothing was due)


DurableCallback = Callable[[Sequence[ArchivedEnvelope]], None]


class Archive(abc.ABC):
    """Storage for envelopes. One instance per node; safe to call from the event loop."""

    #: set by implementations; the health model reads it ("ok", or a one-line degraded/failing reason)
    health_reason: str | None = None

    @abc.abstractmethod
    async def open(self) -> None:
        """Open/create and migrate the store."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush everything pending (durably), then close."""

    @abc.abstractmethod
    def submit(self, envelopes: Sequence[ArchivedEnvelope]) -> asyncio.Future[None]:
        """Queue envelopes for writing (duplicates ignored). Never blocks the loop.

        The returned future completes when all of them are durable (group commit), or fails with
        ArchiveError. Whisper sends confirmations only after it completes.
        """

    @abc.abstractmethod
    async def query(self, q: HistoryQuery) -> HistoryPage:
        """One page of matching envelopes, at most ``q.limit``."""

    async def iterate(self, q: HistoryQuery, page_size: int = 500) -> AsyncIterator[ArchivedEnvelope]:
        """Every envelope matching ``q`` (ignoring ``q.limit``), page by page, bounded memory."""
        cursor = q.cursor
        while True:
            page = await self.query(
                HistoryQuery(q.lower, q.upper, q.topics, q.bloom, page_size, cursor, q.descending)
            )
            for env in page.envelopes:
                yield env
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    @abc.abstractmethod
    async def contains(self, sent: int, envelope_hash: bytes) -> bool:
        """Whether the envelope with this key (sent time, hash) is stored; a primary-key lookup."""

    @abc.abstractmethod
    async def stats(self) -> ArchiveStats: ...

    @abc.abstractmethod
    async def prune(self) -> PruneResult:
        """Apply the retention policy now (also runs on a timer)."""

    @abc.abstractmethod
    def set_retention(self, policy: RetentionPolicy) -> None:
        """Replace the retention policy (SIGHUP reload)."""

    async def release_memory(self) -> None:
        """Give back memory the backend caches (called when a burst of traffic is over; the
        caches fill again with the next writes and reads). By default there is nothing to give."""
        return None
