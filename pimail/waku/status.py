"""Waku message codes and the Status options list of waku/0 and waku/1 (PROTOCOL.md §5). Sans-I/O.

Status (0) and Status Update (22) carry an association list ``[[key, value], ...]``: order does
not matter, unknown keys are ignored, a later duplicate wins (status-go decodes in order).

* waku/1: the packet payload *is* the list and keys are RLP uints;
* waku/0: the payload is ``[version = 0, list]`` and keys are the strings ``"0"`` .. ``"5"``.

Keys: 0 PoW requirement (float64 bits as a uint), 1 bloom (64 bytes; empty = full), 2 light node
(bool), 3 confirmations enabled (bool), 4 packet rate limits ``[ip, peerID, topic]``, 5 topic
interest (≤ 10,000 four-byte topics), 6 bytes rate limits (waku/1 only). A value of the wrong type
is refused (``WakuStatusError`` → disconnect 0x10); a Status Update applies only what it carries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from pimail import rlpcodec
from pimail.envelope.bloom import BLOOM_LEN, FULL_BLOOM, TOPIC_LEN
from pimail.envelope.pow import pow_from_bits, pow_to_bits
from pimail.relay.confirmations import ErrorCodes, WireError, decode_rlp, decode_uint_field
from pimail.relay.limits import RateLimits as RateLimits  # the shared triple, strict here

CAPABILITY = "waku"
VERSIONS = (1, 0)  # offered, highest first
PROTOCOL_LENGTH = 128

# Relative message codes (status-go v0.78 waku/common const.go).
STATUS = 0
MESSAGES = 1
BATCH_ACK = 11
MESSAGE_RESPONSE = 12
STATUS_UPDATE = 22
P2P_REQUEST_COMPLETE = 125
P2P_REQUEST = 126
P2P_MESSAGE = 127

#: waku/common's iota values for Message Response entries (PROTOCOL.md §3.8, trap 21)
ERROR_CODES = ErrorCodes(time_not_synced=21, other=22)

MAX_TOPIC_INTEREST = 10_000  # status-go StatusOptions.Validate
DEFAULT_POW = 0.001  # status-go WithDefaults: a peer that states no PoW requires 0.001

KEY_POW = 0
KEY_BLOOM = 1
KEY_LIGHT = 2
KEY_CONFIRMATIONS = 3
KEY_PACKET_LIMITS = 4
KEY_TOPIC_INTEREST = 5
KEY_BYTES_LIMITS = 6
_KEYS_V0 = (KEY_POW, KEY_BLOOM, KEY_LIGHT, KEY_CONFIRMATIONS, KEY_PACKET_LIMITS, KEY_TOPIC_INTEREST)
_KEYS_V1 = (*_KEYS_V0, KEY_BYTES_LIMITS)
_MAX_KEY = 2**64 - 1


class WakuStatusError(WireError):
    """A waku Status / Status Update is malformed or carries a wrong-typed option."""


@dataclass(frozen=True)
class StatusOptions:
    """The options one Status or Status Update carries; ``None`` = not present."""

    pow: float | None = None
    bloom: bytes | None = None
    light: bool | None = None
    confirmations: bool | None = None
    packet_limits: RateLimits | None = None
    topic_interest: tuple[bytes, ...] | None = None
    bytes_limits: RateLimits | None = None

    # -- encoding ---------------------------------------------------------------------------------
    def _pairs(self, version: int) -> list[tuple[int, object]]:
        pairs: list[tuple[int, object]] = []
        if self.pow is not None:
            pairs.append((KEY_POW, pow_to_bits(self.pow)))
        if self.bloom is not None:
            pairs.append((KEY_BLOOM, self.bloom))
        if self.light is not None:
            pairs.append((KEY_LIGHT, self.light))
        if self.confirmations is not None:
            pairs.append((KEY_CONFIRMATIONS, self.confirmations))
        if self.packet_limits is not None:
            pairs.append((KEY_PACKET_LIMITS, self.packet_limits.to_rlp()))
        if self.topic_interest is not None:
            pairs.append((KEY_TOPIC_INTEREST, list(self.topic_interest)))
        if self.bytes_limits is not None and version >= 1:
            pairs.append((KEY_BYTES_LIMITS, self.bytes_limits.to_rlp()))
        return pairs

    def encode(self, version: int) -> bytes:
        """The Status / Status Update payload for waku/``version``."""
        if version == 0:
            options = [[str(k).encode(), v] for k, v in self._pairs(0)]
            encoded: bytes = rlpcodec.encode([0, options])
            return encoded
        encoded = rlpcodec.encode([[k, v] for k, v in self._pairs(version)])
        return encoded

    # -- decoding ---------------------------------------------------------------------------------
    @classmethod
    def decode(cls, payload: bytes, version: int) -> StatusOptions:
        """Decode a Status or Status Update of waku/``version``; raises ``WakuStatusError``."""
        try:
            items = decode_rlp(payload, "waku Status")
        except WireError as exc:
            raise WakuStatusError(str(exc)) from exc
        if version == 0:
            if not isinstance(items, list) or len(items) < 2:
                raise WakuStatusError("waku/0 Status must be [version, options]")
            try:
                peer_version = decode_uint_field(items[0], "waku/0 Status version")
            except WireError as exc:
                raise WakuStatusError(str(exc)) from exc
            if peer_version != 0:
                raise WakuStatusError(f"waku/0 Status carries version {peer_version}")
            options = items[1]
        else:
            options = items
        if not isinstance(options, list):
            raise WakuStatusError("waku Status options must be a list of [key, value] pairs")
        known = _KEYS_V1 if version >= 1 else _KEYS_V0
        values: dict[int, object] = {}
        for pair in options:
            if not isinstance(pair, list) or len(pair) != 2:
                raise WakuStatusError("each waku Status option must be a [key, value] pair")
            key = _key(pair[0], version)
            if key in known:  # unknown keys (a newer peer's options) are skipped unread
                values[key] = pair[1]
        return cls._from_values(values)

    @classmethod
    def _from_values(cls, values: dict[int, object]) -> StatusOptions:
        out = cls()
        if KEY_POW in values:
            out = replace(out, pow=_pow(values[KEY_POW]))
        if KEY_BLOOM in values:
            out = replace(out, bloom=_bloom(values[KEY_BLOOM]))
        if KEY_LIGHT in values:
            out = replace(out, light=_bool(values[KEY_LIGHT], "light-node option"))
        if KEY_CONFIRMATIONS in values:
            out = replace(out, confirmations=_bool(values[KEY_CONFIRMATIONS], "confirmations option"))
        if KEY_PACKET_LIMITS in values:
            out = replace(out, packet_limits=RateLimits.from_rlp(
                values[KEY_PACKET_LIMITS], "packet rate limits", strict=True, error=WakuStatusError))
        if KEY_TOPIC_INTEREST in values:
            out = replace(out, topic_interest=_topics(values[KEY_TOPIC_INTEREST]))
        if KEY_BYTES_LIMITS in values:
            out = replace(out, bytes_limits=RateLimits.from_rlp(
                values[KEY_BYTES_LIMITS], "bytes rate limits", strict=True, error=WakuStatusError))
        return out

    def with_defaults(self) -> StatusOptions:
        """What a peer's Status means when keys are missing (status-go ``WithDefaults``)."""
        return StatusOptions(
            pow=DEFAULT_POW if self.pow is None else self.pow,
            bloom=FULL_BLOOM if self.bloom is None else self.bloom,
            light=bool(self.light),
            confirmations=bool(self.confirmations),
            packet_limits=self.packet_limits or RateLimits(),
            topic_interest=self.topic_interest,
            bytes_limits=self.bytes_limits or RateLimits(),
        )

    @property
    def empty(self) -> bool:
        return self == StatusOptions()


