"""Discovery's config keys and command line: defaults, bad values with one line, ``enode --enr``."""

from __future__ import annotations

from pathlib import Path

import pytest

from pimail.cli import main
from pimail.config import Config
from pimail.configfile import ConfigError, apply_overrides, parse_config_text
from pimail.crypto.keys import NodeKey
from pimail.discovery.enr import Record
from pimail.node.mesh import discovery_address, discovery_enabled


def test_discovery_defaults_to_auto(tmp_path: Path) -> None:
    c = Config()
    c.node.data_dir = tmp_path
    assert c.node.discovery == "auto" and not discovery_enabled(c)
    c.node.bootnodes = [f"enode://{NodeKey.generate().public.hex()}@127.0.0.1:30303"]
    assert discovery_enabled(c)
    c.node.bootnodes = []
    (tmp_path / "nodes.sqlite").write_bytes(b"")
    assert discovery_enabled(c)  # a node database from an earlier run
    c.node.discovery = False
    assert not discovery_enabled(c)
    assert discovery_address(c, 30311) == ("0.0.0.0", 30311)
    c.node.discovery_listen = "127.0.0.1:30399"
    assert discovery_address(c, 30311) == ("127.0.0.1", 30399)


def test_config_file_keys_and_bad_values() -> None:
    config, _ = parse_config_text(
        '[node]\ndiscovery = true\nnetrestrict = ["127.0.0.0/8"]\nbootnodes = []\n'
        '[discovery]\nrevalidate_interval_s = 2.5\n', "t.toml")
    assert config.node.discovery is True and config.node.netrestrict == ["127.0.0.0/8"]
    assert config.discovery.revalidate_interval_s == 2.5
    for text, words in (
        ('[node]\nnetrestrict = ["10.0.0.0/33"]\n', "CIDR"),
        ('[node]\ndiscovery = "maybe"\n', "auto"),
        ('[node]\nbootnodes = ["enode://zz@1.2.3.4:1"]\n', "enode"),
        ('[node]\ndial_share = 1.5\n', "at most 1"),
        ('[discovery]\nrequest_timeout_s = 0\n', "greater than 0"),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config_text(text, "t.toml")
        assert "t.toml:2" in str(info.value) and words in str(info.value)


def test_command_line_bootnode_and_no_discovery() -> None:
    c = Config()
    boot = f"enode://{NodeKey.generate().public.hex()}@127.0.0.1:30303"
    apply_overrides(c, bootnodes=[boot])
    assert c.node.bootnodes == [boot]
    apply_overrides(c, no_discovery=True)
    assert c.node.discovery is False
    with pytest.raises(ConfigError):
        apply_overrides(c, bootnodes=["enode://nonsense"])


def test_enode_enr_prints_a_record_signed_by_the_node_key(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "pimail.toml"
    conf.write_text('[node]\nlisten = "127.0.0.1:30311"\npublic_host = "127.0.0.1"\n'
                    f'data_dir = "{tmp_path}"\n')
    assert main(["enode", "--config", str(conf), "--enr"]) == 0
    text = capsys.readouterr().out.strip()
    record = Record.from_text(text)
    key = NodeKey.load(tmp_path / "nodekey")
    assert record.pubkey == key.public
    assert (record.ip, record.tcp, record.udp, record.seq) == ("127.0.0.1", 30311, 30311, 1)


def test_metrics_and_status_show_discovery() -> None:
    from pimail.appliance.metrics import NodeMetrics
    from pimail.cli.status import render

    disc = {"enabled": True, "table_size": 7, "inbound_peers": 1, "dialled_peers": 2,
            "peers_by_protocol": {"shh/6": {"inbound": 1, "dialled": 2}},
            "packets": {"packets_in": 30, "packets_out": 20, "dropped_expired": 4, "dropped_unbonded": 0}}
    text = NodeMetrics(lambda: {"discovery": disc}).render()
    assert "pimail_discovery_table_nodes 7.0" in text
    assert 'pimail_peers_by_protocol{direction="dialled",protocol="shh/6"} 2.0' in text
    assert 'pimail_discovery_packets_dropped_total{reason="expired"} 4.0' in text
    assert "pimail_discovery_packets_in_total 30.0" in text
    line = next(x for x in render({"discovery": disc}).splitlines() if "discovery" in x)
    assert "7 nodes" in line and "2 dialled / 1 inbound" in line and "4 expired" in line
    assert "discovery  off" in render({"discovery": {"enabled": False}})
