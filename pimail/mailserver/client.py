"""The history client: ask a mailserver (pimail, status-go or go-ethereum) for stored envelopes.

It connects as an ordinary peer (``NodeServer.connect`` + ``WhisperService``), marks the server
trusted so its 125/127 are accepted, sends one request per page in the chosen form, follows
cursors until the server says "done", and deduplicates by envelope hash (LevelDB-backed servers
resend one boundary envelope per page). go-ethereum never sends 125: a request is then considered
done after ``quiet_s`` without traffic. status-go's PostgreSQL backend pages newest-first; the
client does not care about order.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

from pimail.archive.base import MAX_QUERY_LIMIT
from pimail.config import WhisperConfig
from pimail.crypto.keys import Enode, NodeKey
from pimail.envelope.bloom import FULL_BLOOM, topics_to_bloom
from pimail.envelope.codec import Envelope, EnvelopeError
from pimail.envelope.payload import PayloadError, key_from_password, open_data, seal_symmetric
from pimail.envelope.pow import PowFormula
from pimail.node.capability import PeerLike

from .request import LegacyRequestPayload, MessagesRequest, MessagesRequestPayload
from .response import RequestComplete, RequestFailed, Response, ResponseError, decode, parse_body

log = logging.getLogger(__name__)

FORMS = ("direct", "envelope", "legacy")
REQUEST_TTL_S = 50  # status-go DefaultTTL for request envelopes
REQUEST_TOPIC = b"\x00\x00\x00\x00"  # status-go seals mail requests on topic 00000000
DEFAULT_REQUEST_POW = {  # per form: what the servers that send each form's clients expect
    "envelope": 0.002,  # status-go (current formula); pimail requires 0.000002 by default
    "legacy": 0.2,  # go-ethereum wnode -mspow default (legacy formula)
}
DEFAULT_QUIET_S = 3.0  # a request with no 125 is done after this much silence (go-ethereum)
DEFAULT_RESPONSE_TIMEOUT_S = 30.0
RATE_LIMIT_RETRY_S = 1.1  # pimail/status-go default minimum interval is 1 s
MAX_RATE_LIMIT_RETRIES = 30
MAX_PAGES = 100_000  # a server that hands out cursors forever cannot keep us here forever
MAX_SEAL_NONCES = 5_000_000


class HistoryError(Exception):
    """The mailserver refused or failed a request (its ERROR= text), or the exchange broke."""


@dataclass(frozen=True)
class HistoryOptions:
    form: str = "direct"
    password: str = "status-offline-inbox"
    lower: int = 0
    upper: int = 0  # 0 ⇒ now
    topics: tuple[bytes, ...] = ()
    limit: int = MAX_QUERY_LIMIT
    request_pow: float | None = None  # None ⇒ DEFAULT_REQUEST_POW for the form
    quiet_s: float = DEFAULT_QUIET_S
    response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S


@dataclass(frozen=True)
class ReceivedEnvelope:
    envelope: Envelope
    page: int


@dataclass
class HistorySummary:
    envelopes: int = 0
    duplicates: int = 0
    pages: int = 0
    rate_limited: int = 0
    completed: bool = False  # the server sent a final 125 (False ⇒ ended after a quiet period)
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)


def seal_request_envelope(payload: bytes, sym_key: bytes, signing_key: bytes, now: int,
                          target_pow: float, ttl: int = REQUEST_TTL_S,
                          formula: PowFormula = PowFormula.BOTH) -> Envelope:
    """Encrypt, sign and seal a request so that it meets ``target_pow`` under ``formula``.

    Blocking (PoW): run it in an executor. ``BOTH`` costs the product of the two searches; the
    client seals legacy requests for go-ethereum's formula and RLP ones for status-go's.
    """
    data = seal_symmetric(sym_key, payload, signing_key)
    expiry = now + ttl
    best: Envelope | None = None
    for nonce in range(MAX_SEAL_NONCES):
        env = Envelope.build(expiry, ttl, REQUEST_TOPIC, data, nonce)
        if env.meets(target_pow, formula):
            return env
        if best is None:
            best = env
    assert best is not None
    return best


def client_whisper_config() -> WhisperConfig:
    """Whisper settings for a history client: it relays nothing, so it takes whatever its mailserver
    sends. go-ethereum 1.8 pushes every envelope in its pool to a new peer in ONE Messages packet,
    megabytes on a busy node, which a relay's 1 MiB limit (rightly) answers with a disconnect."""
    return WhisperConfig(min_pow=0.0, max_message_size=(1 << 24) - 1, rate_limit_packets_per_s=1e6)