def _key(raw: object, version: int) -> int:
    if not isinstance(raw, bytes):
        raise WakuStatusError("a waku Status option key must be a scalar, not a list")
    if version == 0:  # "0".."5" as strings; other strings are unknown keys
        if raw.isdigit() and len(raw) <= 20 and (len(raw) == 1 or raw[:1] != b"0"):
            return int(raw)
        return -1
    try:
        return decode_uint_field(raw, "waku Status option key", _MAX_KEY)
    except WireError as exc:
        raise WakuStatusError(str(exc)) from exc


def _pow(raw: object) -> float:
    try:
        value = pow_from_bits(decode_uint_field(raw, "PoW option"))
    except WireError as exc:
        raise WakuStatusError(str(exc)) from exc
    if math.isnan(value) or math.isinf(value) or value < 0:
        raise WakuStatusError(f"PoW option is not a usable PoW value ({value!r})")
    return value


def _bloom(raw: object) -> bytes:
    if not isinstance(raw, bytes):
        raise WakuStatusError("bloom option must be a byte string")
    if len(raw) == 0:
        return FULL_BLOOM
    if len(raw) != BLOOM_LEN:
        raise WakuStatusError(f"bloom option must be {BLOOM_LEN} bytes (got {len(raw)})")
    return raw


def _bool(raw: object, what: str) -> bool:
    if raw == b"\x01":
        return True
    if raw == b"":
        return False
    raise WakuStatusError(f"{what} is not an RLP boolean")


def _topics(raw: object) -> tuple[bytes, ...]:
    if not isinstance(raw, list):
        raise WakuStatusError("topic interest must be a list of 4-byte topics")
    if len(raw) > MAX_TOPIC_INTEREST:
        raise WakuStatusError(f"topic interest lists {len(raw)} topics (at most {MAX_TOPIC_INTEREST})")
    for t in raw:
        if not isinstance(t, bytes) or len(t) != TOPIC_LEN:
            raise WakuStatusError("each topic of the topic interest must be 4 bytes")
    return tuple(t for t in raw if isinstance(t, bytes))
