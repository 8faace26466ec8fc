"""bootnodes.txt on the boot partition: parsed, merged into [node] bootnodes of the installed config
(image/rootfs/usr/lib/pimail-image/bootsettings.py), checked with pimail's own config loader."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from pimail.configfile import load_config
from pimail.crypto.keys import NodeKey
from pimail.node.mesh import discovery_enabled
from tests.image.conftest import BOOTSETTINGS, REPO

bs: Any = BOOTSETTINGS


def enode(host: str = "203.0.113.7", port: int = 30303, suffix: str = "") -> str:
    return f"enode://{NodeKey.generate().public.hex()}@{host}:{port}{suffix}"


@pytest.fixture
def real_validator() -> Any:
    return bs.pimail_validator(Path(sys.executable))


def install(targets: Any, text: str) -> None:
    targets.config.parent.mkdir(parents=True, exist_ok=True)
    targets.config.write_text(text)


def test_bootnodes_txt_goes_into_the_shipped_sample_config(
    boot: Path, targets: Any, real_validator: Any
) -> None:
    sample = (REPO / "pimail.toml").read_text()  # what the .deb installs as /etc/pimail/pimail.toml
    install(targets, sample)
    a, b = enode(), enode("[2001:db8::1]", 30304, "?discport=30301")
    (boot / "bootnodes.txt").write_text(f"# the fleet's bootnodes\n\n{a}\n  {b}  \n{a}\n")
    outcome = bs.import_bootnodes(boot, targets, real_validator)
    assert outcome.status == "imported", outcome.message
    merged = load_config(targets.config).config
    assert merged.node.bootnodes == [a, b]  # in order, the duplicate once
    original = load_config(REPO / "pimail.toml").config
    original.node.bootnodes = [a, b]
    assert merged == original  # nothing else changed
    assert discovery_enabled(merged)  # "auto": bootnodes turn discovery on
    assert targets.config.stat().st_mode & 0o777 == 0o640
    assert not (boot / "bootnodes.txt").exists()
    assert (boot / "bootnodes.txt.imported").exists()
    # every line of the sample except the old `bootnodes = []` is still there, comments included
    kept = targets.config.read_text().splitlines()
    assert [line for line in sample.splitlines() if line != "bootnodes = []"] == [
        line for line in kept if not line.startswith(("# from bootnodes.txt", "bootnodes = [", '    "enode'))
        and line != "]"
    ]


def test_a_second_import_replaces_the_list_and_leaves_one_note(boot: Path, targets: Any) -> None:
    old = '[node]\nmax_peers = 7\nbootnodes = [\n  "x",  # old\n  "y",\n]\n\n[status]\npage = false\n'
    install(targets, old)
    first, second = enode(), enode("127.0.0.1", 40000)
    for node in (first, second):
        (boot / "bootnodes.txt").write_text(node + "\n")
        assert bs.import_bootnodes(boot, targets, None).status == "imported"
    text = targets.config.read_text()
    data = tomllib.loads(text)
    assert data == {"node": {"max_peers": 7, "bootnodes": [second]}, "status": {"page": False}}
    assert text.count("# from bootnodes.txt") == 1


def test_config_without_a_node_table_or_without_any_config(boot: Path, targets: Any) -> None:
    node = enode()
    (boot / "bootnodes.txt").write_text(node + "\n")
    assert bs.import_bootnodes(boot, targets, None).status == "imported"
    assert tomllib.loads(targets.config.read_text()) == {"node": {"bootnodes": [node]}}
    install(targets, "[status]\npage = false")  # no [node], no final newline
    (boot / "bootnodes.txt").write_text(node + "\n")
    assert bs.import_bootnodes(boot, targets, None).status == "imported"
    expected = {"status": {"page": False}, "node": {"bootnodes": [node]}}
    assert tomllib.loads(targets.config.read_text()) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("enode://abc@1.2.3.4:30303\n", "line 1: not an enode URL"),
        (f"# ok\n{'enode://' + '1f' * 64}@1.2.3.4\n", "line 2: not an enode URL"),
        (f"{enode(port=70000)}\n", "line 1: not an enode URL"),
        ("# nothing but comments\n\n", "holds no enode URLs"),
    ],
)
def test_bad_bootnodes_txt_is_rejected_and_the_config_kept(
    boot: Path, targets: Any, text: str, reason: str
) -> None:
    install(targets, "[node]\nbootnodes = []\n")
    (boot / "bootnodes.txt").write_text(text)
    outcome = bs.import_bootnodes(boot, targets, None)
    assert outcome.status == "rejected" and reason in outcome.message
    assert targets.config.read_text() == "[node]\nbootnodes = []\n"
    assert (boot / "bootnodes.txt.rejected").exists() and not (boot / "bootnodes.txt").exists()
    assert reason in (boot / "bootnodes.txt.error.txt").read_text()


def test_a_key_not_on_the_curve_is_refused_by_pimails_own_loader(
    boot: Path, targets: Any, real_validator: Any
) -> None:
    install(targets, "[node]\nbootnodes = []\n")
    (boot / "bootnodes.txt").write_text(f"enode://{'00' * 64}@192.0.2.1:30303\n")
    outcome = bs.import_bootnodes(boot, targets, real_validator)
    assert outcome.status == "rejected"
    assert "bootnodes" in outcome.message and "pimail.toml with bootnodes.txt" in outcome.message
    assert targets.config.read_text() == "[node]\nbootnodes = []\n"
    assert not list(targets.config.parent.glob(".*check*"))  # the scratch copy is gone


def test_a_config_shape_the_editor_does_not_know_is_refused_not_mangled(boot: Path, targets: Any) -> None:
    text = 'node.bootnodes = []\n\n[status]\npage = false\n'
    install(targets, text)
    (boot / "bootnodes.txt").write_text(enode() + "\n")
    outcome = bs.import_bootnodes(boot, targets, None)
    assert outcome.status == "rejected" and "put them into pimail.toml" in outcome.message
    assert targets.config.read_text() == text


def test_pimail_toml_is_imported_first_and_bootnodes_txt_applied_on_top(boot: Path, targets: Any) -> None:
    node = enode()
    (boot / "pimail.toml").write_text('[node]\nmax_peers = 9\nbootnodes = ["enode://old"]\n')
    (boot / "bootnodes.txt").write_text(node + "\n")
    outcomes = {o.name: o for o in bs.import_all(boot, targets, None)}
    assert outcomes["pimail.toml"].status == "imported"
    assert outcomes["bootnodes.txt"].status == "imported"
    assert tomllib.loads(targets.config.read_text()) == {"node": {"max_peers": 9, "bootnodes": [node]}}
