"""The RLPx frame codec: AES-256-CTR + keccak MACs (PROTOCOL.md §1.6). Sans-I/O.

One ``FrameCodec`` per connection, built from the handshake ``Secrets``. ``encode`` turns one
frame-data blob (``rlp(msg-id) || payload``) into wire bytes; ``feed`` takes whatever the socket
delivered and returns the complete frames it now holds. MACs are checked before anything is
decrypted; any failure raises a ``FrameError`` and leaves the codec unusable (the connection must go).
"""

from __future__ import annotations

from typing import Protocol

from pimail.rlpx import _ffi
from pimail.rlpx.handshake import Secrets
from pimail.rlpx.mac import PortableEgress, PortableIngress

# Load and check the direct path at import (~50 ms, mostly cffi parsing the declarations), so the
# first connection does not pay for it inside the event loop.
_ffi.native()

MAX_FRAME_SIZE = (1 << 24) - 1  # the header's frame-size field is 24 bits
HEADER_LEN = 16
MAC_LEN = 16


class FrameError(Exception):
    """The inbound stream is broken; the connection must be closed."""

    counter = "frame_error"
    #: whether a Disconnect can still be sent (our egress stream is unaffected, but after a MAC
    #: failure the peer is not who we think or the link corrupts data: close silently like geth)
    send_disconnect = False


class BadHeaderMac(FrameError):
    counter = "bad_header_mac"


class BadFrameMac(FrameError):
    counter = "bad_frame_mac"


class FrameTooLarge(FrameError):
    counter = "frame_too_large"
    send_disconnect = True


class EgressPath(Protocol):
    def seal(self, frame_data: bytes) -> bytes: ...


class IngressPath(Protocol):
    def open_header(self, header_ct: bytes, header_mac: bytes) -> int: ...
    def open_body(self, body_ct: bytes, frame_mac: bytes, size: int) -> bytes | None: ...


class FrameCodec:
    """Encrypts/authenticates outgoing frames and decodes the incoming stream incrementally."""

    def __init__(self, secrets: Secrets, max_frame_size: int = MAX_FRAME_SIZE, *,
                 direct_mac: bool = True) -> None:
        if not 0 < max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be in 1..{MAX_FRAME_SIZE}")
        self.max_frame_size = max_frame_size
        # The direct path (pimail.rlpx._ffi) rebuilds the handshake's MAC sponges in C states of its
        # own from the seed bytes and must reproduce their digests; otherwise the portable path
        # (public API) takes the sponges over.
        direct = _ffi.pair(secrets.aes_secret, secrets.mac_secret, secrets.egress_mac_seed,
                           secrets.ingress_mac_seed, secrets.egress_mac.digest(),
                           secrets.ingress_mac.digest()) if direct_mac else None
        self._egress: EgressPath
        self._ingress: IngressPath
        if direct is not None:
            self._egress, self._ingress = direct
        else:
            self._egress = PortableEgress(secrets.aes_secret, secrets.mac_secret, secrets.egress_mac)
            self._ingress = PortableIngress(secrets.aes_secret, secrets.mac_secret, secrets.ingress_mac)
        self.direct_mac = direct is not None
        self._seal = self._egress.seal
        self._buf = bytearray()
        self._pending_size = -1  # frame-size of a verified header whose body is not complete yet
        self._broken = False
        self.frames_in = 0
        self.frames_out = 0

    def encode(self, frame_data: bytes) -> bytes:
        """Wire bytes for one frame: header-ct, header-mac, body-ct (padded to 16), body-mac."""
        if len(frame_data) > MAX_FRAME_SIZE:
            raise ValueError(f"frame of {len(frame_data)} bytes exceeds the 24-bit frame-size field")
        self.frames_out += 1
        return self._seal(frame_data)

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frame-data of every frame completed by them."""
        if self._broken:
            raise FrameError("frame codec used after a failure")
        # Work on the received bytes directly when nothing is buffered (the common case), so each
        # slice is one copy; only an incomplete tail is kept in the bytearray.
        src: bytes | bytearray
        if self._buf:
            self._buf += data
            src = self._buf
        else:
            src = data
        copy = type(src) is not bytes  # the C calls take bytes (a bytearray's slices are bytearrays)
        out: list[bytes] = []
        pos = 0
        end = len(src)
        ingress = self._ingress
        try:
            while True:
                size = self._pending_size
                if size < 0:
                    if end - pos < HEADER_LEN + MAC_LEN:
                        break
                    header_ct = src[pos : pos + HEADER_LEN]
                    header_mac = src[pos + HEADER_LEN : pos + HEADER_LEN + MAC_LEN]
                    if copy:
                        header_ct, header_mac = bytes(header_ct), bytes(header_mac)
                    size = ingress.open_header(header_ct, header_mac)  # type: ignore[arg-type]
                    if size < 0:
                        raise BadHeaderMac("frame header MAC mismatch")
                    pos += HEADER_LEN + MAC_LEN
                    if size > self.max_frame_size:
                        raise FrameTooLarge(f"frame of {size} bytes exceeds the cap of {self.max_frame_size}")
                    self._pending_size = size
                padded = size + (-size % 16)
                if end - pos < padded + MAC_LEN:
                    break
                body_ct = src[pos : pos + padded]
                frame_mac = src[pos + padded : pos + padded + MAC_LEN]
                if copy:
                    body_ct, frame_mac = bytes(body_ct), bytes(frame_mac)
                body = ingress.open_body(body_ct, frame_mac, size)  # type: ignore[arg-type]
                if body is None:
                    raise BadFrameMac("frame MAC mismatch")
                out.append(body)
                pos += padded + MAC_LEN
                self._pending_size = -1
        except FrameError:
            self._broken = True
            self._buf = bytearray()
            raise
        if src is self._buf:
            if pos:
                del self._buf[:pos]
        elif pos < end:
            self._buf = bytearray(src[pos:])
        self.frames_in += len(out)
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)
