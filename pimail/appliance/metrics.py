"""Prometheus metrics on ``127.0.0.1:9464`` by default (``[status] metrics``, ``metrics_listen``).

Each daemon has its own ``CollectorRegistry`` (several nodes in one process or on one machine).
Most values are read at scrape time from the status snapshot (the same dict ``pimail status``
prints), so metrics and status cannot disagree. The mailserver reports each finished request
through ``observe_request`` (requests by form and result, delivery duration histogram).
A metrics port that is taken is logged and the node runs on without metrics.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pimail.config import parse_hostport
from pimail.health import HealthState

log = logging.getLogger(__name__)

DELIVERY_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
REQUEST_RESULTS = ("completed", "rejected", "denied", "rate_limited", "malformed", "aborted", "failed")

SnapshotFn = Callable[[], dict[str, Any]]


class _SnapshotCollector(Collector):
    """Gauges and counters read from the status snapshot at scrape time."""

    def __init__(self, snapshot: SnapshotFn) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
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
                yield GaugeMetricFamily(name, doc, value=float(value))
        by_protocol = snap.get("peers_by_protocol")
        if isinstance(by_protocol, dict):
            fam = GaugeMetricFamily("pimail_peers_by_protocol", "Connected peers per sub-protocol "
                                    "(a peer sharing shh/6 and waku/1 counts in both)", labels=["protocol"])
            for proto in sorted(set(by_protocol) | {"shh/6", "waku/1", "waku/0"}):
                fam.add_metric([proto], float(by_protocol.get(proto, 0)))
            yield fam
        state = (snap.get("health") or {}).get("state")
        health = GaugeMetricFamily("pimail_health", "1 for the node's current health state", labels=["state"])
        for s in HealthState:
            health.add_metric([s.value], 1.0 if s.value == state else 0.0)
        yield health
        yield from _discovery_metrics(snap.get("discovery") or {})
        for key, name, doc in (
            ("envelopes_in", "pimail_envelopes_in", "Envelopes accepted from peers (new, valid)"),
            ("envelopes_out", "pimail_envelopes_out", "Envelopes sent to peers (relay and history)"),
            ("archived", "pimail_archived_envelopes", "Envelopes written to the archive since start"),
        ):
            if key in counters:
                yield CounterMetricFamily(name, doc, value=float(counters[key]))


def _discovery_metrics(disc: dict[str, Any]) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Table size, peers by direction and protocol, discovery packets in/out/dropped by reason."""
    if not disc.get("enabled"):
        return
    yield GaugeMetricFamily("pimail_discovery_table_nodes", "Nodes in the discovery table",
                            value=float(disc.get("table_size", 0)))
    peers = GaugeMetricFamily("pimail_peers_by_protocol", "Connected peers by protocol and direction",
                              labels=["protocol", "direction"])
    for proto, dirs in (disc.get("peers_by_protocol") or {}).items():
        for direction, count in dirs.items():
            peers.add_metric([proto, direction], float(count))
    yield peers
    packets = disc.get("packets") or {}
    for key, name, doc in (("packets_in", "pimail_discovery_packets_in", "Discovery datagrams received"),
                           ("packets_out", "pimail_discovery_packets_out", "Discovery datagrams sent")):
        yield CounterMetricFamily(name, doc, value=float(packets.get(key, 0)))
    dropped = CounterMetricFamily("pimail_discovery_packets_dropped",
                                  "Discovery datagrams dropped, by reason", labels=["reason"])
    for key, value in packets.items():
        if key.startswith("dropped_"):
            dropped.add_metric([key.removeprefix("dropped_")], float(value))
    yield dropped


class NodeMetrics:
    """One daemon's metrics: a registry, the scrape-time collector and the request instruments."""

    def __init__(self, snapshot: SnapshotFn) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_SnapshotCollector(snapshot))
        self.requests = Counter(
            "pimail_requests",
            "History requests by form (bloom, topics, cursor …) and result",
            ["form", "result"],
            registry=self.registry,
        )
        self.delivery = Histogram(
            "pimail_delivery_duration_seconds",
            "Time to deliver one history request (first envelope to request-complete)",
            buckets=DELIVERY_BUCKETS_S,
            registry=self.registry,
        )
        self.delivered_envelopes = Counter(
            "pimail_delivered_envelopes",
            "Envelopes delivered in answer to history requests",
            registry=self.registry,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def observe_request(self, form: str, result: str, duration_s: float, envelopes: int) -> None:
        """One history request finished (the mailserver's ``on_request_done`` hook)."""
        self.requests.labels(form=form or "unknown", result=result).inc()
        if result == "completed":
            self.delivery.observe(max(0.0, duration_s))
        if envelopes > 0:
            self.delivered_envelopes.inc(envelopes)

    def start(self, listen: str) -> bool:
        """Serve /metrics; a taken port (or bad address) is logged and the node runs on."""
        host, port = parse_hostport(listen)
        try:
            server, thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            log.error(
                "metrics: cannot listen on %s (%s); running on without metrics",
                listen,
                exc.strerror or exc,
            )
            return False
        self._server, self._thread = server, thread
        self.port = int(server.server_address[1])
        log.info("metrics: http://%s:%d/metrics", host, self.port)
        return True

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
