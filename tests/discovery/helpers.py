"""A raw discv4 endpoint on 127.0.0.1 that sends crafted datagrams and collects what comes back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from pimail.config import DiscoveryConfig
from pimail.crypto.keys import NodeKey
from pimail.discovery import wire
from pimail.discovery.service import Discovery
from pimail.discovery.udp import parse_netrestrict

LOOPBACK = parse_netrestrict(["127.0.0.0/8"])


def fast_discovery_config(**kw: Any) -> DiscoveryConfig:
    base: dict[str, Any] = dict(request_timeout_s=2.0, bond_wait_s=0.3, lookup_interval_s=0.2,
                                revalidate_interval_s=0.5, persist_interval_s=0.5, external_ip_votes=2)
    base.update(kw)
    return DiscoveryConfig(**base)


async def start_discovery(data_dir: Any = None, bootnodes: Any = (), **kw: Any) -> Discovery:
    d = Discovery(NodeKey.generate(), fast_discovery_config(**kw), listen=("127.0.0.1", 0), tcp_port=30303,
                  data_dir=data_dir, bootnodes=bootnodes, netrestrict=LOOPBACK)
    await d.start()
    return d


async def wait_until(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


class RawEndpoint(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.key = NodeKey.generate()
        self.received: list[bytes] = []
        self.transport: asyncio.DatagramTransport | None = None
        self.event = asyncio.Event()

    @classmethod
    async def open(cls) -> RawEndpoint:
        ep = cls()
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: ep, local_addr=("127.0.0.1", 0))
        return ep

    @property
    def port(self) -> int:
        assert self.transport is not None
        return int(self.transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        self.event.set()

    def send_raw(self, data: bytes, port: int) -> None:
        assert self.transport is not None
        self.transport.sendto(data, ("127.0.0.1", port))

    def send(self, packet: wire.Packet, port: int) -> bytes:
        datagram, digest = wire.encode(self.key.private, packet)
        self.send_raw(datagram, port)
        return digest

    def decoded(self) -> list[wire.Decoded]:
        return [wire.decode(d) for d in self.received]

    def ping(self, port: int, expiration: int | None = None) -> bytes:
        exp = int(time.time()) + 20 if expiration is None else expiration
        me = wire.Endpoint("127.0.0.1", self.port, self.port)
        return self.send(wire.Ping(4, me, wire.Endpoint("127.0.0.1", port, 0), exp, 1), port)

    async def wait_for(self, cond: Callable[[], bool], timeout: float = 60.0) -> None:
        await wait_until(cond, timeout)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def answer_pings(self, port: int, stop: asyncio.Event) -> None:
        """Reply to every Ping (so the node under test counts us as bonded)."""
        seen = 0
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.event.wait(), 0.05)
            self.event.clear()
            for data in self.received[seen:]:
                d = wire.decode(data)
                if isinstance(d.packet, wire.Ping):
                    me = wire.Endpoint("127.0.0.1", port, 0)
                    self.send(wire.Pong(me, d.hash, int(time.time()) + 20, 1), port)
            seen = len(self.received)
