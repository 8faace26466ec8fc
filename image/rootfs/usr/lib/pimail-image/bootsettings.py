#!/usr/bin/python3
"""Import the settings an operator dropped on the boot partition (FAT) before booting the Pi.

Runs at every boot (pimail-import-settings.service) with Debian's own python3, stdlib only, before
ssh, Wi-Fi and pimail start. Files it understands, all optional, in /boot/firmware:

``pimail.toml``
    Checked (TOML syntax, then pimail's own validator); if valid it replaces /etc/pimail/pimail.toml
    and is renamed ``pimail.toml.imported``. If not, the running config is kept, the file is renamed
    ``pimail.toml.rejected`` and the reason is written to ``pimail.toml.error.txt``.
``authorized_keys``
    OpenSSH public keys, added to root's ~/.ssh/authorized_keys (the image has no passwords: this
    is how you log in). Renamed ``authorized_keys.imported``.
``wifi.txt``
    ``country=DE``, ``ssid=…``, ``psk=…`` (passphrase, 8–63 characters) and optionally
    ``hidden=yes`` and ``security=auto|wpa2|wpa3``, one per line. Becomes
    /etc/wpa_supplicant/wpa_supplicant-wlan0.conf (root only). ``auto`` (the default) joins
    WPA2-only, WPA2/WPA3 transition and WPA3-only (SAE) networks: WPA2 uses the raw PSK derived
    from the passphrase, SAE needs the passphrase itself (stored hex-encoded), with management
    frame protection optional. ``wpa2`` stores the derived PSK only; ``wpa3`` is SAE only, with
    protected management frames required. A 64-hex-digit ``psk`` is a raw WPA2 key (SAE cannot
    use it). The file is overwritten and deleted so the passphrase does not stay readable on the
    card (a ``wifi.txt.imported`` note replaces it).
``wpa_supplicant.conf``
    A complete wpa_supplicant config (the Raspberry Pi OS habit), installed as is, then deleted.
``bootnodes.txt``
    Discovery bootnodes, one ``enode://<128 hex>@host:port`` a line (``#`` comments). Read after
    ``pimail.toml``: the list replaces ``[node] bootnodes`` in /etc/pimail/pimail.toml and the rest
    of that file stays as it was (checked by parsing both, then by pimail's validator). Renamed
    ``bootnodes.txt.imported``, or ``bootnodes.txt.rejected`` with the reason in
    ``bootnodes.txt.error.txt``.

Every outcome is one log line; a bad file never stops the boot. Exit code 0, or 1 on an
unexpected error (bad arguments, unreadable boot directory).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import datetime
import grp
import hashlib
import logging
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("pimail-import-settings")

MAX_FILE_BYTES = 1024 * 1024  # anything bigger is not a settings file
CONFIG_NAME = "pimail.toml"
KEYS_NAME = "authorized_keys"
WIFI_NAME = "wifi.txt"
WPA_NAME = "wpa_supplicant.conf"
BOOTNODES_NAME = "bootnodes.txt"

# Key types OpenSSH 9 accepts in authorized_keys.
SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
COUNTRY_RE = re.compile(r"^[A-Z]{2}$")
HEX_PSK_RE = re.compile(r"^[0-9a-fA-F]{64}$")
WIFI_SECURITY = ("auto", "wpa2", "wpa3")

# Given a config path, return None if pimail accepts it, else a one-line reason.
Validator = Callable[[Path], "str | None"]


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What happened to one file: ``imported``, ``rejected`` or ``absent``."""

    name: str
    status: str
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Targets:
    """Where imported settings go; tests point these into a temporary directory."""

    config: Path = Path("/etc/pimail/pimail.toml")
    authorized_keys: Path = Path("/root/.ssh/authorized_keys")
    wpa_supplicant: Path = Path("/etc/wpa_supplicant/wpa_supplicant-wlan0.conf")
    config_group: str = "pimail"


class Rejected(Exception):
    """A settings file that cannot be used; the message says why, in one line."""


def _read_text(path: Path) -> str:
    data = path.read_bytes()[: MAX_FILE_BYTES + 1]
    if len(data) > MAX_FILE_BYTES:
        raise Rejected(f"larger than {MAX_FILE_BYTES // 1024} KiB")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise Rejected("not UTF-8 text") from None


def _write_atomic(path: Path, text: str, mode: int, gid: int = -1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, mode)  # the umask may have narrowed it
    if gid >= 0:
        os.chown(tmp, 0, gid)
    os.replace(tmp, path)


