"""Logging for the daemon: journald with fields under systemd, readable lines otherwise.

Under systemd, stderr is connected to the journal and ``$JOURNAL_STREAM`` names that stream
(``device:inode``). Then records go to journald natively (systemd-python's ``JournalHandler``:
``PRIORITY``, ``SYSLOG_IDENTIFIER=pimail``, ``LOGGER``, ``CODE_FILE``/``CODE_LINE`` and any
``extra={"PEER": ...}`` fields in upper case), or, without systemd-python, as lines carrying a
``<N>`` syslog priority prefix that journald understands. Everywhere else: timestamped lines on
stderr.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import TextIO

SYSLOG_IDENTIFIER = "pimail"
READABLE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def stderr_is_journal(stream: TextIO | None = None, env: dict[str, str] | None = None) -> bool:
    """True when ``$JOURNAL_STREAM`` names the device and inode of our stderr."""
    env = dict(os.environ) if env is None else env
    value = env.get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    stream = sys.stderr if stream is None else stream
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return st.st_dev == int(dev) and st.st_ino == int(ino)


class _PriorityPrefixFormatter(logging.Formatter):
    """``<3>archive: …`` — sd-daemon(3) priority prefixes, for journald without systemd-python."""

    _LEVELS = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for level, p in self._LEVELS if record.levelno >= level), 7)
        text = super().format(record)
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines() or [""])


def setup_logging(verbose: bool = False, *, force: bool = False) -> str:
    """Install the root handler once; returns ``"journal"``, ``"journal-stream"`` or ``"stderr"``."""
    root = logging.getLogger()
    if root.handlers and not force:
        return "existing"
    for old in list(root.handlers):
        root.removeHandler(old)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    mode = "stderr"
    handler: logging.Handler
    if stderr_is_journal():
        try:
            journal = importlib.import_module("systemd.journal")
            handler = journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            mode = "journal"
        except ImportError:
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(_PriorityPrefixFormatter("%(name)s: %(message)s"))
            mode = "journal-stream"
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(READABLE_FORMAT))
    root.addHandler(handler)
    return mode
