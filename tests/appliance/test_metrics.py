"""Prometheus metrics: per-daemon instruments, real HTTP scrapes of the loop's server, a taken port
is survivable, and the page parses as the text exposition format."""

from __future__ import annotations

import asyncio
import logging
import math
import re
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


def _get(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type", ""), str(r.read().decode())
    except urllib.error.HTTPError as exc:
        return exc.code, "", ""


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    """An HTTP GET from a worker thread (the server answers on this test's loop)."""
    return await asyncio.get_running_loop().run_in_executor(None, _get, port, path)


def test_two_daemons_in_one_process_keep_separate_metrics() -> None:
    a = NodeMetrics(lambda: snapshot(count=7))
    b = NodeMetrics(lambda: snapshot(count=1000, peers=0, state="degraded"))

    async def main() -> tuple[str, str, str]:
        assert await a.start("127.0.0.1:0") and await b.start("127.0.0.1:0")
        try:
            a.observe_request("bloom", "completed", 0.3, 40)
            a.observe_request("topics", "rate_limited", 0.0, 0)
            status, ctype, text_a = await scrape(a.port or 0)
            assert status == 200
            return ctype, text_a, (await scrape(b.port or 0))[2]
        finally:
            await a.stop()
            await b.stop()

    ctype, text_a, text_b = asyncio.run(asyncio.wait_for(main(), 30))
    assert ctype == "text/plain; version=0.0.4; charset=utf-8"
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

        async def main() -> None:
            assert await m.start(f"127.0.0.1:{port}") is False
            await m.stop()

        asyncio.run(main())
    finally:
        blocker.close()
    assert any("running on without metrics" in r.message for r in caplog.records)


def test_a_failing_snapshot_does_not_break_the_scrape() -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("boom")

    m = NodeMetrics(broken)

    async def main() -> str:
        assert await m.start("127.0.0.1:0")
        try:
            return (await scrape(m.port or 0))[2]
        finally:
            await m.stop()

    text = asyncio.run(asyncio.wait_for(main(), 30))
    assert "pimail_delivery_duration_seconds" in text
    assert "pimail_archive_envelopes" not in text


def test_other_paths_and_methods_get_an_error_and_the_server_goes_on() -> None:
    m = NodeMetrics(snapshot)

    async def main() -> tuple[int, int, int]:
        assert await m.start("127.0.0.1:0")
        try:
            missing = (await scrape(m.port or 0, "/nothing"))[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
            line = await reader.readline()
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", m.port)
            writer.write(b"garbage\r\n\r\n")
            bad = await reader.readline()
            writer.close()
            return missing, int(line.split()[1]), int(bad.split()[1]) if bad else 0
        finally:
            await m.stop()

    assert asyncio.run(asyncio.wait_for(main(), 30)) == (404, 405, 400)


# One sample line of the text format: name, optional {labels}, value (Prometheus' own grammar, minus
# timestamps, which pimail does not write).
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)'
                    r'(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """(type of each family, value of each sample); fails on any line that is not the format."""
    types: dict[str, str] = {}
    helps: set[str] = set()
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert name not in helps, f"HELP for {name} twice"
            helps.add(name)
        elif line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"TYPE for {name} twice"
            assert kind in ("counter", "gauge", "histogram")
            types[name] = kind
        else:
            match = SAMPLE.match(line)
            assert match, f"not a sample line: {line!r}"
            name, labels, value = match.groups()
            family = next((f for f in types if name == f or name.startswith(f + "_")), None)
            assert family is not None, f"{name} before its TYPE"
            key = (name, frozenset(LABEL.findall(labels or "")))
            assert key not in samples, f"{line!r} twice"
            samples[key] = float(value)
    return types, samples


def test_the_page_is_the_text_format_with_cumulative_buckets_and_escaped_labels() -> None:
    snap = snapshot()
    snap["peers_by_protocol"] = {"shh/6": 2}
    snap["discovery"] = {"enabled": True, "table_size": 3, "peers_by_protocol": {"shh/6": {"inbound": 1}},
                         "packets": {"packets_in": 4, "packets_out": 5, "dropped_expired": 1}}
    m = NodeMetrics(lambda: snap)
    for duration in (0.005, 0.3, 0.3, 7.0, 500.0):
        m.observe_request("bloom", "completed", duration, 1)
    m.observe_request('we"ird\\form\n', "failed", 0.0, 0)
    types, samples = parse(m.render())

    assert types["pimail_delivery_duration_seconds"] == "histogram"
    assert types["pimail_requests_total"] == "counter" and types["pimail_archive_envelopes"] == "gauge"
    buckets = sorted((float(dict(labels)["le"]), v) for (name, labels), v in samples.items()
                     if name == "pimail_delivery_duration_seconds_bucket")
    assert [b for b, _ in buckets][-1] == math.inf and len(buckets) == 13
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "buckets are cumulative"
    assert dict(buckets)[0.01] == 1 and dict(buckets)[0.5] == 3 and dict(buckets)[10.0] == 4
    assert dict(buckets)[math.inf] == samples[("pimail_delivery_duration_seconds_count", frozenset())] == 5
    assert samples[("pimail_delivery_duration_seconds_sum", frozenset())] == 0.005 + 0.3 + 0.3 + 7.0 + 500.0
    assert samples[("pimail_requests_total", frozenset({("form", "bloom"), ("result", "completed")}))] == 5
    weird = [labels for (name, labels) in samples
             if name == "pimail_requests_total" and ("result", "failed") in labels]
    assert weird == [frozenset({("form", 'we\\"ird\\\\form\\n'), ("result", "failed")})]
    assert samples[("pimail_delivered_envelopes_total", frozenset())] == 5
    # the two peers-by-protocol views share one family (one TYPE line), as the format requires
    assert samples[("pimail_peers_by_protocol", frozenset({("protocol", "shh/6")}))] == 2
    by_direction = frozenset({("protocol", "shh/6"), ("direction", "inbound")})
    assert samples[("pimail_peers_by_protocol", by_direction)] == 1
    assert samples[("pimail_discovery_packets_dropped_total", frozenset({("reason", "expired")}))] == 1
    assert samples[("pimail_archive_envelopes", frozenset())] == 7
