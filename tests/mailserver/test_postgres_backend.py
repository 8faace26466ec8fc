"""The mailserver over the PostgreSQL fleet backend: paging, forms and sync behave as on SQLite.

Runs when ``PIMAIL_TEST_PG_URL`` is set (``make test`` and CI start a throwaway server).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from pimail.archive.base import Archive

from .nodes import TOPIC_B, client_node, mail_node, make_envelope, plain_envelopes

pytestmark = pytest.mark.timeout(120)
NOW = int(time.time())
PG_URL_ENV = "PIMAIL_TEST_PG_URL"


@pytest.fixture
def pg_archives() -> Iterator[list[Archive]]:
    """Factory list: each call to ``make`` gives a PostgresArchive in a fresh schema, dropped after."""
    url = os.environ.get(PG_URL_ENV, "").strip()
    if not url:
        pytest.skip(f"{PG_URL_ENV} is not set, so the PostgreSQL tests cannot run: start a server with "
                    f'`eval "$(scripts/start-test-postgres)"; export {PG_URL_ENV}` (make test does this)')
    from pimail.archive.postgres import PostgresArchive

    schemas = [f"pimail_ms_{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield [PostgresArchive(url, schema=s, flush_interval_ms=2) for s in schemas]
    import psycopg
    from psycopg import sql

    with psycopg.connect(url, autocommit=True) as conn:
        for s in schemas:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(s)))


def test_paging_forms_and_sync_on_postgres(tmp_path: Path, pg_archives: list[Archive]) -> None:
    async def main() -> None:
        a_arch, b_arch = pg_archives
        trusted: set[bytes] = set()
        allowed = lambda p: p.pubkey in trusted  # noqa: E731
        async with mail_node(tmp_path / "a", archive=a_arch, sync_allowed=allowed) as a, \
                client_node(tmp_path / "c") as client:
            envs = [make_envelope(i, NOW - 900, text=f"same second {i}") for i in range(8)]
            envs += [make_envelope(100 + i, NOW - 800 + i, topic=TOPIC_B) for i in range(20)]
            envs += plain_envelopes(30, NOW - 700)
            await a.fill(envs)
            for form in ("direct", "envelope", "legacy"):
                got, summary = await client.history(a.enode, form=form, lower=NOW - 1000, upper=NOW,
                                                    limit=6, request_pow=0.000002)
                hashes = [e.hash for e in got]
                assert len(hashes) == len(set(hashes)) == len(envs), form
                assert summary.completed and summary.duplicates == 0
            got_b, _ = await client.history(a.enode, lower=NOW - 1000, upper=NOW, limit=4, topics=(TOPIC_B,))
            assert len(got_b) == 20
            async with mail_node(tmp_path / "b", archive=b_arch) as b:
                from pimail.mailserver.sync import SyncClient

                trusted.add(b.key.public)
                peer = await b.node.connect(a.enode)
                res = await SyncClient(b.mailserver, b.archive).sync(peer, NOW - 1000, NOW)
                assert res.new == len(envs)
                assert all([await b.archive.contains(e.sent, e.hash) for e in envs])

    asyncio.run(main())
