"""``pimail history``: fetch stored envelopes from a mailserver (pimail, status-go or go-ethereum)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pimail.cli import plural, quiet_node_logs
from pimail.config import NodeConfig
from pimail.crypto.keys import Enode, KeyError_, NodeKey
from pimail.envelope.codec import Envelope
from pimail.envelope.payload import key_from_password
from pimail.errors import RuntimeFailure, UserError
from pimail.mailserver.client import (
    DEFAULT_QUIET_S,
    DEFAULT_REQUEST_POW,
    DEFAULT_RESPONSE_TIMEOUT_S,
    FORMS,
    HistoryClient,
    HistoryError,
    HistoryOptions,
    HistorySummary,
    client_whisper_config,
    open_with_password,
)

DEFAULT_PASSWORD = "status-offline-inbox"
DEFAULT_WINDOW_S = 86400  # Status clients ask for the last day by default


def register(sub: Any) -> None:
    p = sub.add_parser(
        "history",
        help="fetch stored envelopes from a mailserver",
        description="Connect to a mailserver as a Waku or Whisper peer, ask for the envelopes it stored, "
        "follow its cursors until it is done, and print each envelope once. Works with pimail, "
        "status-go and go-ethereum (wnode) mailservers.",
    )
    p.add_argument("--mailserver", required=True, metavar="ENODE",
                   help="enode://<key>[:password]@host:port of the mailserver")
    p.add_argument("--form", choices=FORMS, default="direct",
                   help="request form: direct MessagesRequest (Status app), envelope with an RLP "
                   "payload (status-go RPC), legacy binary payload (go-ethereum wnode); default direct")
    p.add_argument("--password", help="mailserver password for the envelope forms (default: the one "
                   f"in the enode URL, else {DEFAULT_PASSWORD!r})")
    p.add_argument("--from", dest="lower", type=int, metavar="TS", help="lower bound, Unix seconds "
                   "(default: a day before --to)")
    p.add_argument("--to", dest="upper", type=int, metavar="TS", help="upper bound, Unix seconds "
                   "(default: now)")
    p.add_argument("--topic", action="append", default=[], metavar="HEX",
                   help="4-byte topic in hex; repeat for several (default: every topic)")
    p.add_argument("--limit", type=int, default=1000, metavar="N",
                   help="envelopes per page (1..1000, default 1000)")
    p.add_argument("--sym-password", metavar="P",
                   help="try to decrypt each envelope with the key from this password")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--data-dir", type=Path, metavar="DIR",
                   help="use the node key in DIR/nodekey (default: a throwaway key)")
    p.add_argument("--pow", type=float, default=None,
                   help="PoW to seal request envelopes with (default "
                   f"{DEFAULT_REQUEST_POW['envelope']} for --form envelope, status-go's formula; "
                   f"{DEFAULT_REQUEST_POW['legacy']} for --form legacy, go-ethereum's)")
    p.add_argument("--quiet", type=float, default=DEFAULT_QUIET_S, metavar="S",
                   help="a request is done after this much silence when the server sends no "
                   f"request-complete, as go-ethereum (default {DEFAULT_QUIET_S})")
    p.add_argument("--protocol", choices=("auto", "waku", "shh"), default="auto",
                   help="waku (waku/1, waku/0) or shh (shh/6); default auto: waku when the peer offers it")
    p.add_argument("--timeout", type=float, default=DEFAULT_RESPONSE_TIMEOUT_S, metavar="S",
                   help="seconds to wait for the first answer to each request "
                   f"(default {DEFAULT_RESPONSE_TIMEOUT_S:g})")
    p.set_defaults(func=run)


def parse_topic(text: str) -> bytes:
    from pimail.cli.post import parse_hex

    return parse_hex(text, "--topic", (4,))


def options_from_args(args: argparse.Namespace, enode: Enode, now: int) -> HistoryOptions:
    if not 1 <= args.limit <= 1000:
        raise UserError("--limit must be between 1 and 1000")
    upper = now if args.upper is None else args.upper
    lower = upper - DEFAULT_WINDOW_S if args.lower is None else args.lower
    if lower < 0 or upper < 0 or upper >= 2**32 or lower >= 2**32:
        raise UserError("--from/--to must be Unix seconds")
    if upper < lower:
        raise UserError("--to must not be before --from")
    if (args.pow is not None and args.pow < 0) or args.quiet <= 0 or args.timeout <= 0:
        raise UserError("--pow must be ≥ 0 and --quiet/--timeout > 0")
    return HistoryOptions(
        form=args.form,
        password=args.password or enode.password or DEFAULT_PASSWORD,
        lower=lower,
        upper=upper,
        topics=tuple(parse_topic(t) for t in args.topic),
        limit=args.limit,
        request_pow=args.pow,
        quiet_s=args.quiet,
        response_timeout_s=args.timeout,
    )


def envelope_record(env: Envelope, opened: tuple[bytes, bytes | None] | None) -> dict[str, object]:
    rec: dict[str, object] = {
        "hash": "0x" + env.hash.hex(),
        "topic": "0x" + env.topic.hex(),
        "sent": env.sent,
        "expiry": env.expiry,
        "ttl": env.ttl,
        "size": env.size,
    }
    if opened is not None:
        payload, signer = opened
        rec["payload"] = "0x" + payload.hex()
        with contextlib.suppress(UnicodeDecodeError):
            rec["text"] = payload.decode("utf-8")
        rec["signer"] = "0x04" + signer.hex() if signer else None
    return rec


def _print_record(rec: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rec, separators=(",", ":")), flush=False)
        return
    sent = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(int(str(rec["sent"]))))
    line = f"{rec['hash']}  {rec['topic']}  {sent}Z  ttl={rec['ttl']}  {rec['size']} B"
    if "text" in rec:
        line += f"  {rec['text']!r}"
    elif "payload" in rec:
        line += f"  payload={rec['payload']}"
    print(line)


async def fetch_and_print(args: argparse.Namespace) -> HistorySummary:
    from pimail.node.server import NodeServer
    from pimail.whisper.client import ClientStack

    try:
        enode = Enode.parse(args.mailserver)
    except KeyError_ as exc:
        raise UserError(f"--mailserver: {exc}") from None
    if enode.host is None:
        raise UserError("--mailserver needs host:port")
    opts = options_from_args(args, enode, int(time.time()))
    loop = asyncio.get_running_loop()
    sym_key = None
    if args.sym_password:
        sym_key = await loop.run_in_executor(None, key_from_password, args.sym_password)
    if args.data_dir is not None:
        try:
            key = NodeKey.load_or_create(args.data_dir / "nodekey")
        except (KeyError_, OSError) as exc:
            raise UserError(f"--data-dir: {exc}") from None
    else:
        key = NodeKey.generate()
    summary = HistorySummary()
    with tempfile.TemporaryDirectory(prefix="pimail-history-") as tmp:
        whisper = ClientStack(client_whisper_config(), args.protocol, live=False)
        node = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=Path(tmp), max_peers=4),
                          whisper.capabilities)
        await node.start()
        try:
            client = HistoryClient(key, whisper, node)
            try:
                async for item in client.fetch(enode, opts, summary):
                    opened = open_with_password(item.envelope, sym_key) if sym_key else None
                    _print_record(envelope_record(item.envelope, opened), args.json)
            except HistoryError as exc:
                raise RuntimeFailure(str(exc)) from None
            except (OSError, ConnectionError, TimeoutError) as exc:
                raise RuntimeFailure(f"cannot talk to the mailserver: {exc or type(exc).__name__}") from None
        finally:
            await node.stop()
            await whisper.close()
    return summary


def summary_line(summary: HistorySummary, end: str) -> str:
    return (f"{plural(summary.envelopes, 'envelope')} in {plural(summary.pages, 'page')} "
            f"({plural(summary.duplicates, 'duplicate')} dropped), {end}, {summary.seconds:.1f} s")


def run(args: argparse.Namespace) -> int:
    quiet_node_logs(args)
    summary = asyncio.run(fetch_and_print(args))
    end = "complete" if summary.completed else "ended after a quiet period (no request-complete)"
    if args.json:
        print(json.dumps({
            "summary": True,
            "envelopes": summary.envelopes,
            "duplicates": summary.duplicates,
            "pages": summary.pages,
            "rate_limited": summary.rate_limited,
            "complete": summary.completed,
            "seconds": round(summary.seconds, 3),
        }, separators=(",", ":")))
    else:
        print(summary_line(summary, end), file=sys.stdout)
    sys.stdout.flush()
    return 0
