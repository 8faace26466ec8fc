"""A low-overhead Keccak-256 for the envelope hot path (still pycryptodome's C code).

``Crypto.Hash.keccak.new()`` spends ~7 µs per hash in its Python wrapper (state allocation, smart
pointer, buffer copies). Envelope validation needs four hashes per envelope, so we load the same
shared library (``Crypto/Hash/_keccak*.so``) through our own cffi handle (ctypes if cffi is missing)
and call its ``keccak_oneshot`` directly.
Output buffers are per thread because the FFI call releases the GIL during the call (sealing runs in
worker threads). If the library cannot be loaded this way we fall back to the regular wrapper.
"""

from __future__ import annotations

import ctypes
import importlib.util
import threading
from collections.abc import Callable

from pimail.crypto.hashing import keccak256 as _slow_keccak256

_CAPACITY_BYTES = 64  # Keccak-256: capacity 512 bits
_ROUNDS = 24
_PADDING = 0x01  # original Keccak padding (not NIST SHA3's 0x06)


def _library_path() -> str | None:
    """Path of pycryptodome's portable Keccak shared library (whichever FFI backend it uses)."""
    try:
        spec = importlib.util.find_spec("Crypto.Hash._keccak")
    except (ImportError, ValueError):
        return None
    return spec.origin if spec is not None else None


def _load_cffi(path: str) -> Callable[[bytes], bytes] | None:
    try:
        from cffi import FFI  # type: ignore[import-untyped]
    except ImportError:
        return None
    ffi = FFI()
    ffi.cdef(
        "int keccak_oneshot(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,"
        " size_t capacity_bytes, uint8_t rounds, uint8_t padding);"
    )
    try:
        lib = ffi.dlopen(path)
        oneshot = lib.keccak_oneshot
    except (OSError, AttributeError):
        return None
    local = threading.local()

    def keccak256(data: bytes) -> bytes:
        try:
            out, view = local.out
        except AttributeError:
            out = ffi.new("uint8_t[32]")
            view = ffi.buffer(out)
            local.out = (out, view)
        if oneshot(data, len(data), out, 32, _CAPACITY_BYTES, _ROUNDS, _PADDING):
            return _slow_keccak256(data)
        digest: bytes = view[:]
        return digest

    return keccak256


def _load() -> Callable[[bytes], bytes] | None:
    path = _library_path()
    if not path:
        return None
    fast = _load_cffi(path) or _load_ctypes(path)
    # Refuse the fast path unless it agrees with the reference implementation.
    if fast is not None:
        for probe in (b"", b"abc", bytes(range(256)) * 3):
            if fast(probe) != _slow_keccak256(probe):
                return None
    return fast


def _load_ctypes(path: str) -> Callable[[bytes], bytes] | None:
    try:
        lib = ctypes.CDLL(path)  # our own handle: never touch pycryptodome's function objects
        oneshot = lib.keccak_oneshot
    except (OSError, AttributeError):
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

    return keccak256


def _fallback(data: bytes) -> bytes:
    return _slow_keccak256(data)


_fast = _load()
keccak256: Callable[[bytes], bytes] = _fast if _fast is not None else _fallback
FAST = _fast is not None
