"""The ack log: a small, pre-allocated, append-only file where acknowledged envelopes wait for the
SQLite index (``<archive>.acklog``).

Why: a quiet node's SQLite commit rewrites ~9 whole 8 KB pages (table tail, topic-index pages,
counter, header) however few envelopes it holds. Appending the envelopes to this file and fsyncing
it costs the envelope bytes and the last 4 KB page; the index is then written in large batches
behind it, and a replay of the log after a crash puts back whatever had not reached the index yet.

Layout: a 4096-byte header page, then records up to the file's size (zero-filled when created, so
that an append rewrites data pages only and its ``fdatasync`` has no file-size metadata to
journal)::

    header  magic "PIMAILOG" | version u32 | epoch u32 | crc32 u32 (of the 16 bytes before it)
    record  epoch u32 | length u32 | sent u32 | ttl u32 | arrived u32 | topic 4 B | crc32 u32 | raw

The record's crc32 covers its first 24 bytes and ``raw``. Only records of the header's epoch
count: ``reset`` (after the index commit) writes a new epoch, which empties the log in one header
write without truncating the file. A record that fails its checksum is skipped: reading resumes at
the next offset where a valid record of the epoch starts (a corrupt record in the middle loses only
itself); when none follows, it was a torn last record. A header that cannot be read (never written
completely) makes every valid record of any epoch count: replaying an already-indexed one is a
duplicate, which the archive ignores.

One process owns the log (``flock``); a second opener (``pimail archive export`` while the node
runs) only reads it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import mmap
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from pimail.archive.base import ArchivedEnvelope
from pimail.archive.common import SENT_MAX
from pimail.archive.sqlite.layout import Row, key_sent, topic_bytes
from pimail.crypto.keccak import keccak256
from pimail.envelope.codec import Envelope, EnvelopeError

log = logging.getLogger(__name__)

MAGIC = b"PIMAILOG"
VERSION = 1
HEADER_BYTES = 4096  # records start on the second 4 KB page
_HEADER = struct.Struct(">8sIII")  # magic, version, epoch, crc
_RECORD = struct.Struct(">IIIII4s")  # epoch, length, sent, ttl, arrived, topic (crc32 follows)
_CRC = struct.Struct(">I")
RECORD_OVERHEAD = _RECORD.size + _CRC.size  # 28 bytes per envelope
FILL_CHUNK = 64 * 1024
BLOCK = 4096  # direct writes cover whole blocks of this size
U32 = 0xFFFFFFFF
_NONZERO = re.compile(rb"[^\x00]")


def encode_record(epoch: int, row: Row) -> bytes:
    """One record of a table row (the key's probe slot is not kept: a replay picks it again)."""
    key, topic, ttl, arr, raw = row
    sent = key_sent(key)
    arrived = 0 if arr is None else (sent + arr) & U32
    head = _RECORD.pack(epoch, len(raw), sent, min(ttl, U32), arrived, topic_bytes(topic))
    return head + _CRC.pack(zlib.crc32(raw, zlib.crc32(head))) + raw


@dataclass
class Recovered:
    """What reading the log found: the envelopes of its valid records, and what it skipped."""

    envelopes: list[ArchivedEnvelope] = field(default_factory=list)
    end: int = HEADER_BYTES  # just past the last valid record
    corrupt: list[tuple[int, int]] = field(default_factory=list)  # (offset, bytes) skipped mid-log
    invalid: int = 0  # records with a good checksum whose raw bytes are not an envelope
    torn: int = 0  # bytes of a torn last record ignored
    header_ok: bool = True  # False: a header was there but could not be read
    epoch_missing: bool = False  # no valid header (a new file, or header_ok False)
    last_block: bytes = b""  # the bytes from the block holding ``end`` up to ``end``


class AckLog:
    """The log file (see the module docstring). Not thread-safe: the archive's writer thread owns it.

    ``sync``: fdatasync after each append and reset (``synchronous = "full"``); without it an
    acknowledged record survives a crash of pimail (it is in the page cache), not a power cut.
    """

    def __init__(self, path: Path, capacity: int, *, sync: bool) -> None:
        self.path = path
        self.capacity = -(-max(capacity, HEADER_BYTES + FILL_CHUNK) // BLOCK) * BLOCK
        self.sync = sync
        self.epoch = 1
        self.offset = HEADER_BYTES  # where the next record goes
        self.owner = False
        self._fd: int | None = None
        self._dfd: int | None = None  # O_DIRECT descriptor for appends (sync only)
        self._block = b""  # with _dfd: the bytes of the last partial block before ``offset``

    # -- open, read, close -------------------------------------------------------------------------

    def open(self) -> Recovered:
        """Open (creating a zero-filled file when there is none) and read the valid records.

        ``owner`` says whether this process may append (it holds the lock); a non-owner only reads.
        OSError when the file cannot be opened or created.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self.owner = True
            except BlockingIOError:
                self.owner = False
            size = os.fstat(fd).st_size
            found = self._read(fd, size)
            if self.owner and size < self.capacity:
                self._fill(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if found.envelopes or found.corrupt or found.torn or found.invalid or not found.header_ok:
            self._report(found)
        self.offset = found.end
        if self.owner:
            self._open_direct(found.last_block)
            if found.epoch_missing:
                self.reset()  # a new file, or a header never written completely
        return found

    def close(self) -> None:
        if self._dfd is not None:
            os.close(self._dfd)
            self._dfd = None
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None
        self.owner = False

    def _fill(self, fd: int, size: int) -> None:
        """Zero-fill the file to ``capacity`` (written, not sparse: appends then allocate nothing)."""
        zeros = bytes(FILL_CHUNK)
        pos = size
        while pos < self.capacity:
            pos += os.pwrite(fd, zeros[: self.capacity - pos], pos)
        os.fsync(fd)
        dirfd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dirfd)  # the new file's name is durable too
        finally:
            os.close(dirfd)

    def _read(self, fd: int, size: int) -> Recovered:
        data = os.pread(fd, size, 0) if size else b""
        found = Recovered()
        epoch: int | None = None
        if len(data) >= _HEADER.size:
            magic, version, ep, crc = _HEADER.unpack_from(data)
            if magic == MAGIC and version == VERSION and zlib.crc32(data[:_HEADER.size - 4]) == crc:
                epoch = ep
        if epoch is None:
            found.epoch_missing = True
            found.header_ok = not any(data[:HEADER_BYTES])  # a new (all-zero) file is fine
            self.epoch = 1
        else:
            self.epoch = epoch
        mark = None if epoch is None else _CRC.pack(epoch)
        pos = HEADER_BYTES
        end = len(data)
        while pos + RECORD_OVERHEAD <= end:
            got = self._record(data, pos, epoch)
            if got is not None:
                nxt, env = got
                if env is None:
                    found.invalid += 1
                else:
                    found.envelopes.append(env)
                if epoch is None:  # the next reset must start an epoch none of these records has
                    self.epoch = max(self.epoch, int.from_bytes(data[pos:pos + 4], "big"))
                pos = found.end = nxt
                continue
            resume = self._next_record(data, pos + 1, epoch, mark)
            if resume is None:
                if mark is not None and data[pos:pos + 4] == mark:
                    found.torn = self._torn_length(data, pos)
                break
            found.corrupt.append((pos, resume - pos))
            pos = resume
        found.last_block = data[found.end - found.end % BLOCK : found.end]
        return found

    @staticmethod
    def _torn_length(data: bytes, pos: int) -> int:
        length = int.from_bytes(data[pos + 4:pos + 8], "big")
        return min(len(data) - pos, RECORD_OVERHEAD + length)

    @staticmethod
    def _record(data: bytes, pos: int, epoch: int | None) -> tuple[int, ArchivedEnvelope | None] | None:
        """(offset after it, its envelope or None when its bytes are no envelope), or None when
        there is no valid record of ``epoch`` (None: any epoch) at ``pos``."""
        ep, length, sent, ttl, arrived, topic = _RECORD.unpack_from(data, pos)
        if (epoch is not None and ep != epoch) or ep == 0:
            return None
        start = pos + RECORD_OVERHEAD
        if length == 0 or start + length > len(data):
            return None
        (crc,) = _CRC.unpack_from(data, pos + _RECORD.size)
        raw = data[start:start + length]
        if zlib.crc32(raw, zlib.crc32(data[pos:pos + _RECORD.size])) != crc:
            return None
        try:
            Envelope.decode(raw)
        except EnvelopeError:
            return start + length, None
        if sent > SENT_MAX:
            return start + length, None
        return start + length, ArchivedEnvelope(sent, keccak256(raw), topic, sent + ttl, raw, arrived)

    def _next_record(self, data: bytes, pos: int, epoch: int | None, mark: bytes | None) -> int | None:
        """The first offset ≥ ``pos`` where a valid record starts (of ``epoch``), or None."""
        end = len(data)
        while pos + RECORD_OVERHEAD <= end:
            if mark is not None:
                pos = data.find(mark, pos)
            else:  # any epoch: skip zeros (an epoch is never 0, its first byte may be)
                hit = _NONZERO.search(data, pos)
                pos = -1 if hit is None else max(pos, hit.start() - 3)
            if pos < 0 or pos + RECORD_OVERHEAD > end:
                return None
            if self._record(data, pos, epoch) is not None:
                return pos
            pos += 1
        return None

    def _report(self, found: Recovered) -> None:
        name = self.path.name
        if not found.header_ok:
            log.warning("archive log %s: header unreadable; taking every valid record", name)
        for offset, n in found.corrupt:
            log.warning("archive log %s: corrupt record(s) at offset %d skipped (%d bytes); the "
                        "records after them are kept", name, offset, n)
        if found.invalid:
            log.warning("archive log %s: %d records are not envelopes; skipped", name, found.invalid)
        if found.torn:
            log.info("archive log %s: torn last record ignored (%d bytes, never acknowledged)", name,
                     found.torn)
        if found.envelopes:
            log.info("archive log %s: %d envelopes waiting for the index", name, len(found.envelopes))

    # -- writing (owner only) ----------------------------------------------------------------------

    def fits(self, nbytes: int) -> bool:
        return self.offset + nbytes <= self.capacity

    @property
    def used(self) -> int:
        return self.offset - HEADER_BYTES

    def append(self, rows: list[Row]) -> None:
        """Append the records in one write; with ``sync``, on stable storage when this returns.

        On OSError the log is as before (the next append overwrites whatever part was written)."""
        buf = b"".join([encode_record(self.epoch, row) for row in rows])
        if self.offset + len(buf) > self.capacity:
            raise OSError(f"archive log {self.path.name} is full")
        self._write(self.offset, buf)
        self.offset += len(buf)

    def reset(self) -> None:
        """Empty the log (a new epoch in the header): call once its records are in the index."""
        epoch = self.epoch % U32 + 1  # never 0
        head = MAGIC + struct.pack(">II", VERSION, epoch)
        self._block = b""
        self._write(0, head + _CRC.pack(zlib.crc32(head)) + bytes(HEADER_BYTES - _HEADER.size))
        self.epoch = epoch
        self.offset = HEADER_BYTES
        self._block = b""

    def _write(self, offset: int, data: bytes) -> None:
        """``data`` at ``offset`` (the current end of the log, or 0 for the header), durable with
        ``sync``. With direct I/O the write covers whole blocks from the one holding ``offset``: its
        first part is the log's last partial block (``_block``), its padding zeros; a 16 KB append then
        costs the 4 KB blocks it touches, not the page cache's (possibly much larger) folios."""
        fd = self._owned_fd()
        if self._dfd is not None:
            start = offset - len(self._block)
            total = len(self._block) + len(data)
            padded = -(-total // BLOCK) * BLOCK
            with mmap.mmap(-1, padded) as buf:  # page-aligned, as O_DIRECT wants it
                buf[: len(self._block)] = self._block
                buf[len(self._block) : total] = data
                try:
                    written = os.pwrite(self._dfd, buf, start)
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._no_direct(f"direct write refused ({exc.strerror})")
                    return self._write(offset, data)
                if written != padded:
                    raise OSError(f"archive log {self.path.name}: short write ({written} of {padded} bytes)")
                tail = total - total % BLOCK
                self._block = bytes(buf[tail:total])
            fd = self._dfd
        else:
            written = os.pwrite(fd, data, offset)
            if written != len(data):
                raise OSError(f"archive log {self.path.name}: short write ({written} of {len(data)} bytes)")
        if self.sync:
            os.fdatasync(fd)

    def _open_direct(self, data_end: bytes) -> None:
        """Write with O_DIRECT when syncing (where the filesystem allows it; tmpfs does not)."""
        if not self.sync or not hasattr(os, "O_DIRECT"):
            return
        try:
            self._dfd = os.open(self.path, os.O_WRONLY | os.O_DIRECT)
        except OSError as exc:
            self._no_direct(f"O_DIRECT refused ({exc.strerror})")
            return
        self._block = data_end

    def _no_direct(self, why: str) -> None:
        log.debug("archive log %s: buffered writes: %s", self.path.name, why)
        if self._dfd is not None:
            os.close(self._dfd)
        self._dfd = None
        self._block = b""

    def _owned_fd(self) -> int:
        if self._fd is None or not self.owner:
            raise OSError(f"archive log {self.path.name} is not open for writing")
        return self._fd

    def file_bytes(self) -> int:
        with contextlib.suppress(OSError):
            return os.stat(self.path).st_size
        return 0
