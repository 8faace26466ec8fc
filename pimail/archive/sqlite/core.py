"""The SQLite archive's shared state: settings, the writer connection, jobs for the writer thread,
health reporting. The rooms (space, writer, reader) build on this; ``SqliteArchive`` joins them.

Threads: the event loop only queues work. One writer thread owns the only writing connection: it
groups submitted envelopes into one transaction, resolves the submit futures after COMMIT, and runs
retention in bounded batches between commits. Reads run in a small pool whose threads each hold
their own connection.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pimail.archive.base import Archive, ArchiveError, DurableCallback, RetentionPolicy
from pimail.archive.common import (
    BUSY_GROUP_BYTES,
    STEADY_GROUP_BYTES,
    GroupPolicy,
    GroupQueue,
    HealthConditions,
    PruneTally,
    post,
)
from pimail.archive.sqlite.acklog import AckLog
from pimail.archive.sqlite.layout import WAL_AUTOCHECKPOINT_PAGES
from pimail.archive.sqlite.tail import LogTail
from pimail.health import HealthModel, Severity

T = TypeVar("T")

MAX_TOPIC_RANGES = 64  # above this many matching topics, walk the time range with a topic filter
BUSY_TIMEOUT_MS = 5000

SQLITE_FULL = 13
SQLITE_IOERR = 10
SQLITE_BUSY = 5
SQLITE_LOCKED = 6

# The ack log: a group smaller than 256 KB is appended to the log and acked; the tail goes into
# SQLite every 120 s or when the 3 MB log is full. The longer the interval, the fewer times each
# page of the topic index's current bucket is rewritten (bench/archive, 50 env/s into a half-full
# bucket: 30 s 29x, 60 s 19x, 120 s 12x the envelope bytes written; a commit per group 53x); 120 s
# of 50 env/s is 2 MB of log, and the tail held in memory at most the log's size.
INDEX_INTERVAL_S = 120.0
LOG_MAX_BYTES = 3_000_000
# A group this large goes straight into SQLite: its commit's ~9 rewritten pages are small next to it,
# and only a busy writer (one that was writing while this much arrived) makes one.
DIRECT_GROUP_BYTES = 256 * 1024

HEALTH_DISK_FULL = "archive.disk_full"
HEALTH_WRITE = "archive.write_failed"
HEALTH_DISK_LOW = "archive.disk_low"


def errcode(exc: sqlite3.Error) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def proc_write_bytes() -> int | None:
    try:
        with open("/proc/self/io", encoding="ascii") as f:
            for line in f:
                if line.startswith("write_bytes:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def free_disk(directory: Path) -> int | None:
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


@dataclass
class Job:
    """Work for the writer thread other than ingest (prune, vacuum)."""

    fn: Callable[[], Any]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop


class SqliteCore(Archive):
    """State and plumbing shared by the rooms of ``SqliteArchive`` (see its docstring)."""

    def __init__(
        self,
        path: Path | str,
        *,
        flush_interval_ms: int = 200,
        flush_max_envelopes: int = 2000,
        synchronous: str = "full",
        retention: RetentionPolicy | None = None,
        health: HealthModel | None = None,
        prune_interval_s: float = 60.0,
        on_durable: DurableCallback | None = None,
        max_pending_envelopes: int = 0,
        wal_autocheckpoint_pages: int = WAL_AUTOCHECKPOINT_PAGES,
        busy_group_bytes: int | None = None,
        index_interval_s: float = INDEX_INTERVAL_S,
        log_max_bytes: int = LOG_MAX_BYTES,
        direct_group_bytes: int = DIRECT_GROUP_BYTES,
    ) -> None:
        if synchronous.lower() not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        if flush_interval_ms < 0 or flush_max_envelopes < 1:
            raise ValueError("flush_interval_ms must be ≥ 0 and flush_max_envelopes ≥ 1")
        if index_interval_s < 0 or log_max_bytes < 0:
            raise ValueError("index_interval_s and log_max_bytes must be ≥ 0")
        self.path = Path(path)
        self.flush_interval_s = flush_interval_ms / 1000
        self.flush_max = flush_max_envelopes
        self.synchronous = synchronous.upper()
        self.retention = retention or RetentionPolicy()
        self.health = health
        self.prune_interval_s = prune_interval_s
        self.on_durable = on_durable
        self.max_pending = max_pending_envelopes or max(20_000, 10 * flush_max_envelopes)
        self.wal_autocheckpoint_pages = wal_autocheckpoint_pages
        #: query planner threshold (see the reader's _select); tests force one path or the other
        self.max_topic_ranges = MAX_TOPIC_RANGES
        self.health_reason = "ok"
        #: envelopes actually added (not duplicates) by this instance since open
        self.inserted_total = 0
        self.archived_bytes = 0

        #: the ack log (None: groups go straight into SQLite) and the tail it holds for the index
        self.index_interval_s = index_interval_s if log_max_bytes > 0 else 0.0
        self.log_max_bytes = log_max_bytes
        self.direct_bytes = max(1, direct_group_bytes)
        #: when a group is due (the flush interval, or a busy node's group waiting: see GroupPolicy);
        #: with the log a commit is cheap from STEADY_GROUP_BYTES on, without it from 1 MB
        if busy_group_bytes is None:
            busy_group_bytes = STEADY_GROUP_BYTES if self.index_interval_s > 0 else BUSY_GROUP_BYTES
        self.group = GroupPolicy(self.flush_interval_s, flush_max_envelopes, busy_group_bytes)
        self._queue = GroupQueue(self.max_pending, "archive is behind")
        self._log: AckLog | None = None
        self._tail = LogTail()
        self._tail_foreign = False  # the tail was read from another process's log: never index it
        self._index_retry_at = 0.0
        self._cond = self._queue.cond  # guards the queue, the jobs and the retention flags
        self._jobs: collections.deque[Job] = collections.deque()
        self._prune_run: PruneTally | None = None
        self._prune_asked = False
        self._stopping = False
        self._writer: threading.Thread | None = None
        self._wconn: sqlite3.Connection | None = None
        self._readers: concurrent.futures.ThreadPoolExecutor | None = None
        self._reader_local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._read_slots: asyncio.Semaphore | None = None
        self._health = HealthConditions(health, "archive recovered (%s)", self._health_call)
        self._write_bytes_at_open: int | None = None
        self._opened = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._need_reserve = True

    def _open_sync(self) -> None:  # SqliteArchive: (re)opens the writer connection
        raise NotImplementedError

    # -- connections -------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            raise ArchiveError(f"cannot open the archive {self.path}: {exc}") from exc
        return conn

    def _conn(self) -> sqlite3.Connection:
        if self._wconn is None:
            raise sqlite3.OperationalError("archive writer connection is closed")
        return self._wconn

    def _rollback(self) -> None:
        if self._wconn is not None and self._wconn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.execute("ROLLBACK")

    def _drop_writer(self) -> None:
        if self._wconn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._wconn.close()
        self._wconn = None

    def _reopen_writer(self) -> None:
        try:
            self._open_sync()
        except ArchiveError as exc:
            raise sqlite3.OperationalError(str(exc)) from exc

    def _log_file_bytes(self) -> int:
        with contextlib.suppress(OSError):
            return os.stat(self.path.with_name(self.path.name + ".acklog")).st_size
        return 0

    def _file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    # -- jobs for the writer thread ----------------------------------------------------------------

    async def _writer_job(self, fn: Callable[[], T]) -> T:
        if not self._opened:
            raise ArchiveError("the archive is not open")
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        with self._cond:
            self._jobs.append(Job(fn, fut, loop))
            self._cond.notify()
        return await fut

    def _run_job(self, job: Job) -> None:
        try:
            result = job.fn()
        except sqlite3.Error as exc:
            self._rollback()
            post(job.loop, job.future, None, ArchiveError(str(exc)))
        except BaseException as exc:
            post(job.loop, job.future, None, exc)
        else:
            post(job.loop, job.future, result)

    # -- health ------------------------------------------------------------------------------------

    def _raise(self, key: str, severity: Severity, message: str) -> None:
        self._health.report(key, severity, message)
        self.health_reason = self._health.reason

    def _clear(self, key: str) -> None:
        self._health.clear(key)
        self.health_reason = self._health.reason

    def _health_call(self, fn: Callable[..., None], *args: Any) -> None:
        # The health model belongs to the event loop: hop onto it when called from the writer.
        loop = self._loop
        if loop is not None and threading.current_thread() is not threading.main_thread() \
                and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)
                return
        fn(*args)
