"""``pimail archive migrate``: copy an archive into another one (SQLite → PostgreSQL for a fleet).

The copy walks the source in key order ((sent, hash) ascending), one page at a time, submits each
page to the destination and waits until it is durable there; only then does it record the page's
last cursor in a checkpoint file. An interrupted migration (Ctrl-C, kill -9, a lost connection)
resumes from that cursor; anything written twice is ignored by the destination (duplicates are
never stored twice), so resuming can repeat at most one page and never loses one.

Verification walks both archives side by side over the copied range and compares them envelope by
envelope: every source envelope must be in the destination with identical bytes, and every
destination envelope's hash must be the keccak of its bytes. It reports counts and a SHA-256
digest over (cursor, keccak(raw)) of the source and of what was found for it in the destination.
Envelopes the destination has beyond the source (other nodes of a fleet) are counted, not errors.

Both ends are ``Archive`` objects, so a migration can go either way; ``open_endpoint`` opens them
with no retention, so nothing is pruned while it runs. The command line is ``pimail.cli.migrate``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pimail.archive.base import (
    MAX_QUERY_LIMIT,
    Archive,
    ArchivedEnvelope,
    ArchiveError,
    HistoryQuery,
    InvalidCursor,
    RetentionPolicy,
    decode_cursor,
)
from pimail.crypto.keccak import keccak256
from pimail.errors import UserError

log = logging.getLogger(__name__)

SENT_MAX = 2**32 - 1
DEFAULT_BATCH = 1000  # envelopes per page and per destination write (≤ MAX_QUERY_LIMIT)
CHECKPOINT_VERSION = 1
PROGRESS_EVERY_S = 5.0
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


@dataclass
class Checkpoint:
    """Where a migration got to, saved after every durable page (atomically: tmp file + rename)."""

    source: str
    destination: str
    cursor: str = ""  # hex of the last copied source cursor ("" = from the start)
    copied: int = 0  # envelopes copied so far (over all runs)
    finished: bool = False
    updated: float = 0.0
    version: int = CHECKPOINT_VERSION

    @classmethod
    def load(cls, path: Path, source: str, destination: str) -> Checkpoint:
        """The checkpoint at ``path`` for this pair, or a fresh one if there is none."""
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(source, destination)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the migration checkpoint {path}: {exc}; "
                            "remove it or pass --restart") from None
        if not isinstance(data, dict) or data.get("version") != CHECKPOINT_VERSION:
            raise UserError(f"{path} is not a pimail migration checkpoint; remove it or pass --restart")
        if data.get("source") != source or data.get("destination") != destination:
            raise UserError(
                f"the checkpoint {path} belongs to a migration from {data.get('source')} to "
                f"{data.get('destination')}; pass --restart or another --checkpoint"
            )
        try:
            cp = cls(source, destination, str(data.get("cursor", "")), int(data.get("copied", 0)),
                     bool(data.get("finished", False)), float(data.get("updated", 0.0)))
            if cp.cursor:
                decode_cursor(bytes.fromhex(cp.cursor))
        except (ValueError, InvalidCursor) as exc:
            raise UserError(f"the checkpoint {path} is damaged ({exc}); pass --restart") from None
        return cp

    def save(self, path: Path) -> None:
        self.updated = time.time()
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @property
    def cursor_bytes(self) -> bytes | None:
        return bytes.fromhex(self.cursor) if self.cursor else None


@dataclass(frozen=True)
class CopyResult:
    copied: int  # envelopes copied in this run
    total: int  # over all runs (the checkpoint's count)
    resumed_from: bytes | None  # the cursor this run started after
    last_cursor: bytes | None
    seconds: float


@dataclass
class VerifyResult:
    source_count: int = 0
    matched: int = 0
    missing: int = 0  # in the source, not in the destination
    different: int = 0  # same key, different bytes
    bad_hash: int = 0  # destination rows whose hash is not keccak(raw)
    extra: int = 0  # in the destination's range, not in the source (other fleet nodes)
    source_digest: str = ""
    destination_digest: str = ""
    examples: list[str] = field(default_factory=list)  # a few problem keys, for the operator

    @property
    def ok(self) -> bool:
        return (self.missing == self.different == self.bad_hash == 0
                and self.matched == self.source_count and self.source_digest == self.destination_digest)


async def copy_archive(
    source: Archive,
    dest: Archive,
    checkpoint: Checkpoint,
    checkpoint_path: Path,
    *,
    batch: int = DEFAULT_BATCH,
    on_progress: Callable[[int], None] | None = None,
) -> CopyResult:
    """Copy every source envelope after the checkpoint's cursor; save the checkpoint per page."""
    if not 1 <= batch <= MAX_QUERY_LIMIT:
        raise UserError(f"--batch must be 1..{MAX_QUERY_LIMIT}")
    start = time.monotonic()
    resumed_from = checkpoint.cursor_bytes
    cursor = resumed_from
    lower = 0
    copied = 0
    checkpoint.finished = False
    while True:
        try:
            page = await source.query(HistoryQuery(lower, SENT_MAX, limit=batch, cursor=cursor))
        except InvalidCursor:
            # the checkpointed envelope left the source (pruned): restart at its second; the
            # destination ignores what it already has
            assert cursor is not None
            lower, _ = decode_cursor(cursor)
            log.info("migrate: the checkpoint envelope is gone from the source; resuming at time %d", lower)
            cursor = None
            continue
        if page.envelopes:
            await dest.submit(page.envelopes)  # resolves once durable in the destination
            copied += len(page.envelopes)
            cursor = page.envelopes[-1].cursor
            checkpoint.cursor = cursor.hex()
            checkpoint.copied += len(page.envelopes)
            checkpoint.save(checkpoint_path)
            if on_progress is not None:
                on_progress(checkpoint.copied)
        if page.next_cursor is None:
            break
    checkpoint.finished = True
    checkpoint.save(checkpoint_path)
    return CopyResult(copied, checkpoint.copied, resumed_from, cursor, time.monotonic() - start)


