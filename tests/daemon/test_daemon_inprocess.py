"""The Daemon in-process: a real peer over TCP, LEDs on MockFactory, reload without dropping the peer,
and Disconnect 0x08 on stop."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

from gpiozero.pins.mock import MockFactory

from pimail.appliance import control
from pimail.appliance.clock import ClockTrust
from pimail.config import Config
from pimail.configfile import apply_overrides, load_config
from pimail.crypto.keys import Enode, NodeKey
from pimail.daemon import Daemon
from pimail.envelope.seal import seal
from pimail.health import HealthState
from pimail.whisper.client import client_session
from tests.waiting import eventually


def write_config(path: Path, data_dir: Path, node: str = "", archive: str = "") -> None:
    path.write_text(
        f'[node]\nlisten = "127.0.0.1:0"\ndata_dir = "{data_dir}"\n{node}'
        f'[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\n{archive}'
        '[status]\npage = false\nmetrics = false\n'
    )


def test_daemon_serves_a_peer_reloads_without_dropping_it_and_says_0x08_on_stop() -> None:
    root = Path(tempfile.mkdtemp(prefix="pmi-"))
    conf = root / "pimail.toml"
    write_config(conf, root / "data")
    factory = MockFactory()

    async def scenario() -> None:
        loaded = load_config(conf)
        daemon = Daemon(loaded.config, config_path=conf, pin_factory=factory, env={})
        await daemon.start()
        try:
            assert daemon.health.state is HealthState.HEALTHY
            assert daemon.leds is not None and daemon.leds.led("green").is_lit
            assert daemon.notifier.backend == "none"  # no NOTIFY_SOCKET: nothing sent, nothing fails
            assert daemon.server is not None
            enode = Enode(daemon.key.public if daemon.key else b"", "127.0.0.1", daemon.server.listen_port)
            async with client_session(enode) as session:
                await eventually(lambda: daemon.status_snapshot()["peer_count"] == 1)
                env = seal(int(time.time()) + 120, 120, b"\x0b\xad\xf0\x0d", b"x" * 64, 0.01).envelope
                assert session.whisper.post(env)
                await eventually(lambda: daemon.counters["archived"] >= 1)
                snap = daemon.status_snapshot()
                peer = snap["peers"][0]
                assert peer["enode"].startswith("enode://" + session.node.key.public.hex())
                assert peer["client"].startswith("pimail/") and "shh/6" in peer["protocol"]
                assert peer["bytes_in"] > 0 and peer["bytes_out"] > 0 and peer["inbound"] is True
                assert snap["counters"]["envelopes_in"] >= 1

                # reload: new retention and a static peer, the connected peer stays
                other = NodeKey.generate().public.hex()
                write_config(
                    conf, root / "data",
                    node=f'static_peers = ["enode://{other}@127.0.0.1:9"]\n', archive='max_age = "1d"\n',
                )
                result = await daemon.reload()
                assert result["reloaded"] is True
                assert "retention" in result["changed"] and "static_peers" in result["changed"]
                assert daemon.status_snapshot()["retention"]["max_age_s"] == 86400
                assert not session.peer.closed, "reload must not drop connections"

                # the control socket answers with the same snapshot
                sock = control.find_socket(root / "data", {})
                assert sock is not None
                status = await asyncio.to_thread(control.call, sock, "status")
                assert status["peer_count"] == 1 and status["health"]["state"] == "healthy"
                helped = await asyncio.to_thread(control.call, sock, "help")
                assert {"status", "reload", "pair.start"} <= set(helped)

                await daemon.stop()
                await eventually(lambda: session.peer.closed)
                assert session.peer.close_reason == "peer disconnected: client quitting"
        finally:
            await daemon.stop()
        assert not daemon.leds.enabled if daemon.leds else True

    asyncio.run(asyncio.wait_for(scenario(), 60))
    factory.reset()


def test_bad_reload_keeps_the_running_config() -> None:
    root = Path(tempfile.mkdtemp(prefix="pmi-"))
    conf = root / "pimail.toml"
    write_config(conf, root / "data")

    async def scenario() -> None:
        daemon = Daemon(load_config(conf).config, config_path=conf, env={})
        await daemon.start()
        try:
            conf.write_text(conf.read_text() + "[archive]\nmax_age = 'soon'\n")
            result = await daemon.reload()
            assert result["reloaded"] is False and "TOML syntax error" in result["reason"]
            write_config(conf, root / "data", archive='max_age = "soon"\n')
            result = await daemon.reload()
            assert result["reloaded"] is False and ":7: [archive] max_age" in result["reason"]
            assert daemon.config.archive.max_age == "30d"
            write_config(conf, root / "data", node="max_peers = 3\n")
            conf.write_text(conf.read_text() + "[whisper]\nmin_pow = 0.5\n")
            result = await daemon.reload()
            assert result["reloaded"] is True and result["changed"] == ["whisper limits"]
            assert result["restart_needed"] == ["[node] max_peers"]
            assert daemon.config.node.max_peers == 50, "the running value stays until a restart"
            assert daemon.whisper is not None and daemon.whisper.config.min_pow == 0.5
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_untrusted_clock_relays_but_does_not_archive_until_synced() -> None:
    root = Path(tempfile.mkdtemp(prefix="pmi-"))
    conf = root / "pimail.toml"
    write_config(conf, root / "data")
    flag = root / "timesync" / "synchronized"
    clock = ClockTrust(
        "synced", flag_path=flag, mechanism_paths=(flag.parent,), kernel_synced=lambda: False
    )

    async def scenario() -> None:
        daemon = Daemon(load_config(conf).config, config_path=conf, env={}, clock=clock)
        await daemon.start()
        try:
            assert daemon.health.state is HealthState.DEGRADED
            assert "clock not synchronized" in daemon.health.summary
            assert daemon.status_snapshot()["clock"]["trusted"] is False
            assert daemon.server is not None and daemon.key is not None
            enode = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port)
            async with client_session(enode) as session:
                first = seal(int(time.time()) + 120, 120, b"\x01\x02\x03\x04", b"a" * 32, 0.01).envelope
                assert session.whisper.post(first)
                await eventually(lambda: daemon.counters["envelopes_in"] >= 1)
                await asyncio.sleep(0.5)
                assert daemon.counters["archived"] == 0, "no archiving on an untrusted clock"
                flag.parent.mkdir(parents=True)
                flag.touch()
                assert clock.refresh()
                assert daemon.health.state is HealthState.HEALTHY
                second = seal(int(time.time()) + 120, 120, b"\x01\x02\x03\x04", b"b" * 32, 0.01).envelope
                assert session.whisper.post(second)
                await eventually(lambda: daemon.counters["archived"] >= 1)
            assert daemon.archive is not None
            assert not await daemon.archive.contains(first.sent, first.hash)
            assert await daemon.archive.contains(second.sent, second.hash)
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))


def test_command_line_overrides_survive_a_reload() -> None:
    root = Path(tempfile.mkdtemp(prefix="pmi-"))
    conf = root / "pimail.toml"
    write_config(conf, root / "data")
    peer = f"enode://{NodeKey.generate().public.hex()}@127.0.0.1:9"

    def overrides(config: Config) -> None:
        apply_overrides(config, static_peers=[peer])

    async def scenario() -> None:
        config = load_config(conf).config
        overrides(config)
        daemon = Daemon(config, config_path=conf, env={}, overrides=overrides)
        await daemon.start()
        try:
            write_config(conf, root / "data", archive='max_age = "3d"\n')
            result = await daemon.reload()
            assert result["reloaded"] is True and "static_peers" not in result["changed"]
            assert daemon.config.node.static_peers == [peer], "--static-peer still wins over the file"
            assert daemon.config.archive.max_age == "3d"
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
