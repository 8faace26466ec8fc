"""``pimail doctor``: quick checks of the things that go wrong on a Pi, each with what to do.

Every check returns one ``Check``: a verdict (ok / warn / fail / skip), what was found, and, when
not ok, what to do. The command exits 1 when any check fails. Checks only read: they never
change the archive or the system.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import sqlite3
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pimail.appliance import control
from pimail.appliance.clock import ClockTrust
from pimail.config import Config, parse_hostport, parse_size
from pimail.errors import RuntimeFailure

ARCHIVE_FILE = "archive.sqlite"
QUICK_CHECK_TIMEOUT_S = 60.0
VCGENCMD_TIMEOUT_S = 5.0
# An SD card lives longer under a few GB of writes a day; above this, say so.
WRITE_RATE_WARN_BYTES_PER_DAY = 5 * 1000**3

# vcgencmd get_throttled bits (Raspberry Pi firmware)
THROTTLE_BITS = {
    0: "under-voltage now",
    1: "ARM frequency capped now",
    2: "throttled now",
    3: "soft temperature limit now",
    16: "under-voltage has occurred since boot",
    17: "frequency capping has occurred",
    18: "throttling has occurred",
    19: "soft temperature limit has occurred",
}


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok | warn | fail | skip
    detail: str
    advice: str = ""

    def line(self) -> str:
        text = f"{self.verdict.upper():<4}  {self.name:<16} {self.detail}"
        return f"{text} — {self.advice}" if self.advice else text


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def check_clock(config: Config, clock: ClockTrust | None = None) -> Check:
    clock = clock or ClockTrust(config.archive.clock_trust, warn=False)
    synced, source = clock.synchronized()
    if synced:
        return Check("clock", "ok", f"synchronized ({source})")
    if clock.trusted:
        return Check(
            "clock",
            "warn",
            f"not known to be synchronized; trusted anyway (clock_trust = {clock.mode}, {clock.source})",
            "enable systemd-timesyncd or chrony so archived times are right",
        )
    return Check(
        "clock",
        "fail",
        "not synchronized: the node relays but does not archive",
        "check the network and `timedatectl timesync-status`; a Pi has no RTC",
    )


def check_disk(config: Config) -> Check:
    data_dir = config.node.data_dir
    target = data_dir if data_dir.exists() else data_dir.parent if data_dir.parent.exists() else Path(".")
    try:
        usage = shutil.disk_usage(target)
    except OSError as exc:
        return Check("disk", "fail", f"cannot read free space of {target}: {exc.strerror}",
                     "check that the data disk is mounted")
    need = parse_size(config.archive.min_free_disk)
    free = human_bytes(usage.free)
    if usage.free < need:
        return Check("disk", "fail", f"{free} free at {target}, below min_free_disk {human_bytes(need)}",
                     "lower [archive] max_bytes/max_age or use a larger card or USB disk")
    if usage.free < 2 * need:
        return Check("disk", "warn", f"{free} free at {target} (min_free_disk {human_bytes(need)})",
                     "the archive is pruned to keep min_free_disk; consider a larger disk")
    return Check("disk", "ok", f"{free} free of {human_bytes(usage.total)} at {target}")


def check_archive(config: Config, timeout_s: float = QUICK_CHECK_TIMEOUT_S) -> Check:
    if config.archive.url:
        return Check("archive", "skip", "PostgreSQL backend: integrity is the database server's job")
    path = config.node.data_dir / ARCHIVE_FILE
    kept = sorted(p.name for p in path.parent.glob(f"{ARCHIVE_FILE}.damaged-*")
                  if not p.name.endswith(("-wal", "-shm", ".json")))
    if path.is_dir():
        return Check("archive", "fail", f"{path} is a directory, not an archive file (not damage)",
                     f"move the directory {path} away; the node then opens a new archive there")
    if not path.exists():
        return Check("archive", "ok", f"no archive yet at {path} (created on first start)")
    if not os.access(path, os.R_OK):
        return Check("archive", "warn", f"{path}: this user may not read it (permission denied; "
                     "the file is not damaged, do not rebuild it)",
                     "run the check as the node's user (`sudo -u pimail pimail doctor`); if the node "
                     f"cannot read it either: `chown pimail: {path}; chmod 600 {path}`")
    if kept:
        return Check("archive", "warn", f"a damaged archive is kept next to it: {kept[-1]} (the node "
                     "moved it aside and salvaged it)",
                     "see its .json summary, then remove it (`pimail archive recover FILE` salvages "
                     "it again by hand)")
    try:
        # read-only, and never waits long on a writer holding a lock
        results = _quick_check(f"file:{path}?mode=ro", timeout_s)
    except sqlite3.Error as exc:
        if not os.access(path.parent, os.W_OK | os.X_OK) or not _can_create_in(path.parent):
            return _read_only_dir(path, timeout_s)
        return Check("archive", "fail", f"{path}: {exc}",
                     "restart pimail (it moves the damaged file aside, starts a fresh archive and salvages "
                     f"it), or by hand: `pimail archive recover {path}`")
    if results == ["ok"]:
        return Check("archive", "ok", f"{path}: quick_check ok ({human_bytes(path.stat().st_size)})")
    return Check("archive", "fail", f"{path}: quick_check: {results[0]}" + (
        f" (+{len(results) - 1} more)" if len(results) > 1 else ""),
        "restart pimail (it moves the damaged file aside and salvages it), or by hand: "
        f"`pimail archive recover {path}`")


def _quick_check(uri: str, timeout_s: float) -> list[str]:
    conn = sqlite3.connect(uri, uri=True, timeout=timeout_s)
    try:
        return [str(r[0]) for r in conn.execute("PRAGMA quick_check").fetchall()]
    finally:
        conn.close()


def _can_create_in(directory: Path) -> bool:
    """Whether this user can create a file in ``directory`` (a read-only mount fails even for root)."""
    probe = directory / f".pimail-doctor-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError:
        return False
    os.close(fd)
    with contextlib.suppress(OSError):
        probe.unlink()
    return True


def _read_only_dir(path: Path, timeout_s: float) -> Check:
    """The archive cannot be opened because its directory is read-only: SQLite needs to create
    ``archive.sqlite-shm`` next to a WAL-mode file even to read it. The file is not damaged."""
    wal = path.with_name(path.name + "-wal")
    detail = f"{path.parent} is read-only for this user: SQLite cannot create {path.name}-shm to read it"
    if not wal.exists() or wal.stat().st_size == 0:
        try:  # nothing pending in a WAL: the main file alone is the whole archive
            results = _quick_check(f"file:{path}?mode=ro&immutable=1", timeout_s)
        except sqlite3.Error as exc:
            results = [str(exc)]
        if results == ["ok"]:
            detail += "; the file itself reads fine (quick_check ok)"
        else:
            detail += f"; reading the file alone: {results[0]}"
    return Check("archive", "warn", detail,
                 "this is not damage, do not rebuild the archive: run the check as the node's user "
                 "(`sudo -u pimail pimail doctor`), and if the node's data dir itself is read-only, "
                 "remount it read-write or give the pimail user write access to it")


def running_listen(status: dict[str, Any] | None) -> str | None:
    """The address a running node listens on, from its status (its port from its enode when the
    config said port 0), or None."""
    if not status or not isinstance(status.get("listen"), str):
        return None
    try:
        host, port = parse_hostport(status["listen"])
    except ValueError:
        return None
    enode = status.get("enode")
    if port == 0 and isinstance(enode, str):
        tail = enode.rpartition(":")[2].split("?", 1)[0]
        if tail.isdigit():
            port = int(tail)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def check_port(config: Config, daemon_running: bool, listen: str | None = None) -> Check:
    listen = listen or config.node.listen
    host, port = parse_hostport(listen)
    probe = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    listening = False
    with contextlib.suppress(OSError), socket.create_connection((probe, port), timeout=1.0):
        listening = True
    if daemon_running:
        if listening:
            return Check("port", "ok", f"pimail is listening on {listen}")
        return Check("port", "fail", f"pimail runs but nothing answers on {probe}:{port}",
                     "check `journalctl -u pimail` for listener errors")
    if listening:
        return Check("port", "fail", f"{listen} is taken by another program",
                     f"stop it or set [node] listen to another port (`ss -ltnp 'sport = :{port}'`)")
    return Check("port", "ok", f"{listen} is free (pimail is not running)")


def check_gpio(config: Config, chips: Sequence[str] | None = None) -> Check:
    if not config.leds.enabled:
        return Check("gpio", "skip", "LEDs disabled in config")
    chips = sorted(glob.glob("/dev/gpiochip*")) if chips is None else list(chips)
    if not chips:
        return Check("gpio", "warn", "no /dev/gpiochip*: the status LEDs stay dark",
                     "on a Pi, check the kernel's GPIO driver; elsewhere set [leds] enabled = false")
    unusable = [c for c in chips if not os.access(c, os.R_OK | os.W_OK)]
    if len(unusable) == len(chips):
        return Check("gpio", "warn", f"{', '.join(chips)} not accessible to this user",
                     "add the pimail user to the gpio group (the image's udev rule makes it 0660 gpio)")
    return Check("gpio", "ok", f"{', '.join(chips)}")


def check_power(run: Callable[[list[str]], str] | None = None) -> Check:
    if run is None:
        exe = shutil.which("vcgencmd")
        if exe is None:
            return Check("power", "skip", "vcgencmd not present (not Raspberry Pi OS firmware tools)")

        def run(cmd: list[str]) -> str:
            return subprocess.run(
                cmd, capture_output=True, text=True, timeout=VCGENCMD_TIMEOUT_S, check=True
            ).stdout

    try:
        out = run(["vcgencmd", "get_throttled"])
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("power", "warn", f"vcgencmd failed: {exc}", "run it by hand to see why")
    value = out.strip().partition("=")[2]
    try:
        bits = int(value, 16)
    except ValueError:
        return Check("power", "warn", f"unexpected vcgencmd output {out.strip()[:40]!r}")
    flags = [text for bit, text in THROTTLE_BITS.items() if bits & (1 << bit)]
    if bits & 0xF:
        return Check("power", "fail", f"throttled={value}: {', '.join(flags)}",
                     "use the official power supply (5.1 V) and a short cable; cool the Pi")
    if bits:
        return Check("power", "warn", f"throttled={value}: {', '.join(flags)}",
                     "the supply dipped earlier; consider a better power supply")
    return Check("power", "ok", "no under-voltage or throttling")


def check_write_rate(status: dict[str, Any] | None) -> Check:
    if status is None:
        return Check("write rate", "skip", "pimail is not running")
    archive = status.get("archive") or {}
    written = archive.get("bytes_written_since_start")
    uptime = status.get("uptime_s") or 0
    if written is None or uptime < 60:
        return Check("write rate", "skip", "not enough data yet (running for under a minute)")
    per_day = float(written) / uptime * 86400
    detail = f"{human_bytes(per_day)}/day to the archive"
    if per_day > WRITE_RATE_WARN_BYTES_PER_DAY:
        return Check("write rate", "warn", detail,
                     "heavy for an SD card: keep the archive on a USB SSD or lower retention")
    return Check("write rate", "ok", detail)


def daemon_status(config: Config) -> dict[str, Any] | None:
    path = control.find_socket(config.node.data_dir)
    if path is None:
        return None
    try:
        result = control.call(path, "status", timeout=5.0)
    except RuntimeFailure:
        return None
    return result if isinstance(result, dict) else None


def check_config(problem: str | None, path: Path | None) -> Check:
    if problem:
        return Check("config", "fail", problem,
                     "fix the file; a running node keeps its last settings until a reload or restart")
    if path is None:
        return Check("config", "ok", "no config file: built-in defaults")
    return Check("config", "ok", f"{path} loads")


def run_checks(
    config: Config, config_problem: str | None = None, config_path: Path | None = None
) -> list[Check]:
    status = daemon_status(config)
    checks: list[Callable[[], Check]] = [
        lambda: check_config(config_problem, config_path),
        lambda: check_clock(config),
        lambda: check_disk(config),
        lambda: check_archive(config),
        lambda: check_port(config, status is not None, running_listen(status)),
        lambda: check_gpio(config),
        lambda: check_power(),
        lambda: check_write_rate(status),
    ]
    results = []
    for fn in checks:
        try:
            results.append(fn())
        except Exception as exc:  # one broken check must not hide the others
            results.append(Check(getattr(fn, "__name__", "check"), "fail", f"check crashed: {exc}"))
    return results
