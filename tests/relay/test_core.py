"""The relay core without sockets: one pool for every adapter, per-peer requirements as data, one
forwarding channel per connection, and the token buckets behind the rate limits."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import rlp

from pimail.config import WakuConfig, WhisperConfig
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
