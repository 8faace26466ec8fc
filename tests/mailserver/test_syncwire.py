"""Sync messages (123/124): round trips, validation, and raw envelopes kept byte-for-byte."""

from __future__ import annotations

import pytest
import rlp

from pimail.envelope.bloom import FULL_BLOOM
from pimail.envelope.codec import Envelope
from pimail.mailserver.syncwire import SyncMailRequest, SyncResponse, SyncWireError, encode_list_of_raw


def _env(i: int, size: int = 10) -> bytes:
    return Envelope.build(1000 + i, 50, i.to_bytes(4, "big"), b"x" * size, i).raw


def test_request_round_trip() -> None:
    r = SyncMailRequest(10, 20, FULL_BLOOM, 1000, (5).to_bytes(4, "big") + b"\x01" * 32)
    assert SyncMailRequest.decode(r.encode()) == r
    assert rlp.decode(r.encode())[3] == (1000).to_bytes(2, "big")


@pytest.mark.parametrize(
    ("req", "msg"),
    [
        (SyncMailRequest(1, 2, FULL_BLOOM, 0), "greater than 0"),
        (SyncMailRequest(1, 2, FULL_BLOOM, 1001), "lower than 1000"),
        (SyncMailRequest(3, 2, FULL_BLOOM, 10), "greater than 'Upper'"),
        (SyncMailRequest(1, 2, b"\x01" * 10, 10), "bloom"),
        (SyncMailRequest(1, 2, FULL_BLOOM, 10, b"\x01" * 5), "cursor"),
    ],
)
def test_request_validation(req: SyncMailRequest, msg: str) -> None:
    with pytest.raises(SyncWireError, match=msg):
        SyncMailRequest.decode(req.encode())


@pytest.mark.parametrize("payload", [b"", b"\xc0", rlp.encode(b"x"), rlp.encode([1, 2, 3, 4]),
                                     rlp.encode([[1], 2, b"", 4, b""])])
def test_request_garbage(payload: bytes) -> None:
    with pytest.raises(SyncWireError):
        SyncMailRequest.decode(payload)


@pytest.mark.parametrize("sizes", [[], [1], [10, 20, 30], [70_000, 5]])
def test_response_keeps_raw_envelopes(sizes: list[int]) -> None:
    raws = [_env(i, s) for i, s in enumerate(sizes)]
    resp = SyncResponse(raws, b"", False, "")
    enc = resp.encode()
    assert rlp.decode(enc) == [[rlp.decode(r) for r in raws], b"", b"", b""]
    back = SyncResponse.decode(enc)
    assert back.envelopes == raws and back.final is False
    final = SyncResponse([], b"\x02" * 36, True, "")
    assert SyncResponse.decode(final.encode()) == final
    err = SyncResponse([], b"", True, "failed to process all envelopes")
    assert SyncResponse.decode(err.encode()).error == "failed to process all envelopes"


def test_response_garbage() -> None:
    for payload in (b"\x00", rlp.encode([[], b"", b"\x02", b""]), rlp.encode([[], b"", b""]),
                    rlp.encode([[], b"short", b"\x01", b""])):
        with pytest.raises(SyncWireError):
            SyncResponse.decode(payload)


def test_list_header_lengths() -> None:
    for n in (0, 1, 55, 56, 255, 256, 70_000):
        item = rlp.encode(b"a" * n)
        assert encode_list_of_raw([item]) == rlp.encode([b"a" * n])
