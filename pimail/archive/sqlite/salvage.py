"""Damage to the SQLite archive file: the bounded check at open, moving a damaged file aside, and
salvaging every readable envelope from it.

What counts as what:

- **damaged** (``ArchiveDamaged``): the file is there and readable by this user but is not a
  sound archive: empty (0 bytes), shorter than its header says (truncated), a bad header, or
  SQLite reports it malformed. Such a file is moved aside (never deleted, see ``quarantine``) and
  its readable rows are salvaged into a fresh archive.
- **unreadable** (``ArchiveUnreadable``): the file cannot be opened at all by this user
  (permissions, a directory in its place). It is not damaged: it stays where it is, untouched, and
  the operator is told what to fix.

Salvage reads the damaged file read-only, in key order, one bounded slice at a time; a page that
SQLite cannot read ends the slice, and the scan skips forward past the unreadable key range (see
``RowScanner``). Every row is checked again before it goes back in (``validate_row``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pimail.archive.base import ArchivedEnvelope, ArchiveError
from pimail.archive.sqlite.layout import LOW_MASK, PROBE_WINDOW, ROW_COLUMNS, Row, key_sent
from pimail.crypto.keccak import keccak256
from pimail.envelope.codec import Envelope, EnvelopeError

SQLITE_PERM = 3
SQLITE_CORRUPT = 11
SQLITE_CANTOPEN = 14
SQLITE_NOTADB = 26
SQLITE_IOERR = 10
HEADER = b"SQLite format 3\x00"
HEADER_BYTES = 100
DAMAGED_TAG = "damaged"  # archive.sqlite → archive.sqlite.damaged-20261202T131500Z
SALVAGE_SLICE_ROWS = 1000  # rows per slice read off the loop (one group commit each)
KEY_MIN, KEY_MAX = -(2**63), 2**63 - 1
SKIP_FIRST_STEP = 1 << 32  # one second of sent time, in key units


class ArchiveDamaged(ArchiveError):
    """The archive file is damaged (truncated, garbage, empty, malformed): move it aside and salvage."""

    def __init__(self, path: Path, why: str) -> None:
        super().__init__(f"{path} is damaged: {why}")
        self.path = path
        self.why = why


class ArchiveUnreadable(ArchiveError):
    """The archive file cannot be opened by this user (not damaged: it is left where it is)."""

    def __init__(self, path: Path, why: str, fix: str) -> None:
        super().__init__(f"{path} cannot be read: {why}")
        self.path = path
        self.why = why
        self.fix = fix


def sqlite_code(exc: BaseException) -> int:
    return int(getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF


def is_corruption(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the file is damaged (SQLITE_CORRUPT / NOTADB)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, ArchiveDamaged):
            return True
        if isinstance(exc, sqlite3.DatabaseError) and sqlite_code(exc) in (SQLITE_CORRUPT, SQLITE_NOTADB):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _owner(st: os.stat_result) -> str:
    try:
        import pwd

        name = pwd.getpwuid(st.st_uid).pw_name
    except (ImportError, KeyError):
        name = str(st.st_uid)
    return f"owner {name}, mode {stat.filemode(st.st_mode)}"


def _me() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())


def preflight(path: Path) -> None:
    """The bounded check before SQLite opens ``path``: a few stats and the 100-byte header.

    Raises ``ArchiveUnreadable`` (permissions, not a regular file) or ``ArchiveDamaged`` (empty,
    short, bad header, smaller than its header's page count). A missing file is fine (a new archive).
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ArchiveUnreadable(path, exc.strerror or str(exc),
                                f"check the permissions of {path.parent}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ArchiveUnreadable(path, "it is a directory, not an archive file",
                                f"move the directory {path} away (pimail creates a new archive there)")
    if not stat.S_ISREG(st.st_mode):
        raise ArchiveUnreadable(path, "it is not a regular file",
                                f"move {path} away (pimail creates a new archive there)")
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except PermissionError:
        steps = [] if st.st_uid == os.geteuid() else [f"chown {_me()} {path}"]
        steps.append(f"chmod 600 {path}")
        raise ArchiveUnreadable(
            path, f"permission denied ({_owner(st)}; pimail runs as {_me()})",
            f"give it back to the user pimail runs as: {'; '.join(steps)}") from None
    except OSError as exc:
        raise ArchiveUnreadable(path, exc.strerror or str(exc), "check the disk (dmesg)") from None
    if st.st_size == 0:
        wal = _size(Path(f"{path}-wal"))
        held = f"; its WAL holds {wal} bytes" if wal else ""
        raise ArchiveDamaged(path, f"the file is empty (0 bytes){held}")
    if len(head) < HEADER_BYTES or not head.startswith(HEADER):
        raise ArchiveDamaged(path, f"not an SQLite file (bad header, {st.st_size} bytes)")
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise ArchiveDamaged(path, f"bad page size {page_size} in the header")
    pages = int.from_bytes(head[28:32], "big")
    header_count_valid = head[24:28] == head[92:96] and pages > 0
    if header_count_valid and st.st_size < pages * page_size:
        raise ArchiveDamaged(path, f"truncated: the header says {pages} pages of {page_size} bytes "
                                   f"({pages * page_size} bytes), the file holds {st.st_size}")
    if st.st_size % page_size:
        raise ArchiveDamaged(path, f"truncated: {st.st_size} bytes is not a whole number of "
                                   f"{page_size}-byte pages")


def classify(path: Path, exc: sqlite3.Error) -> ArchiveError:
    """The ``ArchiveError`` an SQLite error at open means."""
    code = sqlite_code(exc)
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return ArchiveDamaged(path, str(exc))
    if code in (SQLITE_CANTOPEN, SQLITE_PERM):
        return ArchiveUnreadable(path, str(exc), f"check that {path} and {path.parent} belong to the "
                                                 f"user pimail runs as ({_me()})")
    return ArchiveError(f"cannot open the archive {path}: {exc}")


def probe(conn: sqlite3.Connection) -> None:
    """A bounded read of what every open needs (schema, counters, both ends of the key range, the
    small topics table): a file damaged there fails now rather than at the first query."""
    conn.execute("SELECT value FROM meta").fetchall()
    conn.execute("SELECT count(*) FROM topics").fetchone()
    for order in ("ASC", "DESC"):
        conn.execute(f"SELECT length(raw) FROM envelopes ORDER BY id {order} LIMIT 1").fetchone()


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def quarantine(path: Path, now: float | None = None) -> Path:
    """Move ``path`` (and its -wal and -shm) aside to ``<name>.damaged-<UTC time>``; never deletes.

    Returns the new path of the main file. The caller must have closed every connection to it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    target = path.with_name(f"{path.name}.{DAMAGED_TAG}-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = path.with_name(f"{path.name}.{DAMAGED_TAG}-{stamp}-{n}")
    try:
        os.rename(path, target)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{path}{suffix}")
            if side.exists():
                os.rename(side, Path(f"{target}{suffix}"))
    except OSError as exc:
        raise ArchiveError(f"cannot move the damaged archive {path} aside: {exc.strerror or exc}") from exc
    return target


def damaged_files(data_dir: Path, name: str) -> list[Path]:
    """Damaged archives and WAL copies kept in ``data_dir`` (oldest first)."""
    found = [p for pattern in (f"{name}.{DAMAGED_TAG}-*", f"{name}-wal.{DAMAGED_TAG}-*")
             for p in data_dir.glob(pattern)
             if p.is_file() and not p.name.endswith(("-wal", "-shm", ".json", ".tmp"))]
    return sorted(found, key=lambda p: (p.name.split(f".{DAMAGED_TAG}-", 1)[1], p.name))


# -- salvage ---------------------------------------------------------------------------------------


@dataclass
class SalvageReport:
    """How a salvage went (also written next to the damaged file as ``<file>.json``)."""

    source: str
    state: str = "running"  # running | done | failed
    read: int = 0  # rows SQLite returned
    salvaged: int = 0  # added to the archive
    duplicates: int = 0  # already in the archive
    rejected: int = 0  # failed the checks again (garbage in a row)
    beyond_retention: int = 0  # older than the retention's max age: not put back
    unreadable_ranges: int = 0  # key ranges skipped because SQLite could not read their pages
    unreadable_rows: int = 0  # rows whose key reads but whose columns do not
    expected: int | None = None  # the damaged file's own envelope counter, when readable
    error: str = ""
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        of = f" of ~{self.expected}" if self.expected is not None else ""
        return (f"{self.read}{of} read, {self.salvaged} salvaged, {self.duplicates} already present, "
                f"{self.rejected} rejected, {self.beyond_retention} beyond retention, "
                f"{self.unreadable_ranges} unreadable ranges and {self.unreadable_rows} unreadable rows "
                "skipped")


def open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection to a (damaged) archive: nothing is ever written to it."""
    if not path.is_file():
        raise ArchiveError(f"{path}: no such file")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only = 1")
        # a truncated file: SQLite refuses a file shorter than its header says unless the schema
        # is "writable", and then reads what the file holds (nothing is written: mode=ro)
        conn.execute("PRAGMA writable_schema = ON")
    except sqlite3.Error as exc:
        raise ArchiveError(f"cannot open {path}: {exc}") from exc
    return conn


def expected_count(conn: sqlite3.Connection) -> int | None:
    with contextlib.suppress(sqlite3.Error, TypeError):
        return int(conn.execute("SELECT value FROM meta WHERE key = 'count'").fetchone()[0])
    return None


class RowScanner:
    """Rows of a damaged ``envelopes`` table in key order (newest first with ``descending``), one
    slice at a time (blocking: run each ``next_slice`` in a thread).

    A slice reads rows one by one; when SQLite fails on a page the slice ends with what it has.
    The next call finds the end of the unreadable key range — it probes on from the last good key
    in doubling steps until a read works, then bisects back to the first key that reads — and
    goes on from there. Rows of a readable page inside a skipped range can be missed; every skip is
    counted."""

    def __init__(self, conn: sqlite3.Connection, descending: bool = False) -> None:
        self.conn = conn
        self.step = -1 if descending else 1
        self.next_key: int | None = KEY_MAX if descending else KEY_MIN
        self.skips = 0
        self.bad_rows = 0  # rows whose key reads but whose columns do not
        self.last_error = ""
        cmp, order = ("<=", "DESC") if descending else (">=", "ASC")
        self._where = f"FROM envelopes WHERE id {cmp} ? ORDER BY id {order} LIMIT ?"

    @property
    def done(self) -> bool:
        return self.next_key is None

    def _after(self, key: int) -> int | None:
        """The key position after ``key`` in scan order (None: past the end of the key space)."""
        nxt = key + self.step
        return nxt if KEY_MIN <= nxt <= KEY_MAX else None

    def _first_at(self, key: int) -> int | None:
        """The first key at or after ``key`` in scan order (None: no more rows); raises
        sqlite3.DatabaseError if unreadable."""
        row = self.conn.execute(f"SELECT id {self._where}", (key, 1)).fetchone()
        return None if row is None else int(row[0])

    def _readable(self, key: int) -> bool:
        try:
            self._first_at(key)
        except sqlite3.DatabaseError:
            return False
        return True

    def _skip(self, bad: int) -> int | None:
        """The first readable key position after ``bad`` in scan order, or None when nothing after
        it reads."""
        self.skips += 1
        end = KEY_MAX if self.step > 0 else KEY_MIN
        distance = SKIP_FIRST_STEP
        lo = bad
        while True:
            hi = bad + self.step * distance
            if not KEY_MIN <= hi <= KEY_MAX:
                hi = end
                if not self._readable(hi):
                    return None
                break
            if self._readable(hi):
                break
            lo = hi
            distance *= 2
        while abs(hi - lo) > 1:  # lo fails, hi reads
            mid = (lo + hi) // 2
            if self._readable(mid):
                hi = mid
            else:
                lo = mid
        return hi

    def next_slice(self, n: int = SALVAGE_SLICE_ROWS) -> list[Row]:
        if self.next_key is None:
            return []
        start = self.next_key
        rows: list[Row] = []
        try:
            for row in self.conn.execute(f"SELECT {ROW_COLUMNS} {self._where}", (start, n)):
                rows.append(row)
        except sqlite3.DatabaseError as exc:
            self.last_error = str(exc)
            # the sqlite3 module reads one row ahead: the row before the damage was read but not
            # handed out; take the rows up to the damage one statement each
            key: int | None = self._after(int(rows[-1][0])) if rows else start
            while len(rows) < n and key is not None:
                try:
                    one = self.conn.execute(f"SELECT {ROW_COLUMNS} {self._where}", (key, 1)).fetchone()
                except sqlite3.DatabaseError:
                    break
                if one is None:
                    self.next_key = None
                    return rows
                rows.append(one)
                key = self._after(int(one[0]))
            if rows:  # the next call starts where the damage is, and skips it
                self.next_key = self._after(int(rows[-1][0]))
                return rows
            try:  # the key reads but its row does not (a damaged cell or overflow page): pass it
                first = self._first_at(start)
            except sqlite3.DatabaseError:
                self.next_key = self._skip(start)
                return rows
            self.bad_rows += 1
            self.next_key = None if first is None else self._after(first)
            return rows
        self.next_key = None if len(rows) < n else self._after(int(rows[-1][0]))
        return rows


def validate_row(row: Row) -> ArchivedEnvelope:
    """The envelope a salvaged row holds, checked again; raises ValueError if anything disagrees.

    The raw bytes must decode as an envelope, and what the row says of it must match what the
    bytes say: sent time (the key), hash prefix (the key, within the probe window), topic, ttl. An
    expired envelope is fine (history outlives the TTL); retention decides how old is too old."""
    key, topic, ttl, arr, raw = row
    raw = bytes(raw)
    try:
        env = Envelope.decode(raw)
    except EnvelopeError as exc:
        raise ValueError(f"not an envelope: {exc}") from None
    if env.expiry < env.ttl:
        raise ValueError("expiry before its ttl")
    sent = key_sent(int(key))
    if env.sent != sent:
        raise ValueError(f"sent {env.sent} but stored under {sent}")
    digest = keccak256(raw)
    if (int(key) - int.from_bytes(digest[:4], "big")) & LOW_MASK >= PROBE_WINDOW:
        raise ValueError("hash does not match its key")
    if int.from_bytes(env.topic, "big", signed=True) != topic or env.ttl != ttl:
        raise ValueError("topic or ttl differ from the row")
    arrived = 0 if arr is None else sent + int(arr)
    if not 0 <= arrived < 2**32:
        arrived = 0
    return ArchivedEnvelope(env.sent, digest, env.topic, env.expiry, raw, arrived)


def check_slice(rows: list[Row], report: SalvageReport, oldest_sent: int | None) -> list[ArchivedEnvelope]:
    """Validate one slice; count what is rejected or beyond retention; the envelopes to put back."""
    keep: list[ArchivedEnvelope] = []
    for row in rows:
        report.read += 1
        try:
            env = validate_row(row)
        except (ValueError, TypeError):
            report.rejected += 1
            continue
        if oldest_sent is not None and env.sent < oldest_sent:
            report.beyond_retention += 1
            continue
        keep.append(env)
    return keep


def write_report(report: SalvageReport) -> None:
    """``<damaged file>.json`` (best effort: a read-only disk must not stop the salvage)."""
    import json

    path = Path(f"{report.source}.json")
    with contextlib.suppress(OSError):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report.as_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        os.replace(tmp, path)


def read_report(source: Path) -> dict[str, Any] | None:
    import json

    with contextlib.suppress(OSError, ValueError):
        data = json.loads(Path(f"{source}.json").read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    return None


Progress = Callable[[SalvageReport], None]
