"""A history-only client (``ClientStack(live=False)``) asks its mailserver for nothing live: its
Status carries an empty bloom and the light flag, over shh/6 and waku alike, so the server's
forwarding skips it while a live client gets the pool, and history still works."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pimail.archive.sqlite import SqliteArchive
from pimail.config import NodeConfig, WhisperConfig
from pimail.crypto.keys import Enode, NodeKey
from pimail.mailserver.client import HistoryClient, HistoryOptions, HistorySummary, client_whisper_config
from pimail.mailserver.server import create_mailserver
from pimail.node.server import NodeServer
from pimail.whisper.client import EMPTY_BLOOM, ClientStack
from tests.mailserver.nodes import archived, open_mailserver_config, plain_envelopes
from tests.nodes import start_dual, until

TOPIC = bytes.fromhex("aabbccdd")


@pytest.mark.parametrize("protocol", ["shh", "waku"])
async def test_a_history_only_client_is_not_pushed_the_pool_but_gets_history(tmp_path: Path,
                                                                           protocol: str) -> None:
    archive = SqliteArchive(tmp_path / "archive.sqlite")
    await archive.open()
    node = await start_dual(tmp_path / "srv", archive=archive, config=WhisperConfig(min_pow=0.0))
    node.core.request_handler = await create_mailserver(  # type: ignore[assignment]
        archive, open_mailserver_config(), private_key=None)  # type: ignore[arg-type]
    now = int(time.time())
    pooled = plain_envelopes(30, now - 40, TOPIC)  # alive for the next 20 s or more
    for env in pooled:
        assert node.core.post(env)
    await archive.submit([archived(e) for e in pooled])
    enode = Enode(node.server.key.public, "127.0.0.1", node.server.listen_port)
    clients = []
    try:
        for live in (False, True):
            key = NodeKey.generate()
            stack = ClientStack(client_whisper_config(), protocol, live=live)
            cn = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=tmp_path / f"c{live}"),
                            stack.capabilities)
            (tmp_path / f"c{live}").mkdir()
            await cn.start()
            clients.append((cn, stack))
            peer = await cn.connect(enode)
            await stack.wait_status(peer, 5.0)
            want_light = not live
            await until(lambda: any(rp.status is not None and rp.light == want_light  # noqa: B023
                                    for rp in node.core.peers.values()), what="the client's Status")
        quiet, busy = (rp for live in (True, False) for rp in node.core.peers.values()
                       if rp.status is not None and rp.light == live)
        assert quiet.bloom == EMPTY_BLOOM and not busy.light
        # one transmission cycle, run by hand: the pool goes to the live client only
        assert node.core.forward_once() == len(pooled)
        assert not quiet.known and len(busy.known) == len(pooled)
        # and the history-only client still gets every archived envelope
        cn, stack = clients[0]
        summary = HistorySummary()
        got = [item.envelope.hash async for item in HistoryClient(cn.key, stack, cn).fetch(
            enode, HistoryOptions(lower=now - 200, upper=now + 10, limit=10), summary)]
        assert sorted(got) == sorted(e.hash for e in pooled) and summary.completed
    finally:
        for cn, stack in clients:
            await cn.stop()
            await stack.close()
        await node.stop()
        await archive.close()
