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

# The archive is size-capped out of the box: half of the filesystem it is on (of a 32 GB card with a
# 28 GB root filesystem, 14 GB), and min_free_disk on top of that.
DEFAULT_MAX_BYTES = "50%"


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
    # discovery (discv4) and the dial scheduler
    discovery: bool | str = "auto"  # true | false | "auto" (on when bootnodes or a node database exist)
    bootnodes: list[str] = field(default_factory=list)  # enode URLs
    discovery_listen: str = ""  # UDP host:port; "" = the listen host and TCP port
    netrestrict: list[str] = field(default_factory=list)  # CIDRs; never talk to addresses outside
    dial_share: float = 0.33  # share of max_peers we dial ourselves (geth DialRatio 3)
    reserved_slots: int = 5  # slots only inbound LAN, paired or trusted peers may take
    useless_retry_s: float = 3600.0  # a peer without shh/6 or waku is not redialled for this long
    dial_interval_s: float = 1.0  # how often the dial scheduler looks for work


@dataclass
class DiscoveryConfig:
    """[discovery] — discv4 timings and limits (the on/off switch and bootnodes live in [node])."""

    request_timeout_s: float = 0.5  # geth respTimeout
    bond_expiration_s: float = 12 * 3600.0  # discv4.md endpoint proof lifetime
    bond_wait_s: float = 0.5  # after bonding, how long to wait for the remote's Ping back
    lookup_interval_s: float = 1.0  # self/aimed/random lookups while they find more (then backoff)
    table_target: int = 200  # random lookups at lookup_interval_s until this many nodes answered
    refresh_interval_s: float = 300.0  # self + random lookup; also the longest backoff
    revalidate_interval_s: float = 10.0  # geth revalidateInterval: ping one entry
    persist_interval_s: float = 60.0  # write answering nodes to the node database
    packets_per_s: float = 40.0  # per source address, beyond which packets are dropped unread
    packet_burst: int = 80
    max_addresses: int = 4096  # rate-limit and bonding state is kept for this many addresses
    external_ip_votes: int = 3  # Pongs from distinct nodes that must agree on our address


@dataclass
class WhisperConfig:
    """[whisper] — shh/6, and the envelope relay both protocols share (PoW, sizes, pool, timers)."""

    enabled: bool = True  # offer shh/6 (refused together with [waku] enabled = false)

    # What we require of received envelopes. status-go forces its nodes to 0.000002 and Status phones
    # seal big payloads at 0.000002; a home mailserver must not drop (or disconnect) its own phones.
    min_pow: float = 0.000002
    pow_formula: str = "either"  # either | legacy | current
    max_message_size: int = 1024 * 1024  # geth DefaultMaxMessageSize
    # Envelopes live here only until they expire (Status: 10–50 s). The budget is bytes of RAM, each
    # envelope counted as its raw size + ~0.5 KB (pimail.relay.pool.footprint, measured): 4 MiB hold
    # ~5,000 envelopes of 300 B, ~2,700 of 1 KB (55/s for a 50 s lifetime). Past it the earliest
    # expiry goes first: it is still archived, only not relayed to peers that connect later.
    pool_max_bytes: int = 4 * 1024 * 1024
    known_per_peer: int = 50_000
    # Relay packets are built for a peer only while fewer than this many bytes wait in its write
    # buffer (the rest stays in its outbox for the next cycle): 20 peers that read slowly then hold
    # ~5 MB of relayed data, not 20 x write_buffer_bytes (docs/PERFORMANCE.md, "Memory").
    relay_backlog_bytes: int = 256 * 1024
    forward_interval_s: float = 0.3  # geth transmissionCycle
    expiry_sweep_s: float = 1.0  # geth expirationCycle
    future_tolerance_s: int = 10  # geth DefaultSyncAllowance
    rate_limit_packets_per_s: float = 50.0  # per peer, Messages packets
    rate_limit_tolerance: int = 100  # packets over the limit before disconnect
    confirmations: bool = True


