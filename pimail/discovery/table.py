"""The Kademlia node table: 256 buckets of 16 entries with replacement lists and subnet limits.

A plain data structure, driven by ``pimail.discovery.service``: it never sends a packet and never
reads a clock except through the times it is given. Entries are kept most-recently-verified first.
A bucket that is full keeps newcomers in its replacement list; when revalidation finds an entry
dead, a random replacement takes its place (geth p2p/discover/table.go).

Subnet limits (geth ``bucketIPLimit``/``tableIPLimit``): at most 2 entries from one /24 in a bucket
and 10 in the whole table, so one operator with a block of addresses cannot fill the table. As in
geth, LAN and loopback addresses are exempt (a home network or a test bed on 127.0.0.1 is not an
eclipse attack).
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from pimail.crypto.keccak import keccak256

ID_BITS = 256
BUCKET_SIZE = 16  # discv4.md k
MAX_REPLACEMENTS = 10  # geth maxReplacements
BUCKET_IP_LIMIT = 2  # geth bucketIPLimit, per /24
TABLE_IP_LIMIT = 10  # geth tableIPLimit, per /24
SUBNET_BITS_V4 = 24  # geth bucketSubnet / tableSubnet
SUBNET_BITS_V6 = 64


@dataclass(eq=False)
class Node:
    """A node the table knows: its key, where it listens, and how it has fared."""

    pubkey: bytes
    ip: str
    udp: int
    tcp: int
    added_at: float = 0.0
    live_checks: int = 0  # revalidations passed
    node_id: bytes = field(init=False)

    def __post_init__(self) -> None:
        self.node_id = keccak256(self.pubkey)

    @property
    def address(self) -> tuple[str, int]:
        return (self.ip, self.udp)

    def enode_url(self) -> str:
        host = f"[{self.ip}]" if ":" in self.ip else self.ip
        suffix = f"?discport={self.udp}" if self.udp != self.tcp else ""
        return f"enode://{self.pubkey.hex()}@{host}:{self.tcp}{suffix}"

    def __repr__(self) -> str:
        return f"Node({self.pubkey[:4].hex()}@{self.ip}:{self.udp})"


def log_distance(a: bytes, b: bytes) -> int:
    """The Kademlia log distance of two node ids: the bit length of their XOR (0 = same id)."""
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).bit_length()


def distance(a: bytes, b: bytes) -> int:
    return int.from_bytes(a, "big") ^ int.from_bytes(b, "big")


def is_lan(ip: str) -> bool:
    """Loopback, private, link-local or unique-local: not subject to the subnet limits."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return addr.is_loopback or addr.is_private or addr.is_link_local


def subnet_of(ip: str) -> str:
    addr = ipaddress.ip_address(ip)
    bits = SUBNET_BITS_V4 if addr.version == 4 else SUBNET_BITS_V6
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


