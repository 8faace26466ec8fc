"""pimail doctor: each check's verdicts, and the command's exit code."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from pimail.appliance import doctor
from pimail.appliance.clock import ClockTrust
from pimail.config import Config


def cfg(tmp_path: Path) -> Config:
    c = Config()
    c.node.data_dir = tmp_path
    return c


def test_clock_verdicts(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    flag = tmp_path / "synchronized"
    synced = ClockTrust("synced", flag_path=flag, kernel_synced=lambda: False, mechanism_paths=(tmp_path,))
    assert doctor.check_clock(c, synced).verdict == "fail"
    flag.touch()
    synced.refresh()
    assert doctor.check_clock(c, synced).verdict == "ok"
    auto = ClockTrust("auto", flag_path=tmp_path / "nope", kernel_synced=lambda: False, mechanism_paths=(),
                      booted_path=tmp_path / "nope", warn=False)
    check = doctor.check_clock(c, auto)
    assert check.verdict == "warn" and check.advice


def test_disk_verdicts(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    c.archive.min_free_disk = "1KB"
    assert doctor.check_disk(c).verdict == "ok"
    c.archive.min_free_disk = "1000TB"
    check = doctor.check_disk(c)
    assert check.verdict == "fail" and "below min_free_disk" in check.detail


def test_archive_quick_check(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert doctor.check_archive(c).verdict == "ok"  # no archive yet
    db = tmp_path / doctor.ARCHIVE_FILE
    conn = sqlite3.connect(db)
    conn.execute("create table t (x)")
    conn.executemany("insert into t values (?)", [(b"x" * 3000,) for _ in range(50)])
    conn.commit()
    conn.close()
    assert doctor.check_archive(c).verdict == "ok"
    raw = bytearray(db.read_bytes())
    raw[4096 + 10 : 4096 + 200] = b"\xa5" * 190  # scribble over the second page
    db.write_bytes(bytes(raw))
    check = doctor.check_archive(c)
    assert check.verdict == "fail" and "pimail archive recover" in check.advice
    db.write_bytes(b"this is not a database at all" * 100)
    assert doctor.check_archive(c).verdict == "fail"
    c.archive.url = "postgresql://u@h/d"
    assert doctor.check_archive(c).verdict == "skip"


def _as_a_user_who_cannot_write(directory: Path) -> contextlib.AbstractContextManager[None]:
    """A read-only data dir for real: mode 0555, and as root (who ignores modes) nobody's euid."""

    @contextlib.contextmanager
    def cm() -> Iterator[None]:
        directory.chmod(0o555)
        try:
            if os.geteuid() == 0:
                os.seteuid(65534)
                try:
                    yield
                finally:
                    os.seteuid(0)
            else:
                yield
        finally:
            directory.chmod(0o755)

    return cm()


def test_a_directory_in_place_and_a_kept_damaged_archive_get_their_own_advice(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    db = tmp_path / doctor.ARCHIVE_FILE
    db.mkdir()
    check = doctor.check_archive(c)
    assert check.verdict == "fail" and "directory" in check.detail and "move the directory" in check.advice
    db.rmdir()
    sqlite3.connect(db).close()
    (tmp_path / f"{doctor.ARCHIVE_FILE}.damaged-20261202T130000Z").write_bytes(b"")
    check = doctor.check_archive(c)
    assert check.verdict == "warn" and "damaged-20261202T130000Z" in check.detail
    assert "remove it" in check.advice


def test_a_read_only_data_dir_is_diagnosed_as_such_not_as_damage() -> None:
    root = Path(tempfile.mkdtemp(prefix="pimail-ro-"))  # not under pytest's 0700 tree: nobody must see it
    try:
        root.chmod(0o755)
        c = cfg(root)
        db = root / doctor.ARCHIVE_FILE
        conn = sqlite3.connect(db)
        conn.execute("pragma journal_mode=wal")
        conn.execute("create table t (x)")
        conn.execute("insert into t values (1)")
        conn.commit()
        conn.close()
        db.chmod(0o644)  # closed cleanly: no -wal or -shm next to it, as after `systemctl stop pimail`
        with _as_a_user_who_cannot_write(root):
            check = doctor.check_archive(c)
        assert check.verdict == "warn", check
        assert "read-only" in check.detail and "reads fine" in check.detail
        assert "do not rebuild" in check.advice and "copy" not in check.advice
        assert doctor.check_archive(c).verdict == "ok"  # the same file, as a user who may write
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_port_verdicts(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    c.node.listen = f"127.0.0.1:{port}"
    assert doctor.check_port(c, daemon_running=False).verdict == "ok"  # bound, not listening: free
    s.listen(1)
    try:
        assert doctor.check_port(c, daemon_running=False).verdict == "fail"
        assert doctor.check_port(c, daemon_running=True).verdict == "ok"
    finally:
        s.close()
    assert doctor.check_port(c, daemon_running=True).verdict == "fail"


def test_gpio_verdicts(tmp_path: Path) -> None:
    c = cfg(tmp_path)
    assert doctor.check_gpio(c, chips=[]).verdict == "warn"
    chip = tmp_path / "gpiochip0"
    chip.touch()
    assert doctor.check_gpio(c, chips=[str(chip)]).verdict == "ok"
    c.leds.enabled = False
    assert doctor.check_gpio(c).verdict == "skip"


def test_power_from_vcgencmd() -> None:
    assert doctor.check_power(lambda cmd: "throttled=0x0\n").verdict == "ok"
    now = doctor.check_power(lambda cmd: "throttled=0x50005\n")
    assert now.verdict == "fail" and "under-voltage now" in now.detail and now.advice
    past = doctor.check_power(lambda cmd: "throttled=0x50000\n")
    assert past.verdict == "warn" and "under-voltage has occurred" in past.detail
    assert doctor.check_power(lambda cmd: "garbage").verdict == "warn"

    def missing(cmd: list[str]) -> str:
        raise FileNotFoundError("vcgencmd")

    assert doctor.check_power(missing).verdict == "warn"


def test_write_rate() -> None:
    assert doctor.check_write_rate(None).verdict == "skip"
    assert doctor.check_write_rate({"uptime_s": 10, "archive": {}}).verdict == "skip"
    ok = doctor.check_write_rate({"uptime_s": 3600, "archive": {"bytes_written_since_start": 10**6}})
    assert ok.verdict == "ok" and "/day" in ok.detail
    heavy = doctor.check_write_rate({"uptime_s": 3600, "archive": {"bytes_written_since_start": 10**9}})
    assert heavy.verdict == "warn"


def test_doctor_command_exit_codes(tmp_path: Path) -> None:
    conf = tmp_path / "pimail.toml"
    conf.write_text(
        f'[node]\ndata_dir = "{tmp_path}"\nlisten = "127.0.0.1:1"\n'
        '[archive]\nclock_trust = "always"\nmin_free_disk = "1KB"\n[leds]\nenabled = false\n'
    )
    run = [sys.executable, "-m", "pimail", "doctor", "--config", str(conf)]
    ok = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    lines = ok.stdout.strip().splitlines()
    assert len(lines) == 8 and all(line.split()[0] in ("OK", "WARN", "SKIP") for line in lines)
    (tmp_path / doctor.ARCHIVE_FILE).write_bytes(b"garbage" * 1000)
    bad = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1
    assert any(line.startswith("FAIL  archive") for line in bad.stdout.splitlines())
