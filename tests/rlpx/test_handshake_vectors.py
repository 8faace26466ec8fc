"""The RLPx handshake against the EIP-8 vectors and the nim-eth pre-EIP-8 vectors."""

from __future__ import annotations

from typing import Any

import pytest
import rlp
from Crypto.Util.strxor import strxor

from pimail.crypto import ecies
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import NodeKey, ecdh_x, pubkey_from_private, recover
from pimail.rlpx.handshake import ACK_LEGACY_LEN, AUTH_LEGACY_LEN, Initiator, Recipient, derive_secrets
from tests.conftest import load_vector

EIP8 = load_vector("eip8_handshake.json")
LEGACY = load_vector("rlpx_legacy_handshake_and_frames.json")


def h(x: str) -> bytes:
    return bytes.fromhex(x)


def eip8_in(name: str) -> bytes:
    return h(EIP8["inputs"][name])


def packet(name: str) -> bytes:
    p: dict[str, Any] = EIP8["packets"][name]
    raw = h(p["hex"])
    assert len(raw) == p["len"]
    return raw


def recipient_b() -> Recipient:
    return Recipient(NodeKey(eip8_in("static_key_B")), ephemeral_private=eip8_in("ephemeral_key_B"),
                     nonce=eip8_in("nonce_B"))


def initiator_a(eip8: bool = True) -> Initiator:
    return Initiator(NodeKey(eip8_in("static_key_A")), pubkey_from_private(eip8_in("static_key_B")),
                     eip8=eip8, ephemeral_private=eip8_in("ephemeral_key_A"), nonce=eip8_in("nonce_A"))


@pytest.mark.parametrize(("name", "version", "eip8"), [
    ("auth1_plain_v4", 4, False), ("auth2_eip8_v4", 4, True), ("auth3_eip8_v56", 56, True)])
def test_recipient_reads_every_auth_format(name: str, version: int, eip8: bool) -> None:
    r = recipient_b()
    ack = r.receive(packet(name))
    assert ack is not None
    assert r.remote_version == version
    s = r.secrets
    assert s is not None
    assert s.eip8 is eip8
    assert s.remote_pubkey == h(EIP8["derived_values"]["static_pubkey_A"])
    want = EIP8["expected_secrets_B_for_auth2_ack2"]
    assert s.aes_secret == h(want["aes_secret"])
    assert s.mac_secret == h(want["mac_secret"])
    # the reply is in the format received: legacy → exactly 210 bytes, EIP-8 → size prefix + padding
    if eip8:
        assert len(ack) > ACK_LEGACY_LEN and int.from_bytes(ack[:2], "big") == len(ack) - 2
    else:
        assert len(ack) == ACK_LEGACY_LEN and ack[0] == 4
    # the ack decrypts with A's key and is read by A's initiator
    a = initiator_a(eip8=eip8)
    a.auth_packet()
    sa = a.receive(ack)
    assert sa is not None and sa.aes_secret == s.aes_secret and sa.mac_secret == s.mac_secret


def test_recipient_ingress_mac_after_foo() -> None:
    r = recipient_b()
    r.receive(packet("auth2_eip8_v4"))
    assert r.secrets is not None
    mac = r.secrets.ingress_mac
    assert mac.digest().hex() == EIP8["derived_values"]["B_ingress_mac_initial_digest"]
    mac.update(b"foo")
    assert mac.digest().hex() == EIP8["expected_secrets_B_for_auth2_ack2"]["ingress_mac_after_update_foo"]


def test_recipient_reads_auth_delivered_byte_by_byte() -> None:
    r = recipient_b()
    data = packet("auth3_eip8_v56") + b"extra"
    acks = [r.receive(data[i : i + 1]) for i in range(len(data) - 5)]
    assert acks[:-1] == [None] * (len(acks) - 1) and acks[-1] is not None
    assert r.leftover == b""
    assert r.secrets is not None


@pytest.mark.parametrize(("name", "eip8"), [("ack1_plain_v4", False), ("ack2_eip8_v4", True),
                                            ("ack3_eip8_v57", True)])
def test_initiator_reads_every_ack_format(name: str, eip8: bool) -> None:
    a = initiator_a()
    a.auth_packet()
    s = a.receive(packet(name) + b"\x01\x02")
    assert s is not None
    want = EIP8["expected_secrets_B_for_auth2_ack2"]
    assert s.aes_secret == h(want["aes_secret"]) and s.mac_secret == h(want["mac_secret"])
    assert a.leftover == b"\x01\x02"
    if name == "ack2_eip8_v4":
        # A's ingress MAC is B's egress MAC: keccak((mac ^ nonce_A) || ack2)
        assert s.ingress_mac.digest().hex() == EIP8["derived_values"]["B_egress_mac_initial_digest"]