class _SubnetCounter:
    """How many entries each subnet holds, with a limit (LAN addresses never count)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.counts: dict[str, int] = {}

    def try_add(self, ip: str) -> bool:
        if is_lan(ip):
            return True
        net = subnet_of(ip)
        if self.counts.get(net, 0) >= self.limit:
            return False
        self.counts[net] = self.counts.get(net, 0) + 1
        return True

    def remove(self, ip: str) -> None:
        if is_lan(ip):
            return
        net = subnet_of(ip)
        left = self.counts.get(net, 0) - 1
        if left > 0:
            self.counts[net] = left
        else:
            self.counts.pop(net, None)


class _Bucket:
    def __init__(self, ip_limit: int) -> None:
        self.entries: list[Node] = []  # most recently verified first
        self.replacements: list[Node] = []  # newest first
        self.ips = _SubnetCounter(ip_limit)


class Table:
    """The routing table of ``self_id``. ``add_seen`` for nodes heard of, ``add_verified`` for nodes
    that answered; ``revalidation_candidate``/``mark_live``/``replace`` for the revalidation loop."""

    def __init__(
        self,
        self_id: bytes,
        *,
        bucket_size: int = BUCKET_SIZE,
        max_replacements: int = MAX_REPLACEMENTS,
        bucket_ip_limit: int = BUCKET_IP_LIMIT,
        table_ip_limit: int = TABLE_IP_LIMIT,
        rng: random.Random | None = None,
    ) -> None:
        self.self_id = self_id
        self.bucket_size = bucket_size
        self.max_replacements = max_replacements
        self._bucket_ip_limit = bucket_ip_limit
        self._ips = _SubnetCounter(table_ip_limit)
        self._buckets: dict[int, _Bucket] = {}  # index (log distance - 1) → bucket, made on first use
        self._by_id: dict[bytes, Node] = {}
        self._rng = rng or random.Random()
        self.counters: dict[str, int] = {"subnet_limited": 0, "replacements_used": 0}

    # -- reading ------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._by_id)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._by_id

    def get(self, node_id: bytes) -> Node | None:
        return self._by_id.get(node_id)

    def nodes(self) -> Iterator[Node]:
        for index in sorted(self._buckets):
            yield from self._buckets[index].entries

    def replacement_nodes(self) -> Iterator[Node]:
        """The replacement lists of every bucket (nodes heard of while their bucket was full)."""
        for index in sorted(self._buckets):
            yield from self._buckets[index].replacements

    def closest(self, target_id: bytes, count: int = BUCKET_SIZE) -> list[Node]:
        """The ``count`` entries nearest ``target_id`` by XOR distance."""
        t = int.from_bytes(target_id, "big")
        return sorted(self._by_id.values(), key=lambda n: int.from_bytes(n.node_id, "big") ^ t)[:count]

    def random_nodes(self, count: int) -> list[Node]:
        everyone = list(self._by_id.values())
        self._rng.shuffle(everyone)
        return everyone[:count]

    def bucket_sizes(self) -> dict[int, int]:
        return {i + 1: len(b.entries) for i, b in sorted(self._buckets.items()) if b.entries}

    # -- writing ------------------------------------------------------------------------------------
    def add_seen(self, node: Node, now: float) -> bool:
        """A node heard of (Neighbors, bootnode, database): appended if its bucket has room,
        else kept as a replacement. Returns True if it became an entry."""
        return self._add(node, now, front=False)

    def add_verified(self, node: Node, now: float) -> bool:
        """A node that proved its endpoint: moved (or added) to the front of its bucket."""
        existing = self._by_id.get(node.node_id)
        if existing is not None:
            bucket = self._bucket(node.node_id)
            if existing.address != node.address:
                return False  # an address change waits for revalidation of the old one
            bucket.entries.remove(existing)
            bucket.entries.insert(0, existing)
            return True
        return self._add(node, now, front=True)

    def _add(self, node: Node, now: float, *, front: bool) -> bool:
        if node.node_id == self.self_id or node.node_id in self._by_id:
            return False
        bucket = self._bucket(node.node_id)
        if len(bucket.entries) >= self.bucket_size:
            self._add_replacement(bucket, node)
            return False
        if not self._ips.try_add(node.ip):
            self.counters["subnet_limited"] += 1
            return False
        if not bucket.ips.try_add(node.ip):
            self._ips.remove(node.ip)
            self.counters["subnet_limited"] += 1
            return False
        node.added_at = node.added_at or now
        if front:
            bucket.entries.insert(0, node)
        else:
            bucket.entries.append(node)
        self._by_id[node.node_id] = node
        bucket.replacements = [r for r in bucket.replacements if r.node_id != node.node_id]
        return True

    def _add_replacement(self, bucket: _Bucket, node: Node) -> None:
        for r in bucket.replacements:
            if r.node_id == node.node_id:
                return
        bucket.replacements.insert(0, node)
        del bucket.replacements[self.max_replacements:]

    def revalidation_candidate(self) -> Node | None:
        """The least recently verified entry of a random non-empty bucket."""
        filled = [b for b in self._buckets.values() if b.entries]
        if not filled:
            return None
        return self._rng.choice(filled).entries[-1]

    def mark_live(self, node: Node) -> None:
        """``node`` answered a revalidation Ping: count it and move it to the front."""
        bucket = self._bucket(node.node_id)
        if node in bucket.entries:
            node.live_checks += 1
            bucket.entries.remove(node)
            bucket.entries.insert(0, node)

    def replace(self, node: Node) -> Node | None:
        """``node`` failed revalidation: drop it and promote a random replacement (returned)."""
        bucket = self._bucket(node.node_id)
        if node not in bucket.entries:
            return None
        self._remove(bucket, node)
        while bucket.replacements:
            candidate = bucket.replacements.pop(self._rng.randrange(len(bucket.replacements)))
            if candidate.node_id in self._by_id:
                continue
            if self._ips.try_add(candidate.ip):
                if bucket.ips.try_add(candidate.ip):
                    bucket.entries.append(candidate)
                    self._by_id[candidate.node_id] = candidate
                    self.counters["replacements_used"] += 1
                    return candidate
                self._ips.remove(candidate.ip)
        return None

    def delete(self, node_id: bytes) -> None:
        node = self._by_id.get(node_id)
        if node is not None:
            self._remove(self._bucket(node_id), node)

    def _remove(self, bucket: _Bucket, node: Node) -> None:
        bucket.entries.remove(node)
        del self._by_id[node.node_id]
        bucket.ips.remove(node.ip)
        self._ips.remove(node.ip)

    def _bucket(self, node_id: bytes) -> _Bucket:
        index = max(log_distance(self.self_id, node_id), 1) - 1
        bucket = self._buckets.get(index)
        if bucket is None:
            bucket = self._buckets[index] = _Bucket(self._bucket_ip_limit)
        return bucket
