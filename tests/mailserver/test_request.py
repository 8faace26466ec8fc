"""Code-126 decoding and validation, against geth-generated request envelopes and built ones."""

from __future__ import annotations

from typing import Any

import pytest
import rlp

from pimail.archive.base import MAX_QUERY_LIMIT
from pimail.crypto.keys import NodeKey
from pimail.envelope.bloom import FULL_BLOOM, topic_to_bloom
from pimail.envelope.codec import Envelope
from pimail.envelope.payload import key_from_password, seal_asymmetric, seal_symmetric
from pimail.mailserver.request import (
    UNLIMITED,
    LegacyRequestPayload,
    MalformedRequest,
    MessagesRequest,
    MessagesRequestPayload,
    RequestForm,
    RequestOpener,
    RequestRejected,
    parse_p2p_request,
)
from tests.conftest import load_vector

NOW = 1_700_000_000
PASSWORD_KEY = bytes.fromhex("765df27c0765526f920ba742ff4b9452bb0064e016435ffccd81186aa6feaae8")
TOPIC = bytes.fromhex("cd423760")
BLOOM = topic_to_bloom(TOPIC)


def _cases() -> dict[str, Any]:
    v = load_vector("whisper_pow_bloom_payload.json")["generated_envelopes"]
    return dict(v["cases"])


def _opener(**kw: Any) -> RequestOpener:
    kw.setdefault("sym_key", PASSWORD_KEY)
    kw.setdefault("min_pow", 0.000002)
    return RequestOpener(**kw)


def _request_envelope(payload: bytes, signer: NodeKey | None, *, key: bytes = PASSWORD_KEY,
                      asym_to: bytes | None = None) -> Envelope:
    priv = signer.private if signer else None
    data = seal_asymmetric(asym_to, payload, priv) if asym_to else seal_symmetric(key, payload, priv)
    return Envelope.build(NOW + 50, 50, b"\x00\x00\x00\x00", data, 0)


def test_password_key_matches_vector() -> None:
    v = load_vector("whisper_pow_bloom_payload.json")["sym_key_from_password"]
    assert key_from_password(v["password"]).hex() == v["key"]


def test_geth_binary_request_vector() -> None:
    case = _cases()["sym_signed_binary_request"]
    raw = bytes.fromhex(case["envelope_rlp"])
    parsed = parse_p2p_request(raw)
    assert parsed.envelope is not None
    assert "0x" + parsed.request_id.hex() == case["envelope_hash"]
    signer = bytes.fromhex(case["signer_pubkey"])[1:]
    req = _opener().open(parsed, signer, NOW)
    assert req.form is RequestForm.LEGACY
    assert (req.lower, req.upper) == (1560000000, 1560086400)
    assert req.bloom == BLOOM
    assert req.limit == UNLIMITED and req.batch is False  # geth semantics: no limit field
    assert req.signer == signer


def test_geth_rlp6_request_vector() -> None:
    case = _cases()["sym_signed_rlp6_request"]
    parsed = parse_p2p_request(bytes.fromhex(case["envelope_rlp"]))
    signer = bytes.fromhex(case["signer_pubkey"])[1:]
    req = _opener().open(parsed, signer, NOW)
    assert req.form is RequestForm.ENVELOPE
    assert (req.lower, req.upper, req.limit, req.batch) == (1560000000, 1560086400, 100, True)
    assert req.bloom == BLOOM and req.cursor is None


def test_vector_rlp_request_signer_must_be_peer() -> None:
    case = _cases()["sym_signed_rlp6_request"]
    parsed = parse_p2p_request(bytes.fromhex(case["envelope_rlp"]))
    with pytest.raises(RequestRejected, match="signer is not the requesting peer") as ei:
        _opener().open(parsed, NodeKey.generate().public, NOW)
    assert ei.value.request_id == parsed.request_id


def test_vector_binary_request_signer_need_not_be_peer() -> None:
    # wnode signs its binary request with a key that is not its node key (geth never compared them)
    case = _cases()["sym_signed_binary_request"]
    parsed = parse_p2p_request(bytes.fromhex(case["envelope_rlp"]))
    req = _opener().open(parsed, NodeKey.generate().public, NOW)
    assert req.form is RequestForm.LEGACY
    assert req.signer == bytes.fromhex(case["signer_pubkey"])[1:]


