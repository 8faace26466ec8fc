"""History requests arriving on code 126 — PROTOCOL.md §4.1, §4.2.2, §4.2.3. Sans-I/O.

Two stages:

1. ``parse_p2p_request(payload)`` — structural decoding. Envelope first, then a bare
   ``MessagesRequest`` (6 fields whisper, 7 fields waku). Neither ⇒ ``MalformedRequest`` (the
   peer is disconnected). The request id is known after this stage (envelope hash, or
   ``BytesToHash(ID)``), so every later failure can be answered with ``ERROR=``.
2. ``RequestOpener.open(parsed, peer_pubkey, now)`` — for envelope requests: PoW, decryption
   (asymmetric with the node key, then symmetric with the password key), signature (required, and
   equal to the requesting peer's key), then the RLP payload with 5, 6 or 7 fields, then the legacy
   binary payload; for every form: status-go's defaults and validation. Failures raise
   ``RequestRejected`` with the exact text to send back.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from pimail import rlpcodec
from pimail.archive.base import CURSOR_LEN, MAX_QUERY_LIMIT
from pimail.envelope.bloom import BLOOM_LEN, FULL_BLOOM, TOPIC_LEN
from pimail.envelope.codec import UINT32_MAX, Envelope, EnvelopeError, decode_uint
from pimail.envelope.payload import PayloadError, open_data
from pimail.envelope.pow import PowFormula

from .response import request_id_from_bytes

UPPER_DEFAULT_MARGIN_S = 60  # status-go whisperTTLSafeThreshold: upper 0 ⇒ now + 60
LEGACY_TIME_RANGE_LEN = 8  # lower(4) ‖ upper(4)
LEGACY_LIMIT_LEN = 4
LEGACY_WITH_BLOOM_LEN = LEGACY_TIME_RANGE_LEN + BLOOM_LEN  # 72
LEGACY_WITH_LIMIT_LEN = LEGACY_WITH_BLOOM_LEN + LEGACY_LIMIT_LEN  # 76
LEGACY_WITH_CURSOR_LEN = LEGACY_WITH_LIMIT_LEN + CURSOR_LEN  # 112
UNLIMITED = 0  # HistoryRequest.limit for geth-style legacy requests that carry no limit field


class RequestForm(enum.Enum):
    """How a request arrived (PROTOCOL.md §4.2.2)."""

    ENVELOPE = "envelope"  # (a) envelope, RLP MessagesRequestPayload inside
    LEGACY = "legacy"  # (b) envelope, binary lower‖upper‖[bloom[limit[cursor]]] inside (geth/wnode)
    DIRECT = "direct"  # (c) bare MessagesRequest (Status app since v0.35, waku)


class MalformedRequest(ValueError):
    """Code 126 payload is neither an envelope nor a MessagesRequest: disconnect the peer."""


class RequestRejected(Exception):
    """A request that is answered with ``ERROR=‖requestID‖message`` on code 125."""

    def __init__(self, request_id: bytes, message: str) -> None:
        super().__init__(message)
        self.request_id = request_id
        self.message = message


# ---------------------------------------------------------------------------------------------
# Wire shapes
# ---------------------------------------------------------------------------------------------


def _uint32(raw: object, what: str) -> int:
    try:
        return decode_uint(raw, what, UINT32_MAX)
    except EnvelopeError as exc:
        raise ValueError(str(exc)) from exc


def _bytes(raw: object, what: str) -> bytes:
    if not isinstance(raw, bytes):
        raise ValueError(f"{what} must be a byte string")
    return raw


def _bool(raw: object, what: str) -> bool:
    if raw == b"":
        return False
    if raw == b"\x01":
        return True
    raise ValueError(f"{what} must be an RLP bool (0x80 or 0x01)")


def _topics(raw: object) -> tuple[bytes, ...]:
    if not isinstance(raw, list):
        raise ValueError("topics must be a list")
    out = []
    for t in raw:
        if not isinstance(t, bytes) or len(t) != TOPIC_LEN:
            raise ValueError("each topic must be a 4-byte string")
        out.append(t)
    return tuple(out)


@dataclass(frozen=True)
class MessagesRequest:
    """Form (c): ``[ID, From, To, Limit, Cursor, Bloom]`` (whisper) or ``+ [Topics]`` (waku)."""

    id: bytes
    lower: int
    upper: int
    limit: int
    cursor: bytes
    bloom: bytes
    topics: tuple[bytes, ...] | None = None  # None ⇒ the 6-field whisper shape

    def encode(self) -> bytes:
        items: list[object] = [self.id, self.lower, self.upper, self.limit, self.cursor, self.bloom]
        if self.topics is not None:
            items.append(list(self.topics))
        encoded: bytes = rlpcodec.encode(items)
        return encoded

    @classmethod
    def from_items(cls, items: list[object]) -> MessagesRequest:
        if len(items) not in (6, 7):
            raise ValueError(f"MessagesRequest must have 6 or 7 fields (got {len(items)})")
        return cls(
            id=_bytes(items[0], "ID"),
            lower=_uint32(items[1], "From"),
            upper=_uint32(items[2], "To"),
            limit=_uint32(items[3], "Limit"),
            cursor=_bytes(items[4], "Cursor"),
            bloom=_bytes(items[5], "Bloom"),
            topics=_topics(items[6]) if len(items) == 7 else None,
        )

    @property
    def request_id(self) -> bytes:
        return request_id_from_bytes(self.id)


@dataclass(frozen=True)
class MessagesRequestPayload:
    """Form (a)'s decrypted payload, in any of its three historical shapes.

    5 fields ``[Lower, Upper, Bloom, Limit, Cursor]`` ([spec4]);
    6 fields ``+ [Batch]`` (status-go ≤ v0.41);
    7 fields ``[Lower, Upper, Bloom, Topics, Limit, Cursor, Batch]`` (status-go ≥ v0.42).
    """

    lower: int
    upper: int
    bloom: bytes
    limit: int
    cursor: bytes
    batch: bool = False
    topics: tuple[bytes, ...] | None = None
    fields: int = 7

    def encode(self) -> bytes:
        items: list[object]
        if self.fields == 7:
            items = [self.lower, self.upper, self.bloom, list(self.topics or ()), self.limit,
                     self.cursor, self.batch]
        elif self.fields == 6:
            items = [self.lower, self.upper, self.bloom, self.limit, self.cursor, self.batch]
        elif self.fields == 5:
            items = [self.lower, self.upper, self.bloom, self.limit, self.cursor]
        else:
            raise ValueError("payload shape must have 5, 6 or 7 fields")
        encoded: bytes = rlpcodec.encode(items)
        return encoded

    @classmethod
    def decode(cls, raw: bytes) -> MessagesRequestPayload:
        """Decode; ``ValueError`` if it is not one of the three shapes."""
        try:
            items = rlpcodec.decode(raw)
        except rlpcodec.RlpError as exc:
            raise ValueError(f"not RLP: {exc}") from exc
        if not isinstance(items, list) or len(items) not in (5, 6, 7):
            raise ValueError("payload must be an RLP list of 5, 6 or 7 fields")
        lower = _uint32(items[0], "Lower")
        upper = _uint32(items[1], "Upper")
        bloom = _bytes(items[2], "Bloom")
        if len(items) == 7:
            if not isinstance(items[3], list):
                raise ValueError("7-field payload must carry Topics as element 3")
            return cls(lower, upper, bloom, _uint32(items[4], "Limit"), _bytes(items[5], "Cursor"),
                       _bool(items[6], "Batch"), _topics(items[3]), 7)
        limit = _uint32(items[3], "Limit")
        cursor = _bytes(items[4], "Cursor")
        batch = _bool(items[5], "Batch") if len(items) == 6 else False
        return cls(lower, upper, bloom, limit, cursor, batch, None, len(items))


@dataclass(frozen=True)
class LegacyRequestPayload:
    """Form (b): ``lower(4 BE) ‖ upper(4 BE) [‖ bloom(64) [‖ limit(4 BE) [‖ cursor(36)]]]``."""

    lower: int
    upper: int
    bloom: bytes | None = None  # None ⇒ 8-byte form, full bloom
    limit: int | None = None
    cursor: bytes | None = None

    def encode(self) -> bytes:
        out = self.lower.to_bytes(4, "big") + self.upper.to_bytes(4, "big")
        if self.bloom is None:
            return out
        out += self.bloom
        if self.limit is None:
            return out
        out += self.limit.to_bytes(4, "big")
        if self.cursor:
            out += self.cursor
        return out

    @classmethod
    def decode(cls, raw: bytes) -> LegacyRequestPayload:
        """status-go ``validateRequest`` length rules; ``ValueError`` with its texts."""
        if len(raw) < LEGACY_TIME_RANGE_LEN:
            raise ValueError("Undersized p2p request")
        lower = int.from_bytes(raw[0:4], "big")
        upper = int.from_bytes(raw[4:8], "big")
        if len(raw) == LEGACY_TIME_RANGE_LEN:
            return cls(lower, upper)
        if len(raw) < LEGACY_WITH_BLOOM_LEN:
            raise ValueError("Undersized bloom filter in p2p request")
        bloom = raw[LEGACY_TIME_RANGE_LEN:LEGACY_WITH_BLOOM_LEN]
        limit = None
        if len(raw) >= LEGACY_WITH_LIMIT_LEN:
            limit = int.from_bytes(raw[LEGACY_WITH_BLOOM_LEN:LEGACY_WITH_LIMIT_LEN], "big")
        cursor = raw[LEGACY_WITH_LIMIT_LEN:] if len(raw) == LEGACY_WITH_CURSOR_LEN else None
        return cls(lower, upper, bloom, limit, cursor)


# ---------------------------------------------------------------------------------------------
# Stage 1: structure
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParsedRequest:
    """A structurally valid 126 payload: exactly one of ``envelope`` / ``direct`` is set."""

    request_id: bytes
    envelope: Envelope | None = None
    direct: MessagesRequest | None = None

    @property
    def form_hint(self) -> str:
        return "envelope" if self.envelope is not None else "direct"


def parse_p2p_request(payload: bytes) -> ParsedRequest:
    """Decode a code-126 payload: Envelope first, then a bare MessagesRequest."""
    try:
        items: object = rlpcodec.decode(payload)
    except rlpcodec.RlpError as exc:
        raise MalformedRequest(f"p2p request is not valid RLP: {exc}") from exc
    if not isinstance(items, list):
        raise MalformedRequest("p2p request must be an RLP list")
    try:
        env = Envelope.from_rlp_items(items, payload)
    except EnvelopeError as env_exc:
        try:
            direct = MessagesRequest.from_items(items)
        except ValueError as req_exc:
            raise MalformedRequest(
                f"p2p request is neither an envelope ({env_exc}) nor a MessagesRequest ({req_exc})"
            ) from req_exc
        return ParsedRequest(direct.request_id, direct=direct)
    return ParsedRequest(env.hash, envelope=env)


# ---------------------------------------------------------------------------------------------
# Stage 2: open, validate, default
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryRequest:
    """A validated request, ready for the archive."""

    request_id: bytes
    form: RequestForm
    lower: int
    upper: int
    bloom: bytes | None  # None ⇒ match everything
    topics: tuple[bytes, ...] = ()
    limit: int = MAX_QUERY_LIMIT  # UNLIMITED (0) only for geth-style legacy requests
    cursor: bytes | None = None
    batch: bool = True
    signer: bytes | None = field(default=None, compare=False)


@dataclass(frozen=True)
class RequestOpener:
    """Keys and policy for opening requests. Derive ``sym_key`` once at start (PBKDF2 is slow)."""

    sym_key: bytes | None
    private_key: bytes | None = None
    min_pow: float = 0.0
    pow_formula: PowFormula = PowFormula.EITHER
    require_signer_is_peer: bool = True
    legacy_max_range_s: int = 0  # 0 = no cap (geth); status-go used 24 h on this path

    def open(self, parsed: ParsedRequest, peer_pubkey: bytes, now: int) -> HistoryRequest:
        rid = parsed.request_id
        if parsed.direct is not None:
            return self._from_direct(parsed.direct, now)
        env = parsed.envelope
        assert env is not None
        if self.min_pow > 0 and not env.meets(self.min_pow, self.pow_formula):
            raise RequestRejected(rid, "PoW too low")
        try:
            opened = open_data(env.data, sym_key=self.sym_key, private=self.private_key)
        except PayloadError as exc:
            raise RequestRejected(rid, "failed to decrypt p2p request") from exc
        if opened.signer is None:
            raise RequestRejected(rid, "check message signature failed: wrong signature of p2p request")
        try:
            payload = MessagesRequestPayload.decode(opened.payload)
        except ValueError:
            # go-ethereum's binary form (b): wnode signs with a key of its own that is not its node
            # key, and geth's WMailServer never compared the two (PROTOCOL.md §4.1), so a valid
            # signature is all this form can require; access control still uses the RLPx identity.
            return self._from_legacy(rid, opened.payload, opened.signer, now)
        if self.require_signer_is_peer and opened.signer != peer_pubkey:
            raise RequestRejected(
                rid, "check message signature failed: request signer is not the requesting peer"
            )
        return self._from_payload(rid, payload, opened.signer, now)

    # -- forms -----------------------------------------------------------------------------

    def _from_payload(
        self, rid: bytes, p: MessagesRequestPayload, signer: bytes, now: int
    ) -> HistoryRequest:
        upper = p.upper or now + UPPER_DEFAULT_MARGIN_S
        if upper < p.lower:
            raise RequestRejected(rid, "query range is invalid: lower > upper")
        return _validated(
            rid, RequestForm.ENVELOPE, p.lower, upper, p.bloom, p.topics or (), p.limit,
            p.cursor, p.batch, signer,
        )

    def _from_legacy(self, rid: bytes, raw: bytes, signer: bytes, now: int) -> HistoryRequest:
        try:
            p = LegacyRequestPayload.decode(raw)
        except ValueError as exc:
            raise RequestRejected(rid, str(exc)) from exc
        if p.upper < p.lower:
            raise RequestRejected(rid, f"query range is invalid: from > to ({p.lower} > {p.upper})")
        if self.legacy_max_range_s and p.upper - p.lower > self.legacy_max_range_s:
            raise RequestRejected(rid, "query range too big for peer")
        bloom = FULL_BLOOM if p.bloom is None else p.bloom
        # status-go checks the range first and applies its defaults afterwards (upper 0 ⇒ now + 60)
        upper = p.upper or now + UPPER_DEFAULT_MARGIN_S
        if p.limit is None:
            # geth's WMailServer has no limit and wnode never pages: deliver everything in range.
            return HistoryRequest(rid, RequestForm.LEGACY, p.lower, upper, _bloom_or_none(bloom),
                                  (), UNLIMITED, None, False, signer)
        return _validated(rid, RequestForm.LEGACY, p.lower, upper, bloom, (), p.limit, p.cursor or b"",
                          False, signer)

    def _from_direct(self, r: MessagesRequest, now: int) -> HistoryRequest:
        upper = r.upper or now + UPPER_DEFAULT_MARGIN_S
        return _validated(r.request_id, RequestForm.DIRECT, r.lower, upper, r.bloom, r.topics or (),
                          r.limit, r.cursor, True, None)


def _bloom_or_none(bloom: bytes) -> bytes | None:
    return None if bloom == FULL_BLOOM else bloom


def _validated(
    rid: bytes,
    form: RequestForm,
    lower: int,
    upper: int,
    bloom: bytes,
    topics: tuple[bytes, ...],
    limit: int,
    cursor: bytes,
    batch: bool,
    signer: bytes | None,
) -> HistoryRequest:
    """status-go SetDefaults + Validate (the 'bloom or topics' variant)."""
    if limit == 0:
        limit = MAX_QUERY_LIMIT
    if upper < lower:
        raise RequestRejected(rid, "request is invalid: query range is invalid: lower > upper")
    if not bloom and not topics:
        raise RequestRejected(rid, "request is invalid: bloom filter is empty")
    if bloom and len(bloom) != BLOOM_LEN:
        raise RequestRejected(rid, f"request is invalid: bloom filter must be {BLOOM_LEN} bytes")
    if limit > MAX_QUERY_LIMIT:
        raise RequestRejected(rid, "request is invalid: limit exceeds the maximum allowed value")
    if cursor and len(cursor) != CURSOR_LEN:
        raise RequestRejected(rid, f"request is invalid: cursor must be {CURSOR_LEN} bytes")
    return HistoryRequest(
        rid, form, lower, upper, _bloom_or_none(bloom) if bloom else None, topics, limit,
        cursor or None, batch, signer,
    )
