"""Real nodes on 127.0.0.1 for the mailserver tests: NodeServer + WhisperService + SQLite archive +
MailServer, a poster, and a history client — all with ephemeral ports and tmp data dirs."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pimail.archive import open_archive
from pimail.archive.base import Archive, ArchivedEnvelope
from pimail.config import ArchiveConfig, MailserverConfig, NodeConfig, WhisperConfig
from pimail.crypto.keys import Enode, NodeKey
from pimail.envelope.codec import Envelope
from pimail.envelope.payload import key_from_password, seal_symmetric
from pimail.mailserver.client import HistoryClient, HistoryOptions, HistorySummary, connect_trusted
from pimail.mailserver.response import Response, decode
from pimail.mailserver.server import MailServer, create_mailserver
from pimail.node.capability import PeerLike
from pimail.node.server import NodeServer
from pimail.whisper.service import WhisperService

MIN_POW = 0.000002
TOPIC_A = bytes.fromhex("aabbccdd")
TOPIC_B = bytes.fromhex("01020304")
MSG_PASSWORD = "pimail-test-topic"
_MSG_KEY: bytes | None = None


def msg_key() -> bytes:
    global _MSG_KEY
    if _MSG_KEY is None:
        _MSG_KEY = key_from_password(MSG_PASSWORD)
    return _MSG_KEY


def open_mailserver_config(**kw: Any) -> MailserverConfig:
    """Limits off unless a test turns them on."""
    kw.setdefault("min_request_interval_s", 0.0)
    kw.setdefault("bucket_rate_per_s", 0.0)
    return MailserverConfig(**kw)


def make_envelope(i: int, sent: int, ttl: int = 60, topic: bytes = TOPIC_A, text: str | None = None,
                  target_pow: float = MIN_POW, size: int = 0) -> Envelope:
    """A sealed, symmetric-encrypted envelope (payload ``text`` or "message <i>")."""
    payload = (text or f"message {i}").encode() + b"." * size
    data = seal_symmetric(msg_key(), payload, None)
    for nonce in range(100_000):
        env = Envelope.build(sent + ttl, ttl, topic, data, nonce)
        if env.pow_legacy() >= target_pow and env.pow_current() >= target_pow:
            return env
    raise AssertionError("could not seal")


def plain_envelopes(n: int, first_sent: int, topic: bytes = TOPIC_A) -> list[Envelope]:
    """Cheap envelopes for filling an archive directly (no encryption, no PoW search)."""
    return [Envelope.build(first_sent + i + 60, 60, topic, b"plain %d" % i, i) for i in range(n)]


def archived(env: Envelope) -> ArchivedEnvelope:
    return ArchivedEnvelope(env.sent, env.hash, env.topic, env.expiry, env.raw, int(time.time()))


@dataclass
class MailNode:
    key: NodeKey
    node: NodeServer
    whisper: WhisperService
    archive: Archive
    mailserver: MailServer
    data_dir: Path

    @property
    def enode(self) -> Enode:
        return Enode(self.key.public, "127.0.0.1", self.node.listen_port)

    async def fill(self, envs: Sequence[Envelope]) -> None:
        await self.archive.submit([archived(e) for e in envs])


@contextlib.asynccontextmanager
async def mail_node(
    data_dir: Path, config: MailserverConfig | None = None, **ms_kw: Any
) -> AsyncIterator[MailNode]:
    data_dir.mkdir(parents=True, exist_ok=True)
    key = NodeKey.generate()
    archive = ms_kw.pop("archive", None) or open_archive(ArchiveConfig(flush_interval_ms=10), data_dir, None)
    await archive.open()
    cfg = config or open_mailserver_config()
    ms = await create_mailserver(archive, cfg, private_key=key.private, **ms_kw)
    whisper = WhisperService(WhisperConfig(min_pow=MIN_POW), archive=archive, clock_trusted=lambda: True,
                             health=None, trusted=set())
    whisper.request_handler = ms
    node = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=data_dir), [whisper])
    await node.start()
    try:
        yield MailNode(key, node, whisper, archive, ms, data_dir)
    finally:
        await ms.close()
        await node.stop()
        await archive.close()


@dataclass
class Recorder:
    """A Whisper listener that records what one mailserver sends us."""

    packets: list[list[Any]] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def on_p2p_envelopes(self, peer: PeerLike, envs: Sequence[Any]) -> None:
        self.packets.append(list(envs))
        self.event.set()

    def on_request_complete(self, peer: PeerLike, payload: bytes) -> None:
        try:
            self.responses.append(decode(payload))
        except Exception:
            from pimail.mailserver.response import parse_body

            self.responses.append(parse_body(payload))
        self.event.set()

    async def wait_responses(self, n: int, timeout: float = 10.0) -> list[Response]:
        deadline = time.monotonic() + timeout
        while len(self.responses) < n:
            self.event.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(self.responses)} responses, wanted {n}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), left)
        return self.responses


@dataclass
class ClientNode:
    key: NodeKey
    node: NodeServer
    whisper: WhisperService
    recorder: Recorder

    async def connect(self, server: Enode) -> PeerLike:
        return await connect_trusted(self.node, self.whisper, server)

    async def history(self, server: Enode, **opts: Any) -> tuple[list[Envelope], HistorySummary]:
        summary = HistorySummary()
        client = HistoryClient(self.key, self.whisper, self.node)
        out = [r.envelope async for r in client.fetch(server, HistoryOptions(**opts), summary)]
        return out, summary


@contextlib.asynccontextmanager
async def client_node(data_dir: Path, key: NodeKey | None = None) -> AsyncIterator[ClientNode]:
    data_dir.mkdir(parents=True, exist_ok=True)
    key = key or NodeKey.generate()
    whisper = WhisperService(WhisperConfig(min_pow=MIN_POW), archive=None, clock_trusted=lambda: True,
                             health=None, trusted=set())
    rec = Recorder()
    whisper.listeners.append(rec)
    node = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=data_dir), [whisper])
    await node.start()
    try:
        yield ClientNode(key, node, whisper, rec)
    finally:
        await node.stop()
