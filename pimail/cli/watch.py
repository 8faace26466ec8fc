"""``pimail watch``: connect to a node as a peer and print the messages it relays on one topic."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from pimail.cli import quiet_node_logs
from pimail.envelope import payload as pl
from pimail.envelope.codec import Envelope
from pimail.errors import RuntimeFailure


def register(sub: Any) -> None:
    p = sub.add_parser(
        "watch",
        help="print Whisper or Waku messages relayed on a topic",
        description="Connect to --peer as an ordinary Waku or Whisper peer and print every envelope on "
        "--topic that decrypts with the password's key (including those the peer still holds).",
    )
    p.add_argument("--peer", required=True, metavar="ENODE", help="enode://<key>@host:port to listen through")
    p.add_argument("--topic", required=True, metavar="HEX", help="4-byte topic in hex")
    p.add_argument("--sym-password", required=True, metavar="P", help="password of the symmetric key")
    p.add_argument("--seconds", type=float, default=None, metavar="N",
                   help="stop after N seconds (default: until interrupted)")
    p.add_argument("--json", action="store_true",
                   help="JSON lines: hash, topic, sent, ttl, payload, signer")
    p.add_argument("--protocol", choices=("auto", "waku", "shh"), default="auto",
                   help="waku (waku/1, waku/0) or shh (shh/6); default auto: waku when the peer offers it")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the connection (default 10)")
    p.set_defaults(func=run)


def record(env: Envelope, opened: pl.OpenedMessage) -> dict[str, object]:
    try:
        text: str | None = opened.payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    return {
        "hash": "0x" + env.hash.hex(),
        "topic": "0x" + env.topic.hex(),
        "sent": env.sent,
        "ttl": env.ttl,
        "payload": text if text is not None else "0x" + opened.payload.hex(),
        "signer": "0x04" + opened.signer.hex() if opened.signer else None,
    }


class _Printer:
    def __init__(self, topic: bytes, key: bytes, as_json: bool) -> None:
        self.topic, self.key, self.as_json = topic, key, as_json
        self.seen: set[bytes] = set()
        self.undecryptable = 0

    def on_envelope(self, env: Envelope) -> None:
        if env.topic != self.topic or env.hash in self.seen:
            return
        if len(self.seen) < 1_000_000:
            self.seen.add(env.hash)
        try:
            opened = pl.open_symmetric(self.key, env.data)
        except pl.PayloadError:
            self.undecryptable += 1
            return
        rec = record(env, opened)
        if self.as_json:
            print(json.dumps(rec), flush=True)
        else:
            who = f" from {str(rec['signer'])[:12]}…" if rec["signer"] else ""
            print(f"{rec['sent']} {rec['hash']}{who}: {rec['payload']}", flush=True)


def run(args: argparse.Namespace) -> int:
    from pimail.cli.post import parse_hex
    from pimail.errors import UserError
    from pimail.whisper.client import parse_enode

    enode = parse_enode(args.peer)
    topic = parse_hex(args.topic, "--topic", (4,))
    if args.seconds is not None and args.seconds < 0:
        raise UserError("--seconds must be ≥ 0")
    if args.timeout <= 0:
        raise UserError("--timeout must be > 0")
    quiet_node_logs(args)
    return asyncio.run(_watch(args, enode, topic))


async def _watch(args: argparse.Namespace, enode: Any, topic: bytes) -> int:
    from pimail.whisper.client import client_session, wait_closed_or

    loop = asyncio.get_running_loop()
    key = await loop.run_in_executor(None, pl.key_from_password, args.sym_password)
    async with client_session(enode, timeout=args.timeout, protocol=args.protocol) as s:
        printer = _Printer(topic, key, args.json)
        s.whisper.listeners.append(printer)
        if await wait_closed_or(s.peer, args.seconds):
            raise RuntimeFailure(f"peer disconnected: {s.peer.close_reason}")
    return 0
