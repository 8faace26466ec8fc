"""secp256k1 node keys, signatures, ECDH and enode URLs."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

import coincurve

from pimail.crypto.keccak import keccak256

PUBKEY_LEN = 64  # X||Y without the 0x04 prefix (devp2p wire form)
SIGNATURE_LEN = 65  # R||S||V


class KeyError_(ValueError):
    """A key, signature or enode URL could not be used."""


def pubkey_from_private(private: bytes) -> bytes:
    """64-byte public key for a 32-byte private key."""
    return coincurve.PrivateKey(private).public_key.format(compressed=False)[1:]


def import_pubkey(pub: bytes) -> coincurve.PublicKey:
    """Parse a 64-byte (or 65-byte 0x04-prefixed) public key; raise KeyError_ if not on the curve."""
    if len(pub) == 64:
        pub = b"\x04" + pub
    if len(pub) != 65 or pub[0] != 4:
        raise KeyError_(f"public key must be 64 bytes (got {len(pub)})")
    try:
        return coincurve.PublicKey(pub)
    except ValueError as exc:
        raise KeyError_("public key is not a point on secp256k1") from exc


def ecdh_x(private: bytes, remote_pub: bytes) -> bytes:
    """X coordinate of private·remote_pub, left-padded to 32 bytes (RLPx/ECIES ECDH)."""
    point = import_pubkey(remote_pub).multiply(private)
    return point.format(compressed=False)[1:33]


def sign(private: bytes, msg_hash: bytes) -> bytes:
    """65-byte recoverable signature R||S||V with V in {0, 1} over a 32-byte hash."""
    if len(msg_hash) != 32:
        raise KeyError_("can only sign a 32-byte hash")
    return coincurve.PrivateKey(private).sign_recoverable(msg_hash, hasher=None)


def recover(msg_hash: bytes, signature: bytes) -> bytes:
    """Recover the 64-byte public key from a signature (V 0/1, or 27/28 accepted)."""
    if len(signature) != SIGNATURE_LEN:
        raise KeyError_(f"signature must be 65 bytes (got {len(signature)})")
    v = signature[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1, 2, 3):
        raise KeyError_(f"bad signature recovery id {signature[64]}")
    try:
        pub = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes([v]), msg_hash, hasher=None
        )
    except ValueError as exc:
        raise KeyError_("signature does not recover a public key") from exc
    return pub.format(compressed=False)[1:]


@dataclass(frozen=True)
class NodeKey:
    """A node's long-term secp256k1 identity."""

    private: bytes

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(coincurve.PrivateKey().secret)

    @property
    def public(self) -> bytes:
        return pubkey_from_private(self.private)

    @property
    def node_id(self) -> bytes:
        """geth's enode.ID: keccak256 of the 64-byte public key."""
        return keccak256(self.public)

    def sign(self, msg_hash: bytes) -> bytes:
        return sign(self.private, msg_hash)

    @classmethod
    def load(cls, path: Path) -> NodeKey:
        text = path.read_text().strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise KeyError_(f"{path}: node key is not hex") from exc
        if len(raw) != 32:
            raise KeyError_(f"{path}: node key must be 32 bytes of hex (got {len(raw)})")
        try:
            coincurve.PrivateKey(raw)
        except ValueError as exc:
            raise KeyError_(f"{path}: not a valid secp256k1 private key") from exc
        return cls(raw)

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKey:
        """Load the key at ``path`` or create it (mode 0600) on first start."""
        if path.exists():
            return cls.load(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        key = cls.generate()
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key.private.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return key


_ENODE_RE = re.compile(r"^enode://([0-9a-fA-F]+)(?::([^@]*))?(?:@(.+))?$")


@dataclass(frozen=True)
class Enode:
    """An ``enode://<128 hex>[:<password>]@host:port`` URL.

    The ``password`` part is Status' way of carrying a mailserver password in the URL.
    """

    pubkey: bytes
    host: str | None = None
    port: int | None = None
    password: str | None = None

    @property
    def node_id(self) -> bytes:
        return keccak256(self.pubkey)

    def url(self, *, with_password: bool = False) -> str:
        pw = f":{self.password}" if with_password and self.password else ""
        if self.host is None or self.port is None:
            return f"enode://{self.pubkey.hex()}{pw}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"enode://{self.pubkey.hex()}{pw}@{host}:{self.port}"

    def __str__(self) -> str:
        return self.url()

    @classmethod
    def parse(cls, text: str) -> Enode:
        """Parse an enode URL; raise KeyError_ with a one-line reason on bad input."""
        text = text.strip()
        m = _ENODE_RE.match(text)
        if not m:
            raise KeyError_(f"not an enode URL (expected enode://<128 hex>@host:port): {text[:80]!r}")
        hexkey, password, hostport = m.group(1), m.group(2), m.group(3)
        if len(hexkey) != 128:
            raise KeyError_(f"enode public key must be 128 hex characters (got {len(hexkey)})")
        pub = bytes.fromhex(hexkey)
        import_pubkey(pub)
        if hostport is None:
            return cls(pub, password=password or None)
        hostport = hostport.split("?", 1)[0]
        if hostport.startswith("["):
            host, _, rest = hostport[1:].partition("]")
            port_s = rest.lstrip(":")
        else:
            host, sep, port_s = hostport.rpartition(":")
            if not sep:
                raise KeyError_(f"enode URL lacks a port: {text[:80]!r}")
        try:
            port = int(port_s)
        except ValueError as exc:
            raise KeyError_(f"enode port is not a number: {port_s!r}") from exc
        if not 0 < port < 65536:
            raise KeyError_(f"enode port out of range: {port}")
        if not host:
            raise KeyError_("enode URL has an empty host")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if not re.match(r"^[A-Za-z0-9.-]+$", host):
                raise KeyError_(f"enode host is neither an IP address nor a hostname: {host!r}") from None
        return cls(pub, host, port, password or None)
