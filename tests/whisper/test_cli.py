"""``pimail post`` and ``pimail watch`` as real subprocesses against a real node on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import rlp

from pimail.config import NodeConfig, WhisperConfig
from pimail.crypto.keys import NodeKey
from pimail.envelope.codec import decode_envelope_list
from pimail.envelope.payload import key_from_password, open_asymmetric
from pimail.envelope.pow import pow_to_bits
from pimail.node.server import NodeServer
from tests.nodes import RawShh, start_node, until

TOPIC = "cafe0001"


async def pimail(*args: str, timeout: float = 25.0) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pimail", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_post_then_watch_sees_it_and_the_node_confirms(tmp_path: Path) -> None:
    node = await start_node(tmp_path / "n", WhisperConfig(min_pow=0.002))
    enode = node.server.enode.url()
    try:
        watch = asyncio.create_task(
            pimail("watch", "--peer", enode, "--topic", TOPIC, "--sym-password", "secret",
                   "--seconds", "12", "--json"))
        await until(lambda: len(node.whisper.peers) == 1, timeout=10, what="watcher connected")
        rc, out, err = await pimail("post", "--peer", enode, "--topic", TOPIC, "--sym-password", "secret",
                                    "--count", "2", "hello from post")
        assert rc == 0, err
        lines = out.split()
        assert lines.count("confirmed") == 2  # the node sent Batch Ack for them
        hashes = {w for w in lines if w.startswith("0x")}
        assert len(hashes) == 2
        assert {"0x" + e.hash.hex() for e in node.seen} == hashes
        # Another password on the same topic is not printed by the watcher.
        rc, _, err = await pimail("post", "--peer", enode, "--topic", TOPIC, "--sym-password", "other", "x")
        assert rc == 0, err
        rc, out, err = await watch
        assert rc == 0, err
        recs = [json.loads(line) for line in out.splitlines()]
        assert {r["hash"] for r in recs} == hashes
        for r in recs:
            assert r["payload"] == "hello from post" and r["topic"] == "0x" + TOPIC
            assert r["signer"] is None and r["ttl"] == 30
            assert set(r) == {"hash", "topic", "sent", "ttl", "payload", "signer"}
        assert key_from_password("secret")  # (the watcher derived the same key in its own process)
    finally:
        await node.stop()


async def test_post_asymmetric(tmp_path: Path) -> None:
    node = await start_node(tmp_path / "n")
    recipient = NodeKey.generate()
    try:
        rc, out, err = await pimail("post", "--peer", node.server.enode.url(), "--topic", TOPIC,
                                    "--to-pubkey", recipient.public.hex(), "--ttl", "20", "--pow", "0.001",
                                    "for your eyes")
        assert rc == 0, err
        assert len(node.seen) == 1
        env = node.seen[0]
        assert out.split()[0] == "0x" + env.hash.hex() and env.ttl == 20
        assert open_asymmetric(recipient.private, env.data).payload == b"for your eyes"
        legacy, current = env.pows()
        assert legacy >= 0.001 and current >= 0.001
    finally:
        await node.stop()


async def test_post_to_a_geth_like_node_seals_legacy_pow_for_its_requirement(tmp_path: Path) -> None:
    geth_status = bytes(rlp.encode([6, pow_to_bits(0.2), b"\xff" * 64, False]))  # 4 fields, PoW 0.2
    cap = RawShh(auto_status=geth_status)
    server = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=tmp_path), [cap],
                        client_id="Geth/wnode/v1.8.27-stable/linux-amd64/go1.11")
    await server.start()
    try:
        rc, out, err = await pimail("post", "--peer", server.enode.url(), "--topic", TOPIC,
                                    "--sym-password", "p", "--ttl", "20", "to geth")
        assert rc == 0, err
        assert out.split()[1] == "sent"  # geth sends no confirmations
        envs = [e for p in cap.payloads(1) for e in decode_envelope_list(p)]
        assert len(envs) == 1 and out.split()[0] == "0x" + envs[0].hash.hex()
        legacy, current = envs[0].pows()
        assert legacy >= 0.2 and current >= 0.002
    finally:
        await server.stop()


async def test_cli_bad_arguments_and_unreachable_peer(tmp_path: Path) -> None:
    good_key = NodeKey.generate().public.hex()
    dead = f"enode://{good_key}@127.0.0.1:1"
    SP = ("--sym-password", "p")
    cases = [
        (("post", "--peer", "nonsense", "--topic", TOPIC, *SP, "m"), 2, "--peer"),
        (("post", "--peer", f"enode://{good_key}", "--topic", TOPIC, *SP, "m"), 2, "host:port"),
        (("post", "--peer", dead, "--topic", "zz", *SP, "m"), 2, "--topic"),
        (("post", "--peer", dead, "--topic", "0102", *SP, "m"), 2, "4 bytes"),
        (("post", "--peer", dead, "--topic", TOPIC, "--to-pubkey", "01" * 64, "m"), 2, "public key"),
        (("post", "--peer", dead, "--topic", TOPIC, *SP, "--ttl", "0", "m"), 2, "--ttl"),
        (("post", "--peer", dead, "--topic", TOPIC, *SP, "--pow", "-1", "m"), 2, "--pow"),
        (("post", "--peer", dead, "--topic", TOPIC, *SP, "--count", "0", "m"), 2, "--count"),
        (("post", "--peer", dead, "--topic", TOPIC, *SP, "m"), 1, "cannot connect"),
        (("watch", "--peer", dead, "--topic", TOPIC, *SP, "--seconds", "1"), 1,
         "cannot connect"),
        (("watch", "--peer", dead, "--topic", TOPIC, *SP, "--seconds", "-1"), 2, "--seconds"),
    ]
    results = await asyncio.gather(*(pimail(*args) for args, _, _ in cases))
    for (args, want_rc, want_msg), (rc, _out, err) in zip(cases, results, strict=True):
        assert rc == want_rc, (args, rc, err)
        lines = [line for line in err.splitlines() if line.startswith("pimail: error:")]
        assert len(lines) == 1 and want_msg in lines[0], (args, err)
        assert "Traceback" not in err
