"""Keccak-256 (the original Keccak, not NIST SHA3): the one hashing room of RLPx, Whisper and the archive.

``keccak256(data)`` is the function to call. ``Crypto.Hash.keccak.new()`` spends ~7 µs per hash in
its Python wrapper (state allocation, smart pointer, buffer copies), and envelope validation needs
four hashes per envelope, so this module opens the same shared library pycryptodome loads
(``Crypto.Hash._keccak``, or its AVX2 build when pycryptodome picked that) through one cffi handle of
its own and calls ``keccak_oneshot`` directly. Every hash is still pycryptodome's C code.

- ``keccak256_pair(prefix, suffix)`` gives ``keccak(prefix)`` and ``keccak(prefix || suffix)`` from
  one absorption of ``prefix`` (the two PoW formulas hash the RLP without nonce, with and without the
  nonce appended): ``keccak_digest`` pads and squeezes a copy of the state, so a state can keep
  absorbing after a digest.
- ``native()`` hands the loaded library (its ``ffi``, the sponge functions, ``sponge(seed)``) to the
  RLPx frame codec's MAC sponges (``pimail.rlpx._ffi``), so there is one set of declarations.
- ``reference_keccak256`` and ``keccak_sponge`` are pycryptodome's public API: the reference the
  direct calls must reproduce (checked once at import, and by the tests), the fallback when they
  cannot be loaded, and the running MAC state of the handshake and the portable frame codec.

Output buffers are per thread because the FFI call releases the GIL (sealing runs in worker threads).
"""

from __future__ import annotations

import importlib.util
import threading
from collections.abc import Callable
from typing import Any

from Crypto.Hash import keccak as _keccak

__all__ = [
    "FAST",
    "FAST_PAIR",
    "KeccakLibrary",
    "keccak256",
    "keccak256_pair",
    "keccak_sponge",
    "native",
    "reference_keccak256",
]

CAPACITY_BYTES = 64  # Keccak-256: capacity 512 bits
ROUNDS = 24
PADDING = 0x01  # original Keccak padding (not NIST SHA3's 0x06)

_CDEF = """
int keccak_oneshot(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
                   size_t capacity_bytes, uint8_t rounds, uint8_t padding);
int keccak_init(void **state, size_t capacity_bytes, uint8_t rounds);
int keccak_destroy(void *state);
int keccak_reset(void *state);
int keccak_absorb(void *state, const uint8_t *in, size_t len);
int keccak_digest(void *state, uint8_t *digest, size_t len, uint8_t padding);
"""


def reference_keccak256(*parts: bytes) -> bytes:
    """keccak256 of the concatenation of ``parts`` through pycryptodome's public API."""
    h = _keccak.new(digest_bits=256)
    for p in parts:
        h.update(p)
    return h.digest()


def keccak_sponge(initial: bytes = b"") -> _keccak.Keccak_Hash:
    """A running Keccak-256 state (pycryptodome's public API); ``digest()`` does not finalise it."""
    h = _keccak.new(digest_bits=256, update_after_digest=True)
    if initial:
        h.update(initial)
    return h


def _candidates() -> list[str]:
    """The library ``Crypto.Hash.keccak`` uses (its AVX2 build if it picked that), then the portable one."""
    names = ["Crypto.Hash._keccak"]
    if getattr(_keccak, "_raw_keccak_avx2_bmi2_lib", None) is not None:
        names.insert(0, "Crypto.Hash._keccak_avx2_bmi2")
    return names


class KeccakLibrary:
    """pycryptodome's keccak library, opened through our own cffi handle (one per process)."""

    def __init__(self, ffi: Any, lib: Any, name: str) -> None:
        self.ffi = ffi
        self.name = name
        self.oneshot = lib.keccak_oneshot
        self.init, self.destroy, self.reset = lib.keccak_init, lib.keccak_destroy, lib.keccak_reset
        self.absorb, self.digest = lib.keccak_absorb, lib.keccak_digest
        self._lib = lib  # the function objects keep it open anyway

    def sponge(self, seed: bytes = b"") -> Any:
        """A new Keccak-256 C state (freed with its last reference) that has absorbed ``seed``."""
        holder = self.ffi.new("void **")
        if self.init(holder, CAPACITY_BYTES, ROUNDS):
            raise ValueError("keccak_init failed")
        state = self.ffi.gc(holder[0], self.destroy)
        if seed and self.absorb(state, seed, len(seed)):
            raise ValueError("keccak_absorb failed")
        return state


