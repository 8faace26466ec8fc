#!/usr/bin/python3
"""Keep the box's mDNS name: ``pimail.local`` while no other box on the LAN has it, otherwise a
stable name of its own, ``pimail-<4 hex>.local``, instead of avahi's ``pimail-2``.

When avahi-daemon meets another host with its name, it renames itself to ``<name>-2``; which box
gets the ``-2`` depends on who came up first, so the names move between boxes from one power cut
to the next. Run every minute (pimail-mdns-name.timer) with Debian's python3, stdlib only, this
asks avahi (D-Bus, through busctl) which name it uses. If that is not the system's host name:

* another host answers for ``<hostname>.local`` (avahi resolves it to an address that is not one
  of ours): the box takes ``<hostname>-<suffix>`` for good (``hostnamectl``, /etc/hosts, avahi).
  The suffix is the last four hex digits of the board's serial number (the Pi firmware puts it in
  the device tree; ``cat /sys/firmware/devicetree/base/serial-number``), or, without one, four
  hex digits derived from the machine-id.
* nobody else answers (avahi's known habit of conflicting with its own stale records after a
  network change): avahi is told to take the host name back.

Exit code 0, also when avahi is not running (one log line); 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import ipaddress
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

log = logging.getLogger("pimail-mdns-name")

AVAHI = ["org.freedesktop.Avahi", "/", "org.freedesktop.Avahi.Server"]
AVAHI_RUNNING = 2  # AvahiServerState: 1 registering, 2 running, 3 collision
SUFFIX_RE = re.compile(r"^[0-9a-f]{4}$")
LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

# busctl's argument list -> its stdout, or an OSError / CalledProcessError
Runner = Callable[[Sequence[str]], str]


def suffix_from_serial(serial: str) -> str | None:
    """The last four hex digits of a board serial number (device tree ``serial-number``: 16 hex
    digits and a NUL), or None when there is no usable serial."""
    text = serial.strip("\0 \n").lower()
    if len(text) < 4 or not all(c in "0123456789abcdef" for c in text) or int(text, 16) == 0:
        return None
    return text[-4:]


def suffix_from_machine_id(machine_id: str) -> str | None:
    """Four hex digits derived from the machine-id (hashed, so the ID itself is not published)."""
    text = machine_id.strip().lower()
    if not re.fullmatch(r"[0-9a-f]{32}", text):
        return None
    return hashlib.sha256(b"pimail-mdns-name:" + text.encode()).hexdigest()[:4]


def derived_name(hostname: str, suffix: str) -> str:
    """``pimail`` + ``3f2a`` -> ``pimail-3f2a``; a name that already ends in its suffix stays.
    Longer names are cut so that the label stays within DNS's 63 bytes."""
    if not SUFFIX_RE.match(suffix):
        raise ValueError(f"not a 4-hex-digit suffix: {suffix!r}")
    if hostname.endswith(f"-{suffix}"):
        return hostname
    return f"{hostname[: 63 - 5].rstrip('-')}-{suffix}"


@dataclasses.dataclass(frozen=True)
class Decision:
    """What to do: ``keep`` (nothing), ``reclaim`` (tell avahi to use the host name again) or
    ``rename`` (the box takes ``name`` for good)."""

    action: str
    name: str
    reason: str


def decide(hostname: str, avahi_name: str, claimed_by: str | None, suffix: str) -> Decision:
    """The pure decision. ``claimed_by``: the address another host answered with for
    ``<hostname>.local`` (None: nobody else has it)."""
    if avahi_name == hostname:
        return Decision("keep", hostname, f"{hostname}.local is ours")
    if claimed_by is None:
        return Decision(
            "reclaim",
            hostname,
            f"avahi calls us {avahi_name}.local but no other host answers for {hostname}.local",
        )
    wanted = derived_name(hostname, suffix)
    if wanted == hostname:
        # Even the derived name is taken (two boards with the same last four serial digits):
        # leave avahi's own alternative rather than loop.
        reason = f"{hostname}.local is also used by {claimed_by}; keeping {avahi_name}.local"
        return Decision("keep", avahi_name, reason)
    return Decision("rename", wanted, f"{hostname}.local belongs to another host ({claimed_by})")


def hosts_with_name(text: str, old: str, new: str) -> str:
    """/etc/hosts with the 127.0.1.1 line naming ``new`` instead of ``old`` (added if missing)."""
    lines = text.splitlines()
    done = False
    for i, line in enumerate(lines):
        fields = line.split("#", 1)[0].split()
        if fields and fields[0] == "127.0.1.1":
            names = [new if n == old else n for n in fields[1:]]
            if new not in names:
                names.insert(0, new)
            lines[i] = "\t".join(["127.0.1.1", *names])
            done = True
    if not done:
        insert_at = next((i + 1 for i, ln in enumerate(lines) if ln.split()[:1] == ["127.0.0.1"]), 0)
        lines.insert(insert_at, f"127.0.1.1\t{new}")
    return "\n".join(lines) + "\n"