def test_vector_wrong_password() -> None:
    case = _cases()["sym_signed_rlp6_request"]
    parsed = parse_p2p_request(bytes.fromhex(case["envelope_rlp"]))
    with pytest.raises(RequestRejected, match=r"^failed to decrypt p2p request$"):
        _opener(sym_key=key_from_password("not-the-password")).open(parsed, b"", NOW)


def test_vector_low_pow() -> None:
    case = _cases()["sym_signed_rlp6_request"]
    parsed = parse_p2p_request(bytes.fromhex(case["envelope_rlp"]))
    with pytest.raises(RequestRejected, match=r"^PoW too low$"):
        _opener(min_pow=1000.0).open(parsed, bytes.fromhex(case["signer_pubkey"])[1:], NOW)


@pytest.mark.parametrize("fields", [5, 6, 7])
def test_rlp_payload_shapes(fields: int) -> None:
    key = NodeKey.generate()
    topics = (TOPIC,) if fields == 7 else None
    p = MessagesRequestPayload(10, 20, BLOOM, 5, b"", True, topics, fields)
    assert MessagesRequestPayload.decode(p.encode()) == (
        p if fields != 5 else MessagesRequestPayload(10, 20, BLOOM, 5, b"", False, None, 5)
    )
    env = _request_envelope(p.encode(), key)
    req = _opener().open(parse_p2p_request(env.raw), key.public, NOW)
    assert req.form is RequestForm.ENVELOPE
    assert (req.lower, req.upper, req.limit) == (10, 20, 5)
    assert req.batch is (fields != 5)
    assert req.topics == ((TOPIC,) if fields == 7 else ())
    assert req.request_id == env.hash


def test_asymmetric_request_to_node_key() -> None:
    server, client = NodeKey.generate(), NodeKey.generate()
    p = MessagesRequestPayload(0, 0, BLOOM, 0, b"", True, (), 7)
    env = _request_envelope(p.encode(), client, asym_to=server.public)
    req = _opener(sym_key=None, private_key=server.private).open(parse_p2p_request(env.raw),
                                                                 client.public, NOW)
    assert req.upper == NOW + 60 and req.limit == MAX_QUERY_LIMIT
    # with both keys configured, asymmetric is tried first and symmetric still works
    env2 = _request_envelope(p.encode(), client)
    req2 = _opener(private_key=server.private).open(parse_p2p_request(env2.raw), client.public, NOW)
    assert req2.request_id == env2.hash


def test_unsigned_request_rejected() -> None:
    p = MessagesRequestPayload(0, 10, BLOOM, 0, b"", True, (), 7)
    env = _request_envelope(p.encode(), None)
    with pytest.raises(RequestRejected, match="wrong signature of p2p request"):
        _opener().open(parse_p2p_request(env.raw), b"", NOW)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (MessagesRequestPayload(20, 10, BLOOM, 0, b"").encode(), "^query range is invalid: lower > upper$"),
        (MessagesRequestPayload(1, 10, BLOOM, 5000, b"").encode(),
         "^request is invalid: limit exceeds the maximum allowed value$"),
        (MessagesRequestPayload(1, 10, b"", 10, b"", True, (), 7).encode(),
         "^request is invalid: bloom filter is empty$"),
        (MessagesRequestPayload(1, 10, BLOOM, 10, b"xyz").encode(),
         "^request is invalid: cursor must be 36 bytes$"),
        (LegacyRequestPayload(20, 10).encode(), r"^query range is invalid: from > to \(20 > 10\)$"),
        (b"\x00" * 5, "^Undersized p2p request$"),
        (b"\x00" * 30, "^Undersized bloom filter in p2p request$"),
        (LegacyRequestPayload(1, 10, BLOOM, 5000).encode(),
         "^request is invalid: limit exceeds the maximum allowed value$"),
    ],
)
def test_invalid_payloads(payload: bytes, message: str) -> None:
    key = NodeKey.generate()
    env = _request_envelope(payload, key)
    with pytest.raises(RequestRejected, match=message):
        _opener().open(parse_p2p_request(env.raw), key.public, NOW)


