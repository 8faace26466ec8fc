"""The composition room wires the parts the config names, and starts none of them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pimail import composition
from pimail.appliance.clock import ClockTrust
from pimail.appliance.control import CommandRegistry
from pimail.config import Config
from pimail.crypto.keys import NodeKey
from pimail.health import HealthModel


async def _build(tmp_path: Path, config: Config) -> tuple[composition.Services, composition.ApplianceParts,
                                                         list[int]]:
    health = HealthModel()
    durable: list[int] = []
    archive = composition.build_archive(config, tmp_path, health, on_durable=durable.append,
                                        on_error=lambda _: None)
    pairing = composition.build_pairing(config, tmp_path, health)
    key = composition.load_node_key(tmp_path)
    listener = object()
    services = await composition.build_services(config, key=key, archive=archive, clock=ClockTrust("always"),
                                                health=health, pairing=pairing, listeners=[listener])
    assert listener in services.relay.listeners
    server = composition.build_node_server(config, key, services, health)
    parts = composition.build_appliance(
        config, data_dir=tmp_path, snapshot=dict, registry=CommandRegistry(), enode=None, pairing=pairing,
        leds=None, services=services, server=server, archive=archive)
    await services.relay.close()
    if services.mailserver is not None:
        await services.mailserver.close()
    await pairing.close()
    return services, parts, durable


def test_with_the_mailserver_the_relay_hands_it_requests_and_it_stops_first(tmp_path: Path) -> None:
    config = Config()
    config.status.metrics = False
    services, parts, durable = asyncio.run(_build(tmp_path, config))
    assert services.capabilities == [services.waku, services.whisper]  # both protocols by default
    assert services.whisper is not None and services.waku is not None
    assert services.whisper.core is services.relay and services.waku.core is services.relay
    assert services.mailserver is not None and services.relay.request_handler is services.mailserver
    assert [name for name, _ in services.closers] == ["deliveries", "relay"]
    assert parts.heartbeat is not None and parts.backfill is not None and parts.metrics is None
    assert parts.status_page is None  # no enode yet: the page needs one
    assert durable == []  # the archive was never opened or written
    assert (tmp_path / composition.NODEKEY_FILE).is_file()
    assert NodeKey.load_or_create(tmp_path / composition.NODEKEY_FILE).public


def test_without_the_mailserver_only_the_relay(tmp_path: Path) -> None:
    config = Config()
    config.mailserver.enabled = False
    config.status.metrics = False
    services, parts, _ = asyncio.run(_build(tmp_path, config))
    assert services.mailserver is None and services.relay.request_handler is None
    assert [name for name, _ in services.closers] == ["relay"]
    assert parts.heartbeat is None and parts.backfill is None


def test_trusted_peers_become_node_ids(tmp_path: Path) -> None:
    key = NodeKey.generate()
    config = Config()
    config.node.trusted_peers = [f"enode://{key.public.hex()}@127.0.0.1:30303"]
    assert composition.trusted_node_ids(config) == {key.node_id}


def test_each_protocol_can_be_switched_off_but_not_both(tmp_path: Path) -> None:
    import pytest

    from pimail.errors import UserError

    config = Config()
    config.status.metrics = False
    config.waku.enabled = False
    services, _, _ = asyncio.run(_build(tmp_path / "a", config))
    assert services.capabilities == [services.whisper] and services.waku is None
    config = Config()
    config.status.metrics = False
    config.whisper.enabled = False
    services, _, _ = asyncio.run(_build(tmp_path / "b", config))
    assert services.capabilities == [services.waku] and services.whisper is None
    config.waku.enabled = False
    with pytest.raises(UserError, match="both false"):
        asyncio.run(_build(tmp_path / "c", config))
