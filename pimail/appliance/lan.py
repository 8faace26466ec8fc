"""Which address phones should dial: the configured public host, else the primary LAN address.

Finding the LAN address sends no traffic: ``connect()`` on a UDP socket only asks the kernel to pick
a route and a source address; nothing goes on the wire until something is sent, and we never send.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from pimail.config import is_ip_literal
from pimail.config import parse_listen as config_parse_listen
from pimail.crypto.keys import Enode
from pimail.errors import UserError

log = logging.getLogger(__name__)

PROC_ROUTE = Path("/proc/net/route")
# Destinations used only to let the kernel choose a source address (never sent to): one in each
# private range, then a documentation address for hosts whose only route is a public default.
_PROBE_DESTINATIONS = ("10.255.255.255", "172.31.255.255", "192.168.255.255", "192.0.2.1")
_LAN_ONLY_SUFFIXES = (".local", ".lan", ".home", ".home.arpa", ".internal", ".localdomain")
_UNUSABLE = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class AdvertisedAddress:
    """The host/port a phone should dial, and why we chose the host."""

    host: str
    port: int
    source: str  # "--host", "public_host", "listen", "lan", "fallback" (wildcard, no LAN address)
    lan_only: bool  # a private/link-local/loopback address or a .local-style name

    @property
    def loopback(self) -> bool:
        return _is_loopback(self.host)


def reachability_warning(address: AdvertisedAddress) -> str | None:
    """One line saying who can dial ``address`` when phones elsewhere cannot, or None."""
    if address.source == "fallback":
        return (
            f"no LAN address found (no IPv4 route), so the enode names {address.host}: only programs on "
            "this machine can reach it; set [node] public_host (or pass --host) to the address phones dial"
        )
    if address.loopback:
        return (
            f"{address.host} is a loopback address (the node listens only there): only programs on this "
            "machine can reach it; listen on 0.0.0.0 or the LAN address for phones"
        )
    if not address.lan_only:
        return None
    return (
        f"{address.host} is a private address: only phones on this network can reach it. For phones "
        "elsewhere set [node] public_host (or --host) to a public name or address and forward TCP port "
        f"{address.port} to this node."
    )


def parse_listen(listen: str) -> tuple[str, int]:
    """``"0.0.0.0:30303"`` / ``"[::]:30303"`` → (host, port); raise UserError on bad input."""
    try:
        return config_parse_listen(listen)
    except ValueError as exc:
        raise UserError(str(exc)) from None


def is_lan_only(host: str) -> bool:
    """True when phones outside the local network cannot reach ``host``."""
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        name = host.lower().rstrip(".")
        return "." not in name or name.endswith(_LAN_ONLY_SUFFIXES)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return bool(
        addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_unspecified
        or (isinstance(addr, ipaddress.IPv4Address) and addr in ipaddress.ip_network("100.64.0.0/10"))
    )


def default_gateways(route_file: Path = PROC_ROUTE) -> list[str]:
    """IPv4 gateways of the default routes in ``/proc/net/route``, lowest metric first."""
    try:
        lines = route_file.read_text().splitlines()[1:]
    except OSError:
        return []
    found: list[tuple[int, str]] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 8:
            continue
        try:
            dest, gateway, flags = int(fields[1], 16), int(fields[2], 16), int(fields[3], 16)
            metric, mask = int(fields[6]), int(fields[7], 16)
        except ValueError:
            continue
        route_up, route_gateway = 0x1, 0x2  # RTF_UP, RTF_GATEWAY
        if dest == 0 and mask == 0 and flags & route_up and flags & route_gateway and gateway:
            # /proc/net/route prints addresses in host byte order (little-endian on the Pi).
            found.append((metric, socket.inet_ntoa(struct.pack("<I", gateway))))
    return [gw for _, gw in sorted(found)]


def _source_address_towards(destination: str) -> str | None:
    """The local address the kernel would use to reach ``destination`` (sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect((destination, 9))  # UDP connect: route lookup only, no packet
            addr: str = sock.getsockname()[0]
    except OSError:
        return None
    if addr in _UNUSABLE or addr.startswith("127."):
        return None
    return addr


def primary_lan_address(route_file: Path = PROC_ROUTE) -> str | None:
    """The node's primary IPv4 address: the one that reaches the default gateway, else any routed one."""
    for destination in (*default_gateways(route_file), *_PROBE_DESTINATIONS):
        addr = _source_address_towards(destination)
        if addr:
            return addr
    return None


def advertised_address(
    listen: str, public_host: str = "", host_override: str | None = None, route_file: Path = PROC_ROUTE
) -> AdvertisedAddress:
    """Choose the host/port for the enode we hand to phones.

    Order: ``--host`` (taken as given, even a loopback address, since the operator asked for it),
    then ``[node] public_host``, then the host the node listens on if it is a specific address (a
    loopback one too: nothing else reaches that node), then for a wildcard the primary LAN address,
    and when there is none the wildcard's loopback address (``source == "fallback"``; the daemon
    and ``pimail enode`` agree, and ``reachability_warning`` says what it means). Never 0.0.0.0.
    """
    listen_host, port = parse_listen(listen)
    if port == 0:
        raise UserError(f"listen address {listen!r} has port 0; phones need a fixed port")
    if host_override:
        host, source = host_override.strip(), "--host"
    elif public_host.strip():
        host, source = public_host.strip(), "public_host"
    elif listen_host not in _UNUSABLE:
        host, source = listen_host, "listen"
    else:
        detected = primary_lan_address(route_file)
        if detected is None:
            host, source = ("::1" if ":" in listen_host else "127.0.0.1"), "fallback"
        else:
            host, source = detected, "lan"
    host = host.strip("[]")
    if host in _UNUSABLE:
        raise UserError(f"{host or 'an empty host'} is not an address a phone can dial; pass --host")
    if not is_ip_literal(host) and not _HOSTNAME_RE.match(host):
        raise UserError(f"{source} {host[:60]!r} is neither an IP address nor a host name")
    return AdvertisedAddress(host, port, source, is_lan_only(host))


_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME_RE = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*\.?$")  # RFC 1123 host name



def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def enode_for(public: bytes, address: AdvertisedAddress, password: str | None = None) -> Enode:
    """The node's enode at ``address`` (``password`` carried for Status' ``:password@`` form)."""
    return Enode(public, address.host, address.port, password or None)
