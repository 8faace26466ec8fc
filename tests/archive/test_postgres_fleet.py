"""Two real pimail nodes (``pimail run --archive-url``) on one PostgreSQL database.

Phones post and ask for history with the ``pimail post`` / ``pimail history`` commands, each in its
own process, over RLPx on 127.0.0.1. An envelope posted to either node is served by both; a node
killed with SIGKILL right after confirming an envelope loses nothing, and a node that was down
serves what its sibling archived meanwhile when it comes back.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.archive.conftest import pg_url_or_skip

TOPIC = "aabbccdd"
PASSWORD = "fleet-test"
READY = re.compile(r"ready: enode://([0-9a-f]{128})@[^:\s]+:(\d+)")
START_TIMEOUT_S = 60.0


@pytest.fixture
def fleet_db() -> Iterator[str]:
    """A database of its own (nodes use the default ``pimail`` schema, as in production)."""
    base = pg_url_or_skip()
    name = f"pimail_fleet_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield base.rsplit("/", 1)[0] + "/" + name
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "JOURNAL_STREAM",
                                                             "CONFIGURATION_DIRECTORY", "WATCHDOG_USEC")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Node:
    """``pimail run`` in a subprocess; its enode is read from the "ready" log line."""

    def __init__(self, data_dir: Path, url: str) -> None:
        self.data_dir = data_dir
        self.url = url
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []
        self.enode = ""

    def start(self) -> Node:
        self.log = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pimail", "run", "--data-dir", str(self.data_dir),
             "--listen", "127.0.0.1:0", "--archive-url", self.url,
             "--no-metrics", "--no-page", "--no-leds", "--clock-trust", "always"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(),
            cwd=self.data_dir.parent,
        )
        found = threading.Event()

        def reader() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = READY.search(line)
                if m and not found.is_set():
                    self.enode = f"enode://{m.group(1)}@127.0.0.1:{m.group(2)}"
                    found.set()
            found.set()

        threading.Thread(target=reader, daemon=True).start()
        if not found.wait(START_TIMEOUT_S) or not self.enode:
            self.stop()
            raise AssertionError("node did not become ready:\n" + "\n".join(self.log[-20:]))
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def pimail(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pimail", *args], capture_output=True, text=True,
                          timeout=90, env=_env(), cwd=cwd)


def post(node: Node, text: str, cwd: Path) -> str:
    r = pimail("post", "--peer", node.enode, "--topic", TOPIC, "--sym-password", PASSWORD, text, cwd=cwd)
    assert r.returncode == 0, r.stderr
    h, status = r.stdout.split()[:2]
    assert status == "confirmed"  # the node confirms only once the archive (PostgreSQL) has it
    return h


def history(node: Node, phone: Path) -> dict[str, str]:
    """hash → text of everything a fresh phone gets from ``node`` (a new phone key each time)."""
    r = pimail("history", "--mailserver", node.enode, "--data-dir", str(phone), "--topic", TOPIC,
               "--sym-password", PASSWORD, "--from", str(int(time.time()) - 3600), "--json", cwd=phone.parent)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    return {str(rec["hash"]): str(rec.get("text")) for rec in records if "hash" in rec}


@pytest.mark.slow
def test_two_nodes_one_database_serve_each_others_envelopes_and_survive_a_kill(
    tmp_path: Path, fleet_db: str
) -> None:
    a = Node(tmp_path / "node-a", fleet_db)
    b = Node(tmp_path / "node-b", fleet_db)
    phones = iter(tmp_path / f"phone-{i}" for i in range(100))
    try:
        a.start()
        b.start()
        assert a.enode != b.enode
        h1 = post(a, "to node a", tmp_path)
        h2 = post(b, "to node b", tmp_path)
        # the nodes are not peered: only the shared database can make each serve the other's envelope
        for node in (a, b):
            got = history(node, next(phones))
            assert got.get(h1) == "to node a" and got.get(h2) == "to node b", (node.enode, got)

        # node a confirms an envelope and dies at once (SIGKILL: no flush, no goodbye)
        h3 = post(a, "last words of node a", tmp_path)
        a.kill9()
        assert history(b, next(phones)).get(h3) == "last words of node a"

        # while a is down, b keeps archiving; a comes back and serves it
        h4 = post(b, "while a was down", tmp_path)
        a.start()
        got = history(a, next(phones))
        assert {h1, h2, h3, h4} <= set(got)
        assert got[h4] == "while a was down"
    finally:
        codes = (a.stop(), b.stop())
    assert codes[1] == 0, "\n".join(b.log[-20:])


def test_run_with_an_unreachable_or_bad_archive_url_exits_with_one_line(tmp_path: Path) -> None:
    common = ("run", "--data-dir", str(tmp_path / "node"), "--listen", "127.0.0.1:0", "--no-metrics",
              "--no-page", "--no-leds", "--clock-trust", "always")
    r = pimail(*common, "--archive-url", "postgresql://fleet:s3cret@127.0.0.1:1/pimail", cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("pimail: error:") and "127.0.0.1:1/pimail" in last
    assert "s3cret" not in r.stderr
    r = pimail(*common, "--archive-url", "mysql://x@y/z", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("pimail: error:")


def test_archive_cli_on_a_postgres_config(tmp_path: Path, fleet_db: str) -> None:
    """`pimail archive stats|prune|migrate` on a node whose config points at PostgreSQL."""
    from pimail.archive.base import RetentionPolicy
    from pimail.archive.sqlite import SqliteArchive
    from tests.archive.conftest import make_envelope, run

    node = tmp_path / "node"
    node.mkdir()
    (node / "pimail.toml").write_text(f'[archive]\nurl = "{fleet_db}"\nmax_age = "0"\nmax_count = 3\n')
    old = tmp_path / "old-pi"

    async def fill() -> None:
        a = SqliteArchive(old / "archive.sqlite", retention=RetentionPolicy(), prune_interval_s=0)
        await a.open()
        await a.submit([make_envelope(i, 1_700_000_000 + i) for i in range(5)])
        await a.close()

    run(fill())
    stats = pimail("archive", "stats", "--data-dir", str(node), "--json", cwd=tmp_path)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["count"] == 0
    assert json.loads(stats.stdout)["extra"]["backend"] == "postgresql"
    mig = pimail("archive", "migrate", "--data-dir", str(node), "--from", str(old), "--to", fleet_db,
                 "--json", cwd=tmp_path)
    assert mig.returncode == 0, mig.stderr
    assert json.loads(mig.stdout)["verify"]["matched"] == 5
    pruned = pimail("archive", "prune", "--data-dir", str(node), "--json", cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr
    assert json.loads(pruned.stdout)["deleted"] == 2 and json.loads(pruned.stdout)["count"] == 3
