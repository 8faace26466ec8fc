"""Node keys, enode URLs and ECIES (pimail.crypto)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pimail.crypto import ecies
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import Enode, KeyError_, NodeKey, import_pubkey, recover, sign

PUB = "ca634cae0d49acb401d8a4c6b6fe8c55b70d115bf400769cc1400f3258cd31387574077f301b421bc84df7266c44e9e6d569fc56be00812904767bf5ccd1fc7f"  # noqa: E501


def test_node_key_created_with_mode_0600_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "nodekey"
    key = NodeKey.load_or_create(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = NodeKey.load_or_create(path)
    assert again == key and again.public == key.public
    assert len(key.public) == 64 and key.node_id == keccak256(key.public)


@pytest.mark.parametrize(("content", "message"), [
    ("zz", "not hex"), ("abcd", "32 bytes"), ("00" * 32, "not a valid"), ("ff" * 32, "not a valid")])
def test_bad_node_key_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "nodekey"
    path.write_text(content)
    with pytest.raises(KeyError_, match=message):
        NodeKey.load_or_create(path)


def test_enode_parse_and_format() -> None:
    e = Enode.parse(f"enode://{PUB}@203.0.113.1:443")
    assert (e.host, e.port, e.password) == ("203.0.113.1", 443, None)
    assert e.url() == f"enode://{PUB}@203.0.113.1:443"
    v6 = Enode.parse(f"enode://{PUB}@[::1]:30303?discport=0")
    assert (v6.host, v6.port) == ("::1", 30303) and v6.url() == f"enode://{PUB}@[::1]:30303"
    pw = Enode.parse(f"enode://{PUB}:status-offline-inbox@node.example.org:30303")
    assert pw.password == "status-offline-inbox" and pw.host == "node.example.org"
    assert pw.url(with_password=True).startswith(f"enode://{PUB}:status-offline-inbox@")
    bare = Enode.parse(f"enode://{PUB}")
    assert bare.host is None and bare.url() == f"enode://{PUB}"


@pytest.mark.parametrize(("url", "message"), [
    ("http://example.org", "not an enode URL"),
    (f"enode://{PUB[:-2]}@1.2.3.4:30303", "128 hex"),
    (f"enode://{'00' * 64}@1.2.3.4:30303", "not a point"),
    (f"enode://{PUB}@1.2.3.4", "lacks a port"),
    (f"enode://{PUB}@1.2.3.4:port", "not a number"),
    (f"enode://{PUB}@1.2.3.4:70000", "out of range"),
    (f"enode://{PUB}@:30303", "empty host"),
    (f"enode://{PUB}@bad_host!:30303", "neither an IP"),
])
def test_enode_parse_errors(url: str, message: str) -> None:
    with pytest.raises(KeyError_, match=message):
        Enode.parse(url)


def test_sign_recover_and_pubkey_import() -> None:
    key = NodeKey.generate()
    digest = keccak256(b"msg")
    sig = sign(key.private, digest)
    assert recover(digest, sig) == key.public
    assert recover(digest, sig[:64] + bytes([sig[64] + 27])) == key.public
    with pytest.raises(KeyError_):
        recover(digest, sig[:64])
    with pytest.raises(KeyError_):
        sign(key.private, b"short")
    with pytest.raises(KeyError_):
        import_pubkey(b"\x04" * 10)


def test_ecies_roundtrip_and_tamper() -> None:
    key = NodeKey.generate()
    blob = ecies.encrypt(key.public, b"hello", b"mac-data")
    assert len(blob) == 5 + ecies.OVERHEAD
    assert ecies.decrypt(key.private, blob, b"mac-data") == b"hello"
    with pytest.raises(ecies.EciesError):
        ecies.decrypt(key.private, blob, b"other")
    with pytest.raises(ecies.EciesError):
        ecies.decrypt(NodeKey.generate().private, blob, b"mac-data")
    with pytest.raises(ecies.EciesError):
        ecies.decrypt(key.private, blob[:50])
    with pytest.raises(ecies.EciesError):
        ecies.decrypt(key.private, b"\x05" + blob[1:], b"mac-data")
    with pytest.raises(ecies.EciesError):
        ecies.decrypt(key.private, b"\x04" + bytes(64) + blob[65:], b"mac-data")
