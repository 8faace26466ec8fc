"""``pimail init``: create the data directory, the node key and a config file."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from pimail import configfile
from pimail.config import Config
from pimail.crypto.keys import KeyError_, NodeKey
from pimail.errors import RuntimeFailure, UserError

NODEKEY_FILE = "nodekey"
HEADER = """pimail configuration, written by `pimail init`. Every key is shown with its value;
the documented sample with what each key means is pimail.toml in the source tree.
Apply changes to peers, limits and retention with `systemctl reload pimail` (SIGHUP);
others need a restart."""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "init",
        help="create the data directory, node key and a config file",
        description="Create DIR (default ./var), its node key (kept if it exists) and a pimail.toml "
        "with every setting (in DIR unless --config says where). An existing config is left alone "
        "unless --force.",
    )
    p.add_argument("--data-dir", metavar="DIR", type=Path, default=Path("./var"),
                   help="data directory (default ./var)")
    p.add_argument("--config", metavar="PATH", type=Path, help="where to write the config")
    p.add_argument("--listen", metavar="HOST:PORT", help="RLPx listen address to write into the config")
    p.add_argument("--page-listen", metavar="HOST:PORT", help="status page address to write into the config")
    p.add_argument("--force", action="store_true", help="overwrite an existing config file")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir
    config_path: Path = args.config or data_dir / configfile.CONFIG_NAME
    configfile.make_data_dir(data_dir)
    try:
        key = NodeKey.load_or_create(data_dir / NODEKEY_FILE)
    except KeyError_ as exc:
        raise UserError(str(exc)) from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot write the node key in {data_dir}: {exc.strerror or exc}") from None
    print(f"node key   {data_dir / NODEKEY_FILE} (public key {key.public.hex()[:16]}…)")
    if config_path.exists() and not args.force:
        print(f"config     {config_path} exists; left as it is (--force rewrites it)")
        return 0
    config = Config()
    configfile.apply_overrides(
        config, data_dir=data_dir.resolve(), listen=args.listen, page_listen=args.page_listen
    )
    text = configfile.render_config(config, HEADER)
    configfile.parse_config_text(text, str(config_path))  # what we write must load
    try:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = config_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, config_path)
    except OSError as exc:
        raise RuntimeFailure(f"cannot write {config_path}: {exc.strerror or exc}") from None
    print(f"config     {config_path}")
    print(f"next       pimail run --config {config_path}")
    return 0
