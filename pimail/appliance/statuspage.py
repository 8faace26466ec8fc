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
import inspect
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import parse_qs

from pimail import __version__
from pimail.appliance.htmlescape import escape
from pimail.appliance.lan import parse_listen
from pimail.appliance.pairing import PairingController
from pimail.appliance.serving import close_server
from pimail.appliance.statushtml import page_shell, render_page
from pimail.config import StatusConfig
from pimail.crypto.keys import Enode
from pimail.errors import UserError

log = logging.getLogger(__name__)

StatusProvider = Callable[[], "Mapping[str, Any] | Awaitable[Mapping[str, Any]]"]

MAX_HEAD_BYTES = 8 * 1024  # request line + headers
MAX_BODY_BYTES = 1024  # the pairing form is a few dozen bytes
MAX_CONNECTIONS = 32  # concurrent; more are answered 503 and closed
READ_TIMEOUT_S = 10.0  # a slow client gets this long to send its request
WRITE_TIMEOUT_S = 10.0  # ... and this long to take the response
MAX_TOKEN_FAILURES = 5  # wrong tokens before /pair locks for PAIR_LOCKOUT_S
PAIR_LOCKOUT_S = 60.0
PROVIDER_LOG_INTERVAL_S = 60.0

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
            await close_server(self._server, self._tasks)
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

    def _pair_page(self, status: int, heading: str, message: str, *,
                   form: bool) -> tuple[int, str, bytes, str]:
        """A pairing page in the status page's look (also for refusals: a wrong token is a person
        who typed it wrong, not a client to send bare text to)."""
        form_html = (
            '<form method="post" action="/pair">'
            '<label for="token">Token (shown on the node\'s console at boot)</label>'
            '<input id="token" name="token" autocomplete="off" autocapitalize="off" '
            'spellcheck="false" required>'
            '<button type="submit">Start pairing</button></form>'
        ) if form else ""
        cls = ' class="warn"' if status >= 400 else ""
        page = page_shell(
            f"pimail — {heading.lower()}",
            f"<section><h1>{escape(heading)}</h1><p{cls}>{escape(message)}</p>{form_html}"
            '<p><a href="/">Back to status</a></p></section>',
            refresh=False,
        )
        return status, "text/html; charset=utf-8", page.encode(), ""

    def _pair_disabled(self) -> tuple[int, str, bytes, str]:
        return self._pair_page(403, "Pairing from this page is off",
                               "Pair with `pimail pair` on the node, or set [status] allow_pairing_from_page "
                               "= true in pimail.toml and restart pimail.", form=False)

    def _pair_form(self) -> tuple[int, str, bytes, str]:
        if not self._pairing_offered():
            return self._pair_disabled()
        return self._pair_page(
            200, "Pair a phone",
            f"Opens a {self.config.pairing_minutes}-minute window: the first new phone that asks this "
            "node for history is added to its allowed clients.", form=True)

    def _pair_submit(self, body: bytes) -> tuple[int, str, bytes, str]:
        if not self._pairing_offered() or self._pairing is None:
            return self._pair_disabled()
        now = time.monotonic()
        if now < self._locked_until:
            wait = max(1, int(self._locked_until - now))
            return self._pair_page(429, "Too many wrong tokens",
                                   f"Pairing from this page is locked for {wait} s. Then try again with "
                                   "the token from the node's console.", form=False)
        try:
            form = parse_qs(body.decode("ascii"), max_num_fields=4)
        except (UnicodeDecodeError, ValueError):
            return self._pair_page(400, "Pair a phone", "The form could not be read; try again.", form=True)
        given = (form.get("token") or [""])[0].strip()
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self._token_failures += 1
            log.warning("status page: pairing refused: wrong token (%d in a row)", self._token_failures)
            if self._token_failures >= MAX_TOKEN_FAILURES:
                self._token_failures = 0
                self._locked_until = now + PAIR_LOCKOUT_S
            return self._pair_page(
                403, "Wrong token",
                "That is not this boot's token. It is in the node's log at start (`journalctl -u pimail "
                "| grep token`); it changes at every boot.", form=True)
        self._token_failures = 0
        try:
            self._pairing.start(self.config.pairing_minutes)
        except UserError as exc:
            return self._pair_page(400, "Pairing did not start", str(exc), form=False)
        log.info("status page: pairing started from the page")
        return self._pair_page(
            200, "Pairing is open",
            f"For {self.config.pairing_minutes} minutes: in Status, add this mailserver and fetch "
            "history. The result shows on the status page.", form=False)

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
    from pimail.appliance import qr as qrcodes  # segno is ~4 MB: loaded by the first page view

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
