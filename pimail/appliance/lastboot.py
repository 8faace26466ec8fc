"""How the previous boot of this box ended, as the image's journal keeper recorded it.

On the Raspberry Pi image, ``pimail-journal-keep boot`` (before pimail starts) looks at the journal
it kept of the previous boot on the data medium and writes ``/run/pimail-image/last-boot``::

    ended=clean            # clean | watchdog | power-loss | first
    at=2026-12-02T14:03:11+00:00   # time of the last entry kept from that boot (may be empty)

Elsewhere (a .deb on a desktop, ``make run``) there is no such file and nothing is reported.
"""

from __future__ import annotations

from pathlib import Path

LAST_BOOT_FILE = Path("/run/pimail-image/last-boot")
MAX_BYTES = 4096

WORDS = {
    "clean": "clean shutdown",
    "watchdog": "reset by the hardware watchdog (the system hung)",
    "power-loss": "power loss or crash (no clean shutdown, no watchdog report)",
    "first": "first boot (no previous boot recorded)",
}


def read(path: Path = LAST_BOOT_FILE) -> dict[str, str] | None:
    """``{"ended": ..., "words": ..., "at": ...}``, or None when the file is absent or unreadable.

    An unknown ``ended`` value is passed on with "unknown" words rather than dropped."""
    try:
        text = path.read_bytes()[:MAX_BYTES].decode("utf-8", errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ended", "at"):
            fields[key.strip()] = value.strip()[:100]
    ended = fields.get("ended")
    if not ended:
        return None
    return {"ended": ended, "words": WORDS.get(ended, "unknown"), "at": fields.get("at", "")}
