"""RLP encoding and strict decoding of the small structured messages pimail sends and reads.

Hello, Status, mail requests, request-complete, handshake bodies: nested lists of byte strings and
unsigned integers. The ``rlp`` package does the same, but importing it pulls in eth-utils and
pydantic (≈ 230 ms and ≈ 17 MB of RSS on x86, several times the time on a Pi Zero 2 W) for a few
dozen lines of work, so the node uses this module and the test suite checks it against ``rlp``
(tests/test_rlpcodec.py). Envelopes themselves are never decoded into objects: see
``pimail.whisper.rlpscan``, whose strict scanner this module builds on.
"""

from __future__ import annotations

from typing import TypeAlias

from pimail.whisper.rlpscan import RlpError, list_header, scan_item

__all__ = ["MAX_DEPTH", "Item", "RlpError", "decode", "encode"]

Item: TypeAlias = "bytes | list[Item]"

#: nesting deeper than this is refused (no message of ours nests more than 4 levels)
MAX_DEPTH = 32


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
