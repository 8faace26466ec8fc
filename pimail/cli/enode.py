"""``pimail enode``: print this node's enode (the address to give phones), optionally as a QR code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pimail import configfile
from pimail.appliance.lan import AdvertisedAddress, advertised_address, enode_for, reachability_warning
from pimail.config import Config
from pimail.crypto.keys import KeyError_, NodeKey
from pimail.errors import RuntimeFailure, UserError

NODEKEY_FILE = "nodekey"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "enode",
        help="print this node's enode URL (and QR code) for adding it to Status",
        description="Print the enode URL phones should use to reach this node. The node key is "
        "created in the data directory on first use. The host is [node] public_host, else the "
        "primary LAN address (found without sending any traffic).",
    )
    add_common_options(p)
    p.add_argument("--host", help="host or IP to put in the enode (overrides public_host and detection)")
    p.add_argument(
        "--with-password",
        action="store_true",
        help="Status form enode://<key>:<mailserver password>@host:port",
    )
    p.add_argument("--enr", action="store_true",
                   help="print the node's EIP-778 record (enr:...) instead of the enode URL")
    p.add_argument(
        "--qr",
        action="store_true",
        help="also draw the enode as a QR code: black on white with colour codes, which scans on light "
        "and dark terminals alike, also through `ssh pi pimail enode --qr` without -t",
    )
    p.add_argument(
        "--qr-plain",
        action="store_true",
        help="draw the QR code without colour codes (blocks are the light modules: scans on a "
        "dark-background terminal only)",
    )
    p.add_argument("--png", metavar="FILE", type=Path, help="write the QR code as a PNG image")
    p.add_argument("--svg", metavar="FILE", type=Path, help="write the QR code as an SVG image")
    p.set_defaults(func=run)


def add_common_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", type=Path, help="pimail.toml to read")
    p.add_argument("--data-dir", metavar="DIR", type=Path, help="data directory (overrides [node] data_dir)")


def load_config(args: argparse.Namespace) -> Config:
    """The config the daemon would use (``--config``, else ``<data dir>/pimail.toml``, systemd's
    configuration directory, /etc/pimail) with ``--data-dir`` applied."""
    return configfile.load_node_config(getattr(args, "config", None), getattr(args, "data_dir", None))


def load_node_key(data_dir: Path) -> NodeKey:
    configfile.make_data_dir(Path(data_dir))
    try:
        return NodeKey.load_or_create(Path(data_dir) / NODEKEY_FILE)
    except KeyError_ as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot use node key in {data_dir}: {exc.strerror or exc}") from None


def lan_warning(address: AdvertisedAddress) -> str | None:
    """The stderr warning for a host phones outside the LAN cannot reach, or None."""
    warning = reachability_warning(address)
    return f"warning: {warning}" if warning else None


def _enr_text(config: Config, key: NodeKey, host: str, port: int) -> str:
    """The record the daemon signs: the advertised IPv4 address, TCP and discovery UDP ports, and the
    sequence number kept in the node database (1 before the first run with discovery)."""
    import ipaddress

    from pimail.discovery.enr import Record
    from pimail.discovery.nodedb import read_local_seq
    from pimail.node.mesh import discovery_address

    try:
        ip = host if ipaddress.ip_address(host).version == 4 else ""
    except ValueError:
        ip = ""  # a hostname cannot go into a record
    udp = discovery_address(config, port)[1]
    seq = read_local_seq(config.node.data_dir) or 1
    return Record.create(key.private, seq, ip=ip, tcp=port, udp=udp).text()


def run(args: argparse.Namespace) -> int:
    config = load_config(args)
    key = load_node_key(config.node.data_dir)
    address = advertised_address(config.node.listen, config.node.public_host, args.host)
    password = config.mailserver.password if args.with_password else None
    if args.with_password and not password:
        raise UserError("--with-password: [mailserver] password is empty")
    url = enode_for(key.public, address, password).url(with_password=args.with_password)
    if args.enr:
        url = _enr_text(config, key, address.host, address.port)
    warning = lan_warning(address)
    if warning:
        print(warning, file=sys.stderr)
    print(url)
    if args.qr or args.qr_plain or args.png or args.svg:
        from pimail.appliance import qr as qrcodes  # segno (~4 MB): not for `pimail run`, which imports this

        code = qrcodes.make_qr(url)
        if args.qr or args.qr_plain:
            # Whether stdout is a terminal says nothing of the terminal's colours at the far end of
            # an ssh pipe: the coloured form is the one that scans on both.
            sys.stdout.write(qrcodes.render_terminal(code, ansi=not args.qr_plain))
        for path, kind in ((args.png, "png"), (args.svg, "svg")):
            if path is not None:
                qrcodes.save(code, path, kind)
                print(f"wrote {path}", file=sys.stderr)
    sys.stdout.flush()
    return 0
