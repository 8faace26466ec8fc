"""The PostgreSQL archive's layout: schema migrations, the statements on it, partitions by day.

See ``pimail.archive.postgres`` for the design.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from pimail.archive.base import ArchivedEnvelope

SCHEMA_VERSION = 2
DAY_S = 86400  # one partition per UTC day of sent time
PARTITION_PAST_DAYS = 400  # older days go to the default partition (a year of history + slack)
PARTITION_AHEAD_DAYS = 1  # the maintenance timer creates tomorrow's partition today
ROW_OVERHEAD_BYTES = 100  # heap tuple header, line pointer, key/topic/hash index entries
MAX_TOPIC_RANGES = 256  # up to this many topics: one ordered index range per topic; else a filtered scan
EVICT_BATCH_ROWS = 5000  # rows per DELETE when retention trims inside a partition
SENT_MAX = 2**32 - 1  # sent is a uint32 on the wire
DEFAULT_POOL_MAX = 4
CONNECT_TIMEOUT_S = 10.0
PRUNELOCK_WAIT_S = 30.0  # how long one node waits for another's retention run
POOL_WAIT_S = 30.0  # longest a query waits for a free connection before failing
MAX_WAITING = 256  # queries queued for a connection beyond this fail at once (ArchiveError)

# advisory lock namespaces (the second key is crc32 of the schema name, so schemas do not contend)
LOCK_MIGRATE = 0x70696D01
LOCK_PARTITION = 0x70696D02
LOCK_PRUNE = 0x70696D03

HEALTH_WRITE = "archive.write_failed"
HEALTH_BACKLOG = "archive.backlog"
HEALTH_RETENTION = "archive.retention_failed"

MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE envelopes (
            sent bigint NOT NULL,
            hash bytea NOT NULL,
            topic bytea NOT NULL,
            expiry bigint NOT NULL,
            arrived bigint NOT NULL,
            size integer NOT NULL,
            raw bytea NOT NULL,
            PRIMARY KEY (sent, hash)
        ) PARTITION BY RANGE (sent)""",
        "CREATE INDEX envelopes_topic_sent ON envelopes (topic, sent, hash)",
        "CREATE INDEX envelopes_hash ON envelopes (hash)",
        "CREATE TABLE envelopes_default PARTITION OF envelopes DEFAULT",
        # every topic ever stored, with its bloom: a request bloom becomes the set of stored topics
        # it matches (geth BloomFilterMatch), served by the (topic, sent, hash) index
        "CREATE TABLE topics (topic bytea PRIMARY KEY, bloom bit(512) NOT NULL)",
        # live envelopes and bytes per UTC day of sent, kept in step by every insert and delete,
        # so stats and retention never count(*) a fleet-sized table
        "CREATE TABLE day_counts (day bigint PRIMARY KEY, n bigint NOT NULL, bytes bigint NOT NULL)",
    ],
    # every lookup takes the whole key (sent, hash): the primary key serves it, and the hash index
    # was only costing writes
    2: ["DROP INDEX IF EXISTS envelopes_hash"],
}

COLUMNS = "sent, hash, topic, expiry, raw, arrived"

# Rows go in key order and counters in day order: every node locks in the same global order, so
# nodes archiving the same envelopes at the same moment wait for each other but never deadlock.
INSERT_SQL = f"""
WITH ins AS (
    INSERT INTO envelopes (sent, hash, topic, expiry, arrived, size, raw)
    SELECT s, h, t, e, a, octet_length(r), r
    FROM unnest(%b::bigint[], %b::bytea[], %b::bytea[], %b::bigint[], %b::bigint[], %b::bytea[])
        AS x(s, h, t, e, a, r)
    ORDER BY s, h
    ON CONFLICT DO NOTHING
    RETURNING sent, size
), counted AS (
    INSERT INTO day_counts (day, n, bytes)
    SELECT sent - mod(sent, {DAY_S}), count(*), sum(size) FROM ins GROUP BY 1 ORDER BY 1
    ON CONFLICT (day) DO UPDATE SET n = day_counts.n + EXCLUDED.n, bytes = day_counts.bytes + EXCLUDED.bytes
)
SELECT count(*), coalesce(sum(size), 0) FROM ins
"""

# Delete the rows a subquery picks and take them off the day counters, in one statement.
DELETE_SQL = f"""
WITH d AS (
    DELETE FROM envelopes WHERE (sent, hash) IN ({{pick}}) RETURNING sent, size
), per_day AS (
    SELECT sent - mod(sent, {DAY_S}) AS day, count(*) AS n, sum(size) AS bytes FROM d GROUP BY 1
), counted AS (
    UPDATE day_counts c SET n = c.n - per_day.n, bytes = c.bytes - per_day.bytes
    FROM per_day WHERE c.day = per_day.day
)
SELECT count(*), coalesce(sum(size), 0) FROM d
"""
WRITE_ATTEMPTS = 3  # a batch is retried after a deadlock or serialization failure
WRITERS = 2  # batches in flight to the server at once: one commits while the next is sent

INSERT_TOPICS_SQL = """
INSERT INTO topics (topic, bloom)
SELECT t, ('x' || encode(b, 'hex'))::bit(512) FROM unnest(%s::bytea[], %s::bytea[]) AS x(t, b)
ON CONFLICT DO NOTHING
"""

MAX_KNOWN_TOPICS = 100_000  # topics this process remembers as stored (skips re-inserting them)


def describe_url(url: str) -> str:
    """``user@host:port/db`` of a connection URL, never its password (for logs and errors)."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "<unparsable PostgreSQL URL>"
    user = str(params.get("user") or "")
    host = str(params.get("host") or "localhost")
    port = str(params.get("port") or "5432")
    db = str(params.get("dbname") or user)
    return f"{user + '@' if user else ''}{host}:{port}/{db}"


def day_start(sent: int) -> int:
    return sent - sent % DAY_S


def partition_name(day: int) -> str:
    return "envelopes_p" + time.strftime("%Y%m%d", time.gmtime(day))


@dataclass(frozen=True)
class Partition:
    name: str
    lower: int  # inclusive
    upper: int  # exclusive


def row_to_envelope(row: Sequence[Any]) -> ArchivedEnvelope:
    sent, h, topic, expiry, raw, arrived = row
    return ArchivedEnvelope(int(sent), bytes(h), bytes(topic), int(expiry), bytes(raw), int(arrived))


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
