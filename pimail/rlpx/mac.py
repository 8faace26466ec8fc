"""The frame codec's portable path: pycryptodome's public API only.

Same interface as ``pimail.rlpx._ffi.Egress``/``Ingress``; used when the direct calls are unavailable
(another pycryptodome build, no cffi), for sponges that cannot be rebuilt from seed bytes (the fake
MAC of geth's test vector), and in the tests as the reference the direct path must match.
"""

from __future__ import annotations

from hmac import compare_digest
from typing import Any

from Crypto.Cipher import AES

_ZERO16 = bytes(16)
_HEADER_TAIL = b"\xc2\x80\x80" + bytes(10)  # header = size(3) || rlp([0, 0]) || zero padding


class FrameMac:
    """The running MAC of one direction: the handshake's keccak sponge plus AES-ECB on mac-secret."""

    def __init__(self, sponge: Any, mac_secret: bytes) -> None:
        self._sponge = sponge
        self._encrypt = AES.new(mac_secret, AES.MODE_ECB).encrypt
        self._out = bytearray(16)
        self.update = sponge.update
        #: digest of the sponge's current state, kept so each step saves a keccak call
        self.current: bytes = sponge.digest()

    def step(self, seed: bytes) -> bytes:
        """Absorb AES(mac-secret, digest[:16]) ^ seed (geth's updateMAC); return the new digest."""
        self._encrypt(self.current[:16], output=self._out)
        t = int.from_bytes(self._out, "big") ^ int.from_bytes(seed, "big")
        self._sponge.update(t.to_bytes(16, "big"))
        self.current = self._sponge.digest()
        return self.current

    def body(self, body_ct: bytes) -> bytes:
        """Absorb a body-ct and return the frame MAC's digest."""
        self._sponge.update(body_ct)
        seed: bytes = self._sponge.digest()
        self.current = seed
        return self.step(seed[:16])


class _PortableDirection:
    def __init__(self, aes_secret: bytes, mac_secret: bytes, sponge: Any) -> None:
        # one continuous CTR keystream per direction, zero IV, 128-bit big-endian counter; in CTR
        # mode decrypting is the same keystream XOR as encrypting
        self._ctr = AES.new(aes_secret, AES.MODE_CTR, nonce=b"", initial_value=0).encrypt
        self._mac = FrameMac(sponge, mac_secret)

    def mac_digest(self) -> bytes:
        return self._mac.current


class PortableEgress(_PortableDirection):
    def seal(self, frame_data: bytes) -> bytes:
        size = len(frame_data)
        ct = self._ctr(b"".join((size.to_bytes(3, "big"), _HEADER_TAIL, frame_data, _ZERO16[:-size % 16])))
        header_ct, body_ct = ct[:16], ct[16:]
        header_mac = self._mac.step(header_ct)[:16]
        return b"".join((header_ct, header_mac, body_ct, self._mac.body(body_ct)[:16]))


class PortableIngress(_PortableDirection):
    def open_header(self, header_ct: bytes, header_mac: bytes) -> int:
        if not compare_digest(self._mac.step(header_ct)[:16], header_mac):
            return -1
        header = self._ctr(header_ct)
        return (header[0] << 16) | (header[1] << 8) | header[2]

    def open_body(self, body_ct: bytes, frame_mac: bytes, size: int) -> bytes | None:
        if not compare_digest(self._mac.body(body_ct)[:16], frame_mac):
            return None
        body: bytes = self._ctr(body_ct)
        return body[:size] if size != len(body) else body
