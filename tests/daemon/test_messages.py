"""Messages an operator reads: option names in errors, lengths said as lengths, a data dir that is a
file, a node that never started, plurals, one line for a reload, a damaged bundle's exit code."""

from __future__ import annotations

import asyncio
import logging
import tempfile
from pathlib import Path

import pytest

from pimail.cli import main, plural
from pimail.cli.history import parse_topic, summary_line
from pimail.cli.post import parse_hex
from pimail.cli.sync import result_line
from pimail.configfile import load_config
from pimail.daemon import Daemon
from pimail.errors import UserError
from pimail.mailserver.client import HistorySummary


def test_a_topic_of_the_wrong_length_is_said_to_be_that_not_not_hex() -> None:
    with pytest.raises(UserError) as wrong_length:
        parse_topic("cd4237601")
    assert "must be hex," not in str(wrong_length.value)
    assert "--topic must be 4 bytes (8 hex digits), got 9 hex digits: 'cd4237601'" in str(wrong_length.value)
    with pytest.raises(UserError, match=r"--topic must be hex, 4 bytes \(8 hex digits\): 'cd42376g'"):
        parse_topic("cd42376g")
    with pytest.raises(UserError, match=r"got 2 hex digits"):
        parse_hex("0xab", "--to-pubkey", (64, 65))
    assert parse_topic("0xCD423760") == bytes.fromhex("cd423760")


@pytest.mark.parametrize("command", [["run", "--no-page", "--no-metrics", "--listen", "127.0.0.1:0"],
                                     ["init"], ["archive", "stats"], ["enode"], ["pair", "--list"],
                                     ["pair", "--status"], ["status"], ["doctor"]])
def test_a_data_dir_that_is_a_file_is_named_as_such(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    afile = tmp_path / "var"
    afile.write_text("not a directory\n")
    with caplog.at_level(logging.INFO):
        code = main([*command, "--data-dir", str(afile)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.strip().splitlines()[-1] == (
        f"pimail: error: the data directory {afile} is a file, not a directory: move the "
        "file away or choose another --data-dir")
    assert "File exists" not in err
    daemon_lines = [r.getMessage() for r in caplog.records if r.name == "pimail.daemon"]
    assert "stopped" not in daemon_lines, "a node that never started does not say it stopped"


def test_counts_of_one_are_singular() -> None:
    assert plural(1, "page") == "1 page" and plural(0, "page") == "0 pages" and plural(2, "page") == "2 pages"
    one = HistorySummary(envelopes=1, duplicates=1, pages=1, completed=True, seconds=0.2)
    assert summary_line(one, "complete") == "1 envelope in 1 page (1 duplicate dropped), complete, 0.2 s"
    assert result_line(1, 1, 1, 10, 20) == "synced 10..20: 1 new envelope stored, 0 already here, 1 request"
    assert result_line(3, 5, 2, 10, 20).endswith("3 new envelopes stored, 2 already here, 2 requests")


def test_a_reload_that_only_changes_restart_settings_says_so_in_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = Path(tempfile.mkdtemp(prefix="pmi-reload-"))
    conf = root / "pimail.toml"
    base = (f'[node]\nlisten = "127.0.0.1:0"\ndata_dir = "{root / "data"}"\n'
            '[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\n'
            "[status]\npage = false\nmetrics = false\n")
    conf.write_text(base)

    async def scenario() -> list[str]:
        daemon = Daemon(load_config(conf).config, config_path=conf, env={})
        await daemon.start()
        try:
            conf.write_text(base.replace("[node]\n", "[node]\nmax_peers = 7\n"))
            caplog.clear()
            with caplog.at_level(logging.INFO, logger="pimail.daemon"):
                result = await daemon.reload()
            assert result["restart_needed"] == ["[node] max_peers"] and result["changed"] == []
            return [r.getMessage() for r in caplog.records if r.name == "pimail.daemon"]
        finally:
            await daemon.stop()

    lines = asyncio.run(asyncio.wait_for(scenario(), 60))
    said = [m for m in lines if "reload" in m]
    assert len(said) == 1, said
    assert "nothing to apply now; [node] max_peers changed and takes effect after a restart" in said[0]
    assert "nothing changed" not in said[0]
