"""Ethereum Node Records (EIP-778) with the "v4" identity scheme, and their ``enr:`` text form.

A record is ``rlp([signature, seq, k1, v1, k2, v2, ...])`` with keys sorted and unique, at most
300 bytes. The "v4" scheme signs ``keccak256(rlp([seq, k1, v1, ...]))`` with secp256k1 (64-byte
R||S) and names the node by ``keccak256`` of its uncompressed public key. The text form is
``enr:`` + URL-safe base64 without padding.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
from dataclasses import dataclass

from pimail import rlpcodec
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import (
    KeyError_,
    compress_pubkey,
    decompress_pubkey,
    pubkey_from_private,
    sign,
    verify_compact,
)

MAX_RECORD_SIZE = 300  # bytes; EIP-778 "The maximum encoded size of a node record is 300 bytes"
TEXT_PREFIX = "enr:"


class ENRError(ValueError):
    """A record that cannot be used: malformed, too large, unsorted, unsigned or wrongly signed."""


@dataclass(frozen=True)
class Record:
    """A signed node record; ``pairs`` are (key, value) in key order, values as decoded RLP items."""

    seq: int
    pairs: tuple[tuple[bytes, rlpcodec.Item], ...]
    signature: bytes

    # -- building -----------------------------------------------------------------------------------
    @classmethod
    def create(cls, private_key: bytes, seq: int, *, ip: str = "", tcp: int = 0, udp: int = 0) -> Record:
        """Sign a v4 record for ``private_key`` (``ip``/``tcp``/``udp`` left out when empty/0)."""
        pairs: dict[bytes, rlpcodec.Item] = {
            b"id": b"v4",
            b"secp256k1": compress_pubkey(pubkey_from_private(private_key)),
        }
        if ip:
            addr = ipaddress.ip_address(ip)
            pairs[b"ip" if addr.version == 4 else b"ip6"] = addr.packed
        if tcp:
            pairs[b"tcp"] = _uint_bytes(tcp)
        if udp:
            pairs[b"udp"] = _uint_bytes(udp)
        ordered = tuple(sorted(pairs.items()))
        digest = keccak256(_content(seq, ordered))
        signature = sign(private_key, digest)[:64]
        record = cls(seq, ordered, signature)
        if len(record.encode()) > MAX_RECORD_SIZE:
            raise ENRError("record exceeds 300 bytes")
        return record

    # -- wire and text forms ------------------------------------------------------------------------
    def encode(self) -> bytes:
        items: list[object] = [self.signature, self.seq]
        for key, value in self.pairs:
            items.extend((key, value))
        return rlpcodec.encode(items)

    def text(self) -> str:
        return TEXT_PREFIX + base64.urlsafe_b64encode(self.encode()).rstrip(b"=").decode()

    def __str__(self) -> str:
        return self.text()

    @classmethod
    def decode(cls, raw: bytes) -> Record:
        """Parse and verify; raise ``ENRError`` with a one-line reason."""
        if len(raw) > MAX_RECORD_SIZE:
            raise ENRError(f"record is {len(raw)} bytes (max {MAX_RECORD_SIZE})")
        try:
            items = rlpcodec.decode(raw)
        except rlpcodec.RlpError as exc:
            raise ENRError(f"record is not valid RLP: {exc}") from None
        if not isinstance(items, list) or len(items) < 2 or len(items) % 2:
            raise ENRError("record must be a list [signature, seq, key, value, ...]")
        signature, seq_raw = items[0], items[1]
        if not isinstance(signature, bytes) or not isinstance(seq_raw, bytes):
            raise ENRError("record signature and seq must be strings")
        if len(seq_raw) > 8 or seq_raw[:1] == b"\x00":
            raise ENRError("record seq is not a canonical 64-bit integer")
        pairs: list[tuple[bytes, rlpcodec.Item]] = []
        for i in range(2, len(items), 2):
            key = items[i]
            if not isinstance(key, bytes):
                raise ENRError("record key is a list")
            if pairs and key <= pairs[-1][0]:
                raise ENRError("record keys are not sorted and unique")
            pairs.append((key, items[i + 1]))
        record = cls(int.from_bytes(seq_raw, "big"), tuple(pairs), signature)
        record.verify()
        return record

    @classmethod
    def from_text(cls, text: str) -> Record:
        text = text.strip()
        if not text.startswith(TEXT_PREFIX):
            raise ENRError(f"not an ENR (expected enr:...): {text[:40]!r}")
        body = text[len(TEXT_PREFIX):]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise ENRError("ENR text is not URL-safe base64") from None
        return cls.decode(raw)

    # -- the v4 identity scheme ---------------------------------------------------------------------
    def get(self, key: bytes) -> rlpcodec.Item | None:
        for k, v in self.pairs:
            if k == key:
                return v
        return None

    def verify(self) -> None:
        if self.get(b"id") != b"v4":
            raise ENRError("record identity scheme is not v4")
        pub = self.pubkey
        if not verify_compact(pub, keccak256(_content(self.seq, self.pairs)), self.signature):
            raise ENRError("record signature does not verify")

    @property
    def pubkey(self) -> bytes:
        """The 64-byte public key (from the compressed ``secp256k1`` value)."""
        value = self.get(b"secp256k1")
        if not isinstance(value, bytes):
            raise ENRError("record has no secp256k1 key")
        try:
            return decompress_pubkey(value)
        except KeyError_ as exc:
            raise ENRError(str(exc)) from None

    @property
    def node_id(self) -> bytes:
        return keccak256(self.pubkey)

    @property
    def ip(self) -> str:
        value = self.get(b"ip")
        if isinstance(value, bytes) and len(value) == 4:
            return str(ipaddress.ip_address(value))
        return ""

    @property
    def tcp(self) -> int:
        return _uint_value(self.get(b"tcp"))

    @property
    def udp(self) -> int:
        return _uint_value(self.get(b"udp"))


def _content(seq: int, pairs: tuple[tuple[bytes, rlpcodec.Item], ...]) -> bytes:
    items: list[object] = [seq]
    for key, value in pairs:
        items.extend((key, value))
    return rlpcodec.encode(items)


def _uint_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def _uint_value(value: rlpcodec.Item | None) -> int:
    if isinstance(value, bytes) and 0 < len(value) <= 2:
        return int.from_bytes(value, "big")
    return 0
