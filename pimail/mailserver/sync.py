"""Mailserver-to-mailserver sync (codes 123/124) and the backfill that runs at start.

``SyncClient.sync(peer, lower, upper)`` asks a sibling mailserver for everything in a window and
archives it (the archive ignores duplicates). ``Heartbeat`` records "last up" in the data dir so
that, after downtime, ``Backfill.run()`` knows which window it missed and fetches it from every
configured sibling (``MailserverConfig.sync_from``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from pimail.archive.base import MAX_QUERY_LIMIT, Archive, ArchivedEnvelope
from pimail.config import MailserverConfig
from pimail.crypto.keys import Enode, KeyError_
from pimail.envelope.bloom import FULL_BLOOM
from pimail.envelope.codec import Envelope, EnvelopeError
from pimail.node.capability import PeerLike

from .server import CAPABILITY, CODE_SYNC_REQUEST, MailServer
from .syncwire import SyncMailRequest, SyncResponse

log = logging.getLogger(__name__)

HEARTBEAT_FILE = "mailserver.heartbeat"
HEARTBEAT_INTERVAL_S = 60.0
BACKFILL_MARGIN_S = 120  # reach back a little before "last up": envelopes arrive late
SYNC_RESPONSE_TIMEOUT_S = 30.0
SYNC_QUEUE_MAX = 64  # bundles buffered per sync session before the peer is dropped
SYNC_MAX_ROUNDS = 100_000


class SyncError(Exception):
    """A sibling refused or broke a sync."""


@dataclass
class SyncResult:
    received: int = 0
    new: int = 0
    rounds: int = 0


def to_archived(env: Envelope, arrived: int) -> ArchivedEnvelope:
    return ArchivedEnvelope(env.sent, env.hash, env.topic, env.expiry, env.raw, arrived)


class SyncClient:
    """Requests sync from peers through a ``MailServer`` (which routes their 124s back here)."""

    def __init__(self, mailserver: MailServer, archive: Archive) -> None:
        self.mailserver = mailserver
        self.archive = archive

    async def sync(self, peer: PeerLike, lower: int, upper: int, bloom: bytes = FULL_BLOOM,
                   limit: int = MAX_QUERY_LIMIT) -> SyncResult:
        if peer.node_id in self.mailserver.sync_sinks:
            raise SyncError("a sync with this peer is already running")
        queue: asyncio.Queue[SyncResponse] = asyncio.Queue(SYNC_QUEUE_MAX)
        overflow = SyncResponse([], b"", True, "the sibling sent more bundles than were asked for")

        def sink(p: PeerLike, resp: SyncResponse) -> None:
            try:
                queue.put_nowait(resp)
            except asyncio.QueueFull:
                # never drop a bundle silently: end the session with an error instead
                log.warning("sync from %s: too many unprocessed bundles", p.pubkey.hex()[:8])
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
                queue.put_nowait(overflow)

        self.mailserver.sync_sinks[peer.node_id] = sink
        result = SyncResult()
        cursor = b""
        try:
            while result.rounds < SYNC_MAX_ROUNDS:
                result.rounds += 1
                await peer.send_wait(CAPABILITY, CODE_SYNC_REQUEST,
                                     SyncMailRequest(lower, upper, bloom, limit, cursor).encode())
                while True:
                    try:
                        resp = await asyncio.wait_for(queue.get(), SYNC_RESPONSE_TIMEOUT_S)
                    except TimeoutError:
                        raise SyncError("the sibling stopped answering") from None
                    if resp.error:
                        raise SyncError(f"the sibling refused: {resp.error}")
                    if resp.envelopes:
                        await self._store(resp.envelopes, result)
                    if resp.final:
                        break
                if not resp.cursor:
                    return result
                cursor = resp.cursor
            return result
        finally:
            self.mailserver.sync_sinks.pop(peer.node_id, None)

    async def _store(self, raws: list[bytes], result: SyncResult) -> None:
        now = int(time.time())
        batch: list[ArchivedEnvelope] = []
        for raw in raws:
            try:
                env = Envelope.decode(raw)
            except EnvelopeError:
                log.warning("sync: skipping a malformed envelope from the sibling")
                continue
            result.received += 1
            if await self.archive.contains(env.sent, env.hash):
                continue
            batch.append(to_archived(env, now))
        if batch:
            await self.archive.submit(batch)
            result.new += len(batch)


class Heartbeat:
    """Writes the current time to ``<data_dir>/mailserver.heartbeat`` every ``interval_s``."""

    def __init__(self, data_dir: Path, interval_s: float = HEARTBEAT_INTERVAL_S) -> None:
        self.path = Path(data_dir) / HEARTBEAT_FILE
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    def last_up(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def beat(self, now: int | None = None) -> None:
        now = int(time.time()) if now is None else now
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(f"{now}\n")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not record the mailserver heartbeat in %s: %s", self.path, exc)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.beat()

    async def _run(self) -> None:
        while True:
            await asyncio.get_running_loop().run_in_executor(None, self.beat)
            await asyncio.sleep(self.interval_s)


def missed_window(last_up: int | None, now: int, max_s: int) -> tuple[int, int] | None:
    """The time range to backfill after downtime, or None on a first start."""
    if last_up is None:
        return None
    lower = max(last_up - BACKFILL_MARGIN_S, now - max_s, 0)
    return (lower, now) if lower < now else None


class Backfill:
    """At start: fetch the window missed while down from every sibling in ``sync_from``.

    "Last up" is read when the object is made, so the daemon can build it first, start the
    heartbeat, and run ``await backfill.run()`` in the background once the node is listening.
    """

    def __init__(self, node: object, client: SyncClient, config: MailserverConfig,
                 heartbeat: Heartbeat) -> None:
        self.node = node
        self.client = client
        self.config = config
        self.heartbeat = heartbeat
        self.last_up = heartbeat.last_up()

    async def run(self, now: int | None = None) -> SyncResult:
        now = int(time.time()) if now is None else now
        window = missed_window(self.last_up, now, self.config.backfill_max_s)
        total = SyncResult()
        if window is None or not self.config.sync_from:
            return total
        lower, upper = window
        for url in self.config.sync_from:
            try:
                enode = Enode.parse(url)
            except KeyError_ as exc:
                log.error("sync_from entry ignored: %s", exc)
                continue
            try:
                peer = await self.node.connect(enode)  # type: ignore[attr-defined]
                res = await self.client.sync(peer, lower, upper)
            except (SyncError, OSError, ConnectionError, TimeoutError) as exc:
                log.warning("backfill from %s failed: %s", enode.url()[:30], exc)
                continue
            log.info(
                "backfilled %d new envelopes (%d received) for %d…%d from %s",
                res.new, res.received, lower, upper, enode.url()[:30],
            )
            total.received += res.received
            total.new += res.new
            total.rounds += res.rounds
        return total
