"""The RLPx frame codec: AES-256-CTR + keccak MACs (PROTOCOL.md §1.6). Sans-I/O.

One ``FrameCodec`` per connection, built from the handshake ``Secrets``. ``encode`` turns one
frame-data blob (``rlp(msg-id) || payload``) into wire bytes; ``feed`` takes whatever the socket
delivered and returns the complete frames it now holds. MACs are checked before anything is
decrypted; any failure raises a ``FrameError`` and leaves the codec unusable (the connection must go).
"""

from __future__ import annotations

from hmac import compare_digest

from Crypto.Cipher import AES
from Crypto.Hash import keccak as _keccak
from Crypto.Util.strxor import strxor

from pimail.rlpx.handshake import Secrets

MAX_FRAME_SIZE = (1 << 24) - 1  # the header's frame-size field is 24 bits
HEADER_LEN = 16
MAC_LEN = 16
_HEADER_DATA = b"\xc2\x80\x80"  # rlp([capability-id 0, context-id 0]) as geth sends it
_ZERO16 = bytes(16)


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

    def __init__(self, secrets: Secrets, max_frame_size: int = MAX_FRAME_SIZE) -> None:
        if not 0 < max_frame_size <= MAX_FRAME_SIZE:
            raise ValueError(f"max_frame_size must be in 1..{MAX_FRAME_SIZE}")
        self.max_frame_size = max_frame_size
        # One continuous CTR keystream per direction, zero IV, 128-bit big-endian counter (Go's NewCTR).
        self._enc = AES.new(secrets.aes_secret, AES.MODE_CTR, nonce=b"", initial_value=0)
        self._dec = AES.new(secrets.aes_secret, AES.MODE_CTR, nonce=b"", initial_value=0)
        self._mac_block = AES.new(secrets.mac_secret, AES.MODE_ECB).encrypt
        self._egress: _keccak.Keccak_Hash = secrets.egress_mac
        self._ingress: _keccak.Keccak_Hash = secrets.ingress_mac
        self._buf = bytearray()
        self._pending_size = -1  # frame-size of a verified header whose body is not complete yet
        self._broken = False
        self.frames_in = 0
        self.frames_out = 0

    def _update_mac(self, mac: _keccak.Keccak_Hash, seed: bytes) -> bytes:
        mac.update(strxor(self._mac_block(mac.digest()[:16]), seed))
        return mac.digest()[:16]

    def encode(self, frame_data: bytes) -> bytes:
        """Wire bytes for one frame: header-ct, header-mac, body-ct (padded to 16), body-mac."""
        size = len(frame_data)
        if size > MAX_FRAME_SIZE:
            raise ValueError(f"frame of {size} bytes exceeds the 24-bit frame-size field")
        enc = self._enc.encrypt
        egress = self._egress
        header_ct = enc(size.to_bytes(3, "big") + _HEADER_DATA + _ZERO16[:10])
        header_mac = self._update_mac(egress, header_ct)
        pad = -size % 16
        body_ct = enc(frame_data + _ZERO16[:pad]) if pad else enc(frame_data)
        egress.update(body_ct)
        body_mac = self._update_mac(egress, egress.digest()[:16])
        self.frames_out += 1
        return b"".join((header_ct, header_mac, body_ct, body_mac))

    def feed(self, data: bytes) -> list[bytes]:
        """Add received bytes; return the frame-data of every frame completed by them."""
        if self._broken:
            raise FrameError("frame codec used after a failure")
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        end = len(buf)
        ingress = self._ingress
        try:
            while True:
                size = self._pending_size
                if size < 0:
                    if end - pos < HEADER_LEN + MAC_LEN:
                        break
                    header_ct = bytes(buf[pos : pos + HEADER_LEN])
                    want = self._update_mac(ingress, header_ct)
                    if not compare_digest(want, bytes(buf[pos + HEADER_LEN : pos + HEADER_LEN + MAC_LEN])):
                        raise BadHeaderMac("frame header MAC mismatch")
                    header = self._dec.decrypt(header_ct)
                    size = int.from_bytes(header[:3], "big")
                    pos += HEADER_LEN + MAC_LEN
                    if size > self.max_frame_size:
                        raise FrameTooLarge(f"frame of {size} bytes exceeds the cap of {self.max_frame_size}")
                    self._pending_size = size
                padded = size + (-size % 16)
                if end - pos < padded + MAC_LEN:
                    break
                body_ct = bytes(buf[pos : pos + padded])
                ingress.update(body_ct)
                want = self._update_mac(ingress, ingress.digest()[:16])
                if not compare_digest(want, bytes(buf[pos + padded : pos + padded + MAC_LEN])):
                    raise BadFrameMac("frame MAC mismatch")
                body = self._dec.decrypt(body_ct)
                out.append(body[:size] if padded != size else body)
                pos += padded + MAC_LEN
                self._pending_size = -1
        except FrameError:
            self._broken = True
            buf.clear()
            raise
        finally:
            if pos:
                del buf[:pos]
        self.frames_in += len(out)
        return out

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buf)
