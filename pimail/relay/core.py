"""``RelayCore``: the one envelope core behind every protocol adapter (shh/6, waku/0, waku/1).

It owns the envelope pool, judges received envelopes, submits the accepted ones to the archive
once, sends confirmations when the archive made them durable, and runs the forwarding scheduler
that feeds every peer — of any protocol — the pooled envelopes meeting *that peer's*
requirements. An adapter registers each of its peers with a ``Link`` (how to put a Messages
packet or a confirmation on the wire in its protocol) and fills the peer's requirements in as data
(``RelayPeer``: PoW and the formula it is judged by, bloom or topic interest, light node, the
peer's advertised rate limits). This is what makes the bridge: an envelope accepted from a shh
peer is forwarded to a waku peer exactly as to another shh peer, and vice versa.

This is I/O glue (timers, the archive future); decoding lives in the adapters' codecs and judging
in ``pimail.relay.validation``. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pimail.archive.base import Archive, ArchivedEnvelope
from pimail.config import WhisperConfig
from pimail.crypto.keccak import keccak256
from pimail.envelope.bloom import FULL_BLOOM, is_full
from pimail.envelope.codec import Envelope, EnvelopeError, decode_envelope_list, encode_envelope_list
from pimail.envelope.pow import PowFormula, pow_meets
from pimail.health import HealthModel, Severity
from pimail.node.capability import DisconnectReason, PeerLike, ProtocolError
from pimail.relay.confirmations import EnvelopeErrorReport, ErrorCodes, MessageResponse, encode_batch_ack
from pimail.relay.limits import TokenBucket
from pimail.relay.pool import EnvelopePool, KnownSet, PacketRateLimiter
from pimail.relay.validation import Outcome, Rules, judge

log = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 10.0  # a peer that never sends Status is useless
POW_TOLERANCE_S = 10.0  # geth keeps the old requirement this long after a change
NO_PEERS_GRACE_S = 120.0  # report "no peers" only after this long without any
PACKET_HEADROOM = 1024  # keep forwarded packets this far under the size limit
FORWARD_SLICE_BYTES = 256 * 1024  # packet bytes built per loop turn while forwarding
FORWARD_EXAMINE_COST = 64  # an examined envelope counts as this many bytes of work
MAX_PENDING_CONFIRMATIONS = 64  # per peer; beyond this the peer is flooding us
HEALTH_NO_PEERS = "whisper.no_peers"
FORWARD_PREFERENCE = {"waku": 2, "shh": 1}  # which protocol feeds a connection that shares both
HEALTH_ARCHIVE = "whisper.archive"


class Link(Protocol):
    """How the core reaches one peer in the peer's protocol (implemented by each adapter)."""

    @property
    def protocol(self) -> str:
        """``"shh/6"``, ``"waku/1"`` …"""

    @property
    def capability(self) -> str:
        """The devp2p capability name: ``"shh"``, ``"waku"``."""

    @property
    def error_codes(self) -> ErrorCodes: ...

    def send_messages(self, payload: bytes) -> bool:
        """Queue a Messages packet (an RLP list of envelopes); False if the write buffer is full."""

    def backlog(self) -> int:
        """Bytes queued to the peer and not yet taken by its socket."""

    def send_confirmation(self, response: bytes, ack: bytes) -> None:
        """Queue Message Response (12) then Batch Ack (11), already encoded."""

    def announce_pow(self, value: float) -> None:
        """Tell the peer our new PoW requirement (shh code 2, waku Status Update)."""


