"""``pimail pair``: open the running node's pairing window (control socket), or list paired phones."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from pimail.appliance import control
from pimail.appliance.pairing import PairingStore
from pimail.cli.enode import add_common_options, load_config
from pimail.cli.run import load_readonly
from pimail.configfile import refuse_file_as_data_dir
from pimail.errors import RuntimeFailure, UserError

WAIT_POLL_S = 1.0


def register(sub: Any) -> None:
    p = sub.add_parser(
        "pair",
        help="let the next new phone that asks for history become an allowed client",
        description="Open the running node's pairing window: the first new phone that connects and "
        "requests history is added to the allowed clients and remembered. Once any phone is paired, "
        "phones that are not paired (or in [mailserver] allowed_clients) get no history.",
    )
    add_common_options(p)
    p.add_argument(
        "--minutes", type=float, help="how long the window stays open (default [status] pairing_minutes)"
    )
    p.add_argument("--wait", action="store_true", help="wait for the window to close and print the result")
    action = p.add_mutually_exclusive_group()
    action.add_argument("--cancel", action="store_true", help="close an open pairing window")
    action.add_argument("--status", action="store_true", help="show the pairing state of the running node")
    action.add_argument("--list", action="store_true", help="list paired phones (reads the data directory)")
    action.add_argument(
        "--forget", metavar="CLIENT", help="unpair a phone (its key, fingerprint or first 8+ hex digits)"
    )
    p.set_defaults(func=run)


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _describe(state: dict[str, Any]) -> list[str]:
    lines = []
    if state.get("window_open"):
        lines.append(
            f"pairing window open until {_utc(float(state['window_until']))} "
            f"({int(state.get('window_remaining_s') or 0)} s left)"
        )
    else:
        lines.append("pairing window closed")
    result = state.get("last_result")
    if isinstance(result, dict):
        if result.get("outcome") == "paired":
            lines.append(f"last result: paired {result.get('fingerprint')} at {_utc(float(result['at']))}")
        else:
            lines.append(f"last result: window {result.get('outcome')} at {_utc(float(result['at']))}")
    mode = state.get("mode")
    clients = state.get("paired_clients") or []
    configured = int(state.get("configured_clients") or 0)
    if mode == "open":
        lines.append("access: open (no allowed or paired clients: any phone gets history)")
    else:
        lines.append(f"access: {len(clients)} paired + {configured} configured client(s) only")
    return lines


def run(args: argparse.Namespace) -> int:
    config = load_readonly(args).config if args.list or args.status else load_config(args)
    data_dir = Path(config.node.data_dir)
    if args.list:
        refuse_file_as_data_dir(data_dir)
        try:
            clients = PairingStore(data_dir).load()
        except ValueError as exc:
            raise RuntimeFailure(str(exc)) from None
        if not clients:
            print(f"no paired phones in {data_dir}")
        for client in clients:
            print(f"{client.fingerprint}  {client.pubkey.hex()}  paired {_utc(client.paired_at)}")
        return 0
    sock = control.find_socket(data_dir)
    if sock is None:
        refuse_file_as_data_dir(data_dir)  # the likelier mistake than a stopped node
        raise RuntimeFailure(
            f"no running pimail found (no control socket in {data_dir} or /run/pimail); start it with "
            "`pimail run` or `systemctl start pimail`"
        )
    if args.status:
        for line in _describe(control.call(sock, "pair.status")):
            print(line)
        return 0
    if args.forget is not None:
        state = control.call(sock, "pair.forget", {"client": args.forget})
        print(f"forgot {', '.join(state.get('forgotten') or [])}")
        print(_describe(state)[-1])
        return 0
    if args.cancel:
        for line in _describe(control.call(sock, "pair.cancel")):
            print(line)
        return 0
    minutes = args.minutes if args.minutes is not None else config.status.pairing_minutes
    if minutes <= 0:
        raise UserError("--minutes must be positive")
    state = control.call(sock, "pair.start", {"minutes": minutes})
    print(
        f"pairing open for {minutes:g} min (until {_utc(float(state['window_until']))}). In Status, add "
        "this mailserver (pimail enode --qr --with-password) and fetch history: the first new phone "
        "that asks is paired."
    )
    if not args.wait:
        return 0
    deadline = time.monotonic() + minutes * 60 + 10
    while time.monotonic() < deadline:
        time.sleep(WAIT_POLL_S)
        state = control.call(sock, "pair.status")
        if not state.get("window_open"):
            break
    for line in _describe(state)[1:]:
        print(line)
    result = state.get("last_result") or {}
    return 0 if result.get("outcome") == "paired" else 1