COLLECTOR_STALL_S = 10.0  # a consumer that does not take a packet for this long has stopped


class _Collector:
    """The Whisper listener: collects 127/125 from the one mailserver we talk to."""

    def __init__(self, server_node_id: bytes, max_queue: int = 4096,
                 stall_s: float = COLLECTOR_STALL_S) -> None:
        self.server_node_id = server_node_id
        self.queue: asyncio.Queue[tuple[str, object]] = asyncio.Queue(max_queue)
        self.stall_s = stall_s
        self.overflowed = False

    async def _put(self, kind: str, item: object) -> None:
        # A full queue holds the mailserver's connection (WhisperService awaits us, the transport
        # stops reading, TCP pushes back): go-ethereum sends history as fast as it can, one envelope
        # per packet. Only a consumer that stopped for good makes the fetch fail — never silently.
        try:
            self.queue.put_nowait((kind, item))  # the usual case: no timer, no task
            return
        except asyncio.QueueFull:
            pass
        try:
            await asyncio.wait_for(self.queue.put((kind, item)), self.stall_s)
        except TimeoutError:
            self.overflowed = True

    async def on_p2p_envelopes(self, peer: PeerLike, envs: Sequence[object]) -> None:
        if peer.node_id != self.server_node_id:
            return
        await self._put("envelopes", list(envs))

    async def on_request_complete(self, peer: PeerLike, payload: bytes) -> None:
        if peer.node_id != self.server_node_id:
            return
        try:
            resp = decode_request_complete(payload)
        except ResponseError as exc:
            await self._put("bad", str(exc))
            return
        await self._put("complete", resp)


def decode_request_complete(payload: bytes) -> Response:
    """Accept either the 125 packet payload (``rlp(body)``) or the already-unwrapped body."""
    try:
        return decode(payload)
    except ResponseError:
        return parse_body(payload)


def _as_envelope(item: object) -> Envelope | None:
    if isinstance(item, Envelope):
        return item
    if isinstance(item, bytes):
        try:
            return Envelope.decode(item)
        except EnvelopeError:
            return None
    return None


