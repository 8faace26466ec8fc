"""Two real NodeServers on 127.0.0.1: handshakes in both formats, capability traffic, pings, static peers."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from pimail.devp2p.messages import DisconnectReason
from pimail.node.peer import Peer
from tests.node.helpers import ECHO_REQUEST, running_node, wait_until


@pytest.mark.parametrize("eip8", [True, False], ids=["eip8", "legacy"])
async def test_two_nodes_exchange_messages(tmp_path: Path, eip8: bool) -> None:
    async with running_node(tmp_path / "a") as a, running_node(tmp_path / "b") as b:
        peer = await a.server.connect(b.enode, eip8=eip8)
        assert isinstance(peer, Peer)
        assert peer.pubkey == b.key.public
        assert peer.capabilities == [("echo", 1)]
        await wait_until(lambda: len(b.server.peers) == 1)
        remote = b.server.peers[0]
        assert remote.inbound and remote.pubkey == a.key.public
        assert remote.client_id.startswith("pimail/")
        for i in range(50):
            assert peer.send("echo", ECHO_REQUEST, bytes([0xC1, i]))
        await a.echo.wait_for(lambda: len(a.echo.replies) == 50)
        assert [p for _, p in a.echo.replies] == [bytes([0xC1, i]) for i in range(50)]
        big = b"\xb9\xff\xff" + bytes(range(256)) * 256  # 64 KiB, compressible
        await peer.send_wait("echo", ECHO_REQUEST, big)
        await a.echo.wait_for(lambda: len(a.echo.replies) == 51)
        assert a.echo.replies[-1][1] == big
        assert b.echo.started == [remote]


@pytest.mark.parametrize("eip8", [True, False], ids=["eip8", "legacy"])
async def test_pings_keep_an_idle_link_alive(tmp_path: Path, eip8: bool) -> None:
    cfg = dict(ping_interval_s=0.2, idle_timeout_s=1.0)
    async with running_node(tmp_path / "a", **cfg) as a, running_node(tmp_path / "b", **cfg) as b:
        peer = await a.server.connect(b.enode, eip8=eip8)
        await wait_until(lambda: len(b.server.peers) == 1)
        remote = b.server.peers[0]
        # 13 pings 0.2 s apart: at least 2.4 s, more than two idle timeouts, with only pings and pongs
        await wait_until(lambda: all(p.traffic.pongs_in >= 13 or p.closed for p in (peer, remote)), 60)
        assert not peer.closed and not remote.closed
        for p in (peer, remote):
            assert p.traffic.messages_in == 0  # pings are not capability messages
            assert p.traffic.pings_out >= 13
        assert a.server.counters["read_timeout"] == 0 and b.server.counters["read_timeout"] == 0


async def test_a_round_trip_comes_back_after_what_was_sent_before_it(tmp_path: Path) -> None:
    async with running_node(tmp_path / "a") as a, running_node(tmp_path / "b") as b:
        peer = await a.server.connect(b.enode)
        await wait_until(lambda: len(b.server.peers) == 1)
        for i in range(20):
            await peer.send_wait("echo", ECHO_REQUEST, bytes([0xC1, i]))
        pongs = peer.traffic.pongs_in
        assert await peer.round_trip(30.0)
        assert peer.traffic.pongs_in == pongs + 1
        # and every message sent before the Ping was read and answered
        await a.echo.wait_for(lambda: len(a.echo.replies) == 20)
        b.server.peers[0].disconnect(DisconnectReason.CLIENT_QUITTING)
        await wait_until(lambda: peer.closed)
        with pytest.raises(ConnectionError):
            await peer.round_trip(1.0)


async def test_static_peer_that_comes_up_late(tmp_path: Path) -> None:
    with socket.socket() as s:  # reserve a free port, then release it for the late node
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with running_node(tmp_path / "a") as a:
        from pimail.crypto.keys import Enode, NodeKey

        key_b = NodeKey.generate()
        a.server.add_static_peer(Enode(key_b.public, "127.0.0.1", port))
        await wait_until(lambda: a.server.counters["dial_failed"] >= 2, timeout=5)
        async with running_node(tmp_path / "b", key=key_b, listen=f"127.0.0.1:{port}") as b:
            await wait_until(lambda: len(a.server.peers) == 1 and len(b.server.peers) == 1, timeout=5)
            # the static peer is redialled after it drops us
            b.server.peers[0].disconnect(DisconnectReason.REQUESTED)
            await wait_until(lambda: a.server.counters["peers_connected"] >= 2, timeout=5)
            await wait_until(lambda: len(a.server.peers) == 1)


async def test_stop_sends_client_quitting(tmp_path: Path) -> None:
    async with running_node(tmp_path / "b") as b:
        async with running_node(tmp_path / "a") as a:
            peer = await a.server.connect(b.enode)
            await wait_until(lambda: len(b.server.peers) == 1)
        assert peer.closed
        await wait_until(lambda: not b.server.peers)
        assert b.server.counters["disconnects_received"] == 1
        assert b.echo.stopped and a.echo.stopped


async def test_set_static_peers_replaces_the_set(tmp_path: Path) -> None:
    async with running_node(tmp_path / "a") as a, running_node(tmp_path / "b") as b:
        a.server.set_static_peers([b.enode.url(), "enode://nothex@1.2.3.4:1", f"enode://{b.key.public.hex()}"])
        await wait_until(lambda: len(a.server.peers) == 1 and len(b.server.peers) == 1)  # the valid one
        a.server.set_static_peers([])  # SIGHUP without it: no more redialling
        b.server.peers[0].disconnect(DisconnectReason.REQUESTED)
        await wait_until(lambda: not a.server.peers)
        await asyncio.sleep(0.5)  # several redial_min_s periods
        assert not a.server.peers and a.server.counters["outbound_dials"] == 1


def test_two_nodes_on_uvloop(tmp_path: Path) -> None:
    import uvloop  # a dependency of pimail (the daemon runs on it)

    async def scenario() -> None:
        async with running_node(tmp_path / "a") as a, running_node(tmp_path / "b") as b:
            for n, eip8 in enumerate((True, False), start=1):
                peer = await a.server.connect(b.enode, eip8=eip8)
                assert peer.send("echo", ECHO_REQUEST, b"\x83uv" + bytes([eip8]))
                await a.echo.wait_for(lambda n=n: len(a.echo.replies) == n)  # type: ignore[misc]
                peer.disconnect(DisconnectReason.REQUESTED)
                await peer.closed_event.wait()

    uvloop.run(asyncio.wait_for(scenario(), 20))


async def test_handler_sending_to_a_closed_peer_does_not_stall_this_one(tmp_path: Path) -> None:
    from pimail.node.capability import PeerLike
    from tests.node.helpers import ECHO_REPLY, EchoCapability

    class Relay(EchoCapability):
        """The first request from a later peer is forwarded to the first peer (gone by then: the send
        raises and the handler aborts); every other request is echoed."""

        forwarded = False

        async def handle_message(self, peer: PeerLike, code: int, payload: bytes) -> None:
            if code == ECHO_REQUEST and self.started[0] is not peer and not self.forwarded:
                self.forwarded = True
                await self.started[0].send_wait(self.name, ECHO_REPLY, payload)  # raises: it is closed
            await super().handle_message(peer, code, payload)

    relay = Relay()
    async with running_node(tmp_path / "v", caps=[relay]) as v, running_node(tmp_path / "a") as a, \
            running_node(tmp_path / "b") as b:
        first = await a.server.connect(v.enode)
        await relay.wait_for(lambda: len(relay.started) == 1)
        first.disconnect(DisconnectReason.REQUESTED)
        await relay.wait_for(lambda: len(relay.stopped) == 1)
        peer = await b.server.connect(v.enode)
        for i in range(3):
            assert peer.send("echo", ECHO_REQUEST, bytes([0xC1, i]))
        await b.echo.wait_for(lambda: len(b.echo.replies) == 2)  # the aborted first one got no reply
        assert [p for _, p in b.echo.replies] == [bytes([0xC1, 1]), bytes([0xC1, 2])]
        assert relay.forwarded and not peer.closed and v.server.counters["handler_error"] == 0


async def test_listen_failure_is_reported_to_health(tmp_path: Path) -> None:
    from pimail.crypto.keys import NodeKey
    from pimail.health import HealthModel, Severity
    from pimail.node.server import NodeServer
    from tests.node.helpers import EchoCapability, fast_config

    async with running_node(tmp_path / "a") as a:
        health = HealthModel()
        taken = f"127.0.0.1:{a.server.listen_port}"
        server = NodeServer(NodeKey.generate(), fast_config(tmp_path / "b", listen=taken), [EchoCapability()],
                            health)
        with pytest.raises(OSError):
            await server.start()
        cond = next(c for c in health.conditions if c.key == "node.listen")
        assert cond.severity is Severity.FAILING and taken in cond.message
        await server.stop()  # harmless after a failed start


async def test_dial_by_hostname_and_bad_enodes(tmp_path: Path) -> None:
    from pimail.crypto.keys import Enode, NodeKey

    async with running_node(tmp_path / "a") as a, running_node(tmp_path / "b") as b:
        peer = await a.server.connect(Enode(b.key.public, "localhost", b.server.listen_port).url())
        assert peer.pubkey == b.key.public
        assert await a.server.connect(b.enode) is peer  # already connected: the same peer
        with pytest.raises(ValueError, match="no host"):
            await a.server.connect(f"enode://{b.key.public.hex()}")
        with pytest.raises(ValueError, match="128 hex"):
            await a.server.connect("enode://abcd@127.0.0.1:1")
        with pytest.raises(OSError):  # nothing listens there
            await a.server.connect(Enode(NodeKey.generate().public, "127.0.0.1", 1))
        assert a.server.counters["dial_failed"] == 1


async def test_a_peer_has_one_id_in_every_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pimail")
    async with running_node(tmp_path / "a") as a, running_node(tmp_path / "b") as b:
        peer = await a.server.connect(b.enode)
        short = b.key.public.hex()[:8]  # what the whisper and mailserver lines show: <8 hex>@host:port
        assert short in repr(peer) and b.key.public.hex()[:9] not in repr(peer)
        peer.disconnect(DisconnectReason.REQUESTED)
        await wait_until(lambda: peer.closed)
    lines = [r.getMessage() for r in caplog.records if r.name == "pimail.node.peer"]
    about_b = [line for line in lines if line.startswith(f"peer {short}")]
    assert any("connected" in line for line in about_b) and any("gone" in line for line in about_b)
    assert not [line for line in lines if b.key.public.hex()[:9] in line]
