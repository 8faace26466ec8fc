"""Archive fixtures: one contract suite over every backend in ``BACKENDS``.

A backend factory takes a fresh temporary directory and keyword options (``retention``,
``health``, ``on_durable``, ``flush_interval_ms``) and returns an *unopened* ``Archive``.
The PostgreSQL backend adds an entry ``"postgres"`` whose factory reads its server URL from the
environment variable ``PIMAIL_TEST_PG_URL`` (and gives each test its own schema).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from pimail.archive.base import Archive, ArchivedEnvelope
from pimail.archive.sqlite import SqliteArchive
from pimail.archive.sqlite.core import Job
from pimail.envelope.codec import Envelope

T = TypeVar("T")
BackendFactory = Callable[..., Archive]

PG_URL_ENV = "PIMAIL_TEST_PG_URL"


def sqlite_backend(tmp: Path, **options: Any) -> Archive:
    options.setdefault("flush_interval_ms", 2)
    return SqliteArchive(tmp / "archive.sqlite", **options)


def pg_url_or_skip() -> str:
    """The test server's URL. Missing: fail under CI (never pass silently), else skip with the reason."""
    url = os.environ.get(PG_URL_ENV, "").strip()
    if url:
        return url
    why = (f"{PG_URL_ENV} is not set, so the PostgreSQL tests cannot run: start a server with "
           f'`eval "$(scripts/start-test-postgres)"; export {PG_URL_ENV}` (make test does this)')
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


_PG_RUN = uuid.uuid4().hex[:8]  # schemas of concurrent test runs on one server never meet
_pg_schemas: set[str] = set()


def pg_schema_for(tmp: Path) -> str:
    """One PostgreSQL schema per temporary directory: reopening ``tmp`` reopens the same archive."""
    name = f"pimail_t_{_PG_RUN}_{hashlib.sha256(str(tmp).encode()).hexdigest()[:12]}"
    _pg_schemas.add(name)
    return name


def drop_pg_schemas(url: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        for name in sorted(_pg_schemas):
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
    _pg_schemas.clear()


def postgres_backend(tmp: Path, **options: Any) -> Archive:
    from pimail.archive.postgres import PostgresArchive

    options.setdefault("flush_interval_ms", 2)
    return PostgresArchive(pg_url_or_skip(), schema=pg_schema_for(tmp), **options)


BACKENDS: dict[str, BackendFactory] = {"sqlite": sqlite_backend, "postgres": postgres_backend}


@pytest.fixture
def pg_url() -> str:
    """The test PostgreSQL server (fails under CI when missing, else skips)."""
    return pg_url_or_skip()


@pytest.fixture
def schema(pg_url: str) -> Iterator[str]:
    """A fresh PostgreSQL schema per test (several test runs may share one server), dropped after."""
    import psycopg
    from psycopg import sql

    name = f"pimail_t_{uuid.uuid4().hex[:16]}"
    yield name
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest) -> Iterator[BackendFactory]:
    """The factory of one backend; tests call it with ``tmp_path`` and options."""
    if request.param != "postgres":
        yield BACKENDS[request.param]
        return
    url = pg_url_or_skip()
    yield BACKENDS[request.param]
    drop_pg_schemas(url)


def run(coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run one coroutine on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def make_envelope(i: int, sent: int = 1_700_000_000, topic: bytes = b"\x00\x00\x00\x01",
                  size: int = 32, arrived: int | None = None) -> ArchivedEnvelope:
    """A real, canonically encoded envelope (distinct for distinct ``i``)."""
    data = (i.to_bytes(8, "big") * (size // 8 + 1))[:size]
    env = Envelope.build(sent + 60, 60, topic, data, i)
    return ArchivedEnvelope(env.sent, env.hash, env.topic, env.expiry, env.raw,
                            sent + 2 if arrived is None else arrived)


def topic_n(n: int) -> bytes:
    # spread across all four bytes so the blooms of different topics differ
    return bytes([(n * 37) & 0xFF, (n * 101 + 7) & 0xFF, (n * 53 + 3) & 0xFF, n & 0xFF])


def block_writer(a: SqliteArchive) -> tuple[threading.Event, threading.Event]:
    """Park the writer thread in a job until the returned ``release`` is set; ``parked`` is set once
    it sits there (so anything submitted meanwhile waits in the queue)."""
    parked, release = threading.Event(), threading.Event()

    def hold() -> None:
        parked.set()
        release.wait(60)

    with a._cond:
        a._jobs.append(Job(hold, asyncio.get_running_loop().create_future(), asyncio.get_running_loop()))
        a._cond.notify()
    return parked, release
