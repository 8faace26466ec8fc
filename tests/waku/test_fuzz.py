"""Hypothesis over the waku adapter's decoders: whatever a peer sends on any code, the only thing
that escapes is ``ProtocolError`` (a disconnect with 0x10), never another exception."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import rlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from pimail.config import WakuConfig, WhisperConfig
from pimail.node.capability import ProtocolError
from pimail.relay.core import RelayCore
from pimail.waku.service import WakuService


class FakePeer:
    def __init__(self, version: int) -> None:
        self.pubkey = os.urandom(64)
        self.node_id = os.urandom(32)
        self.client_id = "fuzz"
        self.remote_address = ("127.0.0.1", 1)
        self.inbound = True
        self.closed = False
        self.capabilities = [("waku", version)]
        self.sent: list[tuple[str, int, bytes]] = []

    def send(self, capability: str, code: int, payload: bytes) -> bool:
        self.sent.append((capability, code, payload))
        return True

    async def send_wait(self, capability: str, code: int, payload: bytes) -> None:
        self.sent.append((capability, code, payload))

    def disconnect(self, reason: Any) -> None:
        self.closed = True


_leaf = hs.one_of(hs.binary(max_size=80), hs.integers(0, 2**72))
_item = hs.recursive(_leaf, lambda inner: hs.lists(inner, max_size=5), max_leaves=25)
_payload = hs.one_of(hs.binary(max_size=200), _item.map(lambda x: bytes(rlp.encode(x))))
_codes = hs.sampled_from([0, 1, 11, 12, 22, 123, 124, 125, 126, 127, 2, 3, 20, 99])


async def _drive(version: int, trusted: bool, messages: list[tuple[int, bytes]]) -> None:
    core = RelayCore(WhisperConfig(min_pow=0.0), archive=None, clock_trusted=lambda: True)
    waku = WakuService(WakuConfig(), core)
    peer = FakePeer(version)
    if trusted:
        core.mark_trusted(peer.node_id)
    try:
        await waku.peer_started(peer)  # type: ignore[arg-type]
        for code, payload in messages:
            try:
                await waku.handle_message(peer, code, payload)  # type: ignore[arg-type]
            except ProtocolError:
                break  # the transport disconnects; nothing more is read from this peer
    finally:
        waku.peer_stopped(peer)  # type: ignore[arg-type]
        await core.close()
    assert not core.peers


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hs.sampled_from([0, 1]), hs.booleans(),
       hs.lists(hs.tuples(_codes, _payload), min_size=1, max_size=6),
       hs.booleans())
def test_any_message_sequence_only_raises_protocol_error(version: int, trusted: bool,
                                                         messages: list[tuple[int, bytes]],
                                                         status_first: bool) -> None:
    if status_first:  # also reach the post-Status handlers with a valid Status
        status = rlp.encode([[0, 0]]) if version == 1 else rlp.encode([0, [[b"0", 0]]])
        messages = [(0, bytes(status)), *messages]
    asyncio.run(_drive(version, trusted, messages))
