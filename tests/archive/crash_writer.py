"""Writer process for the crash-safety test: ingest as fast as possible, report durability.

``python -m tests.archive.crash_writer DB FIRST`` writes envelopes ``make_envelope(FIRST + k)``
in batches and prints ``durable LOW HIGH COUNT`` (nonce range of one committed group) after each
commit, flushing stdout, until it is killed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

from pimail.archive.base import ArchivedEnvelope
from pimail.archive.sqlite import SqliteArchive
from pimail.envelope.codec import Envelope
from tests.archive.conftest import make_envelope

BATCH = 100
IN_FLIGHT = 8
BASE = 1_700_000_000


def crash_envelope(i: int) -> ArchivedEnvelope:
    return make_envelope(i, BASE + i // 500, size=24)


def report(envelopes: Sequence[ArchivedEnvelope]) -> None:
    nonces = [Envelope.decode(e.raw).nonce for e in envelopes]
    sys.stdout.write(f"durable {min(nonces)} {max(nonces)} {len(nonces)}\n")
    sys.stdout.flush()


async def main(path: Path, first: int) -> None:
    archive = SqliteArchive(path, flush_interval_ms=5, flush_max_envelopes=500, on_durable=report)
    await archive.open()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    pending: list[asyncio.Future[None]] = []
    i = first
    while True:
        pending.append(archive.submit([crash_envelope(i + k) for k in range(BATCH)]))
        i += BATCH
        if len(pending) >= IN_FLIGHT:
            await pending.pop(0)


if __name__ == "__main__":
    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
