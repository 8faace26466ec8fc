"""``pimail archive stats|prune|vacuum|check|export FILE|import FILE`` — look after the archive.

Each action opens the archive the node would use (``[archive]`` from the config file, SQLite in
``<data dir>/archive.sqlite`` unless ``url`` is postgresql://), creating it if absent, does one job
and closes it. Stop the daemon first for ``vacuum`` and ``import`` on a busy Pi if you can; all of
them are safe next to a running node (SQLite WAL, one writer at a time).

``migrate`` (copy into PostgreSQL) is its own module, ``pimail.cli.migrate``: its ``register_action`` gets
the archive's sub-parsers and the parent parser holding the shared ``--data-dir/--config/--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from pimail.archive.base import Archive, ArchiveStats, RetentionPolicy
from pimail.cli import migrate, plural
from pimail.config import Config
from pimail.errors import RuntimeFailure, UserError

READ_ONLY_ACTIONS = ("stats", "check", "export")
RECOVER_HINT = ("`pimail archive recover FILE` salvages it into a fresh archive (a running node does "
                "this by itself)")  # these work with a bad config file on disk
Action = Callable[[Archive, argparse.Namespace], Awaitable[int]]


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "archive",
        help="inspect and maintain the envelope archive",
    )
    parser.set_defaults(func=lambda _args: _usage(parser))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", type=Path, default=None, help="pimail.toml to read")
    common.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                        help="data directory (overrides [node] data_dir)")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    actions = parser.add_subparsers(dest="archive_action", metavar="ACTION")

    def add(name: str, help_text: str, action: Action) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = actions.add_parser(name, parents=[common], help=help_text,
                                                        description=help_text)
        p.set_defaults(func=lambda args: run_action(args, action))
        return p

    add("stats", "count, size, oldest/newest, retention settings, free disk", _stats)
    add("prune", "apply the retention policy now", _prune)
    add("vacuum", "give free pages back to the filesystem (incremental, never a full VACUUM)", _vacuum)
    add("check", "verify the archive file (integrity check, schema, counters)", _check)
    add("export", "write every envelope into a compressed bundle with a checksum", _export).add_argument(
        "file", type=Path, metavar="FILE", help="bundle to write (refuses to overwrite)"
    )
    imp = add("import", "verify a bundle and add its valid envelopes (duplicates are skipped)", _import)
    imp.epilog = "Exit codes: 0 imported, 2 bad arguments (no such file), 65 the bundle is damaged."
    imp.add_argument(
        "file", type=Path, metavar="FILE", help="bundle written by `pimail archive export`"
    )
    rec = actions.add_parser(
        "recover", parents=[common], help="salvage every readable envelope of a damaged archive file",
        description="Salvage every readable envelope of a damaged archive FILE into the node's archive "
        "(each one decoded and checked again; duplicates skipped; envelopes older than max_age left "
        "out). FILE is only read; it may also be a WAL kept aside (archive.sqlite-wal.damaged-…). "
        "If FILE is the node's own archive, it is first moved aside to "
        "FILE.damaged-<UTC time> and a fresh archive starts. The node does this by itself when it "
        "finds its archive damaged; this is the same by hand.")
    rec.add_argument("file", type=Path, metavar="FILE",
                     help="the damaged archive (e.g. archive.sqlite.damaged-…)")
    rec.set_defaults(func=_recover)
    migrate.register_action(actions, common)
    parser.description = f"Inspect and maintain the envelope archive ({', '.join(actions.choices)})."


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def load_config(args: argparse.Namespace) -> tuple[Config, Path]:
    """The node's config (config file if there is one, else defaults) and its data dir."""
    from pimail import configfile

    data_dir: Path | None = args.data_dir
    path = configfile.find_config(args.config, data_dir)
    if getattr(args, "archive_action", None) in READ_ONLY_ACTIONS:
        from pimail.cli.run import warn_bad_config

        loaded = configfile.load_config_leniently(path)
        if loaded.problem:
            warn_bad_config(loaded.problem)
    else:
        loaded = configfile.load_config(path)
    config = loaded.config
    if data_dir is not None:
        config.node.data_dir = data_dir
    return config, Path(config.node.data_dir)


