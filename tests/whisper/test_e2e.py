"""End-to-end shh/6 over real RLPx connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import rlp

from pimail.archive.base import ArchivedEnvelope
from pimail.archive.sqlite import SqliteArchive
from pimail.config import WhisperConfig
from pimail.crypto.keccak import keccak256
from pimail.envelope.codec import Envelope, encode_envelope_list
from pimail.envelope.pow import pow_to_bits
from pimail.envelope.seal import seal
from pimail.health import HealthModel
from pimail.relay.pool import footprint
from pimail.whisper import status as st
from tests.nodes import Node, raw_peer, start_node, until

TOPIC = b"\x01\x02\x03\x04"


def fresh(ttl: int = 30, data: bytes = b"m" * 64, target: float = 0.002, sent: int | None = None) -> Envelope:
    sent = int(time.time()) if sent is None else sent
    return seal(sent + ttl, ttl, TOPIC, data, target, 5).envelope


def status_payload(pow_value: float = 0.0, fields: int = 6) -> bytes:
    items: list[object] = [6, pow_to_bits(pow_value), b"\xff" * 64, False, True, [0, 0, 0]]
    return bytes(rlp.encode(items[:fields]))


async def test_three_nodes_in_a_line(tmp_path: Path) -> None:
    archive = SqliteArchive(tmp_path / "b.sqlite")
    await archive.open()
    a = await start_node(tmp_path / "a")
    b = await start_node(tmp_path / "b", archive=archive)
    c = await start_node(tmp_path / "c")
    try:
        await a.server.connect(b.server.enode)
        await c.server.connect(b.server.enode)
        await until(lambda: len(b.whisper.peers) == 2 and all(s.status for s in b.whisper.peers.values()))
        env = fresh()
        assert a.whisper.post(env)
        assert not a.whisper.post(env)  # duplicate
        await until(lambda: any(e.hash == env.hash for e in c.seen), what="envelope on C")
        assert [e.raw for e in c.seen] == [env.raw]
        assert env.hash in b.whisper.pool and env.hash in c.whisper.pool
        assert b.whisper.counters["archived_submitted"] == 1
        for _ in range(100):
            if await archive.contains(env.sent, env.hash):
                break
            await asyncio.sleep(0.05)
        assert await archive.contains(env.sent, env.hash)
        # Back-propagation is suppressed by known-sets: A never gets its own envelope back as new.
        await asyncio.sleep(0.7)
        assert a.seen == [env]
        assert c.whisper.counters["duplicates"] == 0
    finally:
        for n in (a, b, c):
            await n.stop()
        await archive.close()


async def test_untrusted_clock_relays_but_does_not_archive(tmp_path: Path) -> None:
    archive = SqliteArchive(tmp_path / "b.sqlite")
    await archive.open()
    b = await start_node(tmp_path / "b", archive=archive, clock_trusted=lambda: False)
    try:
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, status_payload())
        old = fresh(sent=int(time.time()) - 10_000)  # "very old" by wall time, but the clock is untrusted
        payload = encode_envelope_list([old.raw])
        peer.send("shh", 1, payload)
        await until(lambda: 11 in raw.codes(), what="batch ack")
        assert old.hash in b.whisper.pool
        assert b.whisper.counters["archived_submitted"] == 0
        assert not await archive.contains(old.sent, old.hash)
        await server.stop()
    finally:
        await b.stop()
        await archive.close()


async def test_expiry_sweep(tmp_path: Path) -> None:
    n = await start_node(tmp_path / "n")
    try:
        env = fresh(ttl=1)
        assert n.whisper.post(env)
        assert env.hash in n.whisper.pool
        await until(lambda: env.hash not in n.whisper.pool, timeout=4.0, what="expiry sweep")
        assert n.whisper.pool.expired == 1 and n.whisper.pool.bytes == 0
        # An expired envelope is not accepted again.
        assert not n.whisper.post(env)
    finally:
        await n.stop()


class GatedArchive(SqliteArchive):
    """The real SQLite archive, whose durability futures are held until the test opens the gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.gate = asyncio.Event()

    def submit(self, envelopes: list[ArchivedEnvelope]) -> asyncio.Future[None]:  # type: ignore[override]
        inner = super().submit(envelopes)
        outer: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        async def relay() -> None:
            await self.gate.wait()
            try:
                await inner
            except Exception as exc:
                outer.set_exception(exc)
            else:
                outer.set_result(None)

        self._relay = asyncio.create_task(relay())
        return outer


