"""The dial scheduler's slot accounting, its memory of useless peers and failures, and the reserved
inbound slots (real nodes on 127.0.0.1; the scheduler's ``_schedule`` is called directly so nothing
waits on its interval)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from pimail.crypto.keys import Enode, NodeKey
from pimail.node.dial import DialScheduler, dial_slots
from tests.node.helpers import EchoCapability, fast_config, running_node, wait_until


async def test_dials_only_its_share_of_slots(tmp_path: Path) -> None:
    async with contextlib.AsyncExitStack() as stack:
        others = [await stack.enter_async_context(running_node(tmp_path / f"o{i}")) for i in range(5)]
        me = await stack.enter_async_context(
            running_node(tmp_path / "me", max_peers=4, dial_share=0.5, reserved_slots=1))
        assert dial_slots(me.server.config) == 2
        dialer = DialScheduler(me.server, me.server.config, lambda n: [o.enode for o in others][:n])
        dialer._schedule()
        await wait_until(lambda: len(me.server.peers) == 2 and not dialer._dialing, 30)
        for _ in range(3):
            dialer._schedule()
        assert dialer.counters["dials"] == 2 and len(me.server.peers) == 2
        assert dialer.snapshot()["dialled"] == 2 and dialer.free_slots() == 0
        await dialer.stop()


async def test_a_peer_without_a_shared_capability_is_not_redialled(tmp_path: Path) -> None:
    other_cap = EchoCapability(name="other")
    async with running_node(tmp_path / "u", caps=[other_cap]) as useless, running_node(tmp_path / "me") as me:
        dialer = DialScheduler(me.server, me.server.config, lambda n: [useless.enode])
        dialer._schedule()
        await wait_until(lambda: dialer.counters["dial_failures"] == 1 and not dialer._dialing, 30)
        for _ in range(3):
            dialer._schedule()
        assert dialer.counters["dials"] == 1
        assert dialer.counters["useless_skipped"] == 3
        assert dialer.snapshot()["useless_remembered"] == 1
        await dialer.stop()


async def test_an_unreachable_candidate_backs_off(tmp_path: Path) -> None:
    gone = Enode(NodeKey.generate().public, "127.0.0.1", 9)  # discard port: nothing listens
    async with running_node(tmp_path / "me", redial_min_s=3600.0, redial_max_s=3600.0) as me:
        dialer = DialScheduler(me.server, me.server.config, lambda n: [gone])
        dialer._schedule()
        await wait_until(lambda: dialer.counters["dial_failures"] == 1 and not dialer._dialing, 30)
        dialer._schedule()
        assert dialer.counters["dials"] == 1 and dialer.counters["backoff_skipped"] == 1
        await dialer.stop()


@dataclass
class _Inbound:
    pubkey: bytes
    node_id: bytes
    remote_address: tuple[str, int]
    inbound: bool = True


async def test_reserved_slots_keep_room_for_lan_phones_and_privileged_clients(tmp_path: Path) -> None:
    async with running_node(tmp_path / "me", max_peers=3, reserved_slots=2) as me, \
            running_node(tmp_path / "a") as a:
        server = me.server
        paired = NodeKey.generate()
        server.privileged = lambda pub: pub == paired.public
        peer = await a.server.connect(me.enode)  # one peer: the general slots (3 - 2 = 1) are full
        assert peer.active
        await wait_until(lambda: len(server.peers) == 1)

        def admits(key: NodeKey, ip: str) -> bool:
            return server._may_take_a_slot(_Inbound(key.public, key.node_id, (ip, 1)))  # type: ignore[arg-type]

        assert not admits(NodeKey.generate(), "8.8.8.8")  # a stranger from the internet: refused
        assert admits(NodeKey.generate(), "192.168.1.20")  # a phone on the LAN: a reserved slot
        assert admits(paired, "8.8.8.8")  # a paired client: always
        assert fast_config(tmp_path).reserved_slots == 5  # the default keeps five
