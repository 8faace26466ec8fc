"""pimail init: node key (0600) and a config that loads; idempotent; picked up by `pimail run`."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

from pimail.configfile import find_config, load_config
from pimail.crypto.keys import NodeKey

REPO = Path(__file__).resolve().parents[2]


def pimail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pimail", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_init_writes_key_and_config_once(tmp_path: Path) -> None:
    data = tmp_path / "var"
    first = pimail("init", "--data-dir", str(data), "--listen", "127.0.0.1:30399")
    assert first.returncode == 0, first.stderr
    key_path = data / "nodekey"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = NodeKey.load(key_path)
    assert key.public.hex()[:16] in first.stdout
    conf = data / "pimail.toml"
    loaded = load_config(conf)
    assert loaded.config.node.listen == "127.0.0.1:30399"
    assert loaded.config.node.data_dir == data.resolve()
    assert find_config(None, data) == conf

    conf.write_text(conf.read_text().replace("max_peers = 50", "max_peers = 7"))
    again = pimail("init", "--data-dir", str(data))
    assert again.returncode == 0 and "left as it is" in again.stdout
    assert NodeKey.load(key_path) == key, "the node key is never replaced"
    assert load_config(conf).config.node.max_peers == 7
    forced = pimail("init", "--data-dir", str(data), "--force")
    assert forced.returncode == 0 and load_config(conf).config.node.max_peers == 50


def test_init_with_a_config_path_and_bad_input(tmp_path: Path) -> None:
    conf = tmp_path / "etc" / "pimail.toml"
    ok = pimail("init", "--data-dir", str(tmp_path / "d"), "--config", str(conf))
    assert ok.returncode == 0 and conf.exists()
    bad = pimail("init", "--data-dir", str(tmp_path / "d2"), "--listen", "nope")
    assert bad.returncode == 2 and bad.stderr.startswith("pimail: error: command line: --listen:")
    page = pimail("init", "--data-dir", str(tmp_path / "d4"), "--page-listen", "127.0.0.1:8089")
    assert page.returncode == 0, page.stderr
    assert load_config(tmp_path / "d4" / "pimail.toml").config.status.page_listen == "127.0.0.1:8089"
    ran = pimail("run", "--data-dir", str(tmp_path / "d5"), "--page-listen", "nope")
    assert ran.returncode == 2 and "--page-listen" in ran.stderr
    (tmp_path / "d3").mkdir()
    (tmp_path / "d3" / "nodekey").write_text("zz\n")
    broken = pimail("init", "--data-dir", str(tmp_path / "d3"))
    assert broken.returncode == 2 and "node key is not hex" in broken.stderr
    blocked = tmp_path / "file"
    blocked.write_text("x")
    nodir = pimail("init", "--data-dir", str(blocked / "sub"))
    assert nodir.returncode == 2 and "part of that path is a file, not a directory" in nodir.stderr


def test_logging_goes_to_the_journal_when_stderr_is_the_journal_stream(tmp_path: Path) -> None:
    out = tmp_path / "stderr"
    code = (
        "import os, sys\n"
        "st = os.fstat(2)\n"
        "os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}'\n"
        "from pimail.appliance.journal import setup_logging\n"
        "print(setup_logging())\n"
    )
    with out.open("w") as err:
        proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, stderr=err,
                              text=True, timeout=60)
    assert proc.stdout.strip() in ("journal", "journal-stream")
    plain = subprocess.run([sys.executable, "-c", code.replace("os.environ['JOURNAL_STREAM'] = ", "_ = ")],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert plain.stdout.strip() == "stderr"
