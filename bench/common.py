"""What every benchmark module shares: a result row and the table printer.

Each area module (bench/transport.py, bench/whisper.py, …) exposes ``run(quick: bool) -> list[Result]``.
Benchmarks print figures; they never assert timings.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Result:
    area: str
    name: str
    value: float
    unit: str
    target: float | None = None
    higher_is_better: bool = True
    note: str = ""

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "ok" if ok else "MISS"

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["verdict"] = self.verdict
        return d


def rate(fn: Callable[[], object], *, min_seconds: float = 1.0, batch: int = 1,
         clock: Callable[[], float] = time.perf_counter) -> float:
    """Calls of ``fn`` per second of ``clock`` (each call counted as ``batch`` operations),
    measured over at least ``min_seconds``."""
    n = 0
    start = clock()
    while True:
        fn()
        n += batch
        elapsed = clock() - start
        if elapsed >= min_seconds:
            return n / elapsed


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def print_table(results: Iterable[Result]) -> None:
    rows = list(results)
    print(f"{'area':<11} {'measure':<52} {'value':>14} {'unit':<10} {'target':>12}  verdict")
    for r in rows:
        tgt = "" if r.target is None else (("≥ " if r.higher_is_better else "≤ ") + f"{r.target:g}")
        print(f"{r.area:<11} {r.name:<52} {r.value:>14,.2f} {r.unit:<10} {tgt:>12}  {r.verdict} {r.note}")


def best_cpu_rate(fn: Callable[[], object], *, min_seconds: float, batch: int = 1, windows: int = 3) -> float:
    """Operations per CPU-second of this process (the machine is shared: wall time would lie).

    The best of ``windows`` windows of ``min_seconds / windows``: on a shared machine a busy
    neighbour slows our CPU-seconds too (caches, SMT siblings, clock), never speeds them up.
    """
    return max(rate(fn, min_seconds=min_seconds / windows, batch=batch, clock=time.process_time)
               for _ in range(windows))


@dataclass(frozen=True)
class Spread:
    """The median of repeated runs with the lowest and highest, so a reader sees the noise."""

    median: float
    low: float
    high: float
    runs: int

    def note(self, fmt: str = ",.0f", unit: str = "") -> str:
        return f"median of {self.runs} (min {self.low:{fmt}}{unit}, max {self.high:{fmt}}{unit})"


def spread(values: Iterable[float]) -> Spread:
    """Median, minimum and maximum of ``values`` (the median of an even count is the mean of the
    middle two)."""
    xs = sorted(values)
    if not xs:
        raise ValueError("spread of no values")
    mid = len(xs) // 2
    median = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
    return Spread(median, xs[0], xs[-1], len(xs))


def weighted_percentile(samples: Iterable[tuple[float, int]], q: float) -> float:
    """The value below which ``q`` (0–1) of the total weight lies: each ``(value, weight)`` sample
    stands for ``weight`` equal observations (a packet's ack latency for each of its envelopes).
    Nearest rank: the smallest value whose cumulative weight reaches ``q`` of the total."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be within 0 and 1")
    pairs = sorted((v, w) for v, w in samples if w > 0)
    total = sum(w for _, w in pairs)
    if total == 0:
        raise ValueError("percentile of no samples")
    need = max(1, math.ceil(q * total))
    seen = 0
    for value, weight in pairs:
        seen += weight
        if seen >= need:
            return value
    return pairs[-1][0]