class HistoryClient:
    """Pages through a mailserver's history over an already-running node and Whisper service."""

    def __init__(self, key: NodeKey, whisper: object, node: object) -> None:
        self.key = key
        self.whisper = whisper
        self.node = node

    async def fetch(self, mailserver: Enode, opts: HistoryOptions,
                    summary: HistorySummary | None = None) -> AsyncIterator[ReceivedEnvelope]:
        """Yield every envelope the mailserver returns, once each."""
        if opts.form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}")
        summary = summary if summary is not None else HistorySummary()
        started = time.monotonic()
        loop = asyncio.get_running_loop()
        sym_key = b""
        if opts.form != "direct":
            sym_key = await loop.run_in_executor(None, key_from_password, opts.password)
        peer = await connect_trusted(self.node, self.whisper, mailserver)
        collector = _Collector(peer.node_id)
        listeners = self.whisper.listeners  # type: ignore[attr-defined]
        listeners.append(collector)
        seen: set[bytes] = set()
        try:
            cursor: bytes | None = None
            rate_retries = 0
            upper = opts.upper or int(time.time())
            while summary.pages < MAX_PAGES:
                rid, payload = await self._build(opts, upper, cursor, sym_key, loop)
                await peer.send_wait("shh", 126, payload)
                resp: Response | None = None
                got_any = False
                while True:
                    got = await _next_item(collector, peer,
                                           opts.quiet_s if got_any else opts.response_timeout_s)
                    if got is None:
                        break  # silence: go-ethereum is done (it never sends 125)
                    kind, item = got
                    got_any = True
                    if kind == "envelopes":
                        assert isinstance(item, list)
                        for raw in item:
                            env = _as_envelope(raw)
                            if env is None:
                                continue
                            if env.hash in seen:
                                summary.duplicates += 1
                                continue
                            seen.add(env.hash)
                            summary.envelopes += 1
                            yield ReceivedEnvelope(env, summary.pages)
                    elif kind == "complete":
                        assert isinstance(item, (RequestComplete, RequestFailed))
                        if item.request_id == rid:
                            resp = item
                            break
                    elif kind == "bad":
                        raise HistoryError(f"mailserver sent a malformed request-complete: {item}")
                summary.pages += 1
                if resp is None:
                    # go-ethereum: no 125 at all. Silence means done.
                    return
                if isinstance(resp, RequestFailed):
                    if resp.message == "rate limit exceeded" and rate_retries < MAX_RATE_LIMIT_RETRIES:
                        rate_retries += 1
                        summary.rate_limited += 1
                        summary.pages -= 1
                        await asyncio.sleep(RATE_LIMIT_RETRY_S)
                        continue
                    summary.errors.append(resp.message)
                    raise HistoryError(f"mailserver refused the request: {resp.message}")
                rate_retries = 0
                if resp.cursor is None:
                    summary.completed = True
                    return
                cursor = resp.cursor
        finally:
            summary.seconds = time.monotonic() - started
            if collector in listeners:
                listeners.remove(collector)

    async def _build(self, opts: HistoryOptions, upper: int, cursor: bytes | None, sym_key: bytes,
                     loop: asyncio.AbstractEventLoop) -> tuple[bytes, bytes]:
        bloom = topics_to_bloom(opts.topics) if opts.topics else FULL_BLOOM
        if opts.form == "direct":
            req = MessagesRequest(os.urandom(16).hex().encode(), opts.lower, upper, opts.limit,
                                  cursor or b"", bloom)
            return req.request_id, req.encode()
        if opts.form == "envelope":
            inner = MessagesRequestPayload(opts.lower, upper, bloom, opts.limit, cursor or b"", True,
                                           opts.topics, 7).encode()
            formula = PowFormula.CURRENT
        else:
            inner = LegacyRequestPayload(opts.lower, upper, bloom, opts.limit, cursor).encode()
            formula = PowFormula.LEGACY
        target = DEFAULT_REQUEST_POW[opts.form] if opts.request_pow is None else opts.request_pow
        env = await loop.run_in_executor(
            None, seal_request_envelope, inner, sym_key, self.key.private, int(time.time()),
            target, REQUEST_TTL_S, formula,
        )
        return env.hash, env.raw


CLOSED_POLL_S = 0.25  # how often a waiting client notices that the mailserver hung up


async def _next_item(collector: _Collector, peer: PeerLike, timeout: float) -> tuple[str, object] | None:
    """The next packet from the mailserver, None after ``timeout`` of silence.

    Raises HistoryError if the mailserver disconnects (e.g. it did not understand the request form).
    """
    if not collector.queue.empty() and not collector.overflowed:
        return collector.queue.get_nowait()  # the usual case while a delivery streams in
    deadline = time.monotonic() + timeout
    while True:
        if collector.overflowed:
            raise HistoryError("the history client stopped taking packets from the mailserver; "
                               "some were lost")
        if collector.queue.empty() and peer.closed:
            raise HistoryError("the mailserver closed the connection (does it understand this request "
                               "form? go-ethereum needs --form legacy)")
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        try:
            return await asyncio.wait_for(collector.queue.get(), min(left, CLOSED_POLL_S))
        except TimeoutError:
            continue


async def connect_trusted(node: object, whisper: object, mailserver: Enode) -> PeerLike:
    """Dial the mailserver, mark it trusted and wait until the Whisper handshake is done."""
    whisper.mark_trusted(mailserver.node_id)  # type: ignore[attr-defined]
    peer: PeerLike = await node.connect(mailserver)  # type: ignore[attr-defined]
    await wait_whisper_ready(whisper, peer)
    return peer


async def wait_whisper_ready(whisper: object, peer: PeerLike, timeout_s: float = 10.0) -> None:
    """Wait for the peer's shh Status, so our first request does not precede the handshake."""
    await whisper.wait_status(peer, timeout_s)  # type: ignore[attr-defined]


def open_with_password(env: Envelope, sym_key: bytes) -> tuple[bytes, bytes | None] | None:
    """(payload, signer) if ``sym_key`` opens the envelope, else None."""
    try:
        m = open_data(env.data, sym_key=sym_key)
    except PayloadError:
        return None
    return m.payload, m.signer
