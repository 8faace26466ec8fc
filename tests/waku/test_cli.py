"""``pimail post`` / ``watch`` / ``history`` with ``--protocol`` against a dual-stack node."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from pimail.archive.sqlite import SqliteArchive
from pimail.config import WhisperConfig
from pimail.mailserver.server import create_mailserver
from tests.mailserver.nodes import open_mailserver_config
from tests.nodes import start_dual, until
from tests.whisper.test_cli import pimail

TOPIC = "cafe0002"


async def test_post_watch_and_history_over_waku_and_shh(tmp_path: Path) -> None:
    archive = SqliteArchive(tmp_path / "a.sqlite")
    await archive.open()
    node = await start_dual(tmp_path / "n", archive=archive, config=WhisperConfig(min_pow=0.002))
    node.core.request_handler = await create_mailserver(archive, open_mailserver_config(), private_key=None)
    enode = node.server.enode.url()
    try:
        watch = asyncio.create_task(
            pimail("watch", "--peer", enode, "--topic", TOPIC, "--sym-password", "secret",
                   "--protocol", "shh", "--seconds", "12", "--json"))
        await until(lambda: node.core.peer_counts().get("shh/6") == 1, timeout=10, what="shh watcher")
        rc, out, err = await pimail("post", "--peer", enode, "--topic", TOPIC, "--sym-password", "secret",
                                    "hello over waku")  # auto: the node offers waku/1
        assert rc == 0, err
        assert out.split()[1] == "confirmed"
        posted = out.split()[0]
        rc, out, err = await watch
        assert rc == 0, err
        assert [json.loads(line)["hash"] for line in out.splitlines()] == [posted]  # bridged to shh
        assert node.core.counters["envelopes_out_shh"] >= 1
        for _ in range(100):
            if node.core.counters["archived_submitted"] and (await archive.stats()).count:
                break
            await asyncio.sleep(0.05)
        now = int(time.time())
        for protocol in ("waku", "shh"):
            rc, out, err = await pimail("history", "--mailserver", enode, "--protocol", protocol,
                                        "--topic", TOPIC, "--from", str(now - 600), "--to", str(now + 60),
                                        "--json")
            assert rc == 0, (protocol, err)
            hashes = [json.loads(line).get("hash") for line in out.splitlines()[:-1]]
            assert hashes == [posted], (protocol, out)
        served = node.core.request_handler.stats.by_protocol  # type: ignore[union-attr]
        assert served == {"waku": 1, "shh": 1}
        rc, _, err = await pimail("post", "--peer", enode, "--topic", TOPIC, "--sym-password", "x",
                                  "--protocol", "smoke", "y")
        assert rc == 2 and "--protocol" in err
    finally:
        await node.stop()
        await archive.close()
