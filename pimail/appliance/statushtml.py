"""The status page's HTML: the status snapshot as one self-contained page (inline CSS, no scripts).

Pure functions of the snapshot dict; the server that hands them out is ``pimail.appliance.statuspage``.
The page is for the person who owns the Pi: what state it is in and, when something is wrong, one
reason and one thing to do; then the day in graphs, peers, archive, retention, disk, clock and
history requests, each in words. Internal figures (per-tick loop samples, wire counters, the
discovery table) stay in ``/status.json`` and ``pimail status --json``.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pimail.appliance.daygraphs import render_day
from pimail.appliance.hints import hint_for
from pimail.appliance.htmlescape import escape
from pimail.appliance.leds import PATTERNS, SLOW_BLINK_S
from pimail.health import HealthState

REFRESH_S = 10  # meta refresh of the main page
MAX_TABLE_ROWS = 50
MAX_TEXT = 300
MAX_DEPTH = 3

# Inlined into each page so it works offline and needs no second request.
_CSS = (Path(__file__).parent / "static" / "page.css").read_text(encoding="utf-8")  # not importlib.resources

# Snapshot keys this page shows in its own words (or leaves to status.json on purpose); any other
# section a newer part of the node adds is shown as a plain list until it gets words of its own.
_SHOWN = {
    "health", "enode", "pairing", "qr_svg", "password_shown", "generated_at", "version", "error",
    "peers", "peer_count", "peers_by_protocol", "activity", "archive", "retention", "disk", "clock",
    "mailserver", "uptime_s", "started_at", "listen", "data_dir", "metrics_url", "discovery",
    "loop", "loop_lag_ms", "leds",
    "counters", "node_counters", "systemd",  # internal counters: status.json
}


_CLOCK_SOURCES = {
    "timesyncd": "network time (systemd-timesyncd)",
    "kernel": "network time (kernel says synchronized)",
    "always": "trusted by setting ([archive] clock_trust = \"always\")",
    "no-sync-mechanism": "system clock (no time sync service on this machine)",
    "none": "not checked yet",
}


def led_words(state: str) -> str:
    """What the LEDs are doing in ``state``, in the words of the LED table (``leds.PATTERNS``)."""
    try:
        patterns = PATTERNS[HealthState(state)]
    except (ValueError, KeyError):
        return ""
    groups: dict[str, list[str]] = {}
    for name, pattern in patterns.items():
        if pattern.mode == "on":
            groups.setdefault("on", []).append(name)
        elif pattern.mode == "blink":
            speed = "fast" if pattern.half_period_s < SLOW_BLINK_S else "slowly"
            groups.setdefault(f"blinking {speed}", []).append(name)
    return "; ".join(f"{' + '.join(names)} {how}" for how, names in groups.items()) or "all off"


def page_shell(title: str, body: str, *, refresh: bool) -> str:
    meta = f'<meta http-equiv="refresh" content="{REFRESH_S}">' if refresh else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"{meta}<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _e(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    return escape(text)


def human_bytes(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    value, unit = float(n), 0
    while abs(value) >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{int(value)} {units[unit]}" if unit == 0 else f"{value:.1f} {units[unit]}"


def human_duration(seconds: float) -> str:
    """``90061`` → "1 d 1 h"; whole units read as one ("30 days", "2 h"), never "30 d 0 h"."""
    s = int(max(0, seconds))
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days} d {hours} h" if hours else (f"{days} days" if days > 1 else "1 day")
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _when(ts: Any, now: float | None = None) -> str:
    """A time that does not wrap at phone width: ``2026-12-02 13:30 UTC`` in one unbreakable piece,
    with how long ago after it (which may wrap)."""
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts) or ts <= 0:
        return "—"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ts))
    iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))
    ago = ""
    if now is not None and now - ts >= 60:
        ago = f' <span class="note">({_e(human_duration(now - ts))} ago)</span>'
    return f'<time datetime="{iso}">{_e(stamp)}</time>{ago}'


def _n(value: Any) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{int(value):,}".replace(",", "\u202f")
    return "—"


def _rows(pairs: list[tuple[str, str]]) -> str:
    """A definition list; values are HTML already."""
    rows = "".join(f"<dt>{_e(k)}</dt><dd>{v}</dd>" for k, v in pairs)
    return f"<dl>{rows}</dl>" if rows else '<p class="note">nothing to show</p>'


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{_n(n)} {one if n == 1 else (many or one + 's')}"


# -- a plain list for sections without words of their own ----------------------------------------------
def _format(key: str, value: Any, depth: int = 0) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and math.isfinite(value):
        if key.endswith("_bytes"):
            return _e(human_bytes(value))
        if key.endswith(("_at", "_since")) and value > 1e9:
            return _when(value)
        if key.endswith("_s"):
            return _e(human_duration(value))
        return _e(_n(value) if isinstance(value, int) else f"{value:.4g}")
    if isinstance(value, Mapping):
        if not value:
            return "—"
        if depth >= MAX_DEPTH:
            return _e(json.dumps(value, default=str))
        return _rows([(_label(str(k)), _format(str(k), v, depth + 1)) for k, v in value.items()])
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, Mapping) for v in value) and depth < MAX_DEPTH:
            items = "".join(f"<li>{_format(key, v, depth + 1)}</li>" for v in value[:MAX_TABLE_ROWS])
            extra = len(value) - MAX_TABLE_ROWS
            more = f'<p class="note">and {extra} more</p>' if extra > 0 else ""
            return f"<ul>{items}</ul>{more}"
        shown = ", ".join(str(v) for v in value[:20])
        more = f" (+{len(value) - 20})" if len(value) > 20 else ""
        return _e(shown + more) if value else "none"
    return _e(value)


def _label(key: str) -> str:
    for suffix in ("_bytes", "_s", "_at"):
        if key.endswith(suffix) and len(key) > len(suffix):
            key = key[: -len(suffix)]
    return key.replace("_", " ")


# -- health -------------------------------------------------------------------------------------------


def _health_parts(health: Any) -> tuple[str, str, list[Mapping[str, Any]]]:
    """(state, summary without the state word, conditions worst first)."""
    if isinstance(health, Mapping):
        state = str(health.get("state", "unknown"))
        summary = str(health.get("summary", "")).removeprefix(f"{state}:").strip()
        conditions = health.get("conditions") or []
        if not isinstance(conditions, list | tuple):
            conditions = []
        return state, summary, [c for c in conditions if isinstance(c, Mapping)]
    if isinstance(health, str):
        state, _, rest = health.partition(":")
        return state.strip() or "unknown", rest.strip(), []
    return "unknown", "", []


def _consequence(cond: Mapping[str, Any], worst: Mapping[str, Any]) -> bool:
    """True when ``cond`` only repeats ``worst`` (relaying without storing because the archive
    failed, which says the archive's reason again)."""
    message, key, worst_key = str(cond.get("message")), str(cond.get("key")), str(worst.get("key"))
    if str(worst.get("message")) in message:
        return True
    return key == "whisper.archive" and worst_key.startswith(("archive.", "disk."))


def _health_html(snap: Mapping[str, Any]) -> str:
    state, summary, conditions = _health_parts(snap.get("health"))
    state_class = state if state in ("healthy", "degraded", "failing", "starting", "pairing") else "unknown"
    out = ['<section class="health"><h1>pimail mailserver</h1>'
           f'<span class="state s-{state_class}">{_e(state)}</span>']
    leds = snap.get("leds")
    if isinstance(leds, Mapping) and leds.get("enabled") and led_words(state):
        out.append(f'<p class="leds">LEDs: {_e(led_words(state))}</p>')
    if conditions:
        worst = conditions[0]
        out.append(f'<p class="reason">{_e(worst.get("message") or summary)}</p>')
        hint = re.sub(r"`([^`]+)`", r"<code>\1</code>", _e(hint_for(str(worst.get("key", "")))))
        out.append(f'<p class="hint">What to do: {hint}</p>')
        others = [str(c.get("message")) for c in conditions[1:MAX_TABLE_ROWS]
                  if c.get("message") and not _consequence(c, worst)]
        if others:
            out.append('<p class="note">Also: ' + "; ".join(_e(m) for m in others) + "</p>")
    elif summary and summary != state:
        out.append(f'<p class="reason">{_e(summary)}</p>')
    if snap.get("error"):
        out.append(f'<p class="warn">{_e(snap["error"])}</p>')
    out.append("</section>")
    return "".join(out)


# -- sections -----------------------------------------------------------------------------------------
def _enode_html(snap: Mapping[str, Any]) -> str:
    pw_note = (
        "The mailserver password is included."
        if snap.get("password_shown")
        else "The mailserver password is not shown here ([status] show_password_on_page = false)."
    )
    return (
        '<section class="add"><h2>Add this mailserver to Status</h2>'
        "<p class=\"note\">Scan with the phone, or copy the address below.</p>"
        f"{snap.get('qr_svg', '')}"
        f'<p class="enode"><code>{_e(snap.get("enode", ""))}</code></p>'
        f'<p class="note">{pw_note}</p></section>'
    )


def _pairing_html(pairing: Mapping[str, Any], offered: bool, now: float) -> str:
    parts = []
    if pairing.get("mode") == "open":
        parts.append("<p>Open: any phone may fetch history (no phone paired yet).</p>")
    else:
        count = len(pairing.get("paired_clients") or []) + int(pairing.get("configured_clients") or 0)
        parts.append(f"<p>Only allowed phones fetch history: {_plural(count, 'phone')}.</p>")
    if pairing.get("window_open"):
        remaining = pairing.get("window_remaining_s") or 0
        parts.append(
            f"<p><strong>Pairing window open</strong> for {_e(human_duration(remaining))} more: "
            "the first new phone that asks for history is added.</p>"
        )
    result = pairing.get("last_result")
    if isinstance(result, Mapping):
        when = _when(result.get("at"), now)
        if result.get("outcome") == "paired":
            who = _e(result.get("fingerprint"))
            parts.append(f"<p>Last pairing: <strong>paired {who}</strong> at {when}</p>")
        else:
            what = _e(str(result.get("outcome")).replace("_", " "))
            parts.append(f"<p>Last pairing window: {what} at {when}, no phone paired</p>")
    clients = pairing.get("paired_clients") or []
    if clients:
        items = "".join(
            f"<li><code>{_e(c.get('fingerprint'))}</code> paired {_when(c.get('paired_at'), now)}</li>"
            for c in clients[:MAX_TABLE_ROWS]
            if isinstance(c, Mapping)
        )
        parts.append(f"<ul>{items}</ul>")
    refused = pairing.get("refused_requests")
    if isinstance(refused, int) and refused:
        parts.append(f'<p class="note">{_plural(refused, "history request")} from phones that are not '
                     "allowed were refused.</p>")
    if offered and not pairing.get("window_open"):
        parts.append('<p><a href="/pair">Start pairing…</a> (needs the token from the console)</p>')
    return f"<section><h2>Pairing</h2>{''.join(parts)}</section>"


def _peer_line(peer: Mapping[str, Any]) -> str:
    client = str(peer.get("client") or peer.get("client_id") or peer.get("name") or "unknown client")
    bits = []
    if peer.get("protocol"):
        bits.append(str(peer["protocol"]))
    if peer.get("address"):
        bits.append(str(peer["address"]))
    if peer.get("inbound") is not None:
        bits.append("connected to us" if peer.get("inbound") else "we connected")
    if isinstance(peer.get("connected_s"), int | float):
        bits.append(f"for {human_duration(float(peer['connected_s']))}")
    detail = f'<span class="note">{_e(" · ".join(bits))}</span>' if bits else ""
    return f"<li>{_e(client[:60])}{detail}</li>"


def _peers_html(snap: Mapping[str, Any]) -> str:
    peers = snap.get("peers")
    counts = snap.get("peers_by_protocol")
    out = ["<section><h2>Peers</h2>"]
    listed = [p for p in peers[:MAX_TABLE_ROWS] if isinstance(p, Mapping)] if isinstance(peers, list) else []
    total = len(peers) if isinstance(peers, list) else int(snap.get("peer_count") or 0)
    if not total:
        out.append("<p>None connected.</p>")
    else:
        split = ""
        if isinstance(counts, Mapping) and counts:
            split = " (" + ", ".join(f"{_e(k)}: {_e(v)}" for k, v in sorted(counts.items())) + ")"
        out.append(f'<p class="protocols">{_plural(total, "peer")} connected{split}</p>')
    if listed:
        out.append('<ul class="peers">' + "".join(_peer_line(p) for p in listed) + "</ul>")
        if isinstance(peers, list) and len(peers) > len(listed):
            out.append(f'<p class="note">and {len(peers) - len(listed)} more</p>')
    out.append("</section>")
    return "".join(out)


def _archive_html(archive: Any, now: float, shown_reasons: set[str]) -> str:
    if not isinstance(archive, Mapping):
        return ('<section><h2>Archive</h2><p class="note">Not open: no figures. The node still relays '
                "messages.</p></section>")
    rows = [("messages kept", _n(archive.get("count"))),
            ("size on disk", _e(human_bytes(archive.get("bytes") or 0))),
            ("oldest", _when(archive.get("oldest_sent"), now)),
            ("newest", _when(archive.get("newest_sent"), now))]
    written = archive.get("bytes_written_since_start")
    if isinstance(written, int | float):
        rows.append(("written since start", _e(human_bytes(written))))
    backend = {"sqlite": "SQLite file on this Pi", "postgresql": "PostgreSQL (shared fleet archive)"}
    if archive.get("backend"):
        rows.append(("kept in", _e(backend.get(str(archive["backend"]), archive["backend"]))))
    reason = archive.get("reason")
    if reason and reason != "ok" and reason not in shown_reasons:  # else it heads the page already
        rows.append(("problem", f'<span class="warn">{_e(reason)}</span>'))
    known = {"count", "bytes", "oldest_sent", "newest_sent", "bytes_written_since_start", "backend", "reason"}
    for key, value in archive.items():
        if key not in known:
            rows.append((_label(str(key)), _format(str(key), value, 1)))
    return f"<section><h2>Archive</h2>{_rows(rows)}</section>"


def _limit(value: Any, fmt: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "—"
    return "no limit" if value == 0 else _e(fmt(value))


def _retention_html(ret: Any) -> str:
    if not isinstance(ret, Mapping):
        return ""
    rows = [("keeps messages for", _limit(ret.get("max_age_s"), human_duration)),
            ("largest archive", _limit(ret.get("max_bytes"), human_bytes)),
            ("most messages", _limit(ret.get("max_count"), _n)),
            ("leaves free on disk", _limit(ret.get("min_free_disk_bytes"), human_bytes))]
    return (f"<section><h2>Retention</h2>{_rows(rows)}"
            '<p class="note">The oldest messages go first when any limit is reached.</p></section>')


def _disk_html(disk: Any) -> str:
    if not isinstance(disk, Mapping):
        return ""
    free, total = disk.get("free_bytes"), disk.get("total_bytes")
    rows = []
    if isinstance(free, int | float) and isinstance(total, int | float) and total > 0:
        rows.append(("free", f"{_e(human_bytes(free))} of {_e(human_bytes(total))} "
                             f"({free / total * 100:.0f} %)"))
    else:
        rows.append(("free", "not known"))
    if disk.get("path"):
        rows.append(("data directory", f"<code>{_e(disk['path'])}</code>"))
    return f"<section><h2>Disk</h2>{_rows(rows)}</section>"


def _clock_html(clock: Any, now: float) -> str:
    if not isinstance(clock, Mapping):
        return ""
    trusted = clock.get("trusted")
    state = ("trusted: new messages are archived" if trusted
             else '<span class="warn">not synchronized yet: relaying, not archiving</span>')
    rows = [("clock", state if not trusted else _e(state)),
            ("time source", _e(_CLOCK_SOURCES.get(str(clock.get("source")), clock.get("source"))))]
    if trusted and clock.get("trusted_since"):
        rows.append(("trusted since", _when(clock.get("trusted_since"), now)))
    if isinstance(clock.get("now"), int | float):
        rows.append(("the Pi's time", _when(clock.get("now"))))
    return f"<section><h2>Clock</h2>{_rows(rows)}</section>"


def _history_html(ms: Any) -> str:
    if not isinstance(ms, Mapping):
        return ""
    refused = sum(int(ms.get(k) or 0) for k in ("rejected", "rate_limited", "denied", "malformed"))
    rows = [("requests answered", _n(ms.get("completed"))),
            ("envelopes sent", _n(ms.get("envelopes_sent"))),
            ("data sent", _e(human_bytes(ms.get("bytes_sent") or 0)))]
    if refused:
        why = [f"{_n(ms.get(k))} {label}" for k, label in (
            ("denied", "from phones not allowed"), ("rate_limited", "too frequent"),
            ("malformed", "malformed"), ("rejected", "invalid")) if ms.get(k)]
        rows.append(("refused", f"{_n(refused)} ({_e(', '.join(why))})"))
    if ms.get("aborted"):
        rows.append(("cut off", f"{_n(ms.get('aborted'))} (the phone went away)"))
    if ms.get("active_deliveries"):
        rows.append(("being sent now", _n(ms.get("active_deliveries"))))
    if ms.get("sync_served"):
        rows.append(("sibling syncs served", _n(ms.get("sync_served"))))
    note = '<p class="note">since the node started</p>'
    return f"<section><h2>History requests</h2>{_rows(rows)}{note}</section>"


def _node_html(snap: Mapping[str, Any], now: float) -> str:
    rows = []
    if isinstance(snap.get("uptime_s"), int | float):
        since = f" (since {_when(snap.get('started_at'))})" if snap.get("started_at") else ""
        rows.append(("running for", _e(human_duration(float(snap["uptime_s"]))) + since))
    if snap.get("listen"):
        rows.append(("listens on", f"<code>{_e(snap['listen'])}</code>"))
    loop = snap.get("loop")
    if isinstance(loop, Mapping) and isinstance(loop.get("max_lag_ms"), int | float):
        worst = float(loop["max_lag_ms"])
        word = "responsive" if worst < 500 else "has been slow"
        rows.append(("responsiveness", f"{word} (worst delay since start {_e(f'{worst:.0f}')} ms)"))
    disc = snap.get("discovery")
    if isinstance(disc, Mapping):
        if disc.get("enabled"):
            rows.append(("peer discovery", f"on, {_plural(int(disc.get('table_size') or 0), 'node')} known"))
        else:
            rows.append(("peer discovery", "off"))
    if snap.get("metrics_url"):
        rows.append(("metrics", f"<code>{_e(snap['metrics_url'])}</code>"))
    return f"<section><h2>Node</h2>{_rows(rows)}</section>" if rows else ""


def render_page(snap: Mapping[str, Any], pairing_offered: bool = False) -> str:
    """The status page as one HTML document (everything escaped; the QR is trusted SVG we made)."""
    generated = snap.get("generated_at")
    now = float(generated) if isinstance(generated, int | float) else time.time()
    state, _, _ = _health_parts(snap.get("health"))
    body = [_health_html(snap), _enode_html(snap)]
    if isinstance(snap.get("activity"), Mapping):
        day = render_day(snap["activity"])
        body.append(f'<section class="day-card"><h2>Last 24 hours</h2>{day}</section>')
    cards = []
    if isinstance(snap.get("pairing"), Mapping):
        cards.append(_pairing_html(snap["pairing"], pairing_offered, now))
    if "peers" in snap or "peer_count" in snap:
        cards.append(_peers_html(snap))
    if "archive" in snap:
        conditions = _health_parts(snap.get("health"))[2]
        cards.append(_archive_html(snap.get("archive"), now, {str(c.get("message")) for c in conditions}))
    cards.append(_retention_html(snap.get("retention")))
    cards.append(_disk_html(snap.get("disk")))
    cards.append(_clock_html(snap.get("clock"), now))
    cards.append(_history_html(snap.get("mailserver")))
    cards.append(_node_html(snap, now))
    for key, value in snap.items():
        if key in _SHOWN or value is None:
            continue
        title = str(key).replace("_", " ").capitalize()
        cards.append(f"<section><h2>{_e(title)}</h2>{_format(str(key), value)}</section>")
    body.append(f'<div class="cards">{"".join(cards)}</div>')
    stamp = _when(generated) if isinstance(generated, int | float) else ""
    body.append(
        f"<footer>pimail {_e(snap.get('version', ''))} · {stamp} · refreshes every {REFRESH_S} s · "
        '<a href="/status.json">status.json</a></footer>'
    )
    return page_shell(f"pimail — {state}", "".join(body), refresh=True)
