"""Forwarding in bounded slices: a cycle for many peers gives the loop a turn between slices,
and nothing is dropped or sent twice (real RLPx peers on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import rlp

from pimail.config import WhisperConfig
from pimail.envelope.codec import Envelope
from pimail.node.server import NodeServer
from tests.nodes import Node, RawShh, raw_peer, start_node, until

TOPIC = b"\x05\x06\x07\x08"
STATUS = bytes(rlp.encode([6, 0, b"\xff" * 64, False, True, [0, 0, 0]]))


def envelopes(n: int) -> list[Envelope]:
    now = int(time.time())
    return [Envelope.build(now + 60, 60, TOPIC, i.to_bytes(4, "big") + b"p" * 1000, 0) for i in range(n)]


def forwarded(cap: RawShh) -> list[bytes]:
    return [Envelope.decode(rlp.encode(x)).hash for p in cap.payloads(1) for x in rlp.decode(p)]


class SentLog:
    def __init__(self, events: list[str]) -> None:
        self.events = events

    def on_sent(self, peer: object, batch_hash: bytes, hashes: list[bytes]) -> None:
        self.events.append("sent")


async def connect_raw_peers(tmp_path: Path, node: Node, n: int,
                            raws: list[tuple[NodeServer, RawShh]]) -> None:
    """Add ``n`` raw shh peers connected to ``node`` (each having sent its Status) to ``raws``,
    one by one, so the caller's ``finally`` stops every one that was started."""
    for i in range(n):
        server, cap, peer = await raw_peer(tmp_path / f"r{i}", node)
        peer.send("shh", 0, STATUS)
        raws.append((server, cap))
    await until(lambda: len(node.whisper.peers) == n
                and all(s.status for s in node.whisper.peers.values()), what="statuses")


async def test_cycle_in_slices_sends_everything_once(tmp_path: Path) -> None:
    node = await start_node(tmp_path / "b", WhisperConfig(min_pow=0.000002, forward_interval_s=3600))
    raws: list[tuple[NodeServer, RawShh]] = []
    try:
        await connect_raw_peers(tmp_path, node, 4, raws)
        posted = envelopes(30)  # ~31 KB per peer
        for e in posted:
            assert node.whisper.post(e)
        slices = list(node.whisper.forward_slices(16 * 1024))  # each peer's packet ends a slice
        assert len(slices) >= 4 and sum(slices) == 4 * len(posted)
        assert node.whisper.forward_once() == 0  # nothing left: each envelope went once per peer
        await until(lambda: all(len(forwarded(c)) == len(posted) for _, c in raws), what="delivery")
        for _, cap in raws:
            assert len(cap.payloads(1)) == 1  # one packet per peer per cycle
            assert sorted(forwarded(cap)) == sorted(e.hash for e in posted)
        # a peer that leaves between two slices is skipped, the others still get theirs
        more = envelopes(60)[30:]
        for e in more:
            node.whisper.post(e)
        gen = node.whisper.forward_slices(1)
        first = next(gen)
        assert first == len(more)
        gone = next(s.peer for s in node.whisper.peers.values() if more[0].hash not in s.known)
        node.whisper.peer_stopped(gone)
        rest = sum(gen)
        assert first + rest == 3 * len(more)
    finally:
        for server, _ in raws:
            await server.stop()
        await node.stop()


async def test_timer_gives_the_loop_a_turn_between_slices(tmp_path: Path) -> None:
    node = await start_node(tmp_path / "b", WhisperConfig(min_pow=0.000002, forward_interval_s=0.05))
    node.whisper.forward_slice_bytes = 1  # every peer's packet is its own slice
    events: list[str] = []
    node.whisper.listeners.append(SentLog(events))
    raws: list[tuple[NodeServer, RawShh]] = []
    try:
        await connect_raw_peers(tmp_path, node, 3, raws)
        stop = asyncio.Event()

        async def ticker() -> None:
            while not stop.is_set():
                events.append("tick")
                await asyncio.sleep(0)

        t = asyncio.create_task(ticker())
        posted = envelopes(10)
        for e in posted:
            node.whisper.post(e)
        await until(lambda: events.count("sent") == 3, what="three packets")
        stop.set()
        await t
        sent_at = [i for i, e in enumerate(events) if e == "sent"]
        # the ticker ran between the packets of one cycle: no two packets back to back
        assert all(b - a > 1 for a, b in itertools.pairwise(sent_at))
        await until(lambda: all(len(forwarded(c)) == len(posted) for _, c in raws), what="delivery")
    finally:
        for server, _ in raws:
            await server.stop()
        await node.stop()


def test_known_set_add_many_matches_add() -> None:
    import random

    from pimail.relay.pool import KnownSet

    rng = random.Random(7)
    one, many = KnownSet(50), KnownSet(50)
    for _ in range(40):
        batch = [rng.randrange(120).to_bytes(2, "big") for _ in range(rng.randrange(0, 70))]
        for h in batch:
            one.add(h)
        many.add_many(batch)
        assert list(one._items) == list(many._items) and len(many) <= 50
