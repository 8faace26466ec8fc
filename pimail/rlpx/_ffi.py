"""The frame codec's fast path: pycryptodome's own C functions, called through our own cffi handle.

A 100-byte frame costs ~20 calls into pycryptodome (CTR, 16-byte AES blocks, 16-byte absorbs,
32-byte digests), and the Python wrappers around those calls cost far more than the cryptography.
Here we open the same shared libraries pycryptodome loads (``Crypto.Cipher._raw_aes``/``_raw_aesni``/
``_raw_aes_armv8``, ``_raw_ecb``, ``_raw_ctr``, ``Crypto.Util._strxor``) with our own cffi ``FFI`` and
declarations, create our own C states (freed by ``ffi.gc``) and call the functions with ``bytes``
arguments and preallocated output buffers. The MAC sponges are keccak states of the one keccak loader,
``pimail.crypto.keccak.native()`` (its declarations, its checks). Every cryptographic operation is
still pycryptodome's C code; nothing cryptographic is implemented here.

The declarations state the C signatures of those libraries' functions (as pycryptodome's Python
modules declare them). If a library or function is missing, or the functions do not reproduce the
public API's results (checked once per process by ``available()``), the codec uses
``pimail.rlpx.mac`` (public API only) instead.
"""

from __future__ import annotations

import importlib.util
import logging
from hmac import compare_digest
from typing import Any

from pimail.crypto import keccak as _keccak
from pimail.crypto.keccak import PADDING as _KECCAK_PADDING

log = logging.getLogger(__name__)

_CDEF = """
int AES_start_operation(const uint8_t key[], size_t key_len, void **pResult);
int AES_stop_operation(void *state);
int AESNI_start_operation(const uint8_t key[], size_t key_len, void **pResult);
int AESNI_stop_operation(void *state);
int AES_ARMV8_start_operation(const uint8_t key[], size_t key_len, void **pResult);
int AES_ARMV8_stop_operation(void *state);
int ECB_start_operation(void *cipher, void **pResult);
int ECB_encrypt(void *ecbState, const uint8_t *in, uint8_t *out, size_t data_len);
int ECB_stop_operation(void *state);
int CTR_start_operation(void *cipher, uint8_t initialCounterBlock[], size_t initialCounterBlock_len,
                        size_t prefix_len, unsigned counter_len, unsigned littleEndian,
                        void **pResult);
int CTR_encrypt(void *ctrState, const uint8_t *in, uint8_t *out, size_t data_len);
int CTR_stop_operation(void *ctrState);
void strxor(const uint8_t *in1, const uint8_t *in2, uint8_t *out, size_t len);
"""

_ZERO16 = bytes(16)
_HEADER_TAIL = b"\xc2\x80\x80" + bytes(10)  # header = size(3) || rlp([0, 0]) || zero padding
#: scratch buffers up to this size are kept per direction; larger frames get a temporary one
SCRATCH_KEEP = 256 * 1024 + 64


