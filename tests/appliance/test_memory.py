"""HeapTrimmer: when the daemon hands freed heap memory back (glibc malloc_trim)."""

from __future__ import annotations

import platform

from pimail.appliance.memory import HeapTrimmer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_trims_after_enough_traffic_never_too_often_and_after_quiet_traffic_eventually() -> None:
    clock = FakeClock()
    calls: list[int] = []
    trimmer = HeapTrimmer(after_envelopes=100, min_interval_s=5, max_interval_s=60, clock=clock,
                          trim_fn=lambda pad: calls.append(pad) or 1)
    assert not trimmer.due(0)  # not within min_interval_s of the start
    clock.now += 10
    assert trimmer.due(0)  # once after start-up
    trimmer.mark(0)
    clock.now += 10
    assert not trimmer.due(0)  # nothing happened since: nothing to give back
    assert not trimmer.due(99)
    assert trimmer.due(100)
    trimmer.mark(100)
    assert trimmer.trim() is True and calls == [0]
    clock.now += 1
    assert not trimmer.due(10_000)  # a flood right after: wait the minimum interval
    clock.now += 5
    assert trimmer.due(10_000)
    trimmer.mark(10_000)
    clock.now += 30
    assert not trimmer.due(10_001)  # a trickle: not yet ...
    clock.now += 30
    assert trimmer.due(10_001)  # ... but once max_interval_s has passed
    assert trimmer.trims == 1


def test_without_malloc_trim_it_never_trims() -> None:
    trimmer = HeapTrimmer(after_envelopes=1, min_interval_s=0, clock=FakeClock())
    trimmer._trim = None  # a C library without malloc_trim (musl)
    assert not trimmer.available and not trimmer.due(10**6) and trimmer.trim() is False


def test_glibc_malloc_trim_is_found_and_runs() -> None:
    trimmer = HeapTrimmer()
    assert trimmer.available == (platform.libc_ver()[0] == "glibc")
    blocks = [bytearray(64 * 1024) for _ in range(64)]  # big enough to come from malloc
    del blocks
    assert trimmer.trim() in (True, False)
    assert trimmer.trims == (1 if trimmer.available else 0)


def test_the_caches_are_due_once_per_burst_in_the_first_quiet_round_after_it() -> None:
    trimmer = HeapTrimmer(after_envelopes=100, quiet_envelopes=5, clock=FakeClock(), trim_fn=lambda pad: 1)
    assert not trimmer.caches_due(0)  # the first round only sets the baseline
    assert not trimmer.caches_due(3)  # quiet, but nothing went by
    assert not trimmer.caches_due(500)  # a burst: a busy node keeps its caches
    assert not trimmer.caches_due(900)  # still busy
    assert trimmer.caches_due(902)  # the first quiet round after it
    assert not trimmer.caches_due(903)  # once per burst
    assert not trimmer.caches_due(950)  # a small one (50 < 100): not worth it
    assert not trimmer.caches_due(951)
    assert not trimmer.caches_due(1100)
    assert trimmer.caches_due(1100) and trimmer.releases == 2
