"""EIP-778 records: the EIP's example, our own records, and records that must be refused."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from pimail import rlpcodec
from pimail.crypto.keys import NodeKey
from pimail.discovery.enr import ENRError, Record


def test_eip778_example_record(vectors: Any) -> None:
    v = vectors("enr_eip778.json")
    assert "eip-778" in v["source"]
    record = Record.from_text(v["text"])
    assert record.seq == v["seq"]
    assert record.ip == v["ip"] and record.udp == v["udp"] and record.tcp == 0
    assert record.node_id.hex() == v["node_id"]
    assert record.signature.hex() == v["signature"]
    assert record.get(b"secp256k1") == bytes.fromhex(v["secp256k1"])
    assert record.text() == v["text"]
    # signing the same content with the same key gives the same record (RFC 6979 nonces)
    again = Record.create(bytes.fromhex(v["private_key"]), 1, ip="127.0.0.1", udp=30303)
    assert again.text() == v["text"]


def test_own_record_round_trip() -> None:
    key = NodeKey.generate()
    record = Record.create(key.private, 42, ip="127.0.0.1", tcp=30303, udp=30304)
    back = Record.from_text(record.text())
    assert back == record
    assert (back.seq, back.ip, back.tcp, back.udp, back.pubkey) == (42, "127.0.0.1", 30303, 30304, key.public)
    assert Record.decode(record.encode()).node_id == key.node_id


def _raw(text: str) -> bytes:
    body = text[4:]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def test_tampered_records_are_refused(vectors: Any) -> None:
    text = vectors("enr_eip778.json")["text"]
    items = rlpcodec.decode(_raw(text))
    assert isinstance(items, list)
    cases: dict[str, list[Any]] = {
        "seq changed": [items[0], b"\x02", *items[2:]],
        "signature changed": [bytes([items[0][0] ^ 1]) + items[0][1:], *items[1:]],  # type: ignore[index]
        "unsorted keys": [items[0], items[1], *items[4:6], *items[2:4], *items[6:]],
        "odd pair count": items[:-1],
        "no v4 id": [items[0], items[1], b"id", b"v5", *items[4:]],
    }
    for name, fields in cases.items():
        with pytest.raises(ENRError):
            Record.decode(rlpcodec.encode(fields))
        assert name
    with pytest.raises(ENRError):
        Record.decode(rlpcodec.encode([b"\x00" * 64, 1, b"id", b"v4", b"z", b"\x00" * 300]))
    with pytest.raises(ENRError):
        Record.from_text("enode://abc")
    with pytest.raises(ENRError):
        Record.from_text("enr:!!!")
    with pytest.raises(ENRError):
        Record.decode(b"\xc1")
