"""Crash safety with real processes: kill -9 a writer at random moments, then check the file."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from pimail.archive.sqlite import hash_expr_values
from tests.archive.crash_writer import crash_envelope

ROOT = Path(__file__).resolve().parents[2]
KILLS = int(os.environ.get("PIMAIL_CRASH_KILLS", "20"))
RUN_STRIDE = 10_000_000  # each run writes its own nonce range


def _read_lines(proc: subprocess.Popen[str], out: list[str], ready: threading.Event) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.endswith("\n"):  # a torn last line was never fully reported
            out.append(line.strip())
            if line.startswith("durable"):
                ready.set()


def _present(conn: sqlite3.Connection, i: int) -> bool:
    env = crash_envelope(i)
    values = hash_expr_values(env.hash)
    marks = ",".join("?" * len(values))
    rows = conn.execute(
        f"SELECT raw FROM envelopes WHERE ((id & 4294967295) - 2147483648) IN ({marks})", values
    ).fetchall()
    return any(bytes(r[0]) == env.raw for r in rows)


def test_kill_9_never_loses_durable_envelopes_or_corrupts(tmp_path: Path) -> None:
    db = tmp_path / "archive.sqlite"
    rng = random.Random(4)
    reported = 0
    for run in range(KILLS):
        lines: list[str] = []
        ready = threading.Event()
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.archive.crash_writer", str(db), str(run * RUN_STRIDE)],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )
        reader = threading.Thread(target=_read_lines, args=(proc, lines, ready), daemon=True)
        reader.start()
        try:
            assert ready.wait(60), f"run {run}: the writer never reported a durable batch"
            time.sleep(rng.uniform(0.0, 0.4))
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            reader.join(10)
        assert proc.returncode == -signal.SIGKILL
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
            counted = conn.execute("SELECT sum(n) FROM topics").fetchone()[0]
            assert rows == counted and rows >= reported
        finally:
            conn.close()
    print(f"{KILLS} kills, {reported} envelopes reported durable, all present")