def run_action(args: argparse.Namespace, action: Action) -> int:
    """Open the archive, run one action on it, close it."""
    from pimail.archive import open_archive

    config, data_dir = load_config(args)
    from pimail.configfile import make_data_dir

    make_data_dir(data_dir)

    async def main() -> int:
        archive = open_archive(config.archive, data_dir, None)
        await archive.open()
        found = getattr(archive, "wal_damage", None)
        if found is not None:
            print(f"pimail: warning: {found.why}; a copy is kept at {found.kept}: "
                  f"`pimail archive recover {found.kept}` salvages what it holds", file=sys.stderr)
        try:
            return await action(archive, args)
        finally:
            await archive.close()

    return _run_quietly(args, main)


def _run_quietly(args: argparse.Namespace, main: Callable[[], Coroutine[Any, Any, int]]) -> int:
    from pimail.archive.base import ArchiveError
    from pimail.archive.sqlite.salvage import ArchiveDamaged, ArchiveUnreadable, is_corruption

    archive_log = logging.getLogger("pimail.archive")
    level = archive_log.level
    if not getattr(args, "verbose", False):  # the command's own output says what happened
        archive_log.setLevel(logging.WARNING)
    try:
        return asyncio.run(main())
    except ArchiveDamaged as exc:
        if getattr(args, "archive_action", None) == "check":
            _out(args, {"ok": False, "problems": [str(exc)]}, [f"problem: {exc}", f"fix: {RECOVER_HINT}"])
            return 1
        raise RuntimeFailure(f"archive: {exc}; {RECOVER_HINT}") from None
    except ArchiveUnreadable as exc:
        raise RuntimeFailure(f"archive: {exc} (the file is not damaged; fix: {exc.fix})") from None
    except ArchiveError as exc:
        if is_corruption(exc):  # a damaged page met after a sound open
            raise RuntimeFailure(f"archive: {exc}: the file is damaged; {RECOVER_HINT}") from None
        raise RuntimeFailure(f"archive: {exc}") from None
    finally:
        archive_log.setLevel(level)


def _out(args: argparse.Namespace, data: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        print("\n".join(lines))


def _when(ts: int | None) -> str:
    if ts is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) + f" ({ts})"


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def _retention_lines(p: RetentionPolicy) -> list[str]:
    def lim(v: int, fmt: Callable[[int], str]) -> str:
        return "no limit" if v == 0 else fmt(v)

    return [
        f"  max age:        {lim(p.max_age_s, lambda v: f'{v / 86400:g} days ({v} s)')}",
        f"  max count:      {lim(p.max_count, str)}",
        f"  max bytes:      {lim(p.max_bytes, _size)}",
        f"  min free disk:  {lim(p.min_free_disk_bytes, _size)}",
    ]


def stats_dict(s: ArchiveStats) -> dict[str, Any]:
    return {
        "count": s.count,
        "bytes": s.bytes,
        "oldest_sent": s.oldest_sent,
        "newest_sent": s.newest_sent,
        "free_disk_bytes": s.free_disk_bytes,
        "bytes_written_since_start": s.bytes_written_since_start,
        "retention": {
            "max_age_s": s.retention.max_age_s,
            "max_count": s.retention.max_count,
            "max_bytes": s.retention.max_bytes,
            "min_free_disk_bytes": s.retention.min_free_disk_bytes,
        },
        "extra": s.extra,
    }


async def _stats(archive: Archive, args: argparse.Namespace) -> int:
    s = await archive.stats()
    lines = [
        f"envelopes:        {s.count}",
        f"size (live):      {_size(s.bytes)}",
        f"oldest:           {_when(s.oldest_sent)}",
        f"newest:           {_when(s.newest_sent)}",
        f"free disk:        {_size(s.free_disk_bytes)}",
        f"written (run):    {_size(s.bytes_written_since_start)}",
        "retention:",
        *_retention_lines(s.retention),
    ]
    lines += ["details:"] + [f"  {k.replace('_', ' ')}: {v}" for k, v in sorted(s.extra.items())]
    _out(args, stats_dict(s), lines)
    return 0


async def _prune(archive: Archive, args: argparse.Namespace) -> int:
    before = await archive.stats()
    result = await archive.prune()
    after = await archive.stats()
    data = {"deleted": result.deleted, "reason": result.reason, "count": after.count, "bytes": after.bytes,
            "bytes_before": before.bytes}
    why = f" ({result.reason})" if result.reason else " (nothing was due)"
    _out(args, data, [f"deleted {plural(result.deleted, 'envelope')}{why}; {after.count} left, "
                      f"{_size(after.bytes)} live"])
    return 0


