"""The discv4 UDP transport: moves packets, matches replies, proves endpoints, enforces limits.

What arrives goes through, in order: netrestrict, the per-address rate limit (before any signature
work, so a flood from one address costs a dictionary lookup per datagram), size, hash, signature,
expiration, then the handler of its type. Every drop bumps ``counters["dropped_<reason>"]``; nothing
a datagram contains can raise out of ``datagram_received``.

Amplification: Neighbors and ENRResponse (the replies bigger than their request) are sent only to
nodes that proved their endpoint, i.e. answered our Ping from the same IP within
``bond_expiration_s`` (discv4.md "Endpoint Proof"). An unproven endpoint gets one Pong per Ping it
sent, and a Pong is never more than ``PONG_SLACK_BYTES`` larger than that Ping (it must carry the
32-byte ping hash); anything else it asks for is dropped with ``dropped_unbonded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from pimail.config import DiscoveryConfig
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import NodeKey
from pimail.discovery import wire
from pimail.discovery.enr import ENRError, Record
from pimail.discovery.table import BUCKET_SIZE, Node, Table, is_lan

log = logging.getLogger(__name__)

PONG_SLACK_BYTES = 48  # a Pong carries the 32-byte ping hash and our seq instead of version + from
PING_BACK_MIN_INTERVAL_S = 5.0  # at most one unsolicited Ping per endpoint in this time

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

COUNTER_NAMES = (
    "packets_in", "packets_out", "bytes_in", "bytes_out",
    "dropped_netrestrict", "dropped_rate_limited", "dropped_too_large", "dropped_too_small",
    "dropped_bad_hash", "dropped_bad_signature", "dropped_unknown_type", "dropped_malformed",
    "dropped_expired", "dropped_unsolicited", "dropped_unbonded", "dropped_self",
    "neighbors_outside_netrestrict", "neighbors_unusable", "send_failed",
)


def parse_netrestrict(cidrs: Sequence[str]) -> list[Network]:
    """CIDR strings → networks (``ValueError`` names the bad one)."""
    out: list[Network] = []
    for text in cidrs:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"netrestrict: not a CIDR network: {text!r}") from None
    return out


def allowed(ip: str, netrestrict: Sequence[Network]) -> bool:
    """True when ``ip`` is inside one of ``netrestrict`` (or there is no restriction)."""
    if not netrestrict:
        return True
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(addr in net for net in netrestrict)


def relay_ok(sender_ip: str, ip: str) -> bool:
    """May a node at ``ip`` be told to ``sender_ip``? (geth netutil.CheckRelayIP, simplified.)"""
    try:
        addr = ipaddress.ip_address(ip)
        sender = ipaddress.ip_address(sender_ip)
    except ValueError:
        return False
    if addr.is_unspecified or addr.is_multicast:
        return False
    if addr.is_loopback and not sender.is_loopback:
        return False
    return not (is_lan(ip) and not is_lan(sender_ip))


@dataclass
class _TokenBucket:
    tokens: float
    stamp: float


@dataclass
class _Pending:
    node_id: bytes
    ptype: int
    ip: str
    match: Callable[[wire.Packet], bool]  # True when this reply completes the request
    future: asyncio.Future[None]


class ExternalAddress:
    """Our public IP as other nodes see it: the address most Pongs' ``to`` agree on."""

    def __init__(self, votes_needed: int, max_voters: int = 32) -> None:
        self.votes_needed = votes_needed
        self._votes: OrderedDict[bytes, str] = OrderedDict()
        self._max = max_voters

    def vote(self, voter_id: bytes, ip: str) -> None:
        if not ip:
            return
        self._votes.pop(voter_id, None)
        self._votes[voter_id] = ip
        while len(self._votes) > self._max:
            self._votes.popitem(last=False)

    @property
    def ip(self) -> str:
        tally: dict[str, int] = {}
        for ip in self._votes.values():
            tally[ip] = tally.get(ip, 0) + 1
        if not tally:
            return ""
        best, count = max(tally.items(), key=lambda kv: kv[1])
        return best if count >= self.votes_needed else ""


