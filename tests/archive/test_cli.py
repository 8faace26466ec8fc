"""``pimail archive …`` as real processes on real data directories."""

from __future__ import annotations

import gzip
import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pimail.archive.bundle import MAGIC
from pimail.archive.sqlite import SCHEMA_VERSION, SqliteArchive
from pimail.errors import DataError
from tests.archive.conftest import make_envelope, run, topic_n

ROOT = Path(__file__).resolve().parents[2]
NOW = int(time.time()) - 7200  # envelope i is sent at NOW + i in every data dir


def pimail(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pimail", "archive", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def fill(data_dir: Path, n: int, start: int = 0) -> list[tuple[int, bytes]]:
    """Stores envelopes start … start+n−1; returns their keys (sent, hash)."""

    async def main() -> list[tuple[int, bytes]]:
        a = SqliteArchive(data_dir / "archive.sqlite")
        await a.open()
        envs = [make_envelope(i, NOW + i, topic_n(i % 7)) for i in range(start, start + n)]
        await a.submit(envs)
        await a.close()
        return [(e.sent, e.hash) for e in envs]

    return run(main())


def test_stats_on_a_fresh_data_dir_creates_the_archive(tmp_path: Path) -> None:
    node = tmp_path / "fresh"
    res = pimail("stats", "--data-dir", str(node), "--json")
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["count"] == 0 and data["bytes"] > 0
    assert data["oldest_sent"] is None
    assert data["retention"]["max_age_s"] == 30 * 86400  # the [archive] defaults
    assert (node / "archive.sqlite").is_file()
    text = pimail("stats", "--data-dir", str(node))
    assert text.returncode == 0 and "envelopes:" in text.stdout and "max age:" in text.stdout


def test_stats_counts_and_reads_the_config_file(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    (node / "pimail.toml").write_text('[archive]\nmax_count = 5\nmax_age = "0"\n')
    fill(node, 12)
    data = json.loads(pimail("stats", "--data-dir", str(node), "--json").stdout)
    assert data["count"] == 12 and data["retention"]["max_count"] == 5
    pruned = pimail("prune", "--data-dir", str(node), "--json")
    assert pruned.returncode == 0, pruned.stderr
    result = json.loads(pruned.stdout)
    assert result["deleted"] == 7 and result["count"] == 5 and "max_count" in result["reason"]


def test_check_and_vacuum(tmp_path: Path) -> None:
    node = tmp_path / "node"
    fill(node, 50)
    res = pimail("check", "--data-dir", str(node))
    assert res.returncode == 0 and "ok" in res.stdout
    vac = pimail("vacuum", "--data-dir", str(node), "--json")
    assert vac.returncode == 0 and json.loads(vac.stdout)["freed_bytes"] >= 0
    conn = sqlite3.connect(node / "archive.sqlite")
    conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'count'")
    conn.commit()
    conn.close()
    bad = pimail("check", "--data-dir", str(node), "--json")
    assert bad.returncode == 1 and json.loads(bad.stdout)["ok"] is False


def test_export_then_import_into_a_fresh_node(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    keys = fill(a, 300)
    bundle = tmp_path / "seed.pimail.gz"
    exp = pimail("export", str(bundle), "--data-dir", str(a), "--json")
    assert exp.returncode == 0, exp.stderr
    assert json.loads(exp.stdout)["count"] == 300
    again = pimail("export", str(bundle), "--data-dir", str(a))
    assert again.returncode == 2 and "already exists" in again.stderr
    fill(b, 10, start=250)  # b already has 10 of them (a's 250..259 are the same envelopes)
    imp = pimail("import", str(bundle), "--data-dir", str(b), "--json")
    assert imp.returncode == 0, imp.stderr
    got = json.loads(imp.stdout)
    assert got == {"file": str(bundle), "read": 300, "added": 290, "duplicates": 10, "invalid": 0}
    assert json.loads(pimail("stats", "--data-dir", str(b), "--json").stdout)["count"] == 300

    async def present() -> bool:
        arch = SqliteArchive(b / "archive.sqlite")
        await arch.open()
        ok = all([await arch.contains(sent, h) for sent, h in keys[::37]])
        await arch.close()
        return ok

    assert run(present())


def test_seed_a_node_made_by_pimail_init(tmp_path: Path) -> None:
    """The README's seeding recipe: `pimail init --data-dir DIR`, then `pimail archive import`."""
    a, fresh = tmp_path / "a", tmp_path / "fresh"
    fill(a, 120)
    bundle = tmp_path / "seed.pimail.gz"
    assert pimail("export", str(bundle), "--data-dir", str(a)).returncode == 0
    init = subprocess.run([sys.executable, "-m", "pimail", "init", "--data-dir", str(fresh)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stderr
    imp = pimail("import", str(bundle), "--data-dir", str(fresh), "--json")
    assert imp.returncode == 0, imp.stderr
    assert json.loads(imp.stdout)["added"] == 120
    stats = json.loads(pimail("stats", "--data-dir", str(fresh), "--json").stdout)
    assert stats["count"] == 120 and stats["oldest_sent"] == NOW and stats["newest_sent"] == NOW + 119


def in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The same command in this process (cheaper than a process when checking many inputs)."""
    from pimail.cli import main

    code = main(["archive", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_import_refuses_damaged_or_foreign_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    fill(a, 40)
    bundle = tmp_path / "b.gz"
    assert pimail("export", str(bundle), "--data-dir", str(a)).returncode == 0
    content = gzip.decompress(bundle.read_bytes())
    tampered = bytearray(content)
    tampered[len(MAGIC) + 20] ^= 1  # one bit inside the first envelope
    cases = {
        "flip.gz": gzip.compress(bytes(tampered)),
        "short.gz": gzip.compress(content[:-10]),
        "junk.gz": gzip.compress(b"hello"),
        "notgzip.gz": b"definitely not gzip",
        "cut.gz": bundle.read_bytes()[:-30],
    }
    for i, (name, blob) in enumerate(cases.items()):
        path = tmp_path / name
        path.write_bytes(blob)
        if i == 0:  # one as a real process: exit code and a single stderr line
            res = pimail("import", str(path), "--data-dir", str(b))
            assert res.returncode == DataError.exit_code == 65, (name, res.stdout, res.stderr)
            assert res.stderr.count("\n") == 1 and res.stderr.startswith("pimail: error:"), res.stderr
            continue
        code, _, err = in_process(capsys, "import", str(path), "--data-dir", str(b))
        assert code == 65 and err.startswith("pimail: error:") and err.count("\n") == 1, (name, err)
    code, _, err = in_process(capsys, "import", str(tmp_path / "nope.gz"), "--data-dir", str(b))
    assert code == 2 and "no such bundle" in err
    assert json.loads(pimail("stats", "--data-dir", str(b), "--json").stdout)["count"] == 0


def test_import_skips_invalid_envelopes(tmp_path: Path) -> None:
    import hashlib
    import struct

    good = make_envelope(1)
    body = MAGIC
    for raw in (good.raw, b"\xc3\x01\x02\x03", good.raw[:-1]):  # valid, wrong shape, truncated RLP
        body += struct.pack(">II", 0, len(raw)) + raw
    body += struct.pack(">II", 0, 0) + struct.pack(">Q", 3)
    body += hashlib.sha256(body).digest()
    path = tmp_path / "mixed.gz"
    path.write_bytes(gzip.compress(body))
    res = pimail("import", str(path), "--data-dir", str(tmp_path / "n"), "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"file": str(path), "read": 3, "added": 1, "duplicates": 0, "invalid": 2}
    assert "skipped 2 invalid" in res.stderr


def test_newer_schema_is_a_one_line_error(tmp_path: Path) -> None:
    node = tmp_path / "node"
    fill(node, 1)
    conn = sqlite3.connect(node / "archive.sqlite")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 3}")
    conn.close()
    res = pimail("stats", "--data-dir", str(node))
    assert res.returncode == 1
    assert res.stderr.strip().splitlines()[-1].startswith("pimail: error: archive:")
    assert "newer pimail" in res.stderr and "Traceback" not in res.stderr


def test_bad_config_value_is_a_one_line_error(tmp_path: Path) -> None:
    node = tmp_path / "node"
    node.mkdir()
    (node / "pimail.toml").write_text('[archive]\nmax_bytes = "lots"\n')
    res = pimail("prune", "--data-dir", str(node))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "max_bytes" in res.stderr
    # a read-only action goes on, and says the file on disk is bad
    stats = pimail("stats", "--data-dir", str(node))
    assert stats.returncode == 0 and "max_bytes" in stats.stderr
    assert "config file on disk is bad" in stats.stderr


def test_archive_without_action_prints_usage() -> None:
    res = pimail()
    assert res.returncode == 2 and "stats" in res.stdout and "export" in res.stdout
