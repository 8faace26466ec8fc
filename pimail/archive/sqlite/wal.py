"""A damaged write-ahead log: found before the open resets it, kept, and salvaged page by page.

SQLite replays a WAL up to the first frame whose checksum fails and silently drops every frame
after it, commits included. ``inspect`` reads only the frame headers to tell that case (commits of
this WAL generation past the frames SQLite replayed) from an unfinished last transaction (frames
past the last commit, as any crash leaves: no damage). ``keep`` copies a damaged WAL aside before
the open's checkpoint resets it. ``leaf_rows`` reads the envelope rows out of the table-leaf page
images of the dropped frames (SQLite's file format: b-tree page header, cell pointers, varints,
records), so ``salvage_wal_rows`` can hand them to the usual re-validation.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pimail.archive.sqlite.layout import Row
from pimail.archive.sqlite.salvage import DAMAGED_TAG, ArchiveDamaged

WAL_MAGIC = (0x377F0682, 0x377F0683)
WAL_HEADER = 32
FRAME_HEADER = 24
TABLE_LEAF = 0x0D
ENVELOPE_COLUMNS = 5  # id (the rowid, stored as NULL), topic, ttl, arr, raw


@dataclass(frozen=True)
class WalDamage:
    """What the open found in the WAL and where the copy is."""

    why: str
    kept: Path
    replayed: int  # frames SQLite replayed


@dataclass(frozen=True)
class WalScan:
    header_ok: bool
    page_size: int
    frames: int  # whole frames in the file
    lost_commits: int  # commit frames of this generation past the replayed ones


def inspect(wal: Path, replayed: int) -> WalScan:
    """Frame headers only (24 bytes per frame): bounded by the WAL's size limit."""
    with open(wal, "rb") as f:
        head = f.read(WAL_HEADER)
        if len(head) < WAL_HEADER:
            return WalScan(True, 0, 0, 0)
        page_size = int.from_bytes(head[8:12], "big")
        if int.from_bytes(head[:4], "big") not in WAL_MAGIC or page_size < 512 or page_size & (page_size - 1):
            return WalScan(False, 0, 0, 0)
        salts, lost, n = head[16:24], 0, 0
        while True:
            frame = f.read(FRAME_HEADER)
            if len(frame) < FRAME_HEADER:
                return WalScan(True, page_size, n, lost)
            n += 1
            if n > replayed and frame[8:16] == salts and int.from_bytes(frame[4:8], "big"):
                lost += 1
            f.seek(page_size, os.SEEK_CUR)


def find_damage(conn: sqlite3.Connection, path: Path) -> tuple[str, int] | None:
    """(why, frames replayed) when the WAL of ``path`` holds commits SQLite cannot replay."""
    wal = Path(f"{path}-wal")
    try:
        size = os.stat(wal).st_size
    except OSError:
        return None
    if size <= WAL_HEADER:
        return None
    row = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # also reports the frames replayed
    replayed = max(0, int(row[1])) if row is not None else 0
    try:
        scan = inspect(wal, replayed)
    except OSError:
        return None
    if not scan.header_ok and size >= WAL_HEADER + FRAME_HEADER:
        return f"the WAL header is damaged: {size} bytes of recent writes cannot be replayed", 0
    if scan.lost_commits:
        return (f"the WAL is damaged after frame {replayed} of {scan.frames}: {scan.lost_commits} later "
                "commits cannot be replayed"), replayed
    return None


def keep(conn: sqlite3.Connection, path: Path) -> WalDamage | None:
    """Before the open resets the WAL: copy a damaged one aside (``<name>-wal.damaged-<UTC time>``)."""
    found = find_damage(conn, path)
    if found is None:
        return None
    why, replayed = found
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = path.with_name(f"{path.name}-wal.{DAMAGED_TAG}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}-wal.{DAMAGED_TAG}-{stamp}-{n}")
    try:
        shutil.copyfile(f"{path}-wal", target)
    except OSError as exc:  # no room for the copy: refuse rather than lose the evidence silently
        raise ArchiveDamaged(path, f"{why}, and it cannot be copied aside: {exc.strerror or exc}") from exc
    return WalDamage(why, target, replayed)


