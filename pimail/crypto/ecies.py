"""ECIES as used by RLPx handshakes and Whisper asymmetric payloads (PROTOCOL.md §1.2)."""

from __future__ import annotations

import hashlib
import hmac
import os

import coincurve
from Crypto.Cipher import AES

from pimail.crypto.keys import KeyError_, ecdh_x, import_pubkey

OVERHEAD = 65 + 16 + 32  # ephemeral pubkey, IV, HMAC-SHA256


class EciesError(ValueError):
    """The ciphertext could not be authenticated or decrypted."""


def _kdf(shared: bytes) -> tuple[bytes, bytes]:
    # NIST SP 800-56 concatenation KDF, SHA-256, one block, empty s1.
    k = hashlib.sha256(b"\x00\x00\x00\x01" + shared).digest()
    return k[:16], hashlib.sha256(k[16:32]).digest()


def encrypt(remote_pub: bytes, plaintext: bytes, shared_mac_data: bytes = b"") -> bytes:
    """Encrypt to a 64-byte public key: ``R(65) || iv(16) || c || d(32)``."""
    import_pubkey(remote_pub)
    eph = coincurve.PrivateKey()
    k_e, k_m = _kdf(ecdh_x(eph.secret, remote_pub))
    iv = os.urandom(16)
    ct = AES.new(k_e, AES.MODE_CTR, nonce=b"", initial_value=iv).encrypt(plaintext)
    tag = hmac.new(k_m, iv + ct + shared_mac_data, hashlib.sha256).digest()
    return eph.public_key.format(compressed=False) + iv + ct + tag


def decrypt(private: bytes, data: bytes, shared_mac_data: bytes = b"") -> bytes:
    """Authenticate and decrypt ``data`` with a 32-byte private key; raise EciesError on failure."""
    if len(data) < OVERHEAD:
        raise EciesError(f"ECIES message too short ({len(data)} bytes)")
    if data[0] != 4:
        raise EciesError("ECIES message does not start with an uncompressed point")
    try:
        shared = ecdh_x(private, data[1:65])
    except KeyError_ as exc:
        raise EciesError("ECIES ephemeral key is not on the curve") from exc
    k_e, k_m = _kdf(shared)
    iv, ct, tag = data[65:81], data[81:-32], data[-32:]
    want = hmac.new(k_m, iv + ct + shared_mac_data, hashlib.sha256).digest()
    if not hmac.compare_digest(want, tag):
        raise EciesError("ECIES MAC mismatch")
    return AES.new(k_e, AES.MODE_CTR, nonce=b"", initial_value=iv).decrypt(ct)
