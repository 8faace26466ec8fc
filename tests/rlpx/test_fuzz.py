"""Hypothesis fuzzing of the handshake reader and the frame decoder: only typed errors, never crashes."""

from __future__ import annotations

import contextlib
import itertools
from functools import cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimail.crypto.keys import NodeKey
from pimail.rlpx.frame import FrameCodec, FrameError
from pimail.rlpx.handshake import HandshakeError, Initiator, Recipient

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@cache
def keys() -> tuple[NodeKey, NodeKey]:
    return NodeKey.generate(), NodeKey.generate()


@cache
def valid_auth(eip8: bool) -> bytes:
    a, b = keys()
    return Initiator(a, b.public, eip8=eip8).auth_packet()


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[i:j] for i, j in itertools.pairwise(points)]


def feed_recipient(data: bytes, cuts: list[int]) -> None:
    r = Recipient(keys()[1])
    try:
        for part in chunks(data, cuts):
            if r.receive(part) is not None:
                assert r.secrets is not None
                return
    except HandshakeError:
        pass


@FUZZ
@given(st.binary(max_size=1200), st.lists(st.integers(min_value=0), max_size=5))
def test_recipient_survives_random_bytes(data: bytes, cuts: list[int]) -> None:
    feed_recipient(data, cuts)


@FUZZ
@given(st.booleans(), st.integers(min_value=0), st.integers(min_value=1, max_value=255),
       st.lists(st.integers(min_value=0), max_size=4))
def test_recipient_survives_mutated_auth(eip8: bool, pos: int, flip: int, cuts: list[int]) -> None:
    auth = bytearray(valid_auth(eip8))
    auth[pos % len(auth)] ^= flip
    feed_recipient(bytes(auth), cuts)


@FUZZ
@given(st.binary(max_size=800))
def test_initiator_survives_random_acks(data: bytes) -> None:
    a, b = keys()
    i = Initiator(a, b.public)
    with contextlib.suppress(HandshakeError):
        i.receive(data)


def fresh_pair() -> tuple[FrameCodec, FrameCodec]:
    """A new handshake per example: the MAC sponges are stateful and cannot be copied."""
    a, b = keys()
    i, r = Initiator(a, b.public), Recipient(b)
    ack = r.receive(i.auth_packet())
    assert ack is not None
    si = i.receive(ack)
    assert si is not None and r.secrets is not None
    return FrameCodec(si, max_frame_size=4096), FrameCodec(r.secrets, max_frame_size=4096)


@FUZZ
@given(st.binary(max_size=2000), st.lists(st.integers(min_value=0), max_size=5))
def test_frame_decoder_survives_random_bytes(data: bytes, cuts: list[int]) -> None:
    _, dec = fresh_pair()
    try:
        for part in chunks(data, cuts):
            assert dec.feed(part) == []  # random bytes never authenticate
    except FrameError:
        pass


@FUZZ
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.integers(min_value=0),
       st.integers(min_value=1, max_value=255), st.lists(st.integers(min_value=0), max_size=5))
def test_any_flipped_byte_is_detected(frames: list[bytes], pos: int, flip: int, cuts: list[int]) -> None:
    enc, dec = fresh_pair()
    wire = bytearray(b"".join(enc.encode(f) for f in frames))
    pos %= len(wire)
    wire[pos] ^= flip
    got: list[bytes] = []
    try:
        for part in chunks(bytes(wire), cuts):
            got += dec.feed(part)
    except FrameError:
        assert got == frames[: len(got)]  # whatever came out before the error was genuine
        return
    raise AssertionError(f"flipped byte {pos} was not detected")


@FUZZ
@given(st.lists(st.binary(max_size=5000), min_size=1, max_size=5),
       st.lists(st.integers(min_value=0), max_size=8))
def test_roundtrip_in_any_chunking(frames: list[bytes], cuts: list[int]) -> None:
    enc, dec = fresh_pair()
    wire = b"".join(enc.encode(f) for f in frames)
    got: list[bytes] = []
    try:
        for part in chunks(wire, cuts):
            got += dec.feed(part)
    except FrameError as exc:
        assert any(len(f) > 4096 for f in frames), exc  # only the cap may stop a genuine stream
        return
    assert got == frames
