"""The status page's HTML: the status snapshot as one self-contained page (inline CSS, no scripts).

Pure functions of the snapshot dict; the server that hands them out is ``pimail.appliance.statuspage``.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Mapping
from importlib import resources
from typing import Any

from pimail.appliance.leds import PATTERNS, SLOW_BLINK_S
from pimail.health import HealthState

REFRESH_S = 10  # meta refresh of the main page
MAX_TABLE_ROWS = 50
MAX_TEXT = 300
MAX_DEPTH = 3

# Inlined into each page so it works offline and needs no second request.
_CSS = (resources.files("pimail.appliance") / "static" / "page.css").read_text(encoding="utf-8")

# Sections in the order a phone user cares about; other dict-valued keys follow under their own names.
_SECTION_ORDER = ("archive", "retention", "disk", "clock")
_TITLES = {"mailserver": "History requests"}
_SKIP_KEYS = {
    "health", "enode", "pairing", "qr_svg", "password_shown", "generated_at", "version", "error",
    "peers", "peer_count", "peers_by_protocol",
    "systemd", "node_counters", "leds",  # for `pimail status`; the badge already gives the LED words
}
_TIME_KEYS = ("now", "since", "time")
_TIME_SUFFIXES = ("_at", "_sent", "_since", "_time")


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
        f"{meta}<title>{html.escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _e(value: Any) -> str:
    text = str(value)
    if len(text) > MAX_TEXT:
        text = text[: MAX_TEXT - 1] + "…"
    return html.escape(text)


def human_bytes(n: float) -> str:
    units = ("B", "KB", "MB", "GB", "TB")
    value, unit = float(n), 0
    while abs(value) >= 1000 and unit < len(units) - 1:
        value /= 1000
        unit += 1
    return f"{int(value)} {units[unit]}" if unit == 0 else f"{value:.1f} {units[unit]}"


def human_duration(seconds: float) -> str:
    s = int(max(0, seconds))
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min {secs} s"
    return f"{secs} s"


def utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _label(key: str, value: Any = None) -> str:
    """``free_bytes`` → "free" when the value is shown with its unit; otherwise the key as words."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        for suffix in ("_bytes", "_s", "_at", "_ms"):
            if key.endswith(suffix) and len(key) > len(suffix):
                key = key[: -len(suffix)]
    return key.replace("_", " ")


