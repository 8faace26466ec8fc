"""The boot-partition settings importer (image/rootfs/usr/lib/pimail-image/bootsettings.py)."""

from __future__ import annotations

import base64
import hashlib
import os
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.image.conftest import BOOTSETTINGS

bs: Any = BOOTSETTINGS


def ssh_key(kind: str = "ssh-ed25519", comment: str = "me@laptop") -> str:
    blob = struct.pack(">I", len(kind)) + kind.encode() + struct.pack(">I", 32) + os.urandom(32)
    return f"{kind} {base64.b64encode(blob).decode()} {comment}"


def by_name(outcomes: list[Any]) -> dict[str, Any]:
    return {o.name: o for o in outcomes}


def test_nothing_on_the_card_changes_nothing(boot: Path, targets: Any) -> None:
    outcomes = by_name(bs.import_all(boot, targets, None))
    assert {o.status for o in outcomes.values()} == {"absent"}
    assert not targets.config.exists() and not targets.authorized_keys.exists()
    assert sorted(p.name for p in boot.iterdir()) == []


def test_valid_config_is_installed_mode_0640_and_marked_imported(boot: Path, targets: Any) -> None:
    text = '[node]\ndata_dir = "/var/lib/pimail"\n\n[status]\npairing_minutes = 5\n'
    (boot / "pimail.toml").write_text(text)
    (boot / "pimail.toml.error.txt").write_text("old complaint")
    outcome = bs.import_config(boot, targets, lambda path: None)
    assert outcome.status == "imported"
    assert targets.config.read_text() == text
    assert targets.config.stat().st_mode & 0o777 == 0o640
    assert (boot / "pimail.toml.imported").read_text() == text
    assert not (boot / "pimail.toml").exists()
    assert not (boot / "pimail.toml.error.txt").exists()


def test_config_with_toml_syntax_error_is_rejected_and_old_config_kept(boot: Path, targets: Any) -> None:
    targets.config.parent.mkdir(parents=True)
    targets.config.write_text("# the running config\n")
    (boot / "pimail.toml").write_text("[node\nlisten = 1\n")
    called: list[Path] = []
    outcome = bs.import_config(boot, targets, lambda p: called.append(p))
    assert outcome.status == "rejected"
    assert "not valid TOML" in outcome.message
    assert called == []  # the syntax check comes first
    assert targets.config.read_text() == "# the running config\n"
    assert (boot / "pimail.toml.rejected").exists()
    assert "not valid TOML" in (boot / "pimail.toml.error.txt").read_text()


def test_config_refused_by_pimails_validator_is_rejected_with_its_reason(boot: Path, targets: Any) -> None:
    (boot / "pimail.toml").write_text("[node]\nmax_peers = -1\n")
    outcome = bs.import_config(boot, targets, lambda p: f"{p.name}:2: max_peers must be positive")
    assert outcome.status == "rejected"
    assert "max_peers must be positive" in (boot / "pimail.toml.error.txt").read_text()
    assert not targets.config.exists()


