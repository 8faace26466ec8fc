"""Property tests: the decoders give a typed outcome for any input, never another exception."""

from __future__ import annotations

import contextlib

import rlp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pimail.crypto.keys import NodeKey
from pimail.envelope.codec import Envelope
from pimail.envelope.payload import seal_symmetric
from pimail.mailserver.request import (
    HistoryRequest,
    MalformedRequest,
    RequestOpener,
    RequestRejected,
    parse_p2p_request,
)
from pimail.mailserver.response import ResponseError, decode, parse_body
from pimail.mailserver.syncwire import SyncMailRequest, SyncResponse, SyncWireError

KEY = bytes(range(32))
PEER = NodeKey.generate()
OPENER = RequestOpener(KEY)

rlp_items = st.recursive(
    st.binary(max_size=80),
    lambda children: st.lists(children, max_size=8),
    max_leaves=30,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), rlp_items.map(rlp.encode)))
def test_p2p_request_decoding_is_total(payload: bytes) -> None:
    try:
        parsed = parse_p2p_request(payload)
    except MalformedRequest:
        return
    assert len(parsed.request_id) == 32
    try:
        req = OPENER.open(parsed, PEER.public, 1_700_000_000)
    except RequestRejected as exc:
        assert exc.request_id == parsed.request_id and exc.message
        return
    assert isinstance(req, HistoryRequest) and req.upper >= req.lower


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_decrypted_payload_gets_a_typed_outcome(inner: bytes) -> None:
    env = Envelope.build(1_700_000_050, 50, b"\x00" * 4, seal_symmetric(KEY, inner, PEER.private), 0)
    try:
        req = OPENER.open(parse_p2p_request(env.raw), PEER.public, 1_700_000_000)
    except RequestRejected as exc:
        assert exc.request_id == env.hash
        return
    assert req.signer == PEER.public


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_request_complete_parsing_is_total(body: bytes) -> None:
    for fn, arg in ((parse_body, body), (decode, body), (decode, rlp.encode(body))):
        with contextlib.suppress(ResponseError):
            fn(arg)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.binary(max_size=200), rlp_items.map(rlp.encode)))
def test_sync_decoding_is_total(payload: bytes) -> None:
    for cls in (SyncMailRequest, SyncResponse):
        with contextlib.suppress(SyncWireError):
            cls.decode(payload)
