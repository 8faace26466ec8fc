"""Load ``pimail.toml`` into the typed tree in ``pimail.config``, and apply CLI overrides.

Every value has a default (the dataclasses in ``pimail.config``); the file only names what differs.
Unknown sections or keys and values of the wrong type or out of range stop the start with
``FILE:LINE: reason`` (exit code 2 through ``ConfigError``). ``tomllib`` reports line numbers for
syntax errors only, so the line of a bad key is found by scanning the text.

Where the config comes from, first match wins: ``--config PATH``; ``<data dir>/pimail.toml`` (the
data dir given on the command line, else the default one: ``$STATE_DIRECTORY`` under systemd, else
``./var`` — so no options behave exactly like ``--data-dir ./var``); ``$CONFIGURATION_DIRECTORY/pimail.toml``
(systemd); ``/etc/pimail/pimail.toml``; otherwise the built-in defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from pimail.config import Config, parse_duration, parse_hostport, parse_share, parse_size
from pimail.errors import RuntimeFailure, UserError

INSTALLED_CONFIG = Path("/etc/pimail/pimail.toml")
CONFIG_NAME = "pimail.toml"
MAX_CONFIG_BYTES = 1024 * 1024  # a config is a few KB; refuse to parse something huge


class ConfigError(UserError):
    """Bad configuration: one line naming the file, the line and the reason. Exit code 2."""


# -- per-key checks beyond the type ---------------------------------------------------------------


def _one_of(*choices: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)} (got {value!r})")

    return check


def _positive(value: Any) -> None:
    if value <= 0:
        raise ValueError(f"must be greater than 0 (got {value})")


def _not_negative(value: Any) -> None:
    if value < 0:
        raise ValueError(f"must be 0 or more (got {value})")


def _enodes(value: Any) -> None:
    from pimail.crypto.keys import Enode

    for item in value:
        try:
            enode = Enode.parse(item)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if enode.host is None:
            raise ValueError(f"enode URL needs @host:port: {item[:80]!r}")


def _client_keys(value: Any) -> None:
    for item in value:
        text = item.strip()
        if text.startswith("enode://"):
            text = text[len("enode://") :].split("@", 1)[0].split(":", 1)[0]
        text = text.removeprefix("0x")
        if len(text) == 130 and text.startswith("04"):
            text = text[2:]
        if len(text) != 128 or not re.fullmatch(r"[0-9a-fA-F]+", text):
            raise ValueError(f"client key must be 128 hex characters or an enode URL: {item[:40]!r}")


def _hostport(value: Any) -> None:
    parse_hostport(value)


def _size(value: Any) -> None:
    parse_size(value)


def _size_or_share(value: Any) -> None:
    if parse_share(value) is None:
        parse_size(value)


def _duration(value: Any) -> None:
    parse_duration(value)


def _bcm_pin(value: Any) -> None:
    if not 0 <= value <= 27:
        raise ValueError(f"must be a BCM GPIO number from 2 to 27, or 0 for none (got {value})")
    if value == 1:
        raise ValueError("BCM 1 is the HAT EEPROM clock; use a pin from 2 to 27, or 0 for none")


def _archive_url(value: Any) -> None:
    if value and not value.startswith(("postgresql://", "postgres://")):
        raise ValueError(f'must be "" (SQLite in the data dir) or a postgresql:// URL (got {value[:40]!r})')


def _discovery_switch(value: Any) -> None:
    if value not in (True, False, "auto"):
        raise ValueError(f'must be true, false or "auto" (got {_short(value)})')


def _cidrs(value: Any) -> None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of CIDR strings such as [\"192.168.0.0/16\"]")
    for item in value:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"not a CIDR network: {item!r}") from None


def _fraction(value: Any) -> None:
    if not 0 < value <= 1:
        raise ValueError(f"must be more than 0 and at most 1 (got {value})")


def _udp_listen(value: Any) -> None:
    if value:
        parse_hostport(value)


CHECKS: dict[tuple[str, str], Callable[[Any], None]] = {
    ("node", "discovery"): _discovery_switch,
    ("node", "bootnodes"): _enodes,
    ("node", "discovery_listen"): _udp_listen,
    ("node", "netrestrict"): _cidrs,
    ("node", "dial_share"): _fraction,
    ("node", "dial_interval_s"): _positive,
    ("discovery", "request_timeout_s"): _positive,
    ("discovery", "lookup_interval_s"): _positive,
    ("discovery", "refresh_interval_s"): _positive,
    ("discovery", "revalidate_interval_s"): _positive,
    ("discovery", "persist_interval_s"): _positive,
    ("discovery", "packets_per_s"): _positive,
    ("discovery", "packet_burst"): _positive,
    ("discovery", "max_addresses"): _positive,
    ("discovery", "external_ip_votes"): _positive,
    ("node", "listen"): _hostport,
    ("node", "static_peers"): _enodes,
    ("node", "trusted_peers"): _client_keys,
    ("node", "max_peers"): _positive,
    ("node", "max_pending_handshakes"): _positive,
    ("node", "handshake_timeout_s"): _positive,
    ("node", "ping_interval_s"): _positive,
    ("node", "idle_timeout_s"): _positive,
    ("node", "max_frame_bytes"): _positive,
    ("node", "write_buffer_bytes"): _positive,
    ("node", "redial_min_s"): _positive,
    ("node", "redial_max_s"): _positive,
    ("whisper", "pow_formula"): _one_of("either", "legacy", "current"),
    ("whisper", "max_message_size"): _positive,
    ("whisper", "pool_max_bytes"): _positive,
    ("whisper", "known_per_peer"): _positive,
    ("whisper", "relay_backlog_bytes"): _positive,
    ("whisper", "forward_interval_s"): _positive,
    ("whisper", "expiry_sweep_s"): _positive,
    ("whisper", "rate_limit_packets_per_s"): _positive,
    ("waku", "rate_limit_packets_per_s"): _positive,
    ("archive", "url"): _archive_url,
    ("archive", "flush_interval_ms"): _positive,
    ("archive", "flush_max_envelopes"): _positive,
    ("archive", "synchronous"): _one_of("normal", "full"),
    ("archive", "index_interval_s"): _not_negative,
    ("archive", "log_max_bytes"): _size,
    ("archive", "max_age"): _duration,
    ("archive", "max_bytes"): _size_or_share,
    ("archive", "min_free_disk"): _size,
    ("archive", "prune_interval_s"): _positive,
    ("archive", "clock_trust"): _one_of("auto", "always", "synced"),
    ("mailserver", "allowed_clients"): _client_keys,
    ("mailserver", "sync_from"): _enodes,
    ("mailserver", "bucket_burst"): _positive,
    ("mailserver", "max_concurrent_per_peer"): _positive,
    ("leds", "green"): _bcm_pin,
    ("leds", "amber"): _bcm_pin,
    ("leds", "red"): _bcm_pin,
    ("leds", "pair_button"): _bcm_pin,
    ("status", "metrics_listen"): _hostport,
    ("status", "page_listen"): _hostport,
    ("status", "pairing_minutes"): _positive,
}


# -- typed conversion -------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false", Path: "a path"}
    if tp in names:
        return names[tp]
    if typing.get_origin(tp) is list:
        return "a list of strings"
    return str(tp)


def _convert(tp: Any, value: Any) -> Any:
    """Check ``value`` against the field type ``tp``; return it converted (paths, floats)."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"must not be negative (got {value})")
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            if value < 0:
                raise ValueError(f"must not be negative (got {value})")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)  # max_bytes = 0
    elif tp is Path:
        if isinstance(value, str) and value:
            return Path(value)
    elif typing.get_origin(tp) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    else:
        return value
    raise ValueError(f"expected {_type_name(tp)}, got {type(value).__name__} {_short(value)}")


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def section_types(config: Config | None = None) -> dict[str, tuple[type, dict[str, Any]]]:
    """``{"node": (NodeConfig, {"listen": str, ...}), ...}`` from the dataclasses."""
    out: dict[str, tuple[type, dict[str, Any]]] = {}
    for f in dataclasses.fields(Config):
        cls = typing.get_type_hints(Config)[f.name]
        out[f.name] = (cls, typing.get_type_hints(cls))
    return out


