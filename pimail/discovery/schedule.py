"""Which lookup runs next, and when: the decision behind the discovery service's lookup loop.

A plain object with no clock and no sockets: every method is given ``now`` (monotonic seconds) and
a ``TableState`` (entries per bucket, nodes that answered), so the tests can drive it with
made-up tables and times.

What it plans (go-ethereum's refresh, plus aiming at the buckets that still have room):

- a **self-lookup** (our own id as target): it finds the nodes closest to us, which only a lookup
  of our own neighbourhood reaches;
- an **aimed lookup** for each bucket near us that still has room: the buckets from the distance
  of our closest entry up to 256 with fewer than 16 entries. A random target lands in bucket
  *d* with probability 2^(d-257), so the near buckets would wait for luck; the service instead
  draws targets until one hashes into bucket *d* (``target_in_bucket``), which is cheap for
  *d* ≥ ``AIM_MIN_DISTANCE``; closer buckets are left to the self-lookup (its 16 results are
  where they are);
- a **random lookup** while fewer than ``live_target`` nodes answered our Ping (every node a
  lookup asks is pinged first, so random lookups meet the dial candidates and node-database
  seeds a table has no room for), and when the dialler ran out of candidates (``want_more``);
- a **refresh** (self-lookup and a random one) at once and every ``refresh_s``.

Backoff: at most one lookup per ``fast_s`` (they never overlap: the service runs them one at a
time). A lookup that made its bucket grow (for a self-lookup the table, for a random one the
table or the number of answering nodes) may run again after ``fast_s``; one that did not waits
``fast_s`` · 2^n after its n-th fruitless run in a row, at most ``refresh_s``. Buckets that stay
short (a network too small to fill them) thus cost a few lookups each and then one per refresh
interval; nodes that join are found within a refresh interval.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from pimail.crypto.keccak import keccak256
from pimail.discovery.table import BUCKET_SIZE, ID_BITS, log_distance

SELF = "self"
AIMED = "aimed"
RANDOM = "random"
REFRESH = "refresh"

AIM_MIN_DISTANCE = 244  # a target for bucket d takes ~2^(257-d) hashes: 8,192 here (~15 ms)
AIM_TRIES_FACTOR = 4  # give up after 4x the expected number of draws (1 in e^4 aims fail)
AIM_SLICE = 1024  # draws between yields to the event loop
MAX_FRUITLESS = 32  # the count stops here (fast_s · 2^32 is past any refresh interval)


@dataclass(frozen=True)
class Plan:
    """One lookup to run: ``kind`` is SELF, AIMED (at bucket ``distance``), RANDOM or REFRESH."""

    kind: str
    distance: int = 0


def aim_tries(distance: int) -> int:
    """How many draws ``target_in_bucket`` may spend on bucket ``distance``."""
    return AIM_TRIES_FACTOR << max(ID_BITS + 1 - distance, 0)


def target_in_bucket(self_id: bytes, distance: int, rng: random.Random, tries: int) -> bytes | None:
    """A 64-byte lookup target whose hash lies at log distance ``distance`` from ``self_id``, or
    None if ``tries`` random draws found none."""
    for _ in range(tries):
        target = rng.randbytes(64)
        if log_distance(self_id, keccak256(target)) == distance:
            return target
    return None


@dataclass(frozen=True)
class TableState:
    """What the schedule looks at: entries per bucket (log distance → count) and how many distinct
    nodes answered our Ping within the bond lifetime (in the table or not)."""

    sizes: Mapping[int, int]
    live: int = 0

    @property
    def entries(self) -> int:
        return sum(self.sizes.values())


class LookupSchedule:
    """``next(state, now)`` → (when, plan); after running it, ``finished(plan, before, after, now)``."""

    def __init__(
        self,
        *,
        fast_s: float,
        refresh_s: float,
        live_target: int = 200,
        bucket_size: int = BUCKET_SIZE,
        aim_min_distance: int = AIM_MIN_DISTANCE,
    ) -> None:
        self.fast_s = fast_s
        self.refresh_s = max(refresh_s, fast_s)
        self.live_target = live_target
        self.bucket_size = bucket_size
        self.aim_min_distance = aim_min_distance
        self._last_end: float | None = None  # when the last lookup finished
        self._refresh_at: float | None = None  # None: the first lookup is a refresh
        self._due: dict[Plan, float] = {}  # absent: due at once
        self._fruitless: dict[Plan, int] = {}
        self._want_random = False

    # -- what is worth looking up ---------------------------------------------------------------
    def open_buckets(self, sizes: Mapping[int, int]) -> list[int]:
        """Log distances of the buckets near us that still have room and can be aimed at: from the
        distance of our closest entry to 256 (nothing is known to be closer), fewer than
        ``bucket_size`` entries, at least ``aim_min_distance``. Farthest first."""
        filled = [d for d, n in sizes.items() if n > 0]
        if not filled:
            return []
        floor = max(min(filled), self.aim_min_distance)
        return [d for d in range(ID_BITS, floor - 1, -1) if sizes.get(d, 0) < self.bucket_size]

    def want_more(self) -> None:
        """The dialler ran out of candidates: a random lookup is wanted (at its backoff)."""
        self._want_random = True

    def next(self, state: TableState, now: float) -> tuple[float, Plan]:
        """The next lookup and when it may start (at or before ``now``: start it now)."""
        earliest = now if self._last_end is None else self._last_end + self.fast_s
        refresh_at = earliest if self._refresh_at is None else self._refresh_at
        plans = [Plan(REFRESH), Plan(SELF)]  # an empty table: only these (the service re-seeds it)
        plans += [Plan(AIMED, d) for d in self.open_buckets(state.sizes)]
        if self._want_random or (state.entries and state.live < self.live_target):
            plans.append(Plan(RANDOM))
        # among the due ones: the least fruitless first, then in the order above, the farthest
        # bucket first (it has the most nodes)
        choices = [(max(self._due.get(p, earliest), earliest), self.backoff(p), i, p)
                   for i, p in enumerate(plans)]
        choices[0] = (max(refresh_at, earliest), 0, 0, plans[0])
        when, _, _, plan = min(choices, key=lambda c: c[:3])
        return when, plan

    def finished(self, plan: Plan, before: TableState, after: TableState, now: float) -> None:
        """``plan`` ran (the table went from ``before`` to ``after``): set its next due time."""
        self._last_end = now
        if self._refresh_at is None or plan.kind == REFRESH:
            self._refresh_at = now + self.refresh_s
        if plan.kind in (RANDOM, REFRESH):
            self._want_random = False  # a refresh includes a random lookup
        if plan.kind == REFRESH:
            return
        if plan.kind == AIMED:
            grew = after.sizes.get(plan.distance, 0) > before.sizes.get(plan.distance, 0)
        elif plan.kind == RANDOM:
            grew = after.entries > before.entries or after.live > before.live
        else:
            grew = after.entries > before.entries
        if grew:
            self._fruitless.pop(plan, None)
            self._due.pop(plan, None)
        else:
            n = min(self._fruitless.get(plan, 0) + 1, MAX_FRUITLESS)
            self._fruitless[plan] = n
            self._due[plan] = now + min(self.refresh_s, self.fast_s * 2.0 ** n)
        self._forget_closed(after.sizes)

    def _forget_closed(self, sizes: Mapping[int, int]) -> None:
        """Drop the state of buckets that filled up or fell out of range (the dicts stay small)."""
        open_now = set(self.open_buckets(sizes))
        for plan in [p for p in self._due if p.kind == AIMED and p.distance not in open_now]:
            self._due.pop(plan, None)
            self._fruitless.pop(plan, None)

    def backoff(self, plan: Plan) -> int:
        """How many fruitless runs of ``plan`` in a row (0: it is on the fast pace)."""
        return self._fruitless.get(plan, 0)
