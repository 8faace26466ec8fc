"""Retention settings as operators write them ("30d", "8GB", "50%", "256MB") → a ``RetentionPolicy``.

The unit rules themselves live in ``pimail.config`` (one parser for the whole config); this
module turns the ``[archive]`` section into the policy the archive enforces, with a one-line
``UserError`` naming the setting when a value is bad.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pimail.archive.base import RetentionPolicy
from pimail.config import ArchiveConfig, parse_share
from pimail.config import parse_duration as config_parse_duration
from pimail.config import parse_size as config_parse_size
from pimail.errors import UserError


def parse_size(text: str | int, what: str = "size") -> int:
    """``"8GB"`` → 8_000_000_000 (SI units; KiB/MiB/GiB binary); ``0`` = no limit."""
    try:
        return config_parse_size(text)
    except ValueError as exc:
        raise UserError(f"{what}: {exc}") from None


def parse_duration(text: str | int, what: str = "duration") -> int:
    """``"30d"`` → 2_592_000 seconds (units s, m, h, d, w); ``0`` = no limit."""
    try:
        return config_parse_duration(text)
    except ValueError as exc:
        raise UserError(f"{what}: {exc}") from None


def max_bytes_of(config: ArchiveConfig, data_dir: Path | None) -> int:
    """``max_bytes`` in bytes. A share (``"50%"``) is of the filesystem that holds ``data_dir`` (the
    SQLite archive's); it means no cap for PostgreSQL, whose server owns its disk, or when there is no
    data dir to measure."""
    try:
        share = parse_share(config.max_bytes)
    except ValueError as exc:
        raise UserError(f"archive.max_bytes: {exc}") from None
    if share is None:
        return parse_size(config.max_bytes, "archive.max_bytes")
    if config.url or data_dir is None:
        return 0
    place = Path(data_dir).absolute()
    while not place.exists() and place != place.parent:  # not created yet: measure where it will be
        place = place.parent
    try:
        return int(shutil.disk_usage(place).total * share)
    except OSError:
        return 0


def policy_from_config(config: ArchiveConfig, data_dir: Path | None = None) -> RetentionPolicy:
    """The retention policy of an ``[archive]`` section; UserError names the bad key. ``data_dir``
    resolves a ``max_bytes`` given as a share of the filesystem."""
    if isinstance(config.max_count, bool) or not isinstance(config.max_count, int) or config.max_count < 0:
        raise UserError(f"archive.max_count: expected a whole number ≥ 0, got {config.max_count!r}")
    return RetentionPolicy(
        max_age_s=parse_duration(config.max_age, "archive.max_age"),
        max_count=config.max_count,
        max_bytes=max_bytes_of(config, data_dir),
        min_free_disk_bytes=parse_size(config.min_free_disk, "archive.min_free_disk"),
    )
