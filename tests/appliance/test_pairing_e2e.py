"""Against a real running node (Daemon: archive, whisper, mailserver, node server, status page):
the page in headless Chromium shows its enode and health; pairing started from the page with the
boot token pairs the first phone that asks for history over RLPx (``pimail history`` in its own
process) and refuses the second."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path

import pytest

from pimail.appliance.pairing import PAIRED_FILE, fingerprint
from pimail.config import Config
from pimail.crypto.keys import Enode, NodeKey
from pimail.daemon import Daemon
from pimail.health import HealthState
from tests.appliance.pairing_fixtures import chromium, decode_qr, read_png_gray

REPO = Path(__file__).resolve().parents[2]


def node_config(data_dir: Path) -> Config:
    config = Config()
    config.node.listen = "127.0.0.1:0"
    config.node.data_dir = data_dir
    config.status.page_listen = "127.0.0.1:0"
    config.status.metrics = False
    config.status.allow_pairing_from_page = True
    config.leds.enabled = False
    config.archive.clock_trust = "always"
    return config


async def history(mailserver: str, phone_dir: Path) -> tuple[int, str, str]:
    """A phone asking for history: ``pimail history`` with its own node key, in its own process."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "pimail",
        "history",
        "--mailserver",
        mailserver,
        "--data-dir",
        str(phone_dir),
        "--json",
        "--timeout",
        "15",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def post_token(port: int, token: str) -> int:
    body = f"token={token}".encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /pair HTTP/1.1\r\nHost: pi\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(data.split(b" ", 2)[1])


def test_running_node_page_and_pairing_over_rlpx(tmp_path: Path) -> None:
    shot = tmp_path / "page.png"
    data_dir = tmp_path / "node"

    async def main() -> None:
        daemon = Daemon(node_config(data_dir), env={})
        await daemon.start()
        try:
            page = daemon.status_page
            assert page is not None and page.port is not None
            url = f"http://127.0.0.1:{page.port}/"
            dom = await chromium(tmp_path / "profile", "--dump-dom", url)
            assert daemon.enode is not None and daemon.enode.url() in dom
            state = daemon.health.state.value
            assert f'class="state s-{state}">{state}<' in dom
            await chromium(tmp_path / "profile", f"--screenshot={shot}", "--window-size=412,900", url)

            assert await post_token(page.port, "not-the-token") == 403
            assert await post_token(page.port, page.token) == 200
            assert daemon.health.state is HealthState.PAIRING

            local = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port).url()  # type: ignore[union-attr]
            rc, out, err = await history(local, tmp_path / "phone-a")
            assert rc == 0, err
            assert json.loads(out.strip().splitlines()[-1])["complete"] is True
            phone_a = NodeKey.load(tmp_path / "phone-a" / "nodekey").public
            assert phone_a in daemon.pairing.allowed
            assert daemon.health.state is not HealthState.PAIRING
            await daemon.pairing.flush()
            saved = json.loads((data_dir / PAIRED_FILE).read_text())
            assert [c["pubkey"] for c in saved["clients"]] == [phone_a.hex()]

            rc, _, err = await history(local, tmp_path / "phone-b")
            assert rc == 1 and "not allowed" in err
            rc, _, err = await history(local, tmp_path / "phone-a")  # still welcome
            assert rc == 0, err

            dom = await chromium(tmp_path / "profile", "--dump-dom", url)
            assert f"paired {fingerprint(phone_a)}" in dom
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(main(), 280))
    texts = decode_qr(*read_png_gray(shot))
    assert (
        texts
        and texts[0].startswith("enode://")
        and NodeKey.load(data_dir / "nodekey").public.hex() in texts[0]
    )


def test_running_node_with_the_page_port_taken_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            config = node_config(tmp_path / "node")
            config.status.page_listen = f"127.0.0.1:{taken.getsockname()[1]}"
            daemon = Daemon(config, env={})
            await daemon.start()
            try:
                assert daemon.status_page is None or daemon.status_page.port is None
                # The node itself is up: a phone can still fetch history.
                assert daemon.key is not None
                local = Enode(daemon.key.public, "127.0.0.1", daemon.server.listen_port).url()
                rc, _, err = await history(local, tmp_path / "phone")
                assert rc == 0, err
            finally:
                await daemon.stop()

    with caplog.at_level(logging.ERROR, logger="pimail.appliance.statuspage"):
        asyncio.run(asyncio.wait_for(main(), 200))
    assert "cannot listen" in caplog.text and "runs on" in caplog.text
