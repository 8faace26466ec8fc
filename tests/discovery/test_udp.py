"""The UDP transport on 127.0.0.1: answers, endpoint proof, and every bad input dropped by name.

Each bad datagram must bump its ``dropped_*`` counter, get no answer, and leave the node working
(an exception escaping into the loop fails the test through the conftest runner).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from pimail import rlpcodec
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import NodeKey
from pimail.discovery import wire
from pimail.discovery.service import Discovery
from pimail.discovery.table import Node
from pimail.discovery.udp import PONG_SLACK_BYTES
from tests.discovery.helpers import RawEndpoint, fast_discovery_config, start_discovery, wait_until
from tests.node.helpers import running_node


def _exp() -> int:
    return int(time.time()) + 20


async def test_ping_is_answered_with_a_pong_no_bigger_than_allowed_and_a_ping_back() -> None:
    d = await start_discovery()
    raw = await RawEndpoint.open()
    try:
        ping_hash = raw.ping(d.udp_port)
        await raw.wait_for(lambda: len(raw.received) >= 2)
        got = {type(x.packet): x for x in raw.decoded()}
        pong = got[wire.Pong].packet
        assert isinstance(pong, wire.Pong) and pong.ping_hash == ping_hash
        assert pong.recipient == wire.Endpoint("127.0.0.1", raw.port, raw.port)
        assert wire.Ping in got  # the ping back that asks us for the endpoint proof
        me = wire.Endpoint("127.0.0.1", raw.port, raw.port)
        ours = wire.Ping(4, me, wire.Endpoint("127.0.0.1", d.udp_port, 0), _exp(), 1)
        ping_len = len(wire.encode(raw.key.private, ours)[0])
        assert all(len(r) <= ping_len + PONG_SLACK_BYTES for r in raw.received)
    finally:
        raw.close()
        await d.stop()


def _truncations(raw: RawEndpoint) -> list[bytes]:
    me = wire.Endpoint("127.0.0.1", raw.port, raw.port)
    packets: list[wire.Packet] = [
        wire.Ping(4, me, me, _exp(), 1), wire.Pong(me, b"\x01" * 32, _exp(), 1),
        wire.FindNode(raw.key.public, _exp()), wire.Neighbors((), _exp()), wire.ENRRequest(_exp()),
        wire.ENRResponse(b"\x02" * 32, rlpcodec.encode([b"\x00" * 64, 1])),
    ]
    out = []
    for p in packets:
        datagram, _ = wire.encode(raw.key.private, p)
        out.append(datagram[: len(datagram) - 3])  # hash no longer matches
        body = datagram[wire.HEAD_SIZE:][:-3]  # re-signed, so only the RLP is wrong
        sig = raw.key.sign(keccak256(body))
        out.append(keccak256(sig + body) + sig + body)
    return out


async def test_bad_datagrams_are_dropped_by_reason_and_never_answered() -> None:
    d = await start_discovery()
    raw = await RawEndpoint.open()
    counters = d.transport.counters
    try:
        port = d.udp_port
        cases: list[tuple[str, bytes]] = []
        for i, data in enumerate(_truncations(raw)):
            cases.append(("bad_hash" if i % 2 == 0 else "malformed", data))
        good, _ = wire.encode(raw.key.private, wire.ENRRequest(_exp()))
        cases.append(("too_small", good[:50]))
        cases.append(("bad_hash", bytes([good[0] ^ 0xFF]) + good[1:]))
        sig = bytearray(good[32:97])
        sig[64] = 9
        cases.append(("bad_signature", keccak256(bytes(sig) + good[97:]) + bytes(sig) + good[97:]))
        cases.append(("too_large", good + b"\x00" * (wire.MAX_PACKET_SIZE + 1 - len(good))))
        body = b"\x42" + rlpcodec.encode([1])
        s = raw.key.sign(keccak256(body))
        cases.append(("unknown_type", keccak256(s + body) + s + body))
        expired_ping, _ = wire.encode(raw.key.private, wire.Ping(
            4, wire.Endpoint("127.0.0.1", raw.port, raw.port), wire.Endpoint("127.0.0.1", port, 0),
            int(time.time()) - 1, 1))
        cases.append(("expired", expired_ping))
        node = wire.NodeInfo("127.0.0.1", 1234, 1234, NodeKey.generate().public)
        cases.append(("unsolicited", wire.encode(raw.key.private, wire.Neighbors((node,), _exp()))[0]))
        cases.append(("unsolicited", wire.encode(raw.key.private, wire.Pong(
            wire.Endpoint("127.0.0.1", port, 0), b"\x05" * 32, _exp(), 1))[0]))
        cases.append(("unbonded", wire.encode(raw.key.private, wire.FindNode(raw.key.public, _exp()))[0]))
        cases.append(("unbonded", wire.encode(raw.key.private, wire.ENRRequest(_exp()))[0]))
        for reason, data in cases:
            before = counters[f"dropped_{reason}"]
            raw.send_raw(data, port)
            await wait_until(lambda r=reason, b=before: counters[f"dropped_{r}"] > b)  # type: ignore[misc]
        assert raw.received == []  # nothing answered any of them
        assert len(d.table) == 0  # and nobody got into the table
        # the node still works: a good Ping is answered
        raw.ping(port)
        await raw.wait_for(lambda: any(isinstance(x.packet, wire.Pong) for x in raw.decoded()))
    finally:
        raw.close()
        await d.stop()


async def test_findnode_answered_only_after_the_endpoint_proof() -> None:
    d = await start_discovery(revalidate_interval_s=3600.0, lookup_interval_s=3600.0)
    raw = await RawEndpoint.open()
    stop = asyncio.Event()
    try:
        raw.send(wire.FindNode(raw.key.public, _exp()), d.udp_port)
        await wait_until(lambda: d.transport.counters["dropped_unbonded"] == 1)
        assert raw.received == []
        assert d.transport.verified_count() == 0
        answering = asyncio.get_running_loop().create_task(raw.answer_pings(d.udp_port, stop))
        raw.ping(d.udp_port)  # d pongs and pings back; our Pong proves our endpoint
        await wait_until(lambda: d.transport.verified(raw.key.node_id, "127.0.0.1"))
        assert d.transport.verified_count() == 1  # what the lookup schedule counts as answering
        raw.received.clear()
        for i in range(20):  # silent nodes: only what d tells about them matters here
            d.table.add_seen(Node(NodeKey.generate().public, "127.0.0.1", 40000 + i, 40000 + i), 1.0)
        raw.send(wire.FindNode(raw.key.public, _exp()), d.udp_port)

        def nodes() -> int:
            return sum(len(x.packet.nodes) for x in raw.decoded() if isinstance(x.packet, wire.Neighbors))
        await wait_until(lambda: nodes() >= 15)  # the 16 closest to raw, less raw itself
        assert all(len(r) <= wire.MAX_PACKET_SIZE for r in raw.received)
        stop.set()
        await answering
    finally:
        raw.close()
        await d.stop()


async def test_neighbors_outside_netrestrict_are_not_taken() -> None:
    a = await start_discovery()
    b = Discovery(NodeKey.generate(), fast_discovery_config(), listen=("127.0.0.1", 0), tcp_port=1,
                  data_dir=None)  # b has no netrestrict and tells about a LAN address
    await b.start()
    try:
        inside = Node(NodeKey.generate().public, "127.0.0.9", 3000, 3000)
        outside = Node(NodeKey.generate().public, "10.1.2.3", 3000, 3000)
        b.table.add_seen(inside, 1.0)
        b.table.add_seen(outside, 1.0)
        target = Node(b.key.public, "127.0.0.1", b.udp_port, b.udp_port)
        found = await a.transport.findnode(target, NodeKey.generate().public)
        ids = {n.node_id for n in found}
        assert inside.node_id in ids and outside.node_id not in ids
        assert a.transport.counters["neighbors_outside_netrestrict"] >= 1
        assert all(n.ip.startswith("127.") for n in a.table.nodes())
        # and a never sends anything to an address outside netrestrict
        try:
            await a.transport.ping(outside)
        except ConnectionError:
            pass
        else:
            raise AssertionError("pinged an address outside netrestrict")
    finally:
        await a.stop()
        await b.stop()


async def test_flood_from_one_address_is_rate_limited_and_others_and_tcp_still_served(tmp_path: Path) -> None:
    d = await start_discovery(packets_per_s=50.0, packet_burst=20)
    flooder = await RawEndpoint.open()
    honest = await RawEndpoint.open()
    try:
        async with running_node(tmp_path / "a") as tcp_a, running_node(tmp_path / "b") as tcp_b:
            datagram, _ = wire.encode(flooder.key.private, wire.Ping(
                4, wire.Endpoint("127.0.0.1", flooder.port, 0), wire.Endpoint("127.0.0.1", d.udp_port, 0),
                int(time.time()) + 600, 1))
            flood = 3000
            started = time.monotonic()
            for i in range(flood):
                flooder.send_raw(datagram, d.udp_port)
                if i % 200 == 0:
                    await asyncio.sleep(0)
            c = d.transport.counters
            # the flood is dropped unread, bounded by the bucket: burst + rate x elapsed at most decoded
            await wait_until(lambda: c["dropped_rate_limited"] + len(flooder.received) > 0)
            while not any(isinstance(x.packet, wire.Pong) for x in honest.decoded()):
                honest.ping(d.udp_port)  # UDP: the kernel may drop it while the flood fills the buffer
                await asyncio.sleep(0.2)
            peer = await tcp_b.server.connect(tcp_a.enode)  # the TCP side is unaffected
            assert peer.active
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.2)
            arrived = c["packets_in"] - 1  # the honest Ping
            decoded = arrived - c["dropped_rate_limited"]
            assert c["dropped_rate_limited"] > 0
            assert decoded <= 20 + 50.0 * (elapsed + 1.0) + 5
            pongs = sum(1 for x in flooder.decoded() if isinstance(x.packet, wire.Pong))
            assert pongs <= decoded
    finally:
        flooder.close()
        honest.close()
        await d.stop()


async def test_record_seq_is_kept_and_bumped_when_the_address_changes(tmp_path: Path) -> None:
    d = await start_discovery(data_dir=tmp_path)
    try:
        first = d.record()
        assert (first.ip, first.udp, first.tcp) == ("127.0.0.1", d.udp_port, 30303)
        assert d.record() is first  # unchanged address: same record, same seq
        d.public_host = "127.0.0.2"
        moved = d.record()
        assert moved.seq == first.seq + 1 and moved.ip == "127.0.0.2"
        # an ENRRequest from a bonded node gets the current record, signed by d
        other = await start_discovery()
        try:
            node = Node(d.key.public, "127.0.0.1", d.udp_port, 30303)
            fetched = await other.transport.request_enr(node)
            assert fetched == moved
            # both learned the other's view of their address from the Pongs
            assert other.transport.external._votes
        finally:
            await other.stop()
    finally:
        await d.stop()
    from pimail.discovery.nodedb import read_local_seq

    assert read_local_seq(tmp_path) == moved.seq  # the next start signs a newer record
