"""``pimail history`` and ``pimail sync`` as real processes against a real mail node."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

import pytest

from pimail.archive import open_archive
from pimail.config import ArchiveConfig
from pimail.crypto.keys import NodeKey

from .nodes import MSG_PASSWORD, TOPIC_A, TOPIC_B, mail_node, make_envelope, plain_envelopes

pytestmark = pytest.mark.timeout(120)
NOW = int(time.time())


async def _pimail(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pimail", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_history_json_with_decryption(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms:
            envs = [make_envelope(i, NOW - 500 + i, text=f"hi {i}") for i in range(25)]
            envs += [make_envelope(100 + i, NOW - 400 + i, topic=TOPIC_B) for i in range(4)]
            await ms.fill(envs)
            for form in ("direct", "envelope", "legacy"):
                rc, out, err = await _pimail(
                    "history", "--mailserver", ms.enode.url(), "--form", form, "--from", str(NOW - 1000),
                    "--to", str(NOW), "--topic", TOPIC_A.hex(), "--limit", "10", "--sym-password",
                    MSG_PASSWORD, "--json", "--pow", "0.000002",
                )
                assert rc == 0, err
                lines = [json.loads(x) for x in out.splitlines()]
                records, summary = lines[:-1], lines[-1]
                assert summary["summary"] is True and summary["envelopes"] == 25 and summary["complete"]
                assert summary["pages"] == 3
                assert sorted(r["text"] for r in records) == sorted(f"hi {i}" for i in range(25))
                assert {r["topic"] for r in records} == {"0x" + TOPIC_A.hex()}
                assert all(r["signer"] is None and r["ttl"] == 60 for r in records)
                assert len({r["hash"] for r in records}) == 25

    asyncio.run(main())


def test_history_plain_output_and_errors(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms:
            await ms.fill([make_envelope(i, NOW - 50 + i) for i in range(3)])
            rc, out, _ = await _pimail("history", "--mailserver", ms.enode.url())
            assert rc == 0
            assert out.strip().splitlines()[-1].startswith("3 envelopes in 1 page ")
            # the server's refusal is one line and exit code 1
            rc, out, err = await _pimail("history", "--mailserver", ms.enode.url(), "--form", "envelope",
                                         "--password", "wrong", "--pow", "0.000002")
            assert rc == 1 and err.strip() == (
                "pimail: error: mailserver refused the request: failed to decrypt p2p request")
        # nobody listening any more: exit 1
        rc, _, err = await _pimail("history", "--mailserver", ms.enode.url(), "--timeout", "2")
        assert rc == 1 and err.startswith("pimail: error:") and len(err.strip().splitlines()) == 1, err

    asyncio.run(main())


@pytest.mark.parametrize(
    "args",
    [
        ["--mailserver", "enode://nope"],
        ["--mailserver", "enode://" + "ab" * 64],  # no host:port
        ["--limit", "5000"],
        ["--topic", "xyz"],
        ["--topic", "aabbcc"],
        ["--from", "10", "--to", "5"],
        ["--quiet", "0"],
    ],
)
def test_history_bad_arguments(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from pimail.cli import main

    if args[0] != "--mailserver":
        args = ["--mailserver", f"enode://{NodeKey.generate().public.hex()}@127.0.0.1:9", *args]
    assert main(["history", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pimail: error:"), err


def test_sync_command_fills_local_archive(tmp_path: Path) -> None:
    async def main() -> None:
        b_dir = tmp_path / "b"
        b_dir.mkdir()
        b_key = NodeKey.load_or_create(b_dir / "nodekey")
        async with mail_node(tmp_path / "a", sync_allowed=lambda p: p.pubkey == b_key.public) as a:
            envs = plain_envelopes(1200, NOW - 3000)
            await a.fill(envs)
            rc, out, err = await _pimail("sync", "--from", a.enode.url(), "--since", str(NOW - 4000),
                                         "--data-dir", str(b_dir))
            assert rc == 0, err
            assert "1200 new envelopes stored" in out
            rc, out, err = await _pimail("sync", "--from", a.enode.url(), "--since", str(NOW - 4000),
                                         "--data-dir", str(b_dir))
            assert rc == 0 and "0 new envelopes stored, 1200 already here" in out, out + err
        archive = open_archive(ArchiveConfig(), b_dir, None)
        await archive.open()
        try:
            assert (await archive.stats()).count == 1200
            assert await archive.contains(envs[777].sent, envs[777].hash)
        finally:
            await archive.close()

    asyncio.run(main())


def test_sync_command_refused_by_untrusting_sibling(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "a") as a:  # serves sync to nobody
            rc, _, err = await _pimail("sync", "--from", a.enode.url(), "--data-dir", str(tmp_path / "b"))
            assert rc == 1 and "sync is only served to trusted mailservers" in err, err

    asyncio.run(main())
