"""``pimail archive migrate``: copy the archive into another one (SQLite → PostgreSQL for a fleet).

The copy, its checkpoint and the verification are ``pimail.archive.migrate``; this is the command:
its options, the progress lines and the report.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pimail import configfile
from pimail.archive.base import MAX_QUERY_LIMIT, ArchiveError
from pimail.archive.migrate import (
    DEFAULT_BATCH,
    PROGRESS_EVERY_S,
    Checkpoint,
    CopyResult,
    VerifyResult,
    copy_archive,
    describe_endpoint,
    open_endpoint,
    verify_copy,
)
from pimail.cli import plural
from pimail.errors import RuntimeFailure, UserError

log = logging.getLogger("pimail.archive.migrate")  # the name its journal lines always had


def register_action(actions: Any, common: argparse.ArgumentParser) -> None:
    """Add ``pimail archive migrate`` (called by pimail.cli.archive)."""
    p: argparse.ArgumentParser = actions.add_parser(
        "migrate",
        parents=[common],
        help="copy the archive into PostgreSQL (resumable, verified by counts and hashes)",
        description="Copy an archive into another one, usually the node's SQLite file into a "
        "PostgreSQL database shared by a fleet. Resumable: a checkpoint file records the last copied "
        "envelope, and running the same command again continues from there. Afterwards both archives "
        "are compared envelope by envelope (counts and hashes). Stop the node first, or run the "
        "command again after it stops to pick up what arrived meanwhile.",
    )
    p.add_argument("--to", required=True, metavar="URL",
                   help="destination: postgresql://… (or a SQLite path)")
    p.add_argument("--from", dest="source", metavar="PATH",
                   help="source SQLite archive file or data dir (default: <data dir>/archive.sqlite)")
    p.add_argument("--schema", default="pimail", help="PostgreSQL schema of the destination (default pimail)")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                   help="checkpoint file (default: <data dir>/migrate-<destination id>.json)")
    p.add_argument("--restart", action="store_true",
                   help="ignore an existing checkpoint, copy from the start")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   metavar="N", help=f"envelopes per page (1..{MAX_QUERY_LIMIT}, default {DEFAULT_BATCH})")
    p.add_argument("--no-verify", action="store_true", help="skip the envelope-by-envelope comparison")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data_dir = Path(configfile.load_node_config(args.config, args.data_dir).node.data_dir)
    if not 1 <= args.batch <= MAX_QUERY_LIMIT:
        raise UserError(f"--batch must be 1..{MAX_QUERY_LIMIT}")
    source_spec = args.source or str(data_dir)
    dest_spec: str = args.to
    source_id = describe_endpoint(source_spec if not Path(source_spec).is_dir()
                                  else str(Path(source_spec) / "archive.sqlite"))
    dest_id = describe_endpoint(dest_spec, args.schema)
    if source_id == dest_id:
        raise UserError("the source and the destination are the same archive")
    cp_path: Path = args.checkpoint or (
        data_dir / f"migrate-{hashlib.sha256(dest_id.encode()).hexdigest()[:12]}.json"
    )
    if args.restart:
        checkpoint = Checkpoint(source_id, dest_id)
    else:
        checkpoint = Checkpoint.load(cp_path, source_id, dest_id)
    try:
        cp_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create {cp_path.parent}: {exc.strerror}") from None
    source = open_endpoint(source_spec, schema=args.schema, must_exist=True)
    dest = open_endpoint(dest_spec, schema=args.schema, must_exist=False)

    copying = False

    async def main() -> tuple[CopyResult, VerifyResult | None]:
        nonlocal copying
        await source.open()
        try:
            await dest.open()
            try:
                last_report = time.monotonic()

                def progress(total: int) -> None:
                    nonlocal last_report
                    if time.monotonic() - last_report >= PROGRESS_EVERY_S:
                        last_report = time.monotonic()
                        log.info("migrate: %d envelopes copied", total)

                copying = True
                if checkpoint.cursor:
                    log.info("migrate: resuming after %d envelopes (checkpoint %s)",
                             checkpoint.copied, cp_path)
                copied = await copy_archive(source, dest, checkpoint, cp_path, batch=args.batch,
                                            on_progress=progress)
                verified = None if args.no_verify else await verify_copy(source, dest, copied.last_cursor)
                return copied, verified
            finally:
                await dest.close()
        finally:
            await source.close()

    try:
        copied, verified = asyncio.run(main())
    except ArchiveError as exc:
        hint = " (run the same command again to resume)" if copying else ""
        raise RuntimeFailure(f"migrate: {exc}{hint}") from None
    return _report(args, copied, verified, source_id, dest_id, cp_path)


def _report(args: argparse.Namespace, copied: CopyResult, verified: VerifyResult | None,
            source_id: str, dest_id: str, cp_path: Path) -> int:
    data: dict[str, Any] = {
        "source": source_id,
        "destination": dest_id,
        "checkpoint": str(cp_path),
        "copied": copied.copied,
        "copied_total": copied.total,
        "resumed": copied.resumed_from is not None,
        "seconds": round(copied.seconds, 3),
    }
    lines = [
        f"copied {plural(copied.copied, 'envelope')} from {source_id} to {dest_id} in {copied.seconds:.1f} s"
        + (f" (resumed; {copied.total} in all)" if copied.resumed_from is not None else ""),
    ]
    if verified is not None:
        data["verify"] = {**asdict(verified), "ok": verified.ok}
        lines.append(
            f"verified: {verified.source_count} in the source, {verified.matched} identical in the "
            f"destination, {verified.missing} missing, {verified.different} different, "
            f"{verified.bad_hash} with a bad hash, {verified.extra} more from elsewhere"
        )
        lines.append(f"sha256 source {verified.source_digest[:16]}… "
                     f"destination {verified.destination_digest[:16]}…")
        lines += [f"  {e}" for e in verified.examples]
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))
    if verified is not None and not verified.ok:
        raise RuntimeFailure(
            "migrate: the destination does not match the source (see above); run again with --restart "
            "(already copied envelopes are skipped)"
        )
    return 0
