"""The streaming read path: ``SqliteArchive.query_raw`` pages equal ``query`` pages, and the mailserver
delivers the same history through either (backends without ``query_raw`` use ``query``)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from pimail.archive.base import HistoryQuery, InvalidCursor
from pimail.archive.sqlite import SqliteArchive
from pimail.envelope.bloom import FULL_BLOOM, topics_to_bloom
from pimail.envelope.codec import Envelope
from pimail.mailserver.request import MessagesRequest
from pimail.mailserver.response import RequestComplete

from .nodes import TOPIC_A, TOPIC_B, archived, client_node, mail_node, plain_envelopes

pytestmark = pytest.mark.timeout(120)
NOW = int(time.time())
TOPIC_C = bytes.fromhex("0badf00d")


def _mixed_envelopes() -> list[Envelope]:
    envs = plain_envelopes(40, NOW - 2000, TOPIC_A) + plain_envelopes(25, NOW - 1990, TOPIC_B)
    # many envelopes in one second, so that pages end inside a second
    envs += [Envelope.build(NOW - 1500 + 60, 60, TOPIC_C, b"same second %d" % i, i) for i in range(30)]
    return envs


async def _pages(archive: SqliteArchive, q: HistoryQuery, raw: bool) -> list[tuple[list[bytes], Any]]:
    out: list[tuple[list[bytes], Any]] = []
    cursor = q.cursor
    while True:
        page_q = HistoryQuery(q.lower, q.upper, q.topics, q.bloom, q.limit, cursor, q.descending)
        if raw:
            rp = await archive.query_raw(page_q)
            out.append((rp.raws, rp.next_cursor))
            assert (rp.last_cursor is None) == (not rp.raws)
            cursor = rp.next_cursor
        else:
            p = await archive.query(page_q)
            out.append(([e.raw for e in p.envelopes], p.next_cursor))
            cursor = p.next_cursor
        if cursor is None:
            return out


@pytest.mark.parametrize("many_topics_path", [False, True])
def test_query_raw_pages_equal_query_pages(tmp_path: Path, many_topics_path: bool) -> None:
    async def main() -> None:
        archive = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=5)
        await archive.open()
        try:
            if many_topics_path:
                archive.max_topic_ranges = 0  # bloom/topic queries walk the time range instead
            envs = _mixed_envelopes()
            await archive.submit([archived(e) for e in envs])
            queries = [
                HistoryQuery(NOW - 3000, NOW, limit=7),
                HistoryQuery(NOW - 3000, NOW, bloom=FULL_BLOOM, limit=11),
                HistoryQuery(NOW - 3000, NOW, topics=(TOPIC_B, TOPIC_C), limit=6),
                HistoryQuery(NOW - 3000, NOW, bloom=topics_to_bloom([TOPIC_A]), limit=9),
                HistoryQuery(NOW - 3000, NOW, limit=8, descending=True),
                HistoryQuery(NOW - 1995, NOW - 1500, topics=(TOPIC_A,), limit=1000),
                HistoryQuery(NOW - 100, NOW, limit=5),  # nothing there
            ]
            for q in queries:
                raw_pages = await _pages(archive, q, raw=True)
                full_pages = await _pages(archive, q, raw=False)
                assert raw_pages == full_pages, q
            # every stored envelope comes back exactly once through raw paging
            all_raw = [r for raws, _ in await _pages(archive, queries[0], raw=True) for r in raws]
            assert sorted(all_raw) == sorted(e.raw for e in envs)
            # the cursor names the last envelope of the page
            rp = await archive.query_raw(HistoryQuery(NOW - 3000, NOW, limit=3))
            last = Envelope.decode(rp.raws[-1])
            assert rp.more and rp.last_cursor == rp.next_cursor == last.sent.to_bytes(4, "big") + last.hash
            # same errors as query
            foreign = (NOW - 1000).to_bytes(4, "big") + b"\x11" * 32
            with pytest.raises(InvalidCursor):
                await archive.query_raw(HistoryQuery(NOW - 3000, NOW, cursor=foreign))
            with pytest.raises(InvalidCursor):
                await archive.query_raw(HistoryQuery(NOW - 3000, NOW, cursor=b"short"))
            with pytest.raises(ValueError):
                await archive.query_raw(HistoryQuery(NOW - 3000, NOW, limit=1001))
        finally:
            await archive.close()

    asyncio.run(main())


class _QueryOnly:
    """A backend without ``query_raw`` (as PostgreSQL is today): the mailserver must fall back."""

    def __init__(self, inner: SqliteArchive) -> None:
        self.inner = inner
        self.queries = 0

    async def query(self, q: HistoryQuery) -> Any:
        self.queries += 1
        return await self.inner.query(q)

    def __getattr__(self, name: str) -> Any:
        if name == "query_raw":
            raise AttributeError(name)
        return getattr(self.inner, name)


@pytest.mark.parametrize("fallback", [False, True])
def test_delivery_is_the_same_through_query_raw_and_query(tmp_path: Path, fallback: bool) -> None:
    async def main() -> None:
        inner = SqliteArchive(tmp_path / "ms" / "a.sqlite", flush_interval_ms=5)
        backend: Any = _QueryOnly(inner) if fallback else inner
        async with mail_node(tmp_path / "ms", archive=backend) as ms, client_node(tmp_path / "c") as client:
            envs = _mixed_envelopes()
            await ms.fill(envs)
            for form in ("direct", "legacy"):
                got, summary = await client.history(ms.enode, form=form, lower=NOW - 3000, upper=NOW,
                                                    limit=13, request_pow=0.000002)
                assert sorted(e.hash for e in got) == sorted(e.hash for e in envs), form
                assert summary.duplicates == 0 and summary.completed
            # 125 of a limited request: last hash and cursor of the limit-th envelope, oldest first
            client.recorder.packets.clear()
            client.recorder.responses.clear()
            peer = await client.connect(ms.enode)
            await peer.send_wait("shh", 126, MessagesRequest(b"q" * 32, NOW - 3000, NOW, 10, b"",
                                                             FULL_BLOOM).encode())
            (resp,) = await client.recorder.wait_responses(1)
            got = [Envelope.decode(r) if isinstance(r, bytes) else r
                   for p in client.recorder.packets for r in p]
            assert isinstance(resp, RequestComplete) and len(got) == 10
            assert [e.sent for e in got] == sorted(e.sent for e in got)
            assert resp.last_envelope_hash == got[-1].hash
            assert resp.cursor == got[-1].sent.to_bytes(4, "big") + got[-1].hash
        if fallback:
            assert backend.queries > 0

    asyncio.run(main())