def parse_busctl(out: str) -> list[str | int]:
    """busctl's text reply (``s "pimail-2"``, ``i 2``, ``iisisu 2 0 "pimail.local" 0 "10.0.2.99" 4``)
    -> its values after the signature, strings unquoted."""
    words = shlex.split(out.strip())
    if not words:
        raise ValueError("empty busctl reply")
    signature, values = words[0], words[1:]
    if len(signature) != len(values):
        raise ValueError(f"cannot parse busctl reply {out.strip()!r}")
    return [int(v) if t in "iuynqxt" else v for t, v in zip(signature, values, strict=True)]


class Avahi:
    """The few avahi-daemon D-Bus calls needed, through busctl (no Python D-Bus module needed)."""

    def __init__(self, run: Runner) -> None:
        self.run = run

    def _send(self, method: str, *args: str) -> str:
        # "--": the arguments include negative numbers (-1: any interface / protocol)
        return self.run(["busctl", "--system", "--timeout=15", "call", "--", *AVAHI, method, *args])

    def _call(self, method: str, *args: str) -> list[str | int]:
        return parse_busctl(self._send(method, *args))

    def host_name(self) -> str:
        return str(self._call("GetHostName")[0])

    def state(self) -> int:
        return int(self._call("GetState")[0])

    def set_host_name(self, name: str) -> None:
        self._send("SetHostName", "s", name)  # no reply values

    def resolve(self, fqdn: str) -> str | None:
        """The address some host on the LAN (or avahi's own records) gives for ``fqdn``; None
        when nobody answers (avahi's resolver times out after a few seconds)."""
        try:
            # interface -1 and protocol -1: any; address protocol -1: IPv4 or IPv6; flags 0
            reply = self._call("ResolveHostName", "iisiu", "-1", "-1", fqdn, "-1", "0")
        except subprocess.CalledProcessError:
            return None
        return str(reply[4])


def own_addresses() -> set[str]:
    """This box's IP addresses (``ip -o addr``), normalised."""
    out = subprocess.run(["ip", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found: set[str] = set()
    for line in out.splitlines():
        fields = line.split()
        for i, word in enumerate(fields[:-1]):
            if word in {"inet", "inet6"}:
                found.add(normalise(fields[i + 1].split("/")[0]))
    return found


def normalise(address: str) -> str:
    return str(ipaddress.ip_address(address.split("%")[0]))


def read_suffix(serial_path: Path, machine_id_path: Path) -> str:
    for path, parse in ((serial_path, suffix_from_serial), (machine_id_path, suffix_from_machine_id)):
        try:
            suffix = parse(path.read_text(errors="replace"))
        except OSError:
            continue
        if suffix:
            return suffix
    raise RuntimeError(f"neither {serial_path} nor {machine_id_path} gives a suffix")


def _busctl(args: Sequence[str]) -> str:
    return subprocess.run(list(args), capture_output=True, text=True, check=True).stdout


def apply_rename(name: str, old: str, avahi: Avahi, hosts: Path) -> None:
    subprocess.run(["hostnamectl", "set-hostname", name], check=True, capture_output=True, text=True)
    if hosts.is_file():
        new = hosts_with_name(hosts.read_text(), old, name)
        tmp = hosts.with_name(f".{hosts.name}.tmp")
        tmp.write_text(new)
        os.chmod(tmp, 0o644)
        os.replace(tmp, hosts)
    avahi.set_host_name(name)


def run_once(avahi: Avahi, hostname: str, suffix: str, ours: Callable[[], set[str]], hosts: Path) -> Decision:
    avahi_name = avahi.host_name()
    if avahi_name == hostname:
        return decide(hostname, avahi_name, None, suffix)
    if avahi.state() != AVAHI_RUNNING:
        return Decision("keep", avahi_name, f"avahi is still probing ({avahi_name}.local); looking later")
    answer = avahi.resolve(f"{hostname}.local")
    claimed_by = answer if answer is not None and normalise(answer) not in ours() else None
    decision = decide(hostname, avahi_name, claimed_by, suffix)
    if decision.action == "reclaim":
        avahi.set_host_name(hostname)
    elif decision.action == "rename":
        apply_rename(decision.name, hostname, avahi, hosts)
    return decision


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Keep pimail.local unique on the LAN (see the module text).")
    ap.add_argument("--serial", type=Path, default=Path("/sys/firmware/devicetree/base/serial-number"))
    ap.add_argument("--machine-id", type=Path, default=Path("/etc/machine-id"))
    ap.add_argument("--hosts", type=Path, default=Path("/etc/hosts"))
    ap.add_argument("--print-derived", action="store_true", help="print the name this box would take")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    hostname = socket.gethostname()
    try:
        suffix = read_suffix(args.serial, args.machine_id)
    except RuntimeError as exc:
        log.error("%s", exc)
        return 0
    if args.print_derived:
        print(derived_name(hostname, suffix))
        return 0
    if not LABEL_RE.match(hostname):
        log.info("host name %r is not a plain DNS label; leaving it alone", hostname)
        return 0
    try:
        decision = run_once(Avahi(_busctl), hostname, suffix, own_addresses, args.hosts)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        detail = getattr(exc, "stderr", None) or exc
        log.info("cannot ask avahi-daemon (%s); nothing changed", str(detail).strip())
        return 0
    if decision.action != "keep" or decision.name != hostname:
        log.info("%s: %s -> %s.local", decision.action, decision.reason, decision.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
