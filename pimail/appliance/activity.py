"""The node's day in numbers: one point per 10 minutes for the last 24 hours, kept across restarts.

Four things an operator wants to see at a glance (pi-hole's dashboard is the model): envelopes
archived, history envelopes served, peers per protocol and the disk the archive uses. The daemon
calls ``observe()`` with its running totals every few seconds; this object turns them into
per-slot figures (a slot is ``SLOT_S`` of wall-clock time, numbered from the epoch, so slots line
up across restarts) and remembers the last ``SLOTS`` of them.

The file (``<data dir>/activity.json``, a few KB) is written atomically (temporary file, fsync,
rename) only when a slot is complete: at most once per 10 minutes, plus once at a clean stop, so
the SD card sees ~150 small writes a day. Writing is blocking: the daemon calls ``save()`` in an
executor. A missing or unreadable file starts an empty day (with one warning); nothing here can
stop the node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SLOT_S = 600  # one point per 10 minutes
SLOTS = 144  # 24 hours of them
FILE_NAME = "activity.json"
FORMAT = 1
MAX_PROTOCOLS = 8  # peer series kept (protocol names come from our own capabilities, but bound them)
MAX_NAME = 16
MAX_FILE_BYTES = 256 * 1024  # a file larger than this is not ours: start afresh

COUNTS = ("archived", "served")  # events per slot: the sum of what happened in it


@dataclass
class Slot:
    """What happened in one 10-minute slot."""

    archived: int = 0
    served: int = 0
    disk: int | None = None  # archive bytes, the last figure seen in the slot
    peers: dict[str, int] = field(default_factory=dict)  # most peers seen at once, per protocol

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"archived": self.archived, "served": self.served, "peers": dict(self.peers)}
        if self.disk is not None:
            out["disk"] = self.disk
        return out

    @classmethod
    def from_json(cls, raw: Any) -> Slot | None:
        if not isinstance(raw, Mapping):
            return None
        archived, served, disk = raw.get("archived", 0), raw.get("served", 0), raw.get("disk")
        peers = raw.get("peers", {})
        if not (_count(archived) and _count(served) and (disk is None or _count(disk))):
            return None
        if not isinstance(peers, Mapping):
            return None
        kept = {str(k)[:MAX_NAME]: int(v) for k, v in list(peers.items())[:MAX_PROTOCOLS] if _count(v)}
        return cls(int(archived), int(served), None if disk is None else int(disk), kept)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def slot_of(ts: float) -> int:
    """The slot number of a wall-clock time (slot ``n`` covers ``[n * SLOT_S, (n + 1) * SLOT_S)``)."""
    return int(ts // SLOT_S)


class ActivityLog:
    """The last ``SLOTS`` slots of activity; ``path`` None keeps them in memory only."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._slots: dict[int, Slot] = {}
        self._totals: dict[str, int] = {name: 0 for name in COUNTS}  # the running totals last seen
        self._saved_slot: int | None = None  # the current slot when we last wrote the file
        self._dirty = False
        self.saves = 0  # files written (tests and the SD-wear budget read it)
        self._save_failing = False  # warn once per failure streak, not every 10 minutes

    # -- recording -------------------------------------------------------------------------------
    def observe(
        self,
        now: float,
        *,
        archived: int,
        served: int,
        peers: Mapping[str, int],
        archive_bytes: int | None,
    ) -> None:
        """Record the daemon's running totals (``archived``, ``served`` count from the process start)
        and its current gauges at wall-clock time ``now``."""
        current = slot_of(now)
        slot = self._slots.get(current)
        if slot is None:
            slot = self._slots[current] = Slot()
            self._trim(current)
        for name, total in (("archived", archived), ("served", served)):
            last = self._totals[name]
            delta = total - last if total >= last else total  # a total that went down was reset
            self._totals[name] = total
            setattr(slot, name, getattr(slot, name) + max(0, delta))
        if archive_bytes is not None:
            slot.disk = max(0, int(archive_bytes))
        for name, count in peers.items():
            key = str(name)[:MAX_NAME]
            if key not in slot.peers and len(slot.peers) >= MAX_PROTOCOLS:
                continue
            slot.peers[key] = max(slot.peers.get(key, 0), max(0, int(count)))
        self._dirty = True

    def _trim(self, current: int) -> None:
        """Keep the window: slots older than a day go, and so do any far in the future (a clock that
        was wrong before NTP set it)."""
        for n in [n for n in self._slots if n <= current - SLOTS or n > current + SLOTS]:
            del self._slots[n]

    # -- reading ---------------------------------------------------------------------------------
    def snapshot(self, now: float) -> dict[str, Any]:
        """The 24 hours that end with the slot holding ``now``, oldest first; ``None`` where the node
        was not running. JSON-ready (status snapshot, status page)."""
        current = slot_of(now)
        numbers = range(current - SLOTS + 1, current + 1)
        slots = [self._slots.get(n) for n in numbers]
        protocols = sorted({p for s in slots if s is not None for p in s.peers})[:MAX_PROTOCOLS]
        return {
            "slot_s": SLOT_S,
            "first_slot_at": numbers[0] * SLOT_S,
            "archived": [None if s is None else s.archived for s in slots],
            "served": [None if s is None else s.served for s in slots],
            "disk_bytes": [None if s is None else s.disk for s in slots],
            "peers": {p: [None if s is None else s.peers.get(p, 0) for s in slots] for p in protocols},
        }

    # -- the file --------------------------------------------------------------------------------
    def save_due(self, now: float) -> bool:
        """True once per slot: when the slot we last saved in has ended and there is news."""
        return self.path is not None and self._dirty and self._saved_slot != slot_of(now)

    def dump(self) -> str:
        """The file's content (cheap; on the event loop, so that ``write`` never reads slots that
        ``observe`` is changing)."""
        doc = {
            "format": FORMAT,
            "slot_s": SLOT_S,
            "slots": {str(n): s.to_json() for n, s in sorted(self._slots.items())},
        }
        return json.dumps(doc, separators=(",", ":"))

    def save(self, now: float) -> None:
        """``write(dump(), now)`` in one go (tests, and callers without a loop)."""
        self.write(self.dump(), now)

    def write(self, text: str, now: float) -> None:
        """Write ``text`` atomically (blocking: run it in an executor). Errors are logged, not raised."""
        if self.path is None:
            return
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            level = logging.DEBUG if self._save_failing else logging.WARNING
            log.log(level, "activity: cannot save %s: %s (the graphs go on in memory)", self.path,
                    exc.strerror or exc)
            self._save_failing = True
            self._saved_slot = slot_of(now)  # try again in the next slot, not every 5 s
            with contextlib.suppress(OSError):
                tmp.unlink()
            return
        if self._save_failing:
            log.info("activity: %s saved again", self.path)
            self._save_failing = False
        self._saved_slot = slot_of(now)
        self._dirty = False
        self.saves += 1

    @classmethod
    def load(cls, path: Path, now: float) -> ActivityLog:
        """The log kept in ``path`` (an empty one if it is missing or not ours)."""
        activity = cls(path)
        activity._saved_slot = slot_of(now)  # what is on disk is current: the next write is at slot end
        try:
            if path.stat().st_size > MAX_FILE_BYTES:
                raise ValueError("too large")
            doc = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("slot_s") != SLOT_S:
                raise ValueError("not a pimail activity file of this version")
            raw_slots = doc.get("slots")
            if not isinstance(raw_slots, dict):
                raise ValueError("no slots")
        except FileNotFoundError:
            return activity
        except (OSError, ValueError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            log.warning("activity: %s unreadable (%s); the graphs start afresh", path, why)
            return activity
        for key, raw in raw_slots.items():
            slot = Slot.from_json(raw)
            if slot is not None and key.isdigit():
                activity._slots[int(key)] = slot
        activity._trim(slot_of(now))
        return activity