async def test_confirmations_after_archive_and_time_errors_reported(tmp_path: Path) -> None:
    archive = GatedArchive(tmp_path / "b.sqlite")
    await archive.open()
    b = await start_node(tmp_path / "b", archive=archive)
    try:
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        status = st.StatusPacket.decode(raw.payloads(0)[0])
        assert status.fields == 6 and status.confirmations and not status.light
        assert status.pow == 0.000002
        peer.send("shh", 0, status_payload())
        good = fresh()
        future = fresh(sent=int(time.time()) + 60)
        payload = encode_envelope_list([good.raw, future.raw])
        peer.send("shh", 1, payload)
        await until(lambda: good.hash in b.whisper.pool, what="accepted")
        await asyncio.sleep(0.3)
        assert 11 not in raw.codes() and 12 not in raw.codes()  # not durable yet: no confirmation
        archive.gate.set()
        await until(lambda: 11 in raw.codes(), what="batch ack")
        assert await archive.contains(good.sent, good.hash)
        batch = keccak256(payload)
        codes = [c for c in raw.codes() if c in (11, 12)]
        assert codes == [12, 11]
        assert st.decode_batch_ack(raw.payloads(11)[0]) == batch
        resp = st.MessageResponse.decode(raw.payloads(12)[0])
        assert resp.batch_hash == batch
        assert [(e.hash, e.code) for e in resp.errors] == [(future.hash, st.ENVELOPE_TIME_NOT_SYNCED)]
        assert future.hash not in b.whisper.pool
        assert not peer.closed  # time errors keep the peer
        # A batch with nothing new is confirmed immediately.
        raw.received.clear()
        again = encode_envelope_list([good.raw])
        peer.send("shh", 1, again)
        await until(lambda: 11 in raw.codes(), what="second ack")
        assert st.decode_batch_ack(raw.payloads(11)[0]) == keccak256(again)
        await server.stop()
    finally:
        await b.stop()
        await archive.close()


async def test_p2p_127_only_from_trusted_and_never_relayed(tmp_path: Path) -> None:
    b = await start_node(tmp_path / "b")
    c = await start_node(tmp_path / "c")
    got: list[tuple[bytes, list[Envelope]]] = []
    completes: list[bytes] = []

    class Listener:
        def on_p2p_envelopes(self, peer: object, envs: list[Envelope]) -> None:
            got.append((peer.node_id, envs))  # type: ignore[attr-defined]

        def on_request_complete(self, peer: object, payload: bytes) -> None:
            completes.append(payload)

    b.whisper.listeners.append(Listener())
    try:
        await c.server.connect(b.server.enode)
        server, _raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, status_payload())
        env = fresh()
        peer.send("shh", 127, env.raw)
        peer.send("shh", 125, bytes(rlp.encode(b"\x07" * 32)))
        await asyncio.sleep(0.4)
        assert got == [] and completes == []
        assert b.whisper.counters["untrusted_p2p_ignored"] == 2
        assert not peer.closed
        b.whisper.mark_trusted(server.key.node_id)
        peer.send("shh", 127, env.raw)  # geth form: one envelope
        other = fresh(data=b"o" * 10)
        peer.send("shh", 127, encode_envelope_list([env.raw, other.raw]))  # status-go form: a list
        peer.send("shh", 125, bytes(rlp.encode(b"\x07" * 32)))
        await until(lambda: len(got) == 2 and len(completes) == 1, what="trusted 127/125")
        assert [e.hash for e in got[0][1]] == [env.hash]
        assert [e.hash for e in got[1][1]] == [env.hash, other.hash]
        assert completes == [bytes(rlp.encode(b"\x07" * 32))]
        await asyncio.sleep(0.7)
        assert env.hash not in b.whisper.pool  # not pooled, so never relayed
        assert c.seen == [] and b.seen == []
        await server.stop()
    finally:
        await b.stop()
        await c.stop()


