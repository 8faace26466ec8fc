"""Snappy block compression for devp2p v5 (EIP-706, PROTOCOL.md §2.3).

The declared uncompressed length (a varint at the head of the block) is checked against the cap
*before* anything is inflated, so a tiny frame cannot make us allocate 16 MiB (a "length bomb").
"""

from __future__ import annotations

from typing import Any

MAX_UNCOMPRESSED = (1 << 24) - 1  # geth refuses larger decoded lengths


class SnappyError(ValueError):
    """The compressed payload is malformed or declares more than the cap."""


def uncompressed_length(block: bytes) -> int:
    """The varint length prefix of a snappy block."""
    result = 0
    shift = 0
    for i, byte in enumerate(block[:5]):
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result
        shift += 7
        if i == 4:
            break
    raise SnappyError("snappy length prefix is truncated or longer than 5 bytes")


_snappy: Any = None  # cramjam.snappy, imported with the first compressed session


def _codec() -> Any:
    # cramjam's library is ~3 MB of resident pages: a node no v5 peer talks to never loads it
    global _snappy
    if _snappy is None:
        import cramjam

        _snappy = cramjam.snappy
    return _snappy


def compress(data: bytes) -> bytes:
    return bytes((_snappy or _codec()).compress_raw(data))


def decompress(block: bytes, max_length: int = MAX_UNCOMPRESSED) -> bytes:
    """Inflate a snappy block whose declared length is ≤ ``max_length``."""
    length = uncompressed_length(block)
    if length > max_length:
        raise SnappyError(f"snappy payload declares {length} bytes, over the cap of {max_length}")
    try:
        out = bytes((_snappy or _codec()).decompress_raw(block))
    except Exception as exc:  # cramjam raises its own DecompressionError
        raise SnappyError(f"corrupt snappy payload: {exc}") from exc
    if len(out) != length:
        raise SnappyError("snappy payload length does not match its prefix")
    return out
