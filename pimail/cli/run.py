"""``pimail run``: start the node in the foreground (what systemd's ExecStart runs)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pimail import configfile
from pimail.appliance.journal import setup_logging
from pimail.config import Config

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run the node in the foreground (relay, archive, serve history)",
        description="Run the mailserver until SIGTERM or Ctrl-C. Settings come from --config, else "
        "<data dir>/pimail.toml, $CONFIGURATION_DIRECTORY/pimail.toml or /etc/pimail/pimail.toml, "
        "else built-in defaults; the options below override the file. SIGHUP reloads peers, limits "
        "and retention. Exit codes: 0 stopped cleanly, 1 could not run (port in use, archive), "
        "2 bad configuration.",
    )
    add_config_options(p)
    p.add_argument("--listen", metavar="HOST:PORT", help="RLPx listen address (default 0.0.0.0:30303)")
    p.add_argument(
        "--static-peer",
        metavar="ENODE",
        action="append",
        dest="static_peers",
        help="keep a connection to this node (repeatable; replaces [node] static_peers)",
    )
    p.add_argument(
        "--bootnode",
        metavar="ENODE",
        action="append",
        dest="bootnodes",
        help="find the network through this discovery node (repeatable; replaces [node] bootnodes)",
    )
    p.add_argument("--no-discovery", action="store_true",
                   help="no discv4: meet peers only through static peers and inbound connections")
    p.add_argument("--archive-url", metavar="URL", help='postgresql://… for a fleet archive ("" = SQLite)')
    p.add_argument("--metrics-listen", metavar="HOST:PORT", help="metrics address (127.0.0.1:9464)")
    p.add_argument("--page-listen", metavar="HOST:PORT", help="status page address (default 0.0.0.0:8080)")
    p.add_argument("--no-metrics", action="store_true", help="do not serve Prometheus metrics")
    p.add_argument("--no-page", action="store_true", help="do not serve the LAN status page")
    p.add_argument("--no-leds", action="store_true", help="leave the GPIO LEDs alone")
    p.add_argument(
        "--clock-trust", choices=("auto", "always", "synced"), help="override [archive] clock_trust"
    )
    p.set_defaults(func=run)


def add_config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="PATH", type=Path, help="pimail.toml to read")
    p.add_argument("--data-dir", metavar="DIR", type=Path, help="data directory (overrides [node] data_dir)")


def load(args: argparse.Namespace) -> configfile.LoadedConfig:
    """The config file the daemon would use, with the command-line overrides applied."""
    data_dir: Path | None = getattr(args, "data_dir", None)
    path = configfile.find_config(getattr(args, "config", None), data_dir)
    loaded = configfile.load_config(path)
    overrides(args)(loaded.config)
    return loaded


def load_readonly(args: argparse.Namespace) -> configfile.LoadedConfig:
    """Like ``load``, for commands that only read: a bad file on disk is a warning, not an exit 2
    (after a refused SIGHUP reload the daemon runs on its old settings and must stay inspectable)."""
    data_dir: Path | None = getattr(args, "data_dir", None)
    path = configfile.find_config(getattr(args, "config", None), data_dir)
    loaded = configfile.load_config_leniently(path)
    if loaded.problem:
        warn_bad_config(loaded.problem)
    configfile.apply_overrides(loaded.config, data_dir=data_dir)
    return loaded


def warn_bad_config(problem: str) -> None:
    """One warning on stderr for a config file on disk that does not load."""
    print(
        f"pimail: warning: the config file on disk is bad: {problem}\n"
        "pimail: warning: a running node keeps the settings it last loaded; fix the file before "
        "the next reload or restart (read-only commands go on with its data dir and defaults)",
        file=sys.stderr,
    )


def overrides(args: argparse.Namespace) -> Callable[[Config], None]:
    """The command-line options as a function on a config (re-applied after each SIGHUP reload)."""
    return lambda config: configfile.apply_overrides(
        config,
        data_dir=getattr(args, "data_dir", None),
        listen=getattr(args, "listen", None),
        static_peers=getattr(args, "static_peers", None),
        archive_url=getattr(args, "archive_url", None),
        metrics_listen=getattr(args, "metrics_listen", None),
        page_listen=getattr(args, "page_listen", None),
        no_metrics=getattr(args, "no_metrics", False),
        no_page=getattr(args, "no_page", False),
        no_leds=getattr(args, "no_leds", False),
        clock_trust=getattr(args, "clock_trust", None),
        bootnodes=getattr(args, "bootnodes", None),
        no_discovery=getattr(args, "no_discovery", False),
    )


def run(args: argparse.Namespace) -> int:
    loaded = load(args)
    mode = setup_logging(args.verbose, force=True)
    log.debug("logging to %s", mode)
    log.info("config: %s", loaded.path or "built-in defaults")
    from pimail.daemon import run_daemon  # the whole node: only `run` pays for importing it

    return run_daemon(loaded.config, config_path=loaded.path, overrides=overrides(args))
