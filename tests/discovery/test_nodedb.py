"""The node database keeps every node that answered, not only what the table has room for."""

from __future__ import annotations

from pathlib import Path

from pimail.crypto.keys import NodeKey
from pimail.discovery.nodedb import NodeDB
from pimail.discovery.service import Discovery
from pimail.discovery.table import BUCKET_SIZE, MAX_REPLACEMENTS, Node, log_distance
from tests.discovery.helpers import LOOPBACK, fast_discovery_config


def _key_at_distance_256(self_id: bytes) -> NodeKey:
    while True:  # half of all ids are at the farthest distance
        key = NodeKey.generate()
        if log_distance(self_id, key.node_id) == 256:
            return key


async def test_every_node_that_answered_is_written_to_the_node_database(tmp_path: Path) -> None:
    d = Discovery(NodeKey.generate(), fast_discovery_config(), listen=("127.0.0.1", 0), tcp_port=30303,
                  data_dir=tmp_path, netrestrict=LOOPBACK)
    await d.start()
    peers: list[Discovery] = []
    try:
        for _ in range(BUCKET_SIZE + MAX_REPLACEMENTS + 2):
            peer = Discovery(_key_at_distance_256(d.key.node_id), fast_discovery_config(),
                             listen=("127.0.0.1", 0), tcp_port=30303, data_dir=None, netrestrict=LOOPBACK)
            await peer.start()
            peers.append(peer)
        for peer in peers:  # a real Ping and Pong each: all of them are verified
            await d.transport.ping(Node(peer.key.public, "127.0.0.1", peer.udp_port, 30303))
        assert len(d.table) == BUCKET_SIZE  # one bucket: 16 entries ...
        spare = {n.node_id for n in d.table.replacement_nodes()}
        assert len(spare) == MAX_REPLACEMENTS  # ... 10 in its replacement list, and two forgotten
        assert all(d.transport.verified(i, "127.0.0.1") for i in spare)
        forgotten = {p.key.node_id for p in peers} - spare - {n.node_id for n in d.table.nodes()}
        assert len(forgotten) == 2 and forgotten <= d.unsaved_ids()
    finally:
        for peer in peers:
            await peer.stop()
        await d.stop()  # writes the database
    db = NodeDB.in_dir(tmp_path)
    await db.open()
    try:
        stored = {n.node_id for n in await db.seeds(100)}
    finally:
        await db.close()
    assert stored == {p.key.node_id for p in peers}
    assert spare <= stored and forgotten <= stored
