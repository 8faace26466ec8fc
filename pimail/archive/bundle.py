"""Portable archive bundles: every envelope's raw RLP in a gzip stream with a SHA-256 checksum.

One Pi can seed or migrate another (``pimail archive export FILE`` / ``import FILE``). The bundle
is independent of the backend and of the SQLite layout. Decompressed, it reads::

    b"PIMAIL-ENVELOPES/1\\n"
    repeated: arrived (uint32 BE, 0 = unknown) || length (uint32 BE, > 0) || raw envelope RLP
    end:      0 (uint32) || 0 (uint32) || count (uint64 BE) || sha256 of everything before it (32)

Import checks the whole checksum first (nothing is added from a damaged bundle), then decodes
every envelope (malformed ones are skipped and counted) and adds them; duplicates are ignored.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from pimail.archive.base import Archive, ArchivedEnvelope, HistoryQuery
from pimail.envelope.codec import Envelope, EnvelopeError
from pimail.errors import DataError, UserError

MAGIC = b"PIMAIL-ENVELOPES/1\n"
MAX_RECORD_BYTES = 16 * 1024 * 1024  # larger than any devp2p frame can carry
IMPORT_BATCH = 1000
EXPORT_PAGE = 1000
_REC = struct.Struct(">II")
_END = struct.Struct(">Q")


class BundleError(DataError):
    """The file is not a bundle, or it is damaged (checksum, truncation, bad record)."""


@dataclass(frozen=True)
class ExportResult:
    count: int
    file_bytes: int
    sha256: bytes


@dataclass(frozen=True)
class ImportResult:
    read: int
    added: int
    duplicates: int
    invalid: int


async def export_bundle(archive: Archive, path: Path) -> ExportResult:
    """Write every stored envelope (oldest first) to ``path``; refuses to overwrite a file."""
    if path.exists():
        raise UserError(f"{path} already exists; choose another name or remove it")
    partial = path.with_name(path.name + ".partial")
    try:
        out = await asyncio.to_thread(gzip.open, partial, "wb", 6)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    digest = hashlib.sha256(MAGIC)
    count = 0
    try:
        await asyncio.to_thread(out.write, MAGIC)
        chunk: list[bytes] = []
        async for env in archive.iterate(HistoryQuery(0, 2**32 - 1), page_size=EXPORT_PAGE):
            rec = _REC.pack(env.arrived if 0 <= env.arrived < 2**32 else 0, len(env.raw)) + env.raw
            digest.update(rec)
            chunk.append(rec)
            count += 1
            if len(chunk) >= EXPORT_PAGE:
                await asyncio.to_thread(out.write, b"".join(chunk))
                chunk = []
        end = _REC.pack(0, 0) + _END.pack(count)
        digest.update(end)
        chunk.append(end + digest.digest())
        await asyncio.to_thread(out.write, b"".join(chunk))
        await asyncio.to_thread(out.close)
        await asyncio.to_thread(os.replace, partial, path)
    except BaseException:
        out.close()
        partial.unlink(missing_ok=True)
        raise
    return ExportResult(count, path.stat().st_size, digest.digest())


def _read_exact(f: BinaryIO, n: int) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise BundleError("the bundle is truncated")
    return data


def _records(f: BinaryIO) -> Iterator[tuple[int, bytes]]:
    """(arrived, raw) for each record; verifies the trailer's count and checksum at the end."""
    digest = hashlib.sha256()
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise BundleError("not a pimail envelope bundle (bad header)")
    digest.update(magic)
    count = 0
    while True:
        head = _read_exact(f, _REC.size)
        digest.update(head)
        arrived, length = _REC.unpack(head)
        if length == 0:
            tail = _read_exact(f, _END.size)
            digest.update(tail)
            (declared,) = _END.unpack(tail)
            checksum = _read_exact(f, 32)
            if f.read(1):
                raise BundleError("the bundle has data after its checksum")
            if checksum != digest.digest():
                raise BundleError("the bundle's checksum does not match its contents")
            if declared != count:
                raise BundleError(f"the bundle declares {declared} envelopes but holds {count}")
            return
        if length > MAX_RECORD_BYTES:
            raise BundleError(f"the bundle has an impossible record of {length} bytes")
        raw = _read_exact(f, length)
        digest.update(raw)
        count += 1
        yield arrived, raw


def _open(path: Path) -> BinaryIO:
    try:
        return cast(BinaryIO, gzip.open(path, "rb"))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def verify_bundle(path: Path) -> int:
    """Check the whole bundle (blocking; run in a thread); the number of records."""
    try:
        with _open(path) as f:
            return sum(1 for _ in _records(f))
    except (OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"the bundle is damaged: {exc}") from None


async def import_bundle(archive: Archive, path: Path) -> ImportResult:
    """Verify ``path`` completely, then add its valid envelopes (duplicates ignored)."""
    if not path.is_file():
        raise UserError(f"{path}: no such bundle")
    await asyncio.to_thread(verify_bundle, path)
    added_before = getattr(archive, "inserted_total", None)
    count_before = (await archive.stats()).count if added_before is None else 0
    read = invalid = 0
    f = await asyncio.to_thread(_open, path)
    try:
        records = _records(f)
        while True:
            chunk = await asyncio.to_thread(_take, records, IMPORT_BATCH)
            if not chunk:
                break
            batch: list[ArchivedEnvelope] = []
            for arrived, raw in chunk:
                read += 1
                try:
                    env = Envelope.decode(raw)
                except EnvelopeError:
                    invalid += 1
                    continue
                if env.expiry < env.ttl:
                    invalid += 1
                    continue
                batch.append(ArchivedEnvelope(env.sent, env.hash, env.topic, env.expiry, raw, arrived))
            if batch:
                await archive.submit(batch)
    except (OSError, EOFError, zlib.error) as exc:
        raise BundleError(f"the bundle is damaged: {exc}") from None
    finally:
        f.close()
    if added_before is not None:
        added = int(getattr(archive, "inserted_total", 0)) - int(added_before)
    else:
        added = max(0, (await archive.stats()).count - count_before)
    return ImportResult(read, added, read - invalid - added, invalid)


def _take(records: Iterator[tuple[int, bytes]], n: int) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for rec in records:
        out.append(rec)
        if len(out) >= n:
            break
    return out
