"""Prometheus metrics: per-daemon registries, real HTTP scrapes, a taken port is survivable."""

from __future__ import annotations

import logging
import socket
import urllib.request
from typing import Any

import pytest

from pimail.appliance.metrics import NodeMetrics


def snapshot(count: int = 7, peers: int = 2, state: str = "healthy") -> dict[str, Any]:
    return {
        "archive": {"count": count, "bytes": 4096},
        "peer_count": peers,
        "disk": {"free_bytes": 10**9},
        "loop_lag_ms": 12.5,
        "uptime_s": 33.0,
        "clock": {"trusted": True},
        "health": {"state": state},
        "counters": {"envelopes_in": 11, "envelopes_out": 5, "archived": 9},
    }


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def test_two_daemons_in_one_process_keep_separate_metrics() -> None:
    a = NodeMetrics(lambda: snapshot(count=7))
    b = NodeMetrics(lambda: snapshot(count=1000, peers=0, state="degraded"))
    assert a.start("127.0.0.1:0") and b.start("127.0.0.1:0")
    try:
        a.observe_request("bloom", "completed", 0.3, 40)
        a.observe_request("topics", "rate_limited", 0.0, 0)
        text_a, text_b = scrape(a.port or 0), scrape(b.port or 0)
    finally:
        a.stop()
        b.stop()
    assert "pimail_archive_envelopes 7.0" in text_a and "pimail_archive_envelopes 1000.0" in text_b
    assert "pimail_archive_bytes 4096.0" in text_a
    assert "pimail_peers 2.0" in text_a and "pimail_peers 0.0" in text_b
    assert 'pimail_requests_total{form="bloom",result="completed"} 1.0' in text_a
    assert 'pimail_requests_total{form="topics",result="rate_limited"} 1.0' in text_a
    assert 'form="bloom"' not in text_b, "requests observed by one daemon stay out of the other's registry"
    assert "pimail_delivery_duration_seconds_count 1.0" in text_a
    assert 'pimail_delivery_duration_seconds_bucket{le="0.5"} 1.0' in text_a
    assert "pimail_delivered_envelopes_total 40.0" in text_a
    assert "pimail_envelopes_in_total 11.0" in text_a and "pimail_envelopes_out_total 5.0" in text_a
    assert "pimail_loop_lag_seconds 0.0125" in text_a
    assert 'pimail_health{state="healthy"} 1.0' in text_a and 'pimail_health{state="degraded"} 1.0' in text_b


def test_a_taken_port_is_logged_and_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "pimail.appliance.metrics")
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        m = NodeMetrics(snapshot)
        assert m.start(f"127.0.0.1:{port}") is False
        m.stop()
    finally:
        blocker.close()
    assert any("running on without metrics" in r.message for r in caplog.records)


def test_a_failing_snapshot_does_not_break_the_scrape() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    m = NodeMetrics(broken)
    assert m.start("127.0.0.1:0")
    try:
        text = scrape(m.port or 0)
    finally:
        m.stop()
    assert "pimail_delivery_duration_seconds" in text
    assert "pimail_archive_envelopes" not in text