def test_pimail_validator_uses_the_real_config_loader(tmp_path: Path) -> None:
    import sys

    validate = bs.pimail_validator(Path(sys.executable))
    good = tmp_path / "good.toml"
    good.write_text('[node]\nlisten = "0.0.0.0:30303"\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("[node]\nno_such_key = 1\n")
    assert validate(good) is None
    reason = validate(bad)
    assert reason is not None and "no_such_key" in reason


def test_binary_or_huge_config_is_rejected(boot: Path, targets: Any) -> None:
    (boot / "pimail.toml").write_bytes(b"\xff\xfe\x00garbage")
    assert bs.import_config(boot, targets, None).status == "rejected"
    (boot / "pimail.toml").write_bytes(b"#" * (bs.MAX_FILE_BYTES + 10))
    outcome = bs.import_config(boot, targets, None)
    assert outcome.status == "rejected" and "larger than" in outcome.message


def test_authorized_keys_added_once_with_options_and_bad_lines_reported(boot: Path, targets: Any) -> None:
    k1, k2 = ssh_key(), ssh_key("ssh-rsa")
    (boot / "authorized_keys").write_text(
        f"# my keys\n{k1}\nfrom=\"192.168.1.0/24\" {k2}\nssh-ed25519 !!!notbase64 x\nhello world\n"
    )
    outcome = bs.import_authorized_keys(boot, targets)
    assert outcome.status == "imported"
    assert "line 4" in outcome.message and "line 5" in outcome.message
    lines = targets.authorized_keys.read_text().splitlines()
    assert lines == [k1, f'from="192.168.1.0/24" {k2}']
    assert targets.authorized_keys.stat().st_mode & 0o777 == 0o600
    assert targets.authorized_keys.parent.stat().st_mode & 0o777 == 0o700
    # Dropping the same file again adds nothing twice.
    (boot / "authorized_keys").write_text(f"{k1}\n")
    bs.import_authorized_keys(boot, targets)
    assert targets.authorized_keys.read_text().splitlines() == lines


def test_key_whose_data_does_not_match_its_type_is_refused(boot: Path, targets: Any) -> None:
    ed = ssh_key("ssh-ed25519").split()[1]
    (boot / "authorized_keys").write_text(f"ssh-rsa {ed} liar\n")
    outcome = bs.import_authorized_keys(boot, targets)
    assert outcome.status == "rejected"
    assert "does not match" in outcome.message
    assert not targets.authorized_keys.exists()
    assert (boot / "authorized_keys.rejected").exists()


def test_wifi_txt_becomes_wpa_config_with_derived_psk_and_is_removed(boot: Path, targets: Any) -> None:
    (boot / "wifi.txt").write_text('country=de\nssid="Home \\"Net\\""\npsk=correct horse battery\n')
    outcomes = by_name(bs.import_wifi(boot, targets))
    assert outcomes["wifi.txt"].status == "imported"
    conf = targets.wpa_supplicant.read_text()
    ssid = 'Home \\"Net\\"'
    expected_psk = hashlib.pbkdf2_hmac("sha1", b"correct horse battery", ssid.encode(), 4096, 32).hex()
    assert "country=DE" in conf
    assert f"ssid={ssid.encode().hex()}" in conf
    assert f"psk={expected_psk}" in conf
    assert "correct horse" not in conf
    assert targets.wpa_supplicant.stat().st_mode & 0o777 == 0o600
    assert not (boot / "wifi.txt").exists()
    assert "correct horse" not in (boot / "wifi.txt.imported").read_text()


def test_wifi_txt_default_joins_wpa2_transition_and_wpa3_networks(boot: Path, targets: Any) -> None:
    (boot / "wifi.txt").write_text("country=DE\nssid=Home\npsk=correct horse battery\n")
    outcomes = by_name(bs.import_wifi(boot, targets))
    conf = targets.wpa_supplicant.read_text()
    network = network_block(conf)
    # WPA2 (and the PSK side of a transition network) with the derived key, WPA3 with SAE and the
    # passphrase itself, hex-encoded; management frame protection used when offered.
    assert network["key_mgmt"].split() == ["WPA-PSK", "WPA-PSK-SHA256", "SAE"]
    assert network["psk"] == hashlib.pbkdf2_hmac("sha1", b"correct horse battery", b"Home", 4096, 32).hex()
    assert bytes.fromhex(network["sae_password"]) == b"correct horse battery"
    assert network["ieee80211w"] == "1"
    assert "sae_pwe=2" in conf.splitlines()
    assert "SAE" in outcomes["wifi.txt"].message
    assert not (boot / "wifi.txt").exists()


def test_wifi_txt_wpa3_only_requires_protected_management_frames(boot: Path, targets: Any) -> None:
    (boot / "wifi.txt").write_text('country=FR\nssid=Café\npsk="pa ss=wo\\rd"\nsecurity=WPA3\n')
    bs.import_wifi(boot, targets)
    network = network_block(targets.wpa_supplicant.read_text())
    assert network["key_mgmt"] == "SAE"
    assert network["ieee80211w"] == "2"
    assert bytes.fromhex(network["sae_password"]) == b"pa ss=wo\\rd"
    assert bytes.fromhex(network["ssid"]).decode() == "Café"
    assert "psk" not in network


def test_wifi_txt_wpa2_only_stores_no_passphrase(boot: Path, targets: Any) -> None:
    (boot / "wifi.txt").write_text("country=DE\nssid=Old\npsk=correct horse battery\nsecurity=wpa2\n")
    bs.import_wifi(boot, targets)
    conf = targets.wpa_supplicant.read_text()
    network = network_block(conf)
    assert network["key_mgmt"] == "WPA-PSK WPA-PSK-SHA256"
    assert "sae_password" not in network and "ieee80211w" not in network and "sae_pwe" not in conf
    assert b"correct horse".hex() not in conf and "correct horse" not in conf


def test_raw_hex_key_cannot_do_sae(boot: Path, targets: Any) -> None:
    (boot / "wifi.txt").write_text(f"country=GB\nssid=Attic\npsk={'ab' * 32}\n")
    bs.import_wifi(boot, targets)
    network = network_block(targets.wpa_supplicant.read_text())
    assert network["key_mgmt"] == "WPA-PSK WPA-PSK-SHA256" and "sae_password" not in network
    (boot / "wifi.txt").write_text(f"country=GB\nssid=Attic\npsk={'ab' * 32}\nsecurity=wpa3\n")
    outcome = by_name(bs.import_wifi(boot, targets))["wifi.txt"]
    assert outcome.status == "rejected" and "needs the passphrase" in outcome.message


def network_block(conf: str) -> dict[str, str]:
    """The key=value lines inside the (only) network={...} block of a wpa_supplicant config."""
    body = conf.split("network={", 1)[1].split("\n}", 1)[0]
    return dict(line.strip().split("=", 1) for line in body.splitlines() if "=" in line)


def test_known_wpa2_psk_vector() -> None:
    # IEEE 802.11i-2004 Annex H.4 test vector: passphrase "password", SSID "IEEE".
    conf = bs.wpa_supplicant_conf(bs.WifiSettings("US", "IEEE", "password"))
    assert "psk=f42c6fc52df0ebef9ebb4b90b38a5f902e83fe1b135a70e23aed762e9710a12e" in conf


def test_hex_psk_and_hidden_network(boot: Path, targets: Any) -> None:
    (boot / "wifi.txt").write_text(f"country=GB\nssid=Attic\npsk={'ab' * 32}\nhidden=yes\n")
    bs.import_wifi(boot, targets)
    conf = targets.wpa_supplicant.read_text()
    assert f"psk={'ab' * 32}" in conf and "scan_ssid=1" in conf


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("ssid=x\npsk=12345678\n", "country= is missing"),
        ("country=Germany\nssid=x\npsk=12345678\n", "two-letter"),
        ("country=DE\nssid=x\npsk=short\n", "8 to 63"),
        ("country=DE\nssid=x\npsk=12345678\nchannel=6\n", "unknown key"),
        ("country=DE\nssid\n", "expected key=value"),
        (f"country=DE\nssid={'x' * 33}\npsk=12345678\n", "longer than 32"),
    ],
)
def test_bad_wifi_txt_is_kept_with_an_error_note(boot: Path, targets: Any, text: str, reason: str) -> None:
    (boot / "wifi.txt").write_text(text)
    outcomes = by_name(bs.import_wifi(boot, targets))
    assert outcomes["wifi.txt"].status == "rejected"
    assert reason in outcomes["wifi.txt"].message
    assert (boot / "wifi.txt").exists()  # left for the operator to fix
    assert reason in (boot / "wifi.txt.error.txt").read_text()
    assert not targets.wpa_supplicant.exists()


