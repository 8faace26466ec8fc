"""``pimail run`` as a real process on a damaged or unreadable archive: READY, truthful STATUS=,
`pimail status`, and no restart loop (the issue's Pi case: exit 1 on a truncated file)."""

from __future__ import annotations

import os
import shutil
import urllib.request
from pathlib import Path

import pytest

from tests.archive.test_damage import fill, originals
from tests.daemon.procs import DaemonProcess, wait_until


def truncated(data: Path) -> None:
    path = data / "archive.sqlite"
    fill(path, originals(1000))
    os.truncate(path, path.stat().st_size // 2)


def test_a_truncated_archive_no_longer_stops_the_node() -> None:
    node = DaemonProcess(before_start=truncated)
    try:
        node.wait_ready()
        assert node.proc.poll() is None, "running, not exit 1 into a restart loop"
        # STATUS= says so: "archive damaged" while the salvage runs, "a damaged archive is kept"
        # once it is done (a small archive can be salvaged before READY=1)
        assert wait_until(lambda: any("archive damaged" in m or "a damaged archive is kept" in m
                                      for m in node.notify.messages), 60), node.notify.messages
        snap = node.status_cli()
        assert snap["health"]["state"] == "degraded"
        assert wait_until(lambda: (node.status_cli()["archive"]["salvage"] or {}).get("state") == "done", 30)
        url = node.status()["metrics_url"]
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read().decode()
        salvaged = node.status()["archive"]["salvage"]["salvaged"]
        assert "pimail_archive_damaged_files 1.0" in body
        assert f"pimail_archive_salvaged_envelopes {float(salvaged)}" in body and salvaged > 0
        text = node.cli("status").stdout
        assert "salvage    done:" in text and "kept       " in text and "archive.sqlite.damaged-" in text
    finally:
        node.close()


def no_dac_override() -> list[str] | None:
    """A prefix that takes root's power to read any file (none needed when not root)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"] if setpriv else None


def test_a_mode_000_archive_is_reported_unreadable_left_alone_and_picked_up_once_fixed() -> None:
    prefix = no_dac_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: a mode-000 file stays readable")

    def unreadable(data: Path) -> None:
        fill(data / "archive.sqlite", originals(50))
        os.chmod(data / "archive.sqlite", 0)

    node = DaemonProcess(before_start=unreadable, prefix=prefix)
    try:
        node.wait_ready()
        snap = node.status()
        assert snap["health"]["state"] == "degraded"
        assert [c["key"] for c in snap["health"]["conditions"]] == ["archive.unreadable"]
        assert "permission denied" in snap["archive"]["unreadable"]["why"]
        assert "chmod 600" in snap["archive"]["unreadable"]["fix"]
        path = node.data_dir / "archive.sqlite"
        assert path.stat().st_mode & 0o777 == 0 and not list(node.data_dir.glob("*.damaged-*"))
        os.chmod(path, 0o600)  # the operator's fix; housekeeping retries the open
        assert wait_until(lambda: node.status()["health"]["state"] == "healthy", 30), node.log()
        assert node.status()["archive"]["count"] == 50
    finally:
        node.close()
