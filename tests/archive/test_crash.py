"""Crash safety with real processes: kill -9 a writer at random moments, then check the file.

The writer is a forked child (no interpreter start-up per run, so 20 kills stay cheap) running
tests/archive/crash_writer.py's loop with its stdout on a pipe; ``python -m
tests.archive.crash_writer DB FIRST`` runs the same loop by hand. Its groups are small, so they are
acknowledged from the ack log and reach the SQLite index in batches behind it: a kill lands in a log
append or in an index batch. After each kill the archive is opened once (as the next start of pimail
does, replaying the log) before the file is checked.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sqlite3
import sys
import threading
import time
from pathlib import Path

from pimail.archive.sqlite import probe_keys
from tests.archive import crash_writer
from tests.archive.crash_writer import crash_envelope

KILLS = int(os.environ.get("PIMAIL_CRASH_KILLS", "20"))
RUN_STRIDE = 10_000_000  # each run writes its own nonce range


def _start_writer(db: Path, first: int) -> tuple[int, int]:
    """Fork a writer; (pid, read end of its stdout)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.dup2(w, 1)
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            asyncio.run(crash_writer.main(db, first))
        finally:
            os._exit(code)
    os.close(w)
    return pid, r


def _read_lines(fd: int, out: list[str], ready: threading.Event) -> None:
    with open(fd, encoding="ascii", errors="replace") as f:
        for line in f:
            if line.endswith("\n"):  # a torn last line was never fully reported
                out.append(line.strip())
                if line.startswith("durable"):
                    ready.set()


def _present(conn: sqlite3.Connection, i: int) -> bool:
    env = crash_envelope(i)
    keys = probe_keys(env.sent, env.hash)
    marks = ",".join("?" * len(keys))
    rows = conn.execute(f"SELECT raw FROM envelopes WHERE id IN ({marks})", keys).fetchall()
    return any(bytes(r[0]) == env.raw for r in rows)


def test_kill_9_never_loses_durable_envelopes_or_corrupts(tmp_path: Path) -> None:
    db = tmp_path / "archive.sqlite"
    rng = random.Random(4)
    reported = 0
    for run in range(KILLS):
        lines: list[str] = []
        ready = threading.Event()
        pid, fd = _start_writer(db, run * RUN_STRIDE)
        reader = threading.Thread(target=_read_lines, args=(fd, lines, ready), daemon=True)
        reader.start()
        try:
            assert ready.wait(60), f"run {run}: the writer never reported a durable batch"
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            reader.join(10)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        asyncio.run(_reopen(db))
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], f"run {run}: corrupt"
            durable = [tuple(map(int, line.split()[1:])) for line in lines if line.startswith("durable")]
            assert durable
            for low, high, count in durable:
                assert high - low + 1 == count  # groups are contiguous ranges of submits
                # one group is one transaction, so any of its envelopes proves all of it; check a few
                for i in range(low, high + 1, max(1, count // 10)):
                    assert _present(conn, i), f"run {run}: envelope {i} was reported durable but is gone"
                assert _present(conn, high), f"run {run}: envelope {high} was reported durable but is gone"
            reported += sum(c for _, _, c in durable)
            rows = conn.execute("SELECT count(*) FROM envelopes").fetchone()[0]
            counted = conn.execute("SELECT value FROM meta WHERE key = 'count'").fetchone()[0]
            assert rows == counted and rows >= reported
        finally:
            conn.close()
    print(f"{KILLS} kills, {reported} envelopes reported durable, all present")


async def _reopen(db: Path) -> None:
    """Open and close the archive: what pimail's next start does (the ack log goes into SQLite)."""
    from pimail.archive.sqlite import SqliteArchive

    archive = SqliteArchive(db, prune_interval_s=0)
    await archive.open()
    await archive.close()


def test_open_after_a_crash_resets_the_wal(tmp_path: Path) -> None:
    """A crash loop must not grow the WAL: opening copies a crashed run's WAL home and truncates it."""
    from pimail.archive.sqlite import SqliteArchive

    db = tmp_path / "archive.sqlite"
    wal = db.with_name(db.name + "-wal")
    lines: list[str] = []
    ready = threading.Event()
    pid, fd = _start_writer(db, 0)
    reader = threading.Thread(target=_read_lines, args=(fd, lines, ready), daemon=True)
    reader.start()
    try:
        assert ready.wait(60), "the writer never reported a durable batch"
        for _ in range(600):  # until an index batch behind the ack log has written the WAL
            if wal.exists() and wal.stat().st_size > 0:
                break
            time.sleep(0.05)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        reader.join(10)
    assert wal.exists() and wal.stat().st_size > 0  # what the killed writer left behind

    async def reopen() -> int:
        archive = SqliteArchive(db)
        await archive.open()
        try:
            size = wal.stat().st_size if wal.exists() else 0
            assert (await archive.stats()).count > 0
            return size
        finally:
            await archive.close()

    assert asyncio.run(reopen()) == 0
