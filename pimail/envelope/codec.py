"""The Whisper envelope: ``rlp([Expiry, TTL, Topic, Data, Nonce])`` kept with its raw bytes."""

from __future__ import annotations

from pimail import rlpcodec
from pimail.crypto.keccak import keccak256
from pimail.envelope import pow as powmod
from pimail.envelope.bloom import _BLOOM_CACHE as _BLOOMS
from pimail.envelope.bloom import TOPIC_LEN, cached_topic_bloom
from pimail.rlpcodec import RlpError, list_header, list_items, scan_item, top_level_list

UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


class EnvelopeError(ValueError):
    """An envelope is malformed (bad RLP, field count, non-canonical integer, bad topic length)."""


def decode_uint(raw: object, what: str, max_value: int) -> int:
    """Decode a canonical RLP unsigned integer (no leading zeros; 0 is the empty string)."""
    if not isinstance(raw, bytes):
        raise EnvelopeError(f"{what} must be an integer, got a list")
    if raw[:1] == b"\x00":
        raise EnvelopeError(f"{what} is not a canonical integer (leading zero)")
    if len(raw) > 8:
        raise EnvelopeError(f"{what} is too large")
    value = int.from_bytes(raw, "big")
    if value > max_value:
        raise EnvelopeError(f"{what} is out of range")
    return value


