"""``ObservedArchive``: any ``Archive`` with a watcher on its writes.

The daemon hands the relay this wrapper instead of the backend itself: each durable batch is
counted (and blinks the LED), each failed one is reported, and everything else passes straight
through to the backend, extras (``vacuum``, ``health_reason``) included.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from pimail.archive.base import Archive, ArchivedEnvelope, ArchiveStats


class ObservedArchive(Archive):
    """``inner`` with ``on_durable(count)`` after each durable submit and ``on_error(reason)`` after
    each failed one."""

    def __init__(self, inner: Archive, on_durable: Callable[[int], None], on_error: Callable[[str], None]):
        self.inner = inner
        self._on_durable = on_durable
        self._on_error = on_error

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

        fut.add_done_callback(done)
        return fut

    async def query(self, q: Any) -> Any:
        return await self.inner.query(q)

    def iterate(self, q: Any, page_size: int = 500) -> Any:
        return self.inner.iterate(q, page_size)

    async def contains(self, sent: int, envelope_hash: bytes) -> bool:
        return await self.inner.contains(sent, envelope_hash)

    async def stats(self) -> ArchiveStats:
        return await self.inner.stats()

    async def prune(self) -> Any:
        return await self.inner.prune()

    def set_retention(self, policy: Any) -> None:
        self.inner.set_retention(policy)

    def __getattr__(self, name: str) -> Any:  # backend extras (e.g. vacuum) stay reachable
        return getattr(self.inner, name)
