"""Host side of the QEMU boot test: read the guest's ``SMOKE:`` lines, do a real RLPx handshake
against the forwarded node port, release the guest, and judge the boot.

Run by image/test/boot-smoke.sh with the project's venv python (it imports pimail for the
handshake). The parsing and the checks are plain functions so that tests/image can exercise them
without QEMU.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

SMOKE_RE = re.compile(r"SMOKE: ([A-Za-z0-9_.-]+)=(.*)$")
ENODE_RE = re.compile(r"^enode://([0-9a-fA-F]{128})(?::[^@]*)?@([^:]+):(\d+)")
# The serial console may interleave kernel messages and carriage returns into a line.
ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def parse_line(line: str) -> tuple[str, str] | None:
    """``SMOKE: key=value`` (anywhere in the line, after console noise) -> (key, value)."""
    line = ANSI_RE.sub("", line).replace("\r", "")
    match = SMOKE_RE.search(line)
    if not match:
        return None
    return match.group(1), match.group(2).strip()


def parse_lines(lines: Iterable[str]) -> dict[str, str]:
    """All SMOKE values of one boot; a later line for the same key wins."""
    values: dict[str, str] = {}
    for line in lines:
        parsed = parse_line(line)
        if parsed:
            values[parsed[0]] = parsed[1]
    return values


def parse_enode(url: str) -> tuple[bytes, str, int]:
    """(64-byte public key, host, port) of an enode URL; ValueError if it is not one."""
    match = ENODE_RE.match(url.strip())
    if not match:
        raise ValueError(f"not an enode URL: {url[:80]!r}")
    return bytes.fromhex(match.group(1)), match.group(2), int(match.group(3))


QR_BLOCKS = set(" ▀▄█")
QR_MIN_ROWS = 10  # text lines (two module rows each); the smallest QR is 21 modules


def _qr_rows(lines: list[str], ansi: bool) -> list[list[bool]]:
    """Text QR lines (half blocks, ANSI codes removed) -> module rows, True = dark. With colour
    codes the blocks are the dark modules; without, the light ones (pimail.appliance.qr)."""
    rows: list[list[bool]] = []
    for line in lines:
        upper = [ch in "▀█" for ch in line]
        lower = [ch in "▄█" for ch in line]
        if not ansi:
            upper, lower = [not x for x in upper], [not x for x in lower]
        rows.extend([upper, lower])
    return rows


def decode_rows(rows: list[list[bool]]) -> list[str]:
    """Texts of the QR codes in a module matrix (zxing-cpp, from the project's test extras)."""
    import zxingcpp  # type: ignore[import-not-found,unused-ignore]

    scale, border = 4, 4
    width = max(len(r) for r in rows)
    out = bytearray()
    white = b"\xff" * ((width + 2 * border) * scale)
    out += white * (border * scale)
    for row in rows:
        line = b"\xff" * (border * scale)
        line += b"".join(b"\x00" * scale if dark else b"\xff" * scale for dark in row)
        line += b"\xff" * ((width - len(row) + border) * scale)
        out += line * scale
    out += white * (border * scale)
    w = (width + 2 * border) * scale
    view = memoryview(bytes(out)).cast("B", (len(out) // w, w))
    return [r.text for r in zxingcpp.read_barcodes(view, formats=zxingcpp.BarcodeFormat.QRCode)]


def login_prompt_qr(serial: str) -> list[str]:
    """What each QR code drawn just before a login prompt on the serial console decodes to, in
    order: the banner agetty prints from /etc/issue (QR blocks not followed by a prompt, e.g.
    printed to the console by something else, do not count)."""
    lines = serial.replace("\r", "").split("\n")
    blocks: list[tuple[int, int, bool]] = []
    start = None
    ansi = False
    for i, raw in enumerate([*lines, ""]):
        text = ANSI_RE.sub("", raw)
        is_qr = len(text) >= 21 and set(text) <= QR_BLOCKS and bool(set(text) - {" "})
        if is_qr and start is None:
            start, ansi = i, "\x1b[" in raw
        elif not is_qr and start is not None:
            if i - start >= QR_MIN_ROWS:
                blocks.append((start, i, ansi))
            start = None
    found: list[str] = []
    for n, (first, end, ansi) in enumerate(blocks):
        until = blocks[n + 1][0] if n + 1 < len(blocks) else len(lines)
        if not any("login:" in line for line in lines[end:until]):
            continue
        rows = _qr_rows([ANSI_RE.sub("", ln) for ln in lines[first:end]], ansi)
        found.extend(decode_rows(rows))
    return found


@dataclasses.dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def _int(value: str | None) -> int:
    try:
        return int(value or "")
    except ValueError:
        return -1


def evaluate(
    values: dict[str, str],
    boot: int,
    rlpx: tuple[bool, str],
    previous: dict[str, str] | None = None,
    settings_expected: bool = False,
    login_qr: list[str] | None = None,
    qemu_to_ready_s: float | None = None,
) -> list[Check]:
    """Judge one boot's SMOKE values. ``previous`` is the first boot's values when judging the
    second boot (first boot must not run again; identity and data must persist). ``login_qr`` is
    what the QR codes shown at the serial login prompt decode to (None: not looked at)."""
    v = values.get
    checks: list[Check] = []

    def add(name: str, ok: bool, detail: str, required: bool = True) -> None:
        checks.append(Check(name, ok, detail, required))

    add("guest reported back", v("end") == str(boot), f"SMOKE: end={v('end')} (boot {v('boot')})")
    add(
        "boot finished",
        v("system") == "running",
        f"is-system-running: {v('system')}; startup {v('startup')}",
    )
    add("no failed units", v("failed") == "", f"failed: {v('failed') or 'none'}")
    add(
        "pimail.service READY (Type=notify, active)",
        v("pimail.active") == "active" and v("pimail.type") == "notify",
        f"{v('pimail.active')}, Type={v('pimail.type')}, status {v('pimail.status')!r}, "
        f"watchdog {v('pimail.watchdog')}, user {v('pimail.user')}",
    )
    add("real RLPx handshake from the host", rlpx[0], rlpx[1])
    add(
        "pimail still up after the handshake",
        v("pimail.active_after") == "active" and v("pimail.restarts_after") == "0",
        f"{v('pimail.active_after')}, restarts {v('pimail.restarts_after')}, "
        f"{v('pimail.journal_errors')} error lines in its journal",
    )
    add("node key in the data directory", bool(v("nodekey.sha256")), f"sha256 {v('nodekey.sha256')}…")
    add("listening on :30303", ":30303" in (v("listen") or ""), f"sockets {v('listen')}")
    add("config /etc/pimail/pimail.toml valid", v("config.valid") == "yes", f"{v('config.valid')}")
    add(
        "archive on the SD data partition",
        v("data.medium") == "sd" and v("data.label") == "PIMAILSD" and v("data.owner") == "pimail",
        f"{v('data.medium')} {v('data.source')} label {v('data.label')}, owner {v('data.owner')}",
    )
    add(
        "pimail-data logged no failure (no udevadm settle line)",
        v("data.log_failures") == "0",
        f"{v('data.log_failures')} lines with 'settle' or 'fail'; the unit took {v('data.unit_s')} s "
        "(no USB stick: no wait for one)",
    )
    add("SSH host keys", _int(v("hostkeys")) >= 3, f"{v('hostkeys')} host keys")
    add("machine-id set", v("machine_id") not in (None, "", "empty"), f"{v('machine_id')}…")
    add(
        "no passwords: root locked, sshd keys only",
        v("root_password") == "L" and v("sshd_password_auth") == "no",
        f"root {v('root_password')}, PasswordAuthentication {v('sshd_password_auth')}",
    )
    # Boot 1 stages an mDNS conflict that moves the box to its derived name; boot 2 keeps it.
    want_name = "pimail" if previous is None else (previous.get("mdns.derived") or "?")
    add(
        f"hostname {want_name} ({want_name}.local, announced by avahi)",
        v("hostname") == want_name and v("mdns.avahi_name") == want_name and v("mdns.unit") == "active",
        f"{v('hostname')}, avahi {v('avahi-daemon.active')} announcing {v('mdns.avahi_name')}.local, "
        f"pimail-mdns-name {v('mdns.unit')}",
    )
    add(
        "Wi-Fi config from wifi.txt joins WPA2, WPA2/WPA3 and WPA3-SAE networks (wpa_supplicant reads it)",
        v("wifi.key_mgmt") == "0x502" and v("wifi.pmf") == "1" and v("wifi.sae_password") == "1"
        and v("wifi.parse_errors") == "0",
        f"key_mgmt {v('wifi.key_mgmt')} (0x502 = WPA-PSK, WPA-PSK-SHA256, SAE), ieee80211w "
        f"{v('wifi.pmf')}, sae_password lines {v('wifi.sae_password')}, "
        f"parse errors {v('wifi.parse_errors')}",
    )
    ready_us, clock_us = _int(v("pimail.ready_us")), _int(v("clock.monotonic_us"))
    add(
        "boot to pimail READY=1",
        ready_us > 0,
        f"{ready_us / 1e6:.1f} s after the kernel started (systemd's monotonic clock)"
        + (f", {qemu_to_ready_s:.1f} s after QEMU started" if qemu_to_ready_s is not None else "")
        + (f"; SMOKE report {clock_us / 1e6:.1f} s after kernel start" if clock_us > 0 else ""),
        required=False,
    )
    add(
        "ssh, avahi, timesyncd, settings import, QR units active",
        all(
            v(f"{u}.active") == "active"
            for u in ("ssh", "avahi-daemon", "systemd-timesyncd", "pimail-import-settings", "pimail-show-qr")
        ),
        ", ".join(
            f"{u}={v(f'{u}.active')}"
            for u in ("ssh", "avahi-daemon", "systemd-timesyncd", "pimail-import-settings", "pimail-show-qr")
        ),
    )
    add("system watchdog RuntimeWatchdogSec=15", v("watchdog.runtime") == "15s", f"{v('watchdog.runtime')}")
    device = v("watchdog.device") or "none"
    add("watchdog device present", device != "none", device, required=False)
    kernel_mb = _int(v("kernel.mb"))
    need_mb = kernel_mb * 3 // 2 + 256
    add(
        "root has room for a kernel update and a full upgrade",
        kernel_mb > 0 and _int(v("root.avail_mb")) >= need_mb,
        f"{v('root.avail_mb')} MB free on /, a second kernel ({kernel_mb} MB) + its .deb + 256 MB "
        f"upgrade headroom needs {need_mb} MB",
    )
    add(
        "boot partition has room for a new kernel and initrd",
        _int(v("boot.kernel_mb")) > 0 and _int(v("boot.avail_mb")) >= _int(v("boot.kernel_mb")),
        f"{v('boot.avail_mb')} MB free, vmlinuz + initrd.img are {v('boot.kernel_mb')} MB",
    )
    add(
        "/boot's kernel and initrd restored from the boot partition, package verifies",
        v("boot.restored") == "yes" and v("kernel.verify") == "0",
        f"restored {v('boot.restored')}, dpkg --verify lines {v('kernel.verify')}",
    )
    origins = [o for o in (v("updates.origins") or "").split("|") if o]
    add(
        "unattended-upgrades: security origin only, no automatic reboot, daily",
        v("updates.installed") == "installed"
        and bool(origins) and all("-security" in o for o in origins)
        and v("updates.reboot") == "false" and v("updates.periodic") == "1"
        and v("updates.timer") == "enabled",
        f"{v('updates.installed')}, origins {origins}, Automatic-Reboot {v('updates.reboot')}, "
        f"Periodic {v('updates.periodic')}, apt-daily-upgrade.timer {v('updates.timer')}",
    )
    add(
        "data filesystem: 4 KiB blocks, >= 64 KiB per inode, no root reserve",
        v("data.block_size") == "4096"
        and _int(v("data.bytes_per_inode")) >= 65536
        and v("data.reserved") == "0",
        f"block {v('data.block_size')}, {v('data.bytes_per_inode')} bytes per inode, "
        f"reserved {v('data.reserved')}",
    )
    add(
        "bytes written to the card so far",
        _int(v("disk.written_mb")) >= 0,
        f"{v('disk.written_mb')} MB on a {v('disk.size_mb')} MB card (boot {boot})",
        required=False,
    )
    add("/tmp in RAM", v("tmp.fstype") == "tmpfs", f"{v('tmp.fstype')}")
    boards = ("pi3b", "pi3bplus", "pi4b", "zero2w")
    add(
        "Wi-Fi firmware for Pi 3 B, 3 B+, 4 B, Zero 2 W (BCM43430/1)",
        all(v(f"firmware.{b}") == "ok" for b in boards),
        ", ".join(f"{b} {v(f'firmware.{b}')}" for b in boards)
        + f"; firmware-brcm80211 {v('firmware.package')}",
    )
    add(
        "Zero 2 W BCM43430/2 firmware (no Debian package ships it: documented as unsupported)",
        v("firmware.zero2w_43436") == "ok",
        f"{v('firmware.zero2w_43436')}",
        required=False,
    )
    memory_max, mem_total = _int(v("pimail.memory_max")), _int(v("mem_total"))
    add(
        "pimail's MemoryMax fits the board",
        0 < memory_max < mem_total,
        f"MemoryMax {memory_max} of {mem_total} bytes",
    )
    issue = v("issue.link")
    add("/etc/issue is the pairing banner", issue == "/run/pimail-issue/issue", f"{issue}")
    if login_qr is not None:
        lan = v("enode.lan") or ""
        add(
            "the login prompt's QR code is the node's enode",
            bool(login_qr) and login_qr[-1] == lan and lan.startswith("enode://"),
            f"{len(login_qr)} QR code(s) before a login prompt, last {(login_qr or [''])[-1][:40]}…; "
            f"pimail enode {lan[:40]}…",
        )
    if settings_expected:
        add(
            "boot-partition settings imported",
            v("settings.authorized_keys") == "1" and v("settings.config_from_boot") == "yes",
            f"authorized_keys lines {v('settings.authorized_keys')}, config from boot partition "
            f"{v('settings.config_from_boot')}; {v('settings.log')}",
        )

    if previous is None:
        add(
            "first boot ran (once, this boot)",
            v("firstboot.condition") == "yes"
            and v("firstboot.result") == "success"
            and v("firstboot.boot_id") == v("boot_id")
            and v("firstboot.journal") == "1",
            f"condition {v('firstboot.condition')}, result {v('firstboot.result')}, "
            f"done-lines {v('firstboot.journal')}",
        )
        add(
            "first boot: no previous boot recorded",
            v("lastboot.ended") == "first",
            f"last boot ended {v('lastboot.ended')!r}",
        )
        derived = v("mdns.derived") or ""
        add(
            "mDNS conflicts: avahi's rename undone when nobody else has pimail.local; "
            "a derived name taken for good when another host has it",
            v("mdns.staged") == "pimail-2"
            and v("mdns.reclaimed") == "pimail"
            and re.fullmatch(r"pimail-[0-9a-f]{4}", derived) is not None
            and v("mdns.renamed_hostname") == derived
            and v("mdns.renamed_etc") == derived
            and v("mdns.renamed_avahi") == derived
            and v("mdns.renamed_hosts") == f"127.0.1.1 {derived}",
            f"staged {v('mdns.staged')} -> {v('mdns.reclaimed')}; another host on pimail.local -> "
            f"hostname {v('mdns.renamed_hostname')}, /etc/hostname {v('mdns.renamed_etc')}, avahi "
            f"{v('mdns.renamed_avahi')}, hosts {v('mdns.renamed_hosts')!r} (derived {derived})",
        )
        add(
            "data partition grown to fill the card",
            _int(v("data.size_mb")) > 1000 and bool(v("data.grown")),
            f"{v('data.size_mb')} MB (64 MiB in the image), grown at {v('data.grown')}",
        )
    else:
        p = previous.get
        add(
            "first boot did not run again",
            v("firstboot.condition") == "no"
            and v("firstboot.boot_id") == p("boot_id")
            and v("firstboot.boot_id") != v("boot_id")
            and v("firstboot.journal") == "0",
            f"condition {v('firstboot.condition')}, stamp from boot {str(v('firstboot.boot_id'))[:8]}…, "
            f"this boot {str(v('boot_id'))[:8]}…",
        )
        add(
            "identity kept across reboot (node key, machine-id, enode)",
            v("nodekey.sha256") == p("nodekey.sha256")
            and v("machine_id") == p("machine_id")
            and bool(v("nodekey.sha256")),
            f"node key {v('nodekey.sha256')} vs {p('nodekey.sha256')}, machine-id {v('machine_id')}",
        )
        add(
            "previous boot's journal kept; it ended clean (in pimail status too)",
            v("lastboot.ended") == "clean"
            and _int(v("lastboot.previous_lines")) > 0
            and _int(v("lastboot.previous_end")) >= 1
            and (v("lastboot.status") or "").startswith("clean shutdown"),
            f"ended {v('lastboot.ended')}, {v('lastboot.previous_lines')} lines kept "
            f"(with boot 1's last SMOKE line: {v('lastboot.previous_end')}), status {v('lastboot.status')!r}",
        )
        add(
            "data partition kept its size",
            v("data.size_mb") == p("data.size_mb") and v("data.grown") == p("data.grown"),
            f"{v('data.size_mb')} MB",
        )
    return checks


def format_checks(checks: list[Check], boot: int) -> str:
    lines = [f"boot {boot}:"]
    for c in checks:
        mark = "PASS" if c.ok else ("FAIL" if c.required else "warn")
        lines.append(f"  [{mark}] {c.name}: {c.detail}")
    return "\n".join(lines)


def passed(checks: list[Check]) -> bool:
    return all(c.ok for c in checks if c.required)


# -- live part -----------------------------------------------------------------------------------


def read_smoke(log_path: Path) -> list[str]:
    try:
        return log_path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []


def wait_for(
    log_path: Path, key: str, deadline: float, qemu_pid: int | None, seen: dict[str, float] | None = None
) -> dict[str, str] | None:
    """Poll the serial log until SMOKE key appears; None on timeout or if QEMU exited first.
    ``seen`` gets the host's wall-clock time at which each key was first read (to 0.25 s)."""
    while time.monotonic() < deadline:
        values = parse_lines(read_smoke(log_path))
        if seen is not None:
            now = time.time()
            for k in values:
                seen.setdefault(k, now)
        if key in values:
            return values
        if qemu_pid is not None and not _alive(qemu_pid):
            return None
        time.sleep(0.25)
    return None


def qemu_to_ready(values: dict[str, str], seen: dict[str, float], qemu_started: float | None) -> float | None:
    """Seconds from QEMU's start to pimail's READY=1: the host read ``clock.monotonic_us`` at
    ``seen[...]``; READY was that many guest seconds earlier (QEMU's guest clock runs with the host's)."""
    ready_us, clock_us = _int(values.get("pimail.ready_us")), _int(values.get("clock.monotonic_us"))
    when = seen.get("clock.monotonic_us")
    if qemu_started is None or when is None or ready_us <= 0 or clock_us < ready_us:
        return None
    return when - qemu_started - (clock_us - ready_us) / 1e6


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def rlpx_handshake(host: str, port: int, pubkey: bytes, timeout_s: float) -> str:
    """Dial the node with pimail's own transport; return a description of the established peer.

    The key is a throwaway; the session ends with a clean Disconnect when the server stops."""
    from pimail.config import NodeConfig
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.node.server import NodeServer  # type: ignore[import-not-found,unused-ignore]

    capabilities: list[Any] = []
    try:
        from pimail.config import WhisperConfig
        from pimail.whisper.service import WhisperService  # type: ignore[import-not-found,unused-ignore]

        capabilities.append(WhisperService(WhisperConfig(), archive=None, clock_trusted=lambda: False))
    except (ImportError, TypeError):
        pass
    key = NodeKey.generate()
    server = NodeServer(key, NodeConfig(listen="127.0.0.1:0"), capabilities)
    await server.start()
    try:
        enode = Enode.parse(f"enode://{pubkey.hex()}@{host}:{port}")
        peer = await asyncio.wait_for(server.connect(enode), timeout_s)
        if bytes(peer.pubkey) != pubkey:
            raise RuntimeError("the node answered with a different public key than its enode")
        await asyncio.sleep(1.0)  # let Hello/status settle; the peer must still be there
        state = "closed" if peer.closed else "open"
        return f"handshake with {host}:{port} ok, remote client {peer.client_id!r}, session {state}"
    finally:
        await server.stop()


def probe(values: dict[str, str], node_port: int, timeout_s: float) -> tuple[bool, str]:
    enode = values.get("enode", "")
    try:
        pubkey, _host, guest_port = parse_enode(enode)
    except ValueError as exc:
        return False, str(exc)
    if guest_port != 30303:
        return False, f"the enode names port {guest_port}, the test forwards 30303"
    try:
        return True, asyncio.run(rlpx_handshake("127.0.0.1", node_port, pubkey, timeout_s))
    except ImportError as exc:
        return False, f"pimail's transport is not importable on the host: {exc}"
    except Exception as exc:  # any failure of the handshake is the finding
        return False, f"{type(exc).__name__}: {exc}"


def release_guest(control_port: int, message: str, attempts: int = 10) -> bool:
    """Tell the guest the host is done (it then reports what it saw and powers off)."""
    for _ in range(attempts):
        # QEMU's port forward accepts even when nothing listens in the guest, so only the
        # guest's "ok" proves delivery.
        try:
            with socket.create_connection(("127.0.0.1", control_port), timeout=10) as conn:
                conn.settimeout(30)
                conn.sendall(message.encode()[:60] + b"\n")
                if conn.recv(16).startswith(b"ok"):
                    return True
        except OSError:
            pass
        time.sleep(2)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--log", type=Path, required=True, help="the guest's serial console log")
    ap.add_argument("--boot", type=int, required=True)
    ap.add_argument("--qemu-pid", type=int)
    ap.add_argument("--node-port", type=int, required=True)
    ap.add_argument("--control-port", type=int, required=True)
    ap.add_argument("--state", type=Path, required=True, help="JSON of the first boot's values")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--settings-expected", action="store_true")
    ap.add_argument("--release-attempts", type=int, default=10)
    ap.add_argument("--qemu-started", type=float, help="host time (epoch seconds) QEMU was started at")
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.timeout

    seen: dict[str, float] = {}
    values = wait_for(args.log, "awaiting_host", deadline, args.qemu_pid, seen)
    if values is None:
        print(f"boot {args.boot}: the guest never reported back (see {args.log})")
        return 1
    rlpx = probe(values, args.node_port, timeout_s=60)
    message = f"done rlpx={'ok' if rlpx[0] else 'failed'}"
    if not release_guest(args.control_port, message, args.release_attempts):
        print(f"boot {args.boot}: could not reach the guest's control port; it stops by itself later")
    values = wait_for(args.log, "end", deadline, args.qemu_pid) or parse_lines(read_smoke(args.log))
    previous = json.loads(args.state.read_text()) if args.boot > 1 and args.state.is_file() else None
    try:
        login_qr = login_prompt_qr(args.log.read_text(errors="replace"))
    except ImportError as exc:
        print(f"boot {args.boot}: cannot decode QR codes on the host ({exc}); run 'make venv-test'")
        login_qr = []
    ready_s = qemu_to_ready(values, seen, args.qemu_started)
    checks = evaluate(values, args.boot, rlpx, previous, args.settings_expected, login_qr, ready_s)
    if args.boot == 1:
        args.state.write_text(json.dumps(values, indent=1))
    print(format_checks(checks, args.boot))
    return 0 if passed(checks) else 1


if __name__ == "__main__":
    sys.exit(main())
