"""What the power-cut fault compares: the envelopes the node acknowledged against what it has after
the reboot. No I/O and no clock of its own (times are passed in), so tests/bench can drive it.

A Batch Ack is the node's promise; every envelope of an acknowledged batch must be in the archive
after any power cut. ``Ledger`` records each ack as it arrives on the host (the cut it belongs to,
when it came, the envelope hashes of the batch); ``judge_cut`` says, for one cut, how many
acknowledged envelopes are missing, how old the oldest lost ack was at the moment of the cut, and
whether the loss is only a tail (newest acks lost, never a gap before a surviving batch: what a
rolled-back WAL looks like) or holes in the middle (which no commit protocol explains).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class AckedBatch:
    cut: int
    acked_at: float  # the host's monotonic clock, seconds
    hashes: tuple[bytes, ...]


@dataclass
class Ledger:
    """Every acknowledged batch, in the order the acks arrived."""

    batches: list[AckedBatch] = field(default_factory=list)

    def record(self, cut: int, acked_at: float, hashes: Iterable[bytes]) -> None:
        self.batches.append(AckedBatch(cut, acked_at, tuple(hashes)))

    def acked(self, cut: int | None = None) -> set[bytes]:
        """Hashes acknowledged in ``cut`` (None: in every cut)."""
        return {h for b in self.batches if cut is None or b.cut == cut for h in b.hashes}

    def count(self, cut: int | None = None) -> int:
        return len(self.acked(cut))


@dataclass(frozen=True)
class CutVerdict:
    cut: int
    acked: int  # distinct envelopes acknowledged in this cut
    missing: int  # of those, not in the archive after the reboot
    lost_batches: int  # acknowledged batches with at least one envelope missing
    oldest_lost_ack_s: float | None  # how long before the cut the oldest lost ack arrived
    tail_only: bool  # every lost batch was acked after every intact batch of this cut

    @property
    def held(self) -> bool:
        return self.missing == 0


def judge_cut(ledger: Ledger, cut: int, present: set[bytes], cut_at: float) -> CutVerdict:
    """Compare the acks of ``cut`` with ``present`` (the hashes the node has after the reboot);
    ``cut_at`` is the moment of the SIGKILL on the same clock as the acks."""
    batches = [b for b in ledger.batches if b.cut == cut]
    acked = {h for b in batches for h in b.hashes}
    missing = acked - present
    lost = [b for b in batches if any(h in missing for h in b.hashes)]
    intact = [b for b in batches if b not in lost]
    oldest = max((cut_at - b.acked_at for b in lost), default=None)
    newest_intact = max((b.acked_at for b in intact), default=None)
    tail_only = newest_intact is None or all(b.acked_at >= newest_intact for b in lost)
    return CutVerdict(cut, len(acked), len(missing), len(lost), oldest, tail_only)


@dataclass(frozen=True)
class ModeSummary:
    """One mode's run: every cut's verdict, the boots that reached READY, the archive checks."""

    mode: str
    verdicts: tuple[CutVerdict, ...]
    boots: int  # boots attempted (the first boot and one after every cut)
    ready: int  # boots that reached READY
    corrupt: int  # archive checks that reported a problem
    final_missing: int | None = None  # every cut's acks against the whole archive at the end

    @property
    def cuts(self) -> int:
        return len(self.verdicts)

    @property
    def acked(self) -> int:
        return sum(v.acked for v in self.verdicts)

    @property
    def missing(self) -> int:
        return sum(v.missing for v in self.verdicts)

    @property
    def cuts_with_loss(self) -> int:
        return sum(not v.held for v in self.verdicts)

    @property
    def oldest_lost_ack_s(self) -> float | None:
        return max((v.oldest_lost_ack_s for v in self.verdicts if v.oldest_lost_ack_s is not None),
                   default=None)

    def held(self, min_cuts: int) -> bool:
        """No acknowledged envelope missing, no corrupt archive, READY after every boot, and enough
        cuts that each acknowledged something (a cut with nothing acked proves nothing)."""
        return (self.cuts >= min_cuts and all(v.acked > 0 for v in self.verdicts)
                and self.missing == 0 and not self.final_missing and self.corrupt == 0
                and self.ready == self.boots)

    def line(self) -> str:
        pct = f" ({100 * self.missing / self.acked:.1f} %)" if self.acked and self.missing else ""
        oldest = self.oldest_lost_ack_s
        lost = (f" in {self.cuts_with_loss} of {self.cuts} cuts, acked up to {oldest:.1f} s before the cut"
                + ("" if all(v.tail_only for v in self.verdicts) else ", with holes before surviving batches")
                if self.missing and oldest is not None else "")
        final = ("" if self.final_missing is None
                 else f"; whole archive at the end: {self.final_missing:,} missing")
        return (f"{self.mode}: {self.cuts} cuts, {self.acked:,} acknowledged, {self.missing:,} missing"
                f"{pct}{lost}; {self.corrupt} corrupt archives; READY {self.ready}/{self.boots} boots{final}")
