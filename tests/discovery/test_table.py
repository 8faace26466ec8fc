"""The Kademlia table: buckets, replacements, revalidation bookkeeping and subnet limits."""

from __future__ import annotations

import random

from pimail.crypto.keys import NodeKey
from pimail.discovery.table import BUCKET_SIZE, Node, Table, log_distance


def _node(ip: str = "127.0.0.1", port: int = 30303) -> Node:
    return Node(NodeKey.generate().public, ip, port, port)


def _same_bucket_nodes(table: Table, count: int, ip_for: object = None) -> list[Node]:
    # nodes at log distance 256 from us: half of all ids land there
    out: list[Node] = []
    while len(out) < count:
        n = _node(ip_for(len(out)) if callable(ip_for) else "127.0.0.1", 40000 + len(out))
        if log_distance(table.self_id, n.node_id) == 256:
            out.append(n)
    return out


def test_bucket_fills_to_16_then_keeps_replacements() -> None:
    table = Table(NodeKey.generate().node_id, rng=random.Random(1))
    nodes = _same_bucket_nodes(table, BUCKET_SIZE + 3)
    added = [table.add_seen(n, 1.0) for n in nodes]
    assert added == [True] * BUCKET_SIZE + [False] * 3
    assert len(table) == BUCKET_SIZE
    victim = table.revalidation_candidate()
    assert victim is not None
    replacement = table.replace(victim)
    assert replacement is not None and replacement in nodes[BUCKET_SIZE:]
    assert victim.node_id not in table and replacement.node_id in table
    assert len(table) == BUCKET_SIZE


def test_verified_nodes_move_to_the_front_and_live_checks_count() -> None:
    table = Table(NodeKey.generate().node_id, rng=random.Random(2))
    a, b = _same_bucket_nodes(table, 2)
    table.add_seen(a, 1.0)
    table.add_seen(b, 1.0)
    table.add_verified(b, 2.0)
    assert next(iter(table.nodes())) is b
    table.mark_live(a)
    assert a.live_checks == 1 and next(iter(table.nodes())) is a


def test_subnet_limits_per_bucket_and_table() -> None:
    table = Table(NodeKey.generate().node_id, rng=random.Random(3))
    nodes = _same_bucket_nodes(table, 5, ip_for=lambda i: f"93.184.216.{10 + i}")
    assert [table.add_seen(n, 1.0) for n in nodes] == [True, True, False, False, False]
    assert table.counters["subnet_limited"] == 3
    # across buckets: at most 10 from one /24 in the whole table
    table2 = Table(NodeKey.generate().node_id)
    many = [_node(f"93.184.217.{i}") for i in range(1, 200)]
    for n in many:
        table2.add_seen(n, 1.0)
    assert len(table2) == 10
    # LAN and loopback are exempt, as in geth
    table3 = Table(NodeKey.generate().node_id)
    for i in range(40):
        table3.add_seen(_node("192.168.1.5", 1000 + i), 1.0)
    assert len(table3) > 10


def test_closest_orders_by_xor_distance() -> None:
    table = Table(NodeKey.generate().node_id)
    nodes = [_node(port=50000 + i) for i in range(100)]
    for n in nodes:
        table.add_seen(n, 1.0)
    target = NodeKey.generate().node_id
    best = table.closest(target, 5)
    t = int.from_bytes(target, "big")
    ranked = sorted(table.nodes(), key=lambda n: int.from_bytes(n.node_id, "big") ^ t)
    assert best == ranked[:5]
    own = Node(b"\x00" * 64, "127.0.0.1", 1, 1)
    table_self = Table(own.node_id)
    assert not table_self.add_seen(own, 1.0)
