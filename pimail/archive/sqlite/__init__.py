"""The embedded archive: one SQLite file in WAL mode, written by one thread with group commit.

Rooms: ``layout`` (keys, schema, migrations), ``core`` (settings, the writer connection, health),
``writer`` (group commit, inserts, recovery), ``space`` (reserve, eviction, retention, vacuum),
``reader`` (queries, stats), and ``archive`` (``SqliteArchive``: open and close).
"""

from __future__ import annotations

from pimail.archive.sqlite.archive import SqliteArchive
from pimail.archive.sqlite.core import HEALTH_DISK_FULL, HEALTH_DISK_LOW, HEALTH_WRITE
from pimail.archive.sqlite.layout import (
    BUCKET_EXPR,
    BUCKET_SHIFT,
    PAGE_SIZE,
    PROBE_WINDOW,
    SCHEMA_VERSION,
    TOPIC_SPAN_BITS,
    V1_HASH_EXPR,
    Row,
    key_bucket,
    key_sent,
    make_key,
    migrate,
    probe_keys,
    rows_to_envelopes,
    span_ceiling,
    span_floor,
    topic_bytes,
    topic_int,
)
from pimail.archive.sqlite.space import RESERVE_BYTES

__all__ = [
    "BUCKET_EXPR",
    "BUCKET_SHIFT",
    "HEALTH_DISK_FULL",
    "HEALTH_DISK_LOW",
    "HEALTH_WRITE",
    "PAGE_SIZE",
    "PROBE_WINDOW",
    "RESERVE_BYTES",
    "SCHEMA_VERSION",
    "TOPIC_SPAN_BITS",
    "V1_HASH_EXPR",
    "Row",
    "SqliteArchive",
    "key_bucket",
    "key_sent",
    "make_key",
    "migrate",
    "probe_keys",
    "rows_to_envelopes",
    "span_ceiling",
    "span_floor",
    "topic_bytes",
    "topic_int",
]
