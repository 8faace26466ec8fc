"""The status page's 24-hour graphs: ``ActivityLog.snapshot()`` as inline SVG (no scripts, no assets).

One graph per figure: bars for counts per 10 minutes (envelopes archived, history envelopes served),
lines for gauges (peers per protocol, disk used by the archive). Each SVG is drawn in slot units
(one unit per 10 minutes) and stretched to the card's width, so it reads the same on a phone and a
desktop; labels are HTML around it, so they keep their size. Every SVG carries its figures as data
attributes (``data-values``: one per slot, empty where the node was not running), which is what the
browser test reads back.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from pimail.appliance.htmlescape import escape

HEIGHT = 40  # SVG units; the width is one unit per slot
TOP_PAD = 2
PEER_CLASSES = 4  # colours for peer lines, in page.css (.p0 … .p3)
LABEL_EVERY_S = 6 * 3600  # x-axis labels at 00:00, 06:00, 12:00, 18:00 UTC
EDGE_PCT = 20.0  # no axis label this close to an edge (it would run into "−24 h" or "now" on a phone)

Values = Sequence[int | None]


def _num(n: float) -> str:
    return f"{int(n):,}".replace(",", "\u202f")


def _bytes(n: float) -> str:
    value, units = float(n), ("B", "KB", "MB", "GB", "TB")
    unit = 0
    while value >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{int(value)} B" if unit == 0 else f"{value:.1f} {units[unit]}"


def _values(raw: Any, slots: int) -> list[int | None]:
    if not isinstance(raw, list | tuple):
        return [None] * slots
    out: list[int | None] = []
    for v in list(raw)[:slots]:
        out.append(int(v) if isinstance(v, int | float) and not isinstance(v, bool) and v >= 0 else None)
    return out + [None] * (slots - len(out))


def _data_attr(values: Values) -> str:
    return ",".join("" if v is None else str(v) for v in values)


def _y(v: float, top: float) -> float:
    return HEIGHT - (v / top) * (HEIGHT - TOP_PAD) if top > 0 else HEIGHT


def _svg(series: str, label: str, first: int, slot_s: int, values: Values, shapes: str) -> str:
    return (
        f'<svg class="graph" viewBox="0 0 {len(values)} {HEIGHT}" preserveAspectRatio="none" '
        f'role="img" aria-label="{escape(label)}" data-series="{escape(series)}" '
        f'data-first-slot-at="{first}" data-slot-s="{slot_s}" data-values="{_data_attr(values)}">'
        f'<line class="base" x1="0" y1="{HEIGHT}" x2="{len(values)}" y2="{HEIGHT}" '
        f'vector-effect="non-scaling-stroke"/>{shapes}</svg>'
    )


def _bars(values: Values, top: float, first: int, slot_s: int) -> str:
    rects = []
    for i, v in enumerate(values):
        if v:
            y = _y(v, top)
            rects.append(
                f'<rect x="{i + 0.1:.1f}" y="{y:.2f}" width="0.8" height="{HEIGHT - y:.2f}" '
                f'data-slot-at="{first + i * slot_s}" data-v="{v}"/>'
            )
    return "".join(rects)


def _lines(values: Values, top: float, css: str) -> str:
    """A stepped line per run of known values (a gap where the node was down)."""
    runs: list[list[str]] = []
    current: list[str] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
            continue
        y = f"{_y(v, top):.2f}"
        current += [f"{i},{y}", f"{i + 1},{y}"]
    if current:
        runs.append(current)
    return "".join(
        f'<polyline class="{css}" points="{" ".join(run)}" fill="none" vector-effect="non-scaling-stroke"/>'
        for run in runs
    )


def _nice_top(peak: float) -> float:
    """A round number at or above ``peak`` for the y axis (1, 2, 5 × 10^n)."""
    if peak <= 0:
        return 1
    step = 1.0
    while step * 10 <= peak:
        step *= 10
    for m in (1, 2, 5, 10):
        if m * step >= peak:
            return m * step
    return 10 * step


def _axis(first: int, slot_s: int, slots: int) -> str:
    span = slots * slot_s
    labels = []
    t = (first // LABEL_EVERY_S + 1) * LABEL_EVERY_S
    while t < first + span:
        pct = (t - first) / span * 100
        if EDGE_PCT <= pct <= 100 - EDGE_PCT:
            labels.append(f'<span style="left:{pct:.1f}%">{time.strftime("%H:%M", time.gmtime(t))}</span>')
        t += LABEL_EVERY_S
    return (
        '<div class="axis"><span class="start">−24 h</span>' + "".join(labels)
        + '<span class="end">now</span></div>'
    )


def _figure(title: str, side: str, svg: str, axis: str, legend: str = "") -> str:
    return (
        f'<figure class="day"><figcaption><span>{escape(title)}</span>'
        f'<span class="note">{side}</span></figcaption>{svg}{axis}{legend}</figure>'
    )


def render_day(activity: Mapping[str, Any]) -> str:
    """The "last 24 hours" section's body: four graphs (escaped; figures come from our own log)."""
    slot_s = int(activity.get("slot_s") or 600)
    first = int(activity.get("first_slot_at") or 0)
    archived = activity.get("archived")
    slots = len(archived) if isinstance(archived, list | tuple) and archived else 144
    axis = _axis(first, slot_s, slots)
    parts = []
    per = f"per {slot_s // 60} min"
    for series, title in (("archived", "Envelopes archived"), ("served", "History envelopes served")):
        values = _values(activity.get(series), slots)
        peak = max((v for v in values if v is not None), default=0)
        top = _nice_top(peak)
        total = sum(v for v in values if v is not None)
        side = f"{_num(total)} in 24 h · peak {_num(peak)} {per}"
        svg = _svg(series, f"{title} {per}", first, slot_s, values, _bars(values, top, first, slot_s))
        parts.append(_figure(title, side, svg, axis))

    peers = activity.get("peers") if isinstance(activity.get("peers"), Mapping) else {}
    assert isinstance(peers, Mapping)
    peer_values = {str(p): _values(v, slots) for p, v in sorted(peers.items())}
    peak = max((v for vals in peer_values.values() for v in vals if v is not None), default=0)
    top = _nice_top(peak)
    groups, legend = [], []
    for i, (proto, values) in enumerate(peer_values.items()):
        css = f"p{i % PEER_CLASSES}"
        groups.append(f'<g class="{css}" data-series="peers:{escape(proto)}" '
                      f'data-values="{_data_attr(values)}">{_lines(values, top, css)}</g>')
        latest = next((v for v in reversed(values) if v is not None), 0)
        legend.append(f'<span class="key {css}">{escape(proto)}: {latest}</span>')
    totals = [None if all(vals[i] is None for vals in peer_values.values())
              else sum(vals[i] or 0 for vals in peer_values.values()) for i in range(slots)]
    peer_svg = _svg("peers", "peers per protocol", first, slot_s, totals, "".join(groups))
    side = f"most at once: {_num(peak)}" if peer_values else "none in 24 h"
    legend_html = f'<p class="legend">{"".join(legend)}</p>' if legend else ""
    parts.append(_figure("Peers per protocol", side, peer_svg, axis, legend_html))

    disk = _values(activity.get("disk_bytes"), slots)
    peak = max((v for v in disk if v is not None), default=0)
    latest_disk = next((v for v in reversed(disk) if v is not None), None)
    top = _nice_top(peak)
    side = f"now {_bytes(latest_disk)}" if latest_disk is not None else "not known yet"
    parts.append(_figure("Disk used by the archive", side,
                         _svg("disk_bytes", "disk used by the archive", first, slot_s, disk,
                              _lines(disk, top, "disk")), axis))
    return "".join(parts)
