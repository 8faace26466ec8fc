"""Bad input over real sockets: each case closes the offender with the right reason (or silently),
bumps a counter, lets no exception escape and leaves a well-behaved peer connected and working."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import rlp

from pimail.crypto.keys import NodeKey
from pimail.devp2p.messages import DisconnectReason, decode_msg_id
from pimail.node.capability import PeerLike
from pimail.node.peer import INBOUND_QUEUE_MESSAGES, Peer, PeerDisconnected
from pimail.rlpx.handshake import Initiator
from tests.node.helpers import ECHO_REQUEST, FAIL, EchoCapability, NodeUnderTest, running_node, wait_until
from tests.node.rawpeer import RawPeer


@dataclass
class Scene:
    victim: NodeUnderTest
    good: NodeUnderTest
    good_peer: Peer

    async def assert_good_peer_fine(self) -> None:
        n = len(self.good.echo.replies)
        assert not self.good_peer.closed
        assert self.good_peer.send("echo", ECHO_REQUEST, b"\x82ok")
        await self.good.echo.wait_for(lambda: len(self.good.echo.replies) == n + 1)
        assert self.victim.server.counters["internal_error"] == 0
        assert self.victim.server.counters["handler_error"] == 0


@contextlib.asynccontextmanager
async def scene(tmp: Path, **victim_cfg: Any) -> AsyncIterator[Scene]:
    cfg: dict[str, Any] = dict(handshake_timeout_s=1.0)
    cfg.update(victim_cfg)
    async with running_node(tmp / "victim", **cfg) as victim, running_node(tmp / "good") as good:
        good_peer = await good.server.connect(victim.enode)
        yield Scene(victim, good, good_peer)


async def hello_done(raw: RawPeer, victim: NodeUnderTest) -> None:
    """Full handshake + Hello exchange as a well-formed peer."""
    await raw.handshake(victim.key.public)
    raw.send_hello()
    frames = await raw.read_frames(1)
    assert decode_msg_id(frames[0])[0] == 0


@pytest.mark.parametrize("junk", [b"\x00\x10" + os.urandom(400), b"\xf0" + os.urandom(70000)],
                         ids=["size-underflow", "long-random"])
async def test_random_bytes_instead_of_auth(tmp_path: Path, junk: bytes) -> None:
    async with scene(tmp_path) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        raw.write(junk)
        assert await raw.read_until_closed() == b""  # silent close, not even an ack
        assert s.victim.server.counters["handshake_undecryptable"] == 1
        await s.assert_good_peer_fine()


async def test_auth_for_another_node_key(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        raw.write(Initiator(raw.key, NodeKey.generate().public).auth_packet())
        assert await raw.read_until_closed() == b""
        assert s.victim.server.counters["handshake_undecryptable"] == 1
        await s.assert_good_peer_fine()


@pytest.mark.parametrize("eip8", [True, False])
async def test_truncated_auth_times_out_silently(tmp_path: Path, eip8: bool) -> None:
    async with scene(tmp_path, handshake_timeout_s=0.5) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        raw.write(Initiator(raw.key, s.victim.key.public, eip8=eip8).auth_packet()[:200])
        assert await raw.read_until_closed() == b""
        assert s.victim.server.counters["handshake_timeout"] == 1
        await s.assert_good_peer_fine()


async def test_peer_that_never_speaks(tmp_path: Path) -> None:
    async with scene(tmp_path, handshake_timeout_s=0.5) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        assert await raw.read_until_closed() == b""
        assert s.victim.server.counters["handshake_timeout"] == 1
        await s.assert_good_peer_fine()


async def test_peer_that_never_sends_hello(tmp_path: Path) -> None:
    async with scene(tmp_path, handshake_timeout_s=0.5) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await raw.handshake(s.victim.key.public)
        await raw.read_until_closed()
        assert raw.disconnect_reason() == DisconnectReason.READ_TIMEOUT
        assert s.victim.server.counters["handshake_timeout"] == 1
        await s.assert_good_peer_fine()


async def test_peer_silent_after_hello_is_dropped(tmp_path: Path) -> None:
    async with scene(tmp_path, ping_interval_s=0.1, idle_timeout_s=0.4) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await hello_done(raw, s.victim)
        await raw.read_until_closed()  # we never answer the pings
        assert raw.disconnect_reason() == DisconnectReason.READ_TIMEOUT
        assert s.victim.server.counters["read_timeout"] == 1
        pings = [f for f in raw.received if decode_msg_id(f)[0] == 2]
        assert pings, "the victim pinged before giving up"
        assert s.victim.server.counters["read_timeout"] == 1


@pytest.mark.parametrize(("where", "counter"), [(20, "bad_header_mac"), (-1, "bad_frame_mac")])
async def test_bad_macs_close_silently(tmp_path: Path, where: int, counter: str) -> None:
    async with scene(tmp_path) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await hello_done(raw, s.victim)
        assert raw.codec is not None
        wire = bytearray(raw.codec.encode(b"\x10" + b"\x01\x00\xc0"))
        wire[where] ^= 0x40
        raw.write(bytes(wire))
        await raw.read_until_closed()
        assert raw.disconnect_reason() is None
        assert s.victim.server.counters[counter] == 1
        await s.assert_good_peer_fine()


async def test_frame_over_the_cap(tmp_path: Path) -> None:
    async with scene(tmp_path, max_frame_bytes=4096) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await hello_done(raw, s.victim)
        raw.send_message(16, b"\xb9\x20\x00" + os.urandom(8192), snappy=False)
        await raw.read_until_closed()
        assert raw.disconnect_reason() == DisconnectReason.PROTOCOL_BREACH
        assert s.victim.server.counters["frame_too_large"] == 1
        await s.assert_good_peer_fine()


async def test_snappy_length_bomb(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await hello_done(raw, s.victim)
        raw.send_message(16, b"\xfe\xff\xff\xff\x0f\x00", snappy=False)  # declares 4 GiB
        await raw.read_until_closed()
        assert raw.disconnect_reason() == DisconnectReason.PROTOCOL_BREACH
        assert s.victim.server.counters["snappy_rejected"] == 1
        await s.assert_good_peer_fine()


@pytest.mark.parametrize(("hello_kw", "reason", "counter"), [
    ({"node_id": NodeKey.generate().public}, DisconnectReason.UNEXPECTED_IDENTITY, "identity_mismatch"),
    ({"node_id": bytes(64)}, DisconnectReason.INVALID_IDENTITY, "invalid_identity"),
    ({"caps": (("shh", 6), ("echo", 2))}, DisconnectReason.USELESS_PEER, "useless_peer"),
])
async def test_bad_hellos(tmp_path: Path, hello_kw: dict[str, Any], reason: DisconnectReason,
                          counter: str) -> None:
    async with scene(tmp_path) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await raw.handshake(s.victim.key.public)
        raw.send_hello(**hello_kw)
        await raw.read_until_closed()
        assert raw.disconnect_reason() == reason
        assert s.victim.server.counters[counter] == 1
        assert len(s.victim.server.peers) == 1
        await s.assert_good_peer_fine()


async def test_unknown_message_ids(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await hello_done(raw, s.victim)
        raw.send_message(9, b"\xc0")  # reserved p2p id: ignored
        raw.send_message(16, b"\x82hi")  # echo request: answered
        frames = await raw.read_frames(2)
        assert decode_msg_id(frames[1])[0] == 17
        raw.send_message(16 + 3, b"\xc0")  # beyond echo/1's 3 ids
        await raw.read_until_closed()
        assert raw.disconnect_reason() == DisconnectReason.PROTOCOL_BREACH
        assert s.victim.server.counters["unknown_message_id"] == 1
        await s.assert_good_peer_fine()


async def test_capability_protocol_error_disconnects_with_its_reason(tmp_path: Path) -> None:
    async with scene(tmp_path) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await hello_done(raw, s.victim)
        raw.send_message(16 + FAIL, b"\xc0")
        await raw.read_until_closed()
        assert raw.disconnect_reason() == DisconnectReason.SUBPROTOCOL_ERROR
        assert s.victim.server.counters["subprotocol_error"] == 1
        await wait_until(lambda: len(s.victim.echo.stopped) == 1)
        await s.assert_good_peer_fine()


async def test_duplicate_self_and_too_many(tmp_path: Path) -> None:
    async with scene(tmp_path, max_peers=1) as s:
        # the same node again: already connected
        raw = await RawPeer.open(s.victim.server.listen_port)
        raw.key = s.good.key
        await raw.handshake(s.victim.key.public)
        raw.send_hello()
        await raw.read_until_closed()
        assert raw.disconnect_reason() == DisconnectReason.ALREADY_CONNECTED
        # a third node: too many peers
        raw = await RawPeer.open(s.victim.server.listen_port)
        await raw.handshake(s.victim.key.public)
        raw.send_hello()
        await raw.read_until_closed()
        assert raw.disconnect_reason() == DisconnectReason.TOO_MANY_PEERS
        # dialling ourselves
        with pytest.raises(PeerDisconnected):
            await s.victim.server.connect(s.victim.enode)
        await wait_until(lambda: s.victim.server.counters["connected_to_self"] >= 1)
        counters = s.victim.server.counters
        assert counters["already_connected"] == 1 and counters["too_many_peers"] == 1
        await s.assert_good_peer_fine()


async def test_max_pending_handshakes(tmp_path: Path) -> None:
    async with scene(tmp_path, max_pending_handshakes=2, handshake_timeout_s=3.0) as s:
        silent = [await RawPeer.open(s.victim.server.listen_port) for _ in range(2)]
        await wait_until(lambda: s.victim.server.counters["inbound_connections"] == 3)
        third = await RawPeer.open(s.victim.server.listen_port)
        # the oldest silent connection gives up its slot (tests/node/test_pending_slots.py has more)
        assert await silent[0].read_until_closed(timeout=2) == b""
        assert s.victim.server.counters["pending_evicted"] == 1
        assert s.victim.server.counters["pending_refused"] == 0
        for r in (*silent, third):
            r.close()
        await s.assert_good_peer_fine()


async def test_write_backpressure(tmp_path: Path) -> None:
    async with scene(tmp_path, write_buffer_bytes=64 * 1024) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await hello_done(raw, s.victim)
        await wait_until(lambda: len(s.victim.server.peers) == 2)
        peer = next(p for p in s.victim.server.peers if p.pubkey == raw.key.public)
        chunk = b"\xb9\x40\x00" + os.urandom(16384)
        sent = 0
        while peer.send("echo", ECHO_REQUEST, chunk):  # the raw peer does not read
            sent += 1
            assert sent < 10_000, "send() never refused"
            if sent % 16 == 0:
                await asyncio.sleep(0.01)
        assert peer.traffic.dropped_sends == 1
        waiter = asyncio.ensure_future(peer.send_wait("echo", ECHO_REQUEST, b"\x82ok"))
        await asyncio.sleep(0.2)
        assert not waiter.done()  # blocked by the full buffer
        await raw.read_frames(sent + 1, timeout=10)  # drain: the waiter gets through
        await asyncio.wait_for(waiter, 5)
        await s.assert_good_peer_fine()


async def test_peer_that_stops_reading_is_dropped(tmp_path: Path) -> None:
    async with scene(tmp_path, write_buffer_bytes=64 * 1024, ping_interval_s=0.1, idle_timeout_s=0.6) as s:
        raw = await RawPeer.open(s.victim.server.listen_port)
        await hello_done(raw, s.victim)
        await wait_until(lambda: len(s.victim.server.peers) == 2)
        peer = next(p for p in s.victim.server.peers if p.pubkey == raw.key.public)
        chunk = b"\xb9\x40\x00" + os.urandom(16384)
        while peer.send("echo", ECHO_REQUEST, chunk):  # fill kernel buffers and ours
            await asyncio.sleep(0)
        for _ in range(30):  # keep talking (so it is not a read timeout) but never read
            if peer.closed:
                break
            raw.send_message(2, b"\xc0")  # ping
            await asyncio.sleep(0.1)
        assert peer.closed
        assert s.victim.server.counters["write_timeout"] == 1
        assert s.victim.server.counters["read_timeout"] == 0
        await s.assert_good_peer_fine()


async def test_flooding_peer_is_throttled_not_buffered(tmp_path: Path) -> None:
    gate = asyncio.Event()
    seen: list[bytes] = []

    class Slow(EchoCapability):
        async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
            await gate.wait()
            seen.append(payload)

    async with running_node(tmp_path / "v", caps=[Slow()], idle_timeout_s=60.0) as victim:
        raw = await RawPeer.open(victim.server.listen_port)
        await hello_done(raw, victim)
        total = 20_000
        filler = os.urandom(100)
        for i in range(total):  # ~3 MB: more than one socket read and the loopback buffers
            raw.send_message(16, rlp.encode([i, filler]))
        await wait_until(lambda: len(victim.server.peers) == 1)
        peer = victim.server.peers[0]
        await wait_until(lambda: peer._reading_paused)
        await asyncio.sleep(0.3)
        # bounded by the limit plus what one socket read (≤ 256 KiB) can hold, far below the flood
        assert len(peer._queue) < INBOUND_QUEUE_MESSAGES + 256 * 1024 // 100 < total
        gate.set()
        await wait_until(lambda: len(seen) == total, timeout=25)
        assert seen == [rlp.encode([i, filler]) for i in range(total)]  # in order, none lost
        assert not peer._reading_paused
