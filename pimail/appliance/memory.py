"""Give freed heap memory back to the kernel after a burst (glibc's ``malloc_trim``).

CPython hands blocks bigger than 512 bytes (frames, packets, history pages, SQLite's cache) to
``malloc``; glibc keeps what is freed in each heap for reuse and returns it to the kernel only from
the very top of the main heap. A node that answered one big history request, or took a flood from
twenty peers, would keep that peak resident for hours. ``malloc_trim(0)`` walks every heap and
releases their free pages (madvise), which brings the RSS after a load back down
(docs/PERFORMANCE.md, "Memory"). It costs a few milliseconds, so the daemon calls it from its
housekeeping once after start-up, then only when enough traffic went by since the last time, or
every ``max_interval_s``.
Without glibc (musl, macOS) it does nothing.

``caches_due`` says when a burst is over (one quiet housekeeping round after enough traffic): then
the daemon also empties the archive's page caches (``Archive.release_memory``) before trimming, so
a node that took a flood goes back to its idle size instead of keeping ~8 MB of cached pages the
kernel's page cache holds anyway. A busy node keeps its caches.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

TRIM_AFTER_ENVELOPES = 5_000  # envelopes in + out since the last trim that make one worth it
TRIM_MIN_INTERVAL_S = 5.0  # never more often (a busy node reuses the memory anyway)
TRIM_MAX_INTERVAL_S = 300.0  # and after quieter traffic at least this often
QUIET_ENVELOPES = 50  # envelopes in + out during one housekeeping round that still count as quiet


def _load_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


class HeapTrimmer:
    """``due(activity)`` says when to trim; ``trim()`` does it (in a worker thread: it locks the heaps).

    ``activity`` is any counter that only grows with traffic (envelopes received plus sent)."""

    def __init__(
        self,
        *,
        after_envelopes: int = TRIM_AFTER_ENVELOPES,
        min_interval_s: float = TRIM_MIN_INTERVAL_S,
        max_interval_s: float = TRIM_MAX_INTERVAL_S,
        quiet_envelopes: int = QUIET_ENVELOPES,
        clock: Callable[[], float] = time.monotonic,
        trim_fn: Callable[[int], int] | None = None,
    ) -> None:
        self.after_envelopes = after_envelopes
        self.quiet_envelopes = quiet_envelopes
        self.min_interval_s = min_interval_s
        self.max_interval_s = max_interval_s
        self._clock = clock
        self._trim = trim_fn if trim_fn is not None else _load_trim()
        self._last_at = clock()
        self._last_activity: int | None = None  # None: the first trim, after start-up, is still due
        self._round_activity: int | None = None  # activity at the previous ``caches_due`` call
        self._released_at = 0  # activity when the caches were last emptied
        self.trims = 0
        self.releases = 0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def due(self, activity: int) -> bool:
        if self._trim is None:
            return False
        since = self._clock() - self._last_at
        if since < self.min_interval_s:
            return False
        if self._last_activity is None:
            return True  # start-up (imports, config, opening the archive) leaves freed heap behind
        moved = activity - self._last_activity
        return moved >= self.after_envelopes or (moved > 0 and since >= self.max_interval_s)

    def caches_due(self, activity: int) -> bool:
        """Call once per housekeeping round: True in the first quiet round (at most
        ``quiet_envelopes`` moved since the last call) after ``after_envelopes`` went by since the
        caches were last emptied."""
        previous, self._round_activity = self._round_activity, activity
        if previous is None or activity - previous > self.quiet_envelopes:
            return False
        if activity - self._released_at < self.after_envelopes:
            return False
        self._released_at = activity
        self.releases += 1
        return True

    def mark(self, activity: int) -> None:
        """Record a trim decision at ``activity`` (call before ``trim``, on the loop)."""
        self._last_at = self._clock()
        self._last_activity = activity

    def trim(self) -> bool:
        """Release free heap pages; True if glibc gave some back."""
        if self._trim is None:
            return False
        self.trims += 1
        released = bool(self._trim(0))
        log.debug("malloc_trim: %s", "memory released" if released else "nothing to release")
        return released