def _stamp() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# -- pimail.toml ---------------------------------------------------------------------------------


def import_config(boot: Path, targets: Targets, validate: Validator | None) -> Outcome:
    src = boot / CONFIG_NAME
    if not src.is_file():
        return Outcome(CONFIG_NAME, "absent")
    try:
        text = _read_text(src)
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise Rejected(f"not valid TOML: {exc}") from None
        if validate is not None:
            reason = validate(src)
            if reason:
                raise Rejected(reason)
    except Rejected as exc:
        return _reject(src, "the previous settings stay in force", exc)
    return _install_config(src, targets, text, f"installed as {targets.config}")


def _reject(src: Path, kept: str, exc: Rejected) -> Outcome:
    """Leave the running config alone: ``NAME.rejected`` beside ``NAME.error.txt`` saying why."""
    name = src.name
    src.with_name(f"{name}.error.txt").write_text(f"{_stamp()}: {name} was not used, {kept}.\n{exc}\n")
    os.replace(src, src.with_name(f"{name}.rejected"))
    return Outcome(name, "rejected", str(exc))


def _install_config(src: Path, targets: Targets, text: str, detail: str) -> Outcome:
    """Write ``text`` as the node's config and mark ``src`` imported."""
    try:
        gid = grp.getgrnam(targets.config_group).gr_gid
    except KeyError:
        gid = -1
    # 0640 root:pimail: the file may hold the mailserver password.
    _write_atomic(targets.config, text, 0o640, gid)
    os.replace(src, src.with_name(f"{src.name}.imported"))
    src.with_name(f"{src.name}.error.txt").unlink(missing_ok=True)
    return Outcome(src.name, "imported", detail)


# -- authorized_keys -----------------------------------------------------------------------------


def parse_authorized_keys(text: str) -> tuple[list[str], list[str]]:
    """Split into (valid key lines, problems). A valid line has a known key type followed by a
    base64 blob, optionally preceded by options (``from="…"``) and followed by a comment."""
    keys: list[str] = []
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        for i, field in enumerate(fields[:-1]):
            if field in SSH_KEY_TYPES:
                blob = fields[i + 1]
                try:
                    decoded = base64.b64decode(blob, validate=True)
                except (binascii.Error, ValueError):
                    problems.append(f"line {number}: the key after {field} is not base64")
                    break
                # The blob starts with its own type name as an SSH string.
                if decoded[4 : 4 + len(field)] != field.encode():
                    problems.append(f"line {number}: the key data does not match its type {field}")
                    break
                keys.append(line)
                break
        else:
            problems.append(f"line {number}: no OpenSSH public key (ssh-ed25519, ssh-rsa, ecdsa-…) found")
    return keys, problems


def import_authorized_keys(boot: Path, targets: Targets) -> Outcome:
    src = boot / KEYS_NAME
    if not src.is_file():
        return Outcome(KEYS_NAME, "absent")
    try:
        keys, problems = parse_authorized_keys(_read_text(src))
        if not keys:
            raise Rejected("; ".join(problems) or "the file holds no keys")
    except Rejected as exc:
        os.replace(src, boot / f"{KEYS_NAME}.rejected")
        return Outcome(KEYS_NAME, "rejected", str(exc))
    dest = targets.authorized_keys
    existing = dest.read_text().splitlines() if dest.is_file() else []
    added = [k for k in keys if k not in existing]
    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(dest.parent, 0o700)
    _write_atomic(dest, "".join(f"{line}\n" for line in existing + added), 0o600)
    os.replace(src, boot / f"{KEYS_NAME}.imported")
    note = f"{len(added)} key(s) added to {dest}"
    if problems:
        note += f"; skipped {'; '.join(problems)}"
    return Outcome(KEYS_NAME, "imported", note)


# -- Wi-Fi ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class WifiSettings:
    country: str
    ssid: str
    psk: str  # passphrase (8..63 printable ASCII) or 64 hex digits
    hidden: bool = False
    security: str = "auto"  # auto (WPA2 and WPA3-SAE), wpa2 (PSK only), wpa3 (SAE only)


