"""``pimail enode``: key on first use, the address phones should dial, password form, QR outputs,
warnings and one-line errors; the LAN address detection underneath."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from pimail.appliance import lan, qr
from pimail.cli import main
from pimail.crypto.keys import Enode, NodeKey
from pimail.errors import UserError
from tests.appliance.pairing_fixtures import decode_qr, modules_to_gray, read_png_gray


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["enode", *args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_creates_the_key_once_with_mode_0600_and_prints_a_parseable_enode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "pi.example.org")
    assert rc == 0
    keyfile = tmp_path / "nodekey"
    assert stat.S_IMODE(keyfile.stat().st_mode) == 0o600
    enode = Enode.parse(out.strip())
    assert enode.pubkey == NodeKey.load(keyfile).public
    assert (enode.host, enode.port, enode.password) == ("pi.example.org", 30303, None)
    rc, again, _ = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "pi.example.org")
    assert rc == 0 and again == out


def test_with_password_is_the_status_form(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "8.8.4.4", "--with-password")
    assert rc == 0
    line = out.strip()
    assert line.endswith(":status-offline-inbox@8.8.4.4:30303")
    assert Enode.parse(line).password == "status-offline-inbox"


def test_detected_lan_host_is_never_unspecified_or_loopback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = run_cli(capsys, "--data-dir", str(tmp_path))
    detected = lan.primary_lan_address()
    if detected is None:  # a machine with no IPv4 route at all: a defined error instead
        assert rc == 2 and "public_host" in err
        return
    assert rc == 0
    enode = Enode.parse(out.strip())
    assert enode.host == detected
    assert enode.host not in ("0.0.0.0", "127.0.0.1")
    if lan.is_lan_only(detected):
        assert "private address" in err


def test_private_host_warns_public_host_does_not(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, _, err = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "192.168.1.5")
    assert "private address" in err and "public_host" in err
    _, _, err = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "mail.example.org")
    assert err == ""
    _, _, err = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "127.0.0.1")
    assert "loopback" in err


def test_unusable_host_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "0.0.0.0")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("pimail: error:")


def test_corrupt_node_key_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "nodekey").write_text("not hex\n")
    rc, out, err = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "10.0.0.2")
    assert rc == 2 and out == ""
    assert "node key" in err and err.count("\n") == 1


def test_qr_in_terminal_decodes_to_the_printed_enode(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "10.1.2.3", "--with-password", "--qr")
    assert rc == 0
    first, _, drawing = out.partition("\n")
    plain = drawing.replace("\x1b[30;47m", "").replace("\x1b[0m", "")
    assert max(len(line) for line in plain.splitlines()) <= 80
    assert decode_qr(*modules_to_gray(qr.parse_terminal(drawing), border=0)) == [first]
    # stdout here is not a terminal (as through `ssh pi pimail enode --qr`): still black on white,
    # with the colours spelled out, so it scans on a light terminal as on a dark one
    assert all(line.startswith("\x1b[30;47m") for line in drawing.splitlines())
    rc, out, _ = run_cli(capsys, "--data-dir", str(tmp_path), "--host", "10.1.2.3", "--qr-plain")
    first, _, drawing = out.partition("\n")
    assert rc == 0 and "\x1b[" not in drawing
    assert decode_qr(*modules_to_gray(qr.parse_terminal(drawing), border=0)) == [first]


def test_png_and_svg_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    png, svg = tmp_path / "e.png", tmp_path / "e.svg"
    rc, out, err = run_cli(
        capsys, "--data-dir", str(tmp_path), "--host", "10.1.2.3", "--png", str(png), "--svg", str(svg)
    )
    assert rc == 0
    assert decode_qr(*read_png_gray(png)) == [out.strip()]
    assert "<svg" in svg.read_text()
    assert f"wrote {png}" in err and f"wrote {svg}" in err


def test_png_to_an_unwritable_place_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = run_cli(
        capsys, "--data-dir", str(tmp_path), "--host", "10.1.2.3", "--png", str(tmp_path / "no" / "e.png")
    )
    assert rc == 1 and "cannot write" in err


def test_runs_as_a_real_command(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pimail", "enode", "--data-dir", str(tmp_path), "--host", "10.9.8.7"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    assert proc.returncode == 0, proc.stderr
    assert Enode.parse(proc.stdout.strip()).host == "10.9.8.7"


# -- address detection -------------------------------------------------------------------------------
ROUTES = """Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0101A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0
garbage line
"""


def test_default_gateways_from_proc_net_route(tmp_path: Path) -> None:
    routes = tmp_path / "route"
    routes.write_text(ROUTES)
    assert lan.default_gateways(routes) == ["192.0.2.1", "192.168.1.1"]  # lowest metric first
    assert lan.default_gateways(tmp_path / "missing") == []


def test_primary_address_is_a_real_local_address() -> None:
    addr = lan.primary_lan_address()
    if addr is not None:
        assert not addr.startswith("127.") and addr != "0.0.0.0"
        import socket

        with socket.socket() as s:  # it is one of ours: we can bind to it
            s.bind((addr, 0))


def test_advertised_address_order() -> None:
    assert lan.advertised_address("0.0.0.0:30303", "pi.example.org", "10.0.0.7").source == "--host"
    chosen = lan.advertised_address("0.0.0.0:30404", "pi.example.org")
    assert (chosen.host, chosen.port, chosen.source, chosen.lan_only) == (
        "pi.example.org",
        30404,
        "public_host",
        False,
    )
    chosen = lan.advertised_address("192.168.7.7:30303")
    assert (chosen.host, chosen.source, chosen.lan_only) == ("192.168.7.7", "listen", True)
    assert lan.advertised_address("[::]:30303", "", "[2001:db8::1]").host == "2001:db8::1"


@pytest.mark.parametrize("listen", ["30303", "host:notaport", "0.0.0.0:70000", "[::1:30303", "0.0.0.0:0"])
def test_bad_listen_address_is_a_user_error(listen: str) -> None:
    with pytest.raises(UserError):
        lan.advertised_address(listen, "", "10.0.0.1")


@pytest.mark.parametrize(
    ("host", "lan_only"),
    [
        ("192.168.1.2", True),
        ("10.0.0.1", True),
        ("172.16.5.4", True),
        ("100.64.1.1", True),
        ("169.254.1.1", True),
        ("fe80::1", True),
        ("fd00::5", True),
        ("127.0.0.1", True),
        ("8.8.8.8", False),
        ("2a00:1450::1", False),
        ("raspberrypi.local", True),
        ("pimail", True),
        ("mail.example.org", False),
    ],
)
def test_lan_only_classification(host: str, lan_only: bool) -> None:
    assert lan.is_lan_only(host) is lan_only


def test_config_supplies_host_port_and_password(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "pimail.toml"
    config.write_text(
        '[node]\nlisten = "0.0.0.0:30404"\npublic_host = "pi.example.org"\n'
        '[mailserver]\npassword = "our-own-secret"\n'
    )
    rc, out, err = run_cli(capsys, "--config", str(config), "--data-dir", str(tmp_path), "--with-password")
    assert rc == 0 and err == ""
    enode = Enode.parse(out.strip())
    assert (enode.host, enode.port, enode.password) == ("pi.example.org", 30404, "our-own-secret")
    # <data dir>/pimail.toml is found without --config, as the daemon finds it.
    rc, out, _ = run_cli(capsys, "--data-dir", str(tmp_path))
    assert rc == 0 and out.strip().endswith("@pi.example.org:30404")


def test_bad_config_is_a_one_line_error_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[node]\nlisten = "nowhere"\n')
    rc, out, err = run_cli(capsys, "--config", str(config), "--data-dir", str(tmp_path))
    assert rc == 2 and out == ""
    assert err.startswith(f"pimail: error: {config}:2") and err.count("\n") == 1
    rc, _, err = run_cli(capsys, "--config", str(tmp_path / "missing.toml"))
    assert rc == 2 and "not found" in err


@pytest.mark.parametrize("host", ["bad host", "-x.org", "pi/../x", "a" * 64 + ".org", "x@y"])
def test_host_that_is_no_host_name_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    rc, out, err = run_cli(capsys, "--data-dir", str(tmp_path), f"--host={host}")
    assert rc == 2 and out == "" and "neither an IP address nor a host name" in err
    assert err.count("\n") == 1


@pytest.mark.parametrize(("listen", "host"), [("127.0.0.1:30303", "127.0.0.1"), ("[::1]:30303", "::1"),
                                              ("127.0.0.2:30303", "127.0.0.2")])
def test_a_loopback_listener_advertises_its_own_address(listen: str, host: str) -> None:
    chosen = lan.advertised_address(listen)
    assert (chosen.host, chosen.source) == (host, "listen")
    warning = lan.reachability_warning(chosen)
    assert warning is not None and "only programs on this machine" in warning


def test_no_lan_address_falls_back_like_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lan, "primary_lan_address", lambda route_file=None: None)  # a machine with no route
    chosen = lan.advertised_address("0.0.0.0:30303")
    assert (chosen.host, chosen.source) == ("127.0.0.1", "fallback")
    assert lan.advertised_address("[::]:30303").host == "::1"
    warning = lan.reachability_warning(chosen)
    assert warning is not None and "public_host" in warning and "no LAN address" in warning
