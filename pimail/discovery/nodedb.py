"""The persistent node database: nodes that answered us, and the local record's sequence number.

One SQLite file in the data dir (``nodes.sqlite``), written by one worker thread so the event loop
never waits on the SD card. A restart seeds the table from the nodes that answered within
``SEED_MAX_AGE_S``, so no bootnode is needed (geth enode/nodedb.go keeps the same facts in LevelDB).
The file is an ordinary SQLite database an operator can open::

    sqlite3 var/nodes.sqlite 'select ip, tcp, datetime(last_pong, "unixepoch") from nodes'
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from pimail.discovery.table import Node

FILENAME = "nodes.sqlite"
SCHEMA_VERSION = 1
SEED_MAX_AGE_S = 5 * 86400  # geth seedMaxAge
NODE_EXPIRY_S = 7 * 86400  # rows not heard from in a week are deleted
MAX_ROWS = 5000  # the table holds at most 4,096 entries; keep a little more

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS nodes (
    id BLOB PRIMARY KEY,
    pubkey BLOB NOT NULL,
    ip TEXT NOT NULL,
    udp INTEGER NOT NULL,
    tcp INTEGER NOT NULL,
    last_pong REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_last_pong ON nodes(last_pong);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class NodeDB:
    """Async front of the node database; every call runs on its one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="nodedb")
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def in_dir(cls, data_dir: Path) -> NodeDB:
        return cls(Path(data_dir) / FILENAME)

    @staticmethod
    def exists_in(data_dir: Path) -> bool:
        return (Path(data_dir) / FILENAME).exists()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.executescript(_SCHEMA)
        conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        conn.commit()
        self._conn = conn

    async def close(self) -> None:
        if self._conn is not None:
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        assert self._conn is not None
        self._conn.close()
        self._conn = None

    async def save(self, nodes: Sequence[tuple[Node, float]]) -> None:
        """Record ``(node, last_pong)`` pairs and drop expired rows."""
        rows = [(n.node_id, n.pubkey, n.ip, n.udp, n.tcp, pong) for n, pong in nodes]
        await self._run(self._save, rows, time.time())

    def _save(self, rows: list[tuple[Any, ...]], now: float) -> None:
        conn = self._conn
        assert conn is not None
        with conn:
            conn.executemany(
                "INSERT INTO nodes VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(id) DO UPDATE SET "
                "pubkey=excluded.pubkey, ip=excluded.ip, udp=excluded.udp, tcp=excluded.tcp, "
                "last_pong=max(last_pong, excluded.last_pong)",
                rows,
            )
            conn.execute("DELETE FROM nodes WHERE last_pong < ?", (now - NODE_EXPIRY_S,))
            conn.execute(
                "DELETE FROM nodes WHERE id NOT IN (SELECT id FROM nodes ORDER BY last_pong DESC LIMIT ?)",
                (MAX_ROWS,),
            )

    async def seeds(self, count: int, max_age_s: float = SEED_MAX_AGE_S) -> list[Node]:
        """Up to ``count`` nodes that answered within ``max_age_s``, most recent first."""
        rows: list[tuple[Any, ...]] = await self._run(self._seeds, count, time.time() - max_age_s)
        return [Node(bytes(pub), ip, udp, tcp) for pub, ip, udp, tcp in rows]

    def _seeds(self, count: int, since: float) -> list[tuple[Any, ...]]:
        assert self._conn is not None
        cur = self._conn.execute(
            "SELECT pubkey, ip, udp, tcp FROM nodes WHERE last_pong >= ? ORDER BY last_pong DESC LIMIT ?",
            (since, count),
        )
        return cur.fetchall()

    async def count(self) -> int:
        result: int = await self._run(self._count)
        return result

    def _count(self) -> int:
        assert self._conn is not None
        return int(self._conn.execute("SELECT count(*) FROM nodes").fetchone()[0])

    async def get_meta(self, key: str) -> str | None:
        result: str | None = await self._run(self._get_meta, key)
        return result

    def _get_meta(self, key: str) -> str | None:
        assert self._conn is not None
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        await self._run(self._set_meta, key, value)

    def _set_meta(self, key: str, value: str) -> None:
        assert self._conn is not None
        with self._conn:
            self._conn.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))


def read_local_seq(data_dir: Path) -> int | None:
    """The local record's sequence number from the database, read-only (for ``pimail enode --enr``)."""
    path = Path(data_dir) / FILENAME
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'local_seq'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return int(row[0]) if row and str(row[0]).isdigit() else None