def is_wal(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return int.from_bytes(f.read(4), "big") in WAL_MAGIC
    except OSError:
        return False


# -- page images -----------------------------------------------------------------------------------


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(8):
        if pos + i >= len(buf):
            raise ValueError("varint past the end")
        b = buf[pos + i]
        value = (value << 7) | (b & 0x7F)
        if b < 0x80:
            return value, pos + i + 1
    if pos + 8 >= len(buf):
        raise ValueError("varint past the end")
    return (value << 8) | buf[pos + 8], pos + 9


_INT_BYTES = {1: 1, 2: 2, 3: 3, 4: 4, 5: 6, 6: 8}


def _record(payload: bytes) -> list[object]:
    header_len, pos = _varint(payload, 0)
    types: list[int] = []
    while pos < header_len:
        t, pos = _varint(payload, pos)
        types.append(t)
    body = header_len
    values: list[object] = []
    for t in types:
        if t == 0:
            values.append(None)
        elif t in _INT_BYTES:
            n = _INT_BYTES[t]
            values.append(int.from_bytes(payload[body:body + n], "big", signed=True))
            body += n
        elif t in (8, 9):
            values.append(t - 8)
        elif t >= 12:
            n = (t - 12) // 2
            values.append(bytes(payload[body:body + n]))
            body += n
        else:  # a float or a reserved type: not an envelope row
            raise ValueError(f"serial type {t}")
        if body > len(payload):
            raise ValueError("record past the end")
    return values


def leaf_rows(page: bytes, page_size: int, first_page: bool = False) -> Iterator[Row]:
    """Envelope rows held in a table-leaf page image; cells that spill to overflow pages and
    records of other tables are passed over (the caller validates every row anyway)."""
    base = 100 if first_page else 0
    if len(page) < base + 8 or page[base] != TABLE_LEAF:
        return
    cells = int.from_bytes(page[base + 3:base + 5], "big")
    max_local = page_size - 35
    for i in range(min(cells, (page_size - base - 8) // 2)):
        ptr = int.from_bytes(page[base + 8 + 2 * i:base + 10 + 2 * i], "big")
        try:
            size, pos = _varint(page, ptr)
            rowid, pos = _varint(page, pos)
            if size > max_local or pos + size > len(page):
                continue
            values = _record(page[pos:pos + size])
        except ValueError:
            continue
        if len(values) != ENVELOPE_COLUMNS or values[0] is not None:
            continue
        _, topic, ttl, arr, raw = values
        if not isinstance(topic, int) or not isinstance(ttl, int) or not isinstance(raw, bytes):
            continue
        if arr is not None and not isinstance(arr, int):
            continue
        if rowid >= 1 << 63:
            rowid -= 1 << 64
        yield rowid, topic, ttl, arr, raw


def frame_rows(wal: Path, after: int, page_size_hint: int) -> Iterator[list[Row]]:
    """The envelope rows of each frame past frame ``after`` (one list per frame; blocking). A
    damaged header's page size is replaced by ``page_size_hint`` (the archive's)."""
    with open(wal, "rb") as f:
        head = f.read(WAL_HEADER)
        page_size = int.from_bytes(head[8:12], "big") if len(head) == WAL_HEADER else 0
        if page_size < 512 or page_size & (page_size - 1) or page_size > 65536:
            page_size = page_size_hint
        n = 0
        while True:
            frame = f.read(FRAME_HEADER + page_size)
            if len(frame) < FRAME_HEADER + page_size:
                return
            n += 1
            if n <= after:
                continue
            pageno = int.from_bytes(frame[:4], "big")
            yield list(leaf_rows(frame[FRAME_HEADER:], page_size, first_page=pageno == 1))
