"""P2PSession driven with no sockets: two sessions over a real handshake, and crafted bad frames."""

from __future__ import annotations

import os

import pytest

from pimail.crypto.keys import NodeKey
from pimail.devp2p.capabilities import CapabilitySpec
from pimail.devp2p.messages import DisconnectReason, Hello, encode_msg_id
from pimail.devp2p.session import (
    DisconnectReceived,
    HelloReceived,
    MessageReceived,
    P2PSession,
    PingReceived,
    PongReceived,
    SessionError,
    SessionState,
)
from pimail.rlpx.frame import FrameCodec
from pimail.rlpx.handshake import Initiator, Recipient, Secrets

SHH = CapabilitySpec("shh", 6, 128)


def secrets_pair(eip8: bool = True) -> tuple[NodeKey, NodeKey, Secrets, Secrets]:
    ka, kb = NodeKey.generate(), NodeKey.generate()
    i, r = Initiator(ka, kb.public, eip8=eip8), Recipient(kb)
    ack = r.receive(i.auth_packet())
    assert ack is not None
    si = i.receive(ack)
    assert si is not None and r.secrets is not None
    return ka, kb, si, r.secrets


def hello_for(key: NodeKey, caps: tuple[tuple[str, int], ...] = (("shh", 6),), version: int = 5) -> Hello:
    return Hello(version, "test", caps, 0, key.public)


def pair(version_b: int = 5) -> tuple[P2PSession, P2PSession]:
    ka, kb, sa, sb = secrets_pair()
    a = P2PSession(FrameCodec(sa), hello_for(ka), [SHH], kb.public)
    b = P2PSession(FrameCodec(sb), hello_for(kb, version=version_b), [SHH], ka.public)
    return a, b


def exchange_hellos(a: P2PSession, b: P2PSession) -> None:
    ev_b = b.receive_data(a.data_to_send())
    ev_a = a.receive_data(b.data_to_send())
    assert isinstance(ev_a[0], HelloReceived) and isinstance(ev_b[0], HelloReceived)


def test_hello_exchange_and_messages() -> None:
    a, b = pair()
    exchange_hellos(a, b)
    assert a.state is SessionState.ACTIVE and a.snappy and b.snappy
    assert a.shared[0].offset == 16
    a.send_message("shh", 1, b"\xc0")
    a.send_message("shh", 127, b"\x83abc" * 100)
    events = b.receive_data(a.data_to_send())
    assert events == [MessageReceived("shh", 1, b"\xc0"), MessageReceived("shh", 127, b"\x83abc" * 100)]
    with pytest.raises(ValueError):
        a.send_message("shh", 128, b"\xc0")
    with pytest.raises(KeyError):
        a.send_message("waku", 0, b"\xc0")


def test_ping_is_answered_with_pong() -> None:
    a, b = pair()
    exchange_hellos(a, b)
    a.ping()
    assert b.receive_data(a.data_to_send()) == [PingReceived()]
    assert a.receive_data(b.data_to_send()) == [PongReceived()]


def test_no_snappy_with_an_old_peer() -> None:
    a, b = pair(version_b=4)
    exchange_hellos(a, b)
    assert not a.snappy  # a decides on b's Hello version (4)
    b.snappy = False  # b plays a v4 peer that never decompresses
    big = b"\xb9\x10\x00" + bytes(4096)
    a.send_message("shh", 1, big)
    wire = a.data_to_send()
    assert len(wire) > 4096  # not compressed
    assert b.receive_data(wire) == [MessageReceived("shh", 1, big)]


def test_disconnect_in_list_form_and_closed_state() -> None:
    a, b = pair()
    exchange_hellos(a, b)
    a.disconnect(DisconnectReason.CLIENT_QUITTING)
    a.disconnect(DisconnectReason.REQUESTED)  # idempotent: nothing more queued
    events = b.receive_data(a.data_to_send())
    assert events == [DisconnectReceived(8, "client quitting")]
    assert b.state is SessionState.CLOSED
    assert b.receive_data(b"anything") == []


def raw_frame(session_from: P2PSession, msg_id: int, payload: bytes) -> bytes:
    """Bypass the session's checks: encode any frame with its codec."""
    return session_from.codec.encode(encode_msg_id(msg_id) + payload)


def expect_error(b: P2PSession, data: bytes, reason: DisconnectReason | None, counter: str) -> None:
    with pytest.raises(SessionError) as err:
        b.receive_data(data)
    assert err.value.reason == reason
    assert err.value.counter == counter


def test_hello_identity_mismatch() -> None:
    ka, kb, sa, sb = secrets_pair()
    a = P2PSession(FrameCodec(sa), hello_for(NodeKey.generate()), [SHH], kb.public)
    b = P2PSession(FrameCodec(sb), hello_for(kb), [SHH], ka.public)
    expect_error(b, a.data_to_send(), DisconnectReason.UNEXPECTED_IDENTITY, "identity_mismatch")


def test_hello_invalid_identity() -> None:
    ka, kb, sa, sb = secrets_pair()
    a = P2PSession(FrameCodec(sa), Hello(5, "x", (("shh", 6),), 0, bytes(64)), [SHH], kb.public)
    b = P2PSession(FrameCodec(sb), hello_for(kb), [SHH], ka.public)
    expect_error(b, a.data_to_send(), DisconnectReason.INVALID_IDENTITY, "invalid_identity")


