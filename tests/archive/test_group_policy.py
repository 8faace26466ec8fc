"""The group-commit decision (``GroupPolicy.due``) with an injected clock: a quiet node waits the
interval, a busy node's group is due as soon as the writer asks, and the SQLite archive picks the
threshold that fits its write path. No timing: every "now" is a number the test chooses."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from pimail.archive.common import BUSY_GROUP_BYTES, STEADY_GROUP_BYTES, GroupPolicy
from pimail.archive.sqlite import SqliteArchive
from tests.archive.conftest import block_writer, make_envelope, run

T0 = 1000.0  # the oldest waiting envelope's arrival, on the injected clock
ENV = 300  # bytes of a typical envelope
BASE = 1_700_000_000


def policy(interval_s: float = 1.0, max_envelopes: int = 10_000,
           busy_bytes: int = STEADY_GROUP_BYTES) -> GroupPolicy:
    return GroupPolicy(interval_s, max_envelopes, busy_bytes)


def test_nothing_waiting_is_never_due() -> None:
    p = policy()
    for now in (T0, T0 + 1.0, T0 + 3600.0):
        assert not p.due(now, None, 0, 0)


def test_a_quiet_node_waits_the_interval_and_no_longer() -> None:
    p = policy(interval_s=1.0)
    # 50 env/s for just under a second: 16 KB, far below a busy group
    n = 49
    assert not p.due(T0, T0, 1, ENV)
    assert not p.due(T0 + 0.5, T0, 25, 25 * ENV)
    assert not p.due(T0 + 0.999, T0, n, n * ENV)
    assert p.due(T0 + 1.0, T0, n, n * ENV)  # the oldest has waited the interval
    assert p.deadline(T0) == T0 + 1.0


def test_steady_traffic_is_due_as_soon_as_a_busy_group_waits() -> None:
    p = policy(interval_s=1.0)
    below = STEADY_GROUP_BYTES - 1
    assert not p.due(T0 + 0.01, T0, below // ENV, below)
    # 2,000 env/s: 64 KB wait after ~0.1 s, long before the 1 s interval
    assert p.due(T0 + 0.1, T0, STEADY_GROUP_BYTES // ENV + 1, STEADY_GROUP_BYTES)
    # what arrived while the previous group was written: due the moment the writer asks
    assert p.due(T0, T0, 1000, 1000 * ENV)


def test_the_envelope_cap_makes_a_group_due_too() -> None:
    p = policy(max_envelopes=100, busy_bytes=10**9)
    assert not p.due(T0, T0, 99, 99 * 10)
    assert p.due(T0, T0, 100, 100 * 10)


def test_interval_zero_commits_whatever_waits() -> None:
    p = policy(interval_s=0.0, busy_bytes=10**9)
    assert p.due(T0, T0, 1, ENV)


def test_the_busy_threshold_is_what_makes_the_difference() -> None:
    """Same traffic (1,000 env/s of 330 B for 0.2 s: 66 KB), two thresholds: the old 1 MB one
    waits for the interval, the steady one commits."""
    waiting, nbytes, now = 200, 200 * 330, T0 + 0.2
    assert policy(busy_bytes=BUSY_GROUP_BYTES).due(now, T0, waiting, nbytes) is False
    assert policy(busy_bytes=STEADY_GROUP_BYTES).due(now, T0, waiting, nbytes) is True


@pytest.mark.parametrize(("options", "expected"), [
    ({}, STEADY_GROUP_BYTES),  # the ack log: a commit costs its bytes and one block
    ({"index_interval_s": 0}, BUSY_GROUP_BYTES),  # straight into SQLite: pages per commit
    ({"log_max_bytes": 0}, BUSY_GROUP_BYTES),
    ({"busy_group_bytes": 1500}, 1500),
])
def test_the_sqlite_archive_picks_the_threshold_of_its_write_path(
        tmp_path: Path, options: dict[str, int], expected: int) -> None:
    a = SqliteArchive(tmp_path / "a.sqlite", prune_interval_s=0, **options)  # type: ignore[arg-type]
    assert a.group.busy_bytes == expected
    assert a.group.interval_s == a.flush_interval_s
    assert a.direct_bytes > STEADY_GROUP_BYTES  # a busy node's group still goes to the log


def test_a_busy_nodes_group_is_acked_from_the_log_without_waiting_the_interval(tmp_path: Path) -> None:
    """The real writer with the shipped thresholds: 64 KB queued behind a busy writer (a job) are
    one group as soon as the writer is free, with a 10-minute interval that never elapses here,
    and that group is acked from the log (smaller than a direct group), not committed to SQLite."""
    groups: list[int] = []

    async def main() -> None:
        a = SqliteArchive(tmp_path / "a.sqlite", flush_interval_ms=600_000, prune_interval_s=0,
                          on_durable=lambda envs: groups.append(len(envs)))
        await a.open()
        parked, release = block_writer(a)
        assert await asyncio.to_thread(parked.wait, 30)
        envs = [make_envelope(i, BASE + i // 100, size=260) for i in range(240)]
        nbytes = sum(len(e.raw) for e in envs)
        assert STEADY_GROUP_BYTES <= nbytes < a.direct_bytes
        futs = [a.submit(envs[i:i + 20]) for i in range(0, len(envs), 20)]
        release.set()
        await asyncio.wait_for(asyncio.gather(*futs), 30)
        assert groups == [240]
        assert (await a.stats()).extra["log_envelopes"] == 240  # in the log, the index behind it
        await a.close()

    run(main())
