"""A low-overhead Keccak-256 for the envelope hot path (still pycryptodome's C code).

``Crypto.Hash.keccak.new()`` spends ~7 µs per hash in its Python wrapper (state allocation, smart
pointer, buffer copies). Envelope validation needs four hashes per envelope, so we call the same
shared library's ``keccak_oneshot`` through our own ``ctypes`` handle with fixed argument types.
Output buffers are per thread because ctypes releases the GIL during the call (sealing runs in
worker threads). If the library cannot be loaded this way we fall back to the regular wrapper.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable

from pimail.crypto.hashing import keccak256 as _slow_keccak256

_CAPACITY_BYTES = 64  # Keccak-256: capacity 512 bits
_ROUNDS = 24
_PADDING = 0x01  # original Keccak padding (not NIST SHA3's 0x06)


def _load() -> Callable[[bytes], bytes] | None:
    try:
        from Crypto.Hash import keccak as _pyc_keccak

        path = getattr(_pyc_keccak._raw_keccak_lib, "_name", None)
        if not path:
            return None
        lib = ctypes.CDLL(path)  # our own handle: never touch pycryptodome's function objects
        oneshot = lib.keccak_oneshot
    except (OSError, AttributeError, ImportError):
        return None
    oneshot.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
        ctypes.c_ubyte,
        ctypes.c_ubyte,
    ]
    oneshot.restype = ctypes.c_int
    local = threading.local()

    def keccak256(data: bytes) -> bytes:
        try:
            out = local.out
        except AttributeError:
            out = local.out = ctypes.create_string_buffer(32)
        if oneshot(data, len(data), out, 32, _CAPACITY_BYTES, _ROUNDS, _PADDING):
            return _slow_keccak256(data)
        digest: bytes = out.raw
        return digest

    # Refuse the fast path unless it agrees with the reference implementation.
    for probe in (b"", b"abc", bytes(range(256)) * 3):
        if keccak256(probe) != _slow_keccak256(probe):
            return None
    return keccak256


def _fallback(data: bytes) -> bytes:
    return _slow_keccak256(data)


_fast = _load()
keccak256: Callable[[bytes], bytes] = _fast if _fast is not None else _fallback
FAST = _fast is not None
