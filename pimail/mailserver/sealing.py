"""Whisper message payloads as the mailserver needs them: open a request envelope's Data
(symmetric or asymmetric), recover its signer, and seal one for the history client.

PROTOCOL.md §3.10. Plaintext = flags(1) ‖ size(n, LE) ‖ payload ‖ padding ‖ [signature(65)].
Symmetric Data = AES-256-GCM ciphertext ‖ tag(16) ‖ nonce(12); asymmetric Data = ECIES blob.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from Crypto.Cipher import AES

from pimail.crypto import ecies
from pimail.crypto.hashing import keccak256
from pimail.crypto.keys import SIGNATURE_LEN, KeyError_, recover, sign

PBKDF2_ITERATIONS = 65356  # sic — geth/status deriveKeyMaterial (PROTOCOL.md trap 16)
SYM_KEY_LEN = 32
GCM_NONCE_LEN = 12
GCM_TAG_LEN = 16
FLAG_SIGNED = 0x04
SIZE_MASK = 0x03
PADDING_BLOCK = 256  # geth padSizeLimit


class PayloadError(ValueError):
    """The envelope data could not be decrypted or its plaintext is malformed."""


def key_from_password(password: str) -> bytes:
    """shh_generateSymKeyFromPassword: PBKDF2-HMAC-SHA256, empty salt, 65356 rounds, 32 bytes.

    Costs tens of milliseconds: call it once at start, off the event loop.
    """
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"", PBKDF2_ITERATIONS, SYM_KEY_LEN)


@dataclass(frozen=True)
class OpenedMessage:
    payload: bytes
    signer: bytes | None  # 64-byte public key, None when unsigned


def decrypt_symmetric(data: bytes, key: bytes) -> bytes:
    if len(data) < GCM_TAG_LEN + GCM_NONCE_LEN:
        raise PayloadError("symmetric data too short")
    nonce = data[-GCM_NONCE_LEN:]
    tag = data[-GCM_NONCE_LEN - GCM_TAG_LEN : -GCM_NONCE_LEN]
    ct = data[: -GCM_NONCE_LEN - GCM_TAG_LEN]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=GCM_TAG_LEN)
    try:
        return cipher.decrypt_and_verify(ct, tag)
    except ValueError as exc:
        raise PayloadError("symmetric decryption failed (wrong key or corrupt data)") from exc


def encrypt_symmetric(plaintext: bytes, key: bytes) -> bytes:
    nonce = os.urandom(GCM_NONCE_LEN)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=GCM_TAG_LEN)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    return ct + tag + nonce


def decrypt_asymmetric(data: bytes, private: bytes) -> bytes:
    try:
        return ecies.decrypt(private, data)
    except ecies.EciesError as exc:
        raise PayloadError(f"asymmetric decryption failed: {exc}") from exc


def parse_plaintext(plain: bytes) -> OpenedMessage:
    """Split a decrypted plaintext into payload and (recovered) signer."""
    if not plain:
        raise PayloadError("empty plaintext")
    flags = plain[0]
    end = len(plain)
    signer: bytes | None = None
    if flags & FLAG_SIGNED:
        if end < 1 + SIGNATURE_LEN:
            raise PayloadError("plaintext too short for its signature")
        sig = plain[end - SIGNATURE_LEN :]
        end -= SIGNATURE_LEN
        try:
            signer = recover(keccak256(plain[:end]), sig)
        except KeyError_ as exc:
            raise PayloadError(f"bad signature: {exc}") from exc
    n = flags & SIZE_MASK
    if n == 0:
        return OpenedMessage(b"", signer)
    if 1 + n > end:
        raise PayloadError("plaintext too short for its size field")
    size = int.from_bytes(plain[1 : 1 + n], "little")
    if 1 + n + size > end:
        raise PayloadError("payload size field exceeds the plaintext")
    return OpenedMessage(plain[1 + n : 1 + n + size], signer)


def open_data(data: bytes, *, sym_key: bytes | None = None, private: bytes | None = None) -> OpenedMessage:
    """Open envelope data: asymmetric first (if a private key is given), then symmetric."""
    if private is not None:
        try:
            return parse_plaintext(decrypt_asymmetric(data, private))
        except PayloadError:
            if sym_key is None:
                raise
    if sym_key is not None:
        return parse_plaintext(decrypt_symmetric(data, sym_key))
    raise PayloadError("no key to open the data with")


def build_plaintext(payload: bytes, signing_key: bytes | None) -> bytes:
    """flags ‖ size ‖ payload ‖ padding ‖ [signature], padded like geth to a multiple of 256."""
    n = 1 if len(payload) < 256 else 2 if len(payload) < 65536 else 3
    flags = n | (FLAG_SIGNED if signing_key is not None else 0)
    body = bytes([flags]) + len(payload).to_bytes(n, "little") + payload
    total = len(body) + (SIGNATURE_LEN if signing_key is not None else 0)
    pad = PADDING_BLOCK - total % PADDING_BLOCK  # geth never adds zero padding
    body += os.urandom(pad)
    if signing_key is not None:
        body += sign(signing_key, keccak256(body))
    return body


def seal_symmetric(payload: bytes, key: bytes, signing_key: bytes | None) -> bytes:
    """Envelope Data for ``payload`` encrypted with a symmetric key, optionally signed."""
    return encrypt_symmetric(build_plaintext(payload, signing_key), key)


def seal_asymmetric(payload: bytes, recipient_pub: bytes, signing_key: bytes | None) -> bytes:
    return ecies.encrypt(recipient_pub, build_plaintext(payload, signing_key))
