"""The RLPx frame codec: AES-256-CTR + keccak MACs (PROTOCOL.md §1.6). Sans-I/O.

One ``FrameCodec`` per connection, built from the handshake ``Secrets``. ``encode`` turns one
frame-data blob (``rlp(msg-id) || payload``) into wire bytes; ``feed`` takes whatever the socket
delivered and returns the complete frames it now holds. MACs are checked before anything is
decrypted; any failure raises a ``FrameError`` and leaves the codec unusable (the connection must go).
"""

from __future__ import annotations

from hmac import compare_digest

from Crypto.Cipher import AES

from pimail.rlpx.handshake import Secrets
from pimail.rlpx.mac import FrameMac

MAX_FRAME_SIZE = (1 << 24) - 1  # the header's frame-size field is 24 bits
HEADER_LEN = 16
MAC_LEN = 16
_HEADER_DATA = b"\xc2\x80\x80"  # rlp([capability-id 0, context-id 0]) as geth sends it
_ZERO16 = bytes(16)
_HEADER_TAIL = _HEADER_DATA + bytes(10)  # header = size(3) || c2 80 80 || zero padding to 16


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


class FrameCodec:
    """Encrypts/authenticates outgoing frames and decodes the incoming stream incrementally."""

    def __init__(self, secrets: Secrets, max_frame_size: int = MAX_FRAME_SIZE, *,
                 direct_mac: bool = True) -> None:
        if not 0 < max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be in 1..{MAX_FRAME_SIZE}")
        self.max_frame_size = max_frame_size
        # One continuous CTR keystream per direction, zero IV, 128-bit big-endian counter (Go's NewCTR).
        self._enc = AES.new(secrets.aes_secret, AES.MODE_CTR, nonce=b"", initial_value=0).encrypt
        self._dec = AES.new(secrets.aes_secret, AES.MODE_CTR, nonce=b"", initial_value=0).decrypt
        self._egress = FrameMac(secrets.egress_mac, secrets.mac_secret, direct=direct_mac)
        self._ingress = FrameMac(secrets.ingress_mac, secrets.mac_secret, direct=direct_mac)
        # Hot-path trick: every MAC update starts from digest() of the current sponge state, which is
        # the digest we computed at the end of the previous update. Keeping it saves a keccak call.
        self._egress_digest = self._egress.digest()
        self._ingress_digest = self._ingress.digest()
        self._buf = bytearray()
        self._pending_size = -1  # frame-size of a verified header whose body is not complete yet
        self._broken = False
        self.frames_in = 0
        self.frames_out = 0

    def encode(self, frame_data: bytes) -> bytes:
        """Wire bytes for one frame: header-ct, header-mac, body-ct (padded to 16), body-mac."""
        size = len(frame_data)
        if size > MAX_FRAME_SIZE:
            raise ValueError(f"frame of {size} bytes exceeds the 24-bit frame-size field")
        egress = self._egress
        pad = -size % 16
        # CTR keystream does not depend on the data: header and body in one call
        header = size.to_bytes(3, "big") + _HEADER_TAIL
        ct = self._enc(b"".join((header, frame_data, _ZERO16[:pad])))
        header_ct = ct[:HEADER_LEN]
        body_ct = ct[HEADER_LEN:]
        header_digest = egress.step(self._egress_digest, header_ct)
        egress.update(body_ct)
        seed = egress.digest()
        body_digest = egress.step(seed, seed[:16])
        self._egress_digest = body_digest
        self.frames_out += 1
        return b"".join((header_ct, header_digest[:MAC_LEN], body_ct, body_digest[:MAC_LEN]))

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
                    header_ct = bytes(src[pos : pos + HEADER_LEN])
                    digest = ingress.step(self._ingress_digest, header_ct)
                    self._ingress_digest = digest
                    if not compare_digest(digest[:MAC_LEN], bytes(src[pos + HEADER_LEN : pos + 2 * MAC_LEN])):
                        raise BadHeaderMac("frame header MAC mismatch")
                    header = self._dec(header_ct)
                    size = (header[0] << 16) | (header[1] << 8) | header[2]
                    pos += HEADER_LEN + MAC_LEN
                    if size > self.max_frame_size:
                        raise FrameTooLarge(f"frame of {size} bytes exceeds the cap of {self.max_frame_size}")
                    self._pending_size = size
                padded = size + (-size % 16)
                if end - pos < padded + MAC_LEN:
                    break
                body_ct = bytes(src[pos : pos + padded])
                ingress.update(body_ct)
                seed = ingress.digest()
                digest = ingress.step(seed, seed[:16])
                self._ingress_digest = digest
                if not compare_digest(digest[:MAC_LEN], bytes(src[pos + padded : pos + padded + MAC_LEN])):
                    raise BadFrameMac("frame MAC mismatch")
                body = self._dec(body_ct)
                out.append(body[:size] if padded != size else body)
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
    def direct_mac(self) -> bool:
        """Whether the MACs use the direct pycryptodome calls (see ``pimail.rlpx.mac``)."""
        return self._egress.direct and self._ingress.direct

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)
