"""The PostgreSQL archive's reads: one statement (one snapshot, one round trip) per history page,
lookups by key, stats from the day counters."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import PoolTimeout

from pimail.archive.base import (
    MAX_QUERY_LIMIT,
    ArchivedEnvelope,
    ArchiveError,
    ArchiveStats,
    HistoryPage,
    HistoryQuery,
    InvalidCursor,
    decode_cursor,
)
from pimail.archive.postgres.core import PgCore
from pimail.archive.postgres.layout import (
    COLUMNS,
    MAX_TOPIC_RANGES,
    ROW_OVERHEAD_BYTES,
    SENT_MAX,
    one_line,
    row_to_envelope,
)
from pimail.envelope.bloom import BLOOM_LEN, is_full


class PgReader(PgCore):
    """Queries, lookups and stats of ``PostgresArchive``."""

    async def query(self, q: HistoryQuery) -> HistoryPage:
        if not 1 <= q.limit <= MAX_QUERY_LIMIT:
            raise ValueError(f"limit must be 1..{MAX_QUERY_LIMIT} (got {q.limit})")
        cursor_item = decode_cursor(q.cursor) if q.cursor else None  # malformed ⇒ InvalidCursor
        if q.bloom is not None and q.bloom != b"" and len(q.bloom) != BLOOM_LEN:
            raise ValueError(f"bloom must be {BLOOM_LEN} bytes (got {len(q.bloom)})")
        if any(len(t) != 4 for t in q.topics):
            raise ValueError("topics must be 4 bytes each")
        pool = self._require_pool()
        lower, upper = max(0, q.lower), min(SENT_MAX, q.upper)
        if lower > upper:
            return HistoryPage([], None)
        params: dict[str, Any] = {"lo": lower, "hi": upper, "n": q.limit + 1}
        if cursor_item is not None:
            params["cs"], params["ch"] = cursor_item
        if q.topics:
            params["topics"] = sorted(set(q.topics))
            stmt = self._page_statement(q, cursor_item is not None, "topics", len(params["topics"]))
        elif q.bloom and not is_full(q.bloom):
            params["bloom"] = format(int.from_bytes(q.bloom, "big"), f"0{BLOOM_LEN * 8}b")  # bit(512) text
            stmt = self._page_statement(q, cursor_item is not None, "bloom", 0)
        else:
            stmt = self._page_statement(q, cursor_item is not None, "all", 0)
        try:
            async with pool.connection() as conn:
                cur = await conn.execute(stmt, params)
                rows = await cur.fetchall()
        except (psycopg.Error, PoolTimeout) as exc:
            raise ArchiveError(f"PostgreSQL query failed: {one_line(exc)}") from None
        if not rows or not rows[0][0]:
            raise InvalidCursor("cursor does not match any stored envelope")
        if rows[0][1] is None:  # the LEFT JOIN's empty page
            return HistoryPage([], None)
        envs = [row_to_envelope(r[1:]) for r in rows[: q.limit]]
        return HistoryPage(envs, envs[-1].cursor if len(rows) > q.limit else None)

    @staticmethod
    def _page_statement(q: HistoryQuery, has_cursor: bool, mode: str, n_topics: int) -> sql.Composed:
        """One statement = one snapshot and one round trip: the cursor's check and the page.

        ``mode`` "all" walks the key range. "topics" (``%(topics)s``): a short list walks each
        topic's (topic, sent, hash) index range in order and merges them, however rare the topics;
        a long one walks the key range with a topic filter. "bloom" (``%(bloom)s``): the stored
        topics the bloom matches (geth BloomFilterMatch on the topics table), then either plan by
        their number; the unused branch is skipped by a one-time filter.
        """
        desc = q.descending

        def order(alias: str) -> sql.SQL:
            a = f"{alias}." if alias else ""
            return sql.SQL(f"ORDER BY {a}sent DESC, {a}hash DESC" if desc else f"ORDER BY {a}sent, {a}hash")

        conds: list[sql.Composable] = [sql.SQL("c.ok"), sql.SQL("e.sent >= %(lo)s AND e.sent <= %(hi)s")]
        if has_cursor:
            conds.append(sql.SQL("(e.sent, e.hash) < (%(cs)s, %(ch)s)" if desc
                                 else "(e.sent, e.hash) > (%(cs)s, %(ch)s)"))
            found = sql.SQL("EXISTS (SELECT 1 FROM envelopes WHERE sent = %(cs)s AND hash = %(ch)s)")
        else:
            found = sql.SQL("true")
        cols = sql.SQL(", ".join(f"e.{c.strip()}" for c in COLUMNS.split(",")))
        where = sql.SQL(" AND ").join(conds)

        def per_topic(source: str, guard: str = "") -> sql.Composed:
            return sql.SQL(
                "SELECT x.* FROM {source} CROSS JOIN LATERAL ("
                "SELECT {cols} FROM envelopes e WHERE e.topic = t.topic AND {where} {o_e} LIMIT %(n)s) x "
                "{guard} {o_x} LIMIT %(n)s"
            ).format(source=sql.SQL(source), cols=cols, where=where, o_e=order("e"), guard=sql.SQL(guard),
                     o_x=order("x"))

        def filtered(topic_filter: str) -> sql.Composed:
            return sql.SQL("SELECT {cols} FROM envelopes e WHERE {where} AND {tf} {o_e} LIMIT %(n)s").format(
                cols=cols, where=where, tf=sql.SQL(topic_filter), o_e=order("e"))

        prefix = sql.SQL("")
        if mode == "topics" and n_topics <= MAX_TOPIC_RANGES:
            inner = per_topic("unnest(%(topics)s::bytea[]) AS t(topic)")
        elif mode == "topics":
            inner = filtered("e.topic = ANY(%(topics)s::bytea[])")
        elif mode == "bloom":
            match = "(bloom & %(bloom)s::bit(512)) = bloom"
            prefix = sql.SQL(
                f"WITH m AS MATERIALIZED (SELECT topic FROM topics WHERE {match} "
                f"LIMIT {MAX_TOPIC_RANGES + 1}), "
                "nm AS MATERIALIZED (SELECT count(*) AS k FROM m) "
            )
            inner = sql.SQL("({sparse}) UNION ALL ({dense})").format(
                sparse=per_topic("m AS t", f"WHERE (SELECT k FROM nm) <= {MAX_TOPIC_RANGES}"),
                dense=filtered(f"(SELECT k FROM nm) > {MAX_TOPIC_RANGES} "
                               f"AND e.topic IN (SELECT topic FROM topics WHERE {match})"),
            )
        else:
            inner = filtered("true")
        return sql.SQL(
            "{prefix}SELECT c.ok, p.* FROM (SELECT {found} AS ok) c "
            "LEFT JOIN LATERAL ({inner}) p ON true {o_p}"
        ).format(prefix=prefix, found=found, inner=inner, o_p=order("p"))

    async def contains(self, sent: int, envelope_hash: bytes) -> bool:
        if len(envelope_hash) != 32 or not 0 <= sent < 2**32:
            return False
        try:
            async with self._require_pool().connection() as conn:
                cur = await conn.execute(
                    "SELECT 1 FROM envelopes WHERE sent = %s AND hash = %s", (sent, envelope_hash)
                )
                return await cur.fetchone() is not None
        except (psycopg.Error, PoolTimeout) as exc:
            raise ArchiveError(f"PostgreSQL query failed: {one_line(exc)}") from None

    async def get(self, sent: int, envelope_hash: bytes) -> ArchivedEnvelope | None:
        """One stored envelope by its key, or None."""
        async with self._require_pool().connection() as conn:
            cur = await conn.execute(
                f"SELECT {COLUMNS} FROM envelopes WHERE sent = %s AND hash = %s", (sent, envelope_hash)
            )
            row = await cur.fetchone()
        return None if row is None else row_to_envelope(row)

    async def stats(self) -> ArchiveStats:
        try:
            async with self._require_pool().connection() as conn:
                cur = await conn.execute(
                    "SELECT (SELECT coalesce(sum(n), 0) FROM day_counts),"
                    " (SELECT coalesce(sum(bytes), 0) FROM day_counts),"
                    " (SELECT min(sent) FROM envelopes), (SELECT max(sent) FROM envelopes)"
                )
                row = await cur.fetchone()
                assert row is not None
                count, raw_bytes, oldest, newest = (int(row[0]), int(row[1]), row[2], row[3])
                cur = await conn.execute(
                    "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0), count(*)"
                    " FROM pg_inherits i WHERE i.inhparent = 'envelopes'::regclass"
                )
                rel = await cur.fetchone()
                assert rel is not None
        except (psycopg.Error, PoolTimeout) as exc:
            raise ArchiveError(f"PostgreSQL query failed: {one_line(exc)}") from None
        return ArchiveStats(
            count=count,
            bytes=raw_bytes + count * ROW_OVERHEAD_BYTES,
            oldest_sent=None if oldest is None else int(oldest),
            newest_sent=None if newest is None else int(newest),
            free_disk_bytes=None,
            bytes_written_since_start=self._bytes_written,
            retention=self._retention,
            extra={
                "backend": "postgresql",
                "server": self.where,
                "relation_bytes": int(rel[0]),
                "partitions": int(rel[1]),
                "envelope_bytes": raw_bytes,
                "inserted_since_start": self._inserted,
                "duplicates_since_start": self._duplicates,
                "pending": self._queue.waiting,
            },
        )

