"""A real daemon on 127.0.0.1 draws its day: envelopes posted by a real peer and history fetched by a
real client land in the 10-minute slots of a fake wall clock, the status page's SVGs in headless
Chromium hold exactly those counts, the page shows no internal fields, and a restarted daemon
still has them (``<data dir>/activity.json``)."""

from __future__ import annotations

import asyncio
import html as htmllib
import json
import re
import tempfile
import time
from pathlib import Path

from pimail.appliance.activity import FILE_NAME, SLOT_S, SLOTS, slot_of
from pimail.config import NodeConfig
from pimail.configfile import load_config
from pimail.crypto.keys import Enode, NodeKey
from pimail.daemon import Daemon
from pimail.envelope.seal import seal
from pimail.mailserver.client import HistoryClient, HistoryOptions, client_whisper_config
from pimail.node.server import NodeServer
from pimail.whisper.client import ClientStack, client_session
from tests.appliance.cdp import Browser
from tests.waiting import eventually

TOPIC = bytes.fromhex("0badf00d")
READ = """(() => { const out = {}; for (const el of document.querySelectorAll('[data-series]'))
  out[el.dataset.series] = el.dataset.values.split(',').map(v => v === '' ? null : Number(v));
  out.text = document.body.innerText; return out; })()"""


async def _fetch_history(daemon: Daemon, root: Path) -> int:
    key = NodeKey.generate()
    stack = ClientStack(client_whisper_config(), "auto")
    node = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=root / "client"), stack.capabilities)
    await node.start()
    try:
        assert daemon.key is not None and daemon.server is not None
        enode = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port)
        now = int(time.time())
        opts = HistoryOptions(form="direct", lower=now - 600, upper=now + 600, topics=(TOPIC,))
        return len([item async for item in HistoryClient(key, stack, node).fetch(enode, opts)])
    finally:
        await node.stop()
        await stack.close()


def test_a_real_daemons_day_in_the_page_and_after_a_restart() -> None:
    root = Path(tempfile.mkdtemp(prefix="pmi-day-"))
    conf = root / "pimail.toml"
    conf.write_text(
        f'[node]\nlisten = "127.0.0.1:0"\ndata_dir = "{root / "data"}"\n'
        '[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\n'
        '[status]\nmetrics = false\npage_listen = "127.0.0.1:0"\n'
    )
    wall = [slot_of(time.time()) * SLOT_S + 5.0]  # the fake clock that dates the slots
    slot_a = slot_of(wall[0])
    slot_b = slot_a + 3  # half an hour later

    def index(slot: int) -> int:
        return SLOTS - 1 - (slot_b - slot)

    async def scenario() -> None:
        daemon = Daemon(load_config(conf).config, config_path=conf, env={}, wall_clock=lambda: wall[0])
        await daemon.start()
        try:
            assert daemon.key is not None and daemon.server is not None and daemon.status_page is not None
            enode = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port)
            async with client_session(enode) as session:
                await eventually(lambda: daemon.status_snapshot()["peer_count"] == 1, what="one peer")
                protocols = set(daemon.status_snapshot()["peers_by_protocol"])
                for i in range(3):
                    env = seal(int(time.time()) + 300, 300, TOPIC, b"slot a %d" % i, 0.01).envelope
                    assert session.whisper.post(env)
                await eventually(lambda: daemon.counters["archived"] == 3, what="3 archived")
                await daemon._refresh_stats()
                wall[0] += 3 * SLOT_S
                for i in range(2):
                    env = seal(int(time.time()) + 300, 300, TOPIC, b"slot b %d" % i, 0.01).envelope
                    assert session.whisper.post(env)
                await eventually(lambda: daemon.counters["archived"] == 5, what="5 archived")
            assert await _fetch_history(daemon, root) == 5
            await daemon._refresh_stats()

            async with Browser() as browser:
                await browser.open(f"http://127.0.0.1:{daemon.status_page.port}/", 390)
                seen = await browser.evaluate(READ)
            archived, served = seen["archived"], seen["served"]
            assert archived[index(slot_a)] == 3 and archived[index(slot_b)] == 2
            assert archived[index(slot_a) + 1] is None  # the fake clock skipped those slots
            assert served[index(slot_a)] == 0 and served[index(slot_b)] == 5
            assert sum(v or 0 for v in archived) == 5 and sum(v or 0 for v in served) == 5
            for proto in protocols:
                assert seen[f"peers:{proto}"][index(slot_a)] == 1
            assert (seen["disk_bytes"][index(slot_b)] or 0) > 0
            text = re.sub(r"\s+", " ", htmllib.unescape(seen["text"]))
            for internal in ("recent lag", "recent cpu", "tick", "node counters", "reason", "open —", "LEDs"):
                assert internal not in text, internal  # a machine without GPIO has no LED line
        finally:
            await daemon.stop()

        path = root / "data" / FILE_NAME
        saved = json.loads(path.read_text())
        assert {str(slot_a), str(slot_b)} <= set(saved["slots"])

        again = Daemon(load_config(conf).config, config_path=conf, env={}, wall_clock=lambda: wall[0])
        await again.start()
        try:
            day = again.status_snapshot()["activity"]
            assert day["archived"][index(slot_a)] == 3 and day["archived"][index(slot_b)] == 2
            assert day["served"][index(slot_b)] == 5
        finally:
            await again.stop()

    asyncio.run(asyncio.wait_for(scenario(), 180))