async def test_forwarding_respects_peer_formula_and_requirement(tmp_path: Path) -> None:
    b = await start_node(tmp_path / "b")
    try:
        geth_id = "Geth/wnode/v1.8.27-stable/linux-amd64/go1.11"
        server, geth, peer = await raw_peer(tmp_path / "g", b, client_id=geth_id)
        peer.send("shh", 0, status_payload(0.01, fields=4))  # geth 1.8: 4 fields, legacy formula
        await until(lambda: all(s.status for s in b.whisper.peers.values()), what="status")
        state = next(iter(b.whisper.peers.values()))
        assert state.kind == "geth-1.8" and state.pow_requirement == 0.01
        # Find envelopes that meet 0.01 under exactly one formula.
        legacy_only = current_only = None
        now = int(time.time())
        for nonce in range(300_000):
            e = Envelope.build(now + 30, 30, TOPIC, b"z" * 40, nonce)
            lg, cu = e.pows()
            if lg >= 0.01 > cu and legacy_only is None:
                legacy_only = e
            if cu >= 0.01 > lg and current_only is None:
                current_only = e
            if legacy_only and current_only:
                break
        assert legacy_only is not None and current_only is not None
        b.whisper.post(current_only)
        b.whisper.post(legacy_only)
        await until(lambda: 1 in geth.codes(), what="forwarded envelope")
        await asyncio.sleep(0.7)
        sent = [Envelope.decode(rlp.encode(x)).hash for p in geth.payloads(1) for x in rlp.decode(p)]
        assert sent == [legacy_only.hash]
        # code 2 lowers the requirement; the other one stays unsent (it was judged already) but a
        # new envelope meeting nothing but 0 now goes through.
        peer.send("shh", 2, bytes(rlp.encode(pow_to_bits(0.0))))
        await until(lambda: state.pow_requirement == 0.0, what="code 2")
        cheap = Envelope.build(now + 30, 30, TOPIC, b"cheap", 0)
        b.whisper.post(cheap)
        await until(lambda: len(geth.payloads(1)) == 2, what="second forward")
        # A bloom that excludes our topic stops forwarding.
        peer.send("shh", 3, bytes(rlp.encode(b"\x00" * 64)))
        await until(lambda: state.bloom == b"\x00" * 64, what="code 3")
        b.whisper.post(Envelope.build(now + 30, 30, TOPIC, b"filtered", 0))
        await asyncio.sleep(0.7)
        assert len(geth.payloads(1)) == 2
        await server.stop()
    finally:
        await b.stop()


async def _expect_disconnect(tmp_path: Path, node: Node, *messages: tuple[int, bytes], why: str) -> None:
    server, _raw, peer = await raw_peer(tmp_path, node)
    try:
        for code, payload in messages:
            peer.send("shh", code, payload)
        await until(lambda: peer.closed, what=f"disconnect ({why})")
        assert peer.close_reason == "peer disconnected: subprotocol error", peer.close_reason
    finally:
        await server.stop()


async def test_bad_input_disconnects_with_0x10(tmp_path: Path) -> None:
    cfg = WhisperConfig(min_pow=0.01, max_message_size=4096)
    b = await start_node(tmp_path / "b", cfg)
    nan = 0x7FF8000000000000
    low = next(e for n in range(1000)
               if max((e := Envelope.build(int(time.time()) + 30, 30, TOPIC, b"x", n)).pows()) < 0.01)
    big = Envelope.build(int(time.time()) + 30, 30, TOPIC, b"x" * 5000, 0)
    noncanon = bytes(rlp.encode([b"\x00\x05", 30, TOPIC, b"x", 0]))
    ok = status_payload()
    cases: list[tuple[str, list[tuple[int, bytes]]]] = [
        ("message before Status", [(1, b"\xc0")]),
        ("NaN PoW in Status", [(0, bytes(rlp.encode([6, nan])))]),
        ("negative PoW in Status", [(0, bytes(rlp.encode([6, pow_to_bits(-1.0)])))]),
        ("wrong version", [(0, bytes(rlp.encode([5])))]),
        ("wrong bloom length in Status", [(0, bytes(rlp.encode([6, 0, b"\xff" * 10])))]),
        ("NaN PoW in code 2", [(0, ok), (2, bytes(rlp.encode(nan)))]),
        ("wrong bloom length in code 3", [(0, ok), (3, bytes(rlp.encode(b"\xff" * 63)))]),
        ("non-canonical envelope", [(0, ok), (1, encode_envelope_list([noncanon]))]),
        ("wrong field count", [(0, ok), (1, bytes(rlp.encode([[1, 2, TOPIC, b"x"]])))]),
        ("not a list", [(0, ok), (1, bytes(rlp.encode(b"junk")))]),
        ("low PoW under both formulas", [(0, ok), (1, encode_envelope_list([low.raw]))]),
        ("oversized envelope / packet", [(0, ok), (1, encode_envelope_list([big.raw]))]),
    ]
    try:
        for i, (why, msgs) in enumerate(cases):
            await _expect_disconnect(tmp_path / f"r{i}", b, *msgs, why=why)
    finally:
        await b.stop()