def _open() -> KeccakLibrary | None:
    try:
        from cffi import FFI  # type: ignore[import-untyped]
    except ImportError:
        return None
    ffi = FFI()
    ffi.cdef(_CDEF)
    for name in _candidates():
        try:
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.origin:
                continue
            return KeccakLibrary(ffi, ffi.dlopen(spec.origin), name)
        except (ImportError, ValueError, OSError, AttributeError):
            continue  # not installed, or without one of the functions: the next one, else the public API
    return None


Hash = Callable[[bytes], bytes]
Pair = Callable[[bytes, bytes], tuple[bytes, bytes]]


def _direct(k: KeccakLibrary) -> tuple[Hash, Pair]:
    ffi, oneshot = k.ffi, k.oneshot
    reset, absorb, squeeze = k.reset, k.absorb, k.digest
    local = threading.local()

    def keccak256(data: bytes) -> bytes:
        try:
            out, view = local.out
        except AttributeError:
            out = ffi.new("uint8_t[32]")
            view = ffi.buffer(out)
            local.out = (out, view)
        try:
            if oneshot(data, len(data), out, 32, CAPACITY_BYTES, ROUNDS, PADDING):
                return reference_keccak256(data)
        except TypeError:  # a bytearray or memoryview: cffi passes bytes only
            return reference_keccak256(data)
        digest: bytes = view[:]
        return digest

    pair_local = threading.local()

    def keccak256_pair(prefix: bytes, suffix: bytes) -> tuple[bytes, bytes]:
        try:
            state, out, view = pair_local.state
        except AttributeError:
            try:
                state = k.sponge()
            except ValueError:
                return keccak256(prefix), keccak256(prefix + suffix)
            out = ffi.new("uint8_t[32]")
            view = ffi.buffer(out)
            pair_local.state = (state, out, view)
        if reset(state) or absorb(state, prefix, len(prefix)) or squeeze(state, out, 32, PADDING):
            return keccak256(prefix), keccak256(prefix + suffix)
        first: bytes = view[:]
        if absorb(state, suffix, len(suffix)) or squeeze(state, out, 32, PADDING):
            return first, keccak256(prefix + suffix)
        second: bytes = view[:]
        return first, second

    return keccak256, keccak256_pair


def _load() -> tuple[KeccakLibrary, Hash, Pair] | None:
    k = _open()
    if k is None:
        return None
    try:
        fast, pair = _direct(k)
        # refuse the direct calls unless they agree with the public API (a sponge that keeps
        # absorbing after a digest included: the pair does exactly that)
        for probe in (b"", b"abc", bytes(range(256)) * 3):
            if fast(probe) != reference_keccak256(probe):
                return None
            for tail in (b"", b"\x01" * 8, bytes(136)):
                if pair(probe, tail) != (reference_keccak256(probe), reference_keccak256(probe + tail)):
                    return None
    except Exception:  # another pycryptodome layout or changed symbols: the public API then
        return None
    return k, fast, pair


def _public_keccak256(data: bytes) -> bytes:
    return reference_keccak256(data)


def _public_pair(prefix: bytes, suffix: bytes) -> tuple[bytes, bytes]:
    return reference_keccak256(prefix), reference_keccak256(prefix, suffix)


_LOADED = _load()

#: keccak256(data): the direct call when it works here, else pycryptodome's public API
keccak256: Hash = _LOADED[1] if _LOADED is not None else _public_keccak256
#: (keccak(prefix), keccak(prefix || suffix))
keccak256_pair: Pair = _LOADED[2] if _LOADED is not None else _public_pair
FAST = _LOADED is not None
FAST_PAIR = FAST


def native() -> KeccakLibrary | None:
    """The opened library when its direct calls reproduce the public API here, else None."""
    return _LOADED[0] if _LOADED is not None else None
