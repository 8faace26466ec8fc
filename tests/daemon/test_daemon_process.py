"""The daemon as a real subprocess: systemd notify protocol, watchdog, status, signals, exit codes."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from pimail.archive import open_archive
from pimail.archive.base import HistoryQuery
from pimail.config import ArchiveConfig
from pimail.errors import RuntimeFailure
from tests.daemon.procs import REPO, DaemonProcess, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def node() -> Iterator[DaemonProcess]:
    d = DaemonProcess()
    try:
        d.wait_ready()
        yield d
    finally:
        d.close()


def test_ready_watchdog_status_and_clean_stop(node: DaemonProcess) -> None:
    msgs = node.notify.messages
    ready = next(m for m in msgs if m.startswith("READY=1"))
    assert "STATUS=" in ready
    assert node.notify.wait_for("WATCHDOG=1", 5)
    assert wait_until(lambda: len(node.watchdog_times()) >= 3, 30), "pings at a third of WatchdogSec"

    status = node.status_cli()
    assert status["health"]["state"] == "healthy"
    assert status["archive"]["backend"] == "sqlite"
    assert status["clock"]["trusted"] is True
    assert status["systemd"]["watchdog_s"] == pytest.approx(0.6)
    assert status["peer_count"] == 0 and status["uptime_s"] > 0
    text = node.cli("status")
    assert text.returncode == 0 and "healthy" in text.stdout and "archive" in text.stdout
    with urllib.request.urlopen(status["metrics_url"], timeout=5) as r:
        body = r.read().decode()
    assert "pimail_archive_envelopes 0.0" in body and "pimail_peers 0.0" in body
    assert 'pimail_health{state="healthy"} 1.0' in body

    node.signal(signal.SIGTERM)
    assert node.wait_exit() == 0
    assert any(m.startswith("STOPPING=1") for m in node.notify.messages)
    log = node.log()
    assert "archive flushed and closed" in log and "Traceback" not in log
    assert not (node.data_dir / "control.sock").exists()


@pytest.fixture
def node_with_runtime_dir() -> Iterator[DaemonProcess]:
    d = DaemonProcess(runtime_dir=True)
    try:
        d.wait_ready()
        yield d
    finally:
        d.close()


def test_watchdog_stops_while_the_archive_is_unwritable_and_resumes(
    node_with_runtime_dir: DaemonProcess,
) -> None:
    node = node_with_runtime_dir
    assert node.runtime_dir is not None
    assert (node.runtime_dir / "control.sock").exists() and not (node.data_dir / "control.sock").exists()
    assert node.notify.wait_for("WATCHDOG=1", 5)
    moved = node.data_dir.with_name("data.moved")
    node.data_dir.rename(moved)
    node.data_dir.write_text("not a directory any more")  # even root cannot write below a file
    try:
        assert node.notify.wait_for("STATUS=failing: archive unwritable", 15), node.notify.messages[-5:]
        # datagrams from one sender arrive in order: count by position, not by the clock
        failing_at = next(i for i, m in enumerate(node.notify.messages)
                          if "STATUS=failing: archive unwritable" in m)
        failing = node.cli("status")  # takes a while: several watchdog periods (0.6 s) pass
        assert failing.returncode == 3, failing.stderr
        assert "failing: archive unwritable" in failing.stdout
        late = [m for m in node.notify.messages[failing_at + 1:] if "WATCHDOG=1" in m]
        assert late == [], "no WATCHDOG=1 while failing: systemd would restart us"
    finally:
        node.data_dir.unlink()
        moved.rename(node.data_dir)
    assert wait_until(lambda: healthy(node), 15)
    resumed_at = len(node.notify.messages)
    assert wait_until(lambda: any("WATCHDOG=1" in m for m in node.notify.messages[resumed_at:]), 30), (
        "pings resume after recovery")


def test_sigterm_flushes_posted_envelopes_and_says_stopping(node: DaemonProcess) -> None:
    enode = node.status()["enode"]
    port = int(enode.rsplit(":", 1)[1])
    enode = enode.rsplit("@", 1)[0] + f"@127.0.0.1:{port}"
    post = subprocess.run(
        [sys.executable, "-m", "pimail", "post", "--peer", enode, "--topic", "0badf00d",
         "--sym-password", "secret", "--ttl", "300", "--count", "3", "--timeout", "20", "hello"],
        cwd=REPO, capture_output=True, text=True, timeout=90,
    )
    assert post.returncode == 0, post.stderr
    hashes = {line.strip().removeprefix("0x") for line in post.stdout.split() if len(line.strip()) >= 64}
    assert len(hashes) == 3, post.stdout
    assert wait_until(lambda: node.status()["counters"]["envelopes_in"] >= 3, 10)
    node.signal(signal.SIGTERM)
    assert node.wait_exit() == 0
    assert any(m.startswith("STOPPING=1") for m in node.notify.messages)
    stored = asyncio.run(archived(node.data_dir, hashes))
    assert stored == hashes, "every envelope accepted before SIGTERM is durable in the archive"


def healthy(node: DaemonProcess) -> bool:
    try:
        return bool(node.status()["health"]["state"] == "healthy")
    except RuntimeFailure:
        return False


async def archived(data_dir: Path, hashes: set[str]) -> set[str]:
    archive = open_archive(ArchiveConfig(), data_dir, None)
    await archive.open()
    try:
        stored = {e.hash.hex() async for e in archive.iterate(HistoryQuery(0, 2**32 - 1))}
        return hashes & stored
    finally:
        await archive.close()


def test_sighup_reloads_and_keeps_running(node: DaemonProcess) -> None:
    text = node.config.read_text().replace('min_free_disk = "1MB"', 'min_free_disk = "2MB"\nmax_age = "2d"')
    node.config.write_text(text)
    node.signal(signal.SIGHUP)
    assert wait_until(lambda: node.status()["retention"]["max_age_s"] == 2 * 86400, 15), node.log()[-2000:]
    assert "reloaded" in node.log()
    node.config.write_text(text + "\n[node]\nbogus = 1\n")
    node.signal(signal.SIGHUP)
    assert wait_until(lambda: "reload refused" in node.log(), 10)
    assert node.proc.poll() is None and node.status()["health"]["state"] == "healthy"


def test_port_in_use_exits_1_with_one_line(tmp_path: Path) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    port = blocker.getsockname()[1]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pimail", "run", "--data-dir", str(tmp_path / "d"),
             "--listen", f"127.0.0.1:{port}", "--no-metrics", "--no-page", "--clock-trust", "always"],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
    finally:
        blocker.close()
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pimail: error: cannot listen on 127.0.0.1:{port}: the port is in use")
    assert "Traceback" not in proc.stderr


def test_status_without_a_daemon_exits_1(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pimail", "status", "--data-dir", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("pimail: error: no running pimail found")


def test_sigterm_right_after_ready_still_stops_cleanly() -> None:
    d = DaemonProcess()
    try:
        assert d.notify.wait_for("READY=1", 30), d.log()
        d.signal(signal.SIGTERM)  # systemd may stop a unit the moment it is up
        assert d.wait_exit() == 0, d.log()
        assert any(m.startswith("STOPPING=1") for m in d.notify.messages)
        assert "archive flushed and closed" in d.log()
    finally:
        d.close()


def test_a_second_daemon_on_the_same_data_dir_refuses_before_touching_the_archive(
    node: DaemonProcess,
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pimail", "run", "--config", str(node.config),
         "--data-dir", str(node.data_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("pimail: error: another pimail is running")
    assert "archive open" not in proc.stderr
    assert node.status()["health"]["state"] == "healthy"
