"""The running RLPx MAC of one direction: a keccak sponge plus AES-ECB on the mac-secret.

Per frame the codec makes ~10 tiny calls into pycryptodome (16-byte AES blocks, 16-byte absorbs,
32-byte digests), so the Python wrapper around each C call costs more than the cryptography. The
*direct* implementation calls the same pycryptodome C functions (``keccak_absorb``,
``keccak_digest``, ``ECB_encrypt``) without the wrappers; it relies on pycryptodome internals, so it
is used only with pycryptodome's cffi backend (which checks each call against the installed
library's C declarations), is checked against the public API once per process, and the *portable*
implementation (public API only) takes over if anything differs or is missing. Either way no
cryptography is implemented here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from Crypto.Cipher import AES
from Crypto.Hash import keccak as _keccak

from pimail.crypto.hashing import keccak256, keccak_sponge

log = logging.getLogger(__name__)

Update = Callable[[bytes], None]
Digest = Callable[[], bytes]
Block = Callable[[bytes], bytes]


class FrameMac:
    """``update``/``digest`` of the sponge and ``step`` (geth's updateMAC)."""

    def __init__(self, sponge: Any, mac_secret: bytes, *, direct: bool = True) -> None:
        self._sponge = sponge  # keeps the C state alive for the direct functions
        self._ecb = AES.new(mac_secret, AES.MODE_ECB)
        funcs = _direct(sponge, self._ecb) if direct and direct_available() else None
        self.direct = funcs is not None
        if funcs is None:
            funcs = _portable(sponge, self._ecb)
        self.update, self.digest, self._block = funcs

    def step(self, state_digest: bytes, seed: bytes) -> bytes:
        """Absorb AES(mac-secret, digest[:16]) ^ seed and return the new 32-byte digest.

        ``state_digest`` must be the digest of the sponge's current state (callers keep it).
        """
        t = int.from_bytes(self._block(state_digest[:16]), "big") ^ int.from_bytes(seed, "big")
        self.update(t.to_bytes(16, "big"))
        return self.digest()


def _portable(sponge: Any, ecb: Any) -> tuple[Update, Digest, Block]:
    out = bytearray(16)
    encrypt = ecb.encrypt

    def block(data: bytes) -> bytes:
        encrypt(data, output=out)
        return bytes(out)

    return sponge.update, sponge.digest, block


def _direct(sponge: Any, ecb: Any) -> tuple[Update, Digest, Block] | None:
    try:
        from Crypto.Cipher import _mode_ecb
        from Crypto.Util import _raw_api

        if _raw_api.backend != "cffi":
            # only cffi checks our calls against the C declarations of the installed pycryptodome
            return None

        keccak_lib = _keccak._raw_keccak_lib
        absorb, squeeze = keccak_lib.keccak_absorb, keccak_lib.keccak_digest
        ecb_encrypt = _mode_ecb.raw_ecb_lib.ECB_encrypt
        state = sponge._state.get()
        ecb_state = ecb._state.get()
        padding = _raw_api.c_ubyte(sponge._padding)
        ptr, size_t, raw = _raw_api.c_uint8_ptr, _raw_api.c_size_t, _raw_api.get_raw_buffer
        digest_buf = _raw_api.create_string_buffer(32)
        block_buf = _raw_api.create_string_buffer(16)
        n32, n16 = size_t(32), size_t(16)
    except Exception:  # another pycryptodome layout, or a fake sponge in tests
        return None

    # The closures hold the Python objects that own the C states, so the states outlive every call.
    owners = (sponge, ecb)

    def update(data: bytes, _owners: tuple[Any, Any] = owners) -> None:
        if absorb(state, ptr(data), size_t(len(data))):
            raise ValueError("keccak absorb failed")

    def digest(_owners: tuple[Any, Any] = owners) -> bytes:
        if squeeze(state, digest_buf, n32, padding):
            raise ValueError("keccak digest failed")
        return raw(digest_buf)

    def block(data: bytes, _owners: tuple[Any, Any] = owners) -> bytes:
        if ecb_encrypt(ecb_state, ptr(data), block_buf, n16):
            raise ValueError("AES-ECB failed")
        return raw(block_buf)

    return update, digest, block


_DIRECT_OK: bool | None = None


def direct_available() -> bool:
    """Whether the direct functions agree with the public API (checked once per process)."""
    global _DIRECT_OK
    if _DIRECT_OK is None:
        _DIRECT_OK = _self_test()
        if not _DIRECT_OK:
            log.info("RLPx MAC: using pycryptodome's public API (direct calls unavailable)")
    return _DIRECT_OK


def _self_test() -> bool:
    try:
        sponge = keccak_sponge(b"pimail")
        key = bytes(range(32))
        funcs = _direct(sponge, AES.new(key, AES.MODE_ECB))
        if funcs is None:
            return False
        update, digest, block = funcs
        first = digest()
        update(b" rlpx")
        second = digest()
        update(b"x" * 300)
        third = digest()
        data = bytes(range(16))
        return (first == keccak256(b"pimail") and second == keccak256(b"pimail rlpx")
                and third == keccak256(b"pimail rlpx" + b"x" * 300)
                and block(data) == AES.new(key, AES.MODE_ECB).encrypt(data)
                and isinstance(sponge, _keccak.Keccak_Hash))
    except Exception:
        return False