async def test_flooding_peer_is_disconnected(tmp_path: Path) -> None:
    cfg = WhisperConfig(min_pow=0.0, rate_limit_packets_per_s=5, rate_limit_tolerance=5)
    b = await start_node(tmp_path / "b", cfg)
    try:
        server, _raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, status_payload())
        for _ in range(40):
            peer.send("shh", 1, b"\xc0")
        await until(lambda: peer.closed, what="flood disconnect")
        # We may still be writing when pimail hangs up, so the Disconnect can be lost to a reset;
        # the counter says why pimail dropped us.
        reason = peer.close_reason
        assert reason == "peer disconnected: subprotocol error" or "reset" in reason, reason
        assert b.whisper.counters["rate_limited_peers"] == 1
        await server.stop()
    finally:
        await b.stop()


async def test_polite_peer_within_rate_is_kept(tmp_path: Path) -> None:
    cfg = WhisperConfig(min_pow=0.0, rate_limit_packets_per_s=20, rate_limit_tolerance=5)
    b = await start_node(tmp_path / "b", cfg)
    try:
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, status_payload())
        for _ in range(10):
            peer.send("shh", 1, b"\xc0")
            await asyncio.sleep(0.06)
        await until(lambda: raw.codes().count(11) == 10, what="10 acks")
        assert not peer.closed
        await server.stop()
    finally:
        await b.stop()


async def test_archive_failure_withholds_confirmations_and_reports_health(tmp_path: Path) -> None:
    archive = SqliteArchive(tmp_path / "b.sqlite")
    await archive.open()
    await archive.close()  # every submit now fails
    health = HealthModel()
    b = await start_node(tmp_path / "b", archive=archive, health=health)
    try:
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, status_payload())
        env = fresh()
        peer.send("shh", 1, encode_envelope_list([env.raw]))
        await until(lambda: "whisper.archive" in {c.key for c in health.conditions}, what="health report")
        await asyncio.sleep(0.3)
        assert env.hash in b.whisper.pool  # still relayed
        assert 11 not in raw.codes() and 12 not in raw.codes()  # but never confirmed
        assert not peer.closed
        await server.stop()
    finally:
        await b.stop()


async def test_no_peers_health_condition_and_ignored_codes(tmp_path: Path) -> None:
    health = HealthModel()
    b = await start_node(tmp_path / "b", health=health)
    b.whisper.no_peers_grace_s = 0.0
    b.whisper.post(fresh())  # starts the timers
    try:
        await until(lambda: "whisper.no_peers" in {c.key for c in health.conditions}, what="no peers")
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        assert "whisper.no_peers" not in {c.key for c in health.conditions}
        peer.send("shh", 0, status_payload())
        # No mailserver attached: 123/124/126 are ignored; unknown codes and 20 too.
        for code in (126, 123, 124, 20, 50):
            peer.send("shh", code, b"\xc3\x01\x02\x03")
        peer.send("shh", 1, b"\xc0")
        await until(lambda: 11 in raw.codes(), what="ack after ignored codes")
        assert not peer.closed
        await server.stop()
    finally:
        await b.stop()


