"""The TOML loader: defaults, the documented sample, and file:line errors for bad input."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pimail.archive.retention import policy_from_config
from pimail.config import Config
from pimail.configfile import (
    ConfigError,
    apply_overrides,
    find_config,
    load_config,
    parse_config_text,
    render_config,
    section_types,
)

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "pimail.toml"


def _valid_enode() -> str:
    from pimail.crypto.keys import NodeKey

    return f"enode://{NodeKey.generate().public.hex()}@127.0.0.1:30303"


def _err(text: str, tmp_path: Path) -> str:
    path = tmp_path / "pimail.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == 2
    return message


def test_sample_covers_every_key_and_loads_to_the_defaults() -> None:
    loaded = load_config(SAMPLE)
    text = SAMPLE.read_text()
    for section, (_, fields) in section_types().items():
        assert f"[{section}]" in text
        for key in fields:
            if (section, key) == ("node", "data_dir"):
                assert re.search(r"^# data_dir = ", text, re.M), "data_dir is documented, commented out"
                continue
            assert (section, key) in loaded.explicit, f"pimail.toml lacks [{section}] {key}: add it"
    defaults = Config()
    loaded.config.node.data_dir = defaults.node.data_dir
    assert loaded.config == defaults, "pimail.toml must show the defaults"


def test_every_key_in_the_sample_has_a_comment_above_it() -> None:
    lines = SAMPLE.read_text().splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        m = re.match(r"^([a-z_]+) = ", line)
        if m:
            j = i - 1
            while j >= 0 and re.match(r"^[a-z_]+ = ", lines[j]):
                j -= 1  # a group of related keys shares one comment
            if j < 0 or not lines[j].startswith("#"):
                undocumented.append(m.group(1))
    assert undocumented == []


def test_no_file_means_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    loaded = load_config(None)
    assert loaded.config == Config() and loaded.path is None


def test_values_are_typed(tmp_path: Path) -> None:
    peer = _valid_enode()
    path = tmp_path / "c.toml"
    path.write_text(
        f'[node]\nlisten = "127.0.0.1:0"\ndata_dir = "{tmp_path}"\nstatic_peers = [\n  "{peer}",\n]\n'
        "max_peers = 3\nhandshake_timeout_s = 2\n"
        '[archive]\nmax_bytes = "8GB"\nmax_age = "12h"\nclock_trust = "synced"\n'
        "[leds]\nenabled = false\nactive_high = false\n"
    )
    loaded = load_config(path)
    c = loaded.config
    assert c.node.data_dir == tmp_path and isinstance(c.node.data_dir, Path)
    assert c.node.static_peers == [peer]
    assert c.node.handshake_timeout_s == 2.0 and isinstance(c.node.handshake_timeout_s, float)
    assert c.archive.clock_trust == "synced"
    assert policy_from_config(c.archive).max_bytes == 8_000_000_000
    assert policy_from_config(c.archive).max_age_s == 12 * 3600
    assert c.leds.enabled is False and c.leds.active_high is False
    assert ("node", "max_peers") in loaded.explicit


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ('[node]\nlisten = "0.0.0.0:1"\n\n[archive]\ncolck_trust = "auto"\n', 5, "unknown key 'colck_trust'"),
        ("[node]\nmax_peers = 5\n[nodes]\nx = 1\n", 3, "unknown section [nodes]"),
        ('# c\n[node]\nmax_peers = "ten"\n', 3, "expected an integer, got str"),
        ("[node]\nmax_peers = -1\n", 2, "must not be negative"),
        ("[node]\nmax_peers = 0\n", 2, "must be greater than 0"),
        ("[leds]\nenabled = 1\n", 2, "expected true or false"),
        ('[whisper]\npow_formula = "new"\n', 2, "must be one of either, legacy, current"),
        ('[archive]\nmax_bytes = "8 parsecs"\n', 2, "expected a size"),
        ('[archive]\nmax_age = "forever"\n', 2, "expected a duration"),
        ('[archive]\nurl = "mysql://x"\n', 2, "postgresql://"),
        ('[node]\nlisten = "30303"\n', 2, "HOST:PORT"),
        ('[node]\nlisten = "0.0.0.0:70000"\n', 2, "port must be"),
        ('[node]\nstatic_peers = [\n  "enode://00@1.2.3.4:1",\n  "x",\n]\nmax_peers = 1\n', 2, "128 hex"),
        ('[node]\nstatic_peers = "enode://x"\n', 2, "expected a list of strings"),
        ("[leds]\ngreen = 40\n", 2, "BCM GPIO number"),
        ("[leds]\ngreen = 17\namber = 17\n", 3, "already used by green"),
        ('[mailserver]\nallowed_clients = ["abc"]\n', 2, "128 hex"),
        ("[node]\nredial_min_s = 10.0\nredial_max_s = 5.0\n", 3, "redial_max_s"),
        ("node.max_peers = 3\nnode.bogus = 1\n", 2, "unknown key 'bogus'"),
        ("[node]\nlisten = \n", 2, "TOML syntax error"),
        ('[node]\nlisten = "a"\nlisten = "b"\n', 3, "TOML syntax error"),
        ("node = 3\n", 1, "must be a table"),
        ('[status]\nmetrics_listen = "localhost"\n', 2, "HOST:PORT"),
        ('[node]\nmax_pears = 5\n', 2, "did you mean 'max_peers'"),
    ],
)
def test_bad_input_names_file_line_and_reason(tmp_path: Path, text: str, line: int, fragment: str) -> None:
    message = _err(text, tmp_path)
    assert message.startswith(f"{tmp_path / 'pimail.toml'}:{line}: "), message
    assert fragment in message, message


def test_multiline_arrays_do_not_confuse_line_numbers(tmp_path: Path) -> None:
    peer = _valid_enode()
    text = (
        f'[node]\nstatic_peers = [\n  "{peer}",  # [comment with brackets]\n  "{peer}",\n]\n'
        "max_peerz = 1\n"
    )
    assert _err(text, tmp_path).split(":")[1] == "6"


def test_not_utf8_missing_and_directory(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"[node]\n\nlisten = \"\xff\"\n")
    with pytest.raises(ConfigError, match=r"bad.toml:3: the config file is not UTF-8"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_huge_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1024 * 1024 + 10) + "\n")
    with pytest.raises(ConfigError, match="larger than"):
        load_config(big)


def test_overrides_validate_and_apply(tmp_path: Path) -> None:
    c = Config()
    peer = _valid_enode()
    apply_overrides(
        c, listen="127.0.0.1:0", data_dir=tmp_path, static_peers=[peer], archive_url="postgresql://u@h/d",
        metrics_listen="127.0.0.1:0", no_metrics=True, no_leds=True, no_page=True, clock_trust="always",
        page_listen="127.0.0.1:8081",
    )
    assert c.status.page_listen == "127.0.0.1:8081"
    assert c.node.listen == "127.0.0.1:0" and c.node.data_dir == tmp_path
    assert c.node.static_peers == [peer] and c.archive.url.startswith("postgresql://")
    assert not c.status.metrics and not c.leds.enabled and not c.status.page
    assert c.archive.clock_trust == "always"
    for kwargs, option in (({"listen": "nope"}, "--listen"),
                           ({"static_peers": ["enode://zz"]}, "--static-peer"),
                           ({"archive_url": "sqlite:///x"}, "--archive-url"),
                           ({"clock_trust": "sometimes"}, "--clock-trust"),
                           ({"page_listen": "nope"}, "--page-listen"),
                           ({"metrics_listen": "x:99999"}, "--metrics-listen"),
                           ({"bootnodes": ["bogus"]}, "--bootnode")):
        with pytest.raises(ConfigError, match=rf"^command line: {option}: "):  # names the option
            apply_overrides(Config(), **kwargs)  # type: ignore[arg-type]


def test_render_config_round_trips() -> None:
    c = Config()
    c.node.static_peers = [_valid_enode()]
    c.node.public_host = 'a"b'
    c.archive.max_bytes = "2GB"
    c.leds.active_high = False
    text = render_config(c, "header line\n\nsecond")
    back, explicit = parse_config_text(text, "rendered")
    assert back == c
    assert len(explicit) == sum(len(dataclasses.fields(getattr(c, s))) for s in section_types())


def test_state_directory_is_the_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "state"))
    path = tmp_path / "c.toml"
    path.write_text("[node]\nmax_peers = 4\n")
    assert load_config(path).config.node.data_dir == tmp_path / "state"
    path.write_text(f'[node]\ndata_dir = "{tmp_path}/explicit"\n')
    assert load_config(path).config.node.data_dir == tmp_path / "explicit"


def test_installed_config_without_data_dir_points_at_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pimail.configfile as cf

    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    installed = tmp_path / "etc" / "pimail.toml"
    installed.parent.mkdir()
    installed.write_text("[node]\nmax_peers = 4\n")
    monkeypatch.setattr(cf, "INSTALLED_CONFIG", installed)
    assert cf.load_config(installed).config.node.data_dir == cf.INSTALLED_DATA_DIR
    other = tmp_path / "mine.toml"
    other.write_text("[node]\nmax_peers = 4\n")
    assert cf.load_config(other).config.node.data_dir == Config().node.data_dir


def test_find_config_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    explicit = tmp_path / "x.toml"
    assert find_config(explicit, tmp_path) == explicit  # --config wins, even if missing (error later)
    (tmp_path / "pimail.toml").write_text("")
    assert find_config(None, tmp_path) == tmp_path / "pimail.toml"
    confdir = tmp_path / "etc"
    confdir.mkdir()
    (confdir / "pimail.toml").write_text("")
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(confdir))
    assert find_config(None, tmp_path / "empty") == confdir / "pimail.toml"




def test_pimail_run_with_a_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "pimail.toml"
    path.write_text('[node]\nlisten = "0.0.0.0:30303"\nlisen = "x"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "pimail", "run", "--config", str(path), "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    expected = f"pimail: error: {path}:3: unknown key 'lisen' in [node] (did you mean 'listen'?)"
    assert proc.stderr.strip() == expected
    assert proc.stdout == ""


def test_pimail_run_with_a_bad_option_exits_2(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pimail", "run", "--data-dir", str(tmp_path), "--listen", "nohost"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("pimail: error: command line: --listen: expected HOST:PORT")


_KEYS = [(s, k) for s, (_, fields) in section_types().items() for k in fields]
_VALUES = st.one_of(
    st.integers(-5, 10**12), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.text(max_size=20), st.lists(st.text(max_size=10), max_size=3),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_KEYS), _VALUES), max_size=6))
def test_any_typed_values_load_or_fail_with_one_line(pairs: list[tuple[tuple[str, str], object]]) -> None:
    by_section: dict[str, dict[str, object]] = {}
    for (section, key), value in pairs:
        by_section.setdefault(section, {})[key] = value
    lines = []
    for section, body in by_section.items():
        lines.append(f"[{section}]")
        for key, value in body.items():
            lines.append(f"{key} = {_toml(value)}")
    text = "\n".join(lines) + "\n"
    try:
        parse_config_text(text, "f.toml")
    except ConfigError as exc:
        m = re.match(r"^f\.toml:(\d+): \S", str(exc))
        assert m and 1 <= int(m.group(1)) <= max(1, len(lines)) and "\n" not in str(exc)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text_never_crashes_the_loader(text: str) -> None:
    try:
        parse_config_text(text, "f.toml")
    except ConfigError as exc:
        assert str(exc).startswith("f.toml:") and "\n" not in str(exc)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)
