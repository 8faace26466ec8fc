"""``Mesh``: discovery and the dial scheduler around a running ``NodeServer``, built from ``[node]``.

Discovery runs when ``[node] discovery`` is true, or is "auto" and there are bootnodes or a node
database from an earlier run. Without it the node meets the network only through static peers and
inbound connections, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pimail.config import Config, is_ip_literal, parse_listen
from pimail.crypto.keys import Enode, KeyError_
from pimail.discovery.nodedb import NodeDB
from pimail.discovery.service import Discovery
from pimail.discovery.udp import parse_netrestrict
from pimail.node.dial import DialScheduler
from pimail.node.server import NodeServer

log = logging.getLogger(__name__)


def bootnodes_of(urls: Sequence[str]) -> list[Enode]:
    out: list[Enode] = []
    for url in urls:
        try:
            enode = Enode.parse(url)
        except KeyError_ as exc:
            log.warning("ignoring bootnode: %s", exc)
            continue
        if enode.host is None:
            log.warning("ignoring bootnode %s: no host:port", enode.url())
            continue
        out.append(enode)
    return out


def discovery_enabled(config: Config) -> bool:
    switch = config.node.discovery
    if isinstance(switch, bool):
        return switch
    return bool(config.node.bootnodes) or NodeDB.exists_in(Path(config.node.data_dir))


def discovery_address(config: Config, tcp_port: int) -> tuple[str, int]:
    """Where discovery listens: ``[node] discovery_listen``, else the TCP host and port."""
    if config.node.discovery_listen:
        return parse_listen(config.node.discovery_listen)
    host, _ = parse_listen(config.node.listen)
    return host, tcp_port


class Mesh:
    """Start after ``server.start()``, stop before ``server.stop()``."""

    def __init__(self, server: NodeServer, config: Config) -> None:
        self.server = server
        self.config = config
        self.discovery: Discovery | None = None
        self.dialer: DialScheduler | None = None

    async def start(self) -> None:
        if not discovery_enabled(self.config):
            log.info("discovery off (no bootnodes and no node database; see [node] discovery)")
            return
        node = self.config.node
        host, port = discovery_address(self.config, self.server.listen_port)
        public = node.public_host if node.public_host and is_ip_literal(node.public_host) else ""
        self.discovery = Discovery(
            self.server.key,
            self.config.discovery,
            listen=(host, port),
            tcp_port=self.server.listen_port,
            data_dir=Path(node.data_dir),
            bootnodes=bootnodes_of(node.bootnodes),
            netrestrict=parse_netrestrict(node.netrestrict),
            public_host=public,
        )
        await self.discovery.start()
        self.dialer = DialScheduler(self.server, node, self.discovery.candidates,
                                    want_more=self.discovery.want_more)
        self.dialer.start()

    async def stop(self) -> None:
        if self.dialer is not None:
            await self.dialer.stop()
        if self.discovery is not None:
            await self.discovery.stop()

    def snapshot(self) -> dict[str, Any]:
        peers: dict[str, dict[str, int]] = {}
        for peer in self.server.peers:
            direction = "inbound" if peer.inbound else "dialled"
            for name, version in peer.capabilities:
                entry = peers.setdefault(f"{name}/{version}", {"inbound": 0, "dialled": 0})
                entry[direction] += 1
        out: dict[str, Any] = {
            "enabled": self.discovery is not None,
            "inbound_peers": sum(1 for p in self.server.peers if p.inbound),
            "dialled_peers": sum(1 for p in self.server.peers if not p.inbound),
            "peers_by_protocol": peers,
        }
        if self.discovery is not None:
            out.update(self.discovery.snapshot())
        if self.dialer is not None:
            out["dial"] = self.dialer.snapshot()
        return out

