"""The log tail: acknowledged envelopes that are in the ack log but not yet in the SQLite index,
held in memory (bounded by the log's size) so that every read sees them.

The writer thread adds rows (``Row``: the table's own row format, with the key the writer chose for
it) and clears them once the index has committed them; readers take a ``snapshot`` and merge it into
what SQLite returns. A reader takes its snapshot *before* its SQLite snapshot: then an envelope the
writer moves into the index meanwhile shows up in one of the two or in both (merged by key), never in
neither. ``lock`` is held by the writer around the index COMMIT and ``clear``, and by readers that
must count exactly (stats).
"""

from __future__ import annotations

import bisect
import functools
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from pimail.archive.base import HistoryQuery
from pimail.archive.sqlite.layout import Row, key_sent, probe_keys, topic_bytes, topic_int
from pimail.crypto.keccak import keccak256
from pimail.envelope.bloom import is_full, topic_to_bloom


@functools.lru_cache(maxsize=4096)
def _topic_bloom(topic: int) -> int:
    return int.from_bytes(topic_to_bloom(topic_bytes(topic)), "big")


def topic_filter(q: HistoryQuery) -> Callable[[int], bool] | None:
    """Which topics (as stored ints) ``q`` matches; None = all. The bloom is matched against each
    topic itself (geth BloomFilterMatch), since the tail's topics may not be in ``topics`` yet."""
    if q.topics:
        wanted = {topic_int(t) for t in q.topics}
        return wanted.__contains__
    if q.bloom is None or q.bloom == b"" or is_full(q.bloom):
        return None
    f = int.from_bytes(q.bloom, "big")
    return lambda t: f | _topic_bloom(t) == f


@dataclass(frozen=True)
class TailSnapshot:
    """The tail at one moment: rows in key order, and their keys for bisecting."""

    rows: tuple[Row, ...] = ()
    keys: tuple[int, ...] = ()

    def page(self, lo: int, hi: int, match: Callable[[int], bool] | None, n: int,
             descending: bool) -> list[Row]:
        """Up to ``n`` rows with lo ≤ key ≤ hi whose topic matches, in the query's order."""
        a = bisect.bisect_left(self.keys, lo)
        b = bisect.bisect_right(self.keys, hi)
        if a >= b:
            return []
        span = range(b - 1, a - 1, -1) if descending else range(a, b)
        out: list[Row] = []
        for i in span:
            row = self.rows[i]
            if match is None or match(row[1]):
                out.append(row)
                if len(out) >= n:
                    break
        return out

    def find(self, sent: int, envelope_hash: bytes) -> int | None:
        """The key of the tail envelope (sent, hash), verified by keccak; None if absent."""
        for key in probe_keys(sent, envelope_hash):
            i = bisect.bisect_left(self.keys, key)
            if i < len(self.keys) and self.keys[i] == key and keccak256(self.rows[i][4]) == envelope_hash:
                return key
        return None

    def bounds(self) -> tuple[int, int] | None:
        """(oldest, newest) sent time in the tail, or None when it is empty."""
        if not self.keys:
            return None
        return key_sent(self.keys[0]), key_sent(self.keys[-1])


class LogTail:
    """The envelopes waiting for the index (see the module docstring)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._snap = TailSnapshot()
        self._raw: dict[int, bytes] = {}  # key -> raw: the writer's duplicate and key checks
        self.nbytes = 0  # raw bytes held
        self.since: float | None = None  # time.monotonic() of the oldest row's arrival

    def __len__(self) -> int:
        return len(self._snap.keys)

    def snapshot(self) -> TailSnapshot:
        return self._snap

    def raw_at(self, key: int) -> bytes | None:
        return self._raw.get(key)

    def add(self, rows: Iterable[Row], now: float) -> None:
        """Add rows whose keys no row of the tail has (the writer chose them)."""
        new = list(rows)
        if not new:
            return
        merged = sorted(self._snap.rows + tuple(new))  # keys are unique: only they are compared
        for row in new:
            self._raw[row[0]] = row[4]
            self.nbytes += len(row[4])
        if self.since is None:
            self.since = now
        self._snap = TailSnapshot(tuple(merged), tuple(r[0] for r in merged))

    def rows(self) -> tuple[Row, ...]:
        return self._snap.rows

    def clear(self) -> None:
        """Forget every row (the index has them): the writer holds ``lock``."""
        self._snap = TailSnapshot()
        self._raw.clear()
        self.nbytes = 0
        self.since = None

