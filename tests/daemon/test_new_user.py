"""What bit a new user (issue: settings obeyed, read-only commands, advertised enode, …)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pimail import configfile

REPO = Path(__file__).resolve().parents[2]


def pimail_in(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items()
                if k not in ("STATE_DIRECTORY", "CONFIGURATION_DIRECTORY", "RUNTIME_DIRECTORY")}
    full_env["PYTHONPATH"] = str(REPO)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "pimail", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=full_env)


# -- 1. the default data dir's pimail.toml is read ------------------------------------------------


def test_the_default_data_dir_config_is_read_like_data_dir_var(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    init = pimail_in(tmp_path, "init", "--listen", "127.0.0.1:30411")
    assert init.returncode == 0, init.stderr
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    assert configfile.find_config(None, None) == Path("var") / "pimail.toml"
    assert configfile.find_config(None, None) == configfile.find_config(None, Path("./var"))
    plain = pimail_in(tmp_path, "enode")
    explicit = pimail_in(tmp_path, "enode", "--data-dir", "./var")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip().endswith(":30411") and plain.stdout == explicit.stdout


def test_make_run_leaves_the_listen_address_to_the_file() -> None:
    dry = subprocess.run(["make", "-n", "-C", str(REPO), "run"], capture_output=True, text=True, timeout=60)
    line = next(x for x in dry.stdout.splitlines() if "pimail run" in x)
    assert "--listen" not in line
    given = subprocess.run(["make", "-n", "-C", str(REPO), "run", "LISTEN=127.0.0.1:30412"],
                           capture_output=True, text=True, timeout=60)
    assert "--listen 127.0.0.1:30412" in given.stdout