@dataclass
class RelayPeer:
    """One connected peer as the core sees it; the adapter fills in the requirements."""

    peer: PeerLike
    link: Link
    started: float
    known: KnownSet
    outbox: collections.deque[bytes]
    limiter: PacketRateLimiter  # ours, on what it sends us (packets)
    byte_limiter: TokenBucket | None = None  # ours, on what it sends us (bytes)
    status: Any = None  # the adapter's decoded Status; None until it arrived
    status_event: asyncio.Event = field(default_factory=asyncio.Event)
    # -- requirements (what the peer wants from us) --
    pow_requirement: float = 0.0
    formula: PowFormula = PowFormula.BOTH  # how the peer judges PoW
    bloom: bytes = FULL_BLOOM
    topic_interest: frozenset[bytes] | None = None  # overrides the bloom when set (waku)
    light: bool = False
    forward: bool = True  # False: another protocol of the same connection carries the relay stream
    send_packets: TokenBucket | None = None  # the peer's advertised limits, honoured when we send
    send_bytes: TokenBucket | None = None
    # -- what judging envelopes *from* this peer uses --
    judge_formula: PowFormula | None = None  # None: the node's configured formula
    confirm: bool = True  # send confirmations to this peer
    outbox_dropped: int = 0
    pending_confirmations: int = 0

    @property
    def kind(self) -> str:
        if self.link.protocol.startswith("waku"):
            return "waku"
        return {PowFormula.LEGACY: "geth-1.8", PowFormula.CURRENT: "status-go"}.get(self.formula, "unknown")

    @property
    def protocol(self) -> str:
        return self.link.protocol

    def wants(self, env: Envelope) -> bool:
        """Topic interest, else bloom (PoW is checked by the forwarder, once per packet)."""
        if self.topic_interest is not None:
            return env.topic in self.topic_interest
        if is_full(self.bloom):
            return True
        wanted = int.from_bytes(self.bloom, "big")
        return wanted | int.from_bytes(env.bloom, "big") == wanted


class RequestHandler(Protocol):
    """The mailserver: history requests of any protocol, answered on the protocol they came in on."""

    async def handle(self, peer: PeerLike, code: int, payload: bytes, *, capability: str = ...,
                     lists_only: bool = ...) -> None: ...


