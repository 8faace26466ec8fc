"""Every Whisper vector: PoW (both formulas), bloom (incl. the overwrite quirk), PBKDF2 key,
topic_from_name, and the geth-sealed envelopes (decrypt, verify signer, hash, PoW)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from pimail.crypto.keccak import keccak256
from pimail.crypto.keccak import reference_keccak256 as reference_keccak
from pimail.envelope import payload as pl
from pimail.envelope.bloom import topic_to_bloom
from pimail.envelope.codec import Envelope
from pimail.envelope.pow import PowFormula, both_pows, current_pow, leading_zero_bits, legacy_pow

VECTORS = Path(__file__).resolve().parents[1] / "vectors"
V: dict[str, Any] = json.loads((VECTORS / "whisper_pow_bloom_payload.json").read_text())


def _data(text: str) -> bytes:
    if text.endswith("repeated 256 times"):
        return bytes.fromhex(text.split()[0]) * 256
    return bytes.fromhex(text)


def _env(case: dict[str, Any]) -> Envelope:
    return Envelope.build(case["expiry"], case["ttl"], bytes.fromhex(case["topic"]), _data(case["data"]),
                          case["nonce"])


@pytest.mark.parametrize("case", V["pow_eip627_style_geth_1_9"]["cases"])
def test_current_pow_vectors(case: dict[str, Any]) -> None:
    env = _env(case)
    assert keccak256(env.rlp_without_nonce + case["nonce"].to_bytes(8, "big")).hex() == case["pow_hash"]
    assert env.pow_current() == pytest.approx(case["pow"], rel=1e-12)
    assert env.pows()[1] == env.pow_current()


@pytest.mark.parametrize("case", V["pow_eip627_style_extra"]["cases"])
def test_current_pow_extra_vectors(case: dict[str, Any]) -> None:
    env = _env(case)
    assert keccak256(env.rlp_without_nonce + case["nonce"].to_bytes(8, "big")).hex() == case["pow_hash"]
    assert current_pow(env.rlp_without_nonce, env.nonce, env.ttl) == pytest.approx(case["pow"], rel=1e-12)


@pytest.mark.parametrize("case", V["pow_legacy_geth_1_8"]["cases"])
def test_legacy_pow_vectors(case: dict[str, Any]) -> None:
    env = _env(case)
    assert env.pow_legacy() == pytest.approx(case["pow"], rel=1e-12)
    assert legacy_pow(env.rlp_without_nonce, env.nonce, len(env.data), env.ttl) == env.pows()[0]


def test_derived_intermediates() -> None:
    d = V["pow_eip627_style_geth_1_9"]["derived_intermediates"]
    env = Envelope.build(0, 1, b"\0\0\0\0", bytes.fromhex("deadbeef"), 276)
    assert env.rlp_without_nonce.hex() == d["rlp_without_nonce"]
    assert env.raw.hex() == d["full_envelope_rlp_nonce_276"]
    assert env.hash.hex() == d["envelope_hash_nonce_276"]
    decoded = Envelope.decode(bytes.fromhex(d["full_envelope_rlp_nonce_276"]))
    assert decoded.rlp_without_nonce.hex() == d["rlp_without_nonce"]
    assert Envelope.build(0, 1, b"\0\0\0\0", bytes.fromhex("deadbeef"), 100000).hash.hex() == (
        d["envelope_hash_nonce_100000"])


def test_leading_zero_edge_cases() -> None:
    # nim-eth/Parity: size 1, ttl 1: all-zero hash -> 2^256, ...01 -> 2^255, ff.. -> 1.0
    assert leading_zero_bits(bytes(32)) == 256
    assert leading_zero_bits(bytes(31) + b"\x01") == 255
    assert leading_zero_bits(b"\xff" + bytes(31)) == 0


@pytest.mark.parametrize("name", ["bloom", "bloom_same_byte_overwrite"])
def test_bloom_vectors(name: str) -> None:
    v = V[name]
    assert topic_to_bloom(bytes.fromhex(v["topic"])).hex() == v["expected_bloom"]


def test_bloom_overwrite_is_not_or() -> None:
    assert topic_to_bloom(bytes.fromhex("00010200"))[0] == 0x04


def test_pbkdf2_key() -> None:
    v = V["sym_key_from_password"]
    assert pl.key_from_password(v["password"]).hex() == v["key"]


def test_topic_from_name() -> None:
    v = V["topic_from_name"]
    assert pl.topic_from_name(v["name"]).hex() == v["topic"]


CASES = V["generated_envelopes"]["cases"]
GEN = V["generated_envelopes"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_geth_sealed_envelopes(name: str) -> None:
    case = CASES[name]
    raw = bytes.fromhex(case["envelope_rlp"])
    env = Envelope.decode(raw)
    assert "0x" + env.hash.hex() == case["envelope_hash"]
    assert (env.expiry, env.ttl, env.nonce, env.topic.hex()) == (
        case["expiry"], case["ttl"], case["nonce"], case["topic"])
    assert env.pow_legacy() == pytest.approx(case["pow_geth_1_8_27"], rel=1e-12)
    # Sealed by geth 1.8 for its own formula: it does not meet 0.002 under the current one (trap 11).
    assert env.meets(0.002, PowFormula.LEGACY)
    assert not env.meets(0.002, PowFormula.CURRENT)
    assert env.meets(0.002, PowFormula.EITHER)
    if case["salt_or_none"]:
        opened = pl.open_symmetric(bytes.fromhex(GEN["sym_key"]), env.data)
        assert env.data.endswith(bytes.fromhex(case["salt_or_none"]))
    else:
        opened = pl.open_asymmetric(bytes.fromhex(GEN["asym_recipient_private_key"]), env.data)
    assert opened.payload.hex() == case["payload"]
    assert len(opened.padding) == case["padding_len"]
    assert opened.signer is not None
    assert "04" + opened.signer.hex() == case["signer_pubkey"]


def test_wrong_key_fails_cleanly() -> None:
    env = Envelope.decode(bytes.fromhex(CASES["sym_signed_rlp6_request"]["envelope_rlp"]))
    with pytest.raises(pl.PayloadError):
        pl.open_symmetric(b"\x01" * 32, env.data)
    asym = Envelope.decode(bytes.fromhex(CASES["asym_signed_message"]["envelope_rlp"]))
    with pytest.raises(pl.PayloadError):
        pl.open_asymmetric(bytes.fromhex(GEN["signer_private_key"]), asym.data)


@pytest.mark.parametrize("case", V["pow_legacy_geth_1_8"]["cases"] + V["pow_eip627_style_geth_1_9"]["cases"])
def test_decoded_envelope_pows_match_vectors(case: dict[str, Any]) -> None:
    """The received path (fast decode, shared-prefix hashing, byte-wise trailing zeros)."""
    built = _env(case)
    env = Envelope.decode(built.raw)
    assert (env.hash, env.rlp_without_nonce) == (reference_keccak(built.raw), built.rlp_without_nonce)
    legacy, current = env.pows()
    assert legacy == legacy_pow(built.rlp_without_nonce, built.nonce, len(built.data), built.ttl)
    assert current == current_pow(built.rlp_without_nonce, built.nonce, built.ttl)
    assert (legacy, current)[0 if case in V["pow_legacy_geth_1_8"]["cases"] else 1] == pytest.approx(
        case["pow"], rel=1e-12)


@settings(max_examples=300, deadline=None)
@given(data=hs.binary(max_size=700), nonce=hs.integers(0, 2**64 - 1), ttl=hs.integers(1, 2**32 - 1),
       diff=hs.integers(0, 30))
def test_both_pows_equals_the_single_formulas(data: bytes, nonce: int, ttl: int, diff: int) -> None:
    env = Envelope.decode(Envelope.build(1_700_000_000, ttl, b"\x01\x02\x03\x04", data, nonce).raw)
    assert both_pows(env.rlp_without_nonce, nonce, len(data), ttl, diff) == (
        legacy_pow(env.rlp_without_nonce, nonce, len(data), ttl, diff),
        current_pow(env.rlp_without_nonce, nonce, ttl, diff),
    )


@settings(max_examples=300, deadline=None)
@given(nonce=hs.integers(0, 2**64 - 1), data=hs.binary(min_size=16, max_size=300),
       ttl=hs.integers(1, 10_000), diff=hs.sampled_from([0, 0, 1, 7, 3600]),
       exponent=hs.integers(-30, 3), formula=hs.sampled_from(list(PowFormula)))
def test_meets_decides_like_the_pair_of_pows(nonce: int, data: bytes, ttl: int, diff: int, exponent: int,
                                             formula: PowFormula) -> None:
    """meets() hashes only what decides, and the cached diff-0 pair decides the same way; both agree
    with the (legacy, current) pair for every formula, requirement and clock difference."""
    env = Envelope.build(1_700_000_000, ttl, b"\x01\x02\x03\x04", data, nonce)
    legacy, current = both_pows(env.rlp_without_nonce, nonce, len(data), ttl, diff)
    for requirement in (0.0, 2.0 ** exponent, legacy, current, legacy * 1.0001, current * 1.0001):
        expected = {
            PowFormula.LEGACY: legacy >= requirement,
            PowFormula.CURRENT: current >= requirement,
            PowFormula.EITHER: legacy >= requirement or current >= requirement,
            PowFormula.BOTH: legacy >= requirement and current >= requirement,
        }[formula] or requirement <= 0
        fresh = Envelope.decode(env.raw)
        assert fresh.meets(requirement, formula, diff) is expected
        fresh.pows()  # cache the diff-0 pair: meets() then reads it when diff is 0
        assert fresh.meets(requirement, formula, diff) is expected