class Envelope:
    """A Whisper envelope. ``raw`` is the RLP as received; its keccak is the envelope hash.

    A pooled envelope keeps only ``raw`` and the small values read from it: Data and the RLP
    without the nonce are slices of ``raw`` made when asked for (the PoW pair, the only hot user
    of the latter, is computed once and kept), and ``__slots__`` spare each instance a dict.
    ~0.75 KB less per pooled envelope than three copies and a dict (docs/PERFORMANCE.md,
    "Memory"). Read-only by convention: nothing changes an envelope after decoding.
    """

    __slots__ = ("_de", "_ds", "_hs", "_pows0", "bloom", "expiry", "hash", "nonce", "raw", "topic", "ttl")

    expiry: int
    ttl: int
    topic: bytes
    nonce: int
    raw: bytes
    hash: bytes
    bloom: bytes
    _ds: int  # Data is raw[_ds:_de]
    _de: int
    _hs: int  # length of the outer list header: the RLP without the nonce is a header + raw[_hs:_de]
    _pows0: tuple[float, float] | None

    def __init__(self, expiry: int, ttl: int, topic: bytes, data: bytes, nonce: int, raw: bytes) -> None:
        """From fields and their encoding ``raw`` (as ``build`` and the decoders make it)."""
        self.expiry, self.ttl, self.topic, self.nonce, self.raw = expiry, ttl, topic, nonce, raw
        try:
            _, hs, _ = scan_item(raw, 0, len(raw))
            _, _, de = scan_item(raw, hs, len(raw))  # expiry
            _, _, de = scan_item(raw, de, len(raw))  # ttl
            _, _, de = scan_item(raw, de, len(raw))  # topic
            _, ds, de = scan_item(raw, de, len(raw))  # data
        except RlpError as exc:
            raise EnvelopeError(f"envelope is not valid RLP: {exc}") from exc
        if raw[ds:de] != data:
            raise EnvelopeError("raw is not the encoding of these fields")
        self._hs, self._ds, self._de = hs, ds, de
        self.hash = keccak256(raw)
        self.bloom = cached_topic_bloom(topic)
        self._pows0 = None

    def __repr__(self) -> str:
        return (f"Envelope(expiry={self.expiry}, ttl={self.ttl}, topic={self.topic!r}, "
                f"data=<{self._de - self._ds} bytes>, nonce={self.nonce})")

    @property
    def data(self) -> bytes:
        return self.raw[self._ds : self._de]

    @classmethod
    def build(cls, expiry: int, ttl: int, topic: bytes, data: bytes, nonce: int) -> Envelope:
        """Create an envelope from fields, encoding it canonically."""
        if len(topic) != TOPIC_LEN:
            raise EnvelopeError("topic must be 4 bytes")
        raw: bytes = rlpcodec.encode([expiry, ttl, topic, data, nonce])
        return cls(expiry, ttl, topic, data, nonce, raw)

    @classmethod
    def decode(cls, raw: bytes) -> Envelope:
        """Decode one envelope, strictly (canonical RLP and integers, exactly 5 fields)."""
        n = len(raw)
        if n > 57:  # a list header of 2 or 3 bytes (envelopes are at least 16 bytes of payload)
            b0 = raw[0]
            if b0 == 0xF8 and raw[1] > 55 and raw[1] + 2 == n:
                env = _fast_fields(raw, 2, n)
            elif b0 == 0xF9 and raw[1] and ((raw[1] << 8) | raw[2]) + 3 == n:
                env = _fast_fields(raw, 3, n)
            else:
                env = None
            if env is not None:
                return env
        try:
            is_list, start, end = scan_item(raw, 0, len(raw))
            if end != len(raw):
                raise RlpError("trailing bytes after the envelope")
        except RlpError as exc:
            raise EnvelopeError(f"envelope is not valid RLP: {exc}") from exc
        return cls._from_scan(raw, is_list, start, end)

    @classmethod
    def _from_scan(cls, raw: bytes, is_list: bool, start: int, end: int) -> Envelope:
        if is_list:
            env = _fast_fields(raw, start, end)
            if env is not None:
                return env
        return cls._from_scan_checked(raw, is_list, start, end)

    @classmethod
    def _from_scan_checked(cls, raw: bytes, is_list: bool, start: int, end: int) -> Envelope:
        """The general path: every field scanned strictly, with a precise error for each defect."""
        if not is_list:
            raise EnvelopeError("envelope must be a list of 5 fields (got a string)")
        bounds: list[int] = []
        pos = start
        try:
            while pos < end:
                item_is_list, s, e = scan_item(raw, pos, end)
                if item_is_list:
                    raise EnvelopeError("envelope fields must be strings, got a list")
                bounds.append(pos)
                bounds.append(s)
                bounds.append(e)
                pos = e
        except RlpError as exc:
            raise EnvelopeError(f"envelope is not valid RLP: {exc}") from exc
        if len(bounds) != 15:
            raise EnvelopeError(f"envelope must be a list of 5 fields (got {len(bounds) // 3})")
        _, s0, e0, _, s1, e1, _, s2, e2, _, s3, e3, _, s4, e4 = bounds
        expiry = decode_uint(raw[s0:e0], "expiry", UINT32_MAX)
        ttl = decode_uint(raw[s1:e1], "ttl", UINT32_MAX)
        if e2 - s2 != TOPIC_LEN:
            raise EnvelopeError("topic must be a 4-byte string")
        nonce = decode_uint(raw[s4:e4], "nonce", UINT64_MAX)
        return _make(expiry, ttl, raw[s2:e2], nonce, raw, start, s3, e3)

    @classmethod
    def from_rlp_items(cls, items: object, raw: bytes) -> Envelope:
        """Build from an already-decoded RLP item whose encoding is ``raw``."""
        if not isinstance(items, list) or len(items) != 5:
            n = len(items) if isinstance(items, list) else "a string"
            raise EnvelopeError(f"envelope must be a list of 5 fields (got {n})")
        expiry = decode_uint(items[0], "expiry", UINT32_MAX)
        ttl = decode_uint(items[1], "ttl", UINT32_MAX)
        topic, data = items[2], items[3]
        if not isinstance(topic, bytes) or len(topic) != TOPIC_LEN:
            raise EnvelopeError("topic must be a 4-byte string")
        if not isinstance(data, bytes):
            raise EnvelopeError("data must be a byte string")
        nonce = decode_uint(items[4], "nonce", UINT64_MAX)
        return cls(expiry, ttl, topic, data, nonce, raw)

    def encode(self) -> bytes:
        return self.raw

    @property
    def sent(self) -> int:
        """Sent time = Expiry − TTL (the mailserver's key time)."""
        return self.expiry - self.ttl

    @property
    def data_len(self) -> int:
        return self._de - self._ds

    @property
    def size(self) -> int:
        """Size for limits: EnvelopeHeaderLength + len(Data)."""
        return powmod.ENVELOPE_HEADER_LEN + self._de - self._ds

    @property
    def rlp_without_nonce(self) -> bytes:
        """``rlp([Expiry, TTL, Topic, Data])``: a slice of what we received (canonical, so the same
        as re-encoding the four fields) behind a new list header."""
        n = self._de - self._hs
        if n < 256:
            header = _LIST_HEADERS[n]
        elif n < 65536:
            header = bytes((0xF9, n >> 8, n & 0xFF))
        else:
            header = list_header(n)
        return header + self.raw[self._hs : self._de]

    def pows(self, diff: int = 0) -> tuple[float, float]:
        """(legacy, current) PoW in one go; the diff-0 pair is kept (forwarding asks per peer)."""
        if diff:
            return powmod.both_pows(self.rlp_without_nonce, self.nonce, self._de - self._ds, self.ttl, diff)
        cached = self._pows0
        if cached is None:
            cached = powmod.both_pows(self.rlp_without_nonce, self.nonce, self._de - self._ds, self.ttl)
            self._pows0 = cached
        return cached

    def pow_legacy(self, diff: int = 0) -> float:
        return powmod.legacy_pow(self.rlp_without_nonce, self.nonce, self._de - self._ds, self.ttl, diff)

    def pow_current(self, diff: int = 0) -> float:
        return powmod.current_pow(self.rlp_without_nonce, self.nonce, self.ttl, diff)

    def meets(self, requirement: float, formula: powmod.PowFormula, diff: int = 0) -> bool:
        """True if this envelope's PoW reaches ``requirement`` under ``formula``.

        Hashes only what decides: the current formula first (one hash; status-go seals by it), the
        legacy one (two hashes) only if that does not settle it; a known diff-0 pair costs nothing.
        """
        if requirement <= 0:
            return True
        if not diff and self._pows0 is not None:
            return powmod.pow_meets(self._pows0, requirement, formula)
        F = powmod.PowFormula
        if formula is F.LEGACY:
            return self.pow_legacy(diff) >= requirement
        current = self.pow_current(diff) >= requirement
        if formula is F.CURRENT:
            return current
        if formula is F.EITHER:
            return current or self.pow_legacy(diff) >= requirement
        return current and self.pow_legacy(diff) >= requirement  # BOTH


