"""Bad input on waku: each has a defined outcome (disconnect 0x10, or drop + a counter), no
exception escapes, and a well-behaved peer on the same node is unaffected."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import rlp

from pimail.config import WhisperConfig
from pimail.envelope.codec import encode_envelope_list
from pimail.envelope.pow import pow_to_bits
from pimail.envelope.seal import seal
from tests.nodes import DualNode, raw_waku_peer, start_dual, until

GOOD_STATUS = bytes(rlp.encode([[0, pow_to_bits(0.0)]]))
SUBPROTOCOL = "peer disconnected: subprotocol error"


async def _bystander(tmp: Path, node: DualNode) -> tuple[object, object]:
    server, _raw, peer = await raw_waku_peer(tmp, node.server)
    peer.send("waku", 0, GOOD_STATUS)
    await until(lambda: all(rp.status is not None for rp in node.core.peers.values()), what="bystander")
    return server, peer


async def _expect_disconnect(tmp: Path, node: DualNode, *messages: tuple[int, bytes], why: str) -> None:
    server, _raw, peer = await raw_waku_peer(tmp, node.server)
    for code, payload in messages:
        peer.send("waku", code, payload)
    await until(lambda: peer.closed, what=f"disconnect ({why})")
    assert peer.close_reason == SUBPROTOCOL, (why, peer.close_reason)
    await server.stop()


async def test_bad_waku_input_disconnects_with_0x10_and_spares_others(tmp_path: Path) -> None:
    cfg = WhisperConfig(min_pow=0.0, max_message_size=4096)
    b = await start_dual(tmp_path / "b", config=cfg)
    try:
        bystander_server, bystander = await _bystander(tmp_path / "ok", b)
        too_many = [i.to_bytes(4, "big") for i in range(10_001)]
        sent = int(time.time())
        big = seal(sent + 30, 30, b"abcd", b"z" * 5000, 0.0, 1).envelope
        cases = [
            ("wrong-typed PoW", [(0, bytes(rlp.encode([[0, [1, 2]]])))]),
            ("wrong-typed light flag", [(0, bytes(rlp.encode([[2, b"\x00"]])))]),
            ("bloom of 10 bytes", [(0, bytes(rlp.encode([[1, b"\xff" * 10]])))]),
            ("topic interest over 10,000", [(0, bytes(rlp.encode([[5, too_many]])))]),
            ("Status Update before Status", [(22, bytes(rlp.encode([[0, 0]])))]),
            ("Messages before Status", [(1, encode_envelope_list([]))]),
            ("bad Status Update", [(0, GOOD_STATUS), (22, bytes(rlp.encode([[3, [1]]])))]),
            ("oversized envelope in Messages", [(0, GOOD_STATUS), (1, encode_envelope_list([big.raw]))]),
            ("Messages not a list", [(0, GOOD_STATUS), (1, bytes(rlp.encode(b"nope")))]),
            ("garbage batch ack", [(0, GOOD_STATUS), (11, bytes(rlp.encode(b"short")))]),
        ]
        for i, (why, msgs) in enumerate(cases):
            await _expect_disconnect(tmp_path / f"r{i}", b, *msgs, why=why)
        assert b.core.counters["waku_bad_status"] >= 4
        assert b.core.counters["waku_before_status"] == 2
        assert b.core.counters["oversized_packets"] == 1
        assert not bystander.closed  # type: ignore[attr-defined]
        await bystander_server.stop()  # type: ignore[attr-defined]
    finally:
        await b.stop()


async def test_unknown_key_with_a_huge_value_is_ignored(tmp_path: Path) -> None:
    b = await start_dual(tmp_path / "b")
    try:
        server, _raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, bytes(rlp.encode([[77, b"\x01" * 300_000], [3, True]])))
        await until(lambda: all(rp.status is not None for rp in b.core.peers.values()), what="status")
        rp = next(iter(b.core.peers.values()))
        assert rp.status.confirmations is True and rp.pow_requirement == 0.001  # default
        assert not peer.closed
        await server.stop()
    finally:
        await b.stop()


async def test_sync_codes_and_untrusted_p2p_are_dropped_and_counted(tmp_path: Path) -> None:
    b = await start_dual(tmp_path / "b")
    try:
        server, _raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, GOOD_STATUS)
        peer.send("waku", 123, bytes(rlp.encode([0, 1, b"", 10, b""])))
        peer.send("waku", 124, bytes(rlp.encode([[], b"", True, b""])))
        peer.send("waku", 127, bytes(rlp.encode(b"not a list")))  # untrusted: ignored unread
        peer.send("waku", 125, bytes(rlp.encode(b"x" * 40)))
        await until(lambda: b.core.counters["waku_sync_ignored"] == 2
                    and b.core.counters["untrusted_p2p_ignored"] == 2, what="counters")
        await asyncio.sleep(0.2)
        assert not peer.closed
        await server.stop()
    finally:
        await b.stop()


async def test_p2p_message_from_a_trusted_peer_must_be_a_list(tmp_path: Path) -> None:
    b = await start_dual(tmp_path / "b")
    try:
        server, _raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        b.core.mark_trusted(server.key.node_id)
        sent = int(time.time())
        single = seal(sent + 30, 30, b"abcd", b"q" * 20, 0.0, 1).envelope
        peer.send("waku", 0, GOOD_STATUS)
        peer.send("waku", 127, single.raw)  # the geth single-envelope form: not waku
        await until(lambda: peer.closed, what="disconnect")
        assert peer.close_reason == SUBPROTOCOL
        await server.stop()
    finally:
        await b.stop()
