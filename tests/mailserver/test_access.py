"""allowed_clients: empty ⇒ open; otherwise only listed node keys; bad entries are config errors."""

from __future__ import annotations

import pytest

from pimail.crypto.keys import NodeKey
from pimail.errors import UserError
from pimail.mailserver.access import StaticAccessPolicy, parse_client_key


def test_open_when_empty() -> None:
    p = StaticAccessPolicy([])
    assert p.open and p.admit(NodeKey.generate().public)


def test_allowlist_forms() -> None:
    a, b, c = (NodeKey.generate() for _ in range(3))
    p = StaticAccessPolicy([a.public.hex(), "0x04" + b.public.hex().upper(), f"enode://{c.public.hex()}@127.0.0.1:30303"])
    assert not p.open
    assert p.admit(a.public) and p.admit(b.public) and p.admit(c.public)
    assert not p.admit(NodeKey.generate().public)


@pytest.mark.parametrize("bad", ["", "zz", "ab" * 10, "enode://1234@1.2.3.4:1"])
def test_bad_entries(bad: str) -> None:
    with pytest.raises(UserError, match="allowed_clients"):
        parse_client_key(bad)
