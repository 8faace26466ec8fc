"""``pimail sync``: copy a window of history from a sibling mailserver into the local archive."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from pimail import configfile
from pimail.cli import plural, quiet_node_logs
from pimail.crypto.keys import Enode, KeyError_, NodeKey
from pimail.errors import RuntimeFailure, UserError
from pimail.mailserver.sync import BACKFILL_MARGIN_S, Heartbeat, SyncError, SyncResult

DEFAULT_WINDOW_S = 86400


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sync",
        help="copy history from a sibling mailserver into the local archive",
        description="Ask another pimail (or status-go Whisper) mailserver for every envelope it "
        "stored in a time window (codes 123/124) and add the ones missing here. The sibling must "
        "trust this node (its [mailserver] sync_from, [node] static_peers or trusted_peers lists it). "
        "Run it while the pimail service is stopped (it uses the same archive and node key); the "
        "service backfills from [mailserver] sync_from by itself when it starts.",
    )
    p.add_argument("--from", dest="source", required=True, metavar="ENODE", help="the sibling mailserver")
    p.add_argument("--since", type=int, metavar="TS", help="lower bound, Unix seconds (default: when "
                   "this node was last up, else a day ago)")
    p.add_argument("--until", type=int, metavar="TS", help="upper bound, Unix seconds (default: now)")
    p.add_argument("--config", type=Path, metavar="PATH", help="pimail.toml to read")
    p.add_argument("--data-dir", type=Path, metavar="DIR", help="data directory (archive and node key)")
    p.set_defaults(func=run)


async def sync_from(args: argparse.Namespace) -> tuple[SyncResult, int, int]:
    from pimail.archive import open_archive
    from pimail.config import NodeConfig
    from pimail.mailserver.server import create_mailserver
    from pimail.mailserver.sync import SyncClient
    from pimail.node.server import NodeServer
    from pimail.whisper.service import WhisperService

    try:
        enode = Enode.parse(args.source)
    except KeyError_ as exc:
        raise UserError(f"--from: {exc}") from None
    if enode.host is None:
        raise UserError("--from needs host:port")
    config = configfile.load_node_config(args.config, args.data_dir)
    data_dir = Path(config.node.data_dir)
    now = int(time.time())
    upper = now if args.until is None else args.until
    if args.since is not None:
        lower = args.since
    else:
        last = Heartbeat(data_dir).last_up()
        lower = last - BACKFILL_MARGIN_S if last is not None else upper - DEFAULT_WINDOW_S
    if not 0 <= lower <= upper < 2**32:
        raise UserError("--since/--until must be Unix seconds with --since ≤ --until")
    try:
        key = NodeKey.load_or_create(data_dir / "nodekey")
    except (KeyError_, OSError) as exc:
        raise UserError(f"node key in {data_dir}: {exc}") from None
    archive = open_archive(config.archive, data_dir, None)
    await archive.open()
    try:
        mailserver = await create_mailserver(archive, config.mailserver, private_key=key.private)
        whisper = WhisperService(config.whisper, archive=None, clock_trusted=lambda: True,
                                 health=None, trusted={enode.node_id})
        whisper.request_handler = mailserver
        node = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=data_dir, max_peers=4),
                          [whisper])
        await node.start()
        try:
            peer = await node.connect(enode)
            result = await SyncClient(mailserver, archive).sync(peer, lower, upper)
        except SyncError as exc:
            raise RuntimeFailure(f"sync from the sibling failed: {exc}") from None
        except (OSError, ConnectionError, TimeoutError) as exc:
            raise RuntimeFailure(f"cannot reach the sibling: {exc or type(exc).__name__}") from None
        finally:
            await node.stop()
    finally:
        await archive.close()
    return result, lower, upper


def result_line(new: int, received: int, rounds: int, lower: int, upper: int) -> str:
    return (f"synced {lower}..{upper}: {plural(new, 'new envelope')} stored, "
            f"{received - new} already here, {plural(rounds, 'request')}")


def run(args: argparse.Namespace) -> int:
    quiet_node_logs(args)
    result, lower, upper = asyncio.run(sync_from(args))
    print(result_line(result.new, result.received, result.rounds, lower, upper))
    return 0
