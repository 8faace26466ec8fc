"""The relay core without sockets: one pool for every adapter, per-peer requirements as data, one
forwarding channel per connection, and the token buckets behind the rate limits."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import rlp

from pimail.config import WakuConfig, WhisperConfig
from pimail.crypto.keccak import keccak256
from pimail.envelope.codec import Envelope, decode_envelope_list
from pimail.relay.core import RelayCore
from pimail.relay.limits import TokenBucket
from pimail.waku.service import WakuService
from pimail.whisper.service import WhisperService


class FakePeer:
    def __init__(self, *caps: tuple[str, int]) -> None:
        self.pubkey = os.urandom(64)
        self.node_id = os.urandom(32)
        self.client_id = "test"
        self.remote_address = ("127.0.0.1", 1)
        self.inbound = True
        self.closed = False
        self.capabilities = list(caps)
        self.sent: list[tuple[str, int, bytes]] = []

    def send(self, capability: str, code: int, payload: bytes) -> bool:
        self.sent.append((capability, code, payload))
        return True

    async def send_wait(self, capability: str, code: int, payload: bytes) -> None:
        self.sent.append((capability, code, payload))

    def disconnect(self, reason: Any) -> None:
        self.closed = True

    def messages(self, capability: str) -> list[bytes]:
        return [e.hash for c, code, p in self.sent if c == capability and code == 1
                for e in decode_envelope_list(p)]


def _env(topic: bytes = b"abcd") -> Envelope:
    now = int(time.time())
    return Envelope.build(now + 50, 50, topic, os.urandom(64), 1)


async def _stack() -> tuple[RelayCore, WhisperService, WakuService]:
    core = RelayCore(WhisperConfig(min_pow=0.0), archive=None, clock_trusted=lambda: True)
    return core, WhisperService(core.config, archive=None, clock_trusted=lambda: True, core=core), \
        WakuService(WakuConfig(), core)


def test_a_connection_sharing_both_protocols_is_fed_through_waku_only() -> None:
    async def scenario() -> None:
        core, shh, waku = await _stack()
        peer = FakePeer(("shh", 6), ("waku", 1))
        await shh.peer_started(peer)  # type: ignore[arg-type]
        await waku.peer_started(peer)  # type: ignore[arg-type]
        await shh.handle_message(peer, 0, rlp.encode([6, 0]))  # type: ignore[arg-type]
        await waku.handle_message(peer, 0, rlp.encode([[0, 0]]))  # type: ignore[arg-type]
        assert len(core.peers) == 2 and core.peer_counts() == {"shh/6": 1, "waku/1": 1}
        env = _env()
        assert core.post(env)
        assert core.forward_once() == 1
        assert peer.messages("waku") == [env.hash] and peer.messages("shh") == []
        shh_channel = shh.peer_state(peer)  # type: ignore[arg-type]
        assert shh_channel is not None and not shh_channel.outbox  # a muted channel holds no backlog
        # if the waku channel went away alone, shh would carry the stream from the pool on
        waku.peer_stopped(peer)  # type: ignore[arg-type]
        later = _env(b"efgh")
        assert core.post(later)
        assert core.forward_once() == 2
        assert sorted(peer.messages("shh")) == sorted([env.hash, later.hash])
        await core.close()

    asyncio.run(scenario())


def test_token_bucket() -> None:
    b = TokenBucket(10, 10, now=0.0)
    assert b.take(10, 0.0) and not b.take(1, 0.0)
    assert b.available(5, 0.5) and not b.available(6, 0.5)
    assert b.level(100.0) == 10  # capped at capacity


class _HeldArchive:
    """An archive whose commits the test completes by hand."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[None]] = []
        self.envelopes: list[Any] = []

    def submit(self, envs: list[Any]) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.futures.append(fut)
        self.envelopes += envs
        return fut