def test_wpa_supplicant_conf_passthrough(boot: Path, targets: Any) -> None:
    text = 'country=FR\nnetwork={\n ssid="cafe"\n psk="secret123"\n}\n'
    (boot / "wpa_supplicant.conf").write_text(text)
    outcomes = by_name(bs.import_wifi(boot, targets))
    assert outcomes["wpa_supplicant.conf"].status == "imported"
    assert targets.wpa_supplicant.read_text() == text
    assert not (boot / "wpa_supplicant.conf").exists()
    (boot / "wpa_supplicant.conf").write_text("country=FR\n")
    assert by_name(bs.import_wifi(boot, targets))["wpa_supplicant.conf"].status == "rejected"


def test_one_broken_file_does_not_stop_the_others(boot: Path, targets: Any) -> None:
    (boot / "pimail.toml").write_text("not = [toml\n")
    (boot / "authorized_keys").write_text(ssh_key() + "\n")
    (boot / "wifi.txt").write_text("country=NL\nssid=a\npsk=abcdefgh\n")
    outcomes = by_name(bs.import_all(boot, targets, None))
    assert outcomes["pimail.toml"].status == "rejected"
    assert outcomes["authorized_keys"].status == "imported"
    assert outcomes["wifi.txt"].status == "imported"


def test_main_exits_1_without_a_boot_partition(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert bs.main(["--boot", str(tmp_path / "missing")]) == 1
    assert "not mounted" in caplog.text


def test_a_consumed_secret_is_overwritten_before_it_is_deleted(boot: Path, targets: Any) -> None:
    # A second link to the same file sees what happened to its blocks (FAT rewrites them in place).
    wifi = boot / "wifi.txt"
    wifi.write_text("country=DE\nssid=Home\npsk=correct horse battery\n")
    witness = boot.parent / "witness"
    os.link(wifi, witness)
    size = witness.stat().st_size
    bs.import_wifi(boot, targets)
    assert not wifi.exists()
    assert witness.read_bytes() == b"\0" * size
