"""The frame codec against the nim-eth encrypted Hello frames and geth's TestRLPXFrameFake."""

from __future__ import annotations

from typing import Any

import pytest

from pimail.crypto.keys import pubkey_from_private
from pimail.devp2p.messages import HELLO, Hello, decode_msg_id, encode_msg_id
from pimail.rlpx.frame import FrameCodec
from pimail.rlpx.handshake import Secrets, derive_secrets
from tests.conftest import load_vector

LEGACY = load_vector("rlpx_legacy_handshake_and_frames.json")
FAKE = load_vector("rlpx_frame_fake_mac.json")


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def legacy_secrets(initiator: bool) -> Secrets:
    i, hs = LEGACY["inputs"], LEGACY["handshake"]
    own_eph = i["initiator_ephemeral_private_key"] if initiator else i["receiver_ephemeral_private_key"]
    other_eph = i["receiver_ephemeral_private_key"] if initiator else i["initiator_ephemeral_private_key"]
    other = i["receiver_private_key"] if initiator else i["initiator_private_key"]
    return derive_secrets(
        initiator=initiator, ephemeral_private=h(own_eph),
        remote_ephemeral_pub=pubkey_from_private(h(other_eph)),
        initiator_nonce=h(i["initiator_nonce"]), recipient_nonce=h(i["receiver_nonce"]),
        auth_packet=h(hs["auth_ciphertext"]), ack_packet=h(hs["authresp_ciphertext"]),
        remote_pubkey=pubkey_from_private(h(other)), eip8=False)


def test_initial_mac_digests() -> None:
    s = legacy_secrets(True)
    want = LEGACY["expected_initial_mac_digests_initiator_side"]
    assert s.egress_mac.digest().hex() == want["initial_egress_MAC"]
    assert s.ingress_mac.digest().hex() == want["initial_ingress_MAC"]
    assert s.aes_secret.hex() == LEGACY["expected_secrets"]["aes_secret"]


def receiver_frame_data() -> bytes:
    d = LEGACY["decoded_frames"]["receiver_hello"]
    caps = tuple((c[0], c[1]) for c in d["caps"])
    hello = Hello(d["protocolVersion"], d["clientId"], caps, d["listenPort"], h(d["nodeId"]))
    return encode_msg_id(HELLO) + hello.encode()


@pytest.mark.parametrize("direct", [True, False], ids=["direct-mac", "portable-mac"])
def test_initiator_hello_frame_is_byte_exact(direct: bool) -> None:
    frame_data = h(LEGACY["decoded_frames"]["initiator_frame_data_hex"])
    codec = FrameCodec(legacy_secrets(True), direct_mac=direct)
    assert codec.direct_mac is direct  # the direct path is available with this pycryptodome + cffi
    wire = codec.encode(frame_data)
    assert wire == h(LEGACY["frames"]["initiator_hello_packet"])


@pytest.mark.parametrize("direct", [True, False], ids=["direct-mac", "portable-mac"])
def test_receiver_hello_frame_is_byte_exact(direct: bool) -> None:
    codec = FrameCodec(legacy_secrets(False), direct_mac=direct)
    assert codec.direct_mac is direct
    assert codec.encode(receiver_frame_data()) == h(LEGACY["frames"]["receiver_hello_packet"])


@pytest.mark.parametrize("direct", [True, False], ids=["direct-mac", "portable-mac"])
def test_both_sides_decode_the_others_hello(direct: bool) -> None:
    at_initiator = FrameCodec(legacy_secrets(True), direct_mac=direct).feed(
        h(LEGACY["frames"]["receiver_hello_packet"]))
    assert at_initiator == [receiver_frame_data()]
    at_receiver = FrameCodec(legacy_secrets(False), direct_mac=direct).feed(
        h(LEGACY["frames"]["initiator_hello_packet"]))
    assert at_receiver == [h(LEGACY["decoded_frames"]["initiator_frame_data_hex"])]
    code, off = decode_msg_id(at_receiver[0])
    hello = Hello.decode(at_receiver[0][off:])
    d = LEGACY["decoded_frames"]["initiator_hello"]
    assert code == HELLO and hello.version == d["protocolVersion"]
    assert hello.capabilities == (("a", 0), ("b", 2))
    assert hello.node_id.hex() == d["nodeId"]


class FakeMac:
    """geth's fakeHash: ignores writes, digest is 32 × 0x01."""

    def update(self, data: bytes) -> None:
        pass

    def digest(self) -> bytes:
        return h(FAKE["fake_mac_digest"])


def fake_secrets() -> Secrets:
    fake: Any = FakeMac()
    return Secrets(b"", h(FAKE["aes_secret"]), h(FAKE["mac_secret"]), fake, fake, True, b"")


def test_geth_frame_fake_mac_golden_output() -> None:
    frame_data = encode_msg_id(FAKE["msg_code"]) + h(FAKE["payload_hex"])
    codec = FrameCodec(fake_secrets())
    assert not codec.direct_mac  # no seed bytes (a fake sponge): the portable path by itself
    wire = codec.encode(frame_data)
    assert wire.hex() == FAKE["expected_wire_hex"]
    back = FrameCodec(fake_secrets()).feed(wire)
    code, off = decode_msg_id(back[0])
    assert code == FAKE["expected_read_back"]["code"]
    assert back[0][off:].hex() == FAKE["expected_read_back"]["payload_hex"]


@pytest.mark.parametrize("chunk", [1, 7, 16, 33, 1000])
@pytest.mark.parametrize(("direct_tx", "direct_rx"), [(True, False), (False, True), (True, True)])
def test_stream_of_frames_in_arbitrary_chunks(chunk: int, direct_tx: bool, direct_rx: bool) -> None:
    sender = FrameCodec(legacy_secrets(True), direct_mac=direct_tx)
    receiver = FrameCodec(legacy_secrets(False), direct_mac=direct_rx)
    frames = [bytes([i % 256]) * n for i, n in enumerate([1, 15, 16, 17, 100, 4096, 70000, 2])]
    wire = b"".join(sender.encode(f) for f in frames)
    got: list[bytes] = []
    for i in range(0, len(wire), chunk):
        got += receiver.feed(wire[i : i + chunk])
    assert got == frames
    assert receiver.buffered == 0
