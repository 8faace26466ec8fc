"""A strict, allocation-light RLP scanner for the envelope hot path.

It returns item boundaries instead of building Python objects, so a Messages packet can be split
into raw envelopes (whose exact bytes are their identity) without re-encoding anything. Every
non-canonical form ``rlp.decode(strict=True)`` refuses is refused here too: single bytes below 0x80
wrapped in a string header, long-form lengths for short items, and lengths with leading zeros.
"""

from __future__ import annotations


class RlpError(ValueError):
    """Malformed or non-canonical RLP."""


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