class Native:
    """The loaded libraries: one per process (see ``native()``)."""

    def __init__(self) -> None:
        from cffi import FFI  # type: ignore[import-untyped]

        keccak = _keccak.native()
        if keccak is None:
            raise OSError("pimail.crypto.keccak has no direct calls in this process")
        ffi = FFI()
        ffi.cdef(_CDEF)
        self.ffi = ffi  # its cdata types are cffi's own, shared with the keccak handle's
        self.keccak_lib_name = keccak.name
        self.sponge = keccak.sponge
        self.aes_lib_name, aes = _open(ffi, [name for name, _ in _aes_candidates()])
        prefix = dict(_aes_candidates())[self.aes_lib_name]
        self.aes_start = getattr(aes, prefix + "_start_operation")
        self.aes_stop = getattr(aes, prefix + "_stop_operation")
        _, ecb = _open(ffi, ["Crypto.Cipher._raw_ecb"])
        _, ctr = _open(ffi, ["Crypto.Cipher._raw_ctr"])
        _, xor = _open(ffi, ["Crypto.Util._strxor"])
        self.absorb, self.digest = keccak.absorb, keccak.digest
        self.ecb_start, self.ecb_encrypt, self.ecb_stop = (
            ecb.ECB_start_operation, ecb.ECB_encrypt, ecb.ECB_stop_operation)
        self.ctr_start, self.ctr_encrypt, self.ctr_stop = (
            ctr.CTR_start_operation, ctr.CTR_encrypt, ctr.CTR_stop_operation)
        self.strxor = xor.strxor
        self._libs = (aes, ecb, ctr, xor)  # the function objects keep them open anyway

    def _cipher(self, key: bytes) -> Any:
        out = self.ffi.new("void **")
        if self.aes_start(key, len(key), out):
            raise ValueError("AES key rejected")
        return out[0]

    def ecb(self, key: bytes) -> Any:
        """AES-ECB state for ``key``."""
        cipher = self._cipher(key)
        out = self.ffi.new("void **")
        if self.ecb_start(cipher, out):
            self.aes_stop(cipher)
            raise ValueError("ECB_start_operation failed")
        return self.ffi.gc(out[0], self.ecb_stop)  # the mode state owns (and frees) the cipher

    def ctr(self, key: bytes) -> Any:
        """AES-CTR state: zero IV, 128-bit big-endian counter (Go's cipher.NewCTR)."""
        cipher = self._cipher(key)
        out = self.ffi.new("void **")
        if self.ctr_start(cipher, _ZERO16, 16, 0, 16, 0, out):
            self.aes_stop(cipher)
            raise ValueError("CTR_start_operation failed")
        return self.ffi.gc(out[0], self.ctr_stop)


def _aes_candidates() -> list[tuple[str, str]]:
    """(module, symbol prefix): the CPU's AES instructions when ``Crypto.Cipher.AES`` would use them."""
    names = [("Crypto.Cipher._raw_aes", "AES")]
    try:
        from Crypto.Util import _cpu_features as cpu

        if cpu.have_aes_ni():
            names.insert(0, ("Crypto.Cipher._raw_aesni", "AESNI"))
        elif getattr(cpu, "have_aes_armv8", lambda: 0)():
            names.insert(0, ("Crypto.Cipher._raw_aes_armv8", "AES_ARMV8"))
    except (ImportError, AttributeError, OSError):
        pass
    return names


def _open(ffi: Any, modules: list[str]) -> tuple[str, Any]:
    """Open the first of ``modules`` that exists (a missing one raises, the caller falls back)."""
    errors = []
    for name in modules:
        try:
            spec = importlib.util.find_spec(name)
            if spec is None or not spec.origin:
                raise OSError("not installed")
            return name, ffi.dlopen(spec.origin)
        except (ImportError, ValueError, OSError) as exc:
            errors.append(f"{name}: {exc}")
    raise OSError("; ".join(errors))


class _Direction:
    """One direction's C states: CTR keystream, ECB on the mac-secret, MAC sponge, its digest."""

    __slots__ = ("_blk", "_buf", "_cap", "_ctr", "_dig", "_dview", "_ecb", "_mac", "_n", "_view")

    def __init__(self, n: Native, aes_secret: bytes, mac_secret: bytes, mac_seed: bytes) -> None:
        self._n = n
        self._ctr = n.ctr(aes_secret)
        self._ecb = n.ecb(mac_secret)
        self._mac = n.sponge(mac_seed)
        ffi = n.ffi
        self._dig = ffi.new("uint8_t[32]")  # always the digest of the MAC's current state
        self._dview = ffi.buffer(self._dig)
        self._blk = ffi.new("uint8_t[16]")
        n.digest(self._mac, self._dig, 32, _KECCAK_PADDING)
        self._cap = 0
        self._scratch(4096)

    def _scratch(self, size: int) -> None:
        self._buf = self._n.ffi.new("uint8_t[]", size)
        self._view = self._n.ffi.buffer(self._buf)
        self._cap = size

    def mac_digest(self) -> bytes:
        """Digest of this direction's MAC state."""
        digest: bytes = self._dview[:]
        return digest


