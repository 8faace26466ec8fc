"""``WakuService``: the waku/1 and waku/0 adapter over the shared envelope core (PROTOCOL.md §5).

What is waku-specific lives here: the Status options list (waku/1 bare list with uint keys, waku/0
``[0, options]`` with string keys), Status Update (22) applying only the options it carries, topic
interest overriding the bloom, light nodes, the peer's packet and byte rate limits (honoured when
we send) and ours (advertised, enforced on receive), PoW judged by the EIP-627 ("current")
formula in both directions, 127 only as a list, 126 answered by the same mailserver as shh/6, and
no mailserver sync (123/124 are dropped and counted). Pool, validation, archiving, confirmations
and forwarding are the core's — which is what bridges waku and shh.
"""

from __future__ import annotations

import logging
import time

from pimail.config import WakuConfig
from pimail.envelope.bloom import FULL_BLOOM
from pimail.envelope.codec import EnvelopeError, decode_envelope_list, encode_envelope_list
from pimail.envelope.pow import PowFormula
from pimail.node.capability import Capability, PeerLike, ProtocolError, shared_version
from pimail.relay.confirmations import ErrorCodes, MessageResponse, WireError, decode_batch_ack
from pimail.relay.core import RelayCore, RelayPeer, short
from pimail.relay.limits import TokenBucket
from pimail.waku import status as ws

log = logging.getLogger(__name__)

CAPABILITY = ws.CAPABILITY
SYNC_CODES = (123, 124)  # whisper-only mailserver sync


class WakuLink:
    """How the core reaches a waku peer (of the version negotiated with it)."""

    capability = CAPABILITY
    error_codes: ErrorCodes = ws.ERROR_CODES

    def __init__(self, peer: PeerLike, version: int) -> None:
        self.peer = peer
        self.version = version
        self.protocol = f"{CAPABILITY}/{version}"

    def send_messages(self, payload: bytes) -> bool:
        return self.peer.send(CAPABILITY, ws.MESSAGES, payload)

    def backlog(self) -> int:
        return int(getattr(self.peer, "write_backlog", 0))  # a peer without a transport has none

    def send_confirmation(self, response: bytes, ack: bytes) -> None:
        self.peer.send(CAPABILITY, ws.MESSAGE_RESPONSE, response)
        self.peer.send(CAPABILITY, ws.BATCH_ACK, ack)

    def announce_pow(self, value: float) -> None:
        self.peer.send(CAPABILITY, ws.STATUS_UPDATE, ws.StatusOptions(pow=value).encode(self.version))


def _send_limit(limits: ws.RateLimits | None) -> float:
    """The tightest non-zero limit of ``[ip, peerID, topic]`` that binds us as one sender (0: none)."""
    if limits is None:
        return 0.0
    bound = [x for x in (limits.ip, limits.peer_id) if x > 0]
    return float(min(bound)) if bound else 0.0


def _version(rp: RelayPeer) -> int:
    """The waku version negotiated with ``rp`` (its link says)."""
    link = rp.link
    assert isinstance(link, WakuLink)
    return link.version


