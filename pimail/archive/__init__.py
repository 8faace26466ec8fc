"""The archive: every valid envelope, behind one ``Archive`` interface (SQLite default, PostgreSQL fleet)."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING

from pimail.archive.base import Archive
from pimail.config import ArchiveConfig

if TYPE_CHECKING:
    from pimail.health import HealthModel

SQLITE_FILE = "archive.sqlite"
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_archive(config: ArchiveConfig, data_dir: Path, health: HealthModel | None) -> Archive:
    """The node's archive (not yet opened: ``await archive.open()``).

    SQLite in ``<data_dir>/archive.sqlite`` unless ``config.url`` is a postgresql:// URL. Bad
    retention values raise ``UserError``.
    """
    from pimail.archive.retention import policy_from_config
    from pimail.errors import UserError

    policy = policy_from_config(config, Path(data_dir))
    if config.url.startswith(POSTGRES_SCHEMES):
        module = importlib.import_module("pimail.archive.postgres")
        backend: type[Archive] = module.PostgresArchive
        return backend(config.url, config=config, retention=policy, health=health)  # type: ignore[call-arg]
    if config.url:
        raise UserError(f"archive.url: expected \"\" (SQLite) or a postgresql:// URL, got {config.url!r}")
    if config.synchronous.lower() not in ("normal", "full"):
        raise UserError(f"archive.synchronous: expected \"normal\" or \"full\", got {config.synchronous!r}")
    if config.flush_interval_ms < 0 or config.flush_max_envelopes < 1:
        raise UserError("archive.flush_interval_ms must be ≥ 0 and archive.flush_max_envelopes ≥ 1")
    if config.index_interval_s < 0:
        raise UserError("archive.index_interval_s must be ≥ 0 (0: no ack log)")
    from pimail.archive.retention import parse_size
    from pimail.archive.sqlite import SqliteArchive

    return SqliteArchive(
        Path(data_dir) / SQLITE_FILE,
        flush_interval_ms=config.flush_interval_ms,
        flush_max_envelopes=config.flush_max_envelopes,
        synchronous=config.synchronous,
        index_interval_s=config.index_interval_s,
        log_max_bytes=parse_size(config.log_max_bytes, "archive.log_max_bytes"),
        retention=policy,
        health=health,
        prune_interval_s=config.prune_interval_s,
    )
