"""waku/1, waku/0 and the shh ↔ waku bridge over real RLPx connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import rlp

from pimail.archive.sqlite import SqliteArchive
from pimail.config import WakuConfig, WhisperConfig
from pimail.crypto.keccak import keccak256
from pimail.envelope.codec import Envelope, decode_envelope_list, encode_envelope_list
from pimail.envelope.pow import pow_to_bits
from pimail.envelope.seal import seal
from pimail.relay.confirmations import MessageResponse, decode_batch_ack
from pimail.waku import status as ws
from pimail.whisper import status as st
from tests.nodes import DualNode, raw_peer, raw_waku_peer, start_dual, start_node, until

TOPIC = b"\x0a\x0b\x0c\x0d"
OTHER = b"\x01\x02\x03\x04"


def fresh(topic: bytes = TOPIC, ttl: int = 30, data: bytes = b"w" * 64, sent: int | None = None,
          target: float = 0.002) -> Envelope:
    sent = int(time.time()) if sent is None else sent
    return seal(sent + ttl, ttl, topic, data, target, 5).envelope


def waku1_status(**options: object) -> bytes:
    """A waku/1 Status built by hand: ``[[key, value], ...]`` with uint keys."""
    keys = {"pow": 0, "bloom": 1, "light": 2, "confirmations": 3, "limits": 4, "topics": 5}
    return bytes(rlp.encode([[keys[k], v] for k, v in options.items()]))


async def connected(*nodes: DualNode, count: int) -> None:
    await until(lambda: all(len(n.core.peers) >= count and all(rp.status is not None
                                                               for rp in n.core.peers.values())
                            for n in nodes), what="statuses")


async def test_waku1_relay_between_two_pimail_nodes(tmp_path: Path) -> None:
    a = await start_dual(tmp_path / "a", shh=False)
    b = await start_dual(tmp_path / "b", shh=False)
    try:
        peer = await a.server.connect(b.server.enode)
        assert peer.capabilities == [("waku", 1)]  # both offer waku/0 too; the highest wins
        await connected(a, b, count=1)
        rp = next(iter(b.core.peers.values()))
        assert rp.protocol == "waku/1" and rp.pow_requirement == 0.000002 and rp.status.confirmations
        env = fresh()
        assert a.core.post(env)
        await until(lambda: any(e.hash == env.hash for e in b.seen), what="envelope on B")
        assert b.core.counters["envelopes_in"] == 1
    finally:
        await a.stop()
        await b.stop()


async def test_waku0_peer_gets_string_keyed_status_and_relays(tmp_path: Path) -> None:
    a = await start_dual(tmp_path / "a", shh=False, waku0_only=True)
    b = await start_dual(tmp_path / "b")
    try:
        peer = await a.server.connect(b.server.enode)
        assert ("waku", 0) in peer.capabilities
        await connected(a, b, count=1)
        assert next(iter(b.core.peers.values())).protocol == "waku/0"
        env = fresh()
        assert b.core.post(env)
        await until(lambda: any(e.hash == env.hash for e in a.seen), what="envelope on the waku/0 node")
        back = fresh(topic=OTHER)
        assert a.core.post(back)
        await until(lambda: any(e.hash == back.hash for e in b.seen), what="envelope from waku/0")
    finally:
        await a.stop()
        await b.stop()


async def test_raw_waku0_status_is_version_and_string_keys(tmp_path: Path) -> None:
    b = await start_dual(tmp_path / "b")
    try:
        server, raw, _peer = await raw_waku_peer(tmp_path / "r", b.server, version=0)
        items = rlp.decode(raw.payloads(0)[0])
        assert items[0] == b"" and isinstance(items[1], list)
        keys = [k for k, _ in items[1]]
        assert keys == [b"0", b"1", b"2", b"3", b"4"]  # no key 6 on waku/0
        await server.stop()
    finally:
        await b.stop()


async def test_mixed_line_bridges_shh_and_waku_both_ways_and_archives_once(tmp_path: Path) -> None:
    archive = SqliteArchive(tmp_path / "b.sqlite")
    await archive.open()
    a = await start_dual(tmp_path / "a", waku=False)  # shh/6 only (go-ethereum-like)
    b = await start_dual(tmp_path / "b", archive=archive)  # both: the bridge
    c = await start_dual(tmp_path / "c", shh=False)  # waku only (status-go with Whisper off)
    try:
        pa = await a.server.connect(b.server.enode)
        pc = await c.server.connect(b.server.enode)
        assert pa.capabilities == [("shh", 6)] and pc.capabilities == [("waku", 1)]
        await connected(b, count=2)
        assert sorted(rp.protocol for rp in b.core.peers.values()) == ["shh/6", "waku/1"]
        assert b.core.peer_counts() == {"shh/6": 1, "waku/1": 1}
        from_a = fresh()
        from_c = fresh(topic=OTHER)
        assert a.core.post(from_a) and c.core.post(from_c)
        await until(lambda: any(e.hash == from_a.hash for e in c.seen), what="shh → waku")
        await until(lambda: any(e.hash == from_c.hash for e in a.seen), what="waku → shh")
        for env in (from_a, from_c):
            for _ in range(100):
                if await archive.contains(env.sent, env.hash):
                    break
                await asyncio.sleep(0.05)
            assert await archive.contains(env.sent, env.hash)
        assert b.core.counters["archived_submitted"] == 2  # once each, whatever the protocol
        assert b.core.counters["envelopes_out_shh"] == 1 and b.core.counters["envelopes_out_waku"] == 1
    finally:
        for n in (a, b, c):
            await n.stop()
        await archive.close()


async def test_waku_confirmations_after_archive_with_waku_error_codes(tmp_path: Path) -> None:
    archive = SqliteArchive(tmp_path / "b.sqlite")
    await archive.open()
    b = await start_dual(tmp_path / "b", archive=archive)
    try:
        server, raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, waku1_status(pow=pow_to_bits(0.0), confirmations=True))
        good = fresh()
        future = fresh(sent=int(time.time()) + 60)
        payload = encode_envelope_list([good.raw, future.raw])
        peer.send("waku", 1, payload)
        await until(lambda: 11 in raw.codes(), what="waku batch ack")
        assert await archive.contains(good.sent, good.hash)  # durable before the ack
        batch = keccak256(payload)
        assert decode_batch_ack(raw.payloads(11)[0]) == batch
        resp = MessageResponse.decode(raw.payloads(12)[0])
        assert resp.batch_hash == batch
        assert [(e.hash, e.code) for e in resp.errors] == [(future.hash, ws.ERROR_CODES.time_not_synced)]
        assert raw.codes().index(12) < raw.codes().index(11)
        await server.stop()
    finally:
        await b.stop()
        await archive.close()


async def test_shh_confirmations_on_the_bridge_keep_shh_codes(tmp_path: Path) -> None:
    archive = SqliteArchive(tmp_path / "b.sqlite")
    await archive.open()
    b = await start_dual(tmp_path / "b", archive=archive)
    try:
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, bytes(rlp.encode([6, 0, b"\xff" * 64, False, True, [0, 0, 0]])))
        future = fresh(sent=int(time.time()) + 60)
        good = fresh()
        payload = encode_envelope_list([good.raw, future.raw])
        peer.send("shh", 1, payload)
        await until(lambda: 11 in raw.codes(), what="shh batch ack")
        assert await archive.contains(good.sent, good.hash)
        resp = MessageResponse.decode(raw.payloads(12)[0])
        assert [e.code for e in resp.errors] == [st.ENVELOPE_TIME_NOT_SYNCED]
        await server.stop()
    finally:
        await b.stop()
        await archive.close()


async def test_topic_interest_excludes_a_topic_and_status_update_changes_it(tmp_path: Path) -> None:
    a = await start_dual(tmp_path / "a", waku=False)
    b = await start_dual(tmp_path / "b")
    try:
        await a.server.connect(b.server.enode)
        server, raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, waku1_status(pow=pow_to_bits(0.0), topics=[TOPIC]))
        await connected(b, count=2)
        wanted, unwanted = fresh(topic=TOPIC), fresh(topic=OTHER)
        assert a.core.post(unwanted) and a.core.post(wanted)
        await until(lambda: 1 in raw.codes(), what="forwarded envelopes")
        await asyncio.sleep(0.7)  # two more forwarding cycles: nothing else may come
        got = [e.hash for p in raw.payloads(1) for e in decode_envelope_list(p)]
        assert got == [wanted.hash]
        assert unwanted.hash in b.core.pool
        # Status Update (22) with a new interest: only that option changes
        peer.send("waku", 22, bytes(rlp.encode([[5, [OTHER]]])))
        later = fresh(topic=OTHER, data=b"x" * 70)
        await until(lambda: next(iter(b.waku.peers.values())).topic_interest == frozenset([OTHER]),  # type: ignore[union-attr]
                    what="status update applied")
        rp = next(iter(b.waku.peers.values()))  # type: ignore[union-attr]
        assert rp.pow_requirement == 0.0  # untouched by the update
        assert a.core.post(later)
        await until(lambda: later.hash in [e.hash for p in raw.payloads(1) for e in decode_envelope_list(p)],
                    what="envelope of the new interest")
        await server.stop()
    finally:
        await a.stop()
        await b.stop()


async def test_waku_peer_pow_is_judged_by_the_eip627_formula(tmp_path: Path) -> None:
    b = await start_dual(tmp_path / "b", config=WhisperConfig(min_pow=0.0))
    try:
        server, raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, waku1_status(pow=pow_to_bits(0.5)))
        await until(lambda: all(rp.status is not None for rp in b.core.peers.values()), what="status")
        rp = next(iter(b.core.peers.values()))
        assert rp.pow_requirement == 0.5 and rp.formula.value == "current"
        cheap = fresh(target=0.0001)
        env_pows = cheap.pows()
        assert env_pows[1] < 0.5
        assert b.core.post(cheap)
        await asyncio.sleep(0.7)
        assert 1 not in raw.codes()  # below the peer's requirement under its formula: not sent
        await server.stop()
    finally:
        await b.stop()


async def test_light_node_without_interest_gets_no_forwarding(tmp_path: Path) -> None:
    b = await start_dual(tmp_path / "b")
    try:
        server, raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, waku1_status(pow=pow_to_bits(0.0), light=True))
        await until(lambda: all(rp.status is not None for rp in b.core.peers.values()), what="status")
        assert b.core.post(fresh())
        await asyncio.sleep(0.7)
        assert 1 not in raw.codes()
        await server.stop()
    finally:
        await b.stop()


async def test_peer_packet_limit_is_honoured_when_we_send(tmp_path: Path) -> None:
    b = await start_dual(tmp_path / "b")
    try:
        server, raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, waku1_status(pow=pow_to_bits(0.0), limits=[0, 1, 0]))
        await until(lambda: all(rp.status is not None for rp in b.core.peers.values()), what="status")
        rp = next(iter(b.core.peers.values()))
        assert rp.send_packets is not None and rp.send_packets.rate == 1.0
        # one packet's worth of budget, then the forwarder must wait instead of sending
        assert b.core.post(fresh())
        assert b.core.forward_once() == 1
        assert b.core.post(fresh(topic=OTHER))
        assert b.core.forward_once() == 0  # the peer allows 1 packet/s: held, not dropped
        assert len(rp.outbox) == 1
        await until(lambda: b.core.forward_once() == 1 or len(raw.payloads(1)) == 2, timeout=5,
                    what="second packet after the budget refills")
        await server.stop()
    finally:
        await b.stop()


async def test_our_limits_are_advertised_from_config(tmp_path: Path) -> None:
    b = await start_dual(tmp_path / "b", waku_config=WakuConfig(rate_limit_packets_per_s=7,
                                                                rate_limit_bytes_per_s=9000))
    try:
        server, raw, _peer = await raw_waku_peer(tmp_path / "r", b.server)
        opts = ws.StatusOptions.decode(raw.payloads(0)[0], 1)
        assert opts.packet_limits == ws.RateLimits(0, 7, 0)
        assert opts.bytes_limits == ws.RateLimits(0, 9000, 0)
        assert opts.confirmations is True and opts.light is False and opts.pow == 0.000002
        await server.stop()
    finally:
        await b.stop()


async def test_whisper_only_node_is_unchanged_for_shh_peers(tmp_path: Path) -> None:
    a = await start_node(tmp_path / "a")
    b = await start_dual(tmp_path / "b")
    try:
        peer = await a.server.connect(b.server.enode)
        assert peer.capabilities == [("shh", 6)]
        await until(lambda: all(s.status for s in a.whisper.peers.values()) and bool(a.whisper.peers),
                    what="status")
        env = fresh()
        assert b.core.post(env)
        await until(lambda: any(e.hash == env.hash for e in a.seen), what="envelope on shh node")
    finally:
        await a.stop()
        await b.stop()
