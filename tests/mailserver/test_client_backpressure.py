"""The history client slows a fast mailserver down instead of losing what it sends."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from pimail.mailserver.client import _Collector, client_whisper_config


@dataclass
class _Peer:
    node_id: bytes


SERVER = _Peer(b"\x01" * 32)


def test_a_full_queue_waits_for_the_consumer_and_loses_nothing() -> None:
    async def main() -> None:
        c = _Collector(SERVER.node_id, max_queue=2, stall_s=5.0)
        sends = [asyncio.create_task(c.on_p2p_envelopes(SERVER, [i])) for i in range(10)]  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert sum(t.done() for t in sends) <= 3  # the sender is held while the queue is full
        got = []
        while len(got) < 10:
            kind, item = await c.queue.get()
            assert kind == "envelopes"
            got.extend(item)  # type: ignore[call-overload]
            await asyncio.sleep(0.01)  # a slow consumer
        await asyncio.gather(*sends)
        assert sorted(got) == list(range(10)) and not c.overflowed

    asyncio.run(main())


def test_a_consumer_that_stopped_fails_the_fetch_instead_of_hanging() -> None:
    async def main() -> None:
        c = _Collector(SERVER.node_id, max_queue=1, stall_s=0.1)
        await c.on_p2p_envelopes(SERVER, [1])  # type: ignore[arg-type]
        await c.on_p2p_envelopes(SERVER, [2])  # type: ignore[arg-type]
        assert c.overflowed

    asyncio.run(main())


def test_other_peers_are_ignored_and_client_accepts_big_packets() -> None:
    async def main() -> None:
        c = _Collector(SERVER.node_id, max_queue=1)
        await c.on_p2p_envelopes(_Peer(b"\x02" * 32), [1])  # type: ignore[arg-type]
        assert c.queue.empty()

    asyncio.run(main())
    # go-ethereum 1.8 relays its whole pool to a new peer in one Messages packet
    assert client_whisper_config().max_message_size >= 16 * 1024 * 1024 - 1
