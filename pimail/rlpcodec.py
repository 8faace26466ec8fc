"""RLP encoding and strict decoding of the small structured messages pimail sends and reads.

Hello, Status, mail requests, request-complete, handshake bodies: nested lists of byte strings and
unsigned integers. The ``rlp`` package does the same, but importing it pulls in eth-utils and
pydantic (≈ 230 ms and ≈ 17 MB of RSS on x86, several times the time on a Pi Zero 2 W) for a few
dozen lines of work, so the node uses this module and the test suite checks it against ``rlp``
(tests/test_rlpcodec.py).

Envelopes themselves are never decoded into objects. The strict scanner below (``scan_item``,
``list_items``, ``top_level_list``) returns item boundaries instead of building Python objects, so a
Messages packet can be split into raw envelopes (whose exact bytes are their identity) without
re-encoding anything; ``decode`` builds on it. Every non-canonical form ``rlp.decode(strict=True)``
refuses is refused too: single bytes below 0x80 wrapped in a string header, long-form lengths for
short items, and lengths with leading zeros.
"""

from __future__ import annotations

from typing import TypeAlias

__all__ = [
    "MAX_DEPTH",
    "Item",
    "RlpError",
    "decode",
    "encode",
    "encode_raw_list",
    "list_header",
    "list_items",
    "scan_item",
    "top_level_list",
]

Item: TypeAlias = "bytes | list[Item]"

#: nesting deeper than this is refused (no message of ours nests more than 4 levels)
MAX_DEPTH = 32


class RlpError(ValueError):
    """Malformed or non-canonical RLP."""


def encode(obj: object) -> bytes:
    """RLP of byte strings, unsigned integers (minimal big-endian; bools as 0/1) and lists/tuples of
    them; anything else raises ``TypeError`` (structures are built ad hoc, so ``object`` is honest)."""
    out: list[bytes] = []
    _encode_into(obj, out, 0)
    return b"".join(out)


def _string_header(length: int) -> bytes:
    if length <= 55:
        return bytes((0x80 + length,))
    n = (length.bit_length() + 7) // 8
    return bytes((0xB7 + n,)) + length.to_bytes(n, "big")


def _encode_into(obj: object, out: list[bytes], depth: int) -> None:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
    elif isinstance(obj, int):  # bool is an int: True -> 0x01, False -> 0x80 (as the rlp package)
        if obj < 0:
            raise ValueError(f"RLP cannot encode a negative integer ({obj})")
        data = obj.to_bytes((obj.bit_length() + 7) // 8, "big") if obj else b""
    elif isinstance(obj, (list, tuple)):
        if depth >= MAX_DEPTH:
            raise ValueError("RLP structure nested too deeply")
        parts: list[bytes] = []
        for item in obj:
            _encode_into(item, parts, depth + 1)
        body = b"".join(parts)
        out.append(list_header(len(body)))
        out.append(body)
        return
    else:
        raise TypeError(f"RLP cannot encode {type(obj).__name__}")
    if len(data) == 1 and data[0] < 0x80:
        out.append(data)
    else:
        out.append(_string_header(len(data)))
        out.append(data)


def decode(data: bytes, *, strict: bool = True) -> Item:
    """Decode one item. ``strict`` refuses trailing bytes after it (``strict=False`` ignores them,
    as devp2p Disconnect allows). Non-canonical encodings are always refused with ``RlpError``."""
    is_list, start, end = scan_item(data, 0, len(data))
    if strict and end != len(data):
        raise RlpError(f"{len(data) - end} trailing bytes after the RLP item")
    if not is_list:
        return bytes(data[start:end])
    return _decode_list(data, start, end, 1)


def _decode_list(data: bytes, start: int, end: int, depth: int) -> list[Item]:
    if depth > MAX_DEPTH:
        raise RlpError("RLP structure nested too deeply")
    items: list[Item] = []
    pos = start
    while pos < end:
        is_list, s, e = scan_item(data, pos, end)
        items.append(_decode_list(data, s, e, depth + 1) if is_list else bytes(data[s:e]))
        pos = e
    return items


# -- the strict scanner (the envelope hot path uses it directly) ---------------------------------------


def scan_item(buf: bytes, pos: int, end: int) -> tuple[bool, int, int]:
    """Parse the item starting at ``pos``: (is_list, payload_start, payload_end)."""
    if pos >= end:
        raise RlpError("unexpected end of data")
    b0 = buf[pos]
    if b0 < 0x80:
        return False, pos, pos + 1
    if b0 <= 0xB7:
        length = b0 - 0x80
        start = pos + 1
        if length == 1 and start < end and buf[start] < 0x80:
            raise RlpError("single byte below 0x80 must not have a string header")
        is_list = False
    elif b0 <= 0xBF:
        length, start = _long_length(buf, pos, b0 - 0xB7, end)
        is_list = False
    elif b0 <= 0xF7:
        length = b0 - 0xC0
        start = pos + 1
        is_list = True
    else:
        length, start = _long_length(buf, pos, b0 - 0xF7, end)
        is_list = True
    stop = start + length
    if stop > end:
        raise RlpError("item runs past the end of its container")
    return is_list, start, stop


def _long_length(buf: bytes, pos: int, n: int, end: int) -> tuple[int, int]:
    start = pos + 1 + n
    if start > end:
        raise RlpError("truncated length prefix")
    if buf[pos + 1] == 0:
        raise RlpError("length prefix has a leading zero")
    length = int.from_bytes(buf[pos + 1 : start], "big")
    if length <= 55:
        raise RlpError("long-form length used for a short item")
    return length, start


def list_items(buf: bytes, start: int, end: int) -> list[tuple[bool, int, int, int]]:
    """Items of a list payload ``buf[start:end]``: (is_list, item_pos, payload_start, payload_end)."""
    items = []
    pos = start
    while pos < end:
        is_list, s, e = scan_item(buf, pos, end)
        items.append((is_list, pos, s, e))
        pos = e
    return items


def top_level_list(buf: bytes) -> tuple[int, int]:
    """``buf`` must be exactly one RLP list; returns its payload bounds."""
    is_list, s, e = scan_item(buf, 0, len(buf))
    if not is_list:
        raise RlpError("expected a list")
    if e != len(buf):
        raise RlpError("trailing bytes after the list")
    return s, e


def list_header(length: int) -> bytes:
    if length <= 55:
        return bytes((0xC0 + length,))
    n = (length.bit_length() + 7) // 8
    return bytes((0xF7 + n,)) + length.to_bytes(n, "big")


def encode_raw_list(items: list[bytes]) -> bytes:
    """RLP list whose elements are already-encoded items (e.g. raw envelopes)."""
    body = b"".join(items)
    return list_header(len(body)) + body