@dataclass
class WakuConfig:
    """[waku] — waku/1 and waku/0 beside shh/6 on the same listener; the relay settings are [whisper]'s."""

    enabled: bool = True  # offer waku/1 and waku/0
    waku0: bool = True  # also offer waku/0 (older Status clients)
    confirmations: bool = True  # send Message Response + Batch Ack once the archive has the envelopes
    # ours: advertised in Status (the peer-ID limit) and enforced on what a peer sends us
    rate_limit_packets_per_s: float = 50.0  # Messages packets per peer per second
    rate_limit_tolerance: int = 100  # packets over the limit before disconnect
    rate_limit_bytes_per_s: int = 0  # Messages bytes per peer per second (waku/1 key 6); 0 = none


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
    # A group under 256 KB is acked from a small append-only log (fsync'd with "full") and reaches the
    # SQLite index behind it, in one batch every index_interval_s (or when the log of log_max_bytes is
    # full): a quiet node then writes a few times its envelope bytes instead of ~9 pages per commit,
    # and each page of the topic index's current bucket is rewritten once per batch, not per group.
    # index_interval_s = 0: every group straight into SQLite.
    index_interval_s: float = 120.0
    log_max_bytes: str = "3MB"
    max_age: str = "30d"
    max_count: int = 0
    # a size ("8GB"), a share of the filesystem the SQLite archive is on ("50%"), or "0" = no cap
    max_bytes: str = DEFAULT_MAX_BYTES
    min_free_disk: str = "256MB"
    prune_interval_s: float = 60.0
    clock_trust: str = "auto"  # auto | always | synced
    # SQLite: the full check (every row, then quick_check) in the background after each start
    check_after_start: bool = True


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
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    whisper: WhisperConfig = field(default_factory=WhisperConfig)
    waku: WakuConfig = field(default_factory=WakuConfig)
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


def parse_share(text: str | int) -> float | None:
    """``"50%"`` → 0.5 (a share of something, 0 < share ≤ 100 %); None when ``text`` is not a
    percentage; ValueError for a percentage out of range."""
    if not isinstance(text, str) or not text.strip().endswith("%"):
        return None
    number = text.strip()[:-1].strip()
    try:
        share = float(number)
    except ValueError:
        raise ValueError(f"expected a share such as \"50%\", got {text!r}") from None
    if not 0 < share <= 100:
        raise ValueError(f"a share must be above 0% and at most 100%, got {text!r}")
    return share / 100


def parse_size(text: str | int) -> int:
    """``"8GB"`` → 8_000_000_000 bytes. SI units (kB, MB, GB, TB = powers of 1000) and binary ones
    (KiB, MiB, GiB, TiB); a bare number is bytes; ``0`` means "no limit" where a limit is meant."""
    return _parse_amount(text, _SIZE_UNITS, "size", ("8GB", "\"512MB\" or \"8GB\""))


def parse_duration(text: str | int) -> int:
    """``"30d"`` → seconds. Units s, m, h, d, w; a bare number is seconds; ``0`` means "no limit"."""
    return _parse_amount(text, _DURATION_UNITS, "duration", ("30d", "\"12h\" or \"30d\""))


def _parse_amount(text: str | int, units: dict[str, int], what: str, examples: tuple[str, str]) -> int:
    """A whole number of base units from ``"<number><unit>"`` or an int; ValueError saying why not."""
    if isinstance(text, bool):
        raise ValueError(f"expected a {what} such as \"{examples[0]}\", got a boolean")
    if isinstance(text, int):
        if text < 0:
            raise ValueError(f"{what} must not be negative (got {text})")
        return text
    m = _NUMBER_UNIT_RE.match(text)
    if not m or m.group(2).lower() not in units:
        raise ValueError(f"expected a {what} such as {examples[1]}, got {text!r}")
    return int(float(m.group(1)) * units[m.group(2).lower()])


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


def is_ip_literal(host: str) -> bool:
    """True for an IPv4 or IPv6 address written out (not a host name)."""
    import ipaddress

    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True
