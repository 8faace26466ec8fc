"""The frame codec's two paths (direct pycryptodome C calls, public API) agree, and fall back right."""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator

import pytest
from Crypto.Util import _cpu_features

from pimail.crypto.keccak import native as keccak_native
from pimail.rlpx import _ffi
from pimail.rlpx.frame import BadFrameMac, BadHeaderMac, FrameCodec, FrameError, FrameTooLarge
from pimail.rlpx.handshake import Secrets
from tests.rlpx.test_frame_vectors import LEGACY, h, legacy_secrets

BOTH = pytest.mark.parametrize("direct", [True, False], ids=["direct", "portable"])
SIZES = [0, 1, 15, 16, 17, 100, 4095, 4096, 4097, 9000, 65536, 200_000, 210_000, _ffi.SCRATCH_KEEP + 5, 40]


@pytest.fixture
def fresh_native() -> Iterator[None]:
    """Forget the process-wide load result before and after a test that breaks the loading."""
    _ffi._NATIVE, _ffi._CHECKED = None, False
    yield
    _ffi._NATIVE, _ffi._CHECKED = None, False


def test_direct_path_loads_the_libraries_pycryptodome_uses() -> None:
    n = _ffi.native()
    assert n is not None and _ffi.available()
    want_aes = "Crypto.Cipher._raw_aesni" if _cpu_features.have_aes_ni() else None
    if want_aes:
        assert n.aes_lib_name == want_aes
    else:  # ARM: the ARMv8 build if the CPU has it and the wheel ships it, else the portable one
        assert n.aes_lib_name in ("Crypto.Cipher._raw_aes_armv8", "Crypto.Cipher._raw_aes")
    assert n.keccak_lib_name.startswith("Crypto.Hash._keccak")
    assert _ffi._self_test(n) is None


def test_direct_and_portable_encode_the_same_bytes() -> None:
    direct = FrameCodec(legacy_secrets(True), direct_mac=True)
    portable = FrameCodec(legacy_secrets(True), direct_mac=False)
    assert direct.direct_mac and not portable.direct_mac
    for size in SIZES:
        frame = os.urandom(size)
        assert direct.encode(frame) == portable.encode(frame), size


@pytest.mark.parametrize(("tx", "rx"), [(True, True), (True, False), (False, True)])
def test_cross_decode_every_size(tx: bool, rx: bool) -> None:
    sender = FrameCodec(legacy_secrets(True), direct_mac=tx)
    receiver = FrameCodec(legacy_secrets(False), direct_mac=rx)
    frames = [os.urandom(size) for size in SIZES]
    for frame in frames:  # one by one (bytes straight from the caller)
        assert receiver.feed(sender.encode(frame)) == [frame]
    wire = b"".join(sender.encode(f) for f in frames)  # all at once, then split (bytearray buffer)
    cut = len(wire) // 3
    assert receiver.feed(wire[:cut]) + receiver.feed(wire[cut:]) == frames
    assert receiver.buffered == 0


def test_scratch_buffers_stay_bounded() -> None:
    sender = FrameCodec(legacy_secrets(True))
    receiver = FrameCodec(legacy_secrets(False))
    egress, ingress = sender._egress, receiver._ingress
    assert isinstance(egress, _ffi.Egress) and isinstance(ingress, _ffi.Ingress)
    for size in SIZES:
        frame = os.urandom(size)
        assert receiver.feed(sender.encode(frame)) == [frame]
        assert egress._cap <= _ffi.SCRATCH_KEEP and ingress._cap <= _ffi.SCRATCH_KEEP
    assert egress._cap == ingress._cap == _ffi.SCRATCH_KEEP  # grown, but only up to the bound


def test_feed_accepts_bytearray_and_memoryview() -> None:
    sender = FrameCodec(legacy_secrets(True))
    receiver = FrameCodec(legacy_secrets(False))
    assert receiver.direct_mac
    assert receiver.feed(bytearray(sender.encode(b"abc"))) == [b"abc"]  # type: ignore[arg-type]
    assert receiver.feed(memoryview(sender.encode(b"xyz" * 9))) == [b"xyz" * 9]  # type: ignore[arg-type]


def _wire() -> tuple[bytes, int]:
    """Two frames of a fresh sender; offset where the second frame starts."""
    sender = FrameCodec(legacy_secrets(True))
    first = sender.encode(b"\x10" + bytes(40))
    return first + sender.encode(b"\x11" + bytes(200)), len(first)


@BOTH
@pytest.mark.parametrize(("where", "error"), [
    (0, BadHeaderMac), (15, BadHeaderMac),  # header-ct
    (16, BadHeaderMac), (31, BadHeaderMac),  # header-mac
    (32, BadFrameMac), (32 + 47, BadFrameMac),  # body-ct (41 bytes padded to 48)
    (32 + 48, BadFrameMac), (32 + 63, BadFrameMac),  # frame-mac
])
def test_flipped_byte_raises_the_right_error(direct: bool, where: int, error: type[FrameError]) -> None:
    for offset_in_stream in (False, True):  # first frame, or the second one after a good frame
        wire, second = _wire()
        pos = where + (second if offset_in_stream else 0)
        bad = bytearray(wire)
        bad[pos] ^= 0x40
        receiver = FrameCodec(legacy_secrets(False), direct_mac=direct)
        assert receiver.direct_mac is direct
        with pytest.raises(error):
            receiver.feed(bytes(bad))
        with pytest.raises(FrameError):  # the codec stays broken
            receiver.feed(wire)


