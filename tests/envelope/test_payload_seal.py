"""Payload round trips (symmetric, asymmetric, signatures, padding) and sealing (both formulas, off
the loop)."""

from __future__ import annotations

import asyncio

import pytest

from pimail.crypto.keys import NodeKey
from pimail.envelope import payload as pl
from pimail.envelope.seal import seal, seal_async

NOW = 1_800_000_000


@pytest.mark.parametrize("size", [0, 1, 200, 255, 256, 300, 70_000])
@pytest.mark.parametrize("signed", [False, True])
def test_symmetric_roundtrip_and_padding(size: int, signed: bool) -> None:
    key = pl.key_from_password("pw")
    signer = NodeKey.generate()
    body = bytes(range(256)) * (size // 256) + bytes(size % 256)
    plain = pl.build_plaintext(body, signer.private if signed else None)
    assert len(plain) % 256 == 0
    data = pl.seal_symmetric(key, body, signer.private if signed else None)
    opened = pl.open_symmetric(key, data)
    assert opened.payload == body
    assert len(opened.padding) >= 1
    assert opened.signer == (signer.public if signed else None)


def test_asymmetric_roundtrip() -> None:
    recipient, signer = NodeKey.generate(), NodeKey.generate()
    data = pl.seal_asymmetric(b"\x04" + recipient.public, b"hi there", signer.private)
    opened = pl.open_asymmetric(recipient.private, data)
    assert opened.payload == b"hi there" and opened.signer == signer.public
    with pytest.raises(pl.PayloadError):
        pl.seal_asymmetric(b"\x01" * 64, b"x")


def test_signature_v_27_28_accepted() -> None:
    signer = NodeKey.generate()
    plain = bytearray(pl.build_plaintext(b"hello", signer.private))
    plain[-1] += 27
    assert pl.parse_plaintext(bytes(plain)).signer == signer.public


def test_bad_plaintexts() -> None:
    with pytest.raises(pl.PayloadError):
        pl.parse_plaintext(b"")
    with pytest.raises(pl.PayloadError, match="exceeds"):
        pl.parse_plaintext(bytes([1, 200]) + b"short")
    with pytest.raises(pl.PayloadError, match="signature"):
        pl.parse_plaintext(bytes([0x05]) + b"x" * 10)
    bad_sig = pl.build_plaintext(b"x", NodeKey.generate().private)[:-65] + b"\x00" * 64 + b"\x09"
    with pytest.raises(pl.PayloadError, match="signature"):
        pl.parse_plaintext(bad_sig)
    with pytest.raises(pl.PayloadError):
        pl.decrypt_symmetric(b"\x00" * 32, b"short")


def test_seal_meets_both_formulas() -> None:
    r = seal(NOW + 15, 15, b"abcd", b"y" * 256, 0.002, 10)
    assert r.met and r.pow_legacy >= 0.002 and r.pow_current >= 0.002
    assert r.envelope.pows() == (r.pow_legacy, r.pow_current)


def test_seal_separate_targets_per_formula() -> None:
    r = seal(NOW + 15, 15, b"abcd", b"y" * 256, 0.2, 30, current_target=0.002)
    assert r.met and r.pow_legacy >= 0.2 and r.pow_current >= 0.002


def test_seal_bounded_time_keeps_best() -> None:
    r = seal(NOW + 15, 15, b"abcd", b"y" * 256, 1e6, 0.2)  # unreachable target: returns at all
    assert not r.met and r.tried > 1
    assert r.envelope.pows() == (r.pow_legacy, r.pow_current)
    assert min(r.pow_legacy, r.pow_current) > 0


def test_seal_async_runs_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """The seal runs in a worker thread and the loop stays free meanwhile: the sealing thread waits
    for an event that only a loop callback sets, so a seal on the loop could never finish. No
    timing: the wait's bound only turns a hang into a failure."""
    import threading

    from pimail.envelope import seal as seal_module

    real_seal = seal_module.seal
    loop_turned = threading.Event()
    seen: dict[str, object] = {}

    def watched_seal(*args: object) -> object:
        seen["thread"] = threading.get_ident()
        seen["loop_free"] = loop_turned.wait(timeout=60)
        return real_seal(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(seal_module, "seal", watched_seal)

    async def main() -> tuple[int, bool]:
        loop = asyncio.get_running_loop()
        pending = asyncio.ensure_future(seal_async(NOW + 15, 15, b"abcd", b"y" * 256, 0.0, 0.01))
        loop.call_soon(loop_turned.set)  # runs only if the loop is not busy sealing
        r = await pending
        return threading.get_ident(), r.envelope.ttl == 15

    loop_thread, sealed = asyncio.run(main())
    assert seen["thread"] != loop_thread
    assert seen["loop_free"] is True
    assert sealed
