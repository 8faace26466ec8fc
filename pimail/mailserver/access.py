"""Who may ask this mailserver for history.

``AccessPolicy`` is the seam: the daemon plugs in the pairing-aware policy from
``pimail.appliance.pairing``; ``StaticAccessPolicy`` is the plain ``allowed_clients`` list.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from pimail.crypto.keys import PUBKEY_LEN, Enode, KeyError_
from pimail.errors import UserError


class AccessPolicy(Protocol):
    def admit(self, pubkey: bytes) -> bool:
        """True if the peer with this 64-byte node public key may receive history."""


def parse_client_key(text: str) -> bytes:
    """A node public key from config: 128 hex chars (optionally ``0x``/``04``-prefixed) or an enode URL."""
    t = text.strip()
    if t.startswith("enode://"):
        try:
            return Enode.parse(t).pubkey
        except KeyError_ as exc:
            raise UserError(f"allowed_clients: {exc}") from exc
    if t[:2].lower() == "0x":
        t = t[2:]
    if len(t) == 130 and t[:2] == "04":
        t = t[2:]
    try:
        raw = bytes.fromhex(t)
    except ValueError:
        raise UserError(f"allowed_clients: not a hex node key: {text[:40]!r}") from None
    if len(raw) != PUBKEY_LEN:
        raise UserError(f"allowed_clients: a node key is 128 hex characters (got {len(raw)} bytes)")
    return raw


class StaticAccessPolicy:
    """``allowed_clients`` from the config: empty ⇒ open mailserver (as status-go), else only those."""

    def __init__(self, allowed_clients: Iterable[str] = ()) -> None:
        self.allowed: frozenset[bytes] = frozenset(parse_client_key(k) for k in allowed_clients)

    @property
    def open(self) -> bool:
        return not self.allowed

    def admit(self, pubkey: bytes) -> bool:
        return not self.allowed or pubkey in self.allowed


class SiblingPolicy:
    """Who may pull our archive with sync (123): the siblings we sync from and trusted peers."""

    def __init__(self, enodes: Iterable[str]) -> None:
        keys = set()
        for url in enodes:
            try:
                keys.add(Enode.parse(url).pubkey)
            except KeyError_ as exc:
                raise UserError(f"sync peer: {exc}") from exc
        self.keys: frozenset[bytes] = frozenset(keys)

    def admit(self, pubkey: bytes) -> bool:
        return pubkey in self.keys
