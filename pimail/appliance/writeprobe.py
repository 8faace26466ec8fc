"""Whether the data dir still takes writes, at next to no cost to the SD card.

The daemon asks every housekeeping round (5 s). A file created and removed that often is not free
on a card: the directory block, the inode table and the bitmap it touches are dirty in every
journal commit (ext4 commits every 5 s), so each round wrote journal blocks and, later, their
checkpoint, even on a node with no traffic at all. So each round makes only the checks that
write nothing:

- ``statvfs``: a read-only remount (what ext4 does with ``errors=remount-ro`` after an I/O error);
- the directory's identity (device and inode): a data dir that vanished, or was moved aside or
  mounted over under the running node (the archive's open files still point at the old one);

and the real create-and-remove runs at the first check, then once every ``interval_s``
(lost permissions, a filesystem that refuses new files), and at every round while the last
check failed, so that a fixed fault clears within one round.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

PROBE_FILE = ".pimail-write-probe"
WRITE_INTERVAL_S = 600.0  # the real write probe, at most this often while all is well


class WriteProbe:
    """``check()`` is the error text, or None while the data dir takes writes (blocking: a thread)."""

    def __init__(self, data_dir: Path, *, interval_s: float = WRITE_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic,
                 statvfs: Callable[[Path], os.statvfs_result] = os.statvfs) -> None:
        self.data_dir = data_dir
        self.interval_s = interval_s
        self._clock = clock
        self._statvfs = statvfs
        self._identity: tuple[int, int] | None = None
        self._last_write: float | None = None
        self._failing = False
        self.writes = 0  # real create-and-remove probes made

    def check(self) -> str | None:
        error = self._cheap() or self._maybe_write()
        self._failing = error is not None
        return error

    def _cheap(self) -> str | None:
        try:
            st = os.stat(self.data_dir)
            fs = self._statvfs(self.data_dir)
        except OSError as exc:
            return f"{self.data_dir}: {exc.strerror or exc}"
        if fs.f_flag & os.ST_RDONLY:
            return f"{self.data_dir}: the filesystem is mounted read-only"
        identity = (st.st_dev, st.st_ino)
        if self._identity is None:
            self._identity = identity
        elif identity != self._identity:
            return (f"{self.data_dir} was replaced while the node ran (the archive's files are in the "
                    "old one): restart pimail")
        return None

    def _maybe_write(self) -> str | None:
        now = self._clock()
        if not self._failing and self._last_write is not None and now - self._last_write < self.interval_s:
            return None
        self._last_write = now
        self.writes += 1
        path = self.data_dir / PROBE_FILE
        try:  # no fsync: nothing here needs to reach the card, only to be accepted
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, b"pimail\n")
            finally:
                os.close(fd)
            os.unlink(path)
        except OSError as exc:
            return f"{self.data_dir}: {exc.strerror or exc}"
        return None
