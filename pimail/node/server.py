"""The node's asyncio server and dialer: listener, one-shot dials, static peers, limits, shutdown.

``NodeServer`` accepts and dials RLPx connections (each one a ``Peer``), admits peers after their
Hello (self, duplicate and peer-count checks), hands them to the registered capabilities, keeps
static peers connected (redial with exponential backoff) and counts every failure by name in
``counters`` so operators can see what goes wrong on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence

from pimail import __version__
from pimail.config import NodeConfig, parse_listen
from pimail.crypto.keys import Enode, KeyError_, NodeKey
from pimail.devp2p.capabilities import CapabilitySpec
from pimail.devp2p.messages import BASE_PROTOCOL_VERSION, DisconnectReason, Hello
from pimail.health import HealthModel, Severity
from pimail.node.capability import Capability
from pimail.node.peer import Peer, PeerDisconnected

log = logging.getLogger(__name__)

STOP_GRACE_S = 2.5  # how long stop() waits for peers to take their Disconnect
HEALTH_LISTEN = "node.listen"

#: counters that always exist (others appear when first incremented)
COUNTER_NAMES = (
    "inbound_connections", "outbound_dials", "dial_failed", "peers_connected",
    "pending_refused", "pending_evicted", "handshake_timeout", "handshake_undecryptable",
    "handshake_malformed",
    "bad_header_mac", "bad_frame_mac", "frame_too_large", "snappy_rejected", "protocol_breach",
    "unknown_message_id", "invalid_identity", "identity_mismatch", "useless_peer", "too_many_peers",
    "already_connected", "connected_to_self", "read_timeout", "subprotocol_error", "handler_error",
    "disconnects_received", "internal_error", "write_timeout",
)


class NodeServer:
    """Listener + dialer for RLPx/devp2p peers serving ``capabilities``."""

    def __init__(
        self,
        key: NodeKey,
        config: NodeConfig,
        capabilities: Sequence[Capability],
        health: HealthModel | None = None,
        *,
        client_id: str | None = None,
    ) -> None:
        self.key = key
        self.config = config
        self.health = health
        self.client_id = client_id or f"pimail/v{__version__}/python"
        self._caps: dict[str, Capability] = {}
        for cap in capabilities:
            if cap.name in self._caps:
                raise ValueError(f"capability {cap.name} registered twice")
            self._caps[cap.name] = cap
        self._specs = [CapabilitySpec(c.name, c.version, c.length) for c in capabilities]
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self._peers: dict[bytes, Peer] = {}  # node_id → admitted peer
        self._pending: dict[Peer, None] = {}  # insertion-ordered: oldest first
        self._server: asyncio.Server | None = None
        self._listen_port = 0
        self._hello: Hello | None = None
        self._static: dict[bytes, Enode] = {}
        self._static_tasks: dict[bytes, asyncio.Task[None]] = {}
        self._stopping = False

    # -- public API ---------------------------------------------------------------------------------
    @property
    def listen_port(self) -> int:
        return self._listen_port

    @property
    def peers(self) -> list[Peer]:
        """Connected peers that completed the devp2p handshake."""
        return [p for p in self._peers.values() if p.active]

    @property
    def enode(self) -> Enode:
        host, _ = parse_listen(self.config.listen)
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        return Enode(self.key.public, host, self._listen_port)

    async def start(self) -> None:
        """Bind the listener and start dialling static peers."""
        host, port = parse_listen(self.config.listen)
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._accept, host, port, reuse_address=True)
        except OSError as exc:
            if self.health is not None:
                msg = f"cannot listen on {self.config.listen}: {exc}"
                self.health.report(HEALTH_LISTEN, Severity.FAILING, msg)
            raise
        if self.health is not None:
            self.health.clear(HEALTH_LISTEN)
        sockets = self._server.sockets
        self._listen_port = int(sockets[0].getsockname()[1]) if sockets else port
        log.info("listening for peers on %s:%d", host, self._listen_port)
        self.set_static_peers(self.config.static_peers)

    async def stop(self) -> None:
        """Send Disconnect (client quitting) to every peer, close the listener, stop redialling."""
        self._stopping = True
        for task in self._static_tasks.values():
            task.cancel()
        tasks = list(self._static_tasks.values())
        self._static_tasks.clear()
        if self._server is not None:
            self._server.close()
        everyone = [*self._peers.values(), *self._pending]
        for peer in everyone:
            peer.disconnect(DisconnectReason.CLIENT_QUITTING)
        if everyone:
            waits = [asyncio.ensure_future(p.closed_event.wait()) for p in everyone]
            _done, not_done = await asyncio.wait(waits, timeout=STOP_GRACE_S)
            for w in not_done:
                w.cancel()
            # handlers still busy (e.g. awaiting storage) are cancelled so peer_stopped always runs
            busy = [t for t in (p.dispatcher for p in everyone) if t is not None and not t.done()]
            for t in busy:
                t.cancel()
            if busy:
                await asyncio.wait(busy, timeout=1.0)
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None
        log.info("node stopped (%d peers disconnected)", len(everyone))

    async def connect(self, enode: Enode | str, *, eip8: bool = True, timeout: float | None = None) -> Peer:
        """Dial ``enode`` once and return the peer after both Hellos (for client tools and static peers).

        Raises ``OSError``/``ConnectionError``/``TimeoutError`` if it cannot be reached or refuses us.
        """
        if isinstance(enode, str):
            try:
                enode = Enode.parse(enode)
            except KeyError_ as exc:
                raise ValueError(str(exc)) from None
        if enode.host is None or enode.port is None:
            raise ValueError(f"cannot dial {enode.url()}: it has no host:port")
        existing = self._peers.get(enode.node_id)
        if existing is not None and existing.active:
            return existing
        if self._stopping:
            raise ConnectionError("node is stopping")
        timeout = self.config.handshake_timeout_s if timeout is None else timeout
        loop = asyncio.get_running_loop()
        self.count("outbound_dials")
        pubkey = enode.pubkey
        try:
            _transport, peer = await asyncio.wait_for(
                loop.create_connection(lambda: Peer(self, inbound=False, remote_pubkey=pubkey, eip8=eip8),
                                       enode.host, enode.port),
                timeout,
            )
            return await asyncio.wait_for(asyncio.shield(peer.ready), timeout + 1.0)
        except (OSError, TimeoutError, PeerDisconnected) as exc:
            self.count("dial_failed")
            log.debug("dial %s:%s failed: %s", enode.host, enode.port, exc or type(exc).__name__)
            raise

    def add_static_peer(self, enode: Enode | str) -> None:
        """Keep a connection to ``enode``, redialling with exponential backoff."""
        if isinstance(enode, str):
            enode = Enode.parse(enode)
        if enode.host is None:
            raise ValueError(f"static peer {enode.url()} has no host:port")
        nid = enode.node_id
        if nid == self.key.node_id:
            log.warning("ignoring static peer %s: it is this node", enode.url())
            return
        self._static[nid] = enode
        if self._server is not None and not self._stopping and nid not in self._static_tasks:
            self._static_tasks[nid] = asyncio.get_running_loop().create_task(
                self._keep_connected(enode), name=f"static-{enode.pubkey[:4].hex()}")

    def set_static_peers(self, enodes: Iterable[Enode | str]) -> None:
        """Replace the static peer set (SIGHUP); bad entries are logged and skipped."""
        wanted: dict[bytes, Enode] = {}
        for item in enodes:
            try:
                e = Enode.parse(item) if isinstance(item, str) else item
            except KeyError_ as exc:
                log.warning("ignoring static peer: %s", exc)
                continue
            if e.host is None:
                log.warning("ignoring static peer %s: no host:port", e.url())
                continue
            wanted[e.node_id] = e
        for nid in list(self._static):
            if nid not in wanted:
                del self._static[nid]
                task = self._static_tasks.pop(nid, None)
                if task is not None:
                    task.cancel()
        for e in wanted.values():
            self.add_static_peer(e)

    # -- PeerHost -----------------------------------------------------------------------------------
    def count(self, name: str) -> None:
        self.counters[name] = self.counters.get(name, 0) + 1

    def local_hello(self) -> Hello:
        if self._hello is None:
            caps = tuple(sorted((s.name, s.version) for s in self._specs))
            port = self._listen_port
            self._hello = Hello(BASE_PROTOCOL_VERSION, self.client_id, caps, port, self.key.public)
        return self._hello

    def capability_specs(self) -> Sequence[CapabilitySpec]:
        return self._specs

    def capability(self, name: str) -> Capability:
        return self._caps[name]

    def accept_pending(self, peer: Peer) -> bool:
        """Take a new connection into the pending-handshake slots.

        At the cap, an inbound connection pushes out the oldest inbound one that has not yet
        delivered a complete RLPx auth (an idle or half-open socket is the least likely to be a
        phone; a phone's auth arrives within a round trip), so a flood of half-open connections
        cannot lock real peers out until the handshake timeout. Only if every slot holds a
        connection past its auth is the new one refused.
        """
        if peer.inbound:
            self.count("inbound_connections")
            if self._stopping:
                self.count("pending_refused")
                return False
            if len(self._pending) >= self.config.max_pending_handshakes:
                victim = next((p for p in self._pending if p.inbound and not p.auth_received), None)
                if victim is None:
                    self.count("pending_refused")
                    return False
                self.count("pending_evicted")
                self._pending.pop(victim, None)
                victim.evict("pending-handshake slot taken by a newer connection")
        self._pending[peer] = None
        return True

    def admit(self, peer: Peer) -> DisconnectReason | None:
        if self._stopping:
            return DisconnectReason.CLIENT_QUITTING
        if peer.pubkey == self.key.public:
            self.count("connected_to_self")
            return DisconnectReason.CONNECTED_TO_SELF
        existing = self._peers.get(peer.node_id)
        if existing is not None and existing is not peer and not existing.closed:
            self.count("already_connected")
            return DisconnectReason.ALREADY_CONNECTED
        if peer.inbound and peer.node_id not in self._static and len(self.peers) >= self.config.max_peers:
            self.count("too_many_peers")
            return DisconnectReason.TOO_MANY_PEERS
        return None

    def handshake_finished(self, peer: Peer) -> None:
        self._pending.pop(peer, None)
        self._peers[peer.node_id] = peer
        self.count("peers_connected")

    def peer_closed(self, peer: Peer) -> None:
        self._pending.pop(peer, None)
        if self._peers.get(peer.node_id) is peer:
            del self._peers[peer.node_id]

    # -- internals ------------------------------------------------------------------------------------
    def _accept(self) -> Peer:
        return Peer(self, inbound=True)

    async def _keep_connected(self, enode: Enode) -> None:
        delay = self.config.redial_min_s
        while not self._stopping and enode.node_id in self._static:
            try:
                peer = await self.connect(enode)
            except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
                log.info("static peer %s:%s unreachable (%s); retrying in %.0f s", enode.host, enode.port,
                         exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.config.redial_max_s)
                continue
            delay = self.config.redial_min_s
            await peer.closed_event.wait()
            if not self._stopping:
                log.info("static peer %s:%s dropped (%s); redialling", enode.host, enode.port,
                         peer.close_reason)
                await asyncio.sleep(delay)
