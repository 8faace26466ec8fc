"""The config layer's value parsers: sizes, durations, host:port and listen addresses."""

from __future__ import annotations

import pytest

from pimail.config import (
    parse_duration,
    parse_hostport,
    parse_listen,
    parse_size,
)


def test_unit_parsers() -> None:
    assert parse_size("256MB") == 256_000_000
    assert parse_size("1GiB") == 1024**3
    assert parse_size("0") == 0 and parse_size(42) == 42
    assert parse_duration("30d") == 30 * 86400 and parse_duration("90s") == 90
    assert parse_duration("2w") == 14 * 86400
    assert parse_hostport("[::1]:30303") == ("::1", 30303)
    for bad in ("-1MB", "1XB", "", "MB"):
        with pytest.raises(ValueError):
            parse_size(bad)
    with pytest.raises(ValueError):
        parse_size(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_duration("3 fortnights")


def test_listen_addresses() -> None:
    assert parse_listen("0.0.0.0:30303") == ("0.0.0.0", 30303)
    assert parse_listen(" [::]:0 ") == ("::", 0)
    assert parse_listen(":30303") == ("0.0.0.0", 30303)  # an empty host is every IPv4 address
    for bad, why in (("30303", "lacks a port"), ("[::1]30303", r"is not \[host\]:port"),
                     ("host:port", "not a number"), ("host:65536", "out of range")):
        with pytest.raises(ValueError, match=why):
            parse_listen(bad)
