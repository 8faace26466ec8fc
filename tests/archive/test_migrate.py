"""``pimail archive migrate``: SQLite → PostgreSQL, resumable by cursor, verified by counts and hashes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from pimail.archive.base import ArchivedEnvelope, HistoryQuery, RetentionPolicy
from pimail.archive.migrate import Checkpoint, copy_archive, describe_endpoint, verify_copy
from pimail.archive.postgres import PostgresArchive
from pimail.archive.sqlite import SqliteArchive
from tests.archive.conftest import make_envelope, run, topic_n

BASE = 1_750_000_000


def envelopes(n: int, start: int = 0) -> list[ArchivedEnvelope]:
    # three per second (equal timestamps), a dozen topics, spread over a few days
    return [make_envelope(i, BASE + (i // 3) * 97, topic_n(i % 12), size=40 + i % 30)
            for i in range(start, start + n)]


def make_source(path: Path, envs: list[ArchivedEnvelope]) -> None:
    async def main() -> None:
        a = SqliteArchive(path, retention=RetentionPolicy(), prune_interval_s=0, flush_interval_ms=0)
        await a.open()
        for i in range(0, len(envs), 5000):
            await a.submit(envs[i:i + 5000])
        await a.close()

    run(main())


def pg(url: str, schema: str) -> PostgresArchive:
    return PostgresArchive(url, schema=schema, prune_interval_s=0, flush_interval_ms=0)


def sqlite(path: Path) -> SqliteArchive:
    return SqliteArchive(path, retention=RetentionPolicy(), prune_interval_s=0, flush_interval_ms=0)


async def all_hashes(a: Any) -> list[bytes]:
    return [e.hash async for e in a.iterate(HistoryQuery(0, 2**32 - 1), page_size=1000)]


def admin(url: str, schema: str, statement: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
        conn.execute(statement)  # type: ignore[arg-type]


# -- library ---------------------------------------------------------------------------------------------


def test_copy_and_verify_into_a_fleet_database(tmp_path: Path, pg_url: str, schema: str) -> None:
    src_envs = envelopes(2500)
    make_source(tmp_path / "archive.sqlite", src_envs)
    cp_path = tmp_path / "cp.json"

    async def main() -> None:
        source, dest = sqlite(tmp_path / "archive.sqlite"), pg(pg_url, schema)
        await source.open()
        await dest.open()
        try:
            # another node of the fleet already archived some of the same and some other envelopes
            others = [make_envelope(10_000 + i, BASE + i * 500) for i in range(30)]  # inside the range
            await dest.submit(src_envs[100:150] + others)
            cp = Checkpoint("src", "dst")
            copied = await copy_archive(source, dest, cp, cp_path, batch=300)
            assert copied.copied == 2500 and copied.total == 2500 and copied.resumed_from is None
            assert json.loads(cp_path.read_text())["finished"] is True
            v = await verify_copy(source, dest, copied.last_cursor)
            assert v.ok, v
            assert (v.source_count, v.matched, v.missing, v.bad_hash) == (2500, 2500, 0, 0)
            assert v.extra == 30
            assert v.source_digest == v.destination_digest
            assert sorted(await all_hashes(dest)) == sorted(e.hash for e in src_envs + others)
        finally:
            await source.close()
            await dest.close()

    run(main())


def test_interrupted_copy_resumes_from_the_checkpoint(tmp_path: Path, pg_url: str, schema: str) -> None:
    src_envs = envelopes(3000)
    make_source(tmp_path / "archive.sqlite", src_envs)
    cp_path = tmp_path / "cp.json"

    async def first_run() -> int:
        source, dest = sqlite(tmp_path / "archive.sqlite"), pg(pg_url, schema)
        await source.open()
        await dest.open()
        progressed = asyncio.Event()
        seen: list[int] = []

        def on_progress(total: int) -> None:
            seen.append(total)
            if total >= 1000:
                progressed.set()

        task = asyncio.create_task(copy_archive(source, dest, Checkpoint("s", "d"), cp_path, batch=100,
                                                on_progress=on_progress))
        await progressed.wait()
        task.cancel()  # Ctrl-C in the middle of a page
        with pytest.raises(asyncio.CancelledError):
            await task
        await source.close()
        await dest.close()
        return seen[-1]

    done_before = run(first_run())
    saved = json.loads(cp_path.read_text())
    assert saved["copied"] == done_before and not saved["finished"]
    assert 1000 <= done_before < 3000

    async def second_run() -> None:
        source, dest = sqlite(tmp_path / "archive.sqlite"), pg(pg_url, schema)
        await source.open()
        await dest.open()
        try:
            cp = Checkpoint.load(cp_path, "s", "d")
            assert cp.cursor_bytes == sorted(e.cursor for e in src_envs)[done_before - 1]
            copied = await copy_archive(source, dest, cp, cp_path, batch=100)
            assert copied.resumed_from is not None
            assert copied.copied == 3000 - done_before and copied.total == 3000
            v = await verify_copy(source, dest, copied.last_cursor)
            assert v.ok and v.matched == 3000 and v.extra == 0
        finally:
            await source.close()
            await dest.close()

    run(second_run())


def test_resume_when_the_checkpoint_envelope_was_pruned_from_the_source(
    tmp_path: Path, pg_url: str, schema: str
) -> None:
    src_envs = envelopes(1200)
    make_source(tmp_path / "archive.sqlite", src_envs)
    cp_path = tmp_path / "cp.json"
    ordered = sorted(src_envs, key=lambda e: e.cursor)
    # a checkpoint as a run that stopped after 600 envelopes would have left it
    Checkpoint("s", "d", ordered[599].cursor.hex(), 600).save(cp_path)

    async def main() -> None:
        source, dest = sqlite(tmp_path / "archive.sqlite"), pg(pg_url, schema)
        await source.open()
        await dest.open()
        try:
            await dest.submit(ordered[:600])
            source.set_retention(RetentionPolicy(max_count=500))  # the source node pruned meanwhile
            await source.prune()
            copied = await copy_archive(source, dest, Checkpoint.load(cp_path, "s", "d"), cp_path, batch=200)
            # restarted at the second of the pruned checkpoint envelope; duplicates were skipped
            assert copied.copied >= 500
            v = await verify_copy(source, dest, copied.last_cursor)
            assert v.ok and v.source_count == 500 and v.matched == 500 and v.extra == 0
        finally:
            await source.close()
            await dest.close()

    run(main())


def test_verify_reports_missing_and_tampered_envelopes(tmp_path: Path, pg_url: str, schema: str) -> None:
    src_envs = envelopes(400)
    make_source(tmp_path / "archive.sqlite", src_envs)
    ordered = sorted(src_envs, key=lambda e: e.cursor)

    async def main() -> None:
        source, dest = sqlite(tmp_path / "archive.sqlite"), pg(pg_url, schema)
        await source.open()
        await dest.open()
        try:
            copied = await copy_archive(source, dest, Checkpoint("s", "d"), tmp_path / "cp.json")
            gone = ordered[10].hash.hex()
            admin(pg_url, schema, f"DELETE FROM envelopes WHERE hash = '\\x{gone}'::bytea")
            admin(pg_url, schema, "UPDATE envelopes SET raw = raw || '\\x00'::bytea"
                                  f" WHERE hash = '\\x{ordered[20].hash.hex()}'::bytea")
            v = await verify_copy(source, dest, copied.last_cursor)
            assert not v.ok
            assert (v.source_count, v.matched, v.missing, v.bad_hash) == (400, 398, 2, 1)
            assert v.source_digest != v.destination_digest
            assert any(gone in e for e in v.examples)
        finally:
            await source.close()
            await dest.close()

    run(main())


def test_checkpoint_of_another_pair_or_damaged_is_refused(tmp_path: Path) -> None:
    from pimail.errors import UserError

    p = tmp_path / "cp.json"
    Checkpoint("a", "b", "", 0).save(p)
    with pytest.raises(UserError, match="belongs to a migration"):
        Checkpoint.load(p, "a", "c")
    p.write_text(json.dumps({"version": 1, "source": "a", "destination": "b", "cursor": "abcd"}))
    with pytest.raises(UserError, match="damaged"):
        Checkpoint.load(p, "a", "b")
    p.write_text("{not json")
    with pytest.raises(UserError, match="--restart"):
        Checkpoint.load(p, "a", "b")
    assert Checkpoint.load(tmp_path / "absent.json", "a", "b").copied == 0
    assert "s3cret" not in describe_endpoint("postgresql://u:s3cret@h:5/db")


# -- command line ----------------------------------------------------------------------------------------


def pimail(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CONFIGURATION_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "pimail", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_migrates_resumes_and_reports(tmp_path: Path, pg_url: str, schema: str) -> None:
    data = tmp_path / "node"
    data.mkdir()
    make_source(data / "archive.sqlite", envelopes(1500))
    args = ("archive", "migrate", "--data-dir", str(data), "--to", pg_url, "--schema", schema, "--json")
    first = pimail(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    out = json.loads(first.stdout)
    assert out["copied"] == 1500 and out["verify"]["ok"] and out["verify"]["matched"] == 1500
    assert pg_url.split("@")[-1].split("/")[0] in out["destination"]
    # nothing new: a second run resumes at the end, copies nothing and verifies everything again
    again = json.loads(pimail(*args, cwd=tmp_path).stdout)
    assert again["resumed"] and again["copied"] == 0 and again["verify"]["matched"] == 1500
    # the node archived more since: the next run copies just those
    make_source(data / "archive.sqlite", envelopes(20, start=50_000))
    more = json.loads(pimail(*args, cwd=tmp_path).stdout)
    assert more["copied"] == 20 and more["copied_total"] == 1520 and more["verify"]["ok"]
    text = pimail(*args[:-1], "--restart", cwd=tmp_path)
    assert text.returncode == 0 and "1520 identical in the destination, 0 missing" in text.stdout


def test_cli_killed_mid_copy_resumes(tmp_path: Path, pg_url: str, schema: str) -> None:
    data = tmp_path / "node"
    data.mkdir()
    n = 12_000
    make_source(data / "archive.sqlite", envelopes(n))
    cp = tmp_path / "cp.json"
    cmd = [sys.executable, "-m", "pimail", "archive", "migrate", "--data-dir", str(data), "--to", pg_url,
           "--schema", schema, "--checkpoint", str(cp), "--batch", "100", "--json"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        copied = 0
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                copied = json.loads(cp.read_text())["copied"]
            except (FileNotFoundError, ValueError, KeyError):
                copied = 0
            if copied >= 1000:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the migration finished before it could be interrupted"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
    saved = json.loads(cp.read_text())
    assert 1000 <= saved["copied"] < n and not saved["finished"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["resumed"] and out["copied_total"] == n
    assert out["copied"] <= n - saved["copied"]  # only the rest (the killed page is in the count)
    assert out["verify"]["ok"] and out["verify"]["matched"] == n and out["verify"]["missing"] == 0


def test_cli_bad_input_exits_with_one_line(tmp_path: Path) -> None:
    data = tmp_path / "node"
    data.mkdir()
    r = pimail("archive", "migrate", "--data-dir", str(data), "--from", str(tmp_path / "nope.sqlite"),
               "--to", "postgresql://x@127.0.0.1:1/db", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "no archive at" in r.stderr
    make_source(data / "archive.sqlite", envelopes(5))
    r = pimail("archive", "migrate", "--data-dir", str(data), "--to", "mysql://x@y/z", cwd=tmp_path)
    assert r.returncode == 2 and "not supported" in r.stderr
    r = pimail("archive", "migrate", "--data-dir", str(data), "--to", str(data / "archive.sqlite"),
               cwd=tmp_path)
    assert r.returncode == 2 and "same archive" in r.stderr
    r = pimail("archive", "migrate", "--data-dir", str(data), "--to", "postgresql://x@127.0.0.1:1/db",
               "--batch", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--batch" in r.stderr
    r = pimail("archive", "migrate", "--data-dir", str(data), "--to", "postgresql://u:pw@127.0.0.1:1/db",
               cwd=tmp_path)
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("pimail: error: migrate:") and "127.0.0.1:1/db" in last and "pw" not in r.stderr
