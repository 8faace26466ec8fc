"""Hypothesis fuzzing of the devp2p decoders and the session: only typed errors, never crashes."""

from __future__ import annotations

import contextlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimail.devp2p import compression
from pimail.devp2p.messages import Disconnect, Hello, MessageError, decode_msg_id
from pimail.devp2p.session import SessionError
from tests.devp2p.test_session import exchange_hellos, pair, raw_sender

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400))
def test_message_decoders(data: bytes) -> None:
    with contextlib.suppress(MessageError):
        Hello.decode(data)
    with contextlib.suppress(MessageError):
        Disconnect.decode(data)
    with contextlib.suppress(MessageError):
        decode_msg_id(data)


@FUZZ
@given(st.binary(max_size=400), st.integers(min_value=0, max_value=1 << 20))
def test_snappy_decoder(data: bytes, cap: int) -> None:
    try:
        out = compression.decompress(data, cap)
    except compression.SnappyError:
        return
    assert len(out) <= cap


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=6), st.booleans())
def test_session_frames(frames: list[bytes], after_hello: bool) -> None:
    """Authenticated frames with arbitrary frame-data: events or a SessionError with a reason."""
    if after_hello:
        a, b = pair()
        exchange_hellos(a, b)
        codec = a.codec
    else:
        codec, b = raw_sender()
    for frame in frames:
        try:
            b.receive_data(codec.encode(frame))
        except SessionError as exc:
            assert exc.reason is not None and exc.counter
            return
