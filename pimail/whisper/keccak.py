"""A low-overhead Keccak-256 for the envelope hot path (still pycryptodome's C code).

``Crypto.Hash.keccak.new()`` spends ~7 µs per hash in its Python wrapper (state allocation, smart
pointer, buffer copies). Envelope validation needs four hashes per envelope, so we load the same
shared library (``Crypto/Hash/_keccak*.so``) through our own cffi handle (ctypes if cffi is missing)
and call its ``keccak_oneshot`` directly.

``keccak256_pair(prefix, suffix)`` gives ``keccak(prefix)`` and ``keccak(prefix || suffix)`` from one
absorption of ``prefix`` (the two PoW formulas hash the RLP without nonce, with and without the
nonce appended): pycryptodome's ``keccak_digest`` pads and squeezes a copy of the state, so the
state can keep absorbing after a digest.
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


Hash = Callable[[bytes], bytes]
Pair = Callable[[bytes, bytes], tuple[bytes, bytes]]


def _load_cffi(path: str) -> tuple[Hash, Pair | None] | None:
    try:
        from cffi import FFI  # type: ignore[import-untyped]
    except ImportError:
        return None
    ffi = FFI()
    ffi.cdef(
        "int keccak_oneshot(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,"
        " size_t capacity_bytes, uint8_t rounds, uint8_t padding);"
        "int keccak_init(void **state, size_t capacity_bytes, uint8_t rounds);"
        "int keccak_destroy(void *state);"
        "int keccak_reset(void *state);"
        "int keccak_absorb(void *state, const uint8_t *in, size_t len);"
        "int keccak_digest(void *state, uint8_t *digest, size_t len, uint8_t padding);"
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

    try:
        init, destroy = lib.keccak_init, lib.keccak_destroy
        reset, absorb, squeeze = lib.keccak_reset, lib.keccak_absorb, lib.keccak_digest
    except AttributeError:
        return keccak256, None
    pair_local = threading.local()

    def keccak256_pair(prefix: bytes, suffix: bytes) -> tuple[bytes, bytes]:
        try:
            state, out, view = pair_local.state
        except AttributeError:
            holder = ffi.new("void **")
            if init(holder, _CAPACITY_BYTES, _ROUNDS):
                return keccak256(prefix), keccak256(prefix + suffix)
            state = ffi.gc(holder[0], destroy)
            out = ffi.new("uint8_t[32]")
            view = ffi.buffer(out)
            pair_local.state = (state, out, view)
        if (
            reset(state)
            or absorb(state, prefix, len(prefix))
            or squeeze(state, out, 32, _PADDING)
        ):
            return keccak256(prefix), keccak256(prefix + suffix)
        first: bytes = view[:]
        if absorb(state, suffix, len(suffix)) or squeeze(state, out, 32, _PADDING):
            return first, keccak256(prefix + suffix)
        second: bytes = view[:]
        return first, second

    return keccak256, keccak256_pair


def _load() -> tuple[Hash, Pair | None] | None:
    path = _library_path()
    if not path:
        return None
    loaded = _load_cffi(path)
    if loaded is None:
        ctypes_hash = _load_ctypes(path)
        loaded = (ctypes_hash, None) if ctypes_hash is not None else None
    if loaded is None:
        return None
    fast, pair = loaded
    # Refuse the fast path unless it agrees with the reference implementation.
    probes = (b"", b"abc", bytes(range(256)) * 3)
    for probe in probes:
        if fast(probe) != _slow_keccak256(probe):
            return None
    if pair is not None:
        for probe in probes:
            for tail in (b"", b"\x01" * 8, bytes(136)):
                if pair(probe, tail) != (_slow_keccak256(probe), _slow_keccak256(probe + tail)):
                    pair = None
                    break
            if pair is None:
                break
    return fast, pair


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


def _pair_fallback(prefix: bytes, suffix: bytes) -> tuple[bytes, bytes]:
    return keccak256(prefix), keccak256(prefix + suffix)


_fast = _load()
keccak256: Hash = _fast[0] if _fast is not None else _fallback
keccak256_pair: Pair = _fast[1] if _fast is not None and _fast[1] is not None else _pair_fallback
"""``(keccak(prefix), keccak(prefix || suffix))``."""
FAST = _fast is not None
FAST_PAIR = _fast is not None and _fast[1] is not None
