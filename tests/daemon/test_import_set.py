"""The daemon's memory floor: what ``import pimail.daemon`` and a running node load, and what they
must not (each of these costs megabytes of RSS on a Pi that does not use it; docs/PERFORMANCE.md,
"Memory")."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from pimail.archive.sqlite.layout import BUCKET_EXPR, V1_HASH_EXPR
from tests.daemon.procs import REPO

# top-level packages and the reason a default node has no use for them
NEVER_BY_DEFAULT = {
    "psycopg": "the PostgreSQL driver: only with [archive] url = postgresql://",
    "psycopg_pool": "the PostgreSQL pool: only with [archive] url = postgresql://",
    "sqlite_utils": "archive schema migrations: only when the file is older than the code",
    "click": "comes with sqlite_utils",
    "dateutil": "comes with sqlite_utils",
    "cramjam": "snappy: loaded with the first devp2p v5 session",
    "segno": "QR codes: `pimail enode --qr`, `pimail pair` and the status page's first view",
    "zxingcpp": "QR decoding: tests only",
    "hypothesis": "tests only",
    "pytest": "tests only",
    "systemd": "python-systemd: pimail speaks the notify protocol itself",
    "prometheus_client": "pimail writes the metrics text itself (pimail/appliance/exposition.py)",
}
AT_IMPORT_ALSO = {"gpiozero": "LEDs and the pair button: loaded when a GPIO chip is there",
                  "lgpio": "gpiozero's backend"}

RUN_TWICE = """
import asyncio, json, sys
from pathlib import Path
from pimail.configfile import load_config
from pimail.daemon import Daemon

conf = Path(sys.argv[1])

async def main() -> None:
    daemon = Daemon(load_config(conf).config, config_path=conf, env={})
    await daemon.start()
    await daemon.stop()

asyncio.run(main())
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def _loaded(code: str, *args: str) -> set[str]:
    # faulthandler: a crash of the interpreter prints where it happened into the assertion
    proc = subprocess.run([sys.executable, "-X", "faulthandler", "-c", code, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_importing_the_daemon_loads_none_of_the_optional_packages() -> None:
    loaded = _loaded("import json, sys\nimport pimail.daemon\n"
                     "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    assert {"pimail", "asyncio", "coincurve"} <= loaded  # the listing is real
    unwanted = {**NEVER_BY_DEFAULT, **AT_IMPORT_ALSO}
    assert {name: unwanted[name] for name in loaded & unwanted.keys()} == {}


def test_the_cli_that_starts_the_node_loads_none_of_them() -> None:
    """``pimail run`` builds the whole parser (every subcommand module) before it starts the node."""
    loaded = _loaded("import json, sys\nimport pimail.cli\npimail.cli.build_parser()\n"
                     "print(json.dumps(sorted({n.split('.')[0] for n in sys.modules})))")
    assert {"pimail", "argparse"} <= loaded
    unwanted = {**NEVER_BY_DEFAULT, **AT_IMPORT_ALSO}
    assert {name: unwanted[name] for name in loaded & unwanted.keys()} == {}


def test_a_default_node_new_or_restarted_loads_none_of_them_but_a_migration_does(tmp_path: Path) -> None:
    conf = tmp_path / "pimail.toml"
    conf.write_text(  # the defaults (status page, metrics, SQLite archive), on loopback ports
        f'[node]\nlisten = "127.0.0.1:0"\ndata_dir = "{tmp_path / "data"}"\n'
        '[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\n'
        '[status]\nmetrics_listen = "127.0.0.1:0"\npage_listen = "127.0.0.1:0"\n'
    )
    first = _loaded(RUN_TWICE, str(conf))  # a new archive: created in plain SQL
    assert {name: NEVER_BY_DEFAULT[name] for name in first & NEVER_BY_DEFAULT.keys()} == {}
    again = _loaded(RUN_TWICE, str(conf))
    assert {name: NEVER_BY_DEFAULT[name] for name in again & NEVER_BY_DEFAULT.keys()} == {}
    # an archive of schema 1 is migrated with sqlite-utils: the check can see what it loads
    conn = sqlite3.connect(tmp_path / "data" / "archive.sqlite")
    conn.execute(f"CREATE INDEX envelopes_hash ON envelopes({BUCKET_EXPR}, {V1_HASH_EXPR})")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    assert "sqlite_utils" in _loaded(RUN_TWICE, str(conf))