def test_hello_without_shared_caps() -> None:
    ka, kb, sa, sb = secrets_pair()
    a = P2PSession(FrameCodec(sa), hello_for(ka, caps=(("eth", 63), ("shh", 5))), [SHH], kb.public)
    b = P2PSession(FrameCodec(sb), hello_for(kb), [SHH], ka.public)
    expect_error(b, a.data_to_send(), DisconnectReason.USELESS_PEER, "useless_peer")


def raw_sender() -> tuple[FrameCodec, P2PSession]:
    """A bare frame codec on one side (it sends whatever the test wants first) and a session on the other."""
    ka, kb, sa, sb = secrets_pair()
    return FrameCodec(sa), P2PSession(FrameCodec(sb), hello_for(kb), [SHH], ka.public)


def test_message_before_hello_and_second_hello() -> None:
    codec, b = raw_sender()
    frame = codec.encode(encode_msg_id(16) + b"\xc0")
    expect_error(b, frame, DisconnectReason.PROTOCOL_BREACH, "protocol_breach")
    a, b = pair()
    exchange_hellos(a, b)
    expect_error(b, raw_frame(a, 0, hello_for(NodeKey.generate()).encode()), DisconnectReason.PROTOCOL_BREACH,
                 "protocol_breach")


def test_disconnect_instead_of_hello() -> None:
    codec, b = raw_sender()
    assert b.receive_data(codec.encode(b"\x01\xc1\x04")) == [DisconnectReceived(4, "too many peers")]


def test_oversized_and_malformed_hello() -> None:
    codec, b = raw_sender()
    big = b"\x80" + b"\xb9\x08\x01" + bytes(2049)
    expect_error(b, codec.encode(big), DisconnectReason.PROTOCOL_BREACH, "protocol_breach")
    codec, b = raw_sender()
    frame = codec.encode(b"\x80\xc3\x01\x02\x03")
    expect_error(b, frame, DisconnectReason.PROTOCOL_BREACH, "protocol_breach")


def test_unknown_message_id_and_reserved_ids() -> None:
    a, b = pair()
    exchange_hellos(a, b)
    from pimail.devp2p import compression

    assert b.receive_data(raw_frame(a, 7, compression.compress(b"\xc0"))) == []  # 4..15 ignored (geth)
    expect_error(b, raw_frame(a, 16 + 128, compression.compress(b"\xc0")), DisconnectReason.PROTOCOL_BREACH,
                 "unknown_message_id")


def test_snappy_length_bomb_in_a_message() -> None:
    a, b = pair()
    exchange_hellos(a, b)
    bomb = b"\xff\xff\xff\x0f\x00\x00"  # declares 32 MiB
    expect_error(b, raw_frame(a, 17, bomb), DisconnectReason.PROTOCOL_BREACH, "snappy_rejected")


def test_corrupt_message_id() -> None:
    a, b = pair()
    exchange_hellos(a, b)
    expect_error(b, a.codec.encode(b"\xb8"), DisconnectReason.PROTOCOL_BREACH, "protocol_breach")


def test_bad_header_mac_is_silent() -> None:
    a, b = pair()
    wire = bytearray(a.data_to_send())
    wire[20] ^= 1
    expect_error(b, bytes(wire), None, "bad_header_mac")


def test_bad_frame_mac_is_silent() -> None:
    a, b = pair()
    wire = bytearray(a.data_to_send())
    wire[-1] ^= 1
    expect_error(b, bytes(wire), None, "bad_frame_mac")


def test_frame_over_the_cap() -> None:
    ka, kb, sa, sb = secrets_pair()
    a = P2PSession(FrameCodec(sa), hello_for(ka), [SHH], kb.public)
    b = P2PSession(FrameCodec(sb, max_frame_size=1024), hello_for(kb), [SHH], ka.public)
    exchange_hellos(a, b)
    a.send_message("shh", 1, b"\xb9\x14\x00" + os.urandom(5120))  # incompressible 5 KiB
    header_only = a.data_to_send()[:32]
    expect_error(b, header_only, DisconnectReason.PROTOCOL_BREACH, "frame_too_large")


def test_big_frame_before_hello_is_refused_unbuffered() -> None:
    codec, b = raw_sender()
    big = codec.encode(b"\x80" + b"\xb9\x27\x10" + bytes(10_000))
    expect_error(b, big[:32], DisconnectReason.PROTOCOL_BREACH, "frame_too_large")  # header alone suffices
    assert b.codec.buffered == 0


def test_frame_cap_restored_after_hello() -> None:
    a, b = pair()
    cap = b.codec.max_frame_size
    assert cap < 4096
    exchange_hellos(a, b)
    assert b.codec.max_frame_size > cap
    payload = b"\xb9\x27\x10" + os.urandom(10_000)
    a.send_message("shh", 1, payload)
    assert b.receive_data(a.data_to_send()) == [MessageReceived("shh", 1, payload)]


def test_disconnect_tolerant_forms() -> None:
    from pimail.devp2p import compression

    # plain Disconnect although snappy is on
    a, b = pair()
    exchange_hellos(a, b)
    assert b.receive_data(raw_frame(a, 1, b"\xc1\x04")) == [DisconnectReceived(4, "too many peers")]
    # compressed, as it should be
    a, b = pair()
    exchange_hellos(a, b)
    assert b.receive_data(raw_frame(a, 1, compression.compress(b"\xc1\x05"))) == [
        DisconnectReceived(5, "already connected")]
    # garbage
    codec, b = raw_sender()
    assert b.receive_data(codec.encode(b"\x01\xff\xff")) == [DisconnectReceived(-1, "unreadable reason")]
    assert b.state is SessionState.CLOSED
