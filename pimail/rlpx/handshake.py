"""The RLPx auth/ack handshake as sans-I/O objects (PROTOCOL.md §1.3–1.5).

``Initiator`` (we dialled) and ``Recipient`` (we accepted) are fed the bytes read from the socket
and hand back the bytes to write. Both formats are spoken: EIP-8 (RLP body, 2-byte size prefix,
padding) and the legacy fixed-size "plain" packets; a recipient answers in the format it received.
When the handshake completes, ``secrets`` holds the session keys and the two running MAC sponges
that the frame codec takes over.

Ephemeral keys, nonces and EIP-8 padding can be injected so the published vectors can be checked.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from typing import Any

import coincurve
from Crypto.Hash import keccak as _keccak
from Crypto.Util.strxor import strxor

from pimail import rlpcodec
from pimail.crypto import ecies
from pimail.crypto.keccak import keccak256, keccak_sponge
from pimail.crypto.keys import KeyError_, NodeKey, ecdh_x, import_pubkey, pubkey_from_private, recover, sign

AUTH_PLAIN_LEN = 194  # sig 65 + hash 32 + pub 64 + nonce 32 + flag 1 (geth authMsgLen)
ACK_PLAIN_LEN = 97  # pub 64 + nonce 32 + flag 1 (geth authRespLen)
AUTH_LEGACY_LEN = AUTH_PLAIN_LEN + ecies.OVERHEAD  # 307, geth encAuthMsgLen
ACK_LEGACY_LEN = ACK_PLAIN_LEN + ecies.OVERHEAD  # 210, geth encAuthRespLen
HANDSHAKE_VERSION = 4  # auth-vsn / ack-vsn we send
EIP8_PAD_MIN, EIP8_PAD_MAX = 100, 299  # bytes of zero padding (what geth sends)
NONCE_LEN = 32


class HandshakeError(Exception):
    """The handshake failed; the connection is closed without a Disconnect message."""

    counter = "handshake_failed"


class HandshakeDecryptError(HandshakeError):
    """The packet is not ECIES-encrypted to our key (random bytes, wrong node key, corruption)."""

    counter = "handshake_undecryptable"


class HandshakeFormatError(HandshakeError):
    """The packet decrypted but its contents are malformed (bad RLP, bad key, bad signature)."""

    counter = "handshake_malformed"


@dataclass
class Secrets:
    """Session secrets after a successful handshake (PROTOCOL.md §1.4–1.5)."""

    remote_pubkey: bytes  # 64 B, authenticated static key of the peer
    aes_secret: bytes
    mac_secret: bytes
    egress_mac: _keccak.Keccak_Hash
    ingress_mac: _keccak.Keccak_Hash
    eip8: bool  # format of the auth packet (the recipient replied in the same one)
    token: bytes  # keccak256(shared-secret); legacy, only used by vectors
    #: the bytes absorbed into egress_mac/ingress_mac at creation: the frame codec rebuilds the
    #: sponges in its own C states from them (and checks the result against the sponges' digests)
    egress_mac_seed: bytes = b""
    ingress_mac_seed: bytes = b""


def derive_secrets(
    *,
    initiator: bool,
    ephemeral_private: bytes,
    remote_ephemeral_pub: bytes,
    initiator_nonce: bytes,
    recipient_nonce: bytes,
    auth_packet: bytes,
    ack_packet: bytes,
    remote_pubkey: bytes,
    eip8: bool,
) -> Secrets:
    """Compute the session secrets and initial MAC states from the handshake values.

    ``auth_packet``/``ack_packet`` are the exact bytes on the wire (with the EIP-8 size prefix).
    """
    try:
        ephemeral_key = ecdh_x(ephemeral_private, remote_ephemeral_pub)
    except KeyError_ as exc:
        raise HandshakeFormatError(f"remote ephemeral key unusable: {exc}") from exc
    shared = keccak256(ephemeral_key + keccak256(recipient_nonce + initiator_nonce))
    aes = keccak256(ephemeral_key + shared)
    mac = keccak256(ephemeral_key + aes)
    seed_auth = strxor(mac, recipient_nonce) + auth_packet
    seed_ack = strxor(mac, initiator_nonce) + ack_packet
    egress, ingress = (seed_auth, seed_ack) if initiator else (seed_ack, seed_auth)
    return Secrets(remote_pubkey, aes, mac, keccak_sponge(egress), keccak_sponge(ingress), eip8,
                   keccak256(shared), egress, ingress)


def _eip8_padding(padding: bytes | None) -> bytes:
    if padding is not None:
        return padding
    return bytes(random.randint(EIP8_PAD_MIN, EIP8_PAD_MAX))


def _seal(remote_pub: bytes, body: bytes, eip8: bool, padding: bytes | None) -> bytes:
    if not eip8:
        return ecies.encrypt(remote_pub, body)
    body += _eip8_padding(padding)
    prefix = (len(body) + ecies.OVERHEAD).to_bytes(2, "big")
    return prefix + ecies.encrypt(remote_pub, body, prefix)


class _PacketReader:
    """Reads one auth or ack packet in either format from a growing buffer (geth's readHandshakeMsg)."""

    def __init__(self, private: bytes, legacy_len: int, max_eip8: int = 2 + 0xFFFF) -> None:
        self._private = private
        self._legacy_len = legacy_len
        self._max = max_eip8
        self._legacy_failed = False
        self.buffer = bytearray()

    def feed(self, data: bytes) -> tuple[bytes, bytes, bool] | None:
        """Return (packet bytes, plaintext, eip8) when complete, None if more bytes are needed."""
        self.buffer += data
        buf = self.buffer
        if len(buf) < self._legacy_len:
            return None
        if not self._legacy_failed:
            # A legacy packet starts with the 0x04 of the ECIES ephemeral key; an EIP-8 one only does
            # when its size prefix is ≥ 1024, so most EIP-8 packets skip the trial decrypt.
            if buf[0] == 4:
                packet = bytes(buf[: self._legacy_len])
                try:
                    plain = ecies.decrypt(self._private, packet)
                except ecies.EciesError:
                    pass
                else:
                    del buf[: self._legacy_len]
                    return packet, plain, False
            self._legacy_failed = True
        size = int.from_bytes(buf[:2], "big")
        if size < self._legacy_len:
            # geth: "size underflow"; random bytes usually end here
            raise HandshakeDecryptError(f"handshake packet is neither legacy nor EIP-8 (size prefix {size})")
        total = size + 2
        if len(buf) < total:
            return None
        packet = bytes(buf[:total])
        try:
            plain = ecies.decrypt(self._private, packet[2:], packet[:2])
        except ecies.EciesError as exc:
            raise HandshakeDecryptError(f"cannot decrypt handshake packet: {exc}") from exc
        del buf[:total]
        return packet, plain, True


def _rlp_list(plain: bytes, what: str, min_items: int) -> list[Any]:
    try:
        items = rlpcodec.decode(plain, strict=False)
    except rlpcodec.RlpError as exc:
        raise HandshakeFormatError(f"{what} body is not RLP: {exc}") from exc
    if not isinstance(items, list) or len(items) < min_items:
        raise HandshakeFormatError(f"{what} body must be a list of at least {min_items} items")
    return items


def _field(value: Any, length: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != length:
        raise HandshakeFormatError(f"{what} must be {length} bytes")
    return value


class Initiator:
    """Our side of a handshake we started by dialling ``remote_pubkey``."""

    def __init__(
        self,
        key: NodeKey,
        remote_pubkey: bytes,
        *,
        eip8: bool = True,
        ephemeral_private: bytes | None = None,
        nonce: bytes | None = None,
        padding: bytes | None = None,
    ) -> None:
        import_pubkey(remote_pubkey)
        self._key = key
        self.remote_pubkey = remote_pubkey
        self.eip8 = eip8
        self._eph = ephemeral_private or coincurve.PrivateKey().secret
        self.nonce = nonce or os.urandom(NONCE_LEN)
        self._padding = padding
        self._auth: bytes | None = None
        self._reader = _PacketReader(key.private, ACK_LEGACY_LEN)
        self.secrets: Secrets | None = None

    def auth_packet(self) -> bytes:
        """The auth bytes to send first (built once)."""
        if self._auth is None:
            static_shared = ecdh_x(self._key.private, self.remote_pubkey)
            sig = sign(self._eph, strxor(static_shared, self.nonce))
            if self.eip8:
                body = rlpcodec.encode([sig, self._key.public, self.nonce, HANDSHAKE_VERSION])
            else:
                eph_pub = pubkey_from_private(self._eph)
                body = sig + keccak256(eph_pub) + self._key.public + self.nonce + b"\x00"
            self._auth = _seal(self.remote_pubkey, body, self.eip8, self._padding)
        return self._auth

    def receive(self, data: bytes) -> Secrets | None:
        """Feed bytes from the peer; returns the secrets once the ack is complete.

        Bytes that arrived after the ack (the peer's first frames) are in ``leftover``.
        """
        auth = self.auth_packet()
        got = self._reader.feed(data)
        if got is None:
            return None
        packet, plain, eip8 = got
        if eip8:
            items = _rlp_list(plain, "ack", 2)
            remote_eph = _field(items[0], 64, "ack ephemeral key")
            remote_nonce = _field(items[1], NONCE_LEN, "ack nonce")
        else:
            remote_eph, remote_nonce = plain[:64], plain[64:96]
        self.secrets = derive_secrets(
            initiator=True,
            ephemeral_private=self._eph,
            remote_ephemeral_pub=remote_eph,
            initiator_nonce=self.nonce,
            recipient_nonce=remote_nonce,
            auth_packet=auth,
            ack_packet=packet,
            remote_pubkey=self.remote_pubkey,
            eip8=self.eip8,
        )
        return self.secrets

    @property
    def leftover(self) -> bytes:
        return bytes(self._reader.buffer)


class Recipient:
    """Our side of a handshake on a connection we accepted."""

    def __init__(
        self,
        key: NodeKey,
        *,
        ephemeral_private: bytes | None = None,
        nonce: bytes | None = None,
        padding: bytes | None = None,
    ) -> None:
        self._key = key
        self._eph = ephemeral_private or coincurve.PrivateKey().secret
        self.nonce = nonce or os.urandom(NONCE_LEN)
        self._padding = padding
        self._reader = _PacketReader(key.private, AUTH_LEGACY_LEN)
        self.secrets: Secrets | None = None
        self.remote_version: int | None = None

    def receive(self, data: bytes) -> bytes | None:
        """Feed bytes from the peer; returns the ack to send once the auth is complete.

        After that ``secrets`` is set and any extra bytes are in ``leftover``.
        """
        if self.secrets is not None:
            raise HandshakeError("handshake already complete")
        got = self._reader.feed(data)
        if got is None:
            return None
        packet, plain, eip8 = got
        if eip8:
            items = _rlp_list(plain, "auth", 4)
            sig = _field(items[0], 65, "auth signature")
            remote_pub = _field(items[1], 64, "auth public key")
            remote_nonce = _field(items[2], NONCE_LEN, "auth nonce")
            version = items[3]
            self.remote_version = int.from_bytes(version, "big") if isinstance(version, bytes) else None
        else:
            sig, remote_pub, remote_nonce = plain[:65], plain[97:161], plain[161:193]
            self.remote_version = HANDSHAKE_VERSION
        try:
            static_shared = ecdh_x(self._key.private, remote_pub)
            remote_eph = recover(strxor(static_shared, remote_nonce), sig)
        except KeyError_ as exc:
            raise HandshakeFormatError(f"auth key or signature unusable: {exc}") from exc
        eph_pub = pubkey_from_private(self._eph)
        if eip8:
            body = rlpcodec.encode([eph_pub, self.nonce, HANDSHAKE_VERSION])
        else:
            body = eph_pub + self.nonce + b"\x00"
        ack = _seal(remote_pub, body, eip8, self._padding)
        self.secrets = derive_secrets(
            initiator=False,
            ephemeral_private=self._eph,
            remote_ephemeral_pub=remote_eph,
            initiator_nonce=remote_nonce,
            recipient_nonce=self.nonce,
            auth_packet=packet,
            ack_packet=ack,
            remote_pubkey=remote_pub,
            eip8=eip8,
        )
        return ack

    @property
    def leftover(self) -> bytes:
        return bytes(self._reader.buffer)