def _sqlite_only(archive: Archive, what: str) -> Any:
    from pimail.archive.sqlite import SqliteArchive

    if not isinstance(archive, SqliteArchive):
        raise UserError(f"`pimail archive {what}` applies to the SQLite archive only")
    return archive


async def _vacuum(archive: Archive, args: argparse.Namespace) -> int:
    sq = _sqlite_only(archive, "vacuum")
    freed = await sq.vacuum()
    _out(args, {"freed_bytes": freed}, [f"gave {_size(freed)} back to the filesystem"])
    return 0


async def _check(archive: Archive, args: argparse.Namespace) -> int:
    from pimail.archive.base import ArchiveError

    sq = _sqlite_only(archive, "check")
    try:
        problems: list[str] = await sq.check()
    except ArchiveError as exc:  # SQLite stops the check at a damaged page: that is the finding
        problems = [str(exc)]
    if problems:
        problems.append(f"fix: {RECOVER_HINT}")
    data = {"ok": not problems, "problems": problems}
    lines = [f"problem: {p}" for p in problems] or ["ok: the archive is consistent"]
    _out(args, data, lines)
    return 0 if not problems else 1


async def _export(archive: Archive, args: argparse.Namespace) -> int:
    from pimail.archive.bundle import export_bundle

    path: Path = args.file
    result = await export_bundle(archive, path)
    _out(args, {"file": str(path), "count": result.count, "bytes": result.file_bytes,
                "sha256": result.sha256.hex()},
         [f"exported {plural(result.count, 'envelope')} to {path} ({_size(result.file_bytes)}, "
          f"sha256 {result.sha256.hex()[:16]}…)"])
    return 0


async def _import(archive: Archive, args: argparse.Namespace) -> int:
    from pimail.archive.bundle import import_bundle

    path: Path = args.file
    result = await import_bundle(archive, path)
    _out(args, {"file": str(path), "read": result.read, "added": result.added,
                "duplicates": result.duplicates, "invalid": result.invalid},
         [f"imported {path}: {plural(result.read, 'envelope')} read, {result.added} added, "
          f"{result.duplicates} already present, {result.invalid} invalid (skipped)"])
    if result.invalid:
        print(f"pimail: warning: skipped {plural(result.invalid, 'invalid envelope')}", file=sys.stderr)
    return 0


def _recover(args: argparse.Namespace) -> int:
    """``pimail archive recover FILE``: salvage FILE into the node's archive."""
    from pimail.archive import open_archive
    from pimail.archive.retention import policy_from_config
    from pimail.archive.sqlite.guard import salvage_into, salvage_wal_into
    from pimail.archive.sqlite.salvage import ArchiveDamaged, preflight, quarantine
    from pimail.archive.sqlite.wal import is_wal

    config, data_dir = load_config(args)
    if config.archive.url:
        raise UserError("`pimail archive recover` salvages into the SQLite archive only")
    source: Path = args.file
    if not source.is_file():
        raise UserError(f"{source}: no such file")
    target = data_dir / "archive.sqlite"
    moved: Path | None = None

    async def main() -> int:
        nonlocal source, moved
        if target.exists() and source.resolve() == target.resolve():
            moved = source = await asyncio.to_thread(quarantine, target)
        else:
            try:
                await asyncio.to_thread(preflight, target)
            except ArchiveDamaged as exc:
                raise UserError(f"the node's archive {exc}: recover it first "
                                f"(`pimail archive recover {target}`)") from None
        archive = open_archive(config.archive, data_dir, None)
        await archive.open()
        try:
            policy = policy_from_config(config.archive)
            if is_wal(source):  # a WAL kept aside: the envelopes in its frames' page images
                report = await salvage_wal_into(archive, source, max_age_s=policy.max_age_s)
            else:
                report = await salvage_into(archive, source, max_age_s=policy.max_age_s, disk_dir=data_dir,
                                            min_free_bytes=policy.min_free_disk_bytes)
        finally:
            await archive.close()
        data = report.as_dict() | {"target": str(target), "moved_to": str(moved) if moved else None}
        lines = [f"recovered {source} into {target}: {report.line()}"]
        if moved:
            lines.insert(0, f"moved the damaged archive aside to {moved} (kept; remove it when done)")
        if report.error:
            lines.append(f"note: {report.error}")
        _out(args, data, lines)
        return 0 if report.state == "done" and report.read else 1

    return _run_quietly(args, main)