async def test_reload_announces_new_pow_and_honours_old_one_briefly(tmp_path: Path) -> None:
    b = await start_node(tmp_path / "b", WhisperConfig(min_pow=0.001))
    try:
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, status_payload())
        await until(lambda: all(s.status for s in b.whisper.peers.values()), what="status")
        b.whisper.config = WhisperConfig(min_pow=1000.0)
        await until(lambda: 2 in raw.codes(), what="code 2")
        assert st.decode_pow_requirement(raw.payloads(2)[0]) == 1000.0
        env = fresh(target=0.001)  # meets the old requirement only: inside the 10 s tolerance
        peer.send("shh", 1, encode_envelope_list([env.raw]))
        await until(lambda: 11 in raw.codes(), what="ack")
        assert env.hash in b.whisper.pool and not peer.closed
        await server.stop()
    finally:
        await b.stop()


async def test_very_old_and_recently_expired_keep_the_peer(tmp_path: Path) -> None:
    b = await start_node(tmp_path / "b")
    try:
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, status_payload())
        now = int(time.time())
        very_old = fresh(ttl=10, sent=now - 100)  # expired 90 s ago: reported
        just_expired = fresh(ttl=10, sent=now - 15)  # expired 5 s ago: dropped silently
        payload = encode_envelope_list([very_old.raw, just_expired.raw])
        peer.send("shh", 1, payload)
        await until(lambda: 11 in raw.codes(), what="ack")
        resp = st.MessageResponse.decode(raw.payloads(12)[0])
        assert [(e.hash, e.code) for e in resp.errors] == [(very_old.hash, st.ENVELOPE_TIME_NOT_SYNCED)]
        assert "very old" in resp.errors[0].description
        assert len(b.whisper.pool) == 0 and not peer.closed
        assert b.whisper.counters["time_errors"] == 1 and b.whisper.counters["expired_dropped"] == 1
        await server.stop()
    finally:
        await b.stop()


async def test_pool_is_bounded_by_bytes_evicting_earliest_expiry(tmp_path: Path) -> None:
    now = int(time.time())
    envs = [Envelope.build(now + 100 + i, 100 + i, TOPIC, bytes([i]) * 500, 0) for i in range(20)]
    cap = footprint(envs[0]) * 5 + 10
    n = await start_node(tmp_path / "n", WhisperConfig(min_pow=0.0, pool_max_bytes=cap))
    try:
        for e in reversed(envs):  # latest expiry first
            n.whisper.post(e)
        assert n.whisper.pool.bytes <= cap and len(n.whisper.pool) == 5
        assert {e.hash for e in n.whisper.pool} == {e.hash for e in envs[-5:]}
        assert n.whisper.counters["pool_evicted"] == 15
    finally:
        await n.stop()


async def test_peer_without_status_is_dropped(tmp_path: Path) -> None:
    b = await start_node(tmp_path / "b", WhisperConfig(min_pow=0.0, expiry_sweep_s=0.1))
    b.whisper.status_timeout_s = 0.5
    try:
        server, _raw, peer = await raw_peer(tmp_path / "r", b)  # never sends Status
        await until(lambda: peer.closed, timeout=5.0, what="status timeout")
        assert peer.close_reason == "peer disconnected: subprotocol error"
        await server.stop()
    finally:
        await b.stop()


async def test_a_full_pool_never_costs_an_acknowledged_envelope(tmp_path: Path) -> None:
    """The pool is a relay cache: with room for 3 envelopes, a batch of 12 that all expire in the
    same second (the newest can be the one evicted at once) is still archived in full before the
    Batch Ack, and every envelope counts as accepted."""
    archive = SqliteArchive(tmp_path / "b.sqlite")
    await archive.open()
    sent = int(time.time())
    envs = [Envelope.build(sent + 30, 30, TOPIC, bytes([i]) * 64, 0) for i in range(12)]
    config = WhisperConfig(min_pow=0.0, pool_max_bytes=footprint(envs[0]) * 3)
    b = await start_node(tmp_path / "b", config, archive=archive)
    try:
        server, raw, peer = await raw_peer(tmp_path / "r", b)
        peer.send("shh", 0, status_payload())
        peer.send("shh", 1, encode_envelope_list([e.raw for e in envs]))
        await until(lambda: 11 in raw.codes(), what="batch ack")
        assert len(b.whisper.pool) <= 3 and b.whisper.counters["pool_evicted"] >= 9
        assert b.whisper.counters["accepted"] == 12
        assert all([await archive.contains(e.sent, e.hash) for e in envs])
        await server.stop()
    finally:
        await b.stop()
        await archive.close()