def _uint_at(raw: bytes, pos: int, max_len: int) -> tuple[int, int] | None:
    """A canonical small RLP uint at ``pos``: (value, next position), or None if unusual."""
    b = raw[pos]
    if 0 < b < 0x80:
        return b, pos + 1
    n = b - 0x80
    if n == 0:
        return 0, pos + 1
    if 0 < n <= max_len:
        first = raw[pos + 1]
        if first == 0 or (n == 1 and first < 0x80):
            return None
        stop = pos + 1 + n
        return int.from_bytes(raw[pos + 1 : stop], "big"), stop
    return None


_LIST_HEADERS = tuple(list_header(n) for n in range(256))


def _fast_fields(raw: bytes, start: int, end: int) -> Envelope | None:
    """Decode the common, canonical envelope shape quickly; None means "use the checked path"
    (which then either succeeds identically or reports exactly what is wrong).

    The usual encodings (4-byte expiry, 1-byte TTL, 0x84 topic, string data, 8-byte nonce) are read
    inline; anything else goes through ``_uint_at``/``scan_item``. Every field boundary comes from
    its header, and the last one must land exactly on ``end``, so a short buffer cannot pass.
    """
    try:
        # Expiry: a current timestamp is 4 bytes with a non-zero first byte.
        if raw[start] == 0x84 and raw[start + 1]:
            expiry = int.from_bytes(raw[start + 1 : start + 5], "big")
            pos = start + 5
        else:
            r = _uint_at(raw, start, 4)
            if r is None:
                return None
            expiry, pos = r
        b = raw[pos]
        if 0 < b < 0x80:  # TTL below 128 s is one byte
            ttl = b
            pos += 1
        else:
            r = _uint_at(raw, pos, 4)
            if r is None:
                return None
            ttl, pos = r
        if raw[pos] != 0x84:
            return None
        topic = raw[pos + 1 : pos + 5]
        pos += 5
        b = raw[pos]
        if b == 0xB8:  # data of 56..255 bytes
            n = raw[pos + 1]
            if n <= 55:
                return None
            ds = pos + 2
            de = ds + n
        elif b == 0xB9:  # data of 256..65535 bytes
            if not raw[pos + 1]:
                return None
            ds = pos + 3
            de = ds + ((raw[pos + 1] << 8) | raw[pos + 2])
        else:
            is_list, ds, de = scan_item(raw, pos, end)
            if is_list:
                return None
        b = raw[de]
        if 0x81 < b < 0x89 and raw[de + 1]:  # nonce of 2..8 bytes, no leading zero
            pos = de + b - 0x7F
            nonce = int.from_bytes(raw[de + 1 : pos], "big")
        else:
            r = _uint_at(raw, de, 8)
            if r is None:
                return None
            nonce, pos = r
    except (IndexError, RlpError):
        return None
    if pos != end:
        return None
    return _make(expiry, ttl, topic, nonce, raw, start, ds, de)


def _make(expiry: int, ttl: int, topic: bytes, nonce: int, raw: bytes, hs: int, ds: int, de: int) -> Envelope:
    """An envelope from decoded fields and the bounds found while decoding (no re-scan).
    hash and bloom are filled in now: every received envelope needs them."""
    env = _new(Envelope)
    env.expiry = expiry
    env.ttl = ttl
    env.topic = topic
    env.nonce = nonce
    env.raw = raw
    env._hs = hs
    env._ds = ds
    env._de = de
    env.hash = keccak256(raw)
    env.bloom = _BLOOMS.get(topic) or cached_topic_bloom(topic)
    env._pows0 = None
    return env


_new = object.__new__


def decode_envelope_list(payload: bytes) -> list[Envelope]:
    """Decode a Messages (code 1) or list-form P2P (code 127) payload: an RLP list of envelopes.

    Each envelope keeps its exact bytes. Any malformed element fails the whole packet, as in geth.
    """
    try:
        start, end = top_level_list(payload)
        items = list_items(payload, start, end)
    except RlpError as exc:
        raise EnvelopeError(f"envelope list is not valid RLP: {exc}") from exc
    out = []
    for is_list, pos, s, e in items:
        raw = payload[pos:e]
        out.append(Envelope._from_scan(raw, is_list, s - pos, e - pos))
    return out


def encode_envelope_list(raws: list[bytes]) -> bytes:
    """RLP list of already-encoded envelopes (no re-encoding, so hashes are preserved)."""
    body = b"".join(raws)
    return list_header(len(body)) + body
