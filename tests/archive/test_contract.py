"""The ``Archive`` contract: every backend in conftest.BACKENDS must pass all of this."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimail.archive.base import (
    MAX_QUERY_LIMIT,
    Archive,
    ArchivedEnvelope,
    ArchiveError,
    HistoryQuery,
    InvalidCursor,
    RetentionPolicy,
)
from pimail.envelope.bloom import FULL_BLOOM, bloom_matches, topic_to_bloom, topics_to_bloom
from tests.archive.conftest import BackendFactory, make_envelope, run, topic_n

ALL = (0, 2**32 - 1)
BASE = 1_700_000_000


async def opened(backend: BackendFactory, tmp: Path, **options: object) -> Archive:
    archive = backend(tmp, **options)
    await archive.open()
    return archive


async def everything(archive: Archive, q: HistoryQuery) -> list[ArchivedEnvelope]:
    return [env async for env in archive.iterate(q, page_size=7)]


def test_round_trip_keeps_every_field(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        envs = [make_envelope(i, BASE + i, topic_n(i), size=10 + i, arrived=BASE + i + 3) for i in range(5)]
        await a.submit(envs)
        page = await a.query(HistoryQuery(*ALL))
        assert page.next_cursor is None
        assert sorted(page.envelopes, key=lambda e: e.cursor) == sorted(envs, key=lambda e: e.cursor)
        await a.close()

    run(main())


def test_duplicates_are_ignored(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        envs = [make_envelope(i, BASE + i % 2) for i in range(20)]
        await a.submit(envs + envs[:5])  # duplicates inside one batch
        await a.submit(envs[5:10])  # and across batches
        assert (await a.stats()).count == 20
        assert len(await everything(a, HistoryQuery(*ALL))) == 20
        await a.close()

    run(main())


def test_range_is_inclusive(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        await a.submit([make_envelope(i, BASE + i) for i in range(10)])
        got = await everything(a, HistoryQuery(BASE + 3, BASE + 6))
        assert sorted(e.sent for e in got) == [BASE + 3, BASE + 4, BASE + 5, BASE + 6]
        assert await everything(a, HistoryQuery(BASE + 7, BASE + 6)) == []  # lower > upper: nothing
        assert [e.sent for e in await everything(a, HistoryQuery(BASE + 9, BASE + 9))] == [BASE + 9]
        await a.close()

    run(main())


def test_order_ascending_and_descending(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        envs = [make_envelope(i, BASE + i % 4) for i in range(30)]  # equal timestamps too
        await a.submit(envs)
        asc = await everything(a, HistoryQuery(*ALL))
        desc = await everything(a, HistoryQuery(*ALL, descending=True))
        assert [e.cursor for e in asc] == sorted(e.cursor for e in envs)
        assert [e.cursor for e in desc] == sorted((e.cursor for e in envs), reverse=True)
        await a.close()

    run(main())


def test_topics_and_bloom_filters(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        envs = [make_envelope(i, BASE + i, topic_n(i % 40)) for i in range(400)]
        await a.submit(envs)
        want = (topic_n(3), topic_n(17))
        got = await everything(a, HistoryQuery(*ALL, topics=want))
        assert {e.hash for e in got} == {e.hash for e in envs if e.topic in want}
        # bloom: geth BloomFilterMatch against each stored topic's bloom (false positives included)
        for bloom in (topics_to_bloom(want), topic_to_bloom(topic_n(5)), bytes(64),
                      bytes([0x81] * 64), FULL_BLOOM):
            got = await everything(a, HistoryQuery(*ALL, bloom=bloom))
            expect = {e.hash for e in envs if bloom_matches(bloom, topic_to_bloom(e.topic))}
            assert {e.hash for e in got} == expect
        assert len(await everything(a, HistoryQuery(*ALL, bloom=None))) == 400
        # topics win over the bloom when both are given
        got = await everything(a, HistoryQuery(*ALL, topics=(topic_n(3),), bloom=bytes(64)))
        assert len(got) == 10
        await a.close()

    run(main())


def test_limit_and_next_cursor(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        await a.submit([make_envelope(i, BASE) for i in range(1005)])
        page = await a.query(HistoryQuery(*ALL, limit=MAX_QUERY_LIMIT))
        assert len(page.envelopes) == MAX_QUERY_LIMIT
        assert page.next_cursor == page.envelopes[-1].cursor
        rest = await a.query(HistoryQuery(*ALL, limit=MAX_QUERY_LIMIT, cursor=page.next_cursor))
        assert len(rest.envelopes) == 5 and rest.next_cursor is None
        exact = await a.query(HistoryQuery(*ALL, limit=5, cursor=page.next_cursor))
        assert exact.next_cursor is None  # exactly the last five: no empty extra page
        for bad in (0, MAX_QUERY_LIMIT + 1, -1):
            with pytest.raises(ValueError):
                await a.query(HistoryQuery(*ALL, limit=bad))
        await a.close()

    run(main())


def test_cursor_is_exclusive_and_must_match(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        envs = sorted((make_envelope(i, BASE + i // 3) for i in range(9)), key=lambda e: e.cursor)
        await a.submit(envs)
        page = await a.query(HistoryQuery(*ALL, cursor=envs[4].cursor))
        assert [e.cursor for e in page.envelopes] == [e.cursor for e in envs[5:]]
        page = await a.query(HistoryQuery(*ALL, cursor=envs[4].cursor, descending=True))
        assert [e.cursor for e in page.envelopes] == [e.cursor for e in reversed(envs[:4])]
        unknown = make_envelope(999, BASE + 1).cursor
        for bad in (unknown, envs[0].cursor[:35], envs[0].cursor + b"\x00",
                    (BASE + 1).to_bytes(4, "big") + envs[0].hash):  # right hash, wrong time
            with pytest.raises(InvalidCursor):
                await a.query(HistoryQuery(*ALL, cursor=bad))
        # a cursor outside the query's range is still "after this item"
        page = await a.query(HistoryQuery(BASE + 2, BASE + 2, cursor=envs[0].cursor))
        assert [e.cursor for e in page.envelopes] == [e.cursor for e in envs[6:]]
        await a.close()

    run(main())


def test_contains(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        envs = [make_envelope(i) for i in range(3)]
        await a.submit(envs[:2])
        assert await a.contains(envs[0].sent, envs[0].hash)
        assert await a.contains(envs[1].sent, envs[1].hash)
        assert not await a.contains(envs[2].sent, envs[2].hash)
        # the key is (sent, hash): the right hash at another second is not stored
        assert not await a.contains(envs[0].sent + 1, envs[0].hash)
        assert not await a.contains(envs[0].sent, b"short")
        assert not await a.contains(-1, envs[0].hash) and not await a.contains(2**32, envs[0].hash)
        await a.close()

    run(main())


def test_stats(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        policy = RetentionPolicy(max_age_s=86400, max_count=10_000, max_bytes=10**9, min_free_disk_bytes=1)
        a = await opened(backend, tmp_path, retention=policy)
        empty = await a.stats()
        assert empty.count == 0 and empty.oldest_sent is None and empty.newest_sent is None
        now = int(time.time())
        await a.submit([make_envelope(i, now - 100 + i, size=300) for i in range(50)])
        s = await a.stats()
        assert s.count == 50
        assert s.oldest_sent == now - 100 and s.newest_sent == now - 51
        assert s.bytes >= empty.bytes and s.bytes > 0
        assert s.retention == policy
        assert s.free_disk_bytes is None or s.free_disk_bytes > 0
        assert s.bytes_written_since_start >= 50 * 300
        await a.close()

    run(main())


def test_durable_callback_and_futures(backend: BackendFactory, tmp_path: Path) -> None:
    seen: list[bytes] = []

    async def main() -> None:
        a = await opened(backend, tmp_path, on_durable=lambda envs: seen.extend(e.hash for e in envs))
        envs = [make_envelope(i) for i in range(10)]
        futs = [a.submit(envs[i : i + 2]) for i in range(0, 10, 2)]
        for f in futs:
            assert await f is None
        assert set(seen) == {e.hash for e in envs}
        await a.close()
        with pytest.raises(ArchiveError):
            await a.submit([make_envelope(11)])

    run(main())


def test_close_flushes_pending(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path, flush_interval_ms=3_600_000)
        fut = a.submit([make_envelope(i) for i in range(5)])
        await asyncio.wait_for(a.close(), 120)  # must not wait out the hour's interval, must write them
        assert fut.done() and fut.exception() is None
        b = await opened(backend, tmp_path)
        assert (await b.stats()).count == 5
        await b.close()

    run(main())


def test_retention_max_count_oldest_first(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path, retention=RetentionPolicy(max_count=30))
        envs = [make_envelope(i, BASE + i) for i in range(100)]
        await a.submit(envs)
        result = await a.prune()
        assert result.deleted == 70 and "max_count" in result.reason
        left = await everything(a, HistoryQuery(*ALL))
        assert [e.sent for e in left] == [BASE + i for i in range(70, 100)]
        again = await a.prune()
        assert again.deleted == 0 and again.reason == ""
        await a.close()

    run(main())


def test_retention_max_age(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        now = int(time.time())
        a = await opened(backend, tmp_path, retention=RetentionPolicy(max_age_s=3600))
        old = [make_envelope(i, now - 7200 + i) for i in range(10)]
        new = [make_envelope(100 + i, now - 60 + i) for i in range(10)]
        await a.submit(old + new)
        result = await a.prune()
        assert result.deleted == 10 and "max_age" in result.reason
        assert {e.hash for e in await everything(a, HistoryQuery(*ALL))} == {e.hash for e in new}
        await a.close()

    run(main())


def test_retention_max_bytes_and_set_retention(backend: BackendFactory, tmp_path: Path) -> None:
    async def main() -> None:
        a = await opened(backend, tmp_path)
        await a.submit([make_envelope(i, BASE + i, size=1000) for i in range(3000)])
        big = await a.stats()
        assert (await a.prune()).deleted == 0  # no limits yet
        cap = big.bytes // 3
        a.set_retention(RetentionPolicy(max_bytes=cap))
        result = await a.prune()
        assert "max_bytes" in result.reason and result.deleted > 0
        after = await a.stats()
        assert after.bytes <= cap
        assert after.count == 3000 - result.deleted
        assert after.oldest_sent == BASE + result.deleted  # oldest went first
        await a.close()

    run(main())


# -- the paging property ------------------------------------------------------------------------

spec = st.tuples(st.integers(0, 4), st.integers(0, 3))  # (second offset, topic index): many ties


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    initial=st.lists(spec, min_size=0, max_size=40),
    later=st.lists(st.lists(spec, max_size=4), max_size=6),
    page=st.integers(1, 6),
    descending=st.booleans(),
    window=st.tuples(st.integers(0, 4), st.integers(0, 4)),
    filt=st.sampled_from(["none", "topics", "bloom"]),
)
def test_paging_returns_each_match_exactly_once(
    backend: BackendFactory, initial: list[tuple[int, int]], later: list[list[tuple[int, int]]],
    page: int, descending: bool, window: tuple[int, int], filt: str,
) -> None:
    counter = iter(range(10**6))

    def build(specs: list[tuple[int, int]]) -> list[ArchivedEnvelope]:
        return [make_envelope(next(counter), BASE + s, topic_n(t)) for s, t in specs]

    lower, upper = BASE + min(window), BASE + max(window)
    topics = (topic_n(0), topic_n(2)) if filt == "topics" else ()
    bloom = topic_to_bloom(topic_n(1)) if filt == "bloom" else None

    def matches(e: ArchivedEnvelope) -> bool:
        if not lower <= e.sent <= upper:
            return False
        if topics:
            return e.topic in topics
        return bloom is None or bloom_matches(bloom, topic_to_bloom(e.topic))

    async def main(tmp: Path) -> None:
        a = await opened(backend, tmp)
        first = build(initial)
        await a.submit(first)
        seen: list[ArchivedEnvelope] = []
        cursor = None
        inserts = iter(later)
        added: list[ArchivedEnvelope] = []
        while True:
            p = await a.query(HistoryQuery(lower, upper, topics, bloom, page, cursor, descending))
            assert len(p.envelopes) <= page
            seen.extend(p.envelopes)
            if p.next_cursor is None:
                break
            assert p.next_cursor == p.envelopes[-1].cursor
            cursor = p.next_cursor
            more = build(next(inserts, []))
            added += more
            await a.submit(more)
        hashes = [e.hash for e in seen]
        assert len(hashes) == len(set(hashes)), "an envelope came back twice"
        assert all(matches(e) for e in seen)
        assert {e.hash for e in first if matches(e)} <= set(hashes), "an envelope was skipped"
        assert set(hashes) <= {e.hash for e in first + added}
        keys = [e.cursor for e in seen]
        assert keys == sorted(keys, reverse=descending)
        await a.close()

    with tempfile.TemporaryDirectory() as tmp:
        run(main(Path(tmp)))
