"""The mailserver over waku: the same archive and paging as shh/6, answered on the protocol a
request came in on (127 always as a list on waku), with one set of limits per client."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import rlp

from pimail.archive.sqlite import SqliteArchive
from pimail.config import NodeConfig, WhisperConfig
from pimail.crypto.keys import Enode, NodeKey
from pimail.envelope.codec import decode_envelope_list
from pimail.mailserver.client import HistoryClient, HistoryOptions, HistorySummary, client_whisper_config
from pimail.mailserver.request import MessagesRequest
from pimail.mailserver.response import RequestComplete, RequestFailed, decode
from pimail.mailserver.server import create_mailserver
from pimail.node.server import NodeServer
from pimail.whisper.client import ClientStack
from tests.mailserver.nodes import archived, open_mailserver_config, plain_envelopes
from tests.nodes import DualNode, RawShh, raw_waku_peer, start_dual, until

from .test_e2e import fresh

TOPIC = bytes.fromhex("aabbccdd")


async def _mail_node(tmp: Path, **mail_kw: object) -> tuple[DualNode, SqliteArchive]:
    archive = SqliteArchive(tmp / "archive.sqlite")
    tmp.mkdir(parents=True, exist_ok=True)
    await archive.open()
    node = await start_dual(tmp / "node", archive=archive, config=WhisperConfig(min_pow=0.000002))
    mailserver = await create_mailserver(archive, open_mailserver_config(**mail_kw), private_key=None)  # type: ignore[arg-type]
    node.core.request_handler = mailserver
    return node, archive


async def _history(tmp: Path, server: DualNode, protocol: str, opts: HistoryOptions,
                   key: NodeKey | None = None) -> tuple[list[bytes], HistorySummary, str]:
    key = key or NodeKey.generate()
    stack = ClientStack(client_whisper_config(), protocol)
    node = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=tmp), stack.capabilities)
    tmp.mkdir(parents=True, exist_ok=True)
    await node.start()
    summary = HistorySummary()
    try:
        enode = Enode(server.server.key.public, "127.0.0.1", server.server.listen_port)
        client = HistoryClient(key, stack, node)
        got = [item.envelope.hash async for item in client.fetch(enode, opts, summary)]
        chosen = stack.chosen(node.peers[0])
    finally:
        await node.stop()
        await stack.close()
    return got, summary, chosen


async def test_history_over_waku_and_shh_from_one_archive_with_identical_paging(tmp_path: Path) -> None:
    b, archive = await _mail_node(tmp_path / "b")
    try:
        now = int(time.time())
        envs = plain_envelopes(25, now - 1000, TOPIC)
        await archive.submit([archived(e) for e in envs])
        opts = HistoryOptions(form="direct", lower=now - 2000, upper=now, limit=10, topics=(TOPIC,))
        waku_got, waku_sum, waku_cap = await _history(tmp_path / "cw", b, "auto", opts)
        shh_got, shh_sum, shh_cap = await _history(tmp_path / "cs", b, "shh", opts)
        assert (waku_cap, shh_cap) == ("waku", "shh")
        assert sorted(waku_got) == sorted(e.hash for e in envs) == sorted(shh_got)
        assert waku_sum.pages == shh_sum.pages == 3 and waku_sum.completed and shh_sum.completed
        ms = b.core.request_handler
        assert ms.stats.by_protocol == {"waku": 3, "shh": 3}  # type: ignore[union-attr]
    finally:
        await b.stop()
        await archive.close()


async def test_envelopes_relayed_over_shh_are_served_to_waku_clients_and_back(tmp_path: Path) -> None:
    b, archive = await _mail_node(tmp_path / "b")
    a = await start_dual(tmp_path / "a", waku=False)
    c = await start_dual(tmp_path / "c", shh=False)
    try:
        await a.server.connect(b.server.enode)
        await c.server.connect(b.server.enode)
        await until(lambda: len(b.core.peers) == 2
                    and all(rp.status is not None for rp in b.core.peers.values()), what="statuses")
        from_a, from_c = fresh(topic=TOPIC), fresh(topic=TOPIC, data=b"c" * 80)
        assert a.core.post(from_a) and c.core.post(from_c)
        for env in (from_a, from_c):
            for _ in range(200):
                if await archive.contains(env.sent, env.hash):
                    break
                await asyncio.sleep(0.05)
        now = int(time.time())
        opts = HistoryOptions(form="direct", lower=now - 300, upper=now + 60, topics=(TOPIC,))
        waku_got, _, cap1 = await _history(tmp_path / "hw", b, "waku", opts)
        shh_got, _, cap2 = await _history(tmp_path / "hs", b, "shh", opts)
        assert (cap1, cap2) == ("waku", "shh")
        assert from_a.hash in waku_got  # arrived over shh, served over waku
        assert from_c.hash in shh_got  # arrived over waku, served over shh
    finally:
        for n in (a, c, b):
            await n.stop()
        await archive.close()


async def test_waku_request_forms_lists_and_request_complete(tmp_path: Path) -> None:
    b, archive = await _mail_node(tmp_path / "b")
    try:
        now = int(time.time())
        envs = plain_envelopes(5, now - 100, TOPIC)
        await archive.submit([archived(e) for e in envs])
        server, raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, bytes(rlp.encode([[0, 0]])))
        # the waku MessagesRequest: [ID, From, To, Limit, Cursor, Bloom, Topics] with an empty bloom
        req = MessagesRequest(b"\x07" * 32, now - 200, now, 3, b"", b"", (TOPIC,))
        peer.send("waku", 126, req.encode())
        await until(lambda: 125 in raw.codes(), what="request complete")
        lists = raw.payloads(127)
        assert lists and all(isinstance(rlp.decode(p), list) for p in lists)
        got = [e.hash for p in lists for e in decode_envelope_list(p)]
        assert len(got) == 3
        done = decode(raw.payloads(125)[0])
        assert isinstance(done, RequestComplete) and done.request_id == b"\x07" * 32 and done.cursor
        # the next page with the cursor
        peer.send("waku", 126, MessagesRequest(b"\x08" * 32, now - 200, now, 3, done.cursor, b"",
                                               (TOPIC,)).encode())
        await until(lambda: len(raw.payloads(125)) == 2, what="second page")
        got2 = [e.hash for p in raw.payloads(127)[len(lists):] for e in decode_envelope_list(p)]
        assert set(got) | set(got2) == {e.hash for e in envs}
        await server.stop()
    finally:
        await b.stop()
        await archive.close()


async def test_limits_and_allowlist_apply_per_client_whatever_its_protocol(tmp_path: Path) -> None:
    allowed = NodeKey.generate()
    b, archive = await _mail_node(tmp_path / "b", min_request_interval_s=30.0,
                                  allowed_clients=[allowed.public.hex()])
    try:
        now = int(time.time())
        opts = HistoryOptions(form="direct", lower=now - 100, upper=now, topics=(TOPIC,))
        # a stranger is refused over waku with ERROR=
        server, raw, peer = await raw_waku_peer(tmp_path / "r", b.server)
        peer.send("waku", 0, bytes(rlp.encode([[0, 0]])))
        peer.send("waku", 126, MessagesRequest(b"\x01" * 32, now - 10, now, 10, b"", b"", (TOPIC,)).encode())
        await until(lambda: 125 in raw.codes(), what="refusal")
        refusal = decode(raw.payloads(125)[0])
        assert isinstance(refusal, RequestFailed) and "not allowed" in refusal.message
        await server.stop()
        # the allowed client: a request over waku passes, the next one over shh is rate limited
        _got, summary, cap = await _history(tmp_path / "h1", b, "waku", opts, key=allowed)
        assert cap == "waku" and summary.completed
        shh = RawShh()
        (tmp_path / "h2").mkdir()
        node = NodeServer(allowed, NodeConfig(listen="127.0.0.1:0", data_dir=tmp_path / "h2"), [shh])
        await node.start()
        speer = await node.connect(b.server.enode)
        await until(lambda: 0 in shh.codes(), what="shh status")
        speer.send("shh", 0, bytes(rlp.encode([6, 0, b"\xff" * 64, False, True, [0, 0, 0]])))
        speer.send("shh", 126, MessagesRequest(b"\x02" * 32, now - 10, now, 10, b"", b"\xff" * 64).encode())
        await until(lambda: 125 in shh.codes(), what="shh answer")
        limited = decode(shh.payloads(125)[0])
        assert isinstance(limited, RequestFailed) and limited.message == "rate limit exceeded"
        await node.stop()
    finally:
        await b.stop()
        await archive.close()
