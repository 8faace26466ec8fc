"""``Daemon``: runs one node until told to stop — start and stop order, signals, SIGHUP reload,
housekeeping and the one status snapshot. Which parts the node has and how they are wired is
``pimail.composition``.

Start order: data dir → LEDs, loop monitor → control socket → clock trust → node key → archive
open → pairing → services (Whisper + mailserver) → NodeServer listening → metrics, status page,
pair button, heartbeat and backfill → ``READY=1``. Stop order (SIGTERM/SIGINT): ``STOPPING=1`` →
status page and control socket closed → peers disconnected with 0x08 → the services' closers
(deliveries cancelled, Whisper timers) → heartbeat, pairing → archive flushed and closed →
metrics, LEDs off. SIGHUP reloads static peers, limits and retention from the config file
without dropping connections.

The health model is the only source of truth for LEDs, the watchdog, ``STATUS=``, ``pimail status``,
metrics and the status page; ``status_snapshot()`` is the one dict they all read.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import errno
import logging
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pimail import __version__, composition
from pimail.appliance import control, lastboot
from pimail.appliance.activity import FILE_NAME as ACTIVITY_FILE
from pimail.appliance.activity import ActivityLog
from pimail.appliance.clock import ClockTrust
from pimail.appliance.leds import LedPanel
from pimail.appliance.looplag import LOOP_TICK_S, LoopLagMonitor
from pimail.appliance.memory import HeapTrimmer
from pimail.appliance.metrics import NodeMetrics
from pimail.appliance.pairing import PairButton, PairingController
from pimail.appliance.systemd import SystemdNotifier
from pimail.appliance.writeprobe import WriteProbe
from pimail.archive.base import ArchiveError, ArchiveStats
from pimail.archive.observed import ObservedArchive
from pimail.archive.retention import policy_from_config
from pimail.config import Config, WakuConfig, WhisperConfig
from pimail.configfile import ConfigError, load_config
from pimail.crypto.keys import Enode, NodeKey
from pimail.errors import RuntimeFailure
from pimail.health import HealthModel, HealthState, Severity
from pimail.mailserver.server import MailServer
from pimail.node.mesh import Mesh
from pimail.node.peer import Peer
from pimail.node.server import NodeServer
from pimail.relay.core import RelayCore
from pimail.waku.service import WakuService
from pimail.whisper.service import WhisperService

if TYPE_CHECKING:
    from pimail.appliance.statuspage import StatusPage  # these two are imported only when in use
    from pimail.archive.sqlite.guard import ArchiveGuard
    from pimail.mailserver.sync import Heartbeat

log = logging.getLogger(__name__)

STATS_INTERVAL_S = 5.0  # archive stats, disk, write probe, clock
# The loop's default executor (config reloads, disk probes, pairing writes): small
# jobs, so two threads; asyncio's default would grow to CPUs + 4, each thread a stack and a heap.
DEFAULT_EXECUTOR_THREADS = 2
ACTIVITY_POLL_S = 0.25  # delivery blinks follow MailServer stats at this pace
STOP_STEP_TIMEOUT_S = 10.0  # each shutdown step; systemd's TimeoutStopSec is the outer bound

HEALTH_UNWRITABLE = "archive.unwritable"
HEALTH_DISK_LOW = "disk.low"
# what a SIGHUP applies to the running node; every other change waits for a restart
RELOADABLE = {
    ("node", "static_peers"),
    *(("whisper", f.name) for f in dataclasses.fields(WhisperConfig) if f.name != "enabled"),
    *(("waku", f.name) for f in dataclasses.fields(WakuConfig) if f.name not in ("enabled", "waku0")),
    ("archive", "max_age"),
    ("archive", "max_count"),
    ("archive", "max_bytes"),
    ("archive", "min_free_disk"),
    ("mailserver", "min_request_interval_s"),
    ("mailserver", "bucket_rate_per_s"),
    ("mailserver", "bucket_burst"),
    ("mailserver", "max_concurrent_per_peer"),
}


def _human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


class Daemon:
    """One pimail node. ``await run()`` until SIGTERM; or ``start()`` / ``stop()`` from tests."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: Path | None = None,
        pin_factory: Any = None,
        env: Mapping[str, str] | None = None,
        clock: ClockTrust | None = None,
        overrides: Callable[[Config], None] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``wall_clock`` dates the 24-hour activity slots (tests pass a fake one)."""
        self.config = config
        self._wall = wall_clock
        self._overrides = overrides
        self.config_path = config_path
        self.env = dict(os.environ if env is None else env)
        self.data_dir = Path(config.node.data_dir)
        self.health = HealthModel()
        self.notifier = SystemdNotifier(env=self.env)
        self._pin_factory = pin_factory
        self._clock_override = clock
        self.clock: ClockTrust | None = None
        self.leds: LedPanel | None = None
        self.loop_monitor = LoopLagMonitor(self.health)
        self.activity = ActivityLog()  # replaced by the data dir's file at start
        self.trimmer = HeapTrimmer()
        self.write_probe = WriteProbe(self.data_dir)  # a read-only remount, a replaced data dir, lost rights
        self.key: NodeKey | None = None
        self.archive: ObservedArchive | None = None
        self.archive_guard: ArchiveGuard | None = None
        self.relay: RelayCore | None = None
        self.whisper: WhisperService | None = None
        self.waku: WakuService | None = None
        self.mailserver: MailServer | None = None
        self.server: NodeServer | None = None
        self.mesh: Mesh | None = None
        self.pairing: PairingController | None = None
        self.status_page: StatusPage | None = None
        self.pair_button: PairButton | None = None
        self.heartbeat: Heartbeat | None = None
        self._services: composition.Services | None = None
        self.metrics: NodeMetrics | None = None
        self.control: control.ControlServer | None = None
        self.registry = control.CommandRegistry()
        self.enode: Enode | None = None
        self.started_at = time.time()
        self._started_m = time.monotonic()
        self.last_boot = lastboot.read()  # the image's record of how the previous boot ended
        self._stats: ArchiveStats | None = None
        self._disk: dict[str, Any] = {}
        self.counters: dict[str, int] = {"envelopes_in": 0, "archived": 0, "archive_errors": 0}
        self._tasks: list[asyncio.Task[None]] = []
        self._stop_event = asyncio.Event()
        self._ready = False
        self._background: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._last_delivered = 0
        self.exit_code = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        composition.prepare_data_dir(self.data_dir)
        self.activity = await loop.run_in_executor(None, ActivityLog.load, self.data_dir / ACTIVITY_FILE,
                                                   self._wall())
        self.leds = LedPanel(self.config.leds, self.health, pin_factory=self._pin_factory)
        self.leds.attach_loop(loop)
        self.loop_monitor.start()
        self.notifier.status("starting")
        # the control socket first: it refuses to start next to a running pimail (before we touch
        # its archive), and `pimail status` shows "starting" during a slow start
        self._register_commands()
        self.control = control.ControlServer(control.socket_path(self.data_dir, self.env), self.registry)
        await self.control.start()
        if self._clock_override is not None:
            self.clock = self._clock_override
            self.clock.bind_health(self.health)
        else:
            self.clock = ClockTrust(self.config.archive.clock_trust, health=self.health)
        self.key = composition.load_node_key(self.data_dir)
        await self._open_archive()
        await self._start_services()
        await self._start_node()
        await self._start_appliance()
        self._tasks.append(loop.create_task(self._housekeeping(), name="housekeeping"))
        self._tasks.append(loop.create_task(self._activity(), name="activity"))
        await self._refresh_stats()
        self.health.mark_started()
        self.notifier.ready(self.status_line())
        self.notifier.start(self.health, self.status_line)
        self.health.subscribe(self._on_health_change)
        self._ready = True
        if self.archive_guard is not None:
            self.archive_guard.start_check()  # the full check, in the background
        log.info("pimail %s ready: %s (health %s)", __version__, self.enode_url(), self.health.summary)

    async def _open_archive(self) -> None:
        try:
            archive = composition.build_archive(self.config, self.data_dir, self.health,
                                                on_durable=self._on_archived, on_error=self._on_archive_error)
            # SQLite: a damaged file is moved aside and salvaged, an unreadable one waited out
            self.archive_guard = composition.build_archive_guard(self.config, self.data_dir, self.health,
                                                                 archive)
            if self.archive_guard is not None:
                self.archive_guard.on_settled = self._refresh_stats
                self.archive_guard.check_enabled = self.config.archive.check_after_start
                await self.archive_guard.open()
            else:
                await archive.open()
        except ArchiveError as exc:
            raise RuntimeFailure(f"cannot open the archive: {exc}") from None
        except OSError as exc:
            why = exc.strerror or exc
            raise RuntimeFailure(f"cannot open the archive in {self.data_dir}: {why}") from None
        self.archive = archive
        where = self.config.archive.url.split("@")[-1] or self.data_dir / "archive.sqlite"
        if self.archive_guard is None or self.archive_guard.state == "ok":
            log.info("archive open (%s)", where)

    async def _start_services(self) -> None:
        assert self.key is not None and self.archive is not None and self.clock is not None
        self.pairing = composition.build_pairing(self.config, self.data_dir, self.health)
        self._services = services = await composition.build_services(
            self.config, key=self.key, archive=self.archive, clock=self.clock, health=self.health,
            pairing=self.pairing, listeners=[self])
        self.relay, self.whisper, self.waku = services.relay, services.whisper, services.waku
        self.mailserver = services.mailserver

    async def _start_node(self) -> None:
        assert self.key is not None and self._services is not None
        server = composition.build_node_server(self.config, self.key, self._services, self.health)
        self.server = server
        try:
            await server.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise RuntimeFailure(
                    f"cannot listen on {self.config.node.listen}: the port is in use "
                    "(another pimail or geth?); set [node] listen or --listen"
                ) from None
            why = exc.strerror or exc
            raise RuntimeFailure(f"cannot listen on {self.config.node.listen}: {why}") from None
        self.enode = composition.own_enode(self.config, self.key, server.listen_port)
        self.mesh = composition.build_mesh(self.config, server, self.pairing)
        try:
            await self.mesh.start()
        except OSError as exc:
            raise RuntimeFailure(f"cannot start discovery: {exc.strerror or exc} "
                                 "(set [node] discovery_listen or discovery = false)") from None

    def enode_url(self) -> str:
        return self.enode.url() if self.enode else ""

    async def _start_appliance(self) -> None:
        assert self.pairing is not None and self._services is not None and self.server is not None
        assert self.archive is not None
        cfg = self.config
        parts = composition.build_appliance(
            cfg, data_dir=self.data_dir, snapshot=self.status_snapshot, registry=self.registry,
            enode=self.enode, pairing=self.pairing, leds=self.leds, services=self._services,
            server=self.server, archive=self.archive, pin_factory=self._pin_factory)
        self.metrics, self.status_page = parts.metrics, parts.status_page
        self.pair_button, self.heartbeat = parts.pair_button, parts.heartbeat
        if self.metrics is not None:
            await self.metrics.start(cfg.status.metrics_listen)
        if self.status_page is not None:
            await self.status_page.start()
        if self.heartbeat is not None:
            self.heartbeat.start()
        if parts.backfill is not None:
            task = asyncio.get_running_loop().create_task(self._backfill(parts.backfill), name="backfill")
            self._tasks.append(task)

    async def _backfill(self, backfill: Any) -> None:
        try:
            await backfill.run()
        except Exception:
            log.exception("backfill from sibling mailservers failed")

    def _register_commands(self) -> None:
        async def status(args: dict[str, Any]) -> Any:
            return self.status_snapshot()

        async def reload(args: dict[str, Any]) -> Any:
            if not self._ready:
                raise control.CommandError("pimail is still starting; reload when it is ready")
            return await self.reload()

        async def help_(args: dict[str, Any]) -> Any:
            return self.registry.help()

        self.registry.register("status", status, "health, peers, archive, disk, clock, uptime")
        self.registry.register("reload", reload, "re-read the config: peers, limits, retention")
        self.registry.register("help", help_, "list commands")

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, stop. SIGHUP reloads.

        Signal handlers go in before ``start()``: systemd may send SIGTERM right after READY=1, and
        the default action would end the process without flushing the archive.
        """
        loop = asyncio.get_running_loop()
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
            DEFAULT_EXECUTOR_THREADS, thread_name_prefix="pimail-io"))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        try:
            await self.start()
            await self._stop_event.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()
        return self.exit_code

    def _on_sighup(self) -> None:
        if not self._ready:
            log.warning("SIGHUP while starting: ignored (send it again once pimail is ready)")
            return
        task = asyncio.get_running_loop().create_task(self.reload(), name="reload")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def request_stop(self, why: str = "requested") -> None:
        log.info("stopping (%s)", why)
        self._stop_event.set()

    async def stop(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        self.notifier.stopping("stopping: disconnecting peers, flushing the archive")
        self.health.unsubscribe(self._on_health_change)
        await self.notifier.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        steps: list[tuple[str, Callable[[], Awaitable[Any]] | None]] = [
            ("status page", self.status_page.stop if self.status_page else None),
            ("control socket", self.control.stop if self.control else None),
            ("discovery", self.mesh.stop if self.mesh else None),
            ("peers", self.server.stop if self.server else None),
            *(self._services.closers if self._services else []),
            ("heartbeat", self.heartbeat.stop if self.heartbeat else None),
            ("pairing", self.pairing.close if self.pairing else None),
            ("archive check and salvage", self.archive_guard.close if self.archive_guard else None),
            ("archive", self.archive.close if self.archive else None),
            ("activity", self._final_activity if self._ready else None),
            ("loop monitor", self.loop_monitor.stop),
        ]
        for name, step in steps:
            if step is None:
                continue
            try:
                await asyncio.wait_for(step(), STOP_STEP_TIMEOUT_S)
            except Exception as exc:
                log.error("stopping %s: %s", name, exc or type(exc).__name__)
                if name == "archive":
                    self.exit_code = 1
        if self.pair_button is not None:
            self.pair_button.close()
        if self.metrics is not None:
            await self.metrics.stop()
        if self.leds is not None:
            self.leds.close()
        if self.archive is not None:
            log.info("archive flushed and closed")
        if self._ready:
            log.info("stopped")
        elif self.control is not None:  # the start failed part-way: say what was undone, not "stopped"
            log.info("start abandoned; what had started is shut down")

    # -- reload (SIGHUP) ------------------------------------------------------------------------------
    async def reload(self) -> dict[str, Any]:
        """Re-read the config file and apply peers, limits and retention; connections stay up."""
        if self.config_path is None:
            log.info("reload: no config file to re-read (started with defaults)")
            return {"reloaded": False, "reason": "started without a config file"}
        self.notifier.reloading()
        try:
            loaded = await asyncio.get_running_loop().run_in_executor(None, load_config, self.config_path)
        except ConfigError as exc:
            log.error("reload refused, keeping the running config: %s", exc)
            self.notifier.ready(self.status_line())
            return {"reloaded": False, "reason": str(exc)}
        new, old = loaded.config, self.config
        if self._overrides is not None:
            self._overrides(new)  # command-line options keep winning over the file
        # keep what cannot change while running, so self.config always describes the running node
        restart: list[str] = []
        for section in dataclasses.fields(new):
            new_sec, old_sec = getattr(new, section.name), getattr(old, section.name)
            for f in dataclasses.fields(new_sec):
                if (section.name, f.name) in RELOADABLE:
                    continue
                if getattr(new_sec, f.name) != getattr(old_sec, f.name):
                    if (section.name, f.name) != ("node", "data_dir"):
                        restart.append(f"[{section.name}] {f.name}")
                    setattr(new_sec, f.name, getattr(old_sec, f.name))
        changed: list[str] = []
        if new.node.static_peers != old.node.static_peers and self.server is not None:
            self.server.set_static_peers(list(new.node.static_peers))
            changed.append("static_peers")
        if new.archive != old.archive and self.archive is not None:
            self.archive.set_retention(policy_from_config(new.archive, self.data_dir))
            changed.append("retention")
        if new.mailserver != old.mailserver and self.mailserver is not None:
            from pimail.mailserver.limits import RequestLimits

            m = new.mailserver
            self.mailserver.config = m
            self.mailserver.limits = RequestLimits(
                m.min_request_interval_s, m.bucket_rate_per_s, m.bucket_burst
            )
            changed.append("mailserver limits")
        if new.whisper != old.whisper and self.relay is not None:
            if self.whisper is not None:
                self.whisper.config = new.whisper  # the core's settings and the shh peers' flags
            else:
                self.relay.config = new.whisper
            changed.append("whisper limits")
        if new.waku != old.waku and self.waku is not None:
            self.waku.config = new.waku  # new waku peers get the new limits
            changed.append("waku limits")
        self.config = new
        waiting = f"{', '.join(restart)} changed and takes effect after a restart"
        if changed and restart:
            log.warning("reloaded %s: applied %s; %s", self.config_path, ", ".join(changed), waiting)
        elif restart:
            log.warning("reloaded %s: nothing to apply now; %s", self.config_path, waiting)
        else:
            log.info("reloaded %s: %s", self.config_path, ", ".join(changed) or "nothing changed")
        with contextlib.suppress(Exception):
            await self._refresh_stats()  # status shows the new retention at once
        self.notifier.ready(self.status_line())
        return {"reloaded": True, "changed": changed, "restart_needed": restart}

    # -- events from the components -------------------------------------------------------------------
    def on_envelope(self, envelope: Any) -> None:
        """Whisper listener: a new valid envelope arrived."""
        self.counters["envelopes_in"] += 1

    def _on_archived(self, count: int) -> None:
        self.counters["archived"] += count
        if self.leds is not None:
            self.leds.archived()

    def _on_archive_error(self, reason: str) -> None:
        # the Whisper service raises the health condition (whisper.archive); we only count
        self.counters["archive_errors"] += 1
        log.debug("archive write failed: %s", reason)

    def _on_health_change(self, health: HealthModel) -> None:
        # May run in the loop-watch thread: only a datagram, no loop objects.
        self.notifier.status(self.status_line())

    # -- background work ------------------------------------------------------------------------------
    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(STATS_INTERVAL_S)
            try:
                await self._refresh_stats()
                await self._trim_heap()
            except Exception:
                log.exception("housekeeping failed")

    def _traffic(self) -> int:
        """Envelopes received plus sent (relay and history) so far: what makes a heap grow."""
        relayed = getattr(self.relay, "counters", None)
        out = int(relayed.get("envelopes_out", 0)) if isinstance(relayed, Mapping) else 0
        if self.mailserver is not None:
            out += int(self.mailserver.stats.envelopes_sent)
        return self.counters["envelopes_in"] + out

    async def _trim_heap(self) -> None:
        traffic = self._traffic()
        release = self.trimmer.caches_due(traffic)  # a burst is over: caches back, then the heap
        if release and self.archive is not None:
            try:
                await self.archive.release_memory()
                log.debug("memory: a burst is over, archive caches emptied")
            except ArchiveError as exc:
                log.debug("archive cache release failed: %s", exc)
        if release or self.trimmer.due(traffic):
            self.trimmer.mark(traffic)
            await asyncio.get_running_loop().run_in_executor(None, self.trimmer.trim)

    async def _refresh_stats(self) -> None:
        loop = asyncio.get_running_loop()
        if self.clock is not None:
            self.clock.refresh()
        guard = self.archive_guard
        if guard is not None:
            await guard.retry()
            guard.refresh()
        if self.archive is not None and (guard is None or guard.state == "ok"):
            try:
                self._stats = await self.archive.stats()
            except ArchiveError as exc:
                log.warning("archive stats unavailable: %s", exc)
        elif guard is not None:
            self._stats = None
        if not self.config.archive.url:
            probe_error = await loop.run_in_executor(None, self.write_probe.check)
            if probe_error:
                self.health.report(HEALTH_UNWRITABLE, Severity.FAILING, f"archive unwritable: {probe_error}")
            else:
                self.health.clear(HEALTH_UNWRITABLE)
        self._disk = await loop.run_in_executor(None, self._disk_usage)
        self._check_disk()
        self._observe_activity()
        if self.activity.save_due(self._wall()):
            await self._save_activity()

    def _observe_activity(self) -> None:
        served = int(self.mailserver.stats.envelopes_sent) if self.mailserver is not None else 0
        self.activity.observe(
            self._wall(),
            archived=self.counters["archived"],
            served=served,
            peers=self.relay.peer_counts() if self.relay is not None else {},
            archive_bytes=self._stats.bytes if self._stats is not None else None,
        )

    async def _final_activity(self) -> None:
        self._observe_activity()  # the last seconds before the stop count too
        await self._save_activity()

    async def _save_activity(self) -> None:
        """Write the 24-hour activity file off the loop (at most once per slot, and at stop)."""
        text = self.activity.dump()  # on the loop: observe() never changes what is being written
        await asyncio.get_running_loop().run_in_executor(None, self.activity.write, text, self._wall())

    def _disk_usage(self) -> dict[str, Any]:
        try:
            usage = shutil.disk_usage(self.data_dir)
        except OSError:
            return {"path": str(self.data_dir), "free_bytes": None, "total_bytes": None}
        return {"path": str(self.data_dir), "free_bytes": usage.free, "total_bytes": usage.total}

    def _check_disk(self) -> None:
        free = self._disk.get("free_bytes")
        need = policy_from_config(self.config.archive).min_free_disk_bytes
        if free is not None and need and free < need:
            self.health.report(
                HEALTH_DISK_LOW,
                Severity.DEGRADED,
                f"disk low ({_human_bytes(free)} free, want {_human_bytes(need)})",
            )
        else:
            self.health.clear(HEALTH_DISK_LOW)

    async def _activity(self) -> None:
        """Blink amber when history was delivered (follows the mailserver's completed count)."""
        while True:
            await asyncio.sleep(ACTIVITY_POLL_S)
            if self.mailserver is None or self.leds is None:
                continue
            done = int(self.mailserver.stats.completed)
            if done != self._last_delivered:
                self._last_delivered = done
                self.leds.delivered()

    # -- the one status snapshot ----------------------------------------------------------------------
    def _peer_list(self) -> list[Peer]:
        if self.server is None:
            return []
        return [p for p in self.server.peers if not p.closed]

    @staticmethod
    def _peer_info(peer: Peer) -> dict[str, Any]:
        host, port = peer.remote_address[:2]
        stats = peer.stats()
        protocol = ", ".join(f"{name}/{version}" for name, version in peer.capabilities) or "-"
        connected = peer.connected_at
        return {
            "enode": Enode(peer.pubkey, host, port).url(),
            "client": peer.client_id,
            "protocol": protocol,
            "inbound": bool(peer.inbound),
            "address": f"{host}:{port}",
            "connected_s": round(time.time() - connected, 1) if isinstance(connected, int | float) else None,
            "bytes_in": int(stats.get("bytes_in", 0)),
            "bytes_out": int(stats.get("bytes_out", 0)),
            "messages_in": int(stats.get("messages_in", 0)),
            "messages_out": int(stats.get("messages_out", 0)),
        }

    def status_snapshot(self) -> dict[str, Any]:
        """Everything ``pimail status``, the metrics and the status page show. JSON-able, cheap."""
        peers = []
        for peer in self._peer_list():
            try:
                peers.append(self._peer_info(peer))
            except Exception as exc:  # a half-closed peer must not break status
                log.debug("peer info: %s", exc)
        st = self._stats
        archive: dict[str, Any] | None = None
        if st is not None:
            archive = {
                "backend": "postgresql" if self.config.archive.url else "sqlite",
                "count": st.count,
                "bytes": st.bytes,
                "oldest_sent": st.oldest_sent,
                "newest_sent": st.newest_sent,
                "bytes_written_since_start": st.bytes_written_since_start,
                "reason": getattr(self.archive.inner, "health_reason", None) if self.archive else None,
            }
        if self.archive_guard is not None:
            archive = {**(archive or {"backend": "sqlite"}), **self.archive_guard.snapshot()}
        policy = st.retention if st is not None else policy_from_config(self.config.archive, self.data_dir)
        counters: dict[str, int] = dict(self.counters)
        whisper_counters = getattr(self.relay, "counters", None)
        if isinstance(whisper_counters, Mapping):
            counters.update({f"whisper_{k}": int(v) for k, v in whisper_counters.items()})
            if "envelopes_out" in whisper_counters:
                counters["envelopes_out"] = int(whisper_counters["envelopes_out"])
        mailserver: dict[str, object] | None = None
        if self.mailserver is not None:
            mailserver = self.mailserver.snapshot()
            sent = int(self.mailserver.stats.envelopes_sent)
            counters["envelopes_out"] = counters.get("envelopes_out", 0) + sent
            counters["requests"] = int(self.mailserver.stats.requests)
        node_counters = getattr(self.server, "counters", None)
        return {
            "version": __version__,
            "enode": self.enode_url(),
            "listen": self.config.node.listen,
            "data_dir": str(self.data_dir),
            "started_at": self.started_at,
            "uptime_s": round(time.monotonic() - self._started_m, 1),
            "last_boot": self.last_boot,
            "health": self.health.snapshot(),
            "peer_count": len(peers),
            "peers": peers,
            "peers_by_protocol": self.relay.peer_counts() if self.relay is not None else {},
            "archive": archive,
            "retention": {
                "max_age_s": policy.max_age_s,
                "max_count": policy.max_count,
                "max_bytes": policy.max_bytes,
                "min_free_disk_bytes": policy.min_free_disk_bytes,
            },
            "disk": dict(self._disk),
            "clock": self.clock.snapshot() if self.clock else None,
            "counters": counters,
            "node_counters": dict(node_counters) if isinstance(node_counters, Mapping) else {},
            "discovery": self.mesh.snapshot() if self.mesh is not None else {"enabled": False},
            "mailserver": mailserver,
            "pairing": self.pairing.snapshot() if self.pairing is not None else None,
            "loop_lag_ms": round(self.loop_monitor.lag_s * 1000, 1),
            "loop": self._loop_snapshot(),
            "activity": self.activity.snapshot(self._wall()),
            "systemd": {"notify": self.notifier.backend, "watchdog_s": self.notifier.watchdog_s},
            "metrics_url": self._metrics_url(),
            "leds": {
                "enabled": bool(self.leds and self.leds.enabled),
                "why_off": self.leds.disabled_reason if self.leds else "",
                "patterns": {k: v.mode for k, v in self.leds.patterns.items()} if self.leds else {},
            },
        }

    def _loop_snapshot(self) -> dict[str, object]:
        """Event-loop lag: worst since start and the latest ticks (lateness, loop-thread CPU), so a
        poller that reads every few seconds sees every tick (``tick`` numbers the last entry)."""
        mon = self.loop_monitor
        return {
            "tick_s": LOOP_TICK_S,
            "tick": mon.ticks,
            "max_lag_ms": round(mon.max_lag_s * 1000, 1),
            "recent_lag_ms": [round(lag * 1000, 1) for lag, _ in mon.recent],
            "recent_cpu_ms": [round(cpu * 1000, 1) for _, cpu in mon.recent],
        }

    def _metrics_url(self) -> str | None:
        if self.metrics is None or self.metrics.port is None:
            return None
        host = self.config.status.metrics_listen.rpartition(":")[0].strip("[]")
        host = "127.0.0.1" if host in ("0.0.0.0", "", "::") else host
        return f"http://{host}:{self.metrics.port}/metrics"

    def status_line(self) -> str:
        """The systemd ``STATUS=`` line: state, peers, archived, disk, clock."""
        state = self.health.state
        parts = [self.health.summary]
        parts.append(f"{len(self._peer_list())} peers")
        if self._stats is not None:
            parts.append(f"{self._stats.count} archived")
        free = self._disk.get("free_bytes")
        if free is not None:
            parts.append(f"disk {_human_bytes(free)} free")
        if self.clock is not None:
            parts.append("clock ok" if self.clock.trusted else "clock not synced")
        if state is HealthState.STARTING:
            return "starting"
        return ", ".join(parts)


def run_daemon(
    config: Config,
    *,
    config_path: Path | None = None,
    overrides: Callable[[Config], None] | None = None,
) -> int:
    """Run a daemon on a fresh event loop (uvloop when importable)."""
    daemon = Daemon(config, config_path=config_path, overrides=overrides)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(daemon.run())
    log.debug("using uvloop")
    result: int = uvloop.run(daemon.run())
    return result