# -- locating keys in the text --------------------------------------------------------------------

_HEADER_RE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]\s*(?:#.*)?$")
_ARRAY_HEADER_RE = re.compile(r"^\s*\[\[\s*([^\[\]]+?)\s*\]\]")
_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')"""
_KEY_RE = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=")


def _split_dotted(text: str) -> list[str]:
    return [p.strip().strip("\"'") for p in re.findall(r"""[A-Za-z0-9_-]+|"[^"]*"|'[^']*'""", text)]


class _LineIndex:
    """Maps table and key paths to the first line that defines them (1-based)."""

    def __init__(self, text: str) -> None:
        self.tables: dict[tuple[str, ...], int] = {}
        self.keys: dict[tuple[str, ...], int] = {}
        table: tuple[str, ...] = ()
        depth = 0  # open brackets of a multi-line array: lines inside it define no keys
        for lineno, line in enumerate(text.splitlines(), start=1):
            code = re.sub(r"""("[^"]*"|'[^']*')""", '""', line).split("#", 1)[0]
            if depth > 0:
                depth = max(0, depth + code.count("[") - code.count("]"))
                continue
            if (m := _ARRAY_HEADER_RE.match(line)) or (m := _HEADER_RE.match(line)):
                table = tuple(_split_dotted(m.group(1)))
                self.tables.setdefault(table, lineno)
            elif m := _KEY_RE.match(line):
                path = table + tuple(_split_dotted(m.group(1)))
                self.keys.setdefault(path, lineno)
                for i in range(len(table) + 1, len(path)):
                    self.tables.setdefault(path[:i], lineno)
                value = code.split("=", 1)[1] if "=" in code else ""
                depth = max(0, value.count("[") - value.count("]"))

    def line(self, *path: str) -> int:
        return self.keys.get(path) or self.tables.get(path) or 1


# -- loading --------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedConfig:
    config: Config
    path: Path | None  # None = built-in defaults
    explicit: set[tuple[str, str]]  # (section, key) pairs the file set
    problem: str | None = None  # set by load_config_leniently: why the file on disk was not used


def parse_config_text(text: str, source: str) -> tuple[Config, set[tuple[str, str]]]:
    """Parse TOML text into a Config. Raise ConfigError(``source:line: reason``)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
        line = m.group(1) if m else "1"
        reason = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", msg)
        raise ConfigError(f"{source}:{line}: TOML syntax error: {reason}") from None
    index = _LineIndex(text)
    config = Config()
    explicit: set[tuple[str, str]] = set()
    sections = section_types()
    for section, body in data.items():
        if section not in sections:
            known = ", ".join(f"[{s}]" for s in sections)
            raise ConfigError(f"{source}:{index.line(section)}: unknown section [{section}] (known: {known})")
        if not isinstance(body, dict):
            raise ConfigError(f"{source}:{index.line(section)}: {section} must be a table [{section}]")
        _, fields = sections[section]
        target = getattr(config, section)
        for key, value in body.items():
            line = index.line(section, key)
            if key not in fields:
                raise ConfigError(
                    f"{source}:{line}: unknown key {key!r} in [{section}]{_suggest(key, fields)}"
                )
            try:
                converted = _convert(fields[key], value)
                check = CHECKS.get((section, key))
                if check is not None:
                    check(converted)
            except ValueError as exc:
                raise ConfigError(f"{source}:{line}: [{section}] {key}: {exc}") from None
            setattr(target, key, converted)
            explicit.add((section, key))
    _check_whole(config, source, index)
    return config, explicit


def _check_whole(config: Config, source: str, index: _LineIndex) -> None:
    leds = config.leds
    pins = [(name, getattr(leds, name)) for name in ("green", "amber", "red", "pair_button")]
    seen: dict[int, str] = {}
    for name, pin in pins:
        if pin and pin in seen:
            line = index.line("leds", name)
            raise ConfigError(f"{source}:{line}: [leds] {name}: BCM {pin} is already used by {seen[pin]}")
        if pin:
            seen[pin] = name
    if not config.whisper.enabled and not config.waku.enabled:
        line = index.line("waku", "enabled")
        raise ConfigError(f"{source}:{line}: [whisper] enabled and [waku] enabled are both false: "
                          "pimail would speak no protocol")
    if config.node.redial_max_s < config.node.redial_min_s:
        line = index.line("node", "redial_max_s")
        raise ConfigError(f"{source}:{line}: [node] redial_max_s must not be below redial_min_s")


def _suggest(key: str, fields: Iterable[str]) -> str:
    import difflib

    close = difflib.get_close_matches(key, list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def find_config(config_path: Path | None, data_dir: Path | None) -> Path | None:
    """Where the config comes from (see module docstring); None = built-in defaults."""
    if config_path is not None:
        return config_path
    candidates = [(data_dir if data_dir is not None else default_data_dir()) / CONFIG_NAME]
    if os.environ.get("CONFIGURATION_DIRECTORY"):
        candidates.append(Path(os.environ["CONFIGURATION_DIRECTORY"].split(":")[0]) / CONFIG_NAME)
    candidates.append(INSTALLED_CONFIG)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None) -> LoadedConfig:
    """Load ``path`` (None = defaults). Raise ConfigError with file, line and reason."""
    if path is None:
        config = Config()
        _default_data_dir(config, set())
        return LoadedConfig(config, None, set())
    try:
        raw = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (create one with `pimail init`)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: config file is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: the config file is not UTF-8 text") from None
    config, explicit = parse_config_text(text, str(path))
    _default_data_dir(config, explicit, path)
    return LoadedConfig(config, path, explicit)


def load_config_leniently(path: Path | None) -> LoadedConfig:
    """For read-only commands (``status``, ``doctor``, ``pair --status``, ``archive stats``): a bad
    file on disk must not stop them — a running node keeps the settings it last loaded. On a
    ConfigError this returns the built-in defaults (with the file's ``data_dir`` and archive ``url``
    when those two can still be read) and the error in ``problem``."""
    try:
        return load_config(path)
    except ConfigError as exc:
        config = Config()
        _default_data_dir(config, set(), path)
        explicit: set[tuple[str, str]] = set()
        raw = _raw_table(path)
        node, archive = raw.get("node"), raw.get("archive")
        if isinstance(node, dict) and isinstance(node.get("data_dir"), str) and node["data_dir"]:
            config.node.data_dir = Path(node["data_dir"])
            explicit.add(("node", "data_dir"))
        if isinstance(archive, dict) and isinstance(archive.get("url"), str):
            with contextlib.suppress(ValueError):
                _archive_url(archive["url"])
                config.archive.url = archive["url"]
                explicit.add(("archive", "url"))
        return LoadedConfig(config, path, explicit, problem=str(exc))


def _raw_table(path: Path | None) -> dict[str, Any]:
    """The file's TOML as plain data, or {} when it cannot be read or parsed."""
    if path is None:
        return {}
    try:
        return tomllib.loads(path.read_bytes()[:MAX_CONFIG_BYTES].decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
def load_node_config(config_path: Path | None, data_dir: Path | None) -> Config:
    """The config the daemon would use (``config_path``, else the search of ``find_config``), with
    ``data_dir`` applied: what the commands that open the node's files (archive, enode, pair, sync)
    read."""
    config = load_config(find_config(config_path, data_dir)).config
    apply_overrides(config, data_dir=data_dir)
    return config


def load(path: Path) -> Config:
    """Just the config tree from ``path`` (ConfigError on bad input)."""
    return load_config(path).config


INSTALLED_DATA_DIR = Path("/var/lib/pimail")  # systemd StateDirectory=pimail


def default_data_dir() -> Path:
    """The data dir when none is given: systemd's state directory for the service, else ``./var``."""
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        return Path(state.split(":")[0])
    return Config().node.data_dir


def _default_data_dir(config: Config, explicit: set[tuple[str, str]], path: Path | None = None) -> None:
    """Without ``data_dir`` in the file: systemd's state directory for the service, and the same
    directory for the operator's `pimail status`/`doctor` reading the installed config."""
    if ("node", "data_dir") in explicit:
        return
    state = os.environ.get("STATE_DIRECTORY")
    if state:
        config.node.data_dir = Path(state.split(":")[0])
    elif path is not None and path == INSTALLED_CONFIG:
        config.node.data_dir = INSTALLED_DATA_DIR


def apply_overrides(
    config: Config,
    *,
    listen: str | None = None,
    data_dir: Path | None = None,
    static_peers: Sequence[str] | None = None,
    archive_url: str | None = None,
    metrics_listen: str | None = None,
    page_listen: str | None = None,
    no_metrics: bool = False,
    no_leds: bool = False,
    no_page: bool = False,
    clock_trust: str | None = None,
    bootnodes: Sequence[str] | None = None,
    no_discovery: bool = False,
) -> None:
    """Apply command-line overrides; bad values raise ConfigError naming the option."""
    option = ""
    try:
        if listen is not None:
            option = "--listen"
            parse_hostport(listen)
            config.node.listen = listen
        if data_dir is not None:
            config.node.data_dir = data_dir
        if static_peers:
            option = "--static-peer"
            _enodes(list(static_peers))
            config.node.static_peers = list(static_peers)
        if archive_url is not None:
            option = "--archive-url"
            _archive_url(archive_url)
            config.archive.url = archive_url
        if metrics_listen is not None:
            option = "--metrics-listen"
            parse_hostport(metrics_listen)
            config.status.metrics_listen = metrics_listen
        if page_listen is not None:
            option = "--page-listen"
            parse_hostport(page_listen)
            config.status.page_listen = page_listen
        if clock_trust is not None:
            option = "--clock-trust"
            _one_of("auto", "always", "synced")(clock_trust)
            config.archive.clock_trust = clock_trust
        if bootnodes:
            option = "--bootnode"
            _enodes(list(bootnodes))
            config.node.bootnodes = list(bootnodes)
    except ValueError as exc:
        raise ConfigError(f"command line: {option}: {exc}") from None
    if no_metrics:
        config.status.metrics = False
    if no_leds:
        config.leds.enabled = False
    if no_page:
        config.status.page = False
    if no_discovery:
        config.node.discovery = False


# -- writing (pimail init) ------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def render_config(config: Config, header: str = "") -> str:
    """Every key of ``config`` as TOML (what ``pimail init`` writes); loads back to the same tree."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section in section_types():
        lines.append("")
        lines.append(f"[{section}]")
        obj = getattr(config, section)
        for f in dataclasses.fields(obj):
            lines.append(f"{f.name} = {_toml_value(getattr(obj, f.name))}")
    return "\n".join(lines).lstrip("\n") + "\n"


def refuse_file_as_data_dir(data_dir: Path) -> None:
    """UserError (exit 2) when a file stands where the data directory should be."""
    if data_dir.exists() and not data_dir.is_dir():
        raise UserError(f"the data directory {data_dir} is a file, not a directory: move the file "
                        "away or choose another --data-dir")


def make_data_dir(data_dir: Path) -> None:
    """Create the data directory (mode 0750) unless it exists; one line saying why it cannot be one
    (a file in its place is a setting to fix, exit 2; a permission or disk problem, exit 1)."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o750)
    except FileExistsError:
        refuse_file_as_data_dir(data_dir)
        raise
    except NotADirectoryError:
        raise UserError(f"the data directory {data_dir} cannot be made: part of that path is a file, "
                        "not a directory") from None
    except OSError as exc:
        raise RuntimeFailure(f"cannot create the data directory {data_dir}: {exc.strerror or exc}") from None
