"""``pimail`` command line. Each module in this package registers one or more subcommands.

A module defines ``register(subparsers)`` which adds its parsers and sets ``func`` to a callable
``(args) -> int``. Subcommands are thin shells over the library.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from collections.abc import Sequence

from pimail import __version__
from pimail.errors import RuntimeFailure, UserError

log = logging.getLogger("pimail")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pimail",
        description="A Whisper v6 mailserver for a Raspberry Pi: relays envelopes, keeps history "
        "for your phones while they are offline, and serves it back when they return.",
        epilog="A damaged archive is moved aside (archive.sqlite.damaged-<time>, never deleted) and "
        "salvaged into a fresh one while the node keeps relaying; `pimail archive recover FILE` does "
        "the same by hand. See README, \"The archive on the Pi\".",
    )
    parser.add_argument("--version", action="version", version=f"pimail {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.DEBUG if args.verbose else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below
        return code
    except BrokenPipeError:
        return _closed_pipe()
    except (UserError, RuntimeFailure) as exc:
        print(f"pimail: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def plural(n: int, noun: str, many: str | None = None) -> str:
    """``plural(1, "page")`` → "1 page"; ``plural(3, "page")`` → "3 pages"."""
    return f"{n} {noun if n == 1 else (many or noun + 's')}"


def quiet_node_logs(args: argparse.Namespace) -> None:
    """For client tools (post, watch, history, sync): the node they run inside is an implementation
    detail, so its INFO chatter ("listening for peers…", "node stopped…") shows only with -v;
    warnings and errors still do. The tool's own result goes to stdout."""
    if not getattr(args, "verbose", False):
        logging.getLogger("pimail").setLevel(logging.WARNING)


EXIT_CLOSED_PIPE = 141  # 128 + SIGPIPE: what `yes | head -1` reports for `yes`


def _closed_pipe() -> int:
    """The reader of our output went away (``pimail status | head -1``): stop quietly, no traceback.
    Point stdout at /dev/null so the interpreter's last flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_CLOSED_PIPE
