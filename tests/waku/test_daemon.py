"""The daemon offers waku/1, waku/0 and shh/6 on one listener by default, bridges between them and
shows peers per protocol; `[waku] enabled = false` takes waku off the Hello."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import pytest
import rlp

from pimail.config import NodeConfig
from pimail.configfile import load_config
from pimail.crypto.keys import Enode, NodeKey
from pimail.daemon import Daemon
from pimail.envelope.seal import seal
from pimail.errors import RuntimeFailure
from pimail.node.server import NodeServer
from pimail.whisper.client import client_session
from tests.daemon.test_daemon_inprocess import write_config
from tests.nodes import RawWaku, until


def _daemon(extra: str = "") -> Daemon:
    root = Path(tempfile.mkdtemp(prefix="pmw-"))
    conf = root / "pimail.toml"
    write_config(conf, root / "data")
    conf.write_text(conf.read_text() + extra)
    return Daemon(load_config(conf).config, config_path=conf, env={})


def test_default_daemon_offers_all_three_and_bridges_them() -> None:
    daemon = _daemon()

    async def scenario() -> None:
        await daemon.start()
        try:
            assert daemon.server is not None and daemon.key is not None
            hello = dict.fromkeys(daemon.server.local_hello().capabilities)
            assert list(hello) == [("shh", 6), ("waku", 0), ("waku", 1)]
            enode = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port)
            # an old Status client with waku/0 only
            raw = RawWaku(version=0)
            tmp = Path(tempfile.mkdtemp(prefix="pmw-raw-"))
            old = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=tmp), [raw])
            await old.start()
            v0 = await old.connect(enode)
            assert v0.capabilities == [("waku", 0)]
            v0.send("waku", 0, bytes(rlp.encode([0, [[b"0", 0]]])))  # waku/0 Status: PoW 0
            async with client_session(enode, protocol="waku") as waku, \
                    client_session(enode, protocol="shh") as shh:
                assert (waku.protocol, shh.protocol) == ("waku/1", "shh/6")
                await until(lambda: daemon.status_snapshot()["peers_by_protocol"]
                            == {"waku/0": 1, "waku/1": 1, "shh/6": 1}, what="peers per protocol")
                seen: list[bytes] = []

                class Seen:
                    def on_envelope(self, env: object) -> None:
                        seen.append(env.hash)  # type: ignore[attr-defined]

                shh.whisper.listeners.append(Seen())
                env = seal(int(time.time()) + 120, 120, b"\x0b\xad\xf0\x0d", b"w" * 64, 0.01).envelope
                assert waku.whisper.post(env)
                await until(lambda: env.hash in seen, timeout=10, what="waku → daemon → shh client")
                await until(lambda: daemon.counters["archived"] >= 1, timeout=10, what="archived")
                assert daemon.counters["archived"] == 1  # once, though two protocols carried it
                await until(lambda: 1 in raw.codes(), timeout=10, what="relayed to the waku/0 peer too")
            await old.stop()
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_waku_switched_off_leaves_a_waku_only_client_useless() -> None:
    daemon = _daemon("[waku]\nenabled = false\n")

    async def scenario() -> None:
        await daemon.start()
        try:
            assert daemon.server is not None and daemon.key is not None
            assert daemon.server.local_hello().capabilities == (("shh", 6),)
            enode = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port)
            with pytest.raises(RuntimeFailure, match="cannot connect"):
                async with client_session(enode, protocol="waku", timeout=5):
                    pass
            async with client_session(enode) as s:  # auto falls back to shh/6
                assert s.protocol == "shh/6"
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