class WakuService(Capability):
    """waku/1 and (if configured) waku/0 on one capability name; a peer gets the highest shared."""

    name = CAPABILITY
    version = 1
    length = ws.PROTOCOL_LENGTH

    def __init__(self, config: WakuConfig, core: RelayCore) -> None:
        self.config = config
        self.core = core
        self.advertised_bloom = FULL_BLOOM  # as WhisperService's: a history-only client asks for none
        self.advertised_light = False

    @property
    def versions(self) -> tuple[int, ...]:
        return (1, 0) if self.config.waku0 else (1,)

    @property
    def peers(self) -> dict[PeerLike, RelayPeer]:
        """Peers speaking waku (either version) with us."""
        return self.core.peers_of(CAPABILITY)

    def status_options(self) -> ws.StatusOptions:
        """What we announce: a full node (full bloom, no topic interest) that is not light, unless
        told otherwise (``advertised_bloom``, ``advertised_light``)."""
        cfg = self.config
        return ws.StatusOptions(
            pow=self.core.min_pow,
            bloom=self.advertised_bloom,
            light=self.advertised_light,
            confirmations=cfg.confirmations,
            packet_limits=ws.RateLimits(0, int(cfg.rate_limit_packets_per_s), 0),
            bytes_limits=ws.RateLimits(0, int(cfg.rate_limit_bytes_per_s), 0),
        )

    async def wait_status(self, peer: PeerLike, timeout: float) -> RelayPeer:
        return await self.core.wait_status(peer, CAPABILITY, timeout)

    async def send_p2p_envelopes(self, peer: PeerLike, raw_envelopes: list[bytes],
                                 batch: bool = True) -> None:
        """Code 127: waku only knows the list form."""
        await peer.send_wait(CAPABILITY, ws.P2P_MESSAGE, encode_envelope_list(raw_envelopes))

    # -- Capability -------------------------------------------------------------------------------
    async def peer_started(self, peer: PeerLike) -> None:
        cfg = self.config
        version = shared_version(peer, CAPABILITY, 1)
        link = WakuLink(peer, version)
        rp = self.core.add_peer(peer, link, packets_per_s=cfg.rate_limit_packets_per_s,
                                tolerance=cfg.rate_limit_tolerance, bytes_per_s=cfg.rate_limit_bytes_per_s)
        rp.judge_formula = PowFormula.CURRENT  # waku is status-go's: EIP-627-style PoW only
        rp.formula = PowFormula.CURRENT
        rp.pow_requirement = ws.DEFAULT_POW
        rp.confirm = cfg.confirmations
        peer.send(CAPABILITY, ws.STATUS, self.status_options().encode(version))
        log.debug("waku/%d peer %s started (%s)", version, short(peer), peer.client_id)

    def peer_stopped(self, peer: PeerLike) -> None:
        if self.core.remove_peer(peer, CAPABILITY) is not None:
            log.debug("waku peer %s stopped", short(peer))

    async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
        rp = self.core.get(peer, CAPABILITY)
        if rp is None:
            return
        core = self.core
        if rp.status is None:
            if code != ws.STATUS:
                core.counters["waku_before_status"] += 1
                raise ProtocolError(f"peer sent waku message {code} before Status")
            self._on_status(rp, _version(rp), payload)
            return
        try:
            if code == ws.MESSAGES:  # the hot path: straight to the core, as shh/6 does
                core.receive_messages(rp, payload)
            elif code == ws.STATUS_UPDATE:
                self._apply(rp, ws.StatusOptions.decode(payload, _version(rp)))
            elif code == ws.STATUS:
                log.warning("peer %s sent waku Status again; ignored", short(peer))
            elif code == ws.BATCH_ACK:
                core.notify("on_batch_ack", peer, decode_batch_ack(payload))
            elif code == ws.MESSAGE_RESPONSE:
                core.notify("on_message_response", peer, MessageResponse.decode(payload))
            elif code == ws.P2P_REQUEST:
                if core.request_handler is not None:
                    await core.request_handler.handle(peer, code, payload, capability=CAPABILITY,
                                                      lists_only=True)
            elif code == ws.P2P_REQUEST_COMPLETE:
                if core.is_trusted(peer, "request-complete (125)"):
                    await core.notify_async("on_request_complete", peer, payload)
            elif code == ws.P2P_MESSAGE:
                if core.is_trusted(peer, "P2P message (127)"):
                    try:
                        envs = decode_envelope_list(payload)
                    except EnvelopeError as exc:
                        raise ProtocolError(f"bad waku P2P message (must be a list of envelopes): {exc}") \
                            from exc
                    core.counters["p2p_envelopes_in"] += len(envs)
                    await core.notify_async("on_p2p_envelopes", peer, envs)
            elif code in SYNC_CODES:
                core.counters["waku_sync_ignored"] += 1  # mailserver sync is whisper-only
                log.debug("ignored code %d (mailserver sync) from waku peer %s", code, short(peer))
            # other codes: a newer waku's; ignored for forward compatibility, as status-go does
        except WireError as exc:
            raise ProtocolError(f"bad waku message {code}: {exc}") from exc

    def _on_status(self, rp: RelayPeer, version: int, payload: bytes) -> None:
        try:
            options = ws.StatusOptions.decode(payload, version)
        except ws.WakuStatusError as exc:
            self.core.counters["waku_bad_status"] += 1
            raise ProtocolError(f"bad waku Status: {exc}") from exc
        self._apply(rp, options.with_defaults())
        self.core.status_received(rp, options)
        log.info(
            "waku/%d peer %s: %s, requires PoW %g%s%s",
            version,
            short(rp.peer),
            rp.peer.client_id or "unknown client",
            rp.pow_requirement,
            f", topic interest of {len(rp.topic_interest)}" if rp.topic_interest is not None else "",
            ", light node" if rp.light else "",
        )

    def _apply(self, rp: RelayPeer, options: ws.StatusOptions) -> None:
        """Take the options a Status or Status Update carries; absent ones keep their value."""
        now_m = time.monotonic()
        if options.pow is not None:
            rp.pow_requirement = options.pow
        if options.topic_interest is not None:
            rp.topic_interest = frozenset(options.topic_interest)
        elif options.bloom is not None:
            rp.bloom = options.bloom
            rp.topic_interest = None
        if options.light is not None:
            rp.light = options.light  # the core gives a light node only what it asked for explicitly
        if options.packet_limits is not None:
            rate = _send_limit(options.packet_limits)
            rp.send_packets = TokenBucket(rate, rate, now_m) if rate > 0 else None
        if options.bytes_limits is not None:
            rate = _send_limit(options.bytes_limits)
            rp.send_bytes = TokenBucket(rate, rate, now_m) if rate > 0 else None

