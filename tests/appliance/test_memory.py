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