class Egress(_Direction):
    """Seals outgoing frames: CTR keystream and egress MAC in C states of our own."""

    __slots__ = ("_buf16",)

    def _scratch(self, size: int) -> None:
        super()._scratch(size)
        self._buf16 = self._buf + 16

    def seal(self, frame_data: bytes) -> bytes:
        """header-ct || header-mac || body-ct (padded to 16) || body-mac."""
        n = self._n
        size = len(frame_data)
        pad = -size % 16
        total = 16 + size + pad
        if total > self._cap:
            if total <= SCRATCH_KEEP:
                self._scratch(min(max(total, 2 * self._cap), SCRATCH_KEEP))
            else:
                return self._seal_large(frame_data, total)
        buf, dig, blk, st, ecb = self._buf, self._dig, self._blk, self._mac, self._ecb
        absorb, digest, block, xor = n.absorb, n.digest, n.ecb_encrypt, n.strxor
        # keccak and ECB calls only fail on NULL states or unsupported lengths, which these never
        # pass: their return codes are not checked on the hot path (the self-test checks results)
        # keystream does not depend on the data: header and body in one CTR call
        plain = b"".join((size.to_bytes(3, "big"), _HEADER_TAIL, frame_data, _ZERO16[:pad]))
        if n.ctr_encrypt(self._ctr, plain, buf, total):
            raise ValueError("CTR_encrypt failed")
        # header MAC: absorb AES(mac-secret, digest[:16]) ^ header-ct
        block(ecb, dig, blk, 16)
        xor(blk, buf, blk, 16)
        absorb(st, blk, 16)
        digest(st, dig, 32, _KECCAK_PADDING)
        dview, view = self._dview, self._view
        header_mac = dview[0:16]
        # frame MAC: absorb body-ct, then AES(mac-secret, d[:16]) ^ d[:16] with d the new digest
        absorb(st, self._buf16, total - 16)
        digest(st, dig, 32, _KECCAK_PADDING)
        block(ecb, dig, blk, 16)
        xor(blk, dig, blk, 16)
        absorb(st, blk, 16)
        digest(st, dig, 32, _KECCAK_PADDING)
        return b"".join((view[0:16], header_mac, view[16:total], dview[0:16]))

    def _seal_large(self, frame_data: bytes, total: int) -> bytes:
        keep = self._buf, self._buf16, self._view, self._cap
        self._scratch(total)
        try:
            return self.seal(frame_data)
        finally:
            self._buf, self._buf16, self._view, self._cap = keep


class Ingress(_Direction):
    """Checks and decrypts incoming headers and bodies (the caller keeps the stream position)."""

    __slots__ = ("_hdr",)

    def __init__(self, n: Native, aes_secret: bytes, mac_secret: bytes, mac_seed: bytes) -> None:
        self._hdr = n.ffi.new("uint8_t[16]")
        super().__init__(n, aes_secret, mac_secret, mac_seed)

    def open_header(self, header_ct: bytes, header_mac: bytes) -> int:
        """The frame-size of a 16-byte header-ct, or -1 if ``header_mac`` does not match."""
        n, dig, blk, st = self._n, self._dig, self._blk, self._mac
        n.ecb_encrypt(self._ecb, dig, blk, 16)
        n.strxor(blk, header_ct, blk, 16)
        n.absorb(st, blk, 16)
        n.digest(st, dig, 32, _KECCAK_PADDING)
        if not compare_digest(self._dview[0:16], header_mac):
            return -1
        hdr = self._hdr
        if n.ctr_encrypt(self._ctr, header_ct, hdr, 16):
            raise ValueError("CTR_decrypt failed")
        size: int = (hdr[0] << 16) | (hdr[1] << 8) | hdr[2]
        return size

    def open_body(self, body_ct: bytes, frame_mac: bytes, size: int) -> bytes | None:
        """The first ``size`` bytes of the decrypted body, or None if ``frame_mac`` does not match."""
        n, dig, blk, st = self._n, self._dig, self._blk, self._mac
        padded = len(body_ct)
        n.absorb(st, body_ct, padded)
        n.digest(st, dig, 32, _KECCAK_PADDING)
        n.ecb_encrypt(self._ecb, dig, blk, 16)
        n.strxor(blk, dig, blk, 16)
        n.absorb(st, blk, 16)
        n.digest(st, dig, 32, _KECCAK_PADDING)
        if not compare_digest(self._dview[0:16], frame_mac):
            return None
        if padded > self._cap:
            if padded > SCRATCH_KEEP:
                out = self._n.ffi.new("uint8_t[]", padded)
                n.ctr_encrypt(self._ctr, body_ct, out, padded)
                body: bytes = self._n.ffi.buffer(out, size)[:]
                return body
            self._scratch(min(max(padded, 2 * self._cap), SCRATCH_KEEP))
        if n.ctr_encrypt(self._ctr, body_ct, self._buf, padded):
            raise ValueError("CTR_decrypt failed")
        plain: bytes = self._view[0:size]
        return plain