async def _walk(archive: Archive, lower: int, upper: int) -> AsyncIterator[ArchivedEnvelope]:
    async for env in archive.iterate(HistoryQuery(lower, upper), page_size=MAX_QUERY_LIMIT):
        yield env


async def verify_copy(source: Archive, dest: Archive, upto: bytes | None, *, max_examples: int = 5
                      ) -> VerifyResult:
    """Compare the source up to cursor ``upto`` (inclusive) with the destination, envelope by envelope."""
    result = VerifyResult()
    src_digest, dst_digest = hashlib.sha256(), hashlib.sha256()
    if upto is None:
        result.source_digest = result.destination_digest = src_digest.hexdigest()
        return result
    upto_sent, _ = decode_cursor(upto)

    def note(kind: str, env: ArchivedEnvelope) -> None:
        if len(result.examples) < max_examples:
            result.examples.append(f"{kind}: sent {env.sent} hash {env.hash.hex()}")

    src_iter = _walk(source, 0, upto_sent).__aiter__()
    dst_iter: AsyncIterator[ArchivedEnvelope] | None = None
    dst: ArchivedEnvelope | None = None
    dst_done = False

    async def next_dst() -> ArchivedEnvelope | None:
        nonlocal dst_done
        assert dst_iter is not None
        while True:
            try:
                env = await dst_iter.__anext__()
            except StopAsyncIteration:
                dst_done = True
                return None
            if keccak256(env.raw) != env.hash:
                result.bad_hash += 1
                note("destination hash is not keccak(raw)", env)
                continue
            return env

    async for src in src_iter:
        if src.cursor > upto:
            break
        if dst_iter is None:  # start the destination walk at the first source envelope's second
            dst_iter = _walk(dest, src.sent, upto_sent).__aiter__()
            dst = await next_dst()
        result.source_count += 1
        src_digest.update(src.cursor + keccak256(src.raw))
        while dst is not None and dst.cursor < src.cursor:
            result.extra += 1
            dst = await next_dst()
        if dst is not None and dst.cursor == src.cursor:
            if dst.raw == src.raw:
                result.matched += 1
                dst_digest.update(dst.cursor + keccak256(dst.raw))
            else:
                result.different += 1
                note("different bytes", src)
            dst = await next_dst()
        else:
            result.missing += 1
            note("missing", src)
    while dst is not None and not dst_done and dst.cursor <= upto:
        result.extra += 1
        dst = await next_dst()
    result.source_digest = src_digest.hexdigest()
    result.destination_digest = dst_digest.hexdigest()
    return result


# -- the two ends ---------------------------------------------------------------------------------------


def describe_endpoint(spec: str, schema: str = "pimail") -> str:
    """A stable, password-free name for one end (used in the checkpoint and in messages)."""
    if spec.startswith(POSTGRES_SCHEMES):
        from pimail.archive.postgres import describe_url

        return f"postgresql://{describe_url(spec)}#schema={schema}"
    return str(Path(spec).resolve())


def open_endpoint(spec: str, *, schema: str, must_exist: bool) -> Archive:
    """An unopened archive for a postgresql:// URL or a SQLite file (or a data dir holding one)."""
    if spec.startswith(POSTGRES_SCHEMES):
        from pimail.archive.postgres import PostgresArchive

        try:
            return PostgresArchive(spec, schema=schema, retention=RetentionPolicy(), prune_interval_s=0,
                                   flush_interval_ms=0, flush_max_envelopes=MAX_QUERY_LIMIT * 4)
        except ArchiveError as exc:
            raise UserError(str(exc)) from None
    if "://" in spec:
        raise UserError(f"{spec.split('://')[0]}:// archives are not supported (a SQLite path or postgresql://)")
    from pimail.archive import SQLITE_FILE
    from pimail.archive.sqlite import SqliteArchive

    path = Path(spec)
    if path.is_dir():
        path = path / SQLITE_FILE
    if must_exist and not path.is_file():
        raise UserError(f"no archive at {path}")
    return SqliteArchive(path, retention=RetentionPolicy(), prune_interval_s=0, flush_interval_ms=0)