class UDPTransport(asyncio.DatagramProtocol):
    """One discv4 UDP socket. ``ping``/``findnode``/``request_enr`` are the outgoing requests;
    incoming packets are answered from ``table`` and the local ``record()``."""

    def __init__(
        self,
        key: NodeKey,
        config: DiscoveryConfig,
        table: Table,
        record: Callable[[], Record],
        *,
        netrestrict: Sequence[Network] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key = key
        self.config = config
        self.table = table
        self._record = record
        self.netrestrict = list(netrestrict)
        self._clock = clock
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.external = ExternalAddress(config.external_ip_votes)
        self._transport: asyncio.DatagramTransport | None = None
        self._rate: OrderedDict[tuple[str, int], _TokenBucket] = OrderedDict()
        self._last_pong: OrderedDict[bytes, tuple[float, str]] = OrderedDict()  # they answered our ping
        self._last_ping: OrderedDict[bytes, float] = OrderedDict()  # they pinged us
        self._pinged_back: OrderedDict[tuple[str, int], float] = OrderedDict()
        self._ping_events: dict[bytes, asyncio.Event] = {}
        self._pending: dict[tuple[bytes, int], list[_Pending]] = {}
        self.on_verified: Callable[[Node], None] | None = None  # a node proved its endpoint

    # -- socket ---------------------------------------------------------------------------------------
    async def start(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(host, port))
        self._transport = transport
        return int(transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for waiters in self._pending.values():
            for p in waiters:
                if not p.future.done():
                    p.future.cancel()
        self._pending.clear()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # a datagram endpoint's transport

    def error_received(self, exc: Exception) -> None:
        self.counters["send_failed"] += 1
        log.debug("discovery socket error: %s", exc)

    # -- bonding state ----------------------------------------------------------------------------
    def _remember(self, table: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        table.pop(key, None)
        table[key] = value
        while len(table) > self.config.max_addresses:
            table.popitem(last=False)

    def verified(self, node_id: bytes, ip: str) -> bool:
        """Did ``node_id`` answer our Ping from ``ip`` within the bond lifetime?"""
        entry = self._last_pong.get(node_id)
        if entry is None or entry[1] != ip:
            return False
        return self._clock() - entry[0] < self.config.bond_expiration_s

    def verified_count(self) -> int:
        """How many nodes answered our Ping within the bond lifetime (of the last ``max_addresses``)."""
        since = self._clock() - self.config.bond_expiration_s
        return sum(1 for stamp, _ip in self._last_pong.values() if stamp > since)

    def pinged_us_recently(self, node_id: bytes) -> bool:
        stamp = self._last_ping.get(node_id)
        return stamp is not None and self._clock() - stamp < self.config.bond_expiration_s

    def last_pong(self, node_id: bytes) -> float:
        entry = self._last_pong.get(node_id)
        return entry[0] if entry else 0.0

    # -- sending ------------------------------------------------------------------------------------
    def _send(self, address: tuple[str, int], packet: wire.Packet) -> tuple[bytes, int]:
        datagram, digest = wire.encode(self.key.private, packet)
        if self._transport is None:
            raise ConnectionError("discovery socket closed")
        self._transport.sendto(datagram, address)
        self.counters["packets_out"] += 1
        self.counters["bytes_out"] += len(datagram)
        return digest, len(datagram)

    def _expiration(self) -> int:
        return int(self._clock()) + wire.EXPIRATION_S

    def _endpoint(self) -> wire.Endpoint:
        rec = self._record()
        return wire.Endpoint(rec.ip, rec.udp, rec.tcp)

    def _expect(self, node: Node, ptype: int, match: Callable[[wire.Packet], bool]) -> _Pending:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        pending = _Pending(node.node_id, ptype, node.ip, match, fut)
        self._pending.setdefault((node.node_id, ptype), []).append(pending)
        return pending

    def _forget(self, pending: _Pending) -> None:
        key = (pending.node_id, pending.ptype)
        waiters = self._pending.get(key)
        if waiters and pending in waiters:
            waiters.remove(pending)
            if not waiters:
                del self._pending[key]

    async def _request(self, node: Node, packet: wire.Packet, reply_type: int,
                       match: Callable[[bytes], Callable[[wire.Packet], bool]]) -> None:
        if not allowed(node.ip, self.netrestrict):
            raise ConnectionError(f"{node.ip} is outside netrestrict")
        holder: dict[str, bytes] = {}
        pending = self._expect(node, reply_type, lambda p: match(holder["hash"])(p))
        try:
            holder["hash"], _ = self._send(node.address, packet)
            await asyncio.wait_for(asyncio.shield(pending.future), self.config.request_timeout_s)
        finally:
            self._forget(pending)

    async def ping(self, node: Node) -> wire.Pong:
        """Ping ``node`` and return its Pong (``TimeoutError`` if none within the timeout)."""
        got: list[wire.Pong] = []
        to = wire.Endpoint(node.ip, node.udp, node.tcp)
        seq = self._record().seq
        packet = wire.Ping(wire.PROTOCOL_VERSION, self._endpoint(), to, self._expiration(), seq)

        def match(ping_hash: bytes) -> Callable[[wire.Packet], bool]:
            def check(p: wire.Packet) -> bool:
                if isinstance(p, wire.Pong) and p.ping_hash == ping_hash:
                    got.append(p)
                    return True
                return False
            return check

        await self._request(node, packet, wire.PONG, match)
        return got[0]

    async def ensure_bond(self, node: Node) -> None:
        """Make sure ``node`` will answer our FindNode: ping it unless it answered recently, then
        give it ``bond_wait_s`` to ping us back (geth's order; it verifies us with that Ping)."""
        if self.verified(node.node_id, node.ip) and self.pinged_us_recently(node.node_id):
            return
        if not self.verified(node.node_id, node.ip):
            await self.ping(node)
        if not self.pinged_us_recently(node.node_id):
            event = self._ping_events.setdefault(node.node_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), self.config.bond_wait_s)
            except TimeoutError:
                pass
            finally:
                self._ping_events.pop(node.node_id, None)

    async def findnode(self, node: Node, target: bytes) -> list[Node]:
        """Ask ``node`` for the nodes closest to ``target`` (64-byte key); up to 16 usable nodes."""
        await self.ensure_bond(node)
        found: list[Node] = []
        received = [0]

        def match(_hash: bytes) -> Callable[[wire.Packet], bool]:
            def check(p: wire.Packet) -> bool:
                if not isinstance(p, wire.Neighbors):
                    return False
                for info in p.nodes:
                    received[0] += 1
                    usable = self._usable(node.ip, info)
                    if usable is not None:
                        found.append(usable)
                return received[0] >= BUCKET_SIZE
            return check

        packet = wire.FindNode(target, self._expiration())
        try:
            await self._request(node, packet, wire.NEIGHBORS, match)
        except TimeoutError:
            if not found:
                raise
        return found

    async def request_enr(self, node: Node) -> Record:
        """Fetch ``node``'s record (EIP-868); ``ENRError`` if it is not signed by that node."""
        await self.ensure_bond(node)
        got: list[bytes] = []

        def match(request_hash: bytes) -> Callable[[wire.Packet], bool]:
            def check(p: wire.Packet) -> bool:
                if isinstance(p, wire.ENRResponse) and p.request_hash == request_hash:
                    got.append(p.record)
                    return True
                return False
            return check

        await self._request(node, wire.ENRRequest(self._expiration()), wire.ENR_RESPONSE, match)
        record = Record.decode(got[0])
        if record.node_id != node.node_id:
            raise ENRError("record is signed by another node")
        return record

    def _usable(self, sender_ip: str, info: wire.NodeInfo) -> Node | None:
        if not allowed(info.ip, self.netrestrict):
            self.counters["neighbors_outside_netrestrict"] += 1
            return None
        if info.udp == 0 or not relay_ok(sender_ip, info.ip):
            self.counters["neighbors_unusable"] += 1
            return None
        node = Node(info.pubkey, info.ip, info.udp, info.tcp)
        if node.node_id == self.key.node_id:
            return None
        return node

    # -- receiving ----------------------------------------------------------------------------------
    def _drop(self, reason: str) -> None:
        self.counters[f"dropped_{reason}"] = self.counters.get(f"dropped_{reason}", 0) + 1

    def _rate_ok(self, address: tuple[str, int], now: float) -> bool:
        bucket = self._rate.get(address)
        burst = float(self.config.packet_burst)
        if bucket is None:
            bucket = _TokenBucket(burst, now)
        else:
            bucket.tokens = min(burst, bucket.tokens + (now - bucket.stamp) * self.config.packets_per_s)
            bucket.stamp = now
        self._remember(self._rate, address, bucket)
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        try:
            self._receive(data, (str(addr[0]), int(addr[1])))
        except Exception:  # a bug in a handler must not take the socket down
            self._drop("internal_error")
            log.exception("discovery: packet from %s:%s", addr[0], addr[1])

    def _receive(self, data: bytes, address: tuple[str, int]) -> None:
        self.counters["packets_in"] += 1
        self.counters["bytes_in"] += len(data)
        ip = address[0]
        if not allowed(ip, self.netrestrict):
            self._drop("netrestrict")
            return
        now = self._clock()
        if not self._rate_ok(address, time.monotonic()):
            self._drop("rate_limited")
            return
        try:
            decoded = wire.decode(data)
        except wire.WireError as exc:
            self._drop(exc.reason)
            log.debug("discovery: dropped packet from %s:%d: %s", ip, address[1], exc)
            return
        packet = decoded.packet
        if keccak_id(decoded.sender_pubkey) == self.key.node_id:
            self._drop("self")
            return
        expiration = getattr(packet, "expiration", None)
        if expiration is not None and wire.expired(expiration, now):
            self._drop("expired")
            return
        if isinstance(packet, wire.Ping):
            self._on_ping(decoded, packet, address, len(data))
        elif isinstance(packet, wire.FindNode):
            self._on_findnode(decoded, packet, address)
        elif isinstance(packet, wire.ENRRequest):
            self._on_enr_request(decoded, address)
        else:
            self._on_reply(decoded, address)

    def _on_reply(self, decoded: wire.Decoded, address: tuple[str, int]) -> None:
        node_id = keccak_id(decoded.sender_pubkey)
        packet = decoded.packet
        waiters = self._pending.get((node_id, packet.type), [])
        for pending in list(waiters):
            if pending.ip != address[0] or pending.future.done():
                continue
            if pending.match(packet):
                pending.future.set_result(None)
                if isinstance(packet, wire.Pong):
                    self._pong_verified(decoded, packet, address)
                return
            if isinstance(packet, wire.Neighbors):
                return  # part of a multi-packet reply, taken into the request's list
        self._drop("unsolicited")

    def _pong_verified(self, decoded: wire.Decoded, pong: wire.Pong, address: tuple[str, int]) -> None:
        node_id = keccak_id(decoded.sender_pubkey)
        self._remember(self._last_pong, node_id, (self._clock(), address[0]))
        self.external.vote(node_id, pong.recipient.ip)
        if self.on_verified is not None:
            existing = self.table.get(node_id)
            tcp = existing.tcp if existing is not None else address[1]
            self.on_verified(Node(decoded.sender_pubkey, address[0], address[1], tcp))

    def _on_ping(self, decoded: wire.Decoded, ping: wire.Ping, address: tuple[str, int], size: int) -> None:
        node_id = keccak_id(decoded.sender_pubkey)
        to = wire.Endpoint(address[0], address[1], ping.sender.tcp)
        pong = wire.Pong(to, decoded.hash, self._expiration(), self._record().seq)
        bonded = self.verified(node_id, address[0])
        if not bonded:
            datagram_len = len(wire.encode(self.key.private, pong)[0])
            if datagram_len > size + PONG_SLACK_BYTES:
                self._drop("unbonded")
                return
        self._send(address, pong)
        self._remember(self._last_ping, node_id, self._clock())
        event = self._ping_events.get(node_id)
        if event is not None:
            event.set()
        tcp = ping.sender.tcp or address[1]
        node = Node(decoded.sender_pubkey, address[0], address[1], tcp)
        if bonded:
            if self.on_verified is not None:
                self.on_verified(node)
            return
        last = self._pinged_back.get(address)
        if last is not None and time.monotonic() - last < PING_BACK_MIN_INTERVAL_S:
            return
        self._remember(self._pinged_back, address, time.monotonic())
        asyncio.get_running_loop().create_task(self._ping_back(node))

    async def _ping_back(self, node: Node) -> None:
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await self.ping(node)  # the Pong makes it verified (on_verified)

    def _on_findnode(self, decoded: wire.Decoded, packet: wire.FindNode, address: tuple[str, int]) -> None:
        node_id = keccak_id(decoded.sender_pubkey)
        if not self.verified(node_id, address[0]):
            self._drop("unbonded")
            return
        target = keccak_id(packet.target)
        nodes = [n for n in self.table.closest(target, BUCKET_SIZE)
                 if n.node_id != node_id and relay_ok(address[0], n.ip)]
        expiration = self._expiration()
        infos = [wire.NodeInfo(n.ip, n.udp, n.tcp, n.pubkey) for n in nodes]
        for start in range(0, len(infos), wire.MAX_NEIGHBORS):
            self._send(address, wire.Neighbors(tuple(infos[start:start + wire.MAX_NEIGHBORS]), expiration))
        if not infos:
            self._send(address, wire.Neighbors((), expiration))

    def _on_enr_request(self, decoded: wire.Decoded, address: tuple[str, int]) -> None:
        node_id = keccak_id(decoded.sender_pubkey)
        if not self.verified(node_id, address[0]):
            self._drop("unbonded")
            return
        self._send(address, wire.ENRResponse(decoded.hash, self._record().encode()))


def keccak_id(pubkey: bytes) -> bytes:
    return keccak256(pubkey)
