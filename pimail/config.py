"""The one typed configuration tree. Every limit lives here with its default and unit.

The TOML loader (file, line and one-line reason on bad input) and CLI overrides live in
``pimail.configfile``; the sample with every key documented is ``pimail.toml`` at the repo root.
Each section belongs to one layer; a layer reads only its own section. The value parsers at the end
(sizes, durations, host:port, listen addresses) stand here so every layer reads values one way.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class NodeConfig:
    """[node] — RLPx/devp2p transport."""

    listen: str = "0.0.0.0:30303"
    public_host: str = ""  # host phones should dial; "" = detect the primary LAN address
    data_dir: Path = Path("./var")
    static_peers: list[str] = field(default_factory=list)
    trusted_peers: list[str] = field(default_factory=list)  # their 125/127 are accepted
    max_peers: int = 50
    max_pending_handshakes: int = 16
    handshake_timeout_s: float = 5.0  # geth handshakeTimeout
    ping_interval_s: float = 15.0  # geth pingInterval
    idle_timeout_s: float = 30.0  # geth frameReadTimeout
    max_frame_bytes: int = 16 * 1024 * 1024 - 1  # devp2p frame-size field is 24 bits
    write_buffer_bytes: int = 4 * 1024 * 1024  # per peer, beyond which senders wait
    redial_min_s: float = 1.0
    redial_max_s: float = 60.0


@dataclass
class WhisperConfig:
    """[whisper] — shh/6."""

    # What we require of received envelopes. status-go forces its nodes to 0.000002 and Status phones
    # seal big payloads at 0.000002; a home mailserver must not drop (or disconnect) its own phones.
    min_pow: float = 0.000002
    pow_formula: str = "either"  # either | legacy | current
    max_message_size: int = 1024 * 1024  # geth DefaultMaxMessageSize
    # Envelopes live here only until they expire (Status: 10–50 s). The budget is memory, counted per
    # envelope as ~3 x its raw size + 1.1 KB (pimail.whisper.pool.footprint): 16 MB holds ~8,000
    # Status-sized envelopes, 160/s for their 50 s lifetime. Sized for a 512 MB Pi Zero 2 W.
    pool_max_bytes: int = 16 * 1024 * 1024
    known_per_peer: int = 50_000
    forward_interval_s: float = 0.3  # geth transmissionCycle
    expiry_sweep_s: float = 1.0  # geth expirationCycle
    future_tolerance_s: int = 10  # geth DefaultSyncAllowance
    rate_limit_packets_per_s: float = 50.0  # per peer, Messages packets
    rate_limit_tolerance: int = 100  # packets over the limit before disconnect
    confirmations: bool = True


@dataclass
class ArchiveConfig:
    """[archive] — storage and retention."""

    url: str = ""  # "" = SQLite in <data_dir>/archive.sqlite; "postgresql://…" = fleet backend
    # 1 s groups: a quiet Pi writes about a third as much to its SD card as with 200 ms, and a busy one
    # commits every 10,000 envelopes (bench/archive.py); confirmations wait for the group.
    flush_interval_ms: int = 1000
    flush_max_envelopes: int = 10000
    # full: an ack means the commit is on stable storage (power-loss safe); normal: acks survive a
    # crash of pimail, not a power cut (the last commits before the cut may be rolled back)
    synchronous: str = "full"
    max_age: str = "30d"
    max_count: int = 0
    max_bytes: str = "0"  # e.g. "8GB"; 0 = no cap
    min_free_disk: str = "256MB"
    prune_interval_s: float = 60.0
    clock_trust: str = "auto"  # auto | always | synced


@dataclass
class MailserverConfig:
    """[mailserver] — history requests."""

    enabled: bool = True
    password: str = "status-offline-inbox"  # Status' default mailserver password
    min_request_pow: float = 0.000002  # status-go WhisperMinimumPoW
    allowed_clients: list[str] = field(default_factory=list)  # node pubkeys (hex); empty = open
    min_request_interval_s: float = 1.0  # status-go MailServerRateLimit semantics
    bucket_rate_per_s: float = 1.0
    bucket_burst: int = 10
    max_concurrent_per_peer: int = 2
    sync_from: list[str] = field(default_factory=list)  # sibling mailservers (enode URLs)
    backfill_max_s: int = 7 * 86400


@dataclass
class LedConfig:
    """[leds] — gpiozero BCM pins; 0 disables one LED."""

    enabled: bool = True
    green: int = 17
    amber: int = 27
    red: int = 22
    active_high: bool = True
    pair_button: int = 0  # 0 = no button


@dataclass
class StatusConfig:
    """[status] — control socket, metrics and the LAN status page."""

    metrics: bool = True
    metrics_listen: str = "127.0.0.1:9464"
    page: bool = True
    page_listen: str = "0.0.0.0:8080"
    show_password_on_page: bool = False
    allow_pairing_from_page: bool = False
    pairing_minutes: int = 10


@dataclass
class Config:
    node: NodeConfig = field(default_factory=NodeConfig)
    whisper: WhisperConfig = field(default_factory=WhisperConfig)
    archive: ArchiveConfig = field(default_factory=ArchiveConfig)
    mailserver: MailserverConfig = field(default_factory=MailserverConfig)
    leds: LedConfig = field(default_factory=LedConfig)
    status: StatusConfig = field(default_factory=StatusConfig)


# -- value parsers: the units and addresses operators write (the loader, the archive, the node and the
# appliance all read them the same way)

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_NUMBER_UNIT_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*$")


def parse_size(text: str | int) -> int:
    """``"8GB"`` → 8_000_000_000 bytes. SI units (kB, MB, GB, TB = powers of 1000) and binary ones
    (KiB, MiB, GiB, TiB); a bare number is bytes; ``0`` means "no limit" where a limit is meant."""
    if isinstance(text, bool):
        raise ValueError("expected a size such as \"8GB\", got a boolean")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"size must not be negative (got {text})")
        return text
    m = _NUMBER_UNIT_RE.match(text)
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as \"512MB\" or \"8GB\", got {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_duration(text: str | int) -> int:
    """``"30d"`` → seconds. Units s, m, h, d, w; a bare number is seconds; ``0`` means "no limit"."""
    if isinstance(text, bool):
        raise ValueError("expected a duration such as \"30d\", got a boolean")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"duration must not be negative (got {text})")
        return text
    m = _NUMBER_UNIT_RE.match(text)
    if not m or m.group(2).lower() not in _DURATION_UNITS:
        raise ValueError(f"expected a duration such as \"12h\" or \"30d\", got {text!r}")
    return int(float(m.group(1)) * _DURATION_UNITS[m.group(2).lower()])


def parse_hostport(text: str, *, allow_zero_port: bool = True) -> tuple[str, int]:
    """``"0.0.0.0:30303"`` / ``"[::1]:30303"`` → (host, port)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        sep, port_s = rest[:1], rest[1:]
    else:
        host, sep, port_s = text.rpartition(":")
    if sep != ":" or not host or not port_s:
        raise ValueError(f"expected HOST:PORT such as \"0.0.0.0:30303\", got {text!r}")
    if not port_s.isdigit() or not (0 if allow_zero_port else 1) <= int(port_s) <= 65535:
        raise ValueError(f"port must be a number from {0 if allow_zero_port else 1} to 65535, got {port_s!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not re.match(r"^[A-Za-z0-9.-]+$", host):
            raise ValueError(f"host is neither an IP address nor a hostname: {host!r}") from None
    return host, int(port_s)


def parse_listen(listen: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` → (host, port); raises ValueError with a one-line reason.

    An empty host means every IPv4 address (``"0.0.0.0"``).
    """
    text = listen.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"listen address {listen!r} is not [host]:port")
        port_s = rest[1:]
    else:
        host, sep, port_s = text.rpartition(":")
        if not sep:
            raise ValueError(f"listen address {listen!r} lacks a port (expected host:port)")
    host = host or "0.0.0.0"
    try:
        port = int(port_s)
    except ValueError:
        raise ValueError(f"listen port is not a number: {port_s!r}") from None
    if not 0 <= port < 65536:
        raise ValueError(f"listen port out of range: {port}")
    return host, port