def test_initiator_auth_signature_signs_the_right_value() -> None:
    # The signed value is ecdh(static A, static B) ^ nonce_A, signed with ephemeral A: both our signature
    # and the published one must recover ephemeral A from it (ECDSA nonces may differ between signers).
    d = EIP8["derived_values"]
    signed = strxor(h(d["static_shared_secret_AB"]), eip8_in("nonce_A"))
    assert recover(signed, h(EIP8["auth_signature"]["hex"])) == h(d["ephemeral_pubkey_A"])
    for eip8 in (True, False):
        auth = initiator_a(eip8=eip8).auth_packet()
        key_b = eip8_in("static_key_B")
        if eip8:
            assert len(auth) > AUTH_LEGACY_LEN
            body = rlp.decode(ecies.decrypt(key_b, auth[2:], auth[:2]), strict=False)
            sig, pub, nonce, version = body[:4]
            assert int.from_bytes(version, "big") == 4
        else:
            assert len(auth) == AUTH_LEGACY_LEN
            plain = ecies.decrypt(key_b, auth)
            sig, pub, nonce = plain[:65], plain[97:161], plain[161:193]
            assert plain[65:97] == keccak256(h(d["ephemeral_pubkey_A"]))
        assert pub == h(d["static_pubkey_A"]) and nonce == eip8_in("nonce_A")
        assert recover(signed, sig) == h(d["ephemeral_pubkey_A"])


def test_derive_secrets_matches_eip8_intermediates() -> None:
    d = EIP8["derived_values"]
    s = derive_secrets(
        initiator=False, ephemeral_private=eip8_in("ephemeral_key_B"),
        remote_ephemeral_pub=h(d["ephemeral_pubkey_A"]), initiator_nonce=eip8_in("nonce_A"),
        recipient_nonce=eip8_in("nonce_B"), auth_packet=packet("auth2_eip8_v4"),
        ack_packet=packet("ack2_eip8_v4"), remote_pubkey=h(d["static_pubkey_A"]), eip8=True)
    assert s.token.hex() == d["token"]
    assert s.ingress_mac.digest().hex() == d["B_ingress_mac_initial_digest"]
    assert s.egress_mac.digest().hex() == d["B_egress_mac_initial_digest"]


# -- pre-EIP-8 (nim-eth) -------------------------------------------------------------------------------
def lg(name: str) -> bytes:
    return h(LEGACY["inputs"][name])


def legacy_initiator() -> Initiator:
    return Initiator(NodeKey(lg("initiator_private_key")), pubkey_from_private(lg("receiver_private_key")),
                     eip8=False, ephemeral_private=lg("initiator_ephemeral_private_key"),
                     nonce=lg("initiator_nonce"))


def test_legacy_initiator_auth_plaintext_is_exact_after_the_signature() -> None:
    auth = legacy_initiator().auth_packet()
    assert len(auth) == AUTH_LEGACY_LEN
    plain = ecies.decrypt(lg("receiver_private_key"), auth)
    want = h(LEGACY["handshake"]["auth_plaintext"])
    assert plain[65:] == want[65:]  # ephemeral-key hash, static key, nonce, token flag
    static_shared = ecdh_x(lg("initiator_private_key"), pubkey_from_private(lg("receiver_private_key")))
    signed = strxor(static_shared, lg("initiator_nonce"))
    eph_pub = pubkey_from_private(lg("initiator_ephemeral_private_key"))
    assert recover(signed, plain[:65]) == eph_pub == recover(signed, want[:65])


def test_legacy_vector_ciphertexts_decrypt() -> None:
    hs = LEGACY["handshake"]
    assert ecies.decrypt(lg("receiver_private_key"), h(hs["auth_ciphertext"])) == h(hs["auth_plaintext"])
    ack_plain = ecies.decrypt(lg("initiator_private_key"), h(hs["authresp_ciphertext"]))
    assert ack_plain == h(hs["authresp_plaintext"])


def test_legacy_recipient_and_initiator_secrets() -> None:
    hs, want = LEGACY["handshake"], LEGACY["expected_secrets"]
    r = Recipient(NodeKey(lg("receiver_private_key")), ephemeral_private=lg("receiver_ephemeral_private_key"),
                  nonce=lg("receiver_nonce"))
    ack = r.receive(h(hs["auth_ciphertext"]))
    assert ack is not None and len(ack) == ACK_LEGACY_LEN
    assert ecies.decrypt(lg("initiator_private_key"), ack) == h(hs["authresp_plaintext"])
    assert r.secrets is not None
    assert r.secrets.remote_pubkey == pubkey_from_private(lg("initiator_private_key"))
    i = legacy_initiator()
    i.auth_packet()
    si = i.receive(h(hs["authresp_ciphertext"]))
    assert si is not None
    for s in (r.secrets, si):
        assert s.aes_secret == h(want["aes_secret"])
        assert s.mac_secret == h(want["mac_secret"])
        assert s.token == h(want["token"])