class RelayCore:
    """Pool, validation, archive hook, confirmations and forwarding for every protocol adapter."""

    def __init__(
        self,
        config: WhisperConfig,
        *,
        archive: Archive | None,
        clock_trusted: Callable[[], bool],
        health: HealthModel | None = None,
        trusted: Iterable[bytes] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self.archive = archive
        self.clock_trusted = clock_trusted
        self.health = health
        self.trusted: set[bytes] = set(trusted)
        self.request_handler: RequestHandler | None = None
        self.listeners: list[Any] = []
        self.forward_slice_bytes = FORWARD_SLICE_BYTES
        self._clock = clock
        self.pool = EnvelopePool(config.pool_max_bytes)
        #: (connection, capability name) → relay peer: a connection sharing shh *and* waku is two
        self.peers: dict[tuple[PeerLike, str], RelayPeer] = {}
        self.min_pow = config.min_pow
        self.formula = PowFormula(config.pow_formula)
        self._pow_tolerance: float | None = None
        self._pow_tolerance_until = 0.0
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._last_peer_seen = time.monotonic()
        self.no_peers_grace_s = NO_PEERS_GRACE_S
        self.status_timeout_s = STATUS_TIMEOUT_S
        self.counters: dict[str, int] = collections.defaultdict(int)

    # -- settings ---------------------------------------------------------------------------------
    @property
    def config(self) -> WhisperConfig:
        return self._config

    @config.setter
    def config(self, new: WhisperConfig) -> None:
        """Apply reloaded relay settings (SIGHUP): PoW (announced to peers), formula, pool cap."""
        old, self._config = self._config, new
        if new.min_pow != old.min_pow:
            self.set_min_pow(new.min_pow)
        self.formula = PowFormula(new.pow_formula)
        self.pool.max_bytes = new.pool_max_bytes
        log.info("relay settings reloaded (min PoW %g, %s formula)", self.min_pow, self.formula.value)

    def set_min_pow(self, value: float) -> None:
        """Change our requirement, tell every peer in its protocol, honour the old one for 10 s."""
        if value < 0 or value != value:
            raise ValueError("minimum PoW must be a non-negative number")
        self._pow_tolerance = self.min_pow
        self._pow_tolerance_until = time.monotonic() + POW_TOLERANCE_S
        self.min_pow = value
        for rp in list(self.peers.values()):
            rp.link.announce_pow(value)

    def mark_trusted(self, node_id: bytes) -> None:
        """Accept 125/127 from this node (keccak of its public key), whatever its protocol."""
        self.trusted.add(node_id)

    def is_trusted(self, peer: PeerLike, what: str) -> bool:
        if peer.node_id in self.trusted:
            return True
        self.counters["untrusted_p2p_ignored"] += 1
        log.debug("ignored %s from untrusted peer %s", what, short(peer))
        return False

    # -- peers ------------------------------------------------------------------------------------
    def add_peer(self, peer: PeerLike, link: Link, *, packets_per_s: float, tolerance: int,
                 bytes_per_s: float = 0.0) -> RelayPeer:
        """Register a peer that shares a protocol; it is owed every pooled envelope it wants."""
        self.ensure_tasks()
        cfg = self.config
        now_m = time.monotonic()
        byte_limiter = None
        if bytes_per_s > 0:
            # the burst allowance is one full packet over the sustained rate
            byte_limiter = TokenBucket(bytes_per_s, bytes_per_s + cfg.max_message_size, now_m)
        rp = RelayPeer(
            peer=peer,
            link=link,
            started=now_m,
            known=KnownSet(cfg.known_per_peer),
            outbox=collections.deque(maxlen=cfg.known_per_peer),
            limiter=PacketRateLimiter(packets_per_s, tolerance, now_m),
            byte_limiter=byte_limiter,
        )
        rp.outbox.extend(env.hash for env in self.pool)
        self.peers[(peer, link.capability)] = rp
        self._pick_forwarding_channel(peer)
        self._last_peer_seen = now_m
        if self.health is not None:
            self.health.clear(HEALTH_NO_PEERS)
        return rp

    def _pick_forwarding_channel(self, peer: PeerLike) -> None:
        """One connection sharing several protocols is fed through one of them (waku first): the
        other still receives and confirms, but forwarding twice would only double the traffic."""
        channels = [rp for (p, _), rp in self.peers.items() if p is peer]
        if len(channels) < 2:
            return
        best = max(channels, key=lambda rp: FORWARD_PREFERENCE.get(rp.link.capability, 0))
        for rp in channels:
            rp.forward = rp is best
            if not rp.forward:
                rp.outbox.clear()

    def get(self, peer: PeerLike, capability: str) -> RelayPeer | None:
        return self.peers.get((peer, capability))

    def remove_peer(self, peer: PeerLike, capability: str) -> RelayPeer | None:
        rp = self.peers.pop((peer, capability), None)
        if rp is not None and rp.forward:
            # another protocol of the same connection takes the stream over (rare: a connection
            # usually ends as a whole); what the old channel sent may come once more, deduplicated
            # by the remote by hash
            for (p, _), other in self.peers.items():
                if p is peer and not other.forward:
                    other.forward = True
                    other.outbox.extend(env.hash for env in self.pool)
                    break
        if not self.peers:
            self._last_peer_seen = time.monotonic()
        return rp

    def peers_of(self, capability: str) -> dict[PeerLike, RelayPeer]:
        """Relay peers of one capability, by connection."""
        return {p: rp for (p, cap), rp in self.peers.items() if cap == capability}

    def peer_counts(self) -> dict[str, int]:
        """Connections per protocol (``shh/6``, ``waku/1`` …) for status, page and metrics."""
        counts: dict[str, int] = {}
        for rp in self.peers.values():
            counts[rp.link.protocol] = counts.get(rp.link.protocol, 0) + 1
        return counts

    def status_received(self, rp: RelayPeer, status: object) -> None:
        rp.status = status
        rp.status_event.set()

    async def wait_status(self, peer: PeerLike, capability: str, timeout: float) -> RelayPeer:
        """Wait for the peer's Status in ``capability`` (client tools)."""
        async def wait() -> RelayPeer:
            # connect() returns after the Hellos; peer_started may not have run yet.
            while (rp := self.peers.get((peer, capability))) is None:
                if peer.closed:
                    raise ConnectionError("peer disconnected before the sub-protocol handshake")
                await asyncio.sleep(0.01)
            await rp.status_event.wait()
            return rp

        return await asyncio.wait_for(wait(), timeout)

    # -- local envelopes --------------------------------------------------------------------------
    def post(self, envelope: Envelope) -> bool:
        """Inject a local envelope: pooled and relayed (not archived). False if known or expired."""
        self.ensure_tasks()
        if self.clock_trusted() and envelope.expiry < int(self._clock()):
            return False
        if not self._insert(envelope, source=None):
            return False
        self.notify("on_envelope", envelope)
        return True

    # -- received envelopes -----------------------------------------------------------------------
    def rules(self, formula: PowFormula | None = None) -> Rules:
        tolerance = self._pow_tolerance if time.monotonic() < self._pow_tolerance_until else None
        return Rules(
            min_pow=self.min_pow,
            formula=formula or self.formula,
            max_size=self.config.max_message_size,
            future_allowance_s=self.config.future_tolerance_s,
            pow_tolerance=tolerance,
        )

    def receive_messages(self, rp: RelayPeer, payload: bytes) -> None:
        """A Messages packet (code 1 in shh and waku) from ``rp``: judge, pool, archive, confirm.

        Raises ``ProtocolError`` (disconnect) for floods, oversized packets, undecodable lists and
        invalid envelopes other than time errors, as status-go does.
        """
        peer = rp.peer
        now_m = time.monotonic()
        if not rp.limiter.allow(now_m):
            self.counters["rate_limited_peers"] += 1
            raise ProtocolError(
                f"peer floods Messages packets (over {rp.limiter.rate:g}/s "
                f"with tolerance {rp.limiter.capacity - rp.limiter.rate:g})"
            )
        if rp.byte_limiter is not None and not rp.byte_limiter.take(len(payload), now_m):
            self.counters["rate_limited_peers"] += 1
            raise ProtocolError(f"peer floods bytes (over {rp.byte_limiter.rate:g} B/s)")
        if len(payload) > self.config.max_message_size:
            self.counters["oversized_packets"] += 1
            raise ProtocolError(f"Messages packet of {len(payload)} bytes exceeds the size limit")
        try:
            envelopes = decode_envelope_list(payload)
        except EnvelopeError as exc:
            raise ProtocolError(f"bad Messages packet: {exc}") from exc
        trusted_clock = self.clock_trusted()
        now = int(self._clock()) if trusted_clock else None
        received_at = now if now is not None else int(self._clock())
        rules = self.rules(rp.judge_formula)
        codes = rp.link.error_codes
        errors: list[EnvelopeErrorReport] = []
        to_archive: list[ArchivedEnvelope] = []
        trouble: str | None = None
        archiving = trusted_clock and self.archive is not None
        # per packet, not per envelope: the listeners' hooks, the counters, the peers' outboxes
        on_envelope = self._hooks("on_envelope")
        pool, pool_add = self.pool, self.pool.add
        hashes: list[bytes] = []
        fresh: list[bytes] = []
        duplicates = accepted = expired = rejected = time_errors = evicted = 0
        for env in envelopes:
            h = env.hash
            hashes.append(h)
            if h in pool:
                duplicates += 1
                continue
            verdict = judge(env, rules, now)
            if verdict.outcome is Outcome.ACCEPT:
                # The pool is only the relay cache: when it is full it may evict this very envelope
                # at once (earliest expiry goes first), but a valid envelope is still accepted,
                # archived and confirmed. Only the archive decides what is durable.
                is_new, gone = pool_add(env)
                if gone:
                    evicted += len(gone)
                if is_new:
                    fresh.append(h)
                accepted += 1
                for fn in on_envelope:
                    self._call(fn, "on_envelope", env)
                if archiving:
                    to_archive.append(
                        ArchivedEnvelope(env.sent, h, env.topic, env.expiry, env.raw, received_at))
            elif verdict.outcome is Outcome.DROP:
                expired += 1
            else:
                rejected += 1
                errors.append(EnvelopeErrorReport(h, verdict.code(codes), verdict.reason))
                if verdict.outcome is Outcome.ERROR and trouble is None:
                    trouble = verdict.reason
                else:  # time errors: usually a peer with a wrong clock; counted, not shouted
                    time_errors += 1
                    log.debug("envelope %s from %s: %s", h.hex()[:12], short(peer), verdict.reason)
        rp.known.add_many(hashes)
        self._queue_out(fresh, source=rp)
        counters = self.counters
        counters["envelopes_in"] += len(envelopes)
        for name, n in (("duplicates", duplicates), ("accepted", accepted), ("expired_dropped", expired),
                        ("rejected", rejected), ("time_errors", time_errors), ("pool_evicted", evicted)):
            if n:
                counters[name] += n
        if trouble is not None:
            raise ProtocolError(f"invalid envelope: {trouble}")
        if rp.confirm:
            self._confirm(rp, keccak256(payload), errors, to_archive)
        elif to_archive:
            self._archive(to_archive)

    def _confirm(self, rp: RelayPeer, batch_hash: bytes, errors: list[EnvelopeErrorReport],
                 to_archive: list[ArchivedEnvelope]) -> None:
        response = MessageResponse(batch_hash, tuple(errors)).encode()
        ack = encode_batch_ack(batch_hash)
        if not to_archive:
            rp.link.send_confirmation(response, ack)
            return
        if rp.pending_confirmations >= MAX_PENDING_CONFIRMATIONS:
            raise ProtocolError("peer has too many unconfirmed batches pending archive writes")
        fut = self._archive(to_archive)
        rp.pending_confirmations += 1

        def confirm_when_durable(f: asyncio.Future[None]) -> None:
            # a done callback, not a task per packet: the loop runs it once the commit is in
            rp.pending_confirmations -= 1
            if f.cancelled():
                return
            exc = f.exception()
            if exc is not None:
                log.error("archive write failed, batch %s not confirmed: %s", batch_hash.hex()[:12], exc)
                return
            if not rp.peer.closed:
                rp.link.send_confirmation(response, ack)

        fut.add_done_callback(confirm_when_durable)

    def _archive(self, envs: list[ArchivedEnvelope]) -> asyncio.Future[None]:
        assert self.archive is not None
        try:
            fut = self.archive.submit(envs)
        except Exception as exc:  # a backend that refuses synchronously (closed, disk gone)
            fut = asyncio.get_running_loop().create_future()
            fut.set_exception(exc)
        self.counters["archived_submitted"] += len(envs)

        def done(f: asyncio.Future[None]) -> None:
            if f.cancelled():
                return
            exc = f.exception()
            if self.health is None:
                return
            if exc is not None:
                self.health.report(HEALTH_ARCHIVE, Severity.DEGRADED,
                                   f"archive write failed; confirmations withheld ({exc})")
            else:
                self.health.clear(HEALTH_ARCHIVE)

        fut.add_done_callback(done)
        return fut

    # -- pool and forwarding ----------------------------------------------------------------------
    def _insert(self, env: Envelope, source: RelayPeer | None) -> bool:
        is_new, evicted = self.pool.add(env)
        if evicted:
            self.counters["pool_evicted"] += len(evicted)
        if not is_new:
            return False
        self._queue_out([env.hash], source)
        return True

    def _queue_out(self, hashes: list[bytes], source: RelayPeer | None) -> None:
        """New pooled envelopes are owed to every forwarding peer but their source."""
        if not hashes:
            return
        for rp in self.peers.values():
            if rp is source or not rp.forward:  # a muted channel keeps no outbox (memory)
                continue
            outbox = rp.outbox
            if outbox.maxlen is not None:  # a full outbox forgets its oldest: counted
                over = len(outbox) + len(hashes) - outbox.maxlen
                if over > 0:
                    rp.outbox_dropped += over
            outbox.extend(hashes)

    def forward_once(self) -> int:
        """One transmission cycle: send each peer its pending envelopes. Returns envelopes sent."""
        return sum(self.forward_slices(0))

    def forward_slices(self, slice_bytes: int) -> Iterator[int]:
        """One transmission cycle as a generator: yields envelopes sent after each slice of work.

        A slice ends once about ``slice_bytes`` of packets were built (examined envelopes count
        too), so a cycle that feeds 200 peers a megabyte each never holds the loop for long;
        ``slice_bytes <= 0`` means one slice. Each peer gets at most one packet per cycle; a peer
        that left between slices is skipped.
        """
        sent = 0
        work = 0
        limit = max(1024, self.config.max_message_size - PACKET_HEADROOM)
        want_hash = any(getattr(x, "on_sent", None) is not None for x in self.listeners)
        now_m = time.monotonic()
        for rp in list(self.peers.values()):
            if self.peers.get((rp.peer, rp.link.capability)) is not rp:
                continue  # stopped while an earlier slice yielded
            n, cost = self._forward_peer(rp, limit, want_hash, now_m)
            sent += n
            work += cost
            if slice_bytes > 0 and work >= slice_bytes:
                yield sent
                sent = work = 0
        yield sent

    def _forward_peer(self, rp: RelayPeer, limit: int, want_hash: bool, now_m: float) -> tuple[int, int]:
        """At most one packet of ``rp``'s pending envelopes; (envelopes sent, work done)."""
        if rp.status is None or rp.peer.closed or not rp.outbox or not rp.forward:
            return 0, 0
        if rp.send_packets is not None and not rp.send_packets.available(1, now_m):
            return 0, 0  # the peer's packet limit: wait for the next cycle rather than be dropped
        if rp.send_bytes is not None:
            limit = min(limit, int(rp.send_bytes.level(now_m)))
            if limit <= 0:
                return 0, 0
        room = self.config.relay_backlog_bytes - rp.link.backlog()
        if room <= 0:
            return 0, 0  # the last packets are still in its buffer: no more memory for this peer
        limit = min(limit, room)
        batch: list[bytes] = []
        hashes: list[bytes] = []
        size = 0
        examined = 0
        outbox = rp.outbox
        known = rp.known.members
        pool_get = self.pool.getter
        # the peer's filters, read once per packet instead of once per envelope
        interest = rp.topic_interest
        every_topic = interest is None and is_full(rp.bloom)
        if every_topic and rp.light:
            return 0, 0  # a light node relays nothing: no forwarding duty, only what it asked for
        too_big = rp.send_bytes.capacity if rp.send_bytes is not None else None
        wanted_bits = int.from_bytes(rp.bloom, "big")
        requirement, formula = rp.pow_requirement, rp.formula
        if every_topic and requirement <= 0 and too_big is None:
            # the usual relay peer (a full node asking no PoW, no byte limit): only what it knows
            # already and the packet size decide
            while outbox:
                h = outbox.popleft()
                examined += 1
                env = pool_get(h)
                if env is None or h in known:
                    continue
                raw = env.raw
                if batch and size + len(raw) > limit:
                    outbox.appendleft(h)
                    break
                batch.append(raw)
                hashes.append(h)
                size += len(raw)
        else:
            while outbox:
                h = outbox.popleft()
                examined += 1
                env = pool_get(h)
                if env is None or h in known:
                    continue
                if interest is not None:
                    if env.topic not in interest:
                        continue
                elif not every_topic:  # bloom_matches: every bit of the envelope's bloom is wanted
                    bits = int.from_bytes(env.bloom, "big")
                    if wanted_bits | bits != wanted_bits:
                        continue
                if requirement > 0 and not pow_meets(env.pows(), requirement, formula):
                    continue
                if too_big is not None and len(env.raw) > too_big:
                    self.counters["over_peer_byte_limit"] += 1  # can never fit the peer's byte limit
                    continue
                # a first envelope bigger than the headroom still goes alone (it was size-checked
                # on input), unless the peer's byte budget cannot take it yet
                if size + len(env.raw) > limit and (batch or rp.send_bytes is not None):
                    outbox.appendleft(h)
                    break
                batch.append(env.raw)
                hashes.append(h)
                size += len(env.raw)
        cost = size + examined * FORWARD_EXAMINE_COST
        if not batch:
            return 0, cost
        payload = encode_envelope_list(batch)
        if not rp.link.send_messages(payload):
            outbox.extendleft(reversed(hashes))  # write buffer full: retry next cycle
            return 0, cost
        if rp.send_packets is not None:
            rp.send_packets.take(1, now_m)
        if rp.send_bytes is not None:
            rp.send_bytes.take(len(payload), now_m)
        rp.known.add_many(hashes)
        self.counters["envelopes_out"] += len(batch)
        self.counters[f"envelopes_out_{rp.link.protocol.split('/')[0]}"] += len(batch)
        if want_hash:  # the packet hash is what status-go acknowledges; only client tools listen
            self.notify("on_sent", rp.peer, keccak256(payload), hashes)
        return len(batch), cost

    def sweep_once(self) -> None:
        """Expiry sweep, status timeouts and the no-peers condition."""
        if self.clock_trusted():
            self.pool.sweep(int(self._clock()))
        now_m = time.monotonic()
        for rp in list(self.peers.values()):
            if rp.status is None and now_m - rp.started > self.status_timeout_s:
                log.warning("peer %s sent no %s Status within %g s", short(rp.peer), rp.link.protocol,
                            self.status_timeout_s)
                rp.peer.disconnect(DisconnectReason.SUBPROTOCOL_ERROR)
        lonely = not self.peers and now_m - self._last_peer_seen > self.no_peers_grace_s
        if self.health is not None and lonely:
            self.health.report(HEALTH_NO_PEERS, Severity.DEGRADED, "no Whisper or Waku peers connected")

    # -- tasks ------------------------------------------------------------------------------------
    def ensure_tasks(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._forward_task()),
            asyncio.create_task(self._every(self.config.expiry_sweep_s, self.sweep_once)),
        ]

    async def close(self) -> None:
        """Stop timers and pending confirmation tasks."""
        tasks = self._tasks + list(self._background)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        self._background.clear()

    async def _forward_task(self) -> None:
        """Transmission cycles every ``forward_interval_s``, each in slices with a loop turn between."""
        while True:
            await asyncio.sleep(self.config.forward_interval_s)
            try:
                for _ in self.forward_slices(self.forward_slice_bytes):
                    await asyncio.sleep(0)
            except Exception:
                log.exception("relay forwarding failed")

    async def _every(self, interval: float, fn: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                fn()
            except Exception:
                log.exception("relay timer failed")

    def spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def notify(self, hook: str, *args: object) -> None:
        for fn in self._hooks(hook):
            self._call(fn, hook, *args)

    def _hooks(self, hook: str) -> list[Callable[..., object]]:
        """The listeners' ``hook`` methods, as they are now."""
        return [fn for listener in list(self.listeners) if (fn := getattr(listener, hook, None)) is not None]

    @staticmethod
    def _call(fn: Callable[..., object], hook: str, *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            log.exception("relay listener %s failed", hook)

    async def notify_async(self, hook: str, *args: object) -> None:
        """``notify`` for trusted-peer deliveries (127, 125): a listener may return an awaitable.

        Awaiting it holds this peer's next message, so a consumer that falls behind (the history
        client) slows the sending mailserver down through TCP instead of losing envelopes.
        """
        for listener in list(self.listeners):
            fn = getattr(listener, hook, None)
            if fn is None:
                continue
            try:
                result = fn(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("relay listener %s failed", hook)


def short(peer: PeerLike) -> str:
    try:
        host, port = peer.remote_address
        return f"{peer.node_id.hex()[:8]}@{host}:{port}"
    except Exception:
        return "?"
