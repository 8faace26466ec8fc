"""The LAN status page: rendered in real headless Chromium (DOM + phone-sized screenshot whose QR
decodes), /status.json, password policy, token-protected pairing, bad input, slow clients, port taken."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from pimail.appliance import statuspage as sp
from pimail.appliance.pairing import PairingController
from pimail.appliance.statushtml import render_page
from pimail.appliance.statuspage import StatusPage
from pimail.config import StatusConfig
from pimail.crypto.keys import Enode, NodeKey
from pimail.health import HealthModel, HealthState, Severity
from tests.appliance.pairing_fixtures import chromium, decode_qr, read_png_gray, real_provider

PASSWORD = "status-offline-inbox"


class Node:
    """Real pieces a daemon would hand the page: node key, health model, pairing controller."""

    def __init__(self, data_dir: Path, **status: Any) -> None:
        self.key = NodeKey.load_or_create(data_dir / "nodekey")
        self.health = HealthModel()
        self.health.mark_started()
        self.pairing = PairingController(data_dir, [], self.health)
        self.enode = Enode(self.key.public, "192.168.1.50", 30303, PASSWORD)
        self.config = StatusConfig(page_listen="127.0.0.1:0", **status)
        self.page = StatusPage(
            self.config, real_provider(self.health, self.key), self.enode, pairing=self.pairing
        )


def run_with_page(tmp_path: Path, scenario: Callable[[Node], Awaitable[None]], **status: Any) -> None:
    async def main() -> None:
        node = Node(tmp_path, **status)
        assert await node.page.start()
        try:
            await scenario(node)
        finally:
            await node.page.stop()
            await node.pairing.close()

    asyncio.run(asyncio.wait_for(main(), 200))


async def http(port: int, raw: bytes, read_timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), read_timeout)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await http(port, f"{method} {path} HTTP/1.1\r\nHost: pi\r\n\r\n".encode())


async def post(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    head = f"POST {path} HTTP/1.1\r\nHost: pi\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    return await http(port, f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)


# -- in a real browser -------------------------------------------------------------------------------
def test_page_in_headless_chromium_shows_enode_and_health_and_its_qr_decodes(tmp_path: Path) -> None:
    shot = tmp_path / "page.png"

    async def scenario(node: Node) -> None:
        node.health.report("archive.disk_low", Severity.DEGRADED, "disk low (120 MB free)")
        url = f"http://127.0.0.1:{node.page.port}/"
        dom = await chromium(tmp_path / "profile", "--dump-dom", url)
        assert node.enode.url() in dom
        assert PASSWORD not in dom and "must-not-leak" not in dom
        assert 'class="state s-degraded">degraded<' in dom and "disk low (120 MB free)" in dom
        assert "<script>alert(1)</script>" not in dom and "&lt;script&gt;" in dom  # peer names escaped
        assert '<meta http-equiv="refresh"' in dom and 'name="viewport"' in dom
        links = re.findall(r'(?:src|href|action)="([^"]*)"', dom)
        assert links and all(link.startswith("/") for link in links), links  # no external assets
        assert "<script" not in dom and "@import" not in dom and "url(" not in dom
        await chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=412,900", url)

    run_with_page(tmp_path, scenario)
    assert shot.stat().st_size > 10_000
    # The QR a phone would scan off this page carries the enode (without the password here).
    texts = decode_qr(*read_png_gray(shot))
    assert texts and texts[0].startswith("enode://") and texts[0].endswith("@192.168.1.50:30303")
    assert PASSWORD not in texts[0]


def test_password_shown_only_when_configured(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        status, _, body = await get(node.page.port or 0, "/")
        assert status == 200 and node.enode.url(with_password=True) in body.decode()
        status, _, body = await get(node.page.port or 0, "/status.json")
        assert json.loads(body)["enode"] == node.enode.url(with_password=True)

    run_with_page(tmp_path, scenario, show_password_on_page=True)


def test_status_json(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        status, headers, body = await get(node.page.port or 0, "/status.json")
        assert status == 200 and headers["content-type"] == "application/json"
        doc = json.loads(body)
        assert doc["enode"] == node.enode.url() and PASSWORD not in body.decode()
        assert doc["health"]["state"] == "healthy"
        assert doc["pairing"]["mode"] == "open" and doc["password_shown"] is False
        assert "mailserver_password" not in doc and "qr_svg" not in doc
        assert {"peers", "archive", "disk", "clock", "uptime_s"} <= set(doc)

    run_with_page(tmp_path, scenario)


def test_security_headers_and_head(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        status, headers, body = await get(node.page.port or 0, "/", method="HEAD")
        assert status == 200 and body == b"" and int(headers["content-length"]) > 1000
        assert "default-src 'none'" in headers["content-security-policy"]
        assert headers["cache-control"] == "no-store"

    run_with_page(tmp_path, scenario)


# -- read-only, except token-protected pairing -------------------------------------------------------
def test_pairing_from_page_is_off_by_default(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        port = node.page.port or 0
        status, _, _ = await post(port, "/pair", f"token={node.page.token}".encode())
        assert status == 403 and not node.pairing.window_open
        status, _, _ = await get(port, "/pair")
        assert status == 403
        _, _, page = await get(port, "/")
        assert b'href="/pair"' not in page

    run_with_page(tmp_path, scenario)


def test_pairing_from_page_needs_the_boot_token(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario(node: Node) -> None:
        port = node.page.port or 0
        assert node.page.token in caplog.text  # shown on the console at start
        status, _, form = await get(port, "/pair")
        assert status == 200 and b'name="token"' in form
        status, _, _ = await post(port, "/pair", b"token=wrong")
        assert status == 403 and not node.pairing.window_open
        status, _, _ = await post(port, "/pair", b"")
        assert status == 403 and not node.pairing.window_open
        status, _, body = await post(port, "/pair", f"token={node.page.token}".encode())
        assert status == 200 and b"Pairing is open" in body
        assert node.pairing.window_open and node.health.state is HealthState.PAIRING
        # A phone asks for history: it is paired, and the page says so with its fingerprint.
        phone = NodeKey.generate().public
        assert node.pairing.admit(phone)
        await node.pairing.flush()
        _, _, page = await get(port, "/")
        assert f"paired {phone.hex()[:8]}…{phone.hex()[-4:]}".encode() in page

    with caplog.at_level(logging.INFO, logger="pimail.appliance.statuspage"):
        run_with_page(tmp_path, scenario, allow_pairing_from_page=True)


def test_wrong_tokens_lock_the_pairing_form(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        port = node.page.port or 0
        for _ in range(sp.MAX_TOKEN_FAILURES):
            status, _, _ = await post(port, "/pair", b"token=guess")
            assert status == 403
        status, _, _ = await post(port, "/pair", f"token={node.page.token}".encode())
        assert status == 429 and not node.pairing.window_open

    run_with_page(tmp_path, scenario, allow_pairing_from_page=True)


def test_pairing_refusals_are_pages_in_the_status_page_look(tmp_path: Path) -> None:
    async def scenario(node: Node) -> None:
        port = node.page.port or 0
        status, headers, body = await post(port, "/pair", b"token=wrong")
        page = body.decode()
        assert status == 403 and headers["content-type"] == "text/html; charset=utf-8"
        assert page.startswith("<!doctype html>") and "<style>" in page and 'name="viewport"' in page
        assert "<h1>Wrong token</h1>" in page and "journalctl" in page
        assert 'name="token"' in page and 'href="/"' in page  # try again, or go back
        for _ in range(sp.MAX_TOKEN_FAILURES):
            status, headers, body = await post(port, "/pair", b"token=guess")
        status, headers, body = await post(port, "/pair", f"token={node.page.token}".encode())
        assert status == 429 and "Too many wrong tokens" in body.decode() and "<style>" in body.decode()

    run_with_page(tmp_path, scenario, allow_pairing_from_page=True)

    async def disabled(node: Node) -> None:
        status, headers, body = await get(node.page.port or 0, "/pair")
        assert status == 403 and headers["content-type"].startswith("text/html")
        assert "pimail pair" in body.decode() and "<style>" in body.decode()

    run_with_page(tmp_path / "off", disabled)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        (b"DELETE /status.json HTTP/1.1\r\n\r\n", 405),
        (b"GET /nope HTTP/1.1\r\n\r\n", 404),
        (b"GET /../etc/passwd HTTP/1.1\r\n\r\n", 404),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"POST /pair HTTP/1.1\r\nContent-Length: 99999\r\n\r\n", 413),
        (b"POST /pair HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400),
        (b"POST /pair HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
        (b"POST /pair HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    ],
)
def test_bad_requests_get_defined_answers(tmp_path: Path, raw: bytes, expected: int) -> None:
    async def scenario(node: Node) -> None:
        status, _, _ = await http(node.page.port or 0, raw)
        assert status == expected
        assert not node.pairing.window_open

    run_with_page(tmp_path, scenario, allow_pairing_from_page=True)


def test_slow_client_times_out_and_others_are_served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "READ_TIMEOUT_S", 0.3)

    async def scenario(node: Node) -> None:
        port = node.page.port or 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\n")  # ... and never finishes
        status, _, _ = await get(port, "/status.json")
        assert status == 200
        data = await asyncio.wait_for(reader.read(), 5)
        assert data.startswith(b"HTTP/1.1 408")
        writer.close()

    run_with_page(tmp_path, scenario)


def test_connections_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sp, "MAX_CONNECTIONS", 2)
    monkeypatch.setattr(sp, "READ_TIMEOUT_S", 2.0)

    async def scenario(node: Node) -> None:
        port = node.page.port or 0
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.1)
        status, _, _ = await get(port, "/")
        assert status == 503
        for _, writer in held:
            writer.close()
        await asyncio.sleep(0.1)
        status, _, _ = await get(port, "/")
        assert status == 200

    run_with_page(tmp_path, scenario)


# -- provider and lifecycle --------------------------------------------------------------------------
def test_failing_provider_still_serves_the_enode(tmp_path: Path) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("archive closed")

    async def main() -> None:
        key = NodeKey.generate()
        page = StatusPage(
            StatusConfig(page_listen="127.0.0.1:0"), broken, Enode(key.public, "10.0.0.2", 30303)
        )
        assert await page.start()
        try:
            status, _, body = await get(page.port or 0, "/")
            assert status == 200
            assert b"status unavailable: archive closed" in body and key.public.hex().encode() in body
        finally:
            await page.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_async_provider_is_awaited(tmp_path: Path) -> None:
    async def provider() -> dict[str, Any]:
        return {"health": {"state": "starting", "summary": "starting"}, "uptime_s": 3}

    async def main() -> None:
        key = NodeKey.generate()
        page = StatusPage(StatusConfig(page_listen="127.0.0.1:0"), provider, Enode(key.public, "10.0.0.2", 1))
        assert await page.start()
        try:
            _, _, body = await get(page.port or 0, "/status.json")
            assert json.loads(body)["health"]["state"] == "starting"
        finally:
            await page.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_port_taken_logs_and_runs_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            key = NodeKey.generate()
            page = StatusPage(
                StatusConfig(page_listen=f"127.0.0.1:{port}"), dict, Enode(key.public, "10.0.0.2", 30303)
            )
            assert await page.start() is False
            assert page.port is None
            await page.stop()  # harmless when never started

    with caplog.at_level(logging.ERROR):
        asyncio.run(asyncio.wait_for(main(), 30))
    assert "cannot listen" in caplog.text and "runs on" in caplog.text


def test_disabled_page_does_not_listen(tmp_path: Path) -> None:
    async def main() -> None:
        key = NodeKey.generate()
        page = StatusPage(
            StatusConfig(page=False, page_listen="127.0.0.1:0"), dict, Enode(key.public, "h", 1)
        )
        assert await page.start() is False and page.port is None

    asyncio.run(asyncio.wait_for(main(), 30))


def test_password_comes_from_the_enode_or_the_mailserver_password(tmp_path: Path) -> None:
    async def main() -> None:
        key = NodeKey.generate()
        bare = Enode(key.public, "10.0.0.2", 30303)
        shown = StatusConfig(page_listen="127.0.0.1:0", show_password_on_page=True)
        with_pw = StatusPage(shown, dict, bare, mailserver_password="s3cret")
        without = StatusPage(shown, dict, bare)
        hidden = StatusPage(StatusConfig(page_listen="127.0.0.1:0"), dict, bare, mailserver_password="s3cret")
        snaps = [await page.snapshot() for page in (with_pw, without, hidden)]
        assert snaps[0]["enode"].endswith(":s3cret@10.0.0.2:30303") and snaps[0]["password_shown"]
        assert snaps[1]["enode"] == bare.url() and not snaps[1]["password_shown"]
        assert snaps[2]["enode"] == bare.url() and not snaps[2]["password_shown"]
        assert "s3cret" not in render_page(snaps[2])

    asyncio.run(main())
