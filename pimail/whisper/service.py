"""``WhisperService``: shh/6 on top of the node seam — status exchange, validation, the envelope pool,
relay, archiving, confirmations, trusted P2P messages and the mailserver hook.

This is the I/O glue of the Whisper layer: decoding and judging live in sans-I/O modules
(``status``, ``envelope``, ``validation``, ``pool``); here we keep per-peer state, run the forward and
expiry timers, and talk to the archive. Nothing here blocks the loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from pimail.archive.base import Archive, ArchivedEnvelope
from pimail.config import WhisperConfig
from pimail.crypto.keccak import keccak256
from pimail.envelope.bloom import FULL_BLOOM, is_full
from pimail.envelope.codec import Envelope, EnvelopeError, decode_envelope_list, encode_envelope_list
from pimail.envelope.pow import PowFormula
from pimail.health import HealthModel, Severity
from pimail.node.capability import Capability, DisconnectReason, PeerLike, ProtocolError
from pimail.whisper import status as st
from pimail.whisper.pool import EnvelopePool, KnownSet, PacketRateLimiter
from pimail.whisper.validation import Outcome, Rules, judge, pow_meets

log = logging.getLogger(__name__)

CAPABILITY = "shh"
STATUS_TIMEOUT_S = 10.0  # a peer that never sends Status is useless
POW_TOLERANCE_S = 10.0  # geth keeps the old requirement this long after a change
NO_PEERS_GRACE_S = 120.0  # report "no peers" only after this long without any
PACKET_HEADROOM = 1024  # keep forwarded packets this far under the size limit
FORWARD_SLICE_BYTES = 256 * 1024  # packet bytes built per loop turn while forwarding
FORWARD_EXAMINE_COST = 64  # an examined envelope counts as this many bytes of work
MAX_PENDING_CONFIRMATIONS = 64  # per peer; beyond this the peer is flooding us


class RequestHandler(Protocol):
    async def handle(self, peer: PeerLike, code: int, payload: bytes) -> None: ...


@dataclass
class PeerState:
    """What we know about one connected shh peer."""

    peer: PeerLike
    started: float
    known: KnownSet
    outbox: collections.deque[bytes]
    limiter: PacketRateLimiter
    status: st.StatusPacket | None = None
    status_event: asyncio.Event = field(default_factory=asyncio.Event)
    pow_requirement: float = 0.0
    bloom: bytes = FULL_BLOOM
    formula: PowFormula = PowFormula.BOTH
    outbox_dropped: int = 0
    pending_confirmations: int = 0

    @property
    def kind(self) -> str:
        return {PowFormula.LEGACY: "geth-1.8", PowFormula.CURRENT: "status-go"}.get(self.formula, "unknown")


_STATUS_GO_VERSION = re.compile(r"^Status(?:IM)?/v0\.(\d+)", re.IGNORECASE)
_GETH_VERSION = re.compile(r"^Geth/(?:[^/]*/)?v1\.(\d+)", re.IGNORECASE)
FIRST_STATUS_GO_MINOR_WITH_CURRENT_POW = 35  # status-im/whisper v1.5.0 shipped in status-go v0.35.0
FIRST_GETH_MINOR_WITH_CURRENT_POW = 9  # PR #19753, exact upstream release unconfirmed (PROTOCOL.md §8)


def peer_formula(client_id: str, status_fields: int) -> PowFormula:
    """Which PoW formula a peer judges by (PROTOCOL.md §3.2, §3.4, §9).

    go-ethereum ≤ 1.8 (geth, wnode — whatever its client name) sends at most 4 Status fields and uses
    the legacy formula. status-go ≥ 0.42 sends 6 fields and uses the current one. 5 fields is
    status-im/whisper without rate limits: v1.4 (legacy) or v1.5+ (current); only a status-go
    client id with its version tells which, otherwise the peer must get envelopes meeting both.
    """
    if status_fields <= 4:
        m = _GETH_VERSION.match(client_id)
        if m and int(m.group(1)) >= FIRST_GETH_MINOR_WITH_CURRENT_POW:
            return PowFormula.BOTH
        return PowFormula.LEGACY
    if status_fields >= 6:
        return PowFormula.CURRENT
    m = _STATUS_GO_VERSION.match(client_id)
    if m and int(m.group(1)) >= FIRST_STATUS_GO_MINOR_WITH_CURRENT_POW:
        return PowFormula.CURRENT
    return PowFormula.BOTH


class WhisperService(Capability):
    name = CAPABILITY
    version = st.VERSION
    length = st.PROTOCOL_LENGTH

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
        self.forward_slice_bytes = FORWARD_SLICE_BYTES  # work per loop turn while forwarding
        self._clock = clock
        self.pool = EnvelopePool(config.pool_max_bytes)
        self.peers: dict[PeerLike, PeerState] = {}
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

    # -- public API --------------------------------------------------------------------------------
    @property
    def config(self) -> WhisperConfig:
        return self._config

    @config.setter
    def config(self, new: WhisperConfig) -> None:
        """Apply a reloaded [whisper] section (SIGHUP): PoW (announced to peers), formula, pool cap."""
        old, self._config = self._config, new
        if new.min_pow != old.min_pow:
            self.set_min_pow(new.min_pow)
        self.formula = PowFormula(new.pow_formula)
        self.pool.max_bytes = new.pool_max_bytes
        log.info("whisper settings reloaded (min PoW %g, %s formula)", self.min_pow, self.formula.value)

    def mark_trusted(self, node_id: bytes) -> None:
        """Accept 125/127 from this node (keccak of its public key)."""
        self.trusted.add(node_id)

    def post(self, envelope: Envelope) -> bool:
        """Inject a local envelope: pooled and relayed (not archived). False if known or expired."""
        self._ensure_tasks()
        if self.clock_trusted() and envelope.expiry < int(self._clock()):
            return False
        if not self._insert(envelope, source=None):
            return False
        self._notify("on_envelope", envelope)
        return True

    def status_packet(self) -> st.StatusPacket:
        limit = int(self.config.rate_limit_packets_per_s)
        return st.StatusPacket(
            pow=self.min_pow,
            bloom=FULL_BLOOM,
            light=False,
            confirmations=self.config.confirmations,
            rate_limits=st.RateLimits(0, limit, 0),
        )

    def set_min_pow(self, value: float) -> None:
        """Change our requirement, tell every peer (code 2), honour the old one for 10 s."""
        if value < 0 or value != value:
            raise ValueError("minimum PoW must be a non-negative number")
        self._pow_tolerance = self.min_pow
        self._pow_tolerance_until = time.monotonic() + POW_TOLERANCE_S
        self.min_pow = value
        payload = st.encode_pow_requirement(value)
        for state in list(self.peers.values()):
            state.peer.send(CAPABILITY, st.POW_REQUIREMENT, payload)

    def peer_state(self, peer: PeerLike) -> PeerState | None:
        return self.peers.get(peer)

    async def wait_status(self, peer: PeerLike, timeout: float) -> PeerState:
        """Wait for the peer's Status (client tools). Raises TimeoutError."""
        async def wait() -> PeerState:
            # connect() returns after the Hellos; peer_started may not have run yet.
            while (state := self.peers.get(peer)) is None:
                if peer.closed:
                    raise ConnectionError("peer disconnected before the shh handshake")
                await asyncio.sleep(0.01)
            await state.status_event.wait()
            return state

        return await asyncio.wait_for(wait(), timeout)

    async def send_p2p_envelopes(self, peer: PeerLike, raw_envelopes: list[bytes], batch: bool) -> None:
        """Code 127: one packet with a list (status-go, ``batch``) or one packet per envelope (geth)."""
        if batch:
            await peer.send_wait(CAPABILITY, st.P2P_MESSAGE, encode_envelope_list(raw_envelopes))
        else:
            for raw in raw_envelopes:
                await peer.send_wait(CAPABILITY, st.P2P_MESSAGE, raw)

    async def send_request_complete(self, peer: PeerLike, payload: bytes) -> None:
        """Code 125; ``payload`` is the already-encoded packet payload (an RLP byte string)."""
        await peer.send_wait(CAPABILITY, st.P2P_REQUEST_COMPLETE, payload)

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

    # -- Capability --------------------------------------------------------------------------------
    async def peer_started(self, peer: PeerLike) -> None:
        self._ensure_tasks()
        cfg = self.config
        now_m = time.monotonic()
        state = PeerState(
            peer=peer,
            started=now_m,
            known=KnownSet(cfg.known_per_peer),
            outbox=collections.deque(maxlen=cfg.known_per_peer),
            limiter=PacketRateLimiter(cfg.rate_limit_packets_per_s, cfg.rate_limit_tolerance, now_m),
        )
        state.outbox.extend(env.hash for env in self.pool)
        self.peers[peer] = state
        self._last_peer_seen = now_m
        if self.health is not None:
            self.health.clear("whisper.no_peers")
        peer.send(CAPABILITY, st.STATUS, self.status_packet().encode())
        log.debug("shh peer %s started (%s)", _short(peer), peer.client_id)

    def peer_stopped(self, peer: PeerLike) -> None:
        if self.peers.pop(peer, None) is not None:
            log.debug("shh peer %s stopped", _short(peer))
        if not self.peers:
            self._last_peer_seen = time.monotonic()

    async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
        state = self.peers.get(peer)
        if state is None:
            return
        if state.status is None:
            if code != st.STATUS:
                raise ProtocolError(f"peer sent shh message {code} before Status")
            self._on_status(state, payload)
            return
        try:
            if code == st.MESSAGES:
                self._on_messages(state, payload)
            elif code == st.STATUS:
                log.warning("peer %s sent Status again; ignored", _short(peer))
            elif code == st.POW_REQUIREMENT:
                state.pow_requirement = st.decode_pow_requirement(payload)
            elif code == st.BLOOM_EXCHANGE:
                state.bloom = st.decode_bloom_exchange(payload)
            elif code == st.BATCH_ACK:
                self._notify("on_batch_ack", peer, st.decode_batch_ack(payload))
            elif code == st.MESSAGE_RESPONSE:
                self._notify("on_message_response", peer, st.MessageResponse.decode(payload))
            elif code in (st.P2P_SYNC_REQUEST, st.P2P_SYNC_RESPONSE, st.P2P_REQUEST):
                if self.request_handler is not None:
                    await self.request_handler.handle(peer, code, payload)
            elif code == st.P2P_REQUEST_COMPLETE:
                if self._is_trusted(peer, "request-complete (125)"):
                    await self._notify_async("on_request_complete", peer, payload)
            elif code == st.P2P_MESSAGE and self._is_trusted(peer, "P2P message (127)"):
                envs = _decode_p2p(payload)
                self.counters["p2p_envelopes_in"] += len(envs)
                await self._notify_async("on_p2p_envelopes", peer, envs)
            # Unknown codes (including 20, rate limits) are ignored, as EIP-627 asks.
        except st.StatusError as exc:
            raise ProtocolError(f"bad shh message {code}: {exc}") from exc

    # -- handlers ----------------------------------------------------------------------------------
    def _on_status(self, state: PeerState, payload: bytes) -> None:
        try:
            status = st.StatusPacket.decode(payload)
        except st.StatusError as exc:
            raise ProtocolError(f"bad Status: {exc}") from exc
        state.status = status
        state.pow_requirement = status.pow
        state.bloom = status.bloom
        state.formula = peer_formula(state.peer.client_id, status.fields)
        state.status_event.set()
        log.info(
            "shh peer %s: %s, requires PoW %g (%s formula)%s",
            _short(state.peer),
            state.peer.client_id or "unknown client",
            status.pow,
            state.formula.value,
            ", light node" if status.light else "",
        )

    def _rules(self) -> Rules:
        tolerance = self._pow_tolerance if time.monotonic() < self._pow_tolerance_until else None
        return Rules(
            min_pow=self.min_pow,
            formula=self.formula,
            max_size=self.config.max_message_size,
            future_allowance_s=self.config.future_tolerance_s,
            pow_tolerance=tolerance,
        )

    def _on_messages(self, state: PeerState, payload: bytes) -> None:
        peer = state.peer
        if not state.limiter.allow(time.monotonic()):
            self.counters["rate_limited_peers"] += 1
            raise ProtocolError(
                f"peer floods Messages packets (over {self.config.rate_limit_packets_per_s:g}/s "
                f"with tolerance {self.config.rate_limit_tolerance})"
            )
        if len(payload) > self.config.max_message_size:
            raise ProtocolError(f"Messages packet of {len(payload)} bytes exceeds the size limit")
        try:
            envelopes = decode_envelope_list(payload)
        except EnvelopeError as exc:
            raise ProtocolError(f"bad Messages packet: {exc}") from exc
        trusted_clock = self.clock_trusted()
        now = int(self._clock()) if trusted_clock else None
        rules = self._rules()
        errors: list[st.EnvelopeErrorReport] = []
        to_archive: list[ArchivedEnvelope] = []
        trouble: str | None = None
        for env in envelopes:
            self.counters["envelopes_in"] += 1
            h = env.hash
            state.known.add(h)
            if h in self.pool:
                self.counters["duplicates"] += 1
                continue
            verdict = judge(env, rules, now)
            if verdict.outcome is Outcome.ACCEPT:
                # The pool is only the relay cache: when it is full it may evict this very envelope
                # at once (earliest expiry goes first), but a valid envelope is still accepted,
                # archived and confirmed. Only the archive decides what is durable.
                self._insert(env, source=state)
                self.counters["accepted"] += 1
                self._notify("on_envelope", env)
                if trusted_clock and self.archive is not None:
                    to_archive.append(
                        ArchivedEnvelope(env.sent, h, env.topic, env.expiry, env.raw, int(self._clock()))
                    )
            elif verdict.outcome is Outcome.DROP:
                self.counters["expired_dropped"] += 1
            else:
                self.counters["rejected"] += 1
                errors.append(st.EnvelopeErrorReport(h, verdict.code, verdict.reason))
                if verdict.outcome is Outcome.ERROR and trouble is None:
                    trouble = verdict.reason
                else:  # time errors: usually a peer with a wrong clock; counted, not shouted
                    self.counters["time_errors"] += 1
                    log.debug("envelope %s from %s: %s", h.hex()[:12], _short(peer), verdict.reason)
        if trouble is not None:
            raise ProtocolError(f"invalid envelope: {trouble}")
        if self.config.confirmations:
            self._confirm(state, keccak256(payload), errors, to_archive)
        elif to_archive:
            self._archive(to_archive)

    def _confirm(
        self,
        state: PeerState,
        batch_hash: bytes,
        errors: list[st.EnvelopeErrorReport],
        to_archive: list[ArchivedEnvelope],
    ) -> None:
        response = st.MessageResponse(batch_hash, tuple(errors)).encode()
        ack = st.encode_batch_ack(batch_hash)
        if not to_archive:
            state.peer.send(CAPABILITY, st.MESSAGE_RESPONSE, response)
            state.peer.send(CAPABILITY, st.BATCH_ACK, ack)
            return
        if state.pending_confirmations >= MAX_PENDING_CONFIRMATIONS:
            raise ProtocolError("peer has too many unconfirmed batches pending archive writes")
        fut = self._archive(to_archive)
        state.pending_confirmations += 1

        async def confirm_when_durable() -> None:
            try:
                await fut
            except Exception as exc:
                log.error("archive write failed, batch %s not confirmed: %s", batch_hash.hex()[:12], exc)
                return
            finally:
                state.pending_confirmations -= 1
            if not state.peer.closed:
                state.peer.send(CAPABILITY, st.MESSAGE_RESPONSE, response)
                state.peer.send(CAPABILITY, st.BATCH_ACK, ack)

        self._spawn(confirm_when_durable())

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
                self.health.report("whisper.archive", Severity.DEGRADED,
                                   f"archive write failed; confirmations withheld ({exc})")
            else:
                self.health.clear("whisper.archive")

        fut.add_done_callback(done)
        return fut

    def _is_trusted(self, peer: PeerLike, what: str) -> bool:
        if peer.node_id in self.trusted:
            return True
        self.counters["untrusted_p2p_ignored"] += 1
        log.debug("ignored %s from untrusted peer %s", what, _short(peer))
        return False

    # -- pool and relay ----------------------------------------------------------------------------
    def _insert(self, env: Envelope, source: PeerState | None) -> bool:
        is_new, evicted = self.pool.add(env)
        if evicted:
            self.counters["pool_evicted"] += len(evicted)
        if not is_new:
            return False
        h = env.hash
        for state in self.peers.values():
            if state is source:
                continue
            if len(state.outbox) == state.outbox.maxlen:
                state.outbox_dropped += 1
            state.outbox.append(h)
        return True

    def forward_once(self) -> int:
        """One transmission cycle: send each peer its pending envelopes. Returns envelopes sent.

        Runs the whole cycle in one go (tests, tools); the daemon's timer runs the same cycle in
        slices of about ``FORWARD_SLICE_BYTES`` with a loop turn between them (``_forward_task``).
        """
        return sum(self.forward_slices(0))

    def forward_slices(self, slice_bytes: int) -> Iterator[int]:
        """One transmission cycle as a generator: yields envelopes sent after each slice of work.

        A slice ends once about ``slice_bytes`` of packets were built (examined envelopes count
        too), so a cycle that feeds 200 peers a megabyte each never holds the loop for long;
        ``slice_bytes <= 0`` means one slice. Nothing is dropped: each peer still gets at most one
        packet per cycle, and a peer that left between slices is skipped.
        """
        sent = 0
        work = 0
        limit = max(1024, self.config.max_message_size - PACKET_HEADROOM)
        want_hash = any(getattr(x, "on_sent", None) is not None for x in self.listeners)
        for state in list(self.peers.values()):
            if self.peers.get(state.peer) is not state:
                continue  # stopped while an earlier slice yielded
            n, cost = self._forward_peer(state, limit, want_hash)
            sent += n
            work += cost
            if slice_bytes > 0 and work >= slice_bytes:
                yield sent
                sent = work = 0
        yield sent

    def _forward_peer(self, state: PeerState, limit: int, want_hash: bool) -> tuple[int, int]:
        """At most one packet of ``state``'s pending envelopes; (envelopes sent, work done)."""
        if state.status is None or state.peer.closed or not state.outbox:
            return 0, 0
        batch: list[bytes] = []
        hashes: list[bytes] = []
        size = 0
        examined = 0
        outbox = state.outbox
        known = state.known
        pool_get = self.pool.get
        # the peer's filters (its bloom must cover the envelope's, and its PoW requirement), read
        # once per packet instead of once per envelope
        every_topic = is_full(state.bloom)
        wanted_bits = int.from_bytes(state.bloom, "big")
        requirement, formula = state.pow_requirement, state.formula
        while outbox:
            h = outbox.popleft()
            examined += 1
            env = pool_get(h)
            if env is None or h in known:
                continue
            if not every_topic:  # bloom_matches: every bit of the envelope's bloom is wanted
                bits = int.from_bytes(env.bloom, "big")
                if wanted_bits | bits != wanted_bits:
                    continue
            if requirement > 0 and not pow_meets(env.pows(), requirement, formula):
                continue
            if batch and size + len(env.raw) > limit:
                outbox.appendleft(h)
                break
            batch.append(env.raw)
            hashes.append(h)
            size += len(env.raw)
        cost = size + examined * FORWARD_EXAMINE_COST
        if not batch:
            return 0, cost
        payload = encode_envelope_list(batch)
        if not state.peer.send(CAPABILITY, st.MESSAGES, payload):
            outbox.extendleft(reversed(hashes))  # write buffer full: retry next cycle
            return 0, cost
        known.add_many(hashes)
        self.counters["envelopes_out"] += len(batch)
        if want_hash:  # the packet hash is what status-go acknowledges; only client tools listen
            self._notify("on_sent", state.peer, keccak256(payload), hashes)
        return len(batch), cost

    def sweep_once(self) -> None:
        """Expiry sweep, status timeouts and the no-peers condition."""
        if self.clock_trusted():
            self.pool.sweep(int(self._clock()))
        now_m = time.monotonic()
        for state in list(self.peers.values()):
            if state.status is None and now_m - state.started > self.status_timeout_s:
                log.warning("peer %s sent no shh Status within %g s", _short(state.peer),
                            self.status_timeout_s)
                state.peer.disconnect(DisconnectReason.SUBPROTOCOL_ERROR)
        lonely = not self.peers and now_m - self._last_peer_seen > self.no_peers_grace_s
        if self.health is not None and lonely:
            self.health.report("whisper.no_peers", Severity.DEGRADED, "no Whisper peers connected")

    # -- tasks -------------------------------------------------------------------------------------
    def _ensure_tasks(self) -> None:
        if self._tasks:
            return
        self._tasks = [
            asyncio.create_task(self._forward_task()),
            asyncio.create_task(self._every(self.config.expiry_sweep_s, self.sweep_once)),
        ]

    async def _forward_task(self) -> None:
        """Transmission cycles every ``forward_interval_s``, each in slices with a loop turn between."""
        while True:
            await asyncio.sleep(self.config.forward_interval_s)
            try:
                for _ in self.forward_slices(self.forward_slice_bytes):
                    await asyncio.sleep(0)
            except Exception:
                log.exception("whisper forwarding failed")

    async def _every(self, interval: float, fn: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                fn()
            except Exception:
                log.exception("whisper timer failed")

    def _spawn(self, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _notify(self, hook: str, *args: object) -> None:
        for listener in list(self.listeners):
            fn = getattr(listener, hook, None)
            if fn is None:
                continue
            try:
                fn(*args)
            except Exception:
                log.exception("whisper listener %s failed", hook)

    async def _notify_async(self, hook: str, *args: object) -> None:
        """``_notify`` for trusted-peer deliveries (127, 125): a listener may return an awaitable.

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
                log.exception("whisper listener %s failed", hook)


def _decode_p2p(payload: bytes) -> list[Envelope]:
    """127 payload: a list of envelopes (status-go) or one envelope (geth)."""
    try:
        return decode_envelope_list(payload)
    except EnvelopeError:
        pass
    try:
        return [Envelope.decode(payload)]
    except EnvelopeError as exc:
        raise ProtocolError(f"bad P2P message: {exc}") from exc


def _short(peer: PeerLike) -> str:
    try:
        host, port = peer.remote_address
        return f"{peer.node_id.hex()[:8]}@{host}:{port}"
    except Exception:
        return "?"
