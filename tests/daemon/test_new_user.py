"""What bit a new user (issue: settings obeyed, read-only commands, advertised enode, …)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pimail import configfile

REPO = Path(__file__).resolve().parents[2]


def pimail_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("STATE_DIRECTORY", "CONFIGURATION_DIRECTORY", "RUNTIME_DIRECTORY")}
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pimail", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=full_env)


# -- 1. the default data dir's pimail.toml is read ------------------------------------------------


def test_the_default_data_dir_config_is_read_like_data_dir_var(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    init = pimail_in(tmp_path, "init", "--listen", "127.0.0.1:30411")
    assert init.returncode == 0, init.stderr
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    assert configfile.find_config(None, None) == Path("var") / "pimail.toml"
    assert configfile.find_config(None, None) == configfile.find_config(None, Path("./var"))
    plain = pimail_in(tmp_path, "enode")
    explicit = pimail_in(tmp_path, "enode", "--data-dir", "./var")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip().endswith(":30411") and plain.stdout == explicit.stdout


def test_make_run_leaves_the_listen_address_to_the_file() -> None:
    dry = subprocess.run(["make", "-n", "-C", str(REPO), "run"], capture_output=True, text=True, timeout=60)
    line = next(x for x in dry.stdout.splitlines() if "pimail run" in x)
    assert "--listen" not in line
    given = subprocess.run(["make", "-n", "-C", str(REPO), "run", "LISTEN=127.0.0.1:30412"],
                           capture_output=True, text=True, timeout=60)
    assert "--listen 127.0.0.1:30412" in given.stdout


# -- 3. read-only commands go on with a bad config file on disk -------------------------------------


@pytest.mark.slow
def test_read_only_commands_work_and_warn_when_the_file_on_disk_is_bad() -> None:
    from tests.daemon.procs import DaemonProcess, wait_until

    node = DaemonProcess()
    try:
        node.wait_ready()
        good = node.config.read_text()
        node.config.write_text(good + "[node]\nmax_peerz = 3\n")  # a second [node] table: TOML error
        node.signal(signal.SIGHUP)
        assert wait_until(lambda: "reload refused" in node.log(), 30), node.log()
        conf = ("--config", str(node.config))
        for cmd in (("status",), ("status", "--json"), ("pair", "--status"), ("archive", "stats")):
            r = node.cli(*cmd, *conf)
            assert r.returncode == 0, (cmd, r.stderr)
            assert "the config file on disk is bad" in r.stderr and str(node.config) in r.stderr, cmd
            assert "Traceback" not in r.stderr
        doctor = node.cli("doctor", *conf)
        assert "the config file on disk is bad" in doctor.stderr
        assert any(line.startswith("FAIL  config") for line in doctor.stdout.splitlines()), doctor.stdout
        assert any(line.startswith("OK    port") for line in doctor.stdout.splitlines()), doctor.stdout
        # commands that change things still refuse a bad file
        run = node.cli("pair", *conf)
        assert run.returncode == 2 and "pimail: error:" in run.stderr
    finally:
        node.close()


# -- 5. the advertised enode is one that can be dialled ---------------------------------------------


@pytest.mark.slow
def test_a_node_on_loopback_advertises_loopback_everywhere() -> None:
    import socket as socketlib

    from tests.daemon.procs import DaemonProcess

    with socketlib.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = DaemonProcess(args=["--listen", f"127.0.0.1:{port}"])
    try:
        node.wait_ready()
        status = node.status()
        assert status["enode"].endswith(f"@127.0.0.1:{port}"), status["enode"]
        ready = next(line for line in node.log().splitlines() if " ready: " in line)
        assert f"@127.0.0.1:{port}" in ready
        assert "loopback address" in node.log()
    finally:
        node.close()


def test_pimail_enode_on_a_loopback_listener(tmp_path: Path) -> None:
    conf = tmp_path / "pimail.toml"
    conf.write_text('[node]\nlisten = "[::1]:30414"\n')
    r = pimail_in(tmp_path, "enode", "--config", str(conf), "--data-dir", str(tmp_path / "d"))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("@[::1]:30414")
    assert "loopback address" in r.stderr


# -- 8. output to a closed pipe: no traceback -------------------------------------------------------


def run_into_closed_pipe(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pimail ARGS | true``: the reader has gone before pimail writes."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("STATE_DIRECTORY", "RUNTIME_DIRECTORY")}
        return subprocess.run([sys.executable, "-m", "pimail", *args], cwd=cwd, stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, env=env)
    finally:
        os.close(write_end)


def test_a_closed_pipe_gives_no_traceback(tmp_path: Path) -> None:
    conf = tmp_path / "pimail.toml"
    conf.write_text('[node]\nlisten = "127.0.0.1:30415"\n[leds]\nenabled = false\n')
    common = ("--config", str(conf), "--data-dir", str(tmp_path / "d"))
    for cmd in (("enode", "--qr"), ("pair", "--list"), ("archive", "stats"), ("doctor",),
                ("archive", "stats", "--json")):
        r = run_into_closed_pipe(tmp_path, *cmd, *common)
        assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, (cmd, r.stderr)
        assert r.returncode == 141, (cmd, r.returncode, r.stderr)


@pytest.mark.slow
def test_status_into_a_closed_pipe() -> None:
    from tests.daemon.procs import DaemonProcess

    node = DaemonProcess()
    try:
        node.wait_ready()
        for cmd in (("status",), ("status", "--json")):
            r = run_into_closed_pipe(node.root, *cmd, "--config", str(node.config),
                                     "--data-dir", str(node.data_dir))
            assert "Traceback" not in r.stderr and r.returncode == 141, (cmd, r.stderr)
    finally:
        node.close()


# -- 10, 14. a client tool shows its own work, not the node's chatter -------------------------------


@pytest.mark.slow
def test_post_with_a_long_ttl_says_what_the_work_takes_and_hides_node_logs() -> None:
    from tests.daemon.procs import DaemonProcess

    node = DaemonProcess()
    try:
        node.wait_ready()
        enode = node.status()["enode"]
        # a TTL of an hour at PoW 0.02: ~2^30 hashes, far more than 1 s anywhere; --work-time caps it
        r = subprocess.run(
            [sys.executable, "-m", "pimail", "post", "--peer", enode, "--topic", "cd423760", "--sym-password",
             "pw", "--ttl", "3600", "--pow", "0.02", "--work-time", "2", "--timeout", "30", "hello"],
            cwd=REPO, capture_output=True, text=True, timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "sealing message 1/1: proof of work needs ~" in r.stderr and "hashes" in r.stderr
        assert "--work-time 2 s" in r.stderr  # more than the limit: it says so
        assert "sealing message 1/1: done in" in r.stderr
        assert "listening for peers" not in r.stderr and "node stopped" not in r.stderr
        assert r.stdout.startswith("0x")
    finally:
        node.close()


def test_the_work_estimate() -> None:
    from pimail.cli.post import describe_work, expected_hashes

    small = expected_hashes(2000, 30, b"abcd", b"x" * 200, 0.002, 0.002)
    big = expected_hashes(5000, 3600, b"abcd", b"x" * 200, 0.002, 0.002)
    assert small < 2**16 <= big  # the default TTL needs no estimate, an hour's does
    assert "about 2.0 s" in describe_work("m", 4_000_000, 2_000_000, 5.0)
    assert "more than --work-time 5 s" in describe_work("m", 40_000_000, 2_000_000, 5.0)
