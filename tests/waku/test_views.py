"""Peers per protocol in `pimail status`, the status page and the metrics (from one snapshot)."""

from __future__ import annotations

from typing import Any

from pimail.appliance.metrics import NodeMetrics
from pimail.appliance.statuspage import render_page
from pimail.cli.status import render

SNAP: dict[str, Any] = {
    "health": {"state": "ok", "summary": "ok", "conditions": []},
    "peer_count": 3,
    "peers_by_protocol": {"shh/6": 1, "waku/1": 2},
    "peers": [
        {"enode": "enode://aa", "address": "127.0.0.1:1", "client": "Geth/wnode", "protocol": "shh/6",
         "inbound": True, "bytes_in": 1, "bytes_out": 2},
        {"enode": "enode://bb", "address": "127.0.0.1:2", "client": "StatusIM/v0.78", "protocol": "waku/1",
         "inbound": True, "bytes_in": 1, "bytes_out": 2},
        {"enode": "enode://cc", "address": "127.0.0.1:3", "client": "pimail", "protocol": "waku/1",
         "inbound": False, "bytes_in": 1, "bytes_out": 2},
    ],
    "counters": {},
}


def test_metrics_show_peers_per_protocol() -> None:
    text = NodeMetrics(lambda: SNAP).render()
    assert 'pimail_peers_by_protocol{protocol="waku/1"} 2.0' in text
    assert 'pimail_peers_by_protocol{protocol="shh/6"} 1.0' in text
    assert 'pimail_peers_by_protocol{protocol="waku/0"} 0.0' in text


def test_status_page_and_cli_show_peers_per_protocol() -> None:
    page = render_page(SNAP)
    assert "3 peers connected (shh/6: 1, waku/1: 2)" in page
    text = render(SNAP)
    assert "peers      3 (shh/6 1, waku/1 2)" in text


def test_both_protocols_off_is_refused_with_one_line(tmp_path: Any) -> None:
    import pytest

    from pimail.configfile import ConfigError, load_config

    path = tmp_path / "pimail.toml"
    path.write_text("[whisper]\nenabled = false\n\n[waku]\nenabled = false\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{path}:5: ") and "no protocol" in message
