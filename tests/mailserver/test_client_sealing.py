"""Request envelopes the history client builds open on the server side, at the PoW asked for."""

from __future__ import annotations

import time

from pimail.crypto.keys import NodeKey
from pimail.envelope.bloom import FULL_BLOOM
from pimail.envelope.payload import key_from_password
from pimail.envelope.pow import PowFormula
from pimail.mailserver.client import decode_request_complete, seal_request_envelope
from pimail.mailserver.request import (
    LegacyRequestPayload,
    MessagesRequestPayload,
    RequestForm,
    RequestOpener,
    parse_p2p_request,
)
from pimail.mailserver.response import RequestComplete, RequestFailed

KEY = key_from_password("status-offline-inbox")


def test_sealed_request_meets_pow_under_both_formulas_and_opens() -> None:
    me = NodeKey.generate()
    now = int(time.time())
    inner = MessagesRequestPayload(1, 2, FULL_BLOOM, 10, b"", True, (), 7).encode()
    env = seal_request_envelope(inner, KEY, me.private, now, 0.0005)
    assert env.pow_legacy() >= 0.0005 and env.pow_current() >= 0.0005
    assert env.ttl == 50 and env.expiry == now + 50
    req = RequestOpener(KEY, min_pow=0.0005).open(parse_p2p_request(env.raw), me.public, now)
    assert req.form is RequestForm.ENVELOPE and req.signer == me.public

    legacy = LegacyRequestPayload(1, 2, FULL_BLOOM, 10).encode()
    env2 = seal_request_envelope(legacy, KEY, me.private, now, 0.2, formula=PowFormula.LEGACY)
    assert env2.pow_legacy() >= 0.2
    assert RequestOpener(KEY).open(parse_p2p_request(env2.raw), me.public, now).form is RequestForm.LEGACY


def test_request_complete_accepts_wrapped_or_bare() -> None:
    done = RequestComplete(b"\x01" * 32, b"\x02" * 32)
    assert decode_request_complete(done.encode()) == done
    assert decode_request_complete(done.body()) == done
    failed = RequestFailed(b"\x01" * 32, "rate limit exceeded")
    assert decode_request_complete(failed.encode()) == failed
