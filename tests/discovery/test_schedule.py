"""The lookup schedule: which lookup comes next and when, driven by made-up tables and times.

No clock is read here: every call is given ``now``, so the backoff is checked over hours of
virtual time in a few milliseconds.
"""

from __future__ import annotations

import itertools
import random

from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import NodeKey
from pimail.discovery.schedule import (
    AIM_MIN_DISTANCE,
    AIMED,
    RANDOM,
    REFRESH,
    SELF,
    LookupSchedule,
    Plan,
    TableState,
    aim_tries,
    target_in_bucket,
)
from pimail.discovery.table import log_distance

FAST = 1.0
REFRESH_S = 300.0

# a table on a small network: the far buckets full, 250 and 249 short, nothing closer than 247
SMALL = {256: 16, 255: 16, 254: 16, 253: 16, 252: 16, 251: 16, 250: 12, 249: 5, 247: 1}


def schedule(**kw: object) -> LookupSchedule:
    args: dict[str, object] = {"fast_s": FAST, "refresh_s": REFRESH_S}
    args.update(kw)
    return LookupSchedule(**args)  # type: ignore[arg-type]


def run(s: LookupSchedule, state: TableState, now: float,
        after: TableState | None = None) -> tuple[float, Plan]:
    """Plan, 'run' the lookup at its due time (instantly), report ``after`` (default: no change)."""
    at, plan = s.next(state, now)
    start = max(at, now)
    s.finished(plan, state, after or state, start)
    return start, plan


def test_the_first_lookup_is_a_refresh_at_once() -> None:
    s = schedule()
    at, plan = s.next(TableState({256: 1}, live=1), 10.0)
    assert (at, plan) == (10.0, Plan(REFRESH))


def test_open_buckets_are_the_short_ones_between_our_closest_entry_and_256() -> None:
    s = schedule()
    assert s.open_buckets(SMALL) == [250, 249, 248, 247]
    assert s.open_buckets({}) == []
    # entries closer than aim_min_distance are left to the self-lookup
    near = {256: 16, 250: 3, AIM_MIN_DISTANCE - 3: 1}
    assert s.open_buckets(near)[-1] == AIM_MIN_DISTANCE
    assert AIM_MIN_DISTANCE - 1 not in s.open_buckets(near)
    assert 256 not in s.open_buckets(near)


def test_after_the_refresh_self_then_aimed_lookups_farthest_first_one_per_fast_interval() -> None:
    s = schedule()
    state = TableState(SMALL, live=500)  # enough answering nodes: no random lookups
    t, plan = run(s, state, 0.0)
    assert plan == Plan(REFRESH)
    seen = []
    for _ in range(5):
        at, plan = s.next(state, t)
        assert at == t + FAST  # paced: one lookup per fast interval, never sooner
        s.finished(plan, state, state, at)
        t = at
        seen.append(plan)
    assert seen == [Plan(SELF), Plan(AIMED, 250), Plan(AIMED, 249), Plan(AIMED, 248), Plan(AIMED, 247)]


def test_a_lookup_that_fills_its_bucket_runs_again_at_the_fast_pace() -> None:
    s = schedule()
    sizes = dict(SMALL)
    t, _ = run(s, TableState(sizes, 500), 0.0)  # refresh
    t, _ = run(s, TableState(sizes, 500), t)  # self
    grown = {**sizes, 250: 14}
    t, plan = run(s, TableState(sizes, 500), t, after=TableState(grown, 500))
    assert plan == Plan(AIMED, 250) and s.backoff(plan) == 0
    at, plan = s.next(TableState(grown, 500), t)
    assert (at, plan) == (t + FAST, Plan(AIMED, 250))  # it found more: again, at the fast pace
    s.finished(plan, TableState(grown, 500), TableState(grown, 500), at)
    assert s.backoff(plan) == 1
    _, plan = s.next(TableState(grown, 500), at)
    assert plan == Plan(AIMED, 249)  # now the untried ones come first


def test_fruitless_lookups_back_off_doubling_up_to_the_refresh_interval() -> None:
    s = schedule(aim_min_distance=256)  # one open bucket only: 256
    state = TableState({256: 3}, live=500)
    t, _ = run(s, state, 0.0)  # refresh
    gaps: dict[Plan, list[float]] = {}
    last: dict[Plan, float] = {}
    while t < 3 * 3600:
        at, plan = s.next(state, t)
        assert at >= t
        s.finished(plan, state, state, at)
        if plan in last:
            gaps.setdefault(plan, []).append(at - last[plan])
        last[plan] = at
        t = at
    aimed = gaps[Plan(AIMED, 256)]
    assert aimed[:6] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    assert max(aimed) == REFRESH_S and aimed[-1] == REFRESH_S
    assert gaps[Plan(SELF)][-1] == REFRESH_S
    assert set(gaps[Plan(REFRESH)]) == {REFRESH_S}


