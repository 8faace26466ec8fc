"""The fleet backend: several pimail nodes archive into (and serve from) one PostgreSQL database.

Same ``Archive`` contract as the SQLite store, with these PostgreSQL specifics:

* psycopg 3 with an ``AsyncConnectionPool``: every round trip is awaited on the event loop's own
  socket readiness, so the loop never blocks on the database.
* Schema in its own PostgreSQL schema (default ``pimail``), versioned by a ``schema_version`` table;
  migrations run under an advisory lock so nodes starting together do not race; an archive written
  by a newer pimail refuses to open (``SchemaTooNew``).
* ``envelopes`` is keyed by ``(sent, hash)`` and inserted with ``ON CONFLICT DO NOTHING``: every node
  of a fleet archives the same relayed envelope and only the first insert counts. Each batch goes
  in key order, so nodes inserting the same envelopes at once wait for each other, never deadlock.
* Indexes: the key (time ranges, cursors, ``contains``) and ``(topic, sent, hash)`` (topic
  requests: one ordered index range per topic, merged); schema version 1 also had one on ``hash``,
  which version 2 drops (every lookup takes the whole key). A request bloom is turned into the
  stored topics it matches (geth BloomFilterMatch) through a small ``topics`` table holding each
  topic's bloom, then served like a topic request. ``day_counts`` keeps envelopes and bytes per
  day in step with every insert and delete, so stats and retention never ``count(*)``.
* Time partitioning: one range partition per UTC day of ``sent``, created on demand (and a day
  ahead by the maintenance timer) plus a default partition for times outside the window. Age
  retention drops whole day partitions; only the boundary day is trimmed row by row.
* Size accounting is logical: ``bytes`` = stored envelope bytes + ``ROW_OVERHEAD_BYTES`` per row, so
  ``max_bytes`` is comparable across servers and falls as soon as rows go (PostgreSQL reuses the
  space; the physical size is reported in ``stats().extra["relation_bytes"]``). ``min_free_disk``
  does not apply: the disk belongs to the database server.
"""

from __future__ import annotations

from pimail.archive.postgres.archive import PostgresArchive
from pimail.archive.postgres.layout import (
    DAY_S,
    MAX_TOPIC_RANGES,
    ROW_OVERHEAD_BYTES,
    SCHEMA_VERSION,
    describe_url,
)

__all__ = [
    "DAY_S", "MAX_TOPIC_RANGES", "ROW_OVERHEAD_BYTES", "SCHEMA_VERSION", "PostgresArchive", "describe_url",
]
