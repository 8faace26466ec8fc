"""The composition room: which parts make one pimail node, and how they are wired, from ``Config``.

Nothing here starts, stops or waits for anything: ``pimail.daemon`` calls these builders in its
start order, starts and stops what they return, and handles signals and reloads. Each builder takes
the parts it needs and returns new ones, unstarted:

- the node's files: ``prepare_data_dir``, ``load_node_key``;
- the archive ``[archive]`` names (``pimail.archive.open_archive``), wrapped in an ``ObservedArchive``
  so the daemon counts durable writes: ``build_archive``;
- the pairing controller, which is also the mailserver's access policy: ``build_pairing``;
- the services: the sub-protocols offered to peers (waku/1, waku/0, shh/6 on one relay core) and the
  mailserver behind them, on one archive: ``build_services``. To add a sub-protocol, build it there,
  append it to ``capabilities`` (the NodeServer offers them in that order) and its ``close`` to
  ``closers``;
- the node server that offers the capabilities, and the enode phones should dial: ``build_node_server``,
  ``own_enode``;
- the appliance parts around the running node: metrics, status page, pair button, heartbeat and
  backfill from sibling mailservers: ``build_appliance``.

The daemon's own instruments (health model, systemd notifier, loop monitor, LEDs, control socket)
are made by the daemon: they exist before any of these parts and outlive them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pimail.appliance import control
from pimail.appliance.clock import ClockTrust
from pimail.appliance.leds import LedPanel
from pimail.appliance.metrics import NodeMetrics
from pimail.appliance.pairing import PairingController
from pimail.archive import open_archive
from pimail.archive.observed import ObservedArchive
from pimail.config import Config
from pimail.crypto.keys import Enode, KeyError_, NodeKey
from pimail.errors import RuntimeFailure, UserError
from pimail.health import HealthModel
from pimail.mailserver.access import SiblingPolicy
from pimail.mailserver.server import MailServer, create_mailserver
from pimail.node.capability import Capability
from pimail.node.mesh import Mesh
from pimail.node.server import NodeServer
from pimail.relay.core import RelayCore
from pimail.waku.service import WakuService
from pimail.whisper.service import WhisperService

if TYPE_CHECKING:
    from pimail.appliance.pairing import PairButton
    from pimail.appliance.statuspage import StatusPage
    from pimail.archive.sqlite.guard import ArchiveGuard
    from pimail.mailserver.sync import Backfill, Heartbeat

log = logging.getLogger("pimail.daemon")

NODEKEY_FILE = "nodekey"

#: (name for the log, what to await) — one step of stopping
StopStep = tuple[str, Callable[[], Awaitable[Any]]]


# -- the node's files -----------------------------------------------------------------------------------


def prepare_data_dir(data_dir: Path) -> None:
    from pimail.configfile import make_data_dir

    make_data_dir(data_dir)
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise RuntimeFailure(f"data dir {data_dir} is not writable by this user")


def load_node_key(data_dir: Path) -> NodeKey:
    try:
        return NodeKey.load_or_create(data_dir / NODEKEY_FILE)
    except KeyError_ as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot use node key in {data_dir}: {exc.strerror or exc}") from None


# -- the archive and the services on it -----------------------------------------------------------------


def build_archive(config: Config, data_dir: Path, health: HealthModel, *, on_durable: Callable[[int], None],
                  on_error: Callable[[str], None]) -> ObservedArchive:
    """The archive ``[archive]`` names, unopened, with the daemon watching its writes."""
    return ObservedArchive(open_archive(config.archive, data_dir, health), on_durable, on_error)


def build_archive_guard(config: Config, data_dir: Path, health: HealthModel,
                        archive: ObservedArchive) -> ArchiveGuard | None:
    """The guard of the SQLite archive (checks, damage, salvage); None for PostgreSQL (the server's job)."""
    if config.archive.url:
        return None
    from pimail.archive import SQLITE_FILE
    from pimail.archive.retention import policy_from_config
    from pimail.archive.sqlite.guard import ArchiveGuard

    cfg = config.archive
    return ArchiveGuard(archive, lambda: open_archive(cfg, data_dir, health), data_dir / SQLITE_FILE, health,
                        lambda: policy_from_config(config.archive).max_age_s,
                        lambda: policy_from_config(config.archive).min_free_disk_bytes)


def build_pairing(config: Config, data_dir: Path, health: HealthModel) -> PairingController:
    return PairingController(data_dir, config.mailserver.allowed_clients, health)


def trusted_node_ids(config: Config) -> set[bytes]:
    """Node ids of ``[node] trusted_peers`` (their 125/127 are accepted)."""
    from pimail.crypto.keccak import keccak256
    from pimail.mailserver.access import parse_client_key

    return {keccak256(parse_client_key(entry)) for entry in config.node.trusted_peers}


@dataclass
class Services:
    """What the node offers its peers, on one archive: one relay core under every protocol."""

    relay: RelayCore
    whisper: WhisperService | None
    waku: WakuService | None
    mailserver: MailServer | None
    #: the sub-protocols the NodeServer offers, in this order
    capabilities: list[Capability] = field(default_factory=list)
    #: how to stop them once the peers are gone, in this order
    closers: list[StopStep] = field(default_factory=list)


async def build_services(
    config: Config,
    *,
    key: NodeKey,
    archive: ObservedArchive,
    clock: ClockTrust,
    health: HealthModel,
    pairing: PairingController,
    listeners: Sequence[object] = (),
) -> Services:
    """waku/1, waku/0 and shh/6 (each unless switched off) on one relay core archiving into the
    archive — the bridge between the two networks — and the mailserver answering history requests
    from it on either protocol.

    ``listeners`` get the relay's events (``on_envelope``, …). Async: the mailserver derives its
    password key off the loop. Raises ``UserError`` when both protocols are switched off.
    """
    if not config.whisper.enabled and not config.waku.enabled:
        raise UserError("[whisper] enabled and [waku] enabled are both false: pimail would speak no protocol")
    trusted = trusted_node_ids(config)
    relay = RelayCore(config.whisper, archive=archive, clock_trusted=clock, health=health, trusted=trusted)
    relay.listeners.extend(listeners)
    capabilities: list[Capability] = []
    whisper: WhisperService | None = None
    waku: WakuService | None = None
    if config.waku.enabled:
        waku = WakuService(config.waku, relay)
        capabilities.append(waku)
    if config.whisper.enabled:
        whisper = WhisperService(config.whisper, archive=archive, clock_trusted=clock, health=health,
                                 core=relay)
        capabilities.append(whisper)
    mailserver: MailServer | None = None
    if config.mailserver.enabled:
        siblings = SiblingPolicy([*config.mailserver.sync_from, *config.node.static_peers])
        mailserver = await create_mailserver(
            archive,
            config.mailserver,
            private_key=key.private,
            max_message_size=config.whisper.max_message_size,
            access=pairing,
            sync_allowed=lambda peer: siblings.admit(peer.pubkey) or peer.node_id in trusted,
        )
        relay.request_handler = mailserver
    services = Services(relay, whisper, waku, mailserver, capabilities=capabilities)
    if mailserver is not None:
        services.closers.append(("deliveries", mailserver.close))
    services.closers.append(("relay", relay.close))
    return services


# -- the node server ------------------------------------------------------------------------------------


def build_node_server(config: Config, key: NodeKey, services: Services, health: HealthModel) -> NodeServer:
    return NodeServer(key, config.node, services.capabilities, health=health)


def build_mesh(config: Config, server: NodeServer, pairing: PairingController | None) -> Mesh:
    """Discovery and the dial scheduler for ``server``; trusted peers and paired or allowed clients
    may always come in (the reserved slots of ``[node] reserved_slots`` keep room for them)."""
    from pimail.mailserver.access import parse_client_key

    trusted = {parse_client_key(entry) for entry in config.node.trusted_peers}
    server.privileged = lambda pub: pub in trusted or (pairing is not None and pub in pairing.allowed)
    return Mesh(server, config)


def own_enode(config: Config, key: NodeKey, port: int) -> Enode:
    """The enode phones should dial: ``[node] public_host``, the listen address when it is not a
    wildcard, else the primary LAN address; warns when that is unreachable from other machines."""
    from pimail.appliance.lan import advertised_address, enode_for, reachability_warning

    host = config.node.listen.rpartition(":")[0] or "0.0.0.0"
    try:
        address = advertised_address(f"{host}:{port}", config.node.public_host)
    except UserError as exc:
        log.warning("enode: %s; advertising 127.0.0.1, which only this machine can reach", exc)
        return Enode(key.public, "127.0.0.1", port)
    warning = reachability_warning(address)
    if warning and (address.loopback or address.source == "fallback"):
        log.warning("enode: %s", warning)
    return enode_for(key.public, address)


# -- the appliance around the running node --------------------------------------------------------------


@dataclass
class ApplianceParts:
    metrics: NodeMetrics | None = None
    status_page: StatusPage | None = None
    pair_button: PairButton | None = None
    heartbeat: Heartbeat | None = None
    backfill: Backfill | None = None


def build_appliance(
    config: Config,
    *,
    data_dir: Path,
    snapshot: Callable[[], dict[str, Any]],
    registry: control.CommandRegistry,
    enode: Enode | None,
    pairing: PairingController,
    leds: LedPanel | None,
    services: Services,
    server: NodeServer,
    archive: ObservedArchive,
    pin_factory: Any = None,
) -> ApplianceParts:
    """The parts that show and steer the node; ``snapshot`` is the one status dict they read."""
    from pimail.appliance.pairing import register_control_commands

    register_control_commands(registry, pairing, config.status.pairing_minutes)
    parts = ApplianceParts()
    mailserver = services.mailserver
    if config.status.metrics:
        parts.metrics = NodeMetrics(snapshot)
        if mailserver is not None:
            mailserver.on_request_done = parts.metrics.observe_request
    if config.status.page and enode is not None:
        from pimail.appliance.statuspage import StatusPage

        parts.status_page = StatusPage(config.status, snapshot, enode, pairing=pairing,
                                       mailserver_password=config.mailserver.password)
    if config.leds.pair_button and leds is not None and leds.enabled:
        from pimail.appliance.pairing import PairButton

        try:
            parts.pair_button = PairButton(config.leds.pair_button, pairing, config.status.pairing_minutes,
                                           asyncio.get_running_loop(), pin_factory)
        except Exception as exc:
            log.warning("pair button on BCM %d unavailable: %s", config.leds.pair_button, exc)
    if mailserver is not None:  # heartbeat, and backfill from sibling mailservers
        from pimail.mailserver.sync import Backfill, Heartbeat, SyncClient

        parts.heartbeat = Heartbeat(data_dir)
        # Backfill reads "last up" now, before the heartbeat starts writing it
        parts.backfill = Backfill(server, SyncClient(mailserver, archive), config.mailserver, parts.heartbeat)
    return parts