def test_a_settled_node_runs_a_bounded_number_of_lookups() -> None:
    s = schedule()
    state = TableState(SMALL, live=500)
    t, count, late = 0.0, 0, 0
    while t < 24 * 3600:
        at, plan = s.next(state, t)
        s.finished(plan, state, state, at)
        t = at
        count += 1
        if t > 3600:
            late += 1
    plans = 1 + 1 + len(s.open_buckets(SMALL))  # refresh, self, the open buckets
    assert late <= plans * (23 * 3600 / REFRESH_S + 1)  # one run per plan per refresh interval
    # the first hour: before the long wait, 1 + log2(256) runs spaced 2, 4, … 256 s per plan
    assert count - late <= plans * (9 + 3600 / REFRESH_S)
    assert count - late >= plans * 3600 / REFRESH_S  # and they do run (at 1/s it would be 3,600)


def test_random_lookups_until_enough_nodes_answered_then_only_when_the_dialler_asks() -> None:
    s = schedule(live_target=200)
    full = {d: 16 for d in range(241, 257)}  # no open bucket above 244: only self and random
    t, _ = run(s, TableState(full, 10), 0.0)  # refresh
    t, plan = run(s, TableState(full, 10), t)
    assert plan == Plan(SELF)
    t, plan = run(s, TableState(full, 10), t, after=TableState(full, 40))
    assert plan == Plan(RANDOM) and s.backoff(plan) == 0  # it met 30 new nodes: keep going
    t, plan = run(s, TableState(full, 40), t, after=TableState(full, 40))
    assert plan == Plan(RANDOM) and s.backoff(plan) == 1  # nothing new: backs off
    # enough answered: random lookups stop
    enough = TableState(full, 250)
    assert all(run(s, enough, t + i)[1].kind != RANDOM for i in range(30))
    # until the dialler asks: one lookup, at its backoff, for one wish
    s.want_more()
    t, plan = run(s, enough, t + 30)
    while plan != Plan(RANDOM):
        t, plan = run(s, enough, t)
    assert s.backoff(plan) == 2
    assert all(run(s, enough, t + i)[1].kind != RANDOM for i in range(30))


def test_the_dialler_asking_every_second_does_not_make_a_lookup_every_second() -> None:
    s = schedule()
    state = TableState({256: 16, 255: 16}, live=500)
    t, _ = run(s, state, 0.0)
    randoms = []
    while t < 3600:
        s.want_more()  # a dialler with no usable candidates asks each time
        at, plan = s.next(state, t)
        s.finished(plan, state, state, at)
        if plan == Plan(RANDOM):
            randoms.append(at)
        t = max(at, t + 1.0)
    gaps = [b - a for a, b in itertools.pairwise(randoms)]
    assert gaps[-1] == REFRESH_S
    assert len(randoms) <= 12 + 3600 / REFRESH_S


def test_an_empty_table_plans_only_self_lookups_and_refreshes() -> None:
    s = schedule()
    empty = TableState({}, 0)
    kinds = set()
    t = 0.0
    for _ in range(20):
        t, plan = run(s, empty, t)
        kinds.add(plan.kind)
    assert kinds == {REFRESH, SELF}


def test_a_bucket_that_filled_is_forgotten() -> None:
    s = schedule()
    state = TableState(SMALL, 500)
    t, _ = run(s, state, 0.0)
    t, _ = run(s, state, t)
    t, plan = run(s, state, t)
    assert plan == Plan(AIMED, 250) and s.backoff(plan) == 1
    full = TableState({**SMALL, 250: 16}, 500)
    s.finished(Plan(SELF), state, full, t + 1)
    assert s.backoff(Plan(AIMED, 250)) == 0
    assert Plan(AIMED, 250) not in [s.next(full, t + 2 + i)[1] for i in range(5)]


def test_targets_in_a_bucket_hash_to_that_distance() -> None:
    rng = random.Random(7)
    self_id = NodeKey.generate().node_id
    for distance in (256, 252, 249):
        target = target_in_bucket(self_id, distance, rng, aim_tries(distance) * 4)
        assert target is not None and len(target) == 64
        assert log_distance(self_id, keccak256(target)) == distance
    assert target_in_bucket(self_id, 200, rng, 50) is None  # 1 in 2^57 per draw: not in 50
    assert aim_tries(256) == 8 and aim_tries(244) == 4 << 13
