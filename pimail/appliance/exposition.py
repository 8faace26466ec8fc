"""The Prometheus text exposition format (version 0.0.4), written by hand for the few kinds pimail
exports: gauges and counters (with or without labels) and one histogram.

pimail used ``prometheus_client`` for this; importing it (with ``http.server``, ``wsgiref`` and
``email``) cost a Pi 3.6 MB of RSS for a page of text (docs/PERFORMANCE.md, "Memory"). The output
follows what Prometheus and ``prometheus_client`` agree on: ``# HELP`` and ``# TYPE`` once per
family, counters as ``<name>_total``, label pairs sorted by name and escaped, floats as Go prints
them (``1.0``, ``+Inf``), histogram buckets cumulative with ``le="+Inf"`` equal to ``_count``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def format_value(value: float) -> str:
    """A sample value as the exposition format writes it (Go's float formatting)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in sorted(pairs))
    return "{" + inner + "}" if inner else ""


@dataclass
class Family:
    """One metric family: a name, its help text, its type and (suffix, labels, value) samples."""

    name: str
    doc: str
    kind: str  # "gauge", "counter" or "histogram"
    samples: list[tuple[str, tuple[tuple[str, str], ...], float]] = field(default_factory=list)

    @classmethod
    def gauge(cls, name: str, doc: str, value: float | None = None) -> Family:
        fam = cls(name, doc, "gauge")
        if value is not None:
            fam.add((), value)
        return fam

    @classmethod
    def counter(cls, name: str, doc: str, value: float | None = None) -> Family:
        fam = cls(name, doc, "counter")
        if value is not None:
            fam.add((), value)
        return fam

    def add(self, labels: Iterable[tuple[str, str]], value: float, suffix: str | None = None) -> None:
        if suffix is None:
            suffix = "_total" if self.kind == "counter" else ""
        self.samples.append((suffix, tuple(labels), float(value)))


def render(families: Iterable[Family]) -> str:
    """The text page. Families sharing a name are written as one (their samples together)."""
    merged: dict[str, Family] = {}
    for fam in families:
        if fam.name in merged:
            merged[fam.name].samples.extend(fam.samples)
        else:
            merged[fam.name] = Family(fam.name, fam.doc, fam.kind, list(fam.samples))
    lines: list[str] = []
    for fam in merged.values():
        shown = fam.name + "_total" if fam.kind == "counter" else fam.name
        lines.append(f"# HELP {shown} {_escape_help(fam.doc)}")
        lines.append(f"# TYPE {shown} {fam.kind}")
        for suffix, labels, value in fam.samples:
            lines.append(f"{fam.name}{suffix}{_labels(labels)} {format_value(value)}")
    return "\n".join(lines) + "\n" if lines else ""


class LabelledCounter:
    """A counter per combination of label values (label names fixed at creation)."""

    def __init__(self, name: str, doc: str, labels: Sequence[str] = ()) -> None:
        self.name, self.doc, self.label_names = name, doc, tuple(labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes the labels {self.label_names}, got {tuple(labels)}")
        key = tuple(labels[n] for n in self.label_names)
        self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(labels[n] for n in self.label_names), 0.0)

    def family(self) -> Family:
        fam = Family(self.name, self.doc, "counter")
        if not self.label_names and not self._values:
            fam.add((), 0.0)  # an unlabelled counter exists from the start, at 0
        for key, value in self._values.items():
            fam.add(zip(self.label_names, key, strict=True), value)
        return fam


class Histogram:
    """Observations counted into fixed upper bounds (cumulative on output), with sum and count."""

    def __init__(self, name: str, doc: str, buckets: Sequence[float]) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.name, self.doc, self.bounds = name, doc, tuple(bounds)
        self._counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        for i, bound in enumerate(self.bounds):
            if value <= bound:
                self._counts[i] += 1
                break
        self.sum += value
        self.count += 1

    def family(self) -> Family:
        fam = Family(self.name, self.doc, "histogram")
        running = 0
        for bound, n in zip(self.bounds, self._counts, strict=True):
            running += n
            fam.add((("le", format_value(bound)),), running, "_bucket")
        fam.add((), self.count, "_count")
        fam.add((), self.sum, "_sum")
        return fam