def test_legacy_forms() -> None:
    key = NodeKey.generate()
    cursor = (15).to_bytes(4, "big") + b"\x11" * 32
    for p, want in [
        (LegacyRequestPayload(1, 10), (None, UNLIMITED, None)),
        (LegacyRequestPayload(1, 10, BLOOM), (BLOOM, UNLIMITED, None)),
        (LegacyRequestPayload(1, 10, BLOOM, 0), (BLOOM, MAX_QUERY_LIMIT, None)),
        (LegacyRequestPayload(1, 10, BLOOM, 7, cursor), (BLOOM, 7, cursor)),
        (LegacyRequestPayload(1, 10, FULL_BLOOM, 7), (None, 7, None)),
    ]:
        env = _request_envelope(p.encode(), key)
        req = _opener().open(parse_p2p_request(env.raw), key.public, NOW)
        assert req.form is RequestForm.LEGACY and req.batch is False
        assert (req.bloom, req.limit, req.cursor) == want


def test_legacy_upper_zero() -> None:
    key = NodeKey.generate()
    env = _request_envelope(LegacyRequestPayload(0, 0).encode(), key)
    req = _opener().open(parse_p2p_request(env.raw), key.public, NOW)
    assert (req.lower, req.upper) == (0, NOW + 60)
    env = _request_envelope(LegacyRequestPayload(5, 0).encode(), key)
    with pytest.raises(RequestRejected, match=r"from > to \(5 > 0\)"):
        _opener().open(parse_p2p_request(env.raw), key.public, NOW)


def test_direct_whisper_and_waku_requests() -> None:
    rid = b"ab" * 16
    whisper = MessagesRequest(rid, 5, 0, 0, b"", BLOOM)
    parsed = parse_p2p_request(whisper.encode())
    assert parsed.direct == whisper and parsed.request_id == rid
    req = _opener().open(parsed, b"", NOW)
    assert req.form is RequestForm.DIRECT and req.batch is True
    assert (req.lower, req.upper, req.limit, req.bloom) == (5, NOW + 60, MAX_QUERY_LIMIT, BLOOM)

    waku = MessagesRequest(b"short-id", 5, 9, 10, b"", b"", (TOPIC,))
    parsed = parse_p2p_request(waku.encode())
    assert parsed.request_id == b"\x00" * 24 + b"short-id"  # BytesToHash left-pads
    req = _opener().open(parsed, b"", NOW)
    assert req.topics == (TOPIC,) and req.bloom is None

    long_id = bytes(range(40))
    parsed = parse_p2p_request(MessagesRequest(long_id, 1, 2, 3, b"", BLOOM).encode())
    assert parsed.request_id == long_id[-32:]


def test_direct_request_errors() -> None:
    bad = MessagesRequest(b"x" * 32, 9, 5, 0, b"", BLOOM)
    with pytest.raises(RequestRejected, match="lower > upper") as ei:
        _opener().open(parse_p2p_request(bad.encode()), b"", NOW)
    assert ei.value.request_id == b"x" * 32
    with pytest.raises(RequestRejected, match="bloom filter is empty"):
        _opener().open(parse_p2p_request(MessagesRequest(b"x", 1, 5, 0, b"", b"").encode()), b"", NOW)
    with pytest.raises(RequestRejected, match="limit exceeds"):
        _opener().open(parse_p2p_request(MessagesRequest(b"x", 1, 5, 5000, b"", BLOOM).encode()), b"", NOW)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\xff\xff",
        rlp.encode(b"a string"),
        rlp.encode([1, 2, 3]),
        rlp.encode([b"id", 1, 2, 3, b"", BLOOM, [b"toolongtopic"]]),
        rlp.encode([b"id", [1], 2, 3, b"", BLOOM]),
        rlp.encode([1, 2, b"\x00\x00\x00", b"data", 0]),  # 3-byte topic: not an envelope
        rlp.encode([b"id", 1, 2, 3, b"", BLOOM]) + b"\x00",  # trailing bytes
    ],
)
def test_garbage_is_malformed(payload: bytes) -> None:
    with pytest.raises(MalformedRequest):
        parse_p2p_request(payload)
