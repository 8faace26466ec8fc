"""Prometheus metrics on ``127.0.0.1:9464`` by default (``[status] metrics``, ``metrics_listen``).

Each daemon has its own ``NodeMetrics`` (several nodes in one process or on one machine). Most
values are read at scrape time from the status snapshot (the same dict ``pimail status`` prints),
so metrics and status cannot disagree. The mailserver reports each finished request through
``observe_request`` (requests by form and result, delivery duration histogram).

``/metrics`` is served from the event loop (a scrape is a snapshot and a page of text; the snapshot
is read on the loop that owns it), in the text format of pimail/appliance/exposition.py.
A metrics port that is taken is logged and the node runs on without metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

from pimail.appliance.exposition import CONTENT_TYPE, Family, Histogram, LabelledCounter, render
from pimail.appliance.serving import close_server
from pimail.config import parse_hostport
from pimail.health import HealthState

log = logging.getLogger(__name__)

DELIVERY_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REQUEST_RESULTS = ("completed", "rejected", "denied", "rate_limited", "malformed", "aborted", "failed")
MAX_HEAD_BYTES = 8 * 1024  # a scrape's request line and headers
MAX_CONNECTIONS = 8  # concurrent scrapes; more are closed unanswered
IO_TIMEOUT_S = 10.0  # to send the request, and to take the answer

SnapshotFn = Callable[[], dict[str, Any]]


class _SnapshotCollector:
    """Gauges and counters read from the status snapshot at scrape time."""

    def __init__(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Family]:
        try:
            snap = self._snapshot()
        except Exception as exc:  # a scrape must never take the node down
            log.debug("metrics: snapshot failed: %s", exc)
            return
        archive = snap.get("archive") or {}
        counters = snap.get("counters") or {}
        disk = snap.get("disk") or {}
        gauges: list[tuple[str, str, float | None]] = [
            ("pimail_archive_envelopes", "Envelopes in the archive", archive.get("count")),
            ("pimail_archive_bytes", "Live bytes of the archive", archive.get("bytes")),
            ("pimail_archive_damaged_files", "Damaged archive files kept in the data dir",
             len(archive["damaged_files"]) if isinstance(archive.get("damaged_files"), list) else None),
            ("pimail_archive_salvaged_envelopes", "Envelopes salvaged from the last damaged archive",
             (archive.get("salvage") or {}).get("salvaged")),
            ("pimail_peers", "Connected peers", snap.get("peer_count")),
            ("pimail_disk_free_bytes", "Free bytes where the data dir is", disk.get("free_bytes")),
            ("pimail_loop_lag_seconds", "Event-loop lateness of the last tick",
             (snap.get("loop_lag_ms") or 0) / 1000.0),
            ("pimail_uptime_seconds", "Seconds since the daemon started", snap.get("uptime_s")),
            ("pimail_clock_trusted", "1 when wall-clock time is trusted for archiving",
             1.0 if (snap.get("clock") or {}).get("trusted") else 0.0),
        ]
        for name, doc, value in gauges:
            if value is not None:
                yield Family.gauge(name, doc, value=float(value))
        by_protocol = snap.get("peers_by_protocol")
        if isinstance(by_protocol, dict):
            fam = Family.gauge("pimail_peers_by_protocol", "Connected peers per sub-protocol "
                               "(a peer sharing shh/6 and waku/1 counts in both)")
            for proto in sorted(set(by_protocol) | {"shh/6", "waku/1", "waku/0"}):
                fam.add((("protocol", proto),), float(by_protocol.get(proto, 0)))
            yield fam
        state = (snap.get("health") or {}).get("state")
        health = Family.gauge("pimail_health", "1 for the node's current health state")
        for s in HealthState:
            health.add((("state", s.value),), 1.0 if s.value == state else 0.0)
        yield health
        yield from _discovery_metrics(snap.get("discovery") or {})
        for key, name, doc in (
            ("envelopes_in", "pimail_envelopes_in", "Envelopes accepted from peers (new, valid)"),
            ("envelopes_out", "pimail_envelopes_out", "Envelopes sent to peers (relay and history)"),
            ("archived", "pimail_archived_envelopes", "Envelopes written to the archive since start"),
        ):
            if key in counters:
                yield Family.counter(name, doc, value=float(counters[key]))


def _discovery_metrics(disc: dict[str, Any]) -> Iterator[Family]:
    """Table size, peers by direction and protocol, discovery packets in/out/dropped by reason."""
    if not disc.get("enabled"):
        return
    yield Family.gauge("pimail_discovery_table_nodes", "Nodes in the discovery table",
                       value=float(disc.get("table_size", 0)))
    peers = Family.gauge("pimail_peers_by_protocol", "Connected peers by protocol and direction")
    for proto, dirs in (disc.get("peers_by_protocol") or {}).items():
        for direction, count in dirs.items():
            peers.add((("protocol", proto), ("direction", direction)), float(count))
    yield peers
    packets = disc.get("packets") or {}
    for key, name, doc in (("packets_in", "pimail_discovery_packets_in", "Discovery datagrams received"),
                           ("packets_out", "pimail_discovery_packets_out", "Discovery datagrams sent")):
        yield Family.counter(name, doc, value=float(packets.get(key, 0)))
    dropped = Family.counter("pimail_discovery_packets_dropped", "Discovery datagrams dropped, by reason")
    for key, value in packets.items():
        if key.startswith("dropped_"):
            dropped.add((("reason", key.removeprefix("dropped_")),), float(value))
    yield dropped



class NodeMetrics:
    """One daemon's metrics: the scrape-time snapshot families and the request instruments."""

    def __init__(self, snapshot: SnapshotFn) -> None:
        self._collector = _SnapshotCollector(snapshot)
        self.requests = LabelledCounter(
            "pimail_requests", "History requests by form (bloom, topics, cursor …) and result",
            ("form", "result"))
        self.delivery = Histogram(
            "pimail_delivery_duration_seconds",
            "Time to deliver one history request (first envelope to request-complete)",
            DELIVERY_BUCKETS_S,
        )
        self.delivered_envelopes = LabelledCounter(
            "pimail_delivered_envelopes", "Envelopes delivered in answer to history requests")
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port: int | None = None

    def observe_request(self, form: str, result: str, duration_s: float, envelopes: int) -> None:
        """One history request finished (the mailserver's ``on_request_done`` hook)."""
        self.requests.inc(form=form or "unknown", result=result)
        if result == "completed":
            self.delivery.observe(max(0.0, duration_s))
        if envelopes > 0:
            self.delivered_envelopes.inc(envelopes)

    def families(self) -> list[Family]:
        return [*self._collector.collect(), self.requests.family(), self.delivery.family(),
                self.delivered_envelopes.family()]

    def render(self) -> str:
        """The ``/metrics`` page."""
        return render(self.families())

    async def start(self, listen: str) -> bool:
        """Serve /metrics; a taken port (or bad address) is logged and the node runs on."""
        host, port = parse_hostport(listen)
        try:
            self._server = await asyncio.start_server(self._accept, host, port, limit=MAX_HEAD_BYTES,
                                                      reuse_address=True)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s (%s); running on without metrics",
                listen,
                exc.strerror or exc,
            )
            return False
        self.port = int(self._server.sockets[0].getsockname()[1])
        log.info("metrics: http://%s:%d/metrics", host, self.port)
        return True

    async def stop(self) -> None:
        if self._server is not None:
            await close_server(self._server, self._tasks)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None or len(self._tasks) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), IO_TIMEOUT_S)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IO_TIMEOUT_S)
        parts = head.split(b"\r\n", 1)[0].split(b" ")
        method = b""
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            status, ctype, body = "400 Bad Request", "text/plain; charset=utf-8", b"bad request\n"
        else:
            method, path = parts[0], parts[1].split(b"?", 1)[0]
            if method not in (b"GET", b"HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain; charset=utf-8", b"GET only\n"
            elif path in (b"/metrics", b"/"):
                status, ctype, body = "200 OK", CONTENT_TYPE, self.render().encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain; charset=utf-8", b"see /metrics\n"
        writer.write(
            f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode("ascii") + (b"" if method == b"HEAD" else body))
        await asyncio.wait_for(writer.drain(), IO_TIMEOUT_S)
