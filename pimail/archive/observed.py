"""``ObservedArchive``: any ``Archive`` with a watcher on its writes.

The daemon hands the relay this wrapper instead of the backend itself: each durable batch is
counted (and blinks the LED), each failed one is reported, and everything else passes straight
through to the backend, extras (``vacuum``, ``health_reason``) included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from pimail.archive.base import Archive, ArchivedEnvelope, ArchiveError, ArchiveStats

T = TypeVar("T")


class ObservedArchive(Archive):
    """``inner`` with ``on_durable(count)`` after each durable submit and ``on_error(reason)`` after
    each failed one; ``on_failure(exc)``, when set, hears every failed call (reads and writes), so
    a watcher can tell a damaged file from a full disk. ``inner`` may be replaced while running
    (``pimail.archive.sqlite.guard`` does when the file is damaged)."""

    def __init__(self, inner: Archive, on_durable: Callable[[int], None], on_error: Callable[[str], None]):
        self.inner = inner
        self._on_durable = on_durable
        self._on_error = on_error
        self.on_failure: Callable[[BaseException], None] | None = None

    def _failed(self, exc: BaseException) -> None:
        if self.on_failure is not None and isinstance(exc, ArchiveError):
            self.on_failure(exc)

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def submit(self, envelopes: Sequence[ArchivedEnvelope]) -> asyncio.Future[None]:
        fut = self.inner.submit(envelopes)
        count = len(envelopes)

        def done(f: asyncio.Future[None]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if exc is None:
                self._on_durable(count)
            else:
                self._on_error(str(exc) or type(exc).__name__)
                self._failed(exc)

        fut.add_done_callback(done)
        return fut

    async def _watched(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except ArchiveError as exc:
            self._failed(exc)
            raise

    async def query(self, q: Any) -> Any:
        return await self._watched(self.inner.query(q))

    def iterate(self, q: Any, page_size: int = 500) -> Any:
        return self.inner.iterate(q, page_size)

    async def contains(self, sent: int, envelope_hash: bytes) -> bool:
        return await self._watched(self.inner.contains(sent, envelope_hash))

    async def stats(self) -> ArchiveStats:
        return await self._watched(self.inner.stats())

    async def prune(self) -> Any:
        return await self.inner.prune()

    def set_retention(self, policy: Any) -> None:
        self.inner.set_retention(policy)

    def __getattr__(self, name: str) -> Any:  # backend extras (e.g. vacuum) stay reachable
        attr = getattr(self.inner, name)
        if name == "query_raw":  # the mailserver's streaming reads: watched like query
            async def query_raw(q: Any) -> Any:
                return await self._watched(attr(q))

            return query_raw
        return attr