_NATIVE: Native | None = None
_CHECKED = False


def native() -> Native | None:
    """The loaded libraries if they work exactly like pycryptodome's public API, else None."""
    global _NATIVE, _CHECKED
    if not _CHECKED:
        _CHECKED = True
        try:
            candidate = Native()
            problem = _self_test(candidate)
        except Exception as exc:  # missing cffi, another pycryptodome layout, changed symbols
            candidate, problem = None, f"{type(exc).__name__}: {exc}"
        if candidate is not None and problem is None:
            _NATIVE = candidate
            log.debug("RLPx frames: direct pycryptodome calls (%s, %s)", candidate.keccak_lib_name,
                      candidate.aes_lib_name)
        else:
            log.info("RLPx frames: using pycryptodome's public API (direct calls unavailable: %s)", problem)
    return _NATIVE


def _self_test(n: Native) -> str | None:
    """Compare every primitive with pycryptodome's public API; a description of the first mismatch."""
    from Crypto.Cipher import AES

    # the keccak calls were checked by their loader; here: this handle's buffers work with them
    seed = b"pimail rlpx self-test" * 9
    state = n.sponge(seed)
    dig = n.ffi.new("uint8_t[32]")
    n.digest(state, dig, 32, _KECCAK_PADDING)
    if n.ffi.buffer(dig)[:] != _keccak.reference_keccak256(seed):
        return "keccak digest differs"
    key = bytes(range(32))
    data = bytes(range(100, 148))
    out = n.ffi.new("uint8_t[48]")
    n.ecb_encrypt(n.ecb(key), data, out, 48)
    if n.ffi.buffer(out)[:] != AES.new(key, AES.MODE_ECB).encrypt(data):
        return "AES-ECB differs"
    ctr, ref = n.ctr(key), AES.new(key, AES.MODE_CTR, nonce=b"", initial_value=0)
    for chunk in (data[:5], data[5:37], data[37:]):  # the keystream carries over between calls
        n.ctr_encrypt(ctr, chunk, out, len(chunk))
        if n.ffi.buffer(out, len(chunk))[:] != ref.encrypt(chunk):
            return "AES-CTR differs"
    xored = n.ffi.new("uint8_t[16]")
    n.strxor(data[:16], data[16:32], xored, 16)
    if n.ffi.buffer(xored)[:] != bytes(a ^ b for a, b in zip(data[:16], data[16:32], strict=True)):
        return "strxor differs"
    return None


def available() -> bool:
    """Whether the codec can use the direct calls in this process."""
    return native() is not None


def pair(aes_secret: bytes, mac_secret: bytes, egress_seed: bytes, ingress_seed: bytes,
         egress_digest: bytes, ingress_digest: bytes) -> tuple[Egress, Ingress] | None:
    """Direct egress/ingress states, or None if unavailable or the seeds do not reproduce the
    handshake's MAC digests (a sponge updated after the handshake, or no seeds at all)."""
    n = native()
    if n is None or not egress_seed or not ingress_seed:
        return None
    egress = Egress(n, aes_secret, mac_secret, egress_seed)
    ingress = Ingress(n, aes_secret, mac_secret, ingress_seed)
    if not (compare_digest(egress.mac_digest(), egress_digest)
            and compare_digest(ingress.mac_digest(), ingress_digest)):
        return None
    return egress, ingress