@BOTH
def test_frame_size_cap_checked_after_the_header_mac(direct: bool) -> None:
    sender = FrameCodec(legacy_secrets(True))
    receiver = FrameCodec(legacy_secrets(False), max_frame_size=100, direct_mac=direct)
    assert receiver.feed(sender.encode(bytes(100))) == [bytes(100)]
    with pytest.raises(FrameTooLarge):
        receiver.feed(sender.encode(bytes(101)))


def test_seeds_that_miss_the_sponge_state_use_the_portable_path() -> None:
    moved = legacy_secrets(True)
    moved.egress_mac.update(b"foo")  # the sponge moved on after the handshake
    codec = FrameCodec(moved)
    assert not codec.direct_mac
    reference = legacy_secrets(True)
    reference.egress_mac.update(b"foo")
    frame = b"\x10hello"
    assert codec.encode(frame) == FrameCodec(reference, direct_mac=False).encode(frame)
    s = legacy_secrets(True)
    no_seeds = Secrets(s.remote_pubkey, s.aes_secret, s.mac_secret, s.egress_mac, s.ingress_mac,
                       s.eip8, s.token)
    assert not FrameCodec(no_seeds).direct_mac


def _broken_native() -> _ffi.Native:
    raise OSError("Crypto.Cipher._raw_ctr: not installed")


@pytest.mark.usefixtures("fresh_native")
def test_missing_library_falls_back_to_the_public_api(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ffi, "Native", _broken_native)
    assert not _ffi.available()
    codec = FrameCodec(legacy_secrets(True))
    assert not codec.direct_mac
    frame = h(LEGACY["decoded_frames"]["initiator_frame_data_hex"])
    assert codec.encode(frame) == h(LEGACY["frames"]["initiator_hello_packet"])


def test_open_reports_a_missing_module() -> None:
    n = _ffi.native()
    assert n is not None
    with pytest.raises(OSError, match="_raw_nothing"):
        _ffi._open(n.ffi, ["Crypto.Cipher._raw_nothing"])
    name, _ = _ffi._open(n.ffi, ["Crypto.Cipher._raw_nothing", "Crypto.Cipher._raw_ecb"])
    assert name == "Crypto.Cipher._raw_ecb"


@pytest.mark.usefixtures("fresh_native")
def test_self_test_rejects_functions_that_misbehave(monkeypatch: pytest.MonkeyPatch) -> None:
    n = _ffi.Native()
    assert _ffi._self_test(n) is None
    good_xor, good_digest = n.strxor, n.digest
    n.strxor = lambda a, b, out, size: None  # a declaration that does not match the library
    assert _ffi._self_test(n) == "strxor differs"
    n.strxor = good_xor
    n.digest = lambda state, out, size, pad: good_digest(state, out, size, 0x06)  # SHA3 padding
    assert _ffi._self_test(n) == "keccak digest differs"

    def misbehaving() -> _ffi.Native:
        return n

    monkeypatch.setattr(_ffi, "Native", misbehaving)
    assert _ffi.native() is None
    assert not FrameCodec(legacy_secrets(True)).direct_mac


def test_codecs_free_their_c_states(monkeypatch: pytest.MonkeyPatch) -> None:
    n = _ffi.native()
    k = keccak_native()
    assert n is not None and k is not None
    freed: dict[str, int] = {}

    def counting(owner: object, name: str) -> None:
        real = getattr(owner, name)

        def free(state: object) -> object:
            freed[name] = freed.get(name, 0) + 1
            return real(state)

        monkeypatch.setattr(owner, name, free)

    counting(k, "destroy")  # the MAC sponges are states of the one keccak loader
    for name in ("ecb_stop", "ctr_stop"):
        counting(n, name)
    codecs = [FrameCodec(legacy_secrets(True)) for _ in range(20)]
    assert all(c.direct_mac for c in codecs) and not freed
    for c in codecs:
        c.encode(bytes(100))
    del codecs, c
    gc.collect()
    # each codec: two MAC sponges, two ECB states, two CTR states (each AES cipher goes with its mode)
    assert freed == {"destroy": 40, "ecb_stop": 40, "ctr_stop": 40}


@pytest.mark.usefixtures("fresh_native")
@pytest.mark.parametrize("armv8", [False, True], ids=["no-aes-instructions", "armv8-without-its-library"])
def test_without_aes_ni_the_portable_aes_library_works(monkeypatch: pytest.MonkeyPatch, armv8: bool) -> None:
    # what a Raspberry Pi sees: no AES-NI; an ARMv8 CPU whose wheel may lack _raw_aes_armv8
    monkeypatch.setattr(_cpu_features, "have_aes_ni", lambda: 0)
    monkeypatch.setattr(_cpu_features, "have_aes_armv8", lambda: int(armv8))
    assert [name for name, _ in _ffi._aes_candidates()] == (
        ["Crypto.Cipher._raw_aes_armv8"] if armv8 else []) + ["Crypto.Cipher._raw_aes"]
    n = _ffi.native()
    assert n is not None
    assert n.aes_lib_name == "Crypto.Cipher._raw_aes"
    assert n.keccak_lib_name == "Crypto.Hash._keccak"
    codec = FrameCodec(legacy_secrets(True))
    assert codec.direct_mac
    frame = h(LEGACY["decoded_frames"]["initiator_frame_data_hex"])
    assert codec.encode(frame) == h(LEGACY["frames"]["initiator_hello_packet"])
