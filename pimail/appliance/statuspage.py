"""The read-only LAN status page: a tiny HTTP/1.1 server on the standard library.

``GET /`` is one self-contained HTML page (inline CSS and SVG QR, no scripts, no external assets,
refreshes itself); ``GET /status.json`` is the same data as JSON. Nothing here changes node state,
except ``POST /pair`` when ``[status] allow_pairing_from_page = true`` and the request carries the
per-boot token that was logged on the console at start.

The data comes from a *provider*: a callable returning the daemon's status snapshot (a dict; an
awaitable is accepted too). It must be cheap: it runs on the event loop for every request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import html
import inspect
import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from pimail import __version__
from pimail.appliance import qr as qrcodes
from pimail.appliance.lan import parse_listen
from pimail.appliance.leds import PATTERNS, SLOW_BLINK_S
from pimail.appliance.pairing import PairingController
from pimail.config import StatusConfig
from pimail.crypto.keys import Enode
from pimail.errors import UserError
from pimail.health import HealthState

log = logging.getLogger(__name__)

StatusProvider = Callable[[], "Mapping[str, Any] | Awaitable[Mapping[str, Any]]"]

MAX_HEAD_BYTES = 8 * 1024  # request line + headers
MAX_BODY_BYTES = 1024  # the pairing form is a few dozen bytes
MAX_CONNECTIONS = 32  # concurrent; more are answered 503 and closed
READ_TIMEOUT_S = 10.0  # a slow client gets this long to send its request
WRITE_TIMEOUT_S = 10.0  # ... and this long to take the response
REFRESH_S = 10  # meta refresh of the main page
MAX_TOKEN_FAILURES = 5  # wrong tokens before /pair locks for PAIR_LOCKOUT_S
PAIR_LOCKOUT_S = 60.0
PROVIDER_LOG_INTERVAL_S = 60.0
MAX_TABLE_ROWS = 50
MAX_TEXT = 300
MAX_DEPTH = 3

_SECURITY_HEADERS = (
    "Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
    "form-action 'self'; frame-ancestors 'none'\r\n"
    "X-Content-Type-Options: nosniff\r\n"
    "Referrer-Policy: no-referrer\r\n"
    "Cache-Control: no-store\r\n"
)
_REASONS = {
    200: "OK", 400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 411: "Length Required", 413: "Content Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error", 503: "Service Unavailable",
}


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class StatusPage:
    """Serves the status page; ``await start()`` returns False (and logs) if it cannot listen."""

    def __init__(
        self,
        config: StatusConfig,
        provider: StatusProvider,
        enode: Enode,
        *,
        pairing: PairingController | None = None,
        token: str | None = None,
        listen: str | None = None,
        mailserver_password: str | None = None,
    ) -> None:
        """``enode`` is the address phones dial; its ``password`` (or ``mailserver_password``) is
        shown only when ``config.show_password_on_page``."""
        self.config = config
        self._provider = provider
        if mailserver_password and not enode.password:
            enode = Enode(enode.pubkey, enode.host, enode.port, mailserver_password)
        self._enode = enode
        self._pairing = pairing
        self.token = token or secrets.token_urlsafe(9)
        self._listen = listen if listen is not None else config.page_listen
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._token_failures = 0
        self._locked_until = 0.0
        self._last_provider_log = 0.0
        self.port: int | None = None
        self.started_at = time.time()
        self.requests = 0

    # -- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> bool:
        if not self.config.page:
            log.info("status page: disabled ([status] page = false)")
            return False
        host, port = parse_listen(self._listen)
        try:
            self._server = await asyncio.start_server(
                self._accept, host or None, port, limit=MAX_HEAD_BYTES, reuse_address=True
            )
        except OSError as exc:
            log.error(
                "status page: cannot listen on %s (%s); the node runs on without it",
                self._listen,
                exc.strerror or exc,
            )
            return False
        self.port = self._server.sockets[0].getsockname()[1]
        shown = host
        if host in ("", "0.0.0.0", "::"):
            shown = self._enode.host or "localhost"  # the address phones already use for the node
        if ":" in shown:
            shown = f"[{shown}]"
        log.info("status page: http://%s:%d/ (listening on %s)", shown, self.port, self._listen)
        if self.config.allow_pairing_from_page and self._pairing is not None:
            log.warning("status page: pairing from the page is enabled; this boot's token is %s", self.token)
        return True

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()
            self._server = None

    # -- connections -----------------------------------------------------------------------------
    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= MAX_CONNECTIONS:
            await self._send(writer, 503, "text/plain; charset=utf-8", b"busy, try again\n")
            return
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                method, path, headers = await asyncio.wait_for(self._read_head(reader), READ_TIMEOUT_S)
                body = b""
                if method == "POST":
                    body = await asyncio.wait_for(self._read_body(reader, headers), READ_TIMEOUT_S)
                self.requests += 1
                status, ctype, payload, extra = await self._route(method, path, body)
            except HttpError as exc:
                status, ctype, extra = exc.status, "text/plain; charset=utf-8", ""
                payload = f"{exc}\n".encode()
                method = ""
            except TimeoutError:
                status, ctype, payload, extra = 408, "text/plain; charset=utf-8", b"request timeout\n", ""
                method = ""
            await self._send(writer, status, ctype, b"" if method == "HEAD" else payload, extra, len(payload))
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]]:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise HttpError(431, "request head too large") from None
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("client went away") from None
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise HttpError(400, "request head is not ASCII") from None
        lines = text.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            raise HttpError(400, "malformed request line")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep or not name or name != name.strip():
                raise HttpError(400, "malformed header line")
            headers[name.lower()] = value.strip()
        return method, target, headers

    async def _read_body(self, reader: asyncio.StreamReader, headers: Mapping[str, str]) -> bytes:
        if "transfer-encoding" in headers:
            raise HttpError(411, "send a Content-Length")
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise HttpError(400, "bad Content-Length") from None
        if length < 0:
            raise HttpError(400, "bad Content-Length")
        if length > MAX_BODY_BYTES:
            raise HttpError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        return await reader.readexactly(length)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        ctype: str,
        payload: bytes,
        extra_headers: str = "",
        length: int | None = None,
    ) -> None:
        head = (
            f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}\r\n"
            f"Content-Type: {ctype}\r\n"
            f"Content-Length: {len(payload) if length is None else length}\r\n"
            f"Connection: close\r\n{_SECURITY_HEADERS}{extra_headers}\r\n"
        )
        try:
            writer.write(head.encode("ascii") + payload)
            await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT_S)
        except (ConnectionError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), WRITE_TIMEOUT_S)

    # -- routing ---------------------------------------------------------------------------------
    async def _route(self, method: str, target: str, body: bytes) -> tuple[int, str, bytes, str]:
        path = target.split("?", 1)[0]
        html_type, json_type = "text/html; charset=utf-8", "application/json"
        if path == "/pair":
            if method in ("GET", "HEAD"):
                return self._pair_form()
            if method == "POST":
                return self._pair_submit(body)
            raise HttpError(405, "method not allowed")
        if method not in ("GET", "HEAD"):
            raise HttpError(405, "this page is read-only")
        if path == "/":
            snap = await self.snapshot()
            return 200, html_type, render_page(snap, self._pairing_offered()).encode(), ""
        if path == "/status.json":
            snap = await self.snapshot()
            snap.pop("qr_svg", None)
            return 200, json_type, (json.dumps(snap, default=_json_default, indent=1) + "\n").encode(), ""
        if path == "/qr.svg":
            return 200, "image/svg+xml", self._qr_svg().encode(), ""
        raise HttpError(404, "not found")

    def _pairing_offered(self) -> bool:
        return self.config.allow_pairing_from_page and self._pairing is not None

    def _pair_form(self) -> tuple[int, str, bytes, str]:
        if not self._pairing_offered():
            raise HttpError(403, "pairing from the page is disabled ([status] allow_pairing_from_page)")
        page = _shell(
            "pimail — pair a phone",
            "<h1>Pair a phone</h1>"
            f"<p>Opens a {self.config.pairing_minutes}-minute window: the first new phone that asks this "
            "node for history is added to its allowed clients.</p>"
            '<form method="post" action="/pair">'
            '<label for="token">Token (shown on the node\'s console at boot)</label>'
            '<input id="token" name="token" autocomplete="off" autocapitalize="off" '
            'spellcheck="false" required>'
            '<button type="submit">Start pairing</button></form>'
            '<p><a href="/">Back to status</a></p>',
            refresh=False,
        )
        return 200, "text/html; charset=utf-8", page.encode(), ""

    def _pair_submit(self, body: bytes) -> tuple[int, str, bytes, str]:
        if not self._pairing_offered() or self._pairing is None:
            raise HttpError(403, "pairing from the page is disabled ([status] allow_pairing_from_page)")
        now = time.monotonic()
        if now < self._locked_until:
            raise HttpError(429, "too many wrong tokens; wait a minute")
        try:
            form = parse_qs(body.decode("ascii"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            raise HttpError(400, "malformed form") from None
        given = (form.get("token") or [""])[0].strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self._token_failures += 1
            log.warning("status page: pairing refused: wrong token (%d in a row)", self._token_failures)
            if self._token_failures >= MAX_TOKEN_FAILURES:
                self._token_failures = 0
                self._locked_until = now + PAIR_LOCKOUT_S
            raise HttpError(403, "wrong token")
        self._token_failures = 0
        try:
            self._pairing.start(self.config.pairing_minutes)
        except UserError as exc:
            raise HttpError(400, str(exc)) from None
        log.info("status page: pairing started from the page")
        page = _shell(
            "pimail — pairing",
            "<h1>Pairing is open</h1>"
            f"<p>For {self.config.pairing_minutes} minutes: in Status, add this mailserver and fetch "
            'history. The result shows on the status page.</p><p><a href="/">Back to status</a></p>',
            refresh=False,
        )
        return 200, "text/html; charset=utf-8", page.encode(), ""

    # -- data ------------------------------------------------------------------------------------
    def enode_url(self) -> str:
        return self._enode.url(with_password=self.config.show_password_on_page)

    def _qr_svg(self) -> str:
        return _qr_svg_for(self.enode_url())

    async def snapshot(self) -> dict[str, Any]:
        """Provider data (passwords dropped unless allowed) plus enode, QR and pairing state."""
        data: dict[str, Any]
        try:
            result = self._provider()
            if inspect.isawaitable(result):
                result = await result
            data = dict(result)
        except Exception as exc:
            now = time.monotonic()
            if now - self._last_provider_log > PROVIDER_LOG_INTERVAL_S:
                self._last_provider_log = now
                log.warning("status page: status snapshot failed: %s", exc)
            data = {"error": f"status unavailable: {exc}"}
        if not self.config.show_password_on_page:
            data = _without_secrets(data)
        data["enode"] = self.enode_url()
        data["password_shown"] = self.config.show_password_on_page and bool(self._enode.password)
        data.setdefault("version", __version__)
        data["generated_at"] = time.time()
        if self._pairing is not None:
            data["pairing"] = self._pairing.snapshot()
        data["qr_svg"] = self._qr_svg()
        return data


@functools.lru_cache(maxsize=4)
def _qr_svg_for(url: str) -> str:
    """The enode changes only with the config: encode it once, not on every page load."""
    return qrcodes.svg_inline(qrcodes.make_qr(url))


def _without_secrets(value: Any, depth: int = 0) -> Any:
    if depth > 8:
        return None
    if isinstance(value, Mapping):
        return {
            k: _without_secrets(v, depth + 1)
            for k, v in value.items()
            if not any(word in str(k).lower() for word in ("password", "secret", "private", "token"))
        }
    if isinstance(value, list | tuple):
        return [_without_secrets(v, depth + 1) for v in value]
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, set | frozenset):
        return sorted(str(v) for v in value)
    return str(value)


# -- rendering -------------------------------------------------------------------------------------

# Inlined into each page so it works offline and needs no second request.
_CSS = (resources.files("pimail.appliance") / "static" / "page.css").read_text(encoding="utf-8")

# Sections in the order a phone user cares about; other dict-valued keys follow under their own names.
_SECTION_ORDER = ("archive", "retention", "disk", "clock")
_TITLES = {"mailserver": "History requests"}
_SKIP_KEYS = {
    "health", "enode", "pairing", "qr_svg", "password_shown", "generated_at", "version", "error",
    "peers", "peer_count",
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


def _shell(title: str, body: str, *, refresh: bool) -> str:
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
        body.append(f"<section><h2>Peers</h2>{_peers_html(peers)}</section>")
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
    return _shell(f"pimail — {state}", "".join(body), refresh=True)
