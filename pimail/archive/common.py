"""What the SQLite and PostgreSQL backends share: the group-commit queue and its futures, the check
of an envelope record, health conditions, and the tally of a retention run.

The queue is thread-safe (one ``threading.Condition``): the SQLite writer is a thread, the
PostgreSQL writers are tasks on the event loop, and both take groups from the same kind of queue.
A group's futures are resolved on the loop that created them, after the backend's commit and
after its ``on_durable`` callback, so whoever awaits a future sees the callback's effects.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pimail.archive.base import ArchivedEnvelope, ArchiveError, DurableCallback, PruneResult
from pimail.health import HealthModel, Severity

log = logging.getLogger(__name__)

SENT_MAX = 2**32 - 1  # sent is a uint32 on the wire
BACKLOG_LOG_EVERY_S = 10.0


def check_archivable(envelopes: Sequence[ArchivedEnvelope]) -> None:
    """ValueError for a record no backend can store (a caller's bug, not bad input from a peer)."""
    for env in envelopes:
        if len(env.hash) != 32 or len(env.topic) != 4 or not 0 <= env.sent <= SENT_MAX \
                or env.expiry < env.sent:
            raise ValueError(f"not an archivable envelope record: sent={env.sent} "
                             f"expiry={env.expiry} hash/topic lengths {len(env.hash)}/{len(env.topic)}")


# -- futures ---------------------------------------------------------------------------------------


def settle(future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def post(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], result: Any = None,
         error: BaseException | None = None) -> None:
    """Settle ``future`` on ``loop``: at once when called on it, else through the loop's queue."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        settle(future, result, error)
        return
    with contextlib.suppress(RuntimeError):  # loop already closed: nobody is waiting any more
        loop.call_soon_threadsafe(settle, future, result, error)


# -- the group-commit queue ------------------------------------------------------------------------


BUSY_GROUP_BYTES = 1024 * 1024  # a group straight into the database (PostgreSQL; SQLite without its log)
# With the SQLite ack log a commit costs the group's bytes and one rewritten 4 KB block (plus the
# fdatasync): from 64 KB waiting on, waiting longer would save the card under 1/16 of that group
# while its acks wait, so the node counts as busy and commits as soon as the writer is free.
STEADY_GROUP_BYTES = 64 * 1024


@dataclass
class Pending:
    """One submit() call waiting for its group to commit."""

    envelopes: Sequence[ArchivedEnvelope]
    future: asyncio.Future[None]
    loop: asyncio.AbstractEventLoop
    at: float = 0.0  # time.monotonic() of the submit
    nbytes: int = 0  # envelope bytes


@dataclass(frozen=True)
class GroupPolicy:
    """When the writer commits what waits: group commit that adapts to the load.

    A quiet node commits when the oldest waiting envelope has waited ``interval_s`` (its ack waits
    that long at most; a trickle costs one commit per interval, not one per envelope). A busy node
    commits as soon as the writer is free once ``max_envelopes`` or ``busy_bytes`` of envelope data
    wait; what arrives while that commit runs is the next group, so groups grow with the load by
    themselves. ``busy_bytes`` is the smallest group whose commit is cheap next to its size (see
    STEADY_GROUP_BYTES): busy traffic reaches it long before the interval (2,000 env/s of 330 B:
    ~0.1 s), a quiet node (50 env/s: 16 KB a second) never. The writer asks ``due`` whenever it
    is free and something changed (a submit, a timeout at ``deadline``); the clock is the caller's.
    """

    interval_s: float
    max_envelopes: int
    busy_bytes: int = BUSY_GROUP_BYTES

    def full(self, envelopes: int, nbytes: int) -> bool:
        """Enough waits to commit now (the writer being free)."""
        return envelopes >= self.max_envelopes or nbytes >= self.busy_bytes

    def deadline(self, oldest_at: float) -> float:
        """When a group whose oldest envelope arrived at ``oldest_at`` is due at the latest."""
        return oldest_at + self.interval_s

    def due(self, now: float, oldest_at: float | None, envelopes: int, nbytes: int) -> bool:
        """Whether a free writer commits now what waits (``oldest_at`` None: nothing waits)."""
        if oldest_at is None or envelopes <= 0:
            return False
        return self.full(envelopes, nbytes) or now >= self.deadline(oldest_at)


class GroupQueue:
    """Submitted envelopes waiting for the writer, bounded by ``max_pending`` envelopes.

    ``cond`` guards the queue (and whatever else the backend's writer waits on). ``waiting`` counts
    the envelopes in the queue, ``count`` those too and the ones being written (a group leaves it
    when it is done); ``max_pending`` bounds ``count``, or ``waiting`` with ``bound_waiting``.
    """

    def __init__(self, max_pending: int, behind: str, *, bound_waiting: bool = False) -> None:
        self.max_pending = max_pending
        self.cond = threading.Condition()
        self.items: collections.deque[Pending] = collections.deque()
        self.count = 0
        self.waiting = 0
        self.waiting_bytes = 0
        self._bound_waiting = bound_waiting
        self._behind = behind  # "archive is behind", …: the backlog warning's subject
        self._last_backlog_log = 0.0

    def submit(self, envelopes: Sequence[ArchivedEnvelope], is_open: bool) -> asyncio.Future[None]:
        """The future of ``envelopes``: queued, or already done (empty) or failed (closed, full)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        check_archivable(envelopes)
        if not envelopes:
            fut.set_result(None)
            return fut
        if not is_open:
            fut.set_exception(ArchiveError("the archive is not open"))
            return fut
        with self.cond:
            held = self.waiting if self._bound_waiting else self.count
            full = held + len(envelopes) > self.max_pending
            if not full:
                nbytes = sum(len(e.raw) for e in envelopes)
                self.items.append(Pending(envelopes, fut, loop, time.monotonic(), nbytes))
                self.count += len(envelopes)
                self.waiting += len(envelopes)
                self.waiting_bytes += nbytes
                self.cond.notify()
        if full:
            now = time.monotonic()
            if now - self._last_backlog_log > BACKLOG_LOG_EVERY_S:
                self._last_backlog_log = now
                log.warning("%s (%d envelopes waiting to be written): dropping new ones until it "
                            "catches up", self._behind, held)
            fut.set_exception(ArchiveError("archive write queue is full"))
        return fut

    def take(self, limit: int) -> list[Pending]:
        """Whole submits from the front, up to ``limit`` envelopes (at least one submit)."""
        taken: list[Pending] = []
        n = 0
        with self.cond:
            while self.items and (not taken or n + len(self.items[0].envelopes) <= limit):
                item = self.items.popleft()
                taken.append(item)
                n += len(item.envelopes)
                self.waiting_bytes -= item.nbytes
            self.waiting -= n
        return taken

    def pop(self) -> Pending:
        """The front submit (the caller holds ``cond`` and knows the queue is not empty)."""
        item = self.items.popleft()
        self.waiting -= len(item.envelopes)
        self.waiting_bytes -= item.nbytes
        return item

    def oldest_at(self) -> float | None:
        """When the oldest waiting submit arrived (None: nothing waits)."""
        return self.items[0].at if self.items else None

    def finish(self, group: list[Pending], error: BaseException | None,
               on_durable: DurableCallback | None) -> None:
        """The group is committed (``error`` None) or failed: callback first, then its futures."""
        envelopes = [env for p in group for env in p.envelopes]
        with self.cond:
            self.count -= len(envelopes)
        if error is None and on_durable is not None:
            try:
                on_durable(envelopes)
            except Exception:
                log.exception("archive durable callback failed")
        for p in group:
            post(p.loop, p.future, None, error)

    def fail_all(self, error: BaseException) -> None:
        with self.cond:
            items = list(self.items)
            self.items.clear()
            n = sum(len(p.envelopes) for p in items)
            self.count -= n
            self.waiting -= n
            self.waiting_bytes = 0
        for p in items:
            post(p.loop, p.future, None, error)


# -- health ----------------------------------------------------------------------------------------


class HealthConditions:
    """The archive's open health conditions (key → message), mirrored into a ``HealthModel``.

    ``dispatch`` runs the model's calls; the SQLite writer thread passes one that hops onto the
    event loop. ``reason`` is the newest open condition's message, or "ok".
    """

    def __init__(self, health: HealthModel | None, recovered: str,
                 dispatch: Callable[..., None] | None = None) -> None:
        self.health = health
        self.reason = "ok"
        self.open: dict[str, str] = {}
        self._recovered = recovered  # log line when a condition clears ("archive recovered (%s)")
        self._dispatch: Callable[..., None] = dispatch or (lambda fn, *args: fn(*args))

    def report(self, key: str, severity: Severity, message: str) -> None:
        if self.open.get(key) != message:
            log.warning("%s", message)
        self.open[key] = message
        self.reason = message
        if self.health is not None:
            self._dispatch(self.health.report, key, severity, message)

    def clear(self, key: str) -> None:
        if self.open.pop(key, None) is None:
            return
        log.info(self._recovered, key)
        self.reason = next(iter(self.open.values()), "ok")
        if self.health is not None:
            self._dispatch(self.health.clear, key)


# -- retention -------------------------------------------------------------------------------------


@dataclass
class PruneTally:
    """What one retention run deleted, and why, over its batches; who waits for its result."""

    deleted: int = 0
    reasons: list[str] = field(default_factory=list)
    waiters: list[tuple[asyncio.Future[PruneResult], asyncio.AbstractEventLoop]] = field(default_factory=list)

    def add(self, reason: str, deleted: int) -> None:
        self.deleted += deleted
        self.reasons += [r for r in reason.split(",") if r and r not in self.reasons]

    def result(self) -> PruneResult:
        return PruneResult(self.deleted, ",".join(self.reasons))

    def finish(self) -> PruneResult:
        """Log the run (when it deleted anything) and hand its result to every waiter."""
        if self.deleted:
            log.info("archive retention: deleted %d envelopes (%s)", self.deleted, ", ".join(self.reasons))
        result = self.result()
        for fut, loop in self.waiters:
            post(loop, fut, result)
        return result
