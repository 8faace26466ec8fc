"""Message payloads inside ``Envelope.Data`` (PROTOCOL.md §3.10): layout, padding, signatures,
symmetric (AES-256-GCM) and asymmetric (ECIES) encryption. Pure functions, no I/O.

PBKDF2 (65356 iterations) costs tens of milliseconds: callers on an event loop must run
``key_from_password`` in an executor.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from Crypto.Cipher import AES

from pimail.crypto import ecies
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import KeyError_, recover, sign

FLAG_SIGNED = 0x04
SIZE_MASK = 0x03
SIGNATURE_LEN = 65
PADDING_BLOCK = 256  # geth padSizeLimit
SYM_KEY_LEN = 32
GCM_NONCE_LEN = 12  # geth aesNonceLength
GCM_TAG_LEN = 16
PBKDF2_ITERATIONS = 65356  # sic: geth's value, not 65536 (trap 16)


class PayloadError(ValueError):
    """A payload could not be decrypted or does not parse."""


@dataclass(frozen=True)
class OpenedMessage:
    payload: bytes
    padding: bytes
    signer: bytes | None  # 64-byte public key, when signed


def key_from_password(password: str) -> bytes:
    """geth AddSymKeyFromPassword: PBKDF2-HMAC-SHA256, empty salt, 65356 iterations (blocking)."""
    return hashlib.pbkdf2_hmac("sha256", password.encode(), b"", PBKDF2_ITERATIONS, SYM_KEY_LEN)


def topic_from_name(name: str) -> bytes:
    """Status convention: the first 4 bytes of keccak256(name)."""
    return keccak256(name.encode())[:4]


def _size_field_len(n: int) -> int:
    if n < 256:
        return 1
    if n < 65536:
        return 2
    if n < 1 << 24:
        return 3
    raise PayloadError("payload too large (max 16 MiB)")


def build_plaintext(payload: bytes, signing_key: bytes | None = None, padding: bytes | None = None) -> bytes:
    """flags ‖ size ‖ payload ‖ padding ‖ [signature]; random padding to a multiple of 256."""
    n = _size_field_len(len(payload))
    flags = n
    if signing_key is not None:
        flags |= FLAG_SIGNED
    head = bytes((flags,)) + len(payload).to_bytes(n, "little") + payload
    if padding is None:
        raw_len = len(head) + (SIGNATURE_LEN if signing_key is not None else 0)
        pad_len = PADDING_BLOCK - raw_len % PADDING_BLOCK  # never 0, as geth
        padding = os.urandom(pad_len)
    body = head + padding
    if signing_key is not None:
        try:
            body += sign(signing_key, keccak256(body))
        except KeyError_ as exc:
            raise PayloadError(f"cannot sign: {exc}") from exc
    return body


def parse_plaintext(plain: bytes) -> OpenedMessage:
    """Inverse of ``build_plaintext``; verifies and recovers the signature if flagged."""
    if not plain:
        raise PayloadError("empty plaintext")
    flags = plain[0]
    end = len(plain)
    signer = None
    if flags & FLAG_SIGNED:
        if end < 1 + SIGNATURE_LEN:
            raise PayloadError("signed message too short for its signature")
        sig = plain[end - SIGNATURE_LEN :]
        end -= SIGNATURE_LEN
        try:
            signer = recover(keccak256(plain[:end]), sig)
        except KeyError_ as exc:
            raise PayloadError(f"bad signature: {exc}") from exc
    n = flags & SIZE_MASK
    if n == 0:
        return OpenedMessage(b"", plain[1:end], signer)
    if 1 + n > end:
        raise PayloadError("plaintext shorter than its size field")
    size = int.from_bytes(plain[1 : 1 + n], "little")
    start = 1 + n
    if start + size > end:
        raise PayloadError(f"payload size {size} exceeds the message")
    return OpenedMessage(plain[start : start + size], plain[start + size : end], signer)


def encrypt_symmetric(key: bytes, plaintext: bytes, nonce: bytes | None = None) -> bytes:
    """AES-256-GCM: ciphertext ‖ tag ‖ nonce(12)."""
    if len(key) != SYM_KEY_LEN:
        raise PayloadError(f"symmetric key must be {SYM_KEY_LEN} bytes")
    nonce = nonce if nonce is not None else os.urandom(GCM_NONCE_LEN)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=GCM_TAG_LEN)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    return ct + tag + nonce


def decrypt_symmetric(key: bytes, data: bytes) -> bytes:
    if len(key) != SYM_KEY_LEN:
        raise PayloadError(f"symmetric key must be {SYM_KEY_LEN} bytes")
    if len(data) < GCM_NONCE_LEN + GCM_TAG_LEN:
        raise PayloadError("data too short for AES-GCM")
    nonce = data[-GCM_NONCE_LEN:]
    ct, tag = data[: -GCM_NONCE_LEN - GCM_TAG_LEN], data[-GCM_NONCE_LEN - GCM_TAG_LEN : -GCM_NONCE_LEN]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce, mac_len=GCM_TAG_LEN)
    try:
        return cipher.decrypt_and_verify(ct, tag)
    except ValueError as exc:
        raise PayloadError("AES-GCM authentication failed (wrong key?)") from exc


def seal_symmetric(key: bytes, payload: bytes, signing_key: bytes | None = None) -> bytes:
    """Envelope Data for a symmetric message."""
    return encrypt_symmetric(key, build_plaintext(payload, signing_key))


def seal_asymmetric(recipient_pub: bytes, payload: bytes, signing_key: bytes | None = None) -> bytes:
    """Envelope Data for a message to one public key (64 or 65 bytes)."""
    pub = recipient_pub[1:] if len(recipient_pub) == 65 and recipient_pub[0] == 4 else recipient_pub
    try:
        return ecies.encrypt(pub, build_plaintext(payload, signing_key))
    except (KeyError_, ValueError) as exc:
        raise PayloadError(f"bad recipient public key: {exc}") from exc


def open_symmetric(key: bytes, data: bytes) -> OpenedMessage:
    return parse_plaintext(decrypt_symmetric(key, data))


def open_asymmetric(private_key: bytes, data: bytes) -> OpenedMessage:
    try:
        plain = ecies.decrypt(private_key, data)
    except (ecies.EciesError, KeyError_, ValueError) as exc:
        raise PayloadError(f"cannot decrypt: {exc}") from exc
    return parse_plaintext(plain)


def open_data(data: bytes, *, sym_key: bytes | None = None, private: bytes | None = None) -> OpenedMessage:
    """Open envelope Data with whichever keys are given: asymmetric first, then symmetric.

    The mailserver uses this for request envelopes, which clients encrypt either to its node key or
    with the key of its password.
    """
    if private is not None:
        try:
            return open_asymmetric(private, data)
        except PayloadError:
            if sym_key is None:
                raise
    if sym_key is not None:
        return open_symmetric(sym_key, data)
    raise PayloadError("no key to open the data with")
