"""``pimail doctor``: check clock, disk, archive, port, GPIO, power and write rate; exit 1 on a failure."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pimail.appliance.doctor import run_checks
from pimail.cli.run import add_config_options, load_readonly
from pimail.configfile import refuse_file_as_data_dir


def register(sub: Any) -> None:
    p = sub.add_parser(
        "doctor",
        help="check this machine and node for common problems",
        description="One line per check: OK, WARN, FAIL or SKIP, what was found and what to do. "
        "Exit code 1 when any check fails.",
    )
    add_config_options(p)
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    loaded = load_readonly(args)
    refuse_file_as_data_dir(Path(loaded.config.node.data_dir))
    checks = run_checks(loaded.config, config_problem=loaded.problem, config_path=loaded.path)
    if args.json:
        print(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        for check in checks:
            print(check.line())
    return 1 if any(c.verdict == "fail" for c in checks) else 0
