"""``ArchiveGuard``: the node's SQLite archive kept usable through damage.

- **At open** the archive runs its bounded check (``salvage.preflight`` and ``probe``). A damaged
  file is moved aside (``<name>.damaged-<UTC time>``, never deleted), a fresh archive opens in its
  place, and the damaged file's readable envelopes are salvaged into it in the background. An
  unreadable file (permissions, a directory in its place) is left alone: the node runs without an
  archive (relaying, no history) and retries the open every ``retry()`` until the operator fixes it.
- **After READY** ``check()`` runs the full check in the background, off the loop, in bounded
  slices: every row of the envelope table, then ``PRAGMA quick_check``; progress shows in
  ``snapshot()``.
- **While running** a read or write that SQLite reports as corruption (``salvage.is_corruption``)
  does the same as a damaged file at open.

Health: ``archive.damaged`` (degraded) while a damaged file is being salvaged and afterwards while
a damaged file is kept in the data dir (remove it to clear); ``archive.unreadable`` (degraded)
while the file cannot be opened. The node keeps relaying through both.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from pimail.archive.base import (
    Archive,
    ArchivedEnvelope,
    ArchiveError,
    ArchiveStats,
    HistoryPage,
    HistoryQuery,
    PruneResult,
    RetentionPolicy,
)
from pimail.archive.observed import ObservedArchive
from pimail.archive.sqlite.connthread import ConnectionThread
from pimail.archive.sqlite.core import HEALTH_DISK_FULL, HEALTH_WRITE
from pimail.archive.sqlite.layout import Row, key_sent
from pimail.archive.sqlite.salvage import (
    SALVAGE_SLICE_ROWS,
    ArchiveDamaged,
    ArchiveUnreadable,
    Progress,
    RowScanner,
    SalvageReport,
    check_slice,
    damaged_files,
    expected_count,
    is_corruption,
    open_read_only,
    quarantine,
    read_report,
    write_report,
)
from pimail.health import HealthModel, Severity

log = logging.getLogger(__name__)

HEALTH_DAMAGED = "archive.damaged"
HEALTH_UNREADABLE = "archive.unreadable"
CHECK_SLICE_ROWS = 2000  # rows read per slice of the background check
SALVAGE_IN_FLIGHT = 2  # slices submitted and not yet durable (bounds the salvage's memory)
SALVAGE_SLICE_BYTES = 16 * 1024 * 1024  # room the slices in flight may need (2 × 1000 rows ≤ ~8 KB)


class UnavailableArchive(Archive):
    """Stands in while the archive cannot be opened: every call fails with the reason."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.health_reason = reason

    def _fail(self) -> ArchiveError:
        return ArchiveError(f"archive unavailable: {self.reason}")

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    def submit(self, envelopes: Sequence[ArchivedEnvelope]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_exception(self._fail())
        return fut

    async def query(self, q: HistoryQuery) -> HistoryPage:
        raise self._fail()

    async def iterate(self, q: HistoryQuery, page_size: int = 500) -> AsyncIterator[ArchivedEnvelope]:
        raise self._fail()
        yield  # pragma: no cover  (makes this an async generator)

    async def contains(self, sent: int, envelope_hash: bytes) -> bool:
        raise self._fail()

    async def stats(self) -> ArchiveStats:
        raise self._fail()

    async def prune(self) -> PruneResult:
        raise self._fail()

    def set_retention(self, policy: RetentionPolicy) -> None:
        return None


class PutBack:
    """Submits validated slices with up to ``SALVAGE_IN_FLIGHT`` commits outstanding, so the next
    slice is read while the last one commits; counts what was new (the archive ignores duplicates;
    the node's own writes can share a group, so the count is capped by what was submitted)."""

    def __init__(self, archive: Archive, report: SalvageReport) -> None:
        self.archive = archive
        self.report = report
        self.start = self._inserted()
        self.submitted = 0
        self.done = 0
        self.pending: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()

    def _inserted(self) -> int:
        return int(getattr(self.archive, "inserted_total", 0) or 0)

    async def add(self, batch: list[ArchivedEnvelope]) -> None:
        if batch:
            self.pending.append((self.archive.submit(batch), len(batch)))
            self.submitted += len(batch)
        while len(self.pending) >= SALVAGE_IN_FLIGHT:
            await self._settle_one()

    async def _settle_one(self) -> None:
        fut, n = self.pending.popleft()
        await fut
        self.done += n
        self.report.salvaged = max(0, min(self._inserted() - self.start, self.done))
        self.report.duplicates = self.done - self.report.salvaged

    async def finish(self) -> None:
        while self.pending:
            await self._settle_one()


def _disk_low(disk_dir: Path | None, min_free_bytes: int) -> str:
    """Why the salvage must stop for space ("" = go on): the fresh archive keeps ``min_free_bytes``."""
    if disk_dir is None or min_free_bytes <= 0:
        return ""
    try:
        free = shutil.disk_usage(disk_dir).free
    except OSError:
        return ""
    if free >= min_free_bytes + SALVAGE_SLICE_BYTES:
        return ""
    return (f"stopped early: {free} bytes free where the archive is, and min_free_disk keeps "
            f"{min_free_bytes}; the older envelopes stay in the damaged file")


async def salvage_into(archive: Archive, source: Path, *, max_age_s: int = 0,
                       report: SalvageReport | None = None, on_progress: Progress | None = None,
                       newest_first: bool = True, disk_dir: Path | None = None,
                       min_free_bytes: int = 0) -> SalvageReport:
    """Put every readable, valid envelope of the damaged archive ``source`` into ``archive``.

    Reads ``source`` read-only, one slice at a time in a thread, newest first (what phones ask for
    first comes back first, and if the disk fills, the oldest are the ones left out); each slice is
    validated again (``salvage.validate_row``) and submitted before the next is read, so memory
    stays bounded and the node's own writes interleave. Envelopes older than ``max_age_s`` (0: no
    limit) are not put back: retention would drop them at once. Stops early when the disk where
    ``disk_dir`` is falls to ``min_free_bytes``."""
    report = report or SalvageReport(str(source))
    report.state = "running"
    oldest = int(time.time()) - max_age_s if max_age_s else None
    worker = ConnectionThread("archive-salvage")  # a cancelled salvage closes only after its slice
    try:
        await worker.open(lambda: open_read_only(source))
    except ArchiveError as exc:
        await worker.close()
        return _finish(report, "failed", str(exc), on_progress)
    try:
        report.expected = await worker.call(expected_count)
        scanner = await worker.call(lambda conn: RowScanner(conn, descending=newest_first))
        put = PutBack(archive, report)
        while not scanner.done:
            low = await asyncio.to_thread(_disk_low, disk_dir, min_free_bytes)
            if low:
                report.error = low
                break
            rows = await worker.call(lambda _conn: scanner.next_slice(SALVAGE_SLICE_ROWS))
            report.unreadable_ranges, report.unreadable_rows = scanner.skips, scanner.bad_rows
            await put.add(check_slice(rows, report, oldest))
            if on_progress is not None:
                on_progress(report)
            if newest_first and oldest is not None and rows and key_sent(int(rows[-1][0])) < oldest:
                break  # everything further is older still
        await put.finish()
        if scanner.skips and report.read == 0:
            report.error = f"nothing in the file could be read ({scanner.last_error})"
    except ArchiveError as exc:
        return _finish(report, "failed", f"the fresh archive refused the salvaged envelopes: {exc}",
                       on_progress)
    finally:
        await worker.close()
    return _finish(report, "done", report.error, on_progress)


async def salvage_wal_into(archive: Archive, wal: Path, *, after: int = 0, max_age_s: int = 0,
                           report: SalvageReport | None = None, on_progress: Progress | None = None
                           ) -> SalvageReport:
    """Put the valid envelopes held in the page images of a (copied) WAL's frames past ``after``
    into ``archive`` (see ``pimail.archive.sqlite.wal``); the same checks as ``salvage_into``."""
    from pimail.archive.sqlite.layout import PAGE_SIZE
    from pimail.archive.sqlite.wal import frame_rows

    report = report or SalvageReport(str(wal))
    report.state = "running"
    oldest = int(time.time()) - max_age_s if max_age_s else None
    try:
        frames = await asyncio.to_thread(frame_rows, wal, after, PAGE_SIZE)
        put = PutBack(archive, report)
        sentinel: list[Row] | None = None
        while True:
            rows = await asyncio.to_thread(next, frames, sentinel)
            if rows is None:
                break
            await put.add(check_slice(rows, report, oldest))
            if on_progress is not None:
                on_progress(report)
        await put.finish()
    except OSError as exc:
        return _finish(report, "failed", f"cannot read {wal}: {exc.strerror or exc}", on_progress)
    except ArchiveError as exc:
        return _finish(report, "failed", f"the archive refused the salvaged envelopes: {exc}", on_progress)
    return _finish(report, "done", "", on_progress)


def _finish(report: SalvageReport, state: str, error: str, on_progress: Progress | None) -> SalvageReport:
    report.state, report.error, report.finished_at = state, error, time.time()
    if on_progress is not None:
        on_progress(report)
    return report


class ArchiveGuard:
    """Opens, checks and, when it is damaged, replaces the node's SQLite archive (see the module).

    ``observed`` is the wrapper the node's services hold; the guard swaps its ``inner`` when the
    archive is replaced or becomes available. ``make`` builds a new, unopened archive on ``path``."""

    def __init__(self, observed: ObservedArchive, make: Callable[[], Archive], path: Path,
                 health: HealthModel, max_age_s: Callable[[], int],
                 min_free_bytes: Callable[[], int] = lambda: 0) -> None:
        self.observed = observed
        self.make = make
        self.path = path
        self.health = health
        self.max_age_s = max_age_s
        self.min_free_bytes = min_free_bytes
        self.state = "opening"  # ok | unreadable | replacing | failed
        self.unreadable: ArchiveUnreadable | None = None
        self.damage: str = ""  # why the last damaged file was moved aside
        self.salvage: SalvageReport | None = None
        self.check_state: dict[str, Any] = {"state": "not run"}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._replacing = False
        #: awaited after a salvage ends and after a replacement (the daemon refreshes its stats)
        self.on_settled: Callable[[], Awaitable[None]] | None = None
        self.check_enabled = True  # [archive] check_after_start
        observed.on_failure = self.on_failure

    # -- open -------------------------------------------------------------------------------------

    async def open(self) -> None:
        """Open the archive, replacing a damaged one; never raises for damage or permissions."""
        try:
            await self.observed.inner.open()
        except ArchiveDamaged as exc:
            await self._replace(exc.why, opened=False)
        except ArchiveUnreadable as exc:
            self._mark_unreadable(exc)
            return
        else:
            self.state = "ok"
            self._wal_damage()
        self._resume_salvage()
        self.refresh()

    def _wal_damage(self) -> None:
        """The open found a damaged WAL and kept a copy: salvage the frames SQLite dropped."""
        found = getattr(self.observed.inner, "wal_damage", None)
        if found is None:
            return
        self.damage = found.why
        log.error("archive %s: %s; a copy is kept at %s, salvaging the frames past the damage",
                  self.path, found.why, found.kept)
        self._start_salvage(found.kept, after=found.replayed)

    def _mark_unreadable(self, exc: ArchiveUnreadable) -> None:
        self.state, self.unreadable = "unreadable", exc
        self.observed.inner = UnavailableArchive(str(exc))
        self.health.report(HEALTH_UNREADABLE, Severity.DEGRADED,
                           f"archive unreadable ({exc.why}): relaying without history; fix: {exc.fix}")

    async def retry(self) -> bool:
        """Try the unreadable archive again (housekeeping calls this); True once it is open."""
        if self.state != "unreadable":
            return self.state == "ok"
        archive = self.make()
        try:
            await archive.open()
        except ArchiveUnreadable as exc:
            self.unreadable = exc
            return False
        except ArchiveDamaged as exc:
            self.observed.inner = archive
            await self._replace(exc.why, opened=False)
        except ArchiveError as exc:  # readable now, but refused (e.g. written by a newer pimail)
            log.warning("archive %s: still not usable: %s", self.path, exc)
            return False
        else:
            self.observed.inner = archive
            self.state = "ok"
            log.info("archive %s is readable again", self.path)
            self._wal_damage()
        self.unreadable = None
        self.health.clear(HEALTH_UNREADABLE)
        self._resume_salvage()
        self.start_check()
        return self.state == "ok"

    # -- damage -----------------------------------------------------------------------------------

    def on_failure(self, exc: BaseException) -> None:
        """From the observed archive: a read or write failed. Corruption replaces the file."""
        if not is_corruption(exc) or self._replacing or self.state != "ok":
            return
        self._spawn(self._replace(f"SQLite reports it malformed ({exc})", opened=True), "archive-replace")

    async def _replace(self, why: str, *, opened: bool) -> None:
        """Move the damaged file aside, open a fresh archive, salvage the old one in the background."""
        self._replacing, self.state, self.damage = True, "replacing", why
        log.error("archive %s is damaged (%s): moving it aside and starting a fresh archive", self.path, why)
        self.health.report(HEALTH_DAMAGED, Severity.DEGRADED,
                           f"archive damaged ({why}): moving it aside, starting a fresh archive")
        old = self.observed.inner
        self.observed.inner = UnavailableArchive(f"the damaged archive is being replaced ({why})")
        try:
            if opened:
                with contextlib.suppress(Exception):
                    await old.close()
            moved = await asyncio.to_thread(quarantine, self.path)
            fresh = self.make()
            await fresh.open()
        except ArchiveError as exc:
            self.state = "failed"
            self.health.report(HEALTH_DAMAGED, Severity.FAILING,
                               f"archive damaged ({why}) and could not be replaced: {exc}")
            self.observed.inner = UnavailableArchive(str(exc))
            self._replacing = False
            return
        self.observed.inner = fresh
        self.state = "ok"
        self._replacing = False
        # what the damaged file's writer reported is not true of the fresh one (it reports its own)
        await asyncio.sleep(0)  # let the old writer's last reports, posted to the loop, land first
        for key in (HEALTH_WRITE, HEALTH_DISK_FULL):
            self.health.clear(key)
        log.warning("archive: the damaged file is kept at %s; a fresh archive is open at %s",
                    moved, self.path)
        self._start_salvage(moved)

    def _resume_salvage(self) -> None:
        """Salvage damaged files left by an earlier run whose salvage did not finish."""
        for path in damaged_files(self.path.parent, self.path.name):
            done = read_report(path)
            unfinished = done is None or done.get("state") == "running"
            if unfinished and (self.salvage is None or self.salvage.source != str(path)):
                self._start_salvage(path)

    def _start_salvage(self, source: Path, after: int = 0) -> None:
        report = SalvageReport(str(source))
        self.salvage = report
        self._spawn(self._salvage(source, report, after), "archive-salvage")

    async def _salvage(self, source: Path, report: SalvageReport, after: int = 0) -> None:
        last_write = 0.0

        def progress(r: SalvageReport) -> None:
            nonlocal last_write
            if r.state != "running" or time.monotonic() - last_write > 5:
                last_write = time.monotonic()
                self._spawn(asyncio.to_thread(write_report, r), "archive-salvage-report")
            self.refresh()

        from pimail.archive.sqlite.wal import is_wal

        log.info("archive: salvaging envelopes from %s", source)
        if await asyncio.to_thread(is_wal, source):
            await salvage_wal_into(self.observed, source, after=after, max_age_s=self.max_age_s(),
                                   report=report, on_progress=progress)
        else:
            await salvage_into(self.observed, source, max_age_s=self.max_age_s(), report=report,
                               on_progress=progress, disk_dir=self.path.parent,
                               min_free_bytes=self.min_free_bytes())
        log.warning("archive: salvage from %s %s: %s%s", source, report.state, report.line(),
                    f" ({report.error})" if report.error else "")
        await self._settled()

    async def _settled(self) -> None:
        if self.on_settled is not None:
            try:
                await self.on_settled()
            except Exception as exc:
                log.warning("archive: refreshing after a salvage: %s", exc)

    def refresh(self) -> None:
        """Raise or clear ``archive.damaged`` from what the data dir holds (housekeeping calls this)."""
        if self.state == "failed":
            return
        kept = damaged_files(self.path.parent, self.path.name)
        s = self.salvage
        if s is not None and s.state == "running":
            done = f"{s.read} of ~{s.expected} read" if s.expected is not None else f"{s.read} read"
            self.health.report(HEALTH_DAMAGED, Severity.DEGRADED,
                               f"archive damaged ({self.damage or 'found at start'}): fresh archive open, "
                               f"salvaging from {Path(s.source).name} ({done}, {s.salvaged} salvaged)")
        elif kept:
            last = s.as_dict() if s is not None and s.source == str(kept[-1]) else read_report(kept[-1]) or {}
            got = (f"{last.get('salvaged', 0)} envelopes salvaged" if last.get("state") == "done"
                   else "salvage not finished")
            what = "a copy of a damaged WAL" if "-wal." in kept[-1].name else "a damaged archive"
            self.health.report(HEALTH_DAMAGED, Severity.DEGRADED,
                               f"{what} is kept at {kept[-1]} ({got}): remove it when done")
        else:
            self.health.clear(HEALTH_DAMAGED)

    # -- the full check after READY ---------------------------------------------------------------

    def start_check(self) -> None:
        """The full check in the background (the daemon starts it once READY), unless turned off."""
        if self.state == "ok" and self.check_enabled:
            self._spawn(self.check(), "archive-check")

    async def check(self) -> dict[str, Any]:
        """Every row of the envelope table in slices, then ``PRAGMA quick_check``; replaces the file
        when it is damaged. The result (and progress while it runs) is ``check_state``."""
        from pimail.archive.sqlite.check import FullCheck

        checker = FullCheck(self.path, CHECK_SLICE_ROWS)
        self.check_state = {"state": "running", "phase": "rows", "rows": 0, "expected": None,
                            "started_at": time.time()}
        try:
            problems = await checker.run(self.check_state)
        except ArchiveError as exc:
            self.check_state.update(state="not run", error=str(exc))
            return self.check_state
        self.check_state.update(state="ok" if not problems else "damaged", problems=problems[:10],
                                finished_at=time.time())
        if problems and self.state == "ok" and not self._replacing:
            await self._replace(f"the full check found: {problems[0]}", opened=True)
        return self.check_state

    # -- reporting --------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        s, bad = self.salvage, self.unreadable
        return {
            "state": self.state,
            "unreadable": {"why": bad.why, "fix": bad.fix} if bad is not None else None,
            "damage": self.damage or None,
            "check": dict(self.check_state),
            "salvage": s.as_dict() if s is not None else None,
            "damaged_files": [str(p) for p in damaged_files(self.path.parent, self.path.name)],
        }

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("archive guard task %s failed: %r", task.get_name(), task.exception())

    async def close(self) -> None:
        """Stop the background work (salvage resumes at the next start: duplicates are skipped)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
