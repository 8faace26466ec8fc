"""Five pimail daemons on 127.0.0.1 that know only the first as bootnode find each other, mesh, and
relay an envelope end to end; a node restarted with its node database and no bootnode reconnects."""

from __future__ import annotations

import time
from pathlib import Path

from pimail.config import Config
from pimail.crypto.keys import Enode
from pimail.daemon import Daemon
from pimail.discovery.nodedb import NodeDB
from pimail.envelope.seal import seal
from pimail.whisper.client import client_session
from tests.discovery.helpers import fast_discovery_config, wait_until


def _config(data_dir: Path, bootnodes: list[str], discovery: bool | str = True) -> Config:
    c = Config()
    c.node.listen = "127.0.0.1:0"
    c.node.data_dir = data_dir
    c.node.bootnodes = bootnodes
    c.node.discovery = discovery
    c.node.netrestrict = ["127.0.0.0/8"]
    c.node.dial_interval_s = 0.2
    c.node.redial_min_s = 0.2
    c.node.redial_max_s = 1.0
    c.node.handshake_timeout_s = 5.0
    c.discovery = fast_discovery_config()
    c.archive.clock_trust = "always"
    c.archive.min_free_disk = "1MB"
    c.archive.flush_interval_ms = 50
    c.status.page = False
    c.status.metrics = False
    c.leds.enabled = False
    return c


async def _start(config: Config) -> Daemon:
    daemon = Daemon(config, env={})
    await daemon.start()
    return daemon


def _boot_enode(daemon: Daemon) -> str:
    assert daemon.key is not None and daemon.server is not None
    return Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port).url()


def _connected(daemons: list[Daemon]) -> bool:
    """Every node has a peer and the peer graph is one component."""
    ids = {d.key.node_id: i for i, d in enumerate(daemons) if d.key is not None}
    edges = {i: {ids[p.node_id] for p in d.server.peers if p.node_id in ids} if d.server else set()
             for i, d in enumerate(daemons)}
    if any(not e for e in edges.values()):
        return False
    seen, todo = {0}, [0]
    while todo:
        for j in edges[todo.pop()]:
            if j not in seen:
                seen.add(j)
                todo.append(j)
    return len(seen) == len(daemons)


async def test_five_nodes_from_one_bootnode_mesh_and_relay(tmp_path: Path) -> None:
    daemons: list[Daemon] = []
    try:
        first = await _start(_config(tmp_path / "n0", []))
        daemons.append(first)
        boot = _boot_enode(first)
        for i in range(1, 5):
            daemons.append(await _start(_config(tmp_path / f"n{i}", [boot])))
        await wait_until(lambda: _connected(daemons), 90)
        # nodes found each other through discovery, not only the bootnode
        assert all(d.mesh is not None and d.mesh.discovery is not None for d in daemons)
        await wait_until(lambda: all(len(d.mesh.discovery.table) == 4 for d in daemons  # type: ignore[union-attr]
                                     ), 90)
        # and dialled beyond the bootnode: every node has peers other than the first
        await wait_until(lambda: all(len(d.server.peers) >= 2 for d in daemons), 90)  # type: ignore[union-attr]
        snap = daemons[4].status_snapshot()["discovery"]
        assert snap["enabled"] is True and snap["table_size"] >= 3 and snap["enr"].startswith("enr:")
        assert snap["dialled_peers"] + snap["inbound_peers"] == len(daemons[4].server.peers)  # type: ignore[union-attr]
        assert snap["packets"]["packets_in"] > 0

        # an envelope posted at the last node reaches every archive
        last = daemons[4]
        assert last.key is not None and last.server is not None
        async with client_session(Enode(last.key.public, "127.0.0.1", last.server.listen_port)) as session:
            env = seal(int(time.time()) + 300, 300, b"\x0b\xad\xf0\x0d", b"mesh" * 16, 0.01).envelope
            assert session.whisper.post(env)
            await wait_until(lambda: all(d.counters["archived"] >= 1 for d in daemons), 90)
    finally:
        for d in daemons:
            await d.stop()


async def test_restart_with_the_node_database_and_no_bootnode_reconnects(tmp_path: Path) -> None:
    a = await _start(_config(tmp_path / "a", []))
    b: Daemon | None = None
    try:
        b = await _start(_config(tmp_path / "b", [_boot_enode(a)]))
        await wait_until(lambda: len(a.server.peers) == 1 and len(b.server.peers) == 1, 90)  # type: ignore[union-attr]
        await b.stop()
        await wait_until(lambda: not a.server.peers, 30)  # type: ignore[union-attr]
        assert NodeDB.exists_in(tmp_path / "b")
        # no bootnode, discovery left on "auto": the node database alone turns it on and seeds it
        b = await _start(_config(tmp_path / "b", [], discovery="auto"))
        assert b.mesh is not None and b.mesh.discovery is not None
        await wait_until(lambda: len(b.server.peers) == 1, 90)  # type: ignore[union-attr]
        assert b.server.peers[0].node_id == a.key.node_id  # type: ignore[union-attr]
    finally:
        if b is not None:
            await b.stop()
        await a.stop()