def parse_wifi(text: str) -> WifiSettings:
    """Parse ``key=value`` lines; raise Rejected with the first problem."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key = key.strip().lower()
        if not sep:
            raise Rejected(f"{WIFI_NAME} line {number}: expected key=value")
        if key not in {"country", "ssid", "psk", "hidden", "security"}:
            raise Rejected(
                f"{WIFI_NAME} line {number}: unknown key {key!r} (country, ssid, psk, hidden, security)"
            )
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        values[key] = value
    for required in ("country", "ssid", "psk"):
        if not values.get(required):
            raise Rejected(f"{WIFI_NAME}: {required}= is missing")
    country = values["country"].upper()
    if not COUNTRY_RE.match(country):
        raise Rejected(
            f"{WIFI_NAME}: country must be a two-letter code such as DE or US, not {values['country']!r}"
        )
    ssid = values["ssid"]
    if len(ssid.encode()) > 32:
        raise Rejected(f"{WIFI_NAME}: ssid is longer than 32 bytes")
    psk = values["psk"]
    passphrase_ok = 8 <= len(psk) <= 63 and all(32 <= ord(c) < 127 for c in psk)
    if not HEX_PSK_RE.match(psk) and not passphrase_ok:
        raise Rejected(f"{WIFI_NAME}: psk must be a passphrase of 8 to 63 ASCII characters")
    hidden = values.get("hidden", "no").lower() in {"1", "yes", "true", "on"}
    security = values.get("security", "auto").lower() or "auto"
    if security not in WIFI_SECURITY:
        raise Rejected(f"{WIFI_NAME}: security must be auto, wpa2 or wpa3, not {values['security']!r}")
    if security == "wpa3" and HEX_PSK_RE.match(psk):
        raise Rejected(f"{WIFI_NAME}: security=wpa3 (SAE) needs the passphrase, not a 64-hex-digit key")
    return WifiSettings(country, ssid, psk, hidden, security)


def wpa_supplicant_conf(wifi: WifiSettings) -> str:
    """A wpa_supplicant (2.10) config for one network. The SSID and the SAE password are written
    as hex (wpa_supplicant reads an unquoted string value as hex), so no quoting or escaping can
    go wrong. WPA2 gets the PSK derived from the passphrase; WPA3's SAE needs the passphrase
    itself, so it is stored only when SAE is allowed (``security`` auto or wpa3)."""
    raw_key = bool(HEX_PSK_RE.match(wifi.psk))
    wpa2 = wifi.security in {"auto", "wpa2"}
    sae = wifi.security in {"auto", "wpa3"} and not raw_key
    lines = [
        "# Written by pimail-import-settings from wifi.txt on the boot partition.",
        "ctrl_interface=DIR=/run/wpa_supplicant GROUP=netdev",
        "update_config=0",
        f"country={wifi.country}",
    ]
    if sae:
        lines += ["# SAE: hunting-and-pecking or hash-to-element, whichever the access point offers"]
        lines += ["sae_pwe=2"]
    lines += ["", "network={", f"    ssid={wifi.ssid.encode().hex()}"]
    key_mgmt = []
    if wpa2:
        psk = wifi.psk.lower() if raw_key else _wpa2_psk(wifi.psk, wifi.ssid)
        lines.append(f"    psk={psk}")
        key_mgmt += ["WPA-PSK", "WPA-PSK-SHA256"]
    if sae:
        lines.append(f"    sae_password={wifi.psk.encode().hex()}")
        key_mgmt.append("SAE")
    lines.append(f"    key_mgmt={' '.join(key_mgmt)}")
    # Management frame protection: WPA3 requires it; in transition mode it is used when offered.
    if sae:
        lines.append(f"    ieee80211w={2 if not wpa2 else 1}")
    if wifi.hidden:
        lines.append("    scan_ssid=1")
    lines.append("}")
    return "\n".join(lines) + "\n"


def _wpa2_psk(passphrase: str, ssid: str) -> str:
    return hashlib.pbkdf2_hmac("sha1", passphrase.encode(), ssid.encode(), 4096, 32).hex()


def _consume_secret(src: Path, note: str) -> None:
    """Delete a file holding a secret and leave a note that it was read. The file is overwritten
    in place first: FAT reuses the same clusters, so the passphrase does not stay in free space."""
    src.with_name(f"{src.name}.imported").write_text(f"{_stamp()}: {note}\n")
    with src.open("r+b") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        f.write(b"\0" * size)
        f.flush()
        os.fsync(f.fileno())
    src.unlink()


def import_wifi(boot: Path, targets: Targets) -> list[Outcome]:
    outcomes: list[Outcome] = []
    wpa = boot / WPA_NAME
    if wpa.is_file():
        try:
            text = _read_text(wpa)
            if "network=" not in text:
                raise Rejected("no network={…} block")
        except Rejected as exc:
            os.replace(wpa, boot / f"{WPA_NAME}.rejected")
            outcomes.append(Outcome(WPA_NAME, "rejected", str(exc)))
        else:
            _write_atomic(targets.wpa_supplicant, text, 0o600)
            _consume_secret(wpa, f"installed as {targets.wpa_supplicant} and removed from the card")
            outcomes.append(Outcome(WPA_NAME, "imported", f"installed as {targets.wpa_supplicant}"))
    else:
        outcomes.append(Outcome(WPA_NAME, "absent"))
    src = boot / WIFI_NAME
    if not src.is_file():
        outcomes.append(Outcome(WIFI_NAME, "absent"))
        return outcomes
    try:
        wifi = parse_wifi(_read_text(src))
    except Rejected as exc:
        # Keep the file (the operator fixes a typo) but say why it was not used.
        (boot / f"{WIFI_NAME}.error.txt").write_text(f"{_stamp()}: {exc}\n")
        outcomes.append(Outcome(WIFI_NAME, "rejected", str(exc)))
        return outcomes
    conf = wpa_supplicant_conf(wifi)
    _write_atomic(targets.wpa_supplicant, conf, 0o600)
    _consume_secret(src, f"Wi-Fi {wifi.ssid!r} configured; the passphrase was removed from the card")
    (boot / f"{WIFI_NAME}.error.txt").unlink(missing_ok=True)
    kinds = conf.split("key_mgmt=", 1)[1].split("\n", 1)[0]
    outcomes.append(
        Outcome(WIFI_NAME, "imported", f"network {wifi.ssid!r}, country {wifi.country}, key_mgmt {kinds}")
    )
    return outcomes


# -- bootnodes.txt -------------------------------------------------------------------------------

# enode://<64-byte public key as 128 hex>@host:port[?discport=N]; host an IPv4/IPv6 literal or a name
ENODE_RE = re.compile(
    r"^enode://[0-9a-fA-F]{128}@(?:\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})(?:\?discport=(\d{1,5}))?$"
)
NODE_HEADER_RE = re.compile(r"^\s*\[\s*node\s*\]\s*(?:#.*)?$")
TABLE_HEADER_RE = re.compile(r"^\s*\[")
BOOTNODES_KEY_RE = re.compile(r"^\s*bootnodes\s*=")
TOML_STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def parse_bootnodes(text: str) -> list[str]:
    """The enode URLs of ``bootnodes.txt`` in order, without duplicates; raise Rejected naming the
    first bad line."""
    enodes: list[str] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = ENODE_RE.match(line)
        ports = [int(p) for p in match.groups() if p is not None] if match else []
        if match is None or not all(1 <= p <= 65535 for p in ports):
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise Rejected(f"{BOOTNODES_NAME} line {number}: not an enode URL "
                           f"(enode://<128 hex>@host:port): {shown!r}")
        if line not in enodes:
            enodes.append(line)
    if not enodes:
        raise Rejected(f"{BOOTNODES_NAME} holds no enode URLs")
    return enodes


def _bracket_depth(line: str) -> int:
    """Open minus closed brackets on one TOML line, strings and comments left out."""
    code = TOML_STRING_RE.sub('""', line).split("#", 1)[0]
    return code.count("[") - code.count("]")


def merge_bootnodes(config_text: str, enodes: list[str]) -> str:
    """``config_text`` with ``[node] bootnodes`` set to ``enodes``, every other line kept. Raise
    Rejected if the result does not parse to exactly that change (a config written in a shape this
    simple editor does not know, e.g. dotted ``node.bootnodes`` keys)."""
    try:
        before = tomllib.loads(config_text)
    except tomllib.TOMLDecodeError as exc:
        raise Rejected(f"the installed config is not valid TOML: {exc}") from None
    value = "".join(f'    "{e}",\n' for e in enodes)
    new = [f"# from {BOOTNODES_NAME} on the boot partition, {_stamp()}\n", f"bootnodes = [\n{value}]\n"]
    lines = config_text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    header = next((i for i, line in enumerate(lines) if NODE_HEADER_RE.match(line)), None)
    if header is None:
        lines += ["\n", "[node]\n", *new]
    else:
        i, depth = header + 1, 0
        start: int | None = None
        end: int | None = None
        while i < len(lines):
            line = lines[i]
            if depth == 0 and TABLE_HEADER_RE.match(line):
                break  # the next table
            if depth == 0 and start is None and BOOTNODES_KEY_RE.match(line):
                start = i
            depth = max(0, depth + _bracket_depth(line))
            i += 1
            if start is not None and depth == 0:
                end = i
                break
        if start is None:
            lines[header + 1 : header + 1] = new
        else:
            if start > header + 1 and lines[start - 1].startswith(f"# from {BOOTNODES_NAME} "):
                start -= 1  # our own note of an earlier import
            lines[start : end if end is not None else i] = new
    merged = "".join(lines)
    expected = dict(before)
    expected["node"] = {**before.get("node", {}), "bootnodes": enodes}
    try:
        after = tomllib.loads(merged)
    except tomllib.TOMLDecodeError:
        after = None
    if after != expected:
        raise Rejected("could not add the bootnodes to the installed config safely; "
                       "put them into pimail.toml as [node] bootnodes = [...] instead")
    return merged


def import_bootnodes(boot: Path, targets: Targets, validate: Validator | None) -> Outcome:
    src = boot / BOOTNODES_NAME
    if not src.is_file():
        return Outcome(BOOTNODES_NAME, "absent")
    check = targets.config.with_name(f".{targets.config.name}.bootnodes-check")
    try:
        enodes = parse_bootnodes(_read_text(src))
        current = targets.config.read_text(encoding="utf-8") if targets.config.is_file() else ""
        merged = merge_bootnodes(current, enodes)
        if validate is not None:
            _write_atomic(check, merged, 0o600)
            try:
                reason = validate(check)
            finally:
                check.unlink(missing_ok=True)
            if reason:
                raise Rejected(reason.replace(str(check), f"{targets.config.name} with {BOOTNODES_NAME}"))
    except Rejected as exc:
        return _reject(src, "the previous bootnodes stay in force", exc)
    return _install_config(src, targets, merged, f"{len(enodes)} bootnode(s) in {targets.config}")


# -- all of it -----------------------------------------------------------------------------------


def import_all(boot: Path, targets: Targets, validate: Validator | None) -> list[Outcome]:
    """Import every known file; one failing file does not stop the others."""
    outcomes: list[Outcome] = []
    steps: list[tuple[str, Callable[[], list[Outcome]]]] = [
        (CONFIG_NAME, lambda: [import_config(boot, targets, validate)]),
        (KEYS_NAME, lambda: [import_authorized_keys(boot, targets)]),
        (WIFI_NAME, lambda: import_wifi(boot, targets)),
        (BOOTNODES_NAME, lambda: [import_bootnodes(boot, targets, validate)]),  # after pimail.toml
    ]
    for name, step in steps:
        try:
            outcomes.extend(step())
        except OSError as exc:
            outcomes.append(Outcome(name, "rejected", f"could not import: {exc.strerror or exc}"))
    return outcomes


def pimail_validator(python: Path) -> Validator:
    """Validate a config with pimail's own loader, in the app's venv."""
    snippet = (
        "import sys, pathlib\n"
        "from pimail.configfile import load_config\n"
        "try:\n"
        "    load_config(pathlib.Path(sys.argv[1]))\n"
        "except Exception as exc:\n"
        "    print(exc, file=sys.stderr); sys.exit(2)\n"
    )

    def validate(path: Path) -> str | None:
        try:
            proc = subprocess.run(
                [str(python), "-c", snippet, str(path)], capture_output=True, text=True, timeout=120
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("cannot run pimail's config check (%s); checked the TOML syntax only", exc)
            return None
        if proc.returncode == 0:
            return None
        lines = proc.stderr.strip().splitlines()
        return lines[-1] if lines else f"pimail's config check failed (exit {proc.returncode})"

    return validate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Import settings dropped on the boot partition.")
    parser.add_argument("--boot", type=Path, default=Path("/boot/firmware"))
    parser.add_argument("--pimail-python", type=Path, default=Path("/opt/pimail/venv/bin/python"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if not args.boot.is_dir():
        log.error("boot partition %s is not mounted; nothing imported", args.boot)
        return 1
    validate = pimail_validator(args.pimail_python) if args.pimail_python.exists() else None
    for outcome in import_all(args.boot, Targets(), validate):
        if outcome.status == "imported":
            log.info("%s: imported (%s)", outcome.name, outcome.message)
        elif outcome.status == "rejected":
            log.warning("%s: NOT imported: %s", outcome.name, outcome.message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
