"""systemd/pimail.service: `systemd-analyze verify` is clean and `security` rates it 2.0 or lower."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "pimail.service"
EXEC = "/opt/pimail/venv/bin/pimail"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")


def unit_copy(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an executable that exists here (the image puts the real
    one in /opt/pimail/venv)."""
    exe = tmp_path / "opt" / "pimail" / "venv" / "bin" / "pimail"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\nexit 0\n")
    exe.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(EXEC) == 1
    out = tmp_path / "pimail.service"
    out.write_text(text.replace(EXEC, str(exe)))
    return out


def test_unit_has_what_the_issue_asks() -> None:
    text = UNIT.read_text()
    for line in (
        "Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=pimail",
        "ConfigurationDirectory=pimail", "RuntimeDirectory=pimail", "ProtectSystem=strict",
        "ProtectHome=yes", "PrivateTmp=yes", "NoNewPrivileges=yes", "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=", "SystemCallFilter=@system-service", "MemoryMax=",
        "SupplementaryGroups=gpio", f"ExecStart={EXEC} run --config /etc/pimail/pimail.toml",
    ):
        assert line in text, line


def test_verify_is_clean(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path)
    cmd = ["systemd-analyze", "verify", str(unit)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    relevant = [line for line in proc.stderr.splitlines() if "pimail.service" in line]
    assert relevant == [], proc.stderr


def test_security_exposure_at_most_2(tmp_path: Path) -> None:
    unit = unit_copy(tmp_path)
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=120,
    )
    m = re.search(r"Overall exposure level for pimail\.service: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout[-2000:] + proc.stderr
    assert float(m.group(1)) <= 2.0, proc.stdout
    # and systemd agrees with the threshold itself
    gate = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--threshold=20", "--no-pager", str(unit)],
        capture_output=True, text=True, timeout=120,
    )
    assert gate.returncode == 0, gate.stdout[-1000:]


def test_sysusers_puts_pimail_in_gpio() -> None:
    lines = [line.split() for line in (REPO / "systemd" / "pimail.conf").read_text().splitlines()
             if line and not line.startswith("#")]
    assert ["g", "gpio", "-"] in lines
    assert any(parts[:2] == ["u", "pimail"] for parts in lines)
    assert ["m", "pimail", "gpio"] in lines