async def _shh_peer(shh: WhisperService) -> FakePeer:
    peer = FakePeer(("shh", 6))
    await shh.peer_started(peer)  # type: ignore[arg-type]
    await shh.handle_message(peer, 0, rlp.encode([6, 0]))  # type: ignore[arg-type]
    return peer


def test_a_packet_is_pooled_queued_counted_and_confirmed_once_durable() -> None:
    async def scenario() -> None:
        archive = _HeldArchive()
        core = RelayCore(WhisperConfig(min_pow=0.0, known_per_peer=5), archive=archive,  # type: ignore[arg-type]
                         clock_trusted=lambda: True)
        shh = WhisperService(core.config, archive=None, clock_trusted=lambda: True, core=core)
        a, b, c = [await _shh_peer(shh) for _ in range(3)]
        envs = [_env() for _ in range(4)]
        packet = rlp.encode([rlp.decode(e.raw) for e in envs[:3]] + [rlp.decode(envs[0].raw)])
        await shh.handle_message(a, 1, packet)  # type: ignore[arg-type]
        assert core.counters["envelopes_in"] == 4 and core.counters["accepted"] == 3
        assert core.counters["duplicates"] == 1
        rp_a, rp_b, rp_c = (shh.peer_state(p) for p in (a, b, c))  # type: ignore[arg-type]
        assert rp_a is not None and rp_b is not None and rp_c is not None
        assert not rp_a.outbox and all(e.hash in rp_a.known for e in envs[:3])  # never sent back
        assert list(rp_b.outbox) == list(rp_c.outbox) == [e.hash for e in envs[:3]]
        # a full outbox (known_per_peer = 5) forgets its oldest and counts them
        more = [_env() for _ in range(4)]
        await shh.handle_message(a, 1, rlp.encode([rlp.decode(e.raw) for e in more]))  # type: ignore[arg-type]
        assert len(rp_b.outbox) == 5 and rp_b.outbox_dropped == 2
        # nothing is confirmed before the archive's commit; then Message Response and Batch Ack
        assert not [code for _, code, _ in a.sent if code in (11, 12)]
        assert rp_a.pending_confirmations == 2 and len(archive.envelopes) == 7
        archive.futures[0].set_result(None)
        archive.futures[1].set_exception(OSError("disk gone"))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        acks = [p for _, code, p in a.sent if code == 11]
        assert acks == [rlp.encode(keccak256(packet))]  # the failed group is never acknowledged
        assert rp_a.pending_confirmations == 0
        await core.close()

    asyncio.run(scenario())


class SlowReader(FakePeer):
    """A peer whose socket has not taken ``write_backlog`` bytes yet."""

    write_backlog = 0


def test_relay_packets_wait_while_a_peer_has_a_backlog_and_stay_within_the_room_left() -> None:
    async def scenario() -> None:
        core = RelayCore(WhisperConfig(min_pow=0.0, relay_backlog_bytes=4096), archive=None,
                         clock_trusted=lambda: True)
        shh = WhisperService(core.config, archive=None, clock_trusted=lambda: True, core=core)
        peer = SlowReader(("shh", 6))
        await shh.peer_started(peer)  # type: ignore[arg-type]
        await shh.handle_message(peer, 0, rlp.encode([6, 0]))  # type: ignore[arg-type]
        envs = [_env() for _ in range(40)]  # ~120 B each: ~4.8 KB in all
        for env in envs:
            assert core.post(env)
        peer.write_backlog = 4096  # the buffer is full: nothing is built for it, nothing is lost
        assert core.forward_once() == 0 and peer.messages("shh") == []
        peer.write_backlog = 3000  # room for ~1 KB: one small packet
        first = core.forward_once()
        relayed = [p for _, code, p in peer.sent if code == 1]
        assert 0 < first < 40 and len(relayed) == 1 and len(relayed[0]) <= 1096 + 4
        peer.write_backlog = 0
        while core.forward_once():
            pass
        assert sorted(peer.messages("shh")) == sorted(e.hash for e in envs)  # all of it, in the end
        await core.close()

    asyncio.run(scenario())
