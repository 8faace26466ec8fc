"""``WhisperService``: the shh/6 adapter over the shared envelope core (``pimail.relay.core``).

What is shh-specific lives here: the positional Status and which PoW formula a peer judges by
(from its Status length and client name), codes 2 and 3 (PoW and bloom changes), 123/124
(mailserver sync) and 127 as a list *or* a single envelope. Pool, validation, archiving,
confirmations and forwarding are the core's, shared with the waku adapter.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from pimail.archive.base import Archive
from pimail.config import WhisperConfig
from pimail.envelope.bloom import FULL_BLOOM
from pimail.envelope.codec import Envelope, EnvelopeError, decode_envelope_list, encode_envelope_list
from pimail.envelope.pow import PowFormula
from pimail.health import HealthModel
from pimail.node.capability import Capability, PeerLike, ProtocolError
from pimail.relay.confirmations import ErrorCodes, MessageResponse, WireError, decode_batch_ack
from pimail.relay.core import RelayCore, RelayPeer, RequestHandler, short
from pimail.relay.pool import EnvelopePool
from pimail.whisper import status as st

log = logging.getLogger(__name__)

CAPABILITY = "shh"
PROTOCOL = "shh/6"

#: what a peer's state is called where it used to be shh-only (client tools)
PeerState = RelayPeer

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


class ShhLink:
    """How the core reaches a shh/6 peer."""

    protocol = PROTOCOL
    capability = CAPABILITY
    error_codes: ErrorCodes = st.ERROR_CODES

    def __init__(self, peer: PeerLike) -> None:
        self.peer = peer

    def send_messages(self, payload: bytes) -> bool:
        return self.peer.send(CAPABILITY, st.MESSAGES, payload)

    def backlog(self) -> int:
        return int(getattr(self.peer, "write_backlog", 0))  # a peer without a transport has none

    def send_confirmation(self, response: bytes, ack: bytes) -> None:
        self.peer.send(CAPABILITY, st.MESSAGE_RESPONSE, response)
        self.peer.send(CAPABILITY, st.BATCH_ACK, ack)

    def announce_pow(self, value: float) -> None:
        self.peer.send(CAPABILITY, st.POW_REQUIREMENT, st.encode_pow_requirement(value))


class WhisperService(Capability):
    """shh/6. Give it a ``core`` to share pool and archive with other adapters (the bridge);
    without one it makes its own (client tools, tests)."""

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
        core: RelayCore | None = None,
    ) -> None:
        if core is None:
            core = RelayCore(config, archive=archive, clock_trusted=clock_trusted, health=health,
                             trusted=trusted, clock=clock)
        else:
            core.trusted.update(trusted)
        self.core = core
        # What our Status asks of the peer: a relay wants everything (full bloom, not light); a
        # history-only client asks for nothing live (ClientStack(live=False))
        self.advertised_bloom = FULL_BLOOM
        self.advertised_light = False

    # -- the core's state, as the shh service always exposed it --------------------------------------
    @property
    def config(self) -> WhisperConfig:
        return self.core.config

    @config.setter
    def config(self, new: WhisperConfig) -> None:
        self.core.config = new
        for rp in self.peers.values():
            rp.confirm = new.confirmations

    @property
    def archive(self) -> Archive | None:
        return self.core.archive

    @property
    def pool(self) -> EnvelopePool:
        return self.core.pool

    @property
    def counters(self) -> dict[str, int]:
        return self.core.counters

    @property
    def listeners(self) -> list[Any]:
        return self.core.listeners

    @property
    def trusted(self) -> set[bytes]:
        return self.core.trusted

    @property
    def request_handler(self) -> RequestHandler | None:
        return self.core.request_handler

    @request_handler.setter
    def request_handler(self, handler: RequestHandler | None) -> None:
        self.core.request_handler = handler

    @property
    def min_pow(self) -> float:
        return self.core.min_pow

    @property
    def formula(self) -> PowFormula:
        return self.core.formula

    @property
    def forward_slice_bytes(self) -> int:
        return self.core.forward_slice_bytes

    @forward_slice_bytes.setter
    def forward_slice_bytes(self, value: int) -> None:
        self.core.forward_slice_bytes = value

    @property
    def no_peers_grace_s(self) -> float:
        return self.core.no_peers_grace_s

    @no_peers_grace_s.setter
    def no_peers_grace_s(self, value: float) -> None:
        self.core.no_peers_grace_s = value

    @property
    def status_timeout_s(self) -> float:
        return self.core.status_timeout_s

    @status_timeout_s.setter
    def status_timeout_s(self, value: float) -> None:
        self.core.status_timeout_s = value

    @property
    def peers(self) -> dict[PeerLike, RelayPeer]:
        """Peers speaking shh/6 with us."""
        return self.core.peers_of(CAPABILITY)

    # -- public API -------------------------------------------------------------------------------
    def mark_trusted(self, node_id: bytes) -> None:
        """Accept 125/127 from this node (keccak of its public key)."""
        self.core.mark_trusted(node_id)

    def post(self, envelope: Envelope) -> bool:
        """Inject a local envelope: pooled and relayed to every protocol (not archived)."""
        return self.core.post(envelope)

    def status_packet(self) -> st.StatusPacket:
        limit = int(self.config.rate_limit_packets_per_s)
        return st.StatusPacket(
            pow=self.core.min_pow,
            bloom=self.advertised_bloom,
            light=self.advertised_light,
            confirmations=self.config.confirmations,
            rate_limits=st.RateLimits(0, limit, 0),
        )

    def set_min_pow(self, value: float) -> None:
        """Change our requirement, tell every peer (code 2 / Status Update), honour the old one 10 s."""
        self.core.set_min_pow(value)

    def peer_state(self, peer: PeerLike) -> RelayPeer | None:
        return self.core.get(peer, CAPABILITY)

    async def wait_status(self, peer: PeerLike, timeout: float) -> RelayPeer:
        """Wait for the peer's Status (client tools). Raises TimeoutError."""
        return await self.core.wait_status(peer, CAPABILITY, timeout)

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

    def forward_once(self) -> int:
        return self.core.forward_once()

    def forward_slices(self, slice_bytes: int) -> Iterator[int]:
        return self.core.forward_slices(slice_bytes)

    def sweep_once(self) -> None:
        self.core.sweep_once()

    async def close(self) -> None:
        """Stop the core's timers and pending confirmation tasks."""
        await self.core.close()

    # -- Capability -------------------------------------------------------------------------------
    async def peer_started(self, peer: PeerLike) -> None:
        cfg = self.config
        rp = self.core.add_peer(peer, ShhLink(peer), packets_per_s=cfg.rate_limit_packets_per_s,
                                tolerance=cfg.rate_limit_tolerance)
        rp.confirm = cfg.confirmations
        peer.send(CAPABILITY, st.STATUS, self.status_packet().encode())
        log.debug("shh peer %s started (%s)", short(peer), peer.client_id)

    def peer_stopped(self, peer: PeerLike) -> None:
        if self.core.remove_peer(peer, CAPABILITY) is not None:
            log.debug("shh peer %s stopped", short(peer))

    async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
        rp = self.core.get(peer, CAPABILITY)
        if rp is None:
            return
        if rp.status is None:
            if code != st.STATUS:
                raise ProtocolError(f"peer sent shh message {code} before Status")
            self._on_status(rp, payload)
            return
        core = self.core
        try:
            if code == st.MESSAGES:
                core.receive_messages(rp, payload)
            elif code == st.STATUS:
                log.warning("peer %s sent Status again; ignored", short(peer))
            elif code == st.POW_REQUIREMENT:
                rp.pow_requirement = st.decode_pow_requirement(payload)
            elif code == st.BLOOM_EXCHANGE:
                rp.bloom = st.decode_bloom_exchange(payload)
            elif code == st.BATCH_ACK:
                core.notify("on_batch_ack", peer, decode_batch_ack(payload))
            elif code == st.MESSAGE_RESPONSE:
                core.notify("on_message_response", peer, MessageResponse.decode(payload))
            elif code in (st.P2P_SYNC_REQUEST, st.P2P_SYNC_RESPONSE, st.P2P_REQUEST):
                if core.request_handler is not None:
                    await core.request_handler.handle(peer, code, payload)
            elif code == st.P2P_REQUEST_COMPLETE:
                if core.is_trusted(peer, "request-complete (125)"):
                    await core.notify_async("on_request_complete", peer, payload)
            elif code == st.P2P_MESSAGE and core.is_trusted(peer, "P2P message (127)"):
                envs = _decode_p2p(payload)
                core.counters["p2p_envelopes_in"] += len(envs)
                await core.notify_async("on_p2p_envelopes", peer, envs)
            # Unknown codes (including 20, rate limits) are ignored, as EIP-627 asks.
        except WireError as exc:
            raise ProtocolError(f"bad shh message {code}: {exc}") from exc

    def _on_status(self, rp: RelayPeer, payload: bytes) -> None:
        try:
            status = st.StatusPacket.decode(payload)
        except st.StatusError as exc:
            raise ProtocolError(f"bad Status: {exc}") from exc
        rp.pow_requirement = status.pow
        rp.bloom = status.bloom
        rp.light = status.light
        rp.formula = peer_formula(rp.peer.client_id, status.fields)
        self.core.status_received(rp, status)
        log.info(
            "shh peer %s: %s, requires PoW %g (%s formula)%s",
            short(rp.peer),
            rp.peer.client_id or "unknown client",
            status.pow,
            rp.formula.value,
            ", light node" if status.light else "",
        )


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
