"""Pending-handshake slots under a flood of half-open connections (real sockets on 127.0.0.1).

At ``max_pending_handshakes`` a new inbound connection pushes out the oldest one that has not
delivered a complete RLPx auth, so a real peer gets in at once instead of after the handshake
timeout; connections past their auth are never pushed out (then the new one is refused).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.node.helpers import running_node, wait_until
from tests.node.rawpeer import RawPeer


async def test_real_peer_gets_in_past_idle_sockets_at_the_cap(tmp_path: Path) -> None:
    cap = 8
    async with running_node(tmp_path / "victim", max_pending_handshakes=cap,
                            handshake_timeout_s=10.0) as victim:
        port = victim.server.listen_port
        idle: list[RawPeer] = []
        for i in range(3 * cap):  # three times the slots: idle sockets and half-sent auths
            r = await RawPeer.open(port)
            if i % 2:
                r.write(os.urandom(150))  # about half of an EIP-8 auth packet
            idle.append(r)
        await wait_until(lambda: victim.server.counters["inbound_connections"] == 3 * cap)
        counters = victim.server.counters
        assert counters["pending_evicted"] == 2 * cap
        assert counters["pending_refused"] == 0
        # a real peer gets a slot at once: the one evicted for it (the counter below), not one freed
        # by an idle socket's handshake timeout
        async with running_node(tmp_path / "phone") as phone:
            peer = await phone.server.connect(victim.enode, timeout=30.0)
            assert peer.active and not peer.closed
        assert counters["peers_connected"] == 1
        assert counters["pending_evicted"] == 2 * cap + 1  # its slot came from the oldest idle one
        # the oldest sockets were closed by the server, the newest ones still hold their slots
        for r in idle[: 2 * cap + 1]:
            assert await r.read_until_closed(timeout=2) == b""
        for r in idle[2 * cap + 1:]:
            try:  # open and silent: the read waits (a closed socket would return b"" at once)
                data = await asyncio.wait_for(r.reader.read(1), 0.05)
            except TimeoutError:
                continue
            raise AssertionError(f"a newer pending connection was closed or answered: {data!r}")
        for r in idle:
            r.close()


async def test_connections_past_their_auth_keep_their_slots(tmp_path: Path) -> None:
    async with running_node(tmp_path / "victim", max_pending_handshakes=2,
                            handshake_timeout_s=10.0) as victim:
        port = victim.server.listen_port
        authed = [await RawPeer.open(port) for _ in range(2)]
        for r in authed:
            await r.handshake(victim.key.public)  # auth/ack done, Hello not yet sent
        late = await RawPeer.open(port)
        assert await late.read_until_closed(timeout=2) == b""  # refused: nobody to push out
        counters = victim.server.counters
        assert counters["pending_refused"] == 1 and counters["pending_evicted"] == 0
        for r in authed:  # the two still finish their handshake
            r.send_hello()
            frames = await r.read_frames(1)
            assert frames and frames[0][:1] == b"\x80"  # Hello is message id 0
        await wait_until(lambda: counters["peers_connected"] == 2)
        for r in (*authed, late):
            r.close()
