"""The one keccak room: the direct calls reproduce pycryptodome's public API (the reference), one
hash and the pair, across block edges and from many threads; the public API's running sponge."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from pimail.crypto import keccak
from pimail.crypto.keccak import FAST, FAST_PAIR, keccak256, keccak256_pair, keccak_sponge
from pimail.crypto.keccak import reference_keccak256 as reference_keccak


def test_fast_keccak_matches_reference() -> None:
    assert FAST  # pycryptodome's shared library was found; otherwise validation is ~3x slower
    for n in (0, 1, 31, 32, 135, 136, 137, 1000, 5000):
        data = bytes((i * 7) & 0xFF for i in range(n))
        assert keccak256(data) == reference_keccak(data)


def test_keccak_pair_matches_reference_across_block_edges() -> None:
    assert FAST_PAIR  # one absorption of the shared prefix for both PoW hashes
    for n in (0, 1, 127, 128, 135, 136, 137, 271, 272, 273, 2000):
        prefix = bytes((i * 13 + 5) & 0xFF for i in range(n))
        for suffix in (b"", b"\x01", bytes(range(8)), bytes(136), bytes(300)):
            expected = (reference_keccak(prefix), reference_keccak(prefix + suffix))
            assert keccak256_pair(prefix, suffix) == expected


def test_keccak_pair_per_thread_state_under_concurrency() -> None:
    inputs = [(bytes([i]) * (50 + 37 * i), i.to_bytes(8, "big")) for i in range(24)]
    expected = [(reference_keccak(p), reference_keccak(p + s)) for p, s in inputs]

    def work(_: int) -> bool:
        pairs = list(zip(inputs, expected, strict=True)) * 200
        return all(keccak256_pair(p, s) == e for (p, s), e in pairs)

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(work, range(8)))


def test_keccak_is_not_sha3() -> None:
    assert keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
    sponge = keccak_sponge(b"ab")
    first = sponge.digest()
    sponge.update(b"c")  # digest() did not finalise the running state
    assert first == keccak256(b"ab") and sponge.digest() == keccak256(b"abc")


def test_an_avx2_build_pycryptodome_chose_but_lacks_gives_way_to_the_portable_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from Crypto.Hash import keccak as public

    monkeypatch.setattr(public, "_raw_keccak_avx2_bmi2_lib", object())
    assert keccak._candidates() == ["Crypto.Hash._keccak_avx2_bmi2", "Crypto.Hash._keccak"]
    opened = keccak._open()
    assert opened is not None and opened.name == "Crypto.Hash._keccak"
    state = opened.sponge(b"abc")
    out = opened.ffi.new("uint8_t[32]")
    assert opened.digest(state, out, 32, keccak.PADDING) == 0
    assert opened.ffi.buffer(out)[:] == reference_keccak(b"abc")


def test_without_the_direct_calls_the_public_api_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(keccak, "_open", lambda: None)
    assert keccak._load() is None
    assert keccak._public_keccak256(b"abc") == reference_keccak(b"abc")
    assert keccak._public_pair(b"ab", b"c") == (reference_keccak(b"ab"), reference_keccak(b"abc"))
    assert keccak256(bytearray(b"abc")) == reference_keccak(b"abc")  # cffi passes bytes only