def _format(key: str, value: Any, depth: int = 0) -> str:
    """HTML for one value, guessing units from the key name (``*_bytes``, ``*_s``, ``*_at``)."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | float) and math.isfinite(value):
        if key.startswith("max_") and value == 0:
            return "no limit"  # the config's convention: a cap of 0 is no cap
        if key.endswith("_bytes") or key.startswith("bytes"):
            return _e(human_bytes(value))
        if key.endswith(_TIME_SUFFIXES) or key in _TIME_KEYS:
            return _e(utc(value)) if value > 1e9 else _e(value)
        if key.endswith("_s"):
            return _e(human_duration(value))
        if key.endswith("_ms"):
            return _e(f"{value:.4g} ms")
        if key.endswith(("_pct", "_percent")):
            return _e(f"{value:.1f} %")
        if isinstance(value, float):
            return _e(f"{value:.4g}")
        return _e(f"{value:,}".replace(",", "\u202f"))
    if isinstance(value, bytes | bytearray):
        return f"<code>{_e(value.hex())}</code>"
    if isinstance(value, Mapping):
        if not value:
            return "—"
        return _dl(value, depth + 1) if depth < MAX_DEPTH else _e(json.dumps(value, default=str))
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, Mapping) for v in value):
            return _table(value)
        shown = ", ".join(str(v) for v in value[:20])
        more = f" (+{len(value) - 20})" if len(value) > 20 else ""
        return _e(shown + more) if value else "none"
    return _e(value)


def _dl(mapping: Mapping[str, Any], depth: int = 0) -> str:
    rows = "".join(
        f"<dt>{_e(_label(str(k), v))}</dt><dd>{_format(str(k), v, depth)}</dd>" for k, v in mapping.items()
    )
    return f"<dl>{rows}</dl>" if rows else '<p class="note">nothing to show</p>'


def _table(rows: list[Any] | tuple[Any, ...]) -> str:
    columns: list[str] = []
    for row in rows[:MAX_TABLE_ROWS]:
        for key in row:
            if str(key) not in columns and len(columns) < 6:
                columns.append(str(key))
    head = "".join(f"<th>{_e(_label(c, rows[0].get(c)))}</th>" for c in columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{_format(c, row.get(c), MAX_DEPTH)}</td>" for c in columns) + "</tr>"
        for row in rows[:MAX_TABLE_ROWS]
    )
    more = f'<p class="note">and {len(rows) - MAX_TABLE_ROWS} more</p>' if len(rows) > MAX_TABLE_ROWS else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _health_parts(health: Any) -> tuple[str, str, list[Any]]:
    if isinstance(health, Mapping):
        state = str(health.get("state", "unknown"))
        summary = str(health.get("summary", ""))
        summary = summary.removeprefix(f"{state}:").strip()  # the badge already says the state
        conditions = health.get("conditions") or []
        return state, summary, list(conditions) if isinstance(conditions, list | tuple) else []
    if isinstance(health, str):
        state, _, rest = health.partition(":")
        return state.strip() or "unknown", rest.strip(), []
    return "unknown", "", []


def _peer_line(peer: Mapping[str, Any]) -> str:
    client = str(peer.get("client") or peer.get("client_id") or peer.get("name") or "unknown client")
    address = peer.get("address") or peer.get("remote_address") or ""
    direction = peer.get("inbound")
    where = f" · {_e(address)}" if address else ""
    how = "" if direction is None else (" · inbound" if direction else " · outbound")
    return f"<li>{_e(client[:60])}<span class=\"note\">{where}{how}</span></li>"


def _by_protocol_html(counts: Any) -> str:
    """``shh/6: 1 · waku/1: 2`` — the same peer counts once per protocol it shares."""
    if not isinstance(counts, Mapping) or not counts:
        return ""
    parts = " · ".join(f"{_e(k)}: {_e(v)}" for k, v in sorted(counts.items()))
    return f'<p class="protocols">By protocol: {parts}</p>'


def _peers_html(peers: Any) -> str:
    if isinstance(peers, int) and not isinstance(peers, bool):
        return f"<p>{peers} connected</p>"
    if isinstance(peers, list | tuple):
        if not peers:
            return "<p>none connected</p>"
        shown = [p for p in peers[:MAX_TABLE_ROWS] if isinstance(p, Mapping)]
        more = f"<p class=\"note\">and {len(peers) - len(shown)} more</p>" if len(peers) > len(shown) else ""
        items = "".join(_peer_line(p) for p in shown)
        return f"<p>{len(peers)} connected</p><ul class=\"peers\">{items}</ul>{more}"
    if isinstance(peers, Mapping):
        listed = peers.get("list") or peers.get("peers")
        rest = {k: v for k, v in peers.items() if k not in ("list", "peers")}
        return _dl(rest) + (_peers_html(listed) if isinstance(listed, list) else "")
    return f"<p>{_e(peers)}</p>"


def _pairing_html(pairing: Mapping[str, Any], offered: bool) -> str:
    parts = []
    mode = pairing.get("mode")
    if mode == "open":
        parts.append("<p>Open: any phone may fetch history (no allowed clients yet).</p>")
    else:
        count = len(pairing.get("paired_clients") or []) + int(pairing.get("configured_clients") or 0)
        parts.append(f"<p>Allowlist: {count} phone(s) may fetch history.</p>")
    if pairing.get("window_open"):
        remaining = pairing.get("window_remaining_s") or 0
        parts.append(
            f"<p><strong>Pairing window open</strong> for {_e(human_duration(remaining))} more: "
            "the first new phone that asks for history is added.</p>"
        )
    result = pairing.get("last_result")
    if isinstance(result, Mapping):
        when = _e(utc(float(result.get("at") or 0)))
        if result.get("outcome") == "paired":
            who = _e(result.get("fingerprint"))
            parts.append(f"<p>Last pairing: <strong>paired {who}</strong> at {when}</p>")
        else:
            what = _e(result.get("outcome"))
            parts.append(f"<p>Last pairing window: {what} at {when}, no phone paired</p>")
    clients = pairing.get("paired_clients") or []
    if clients:
        items = "".join(
            f"<li><code>{_e(c.get('fingerprint'))}</code> "
            f"since {_e(utc(float(c.get('paired_at') or 0)))}</li>"
            for c in clients[:MAX_TABLE_ROWS]
            if isinstance(c, Mapping)
        )
        parts.append(f"<ul>{items}</ul>")
    if offered and not pairing.get("window_open"):
        parts.append('<p><a href="/pair">Start pairing…</a> (needs the token from the console)</p>')
    return "".join(parts)


def render_page(snap: Mapping[str, Any], pairing_offered: bool = False) -> str:
    """The status page as one HTML document (everything escaped; the QR is trusted SVG we made)."""
    state, summary, conditions = _health_parts(snap.get("health"))
    state_class = state if state in ("healthy", "degraded", "failing", "starting", "pairing") else "unknown"
    body = [
        '<section><h1>pimail mailserver</h1>'
        f'<span class="state s-{state_class}">{_e(state)}</span>'
        + (f'<p class="leds">LEDs: {_e(led_words(state))}</p>' if led_words(state) else "")
        + (f'<p class="summary">{_e(summary)}</p>' if summary and summary != state else "")
    ]
    messages = [
        str(c.get("message") or c.get("key")) if isinstance(c, Mapping) else str(c)
        for c in conditions[:MAX_TABLE_ROWS]
    ]
    if len(messages) > 1 or (messages and messages[0] != summary):
        body.append("<ul>" + "".join(f"<li>{_e(m)}</li>" for m in messages) + "</ul>")
    if snap.get("error"):
        body.append(f'<p class="warn">{_e(snap["error"])}</p>')
    body.append("</section>")

    pw_note = (
        "The mailserver password is included."
        if snap.get("password_shown")
        else "The mailserver password is not shown here ([status] show_password_on_page = false)."
    )
    body.append(
        "<section><h2>Add this mailserver to Status</h2>"
        "<p class=\"note\">Scan with the phone, or copy the address below.</p>"
        f"{snap.get('qr_svg', '')}"
        f'<p class="enode"><code>{_e(snap.get("enode", ""))}</code></p>'
        f'<p class="note">{pw_note}</p></section>'
    )
    if isinstance(snap.get("pairing"), Mapping):
        body.append(f"<section><h2>Pairing</h2>{_pairing_html(snap['pairing'], pairing_offered)}</section>")
    if "peers" in snap or "peer_count" in snap:
        peers = snap.get("peers", snap.get("peer_count"))
        body.append(f"<section><h2>Peers</h2>{_by_protocol_html(snap.get('peers_by_protocol'))}"
                    f"{_peers_html(peers)}</section>")
    rest = {k: v for k, v in snap.items() if k not in _SKIP_KEYS}
    ordered = [k for k in _SECTION_ORDER if k in rest] + [k for k in rest if k not in _SECTION_ORDER]
    scalars: dict[str, Any] = {}
    for key in ordered:
        value = rest[key]
        if isinstance(value, Mapping) or (isinstance(value, list) and value and key in _SECTION_ORDER):
            title = _TITLES.get(key, key.replace("_", " ").capitalize())
            inner = _dl(value) if isinstance(value, Mapping) else f"<p>{_format(key, value)}</p>"
            body.append(f"<section><h2>{_e(title)}</h2>{inner}</section>")
        elif value is not None or key in _SECTION_ORDER:
            scalars[key] = value
    if scalars:
        body.append(f"<section><h2>Node</h2>{_dl(scalars)}</section>")
    generated = snap.get("generated_at")
    stamp = utc(float(generated)) if isinstance(generated, int | float) else ""
    body.append(
        f"<footer>pimail {_e(snap.get('version', ''))} · {_e(stamp)} · refreshes every {REFRESH_S} s · "
        '<a href="/status.json">status.json</a></footer>'
    )
    return page_shell(f"pimail — {state}", "".join(body), refresh=True)
