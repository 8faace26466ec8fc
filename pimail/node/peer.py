"""One RLPx/devp2p connection as an asyncio protocol: the I/O glue around the sans-I/O layers.

``Peer`` moves bytes between its transport and an RLPx handshake object, then a ``P2PSession``.
Once both Hellos are exchanged it is handed to the registered capabilities (``PeerLike``).
Inbound messages go through a bounded per-peer queue handled in order by one task; when the queue
is full the socket stops being read (TCP backpressure towards the peer). Outbound bytes go through
the transport, whose write buffer is capped by high-water marks: ``send`` refuses when it is
full, ``send_wait`` waits for it to drain.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from pimail.config import NodeConfig
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import NodeKey
from pimail.devp2p.capabilities import CapabilitySpec
from pimail.devp2p.messages import DisconnectReason, Hello
from pimail.devp2p.session import (
    DisconnectReceived,
    Event,
    HelloReceived,
    MessageReceived,
    P2PSession,
    PongReceived,
    SessionError,
    SessionState,
)
from pimail.node.capability import Capability, ProtocolError
from pimail.rlpx.frame import FrameCodec
from pimail.rlpx.handshake import HandshakeError, Initiator, Recipient, Secrets

log = logging.getLogger(__name__)

INBOUND_QUEUE_MESSAGES = 256  # messages queued for the handlers before we stop reading the socket
INBOUND_QUEUE_BYTES = 8 * 1024 * 1024  # … or this many payload bytes, whichever comes first
DISCONNECT_GRACE_S = 2.0  # devp2p: give the peer ~2 s to read our Disconnect before we cut the link


class PeerHost(Protocol):
    """What a Peer needs from its server (implemented by ``NodeServer``)."""

    key: NodeKey
    config: NodeConfig
    counters: dict[str, int]

    def count(self, name: str) -> None: ...

    def local_hello(self) -> Hello: ...

    def capability_specs(self) -> Sequence[CapabilitySpec]: ...

    def capability(self, name: str) -> Capability: ...

    def accept_pending(self, peer: Peer) -> bool: ...

    def admit(self, peer: Peer) -> DisconnectReason | None: ...

    def handshake_finished(self, peer: Peer) -> None: ...

    def peer_closed(self, peer: Peer) -> None: ...


@dataclass
class TrafficStats:
    """Per-peer counters (for the status page and metrics)."""

    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    dropped_sends: int = 0  # send() refused because the write buffer was full
    pings_out: int = 0
    pongs_in: int = 0
    connected_at: float = 0.0


class PeerDisconnected(ConnectionError):
    """The connection ended before or during the devp2p handshake (for ``NodeServer.connect``)."""


class Peer(asyncio.Protocol):
    """A connection to one remote node; implements ``PeerLike`` once the handshake is done."""

    def __init__(self, host: PeerHost, *, inbound: bool, remote_pubkey: bytes | None = None,
                 eip8: bool = True) -> None:
        self._host = host
        self._config = host.config
        self._inbound = inbound
        self._pubkey = remote_pubkey or b""
        self._node_id = keccak256(remote_pubkey) if remote_pubkey else b""
        self._handshake: Initiator | Recipient
        if inbound:
            self._handshake = Recipient(host.key)
        else:
            assert remote_pubkey is not None
            self._handshake = Initiator(host.key, remote_pubkey, eip8=eip8)
        self._transport: asyncio.Transport | None = None
        self.session: P2PSession | None = None
        self.remote_hello: Hello | None = None
        self._remote_address: tuple[str, int] = ("", 0)
        self._closed = False
        self._active = False  # handed to the capabilities
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[Peer] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._last_rx = time.monotonic()
        self._queue: collections.deque[tuple[str, int, bytes]] = collections.deque()
        self._queue_event = asyncio.Event()
        self._queued_bytes = 0
        self._reading_paused = False
        self._write_blocked_since: float | None = None
        self._write_ok = asyncio.Event()
        self._write_ok.set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._started_caps: list[Capability] = []
        self.traffic = TrafficStats()
        self.close_reason: str = ""
        self.closed_event = asyncio.Event()
        self._pong = asyncio.Event()  # set at every Pong (round_trip)

    # -- PeerLike ---------------------------------------------------------------------------------
    @property
    def pubkey(self) -> bytes:
        return self._pubkey

    @property
    def node_id(self) -> bytes:
        return self._node_id

    @property
    def client_id(self) -> str:
        return self.remote_hello.client_id if self.remote_hello else ""

    @property
    def remote_address(self) -> tuple[str, int]:
        return self._remote_address

    @property
    def inbound(self) -> bool:
        return self._inbound

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def active(self) -> bool:
        """Both Hellos exchanged and admitted by the server."""
        return self._active and not self._closed

    @property
    def write_backlog(self) -> int:
        """Bytes queued for this peer that its socket has not taken yet."""
        transport = self._transport
        return 0 if transport is None else int(transport.get_write_buffer_size())

    def send(self, capability: str, code: int, payload: bytes) -> bool:
        """Queue a message; False (and the message dropped) if the peer is closed or its buffer is full."""
        transport = self._transport
        if self._closed or transport is None or not self._active or transport.is_closing():
            return False
        if transport.get_write_buffer_size() >= self._config.write_buffer_bytes:
            self.traffic.dropped_sends += 1
            return False
        self._send(capability, code, payload)
        return True

    async def send_wait(self, capability: str, code: int, payload: bytes) -> None:
        """Queue a message, waiting while the write buffer is above its high-water mark.

        Raises ``PeerDisconnected`` if the peer is (or gets) closed.
        """
        while not self._write_ok.is_set() and not self._closed:
            await self._write_ok.wait()
        if self._closed or self._transport is None or not self._active:
            raise PeerDisconnected(f"peer {self} is closed")
        self._send(capability, code, payload)

    def _send(self, capability: str, code: int, payload: bytes) -> None:
        session = self.session
        assert session is not None
        session.send_message(capability, code, payload)
        self.traffic.messages_out += 1
        self._flush()

    async def round_trip(self, timeout: float) -> bool:
        """Send a devp2p Ping now and wait for a Pong; False if none came within ``timeout``.

        The remote answers only once it has read everything sent before the Ping (devp2p messages
        are read in order; go-ethereum hands each to its protocol before reading the next), so a
        client tool learns that what it sent was taken even from a peer that sends no acks."""
        session = self.session
        if self._closed or session is None or not self._active:
            raise PeerDisconnected(f"peer {self} is closed")
        wanted = self.traffic.pongs_in + 1
        session.ping()
        self.traffic.pings_out += 1
        self._flush()
        deadline = time.monotonic() + timeout
        while self.traffic.pongs_in < wanted:
            self._pong.clear()
            pong = asyncio.ensure_future(self._pong.wait())
            closed = asyncio.ensure_future(self.closed_event.wait())
            try:
                await asyncio.wait({pong, closed}, timeout=max(0.0, deadline - time.monotonic()),
                                   return_when=asyncio.FIRST_COMPLETED)
            finally:
                pong.cancel()
                closed.cancel()
            if self.traffic.pongs_in >= wanted:
                break
            if self._closed:
                raise PeerDisconnected(f"peer {self} closed before its Pong")
            if time.monotonic() >= deadline:
                return False
        return True

    def disconnect(self, reason: DisconnectReason) -> None:
        """Send Disconnect with ``reason`` (if the session is up) and close."""
        if self._closed:
            return
        self.close_reason = f"we disconnected: {reason.name.lower()}"
        session = self.session
        if session is not None and session.state is not SessionState.CLOSED:
            session.disconnect(reason)
            self._flush()
        self._close_transport(graceful=True)

    @property
    def capabilities(self) -> list[tuple[str, int]]:
        """Capabilities shared with this peer, e.g. ``[("shh", 6)]``."""
        if self.session is None:
            return []
        return [(s.spec.name, s.spec.version) for s in self.session.shared]

    @property
    def dispatcher(self) -> asyncio.Task[None] | None:
        """The task running this peer's capability handlers (None before the Hello exchange)."""
        return self._dispatcher

    @property
    def connected_at(self) -> float:
        return self.traffic.connected_at

    def stats(self) -> dict[str, int]:
        """Traffic counters as a dict (status page, metrics)."""
        t = self.traffic
        return {"bytes_in": t.bytes_in, "bytes_out": t.bytes_out, "messages_in": t.messages_in,
                "messages_out": t.messages_out, "dropped_sends": t.dropped_sends, "pings_out": t.pings_out,
                "pongs_in": t.pongs_in}

    def __repr__(self) -> str:
        ident = self._pubkey[:4].hex() if self._pubkey else "?"
        host, port = self._remote_address
        return f"<Peer {ident} {host}:{port} {'in' if self._inbound else 'out'}>"

    @property
    def auth_received(self) -> bool:
        """True once the RLPx auth/ack exchange completed (the session exists)."""
        return self.session is not None

    def evict(self, message: str) -> None:
        """Drop a connection still in the RLPx handshake (the host needs its slot); never raises."""
        if not self._closed:
            self._fail(message, "pending_evicted")

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        if not self._host.accept_pending(self):
            self.close_reason = "too many pending handshakes"
            self._closed = True
            self._transport.abort()
            return
        high = max(self._config.write_buffer_bytes, 64 * 1024)
        self._transport.set_write_buffer_limits(high=high, low=high // 2)
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and len(peername) >= 2:
            self._remote_address = (str(peername[0]), int(peername[1]))
        self.traffic.connected_at = time.time()
        self._timer = self._loop.call_later(self._config.handshake_timeout_s, self._handshake_timeout)
        if isinstance(self._handshake, Initiator):
            try:
                self._write(self._handshake.auth_packet())
            except Exception as exc:  # e.g. an unusable remote key
                self._fail(f"cannot build auth: {exc}", "handshake_failed")

    def data_received(self, data: bytes) -> None:
        if self._closed:
            return
        self._last_rx = time.monotonic()
        self.traffic.bytes_in += len(data)
        try:
            if self.session is None:
                self._handshake_data(data)
            else:
                self._session_data(data)
        except SessionError as exc:
            self._host.count(exc.counter)
            self._fail(str(exc), exc.counter, exc.reason)
        except HandshakeError as exc:
            self._host.count(exc.counter)
            self._fail(str(exc), exc.counter)
        except Exception as exc:
            log.exception("internal error on %r", self)
            self._host.count("internal_error")
            self._fail(f"internal error: {exc}", "internal_error")

    def eof_received(self) -> bool | None:
        self.close_reason = self.close_reason or "remote closed the connection"
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        if not self.close_reason:
            self.close_reason = f"connection lost: {exc}" if exc else "connection closed"
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write_ok.set()
        self._queue_event.set()
        if not self.ready.done():
            self.ready.set_exception(PeerDisconnected(self.close_reason))
            self.ready.exception()  # mark retrieved: nobody may be waiting (inbound)
        if self._active:
            log.info("peer %s (%s) gone: %s", self._pubkey[:4].hex(), self.client_id, self.close_reason)
        if self._dispatcher is None:
            self._stop_capabilities()
        self._host.peer_closed(self)
        self.closed_event.set()

    def pause_writing(self) -> None:
        self._write_ok.clear()
        self._write_blocked_since = time.monotonic()

    def resume_writing(self) -> None:
        self._write_ok.set()
        self._write_blocked_since = None

    # -- internals --------------------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if data and self._transport is not None and not self._transport.is_closing():
            self.traffic.bytes_out += len(data)
            self._transport.write(data)

    def _flush(self) -> None:
        if self.session is not None:
            self._write(self.session.data_to_send())

    def _close_transport(self, *, graceful: bool) -> None:
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._write_ok.set()
        self._queue_event.set()
        transport = self._transport
        if transport is None:
            return
        if not graceful:
            transport.abort()
            return
        transport.close()  # flushes what is buffered (our Disconnect) first
        if transport.get_write_buffer_size() > 0:
            self._loop.call_later(DISCONNECT_GRACE_S, transport.abort)

    def _fail(self, message: str, counter: str, reason: DisconnectReason | None = None) -> None:
        """Close after a protocol failure; never raises."""
        level = logging.INFO if self._active else logging.DEBUG
        log.log(level, "dropping %r: %s", self, message)
        self.close_reason = message
        if reason is not None and self.session is not None and self.session.state is not SessionState.CLOSED:
            self.session.disconnect(reason)
            self._flush()
            self._close_transport(graceful=True)
        else:
            if self.session is not None:
                self.session.close()
            self._close_transport(graceful=False)

    def _handshake_timeout(self) -> None:
        self._timer = None
        if self._closed:
            return
        self._host.count("handshake_timeout")
        stage = "RLPx auth" if self.session is None else "Hello"
        self._fail(f"no {stage} within {self._config.handshake_timeout_s:g} s", "handshake_timeout",
                   DisconnectReason.READ_TIMEOUT if self.session is not None else None)

    def _handshake_data(self, data: bytes) -> None:
        hs = self._handshake
        if isinstance(hs, Recipient):
            ack = hs.receive(data)
            if ack is None:
                return
            self._write(ack)
            secrets = hs.secrets
        else:
            secrets = hs.receive(data)
            if secrets is None:
                return
        assert secrets is not None
        self._start_session(secrets)
        leftover = hs.leftover
        if leftover:
            self._session_data(leftover)

    def _start_session(self, secrets: Secrets) -> None:
        self._pubkey = secrets.remote_pubkey
        self._node_id = keccak256(self._pubkey)
        codec = FrameCodec(secrets, self._config.max_frame_bytes)
        host = self._host
        self.session = P2PSession(codec, host.local_hello(), host.capability_specs(), self._pubkey)
        self._flush()

    def _session_data(self, data: bytes) -> None:
        session = self.session
        assert session is not None
        events = session.receive_data(data)
        if events:
            for event in events:
                self._event(event)
                if self._closed:
                    break
        self._flush()

    def _event(self, event: Event) -> None:
        if isinstance(event, MessageReceived):
            self.traffic.messages_in += 1
            self._queue.append((event.capability, event.code, event.payload))
            self._queued_bytes += len(event.payload)
            self._queue_event.set()
            full = len(self._queue) >= INBOUND_QUEUE_MESSAGES or self._queued_bytes >= INBOUND_QUEUE_BYTES
            if full and not self._reading_paused and self._transport:
                self._reading_paused = True
                self._transport.pause_reading()
        elif isinstance(event, PongReceived):
            self.traffic.pongs_in += 1
            self._pong.set()
        elif isinstance(event, HelloReceived):
            self._hello(event)
        elif isinstance(event, DisconnectReceived):
            self.close_reason = f"peer disconnected: {event.reason_name}"
            log.log(logging.INFO if self._active else logging.DEBUG, "%r %s", self, self.close_reason)
            self._host.count("disconnects_received")
            self._close_transport(graceful=True)

    def _hello(self, event: HelloReceived) -> None:
        self.remote_hello = event.hello
        reason = self._host.admit(self)
        if reason is not None:
            self._fail(f"refused after Hello: {reason.name.lower()}", reason.name.lower(), reason)
            return
        self._host.handshake_finished(self)
        self._active = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_later(self._config.ping_interval_s, self._keepalive)
        # the same 8 hex digits as every other log line naming a peer (``<id>@host:port``)
        log.info("peer %s connected (%s, %s, %s)", self._pubkey[:4].hex(), event.hello.client_id,
                 "inbound" if self._inbound else "outbound",
                 ", ".join(f"{s.spec.name}/{s.spec.version}" for s in event.shared))
        self._dispatcher = self._loop.create_task(self._dispatch(), name=f"peer-{self._pubkey[:4].hex()}")
        self.ready.set_result(self)

    def _keepalive(self) -> None:
        self._timer = None
        if self._closed or self.session is None:
            return
        now = time.monotonic()
        blocked = self._write_blocked_since
        if blocked is not None and now - blocked >= self._config.idle_timeout_s:
            # geth's frameWriteTimeout: a peer that stops reading must not pin our buffers forever
            self._host.count("write_timeout")
            self._fail(f"not reading our data for {now - blocked:.0f} s", "write_timeout")
            return
        silent = now - self._last_rx
        if silent >= self._config.idle_timeout_s:
            self._host.count("read_timeout")
            self._fail(f"silent for {silent:.0f} s", "read_timeout", DisconnectReason.READ_TIMEOUT)
            return
        self.session.ping()
        self.traffic.pings_out += 1
        self._flush()
        delay = min(self._config.ping_interval_s, max(0.05, self._config.idle_timeout_s - silent))
        self._timer = self._loop.call_later(delay, self._keepalive)

    async def _dispatch(self) -> None:
        try:
            assert self.session is not None
            for shared in self.session.shared:
                cap = self._host.capability(shared.spec.name)
                self._started_caps.append(cap)
                await self._guarded(cap.peer_started(self))
            queue = self._queue
            while not self._closed:
                if not queue:
                    self._queue_event.clear()
                    await self._queue_event.wait()
                    continue
                name, code, payload = queue.popleft()
                self._queued_bytes -= len(payload)
                if (self._reading_paused and self._transport and len(queue) < INBOUND_QUEUE_MESSAGES // 2
                        and self._queued_bytes < INBOUND_QUEUE_BYTES // 2):
                    self._reading_paused = False
                    self._transport.resume_reading()
                await self._guarded(self._host.capability(name).handle_message(self, code, payload))
        except ProtocolError as exc:
            self._host.count("subprotocol_error")
            self._fail(str(exc), "subprotocol_error", exc.reason)
        except PeerDisconnected:
            pass  # this peer closed under a handler's feet
        except asyncio.CancelledError:
            self._fail("stopped", "stopped")
            raise
        except Exception as exc:
            log.exception("capability handler failed for %r", self)
            self._host.count("handler_error")
            self._fail(f"handler error: {exc}", "handler_error", DisconnectReason.SUBPROTOCOL_ERROR)
        finally:
            self._stop_capabilities()

    async def _guarded(self, call: Awaitable[None]) -> None:
        """Run a handler; a closed *other* peer it tried to send to is not this peer's fault."""
        try:
            await call
        except PeerDisconnected:
            if self._closed:
                raise
            log.debug("a handler for %r tried to send to a closed peer", self)

    def _stop_capabilities(self) -> None:
        caps, self._started_caps = self._started_caps, []
        for cap in caps:
            try:
                cap.peer_stopped(self)
            except Exception:
                log.exception("peer_stopped of %s failed for %r", cap.name, self)
