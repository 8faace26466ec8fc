"""The image's mDNS name keeper (image/rootfs/usr/lib/pimail-image/mdnsname.py): pimail.local while
no other box has it, else a stable pimail-<suffix>.local. The QEMU boot test stages both conflicts
against the real avahi-daemon; here the decisions and the busctl protocol are checked on their own."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.image.conftest import MDNSNAME as mn

DEBIAN_HOSTS = (
    "127.0.0.1\tlocalhost\n127.0.1.1\tpimail\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
)


def test_suffix_from_the_board_serial() -> None:
    # The device tree's serial-number: 16 hex digits and a NUL.
    assert mn.suffix_from_serial("10000000a1b23f2a\0") == "3f2a"
    assert mn.suffix_from_serial("00000000DEADBEEF\n") == "beef"
    assert mn.suffix_from_serial("0000000000000000\0") is None  # unset
    assert mn.suffix_from_serial("not-a-serial") is None
    assert mn.suffix_from_serial("") is None


def test_suffix_from_machine_id_is_stable_and_hides_the_id() -> None:
    mid = "0123456789abcdef0123456789abcdef"
    a = mn.suffix_from_machine_id(mid + "\n")
    assert a == mn.suffix_from_machine_id(mid.upper())
    assert a is not None and len(a) == 4 and a not in mid
    assert mn.suffix_from_machine_id("0123456789abcdef0123456789abcdee") != a
    assert mn.suffix_from_machine_id("") is None  # the image's empty machine-id


def test_serial_wins_over_machine_id(tmp_path: Path) -> None:
    serial, mid = tmp_path / "serial-number", tmp_path / "machine-id"
    mid.write_text("0123456789abcdef0123456789abcdef\n")
    assert mn.read_suffix(serial, mid) == mn.suffix_from_machine_id(mid.read_text())  # QEMU: no serial
    serial.write_bytes(b"10000000a1b23f2a\0")
    assert mn.read_suffix(serial, mid) == "3f2a"
    with pytest.raises(RuntimeError):
        mn.read_suffix(tmp_path / "none", tmp_path / "none")


def test_derived_name() -> None:
    assert mn.derived_name("pimail", "3f2a") == "pimail-3f2a"
    assert mn.derived_name("pimail-3f2a", "3f2a") == "pimail-3f2a"  # already derived
    long = mn.derived_name("x" * 63, "3f2a")
    assert len(long) == 63 and long.endswith("-3f2a")
    with pytest.raises(ValueError):
        mn.derived_name("pimail", "3F2A!")


@pytest.mark.parametrize(
    ("hostname", "avahi", "claimed_by", "action", "name"),
    [
        ("pimail", "pimail", None, "keep", "pimail"),  # unique: pimail.local stays
        ("pimail", "pimail-2", "192.168.1.20", "rename", "pimail-3f2a"),  # a second box has it
        ("pimail", "pimail-2", None, "reclaim", "pimail"),  # avahi conflicted with itself
        ("pimail-3f2a", "pimail-3f2a", None, "keep", "pimail-3f2a"),  # stays derived after a reboot
        ("pimail-3f2a", "pimail-3f2a-2", "192.168.1.21", "keep", "pimail-3f2a-2"),  # same suffix: no loop
    ],
)
def test_decide(hostname: str, avahi: str, claimed_by: str | None, action: str, name: str) -> None:
    decision = mn.decide(hostname, avahi, claimed_by, "3f2a")
    assert (decision.action, decision.name) == (action, name)
    if claimed_by:
        assert claimed_by in decision.reason


def test_hosts_file_follows_the_name() -> None:
    out = mn.hosts_with_name(DEBIAN_HOSTS, "pimail", "pimail-3f2a")
    assert "127.0.1.1\tpimail-3f2a\n" in out
    assert "\tpimail\n" not in out and out.count("127.0.1.1") == 1
    assert "127.0.0.1\tlocalhost" in out and "ip6-loopback" in out
    added = mn.hosts_with_name("127.0.0.1 localhost\n", "pimail", "pimail-3f2a")
    assert added.splitlines() == ["127.0.0.1 localhost", "127.0.1.1\tpimail-3f2a"]


def test_parse_busctl_replies() -> None:
    assert mn.parse_busctl('s "pimail-2"\n') == ["pimail-2"]
    assert mn.parse_busctl("i 2\n") == [2]
    reply = 'iisisu 2 0 "pimail.local" 0 "10.0.2.99" 4\n'
    assert mn.parse_busctl(reply) == [2, 0, "pimail.local", 0, "10.0.2.99", 4]
    with pytest.raises(ValueError):
        mn.parse_busctl("ss onlyone")


class FakeAvahi:
    """busctl's side of avahi-daemon's D-Bus API, as the daemon answers it (the edge of the box)."""

    def __init__(self, name: str, state: int = 2, others: dict[str, str] | None = None) -> None:
        self.name, self.state, self.others = name, state, others or {}
        self.calls: list[str] = []

    def __call__(self, args: Sequence[str]) -> str:
        assert list(args[:5]) == ["busctl", "--system", "--timeout=15", "call", "--"]
        assert list(args[5:8]) == mn.AVAHI
        method, rest = args[8], list(args[9:])
        self.calls.append(method)
        if method == "GetHostName":
            return f's "{self.name}"\n'
        if method == "GetState":
            return f"i {self.state}\n"
        if method == "SetHostName":
            assert rest[0] == "s"
            self.name = rest[1]
            return "\n"
        if method == "ResolveHostName":
            fqdn = rest[3]
            if fqdn not in self.others:
                raise subprocess.CalledProcessError(1, args, "", "Call failed: Timeout reached")
            return f'iisisu 2 0 "{fqdn}" 0 "{self.others[fqdn]}" 0\n'
        raise AssertionError(method)


def test_run_once_reclaims_when_nobody_else_has_the_name(tmp_path: Path) -> None:
    fake = FakeAvahi("pimail-2")
    decision = mn.run_once(mn.Avahi(fake), "pimail", "3f2a", lambda: {"10.0.2.15"}, tmp_path / "hosts")
    assert decision.action == "reclaim" and fake.name == "pimail"


def test_run_once_counts_our_own_address_as_nobody_else(tmp_path: Path) -> None:
    # avahi's stale record of this very box (e.g. seen back through a second interface)
    fake = FakeAvahi("pimail-2", others={"pimail.local": "fe80::1%eth0"})
    decision = mn.run_once(mn.Avahi(fake), "pimail", "3f2a", lambda: {"fe80::1", "10.0.2.15"}, tmp_path / "h")
    assert decision.action == "reclaim"


def test_run_once_waits_while_avahi_is_probing(tmp_path: Path) -> None:
    fake = FakeAvahi("pimail-2", state=1, others={"pimail.local": "192.168.1.20"})
    decision = mn.run_once(mn.Avahi(fake), "pimail", "3f2a", lambda: set(), tmp_path / "hosts")
    assert decision.action == "keep" and "ResolveHostName" not in fake.calls and fake.name == "pimail-2"


def test_run_once_does_nothing_when_all_is_well(tmp_path: Path) -> None:
    fake = FakeAvahi("pimail")
    assert mn.run_once(mn.Avahi(fake), "pimail", "3f2a", lambda: set(), tmp_path / "hosts").action == "keep"
    assert fake.calls == ["GetHostName"]


def test_main_prints_the_derived_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    serial = tmp_path / "serial-number"
    serial.write_bytes(b"10000000a1b23f2a\0")
    assert mn.main(["--serial", str(serial), "--machine-id", str(tmp_path / "none"), "--print-derived"]) == 0
    assert capsys.readouterr().out.strip().endswith("-3f2a")
