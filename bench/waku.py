"""waku/1 against shh/6 in the same run: validations through each adapter, and ingest over the wire.

Run: ``.venv/bin/python -m bench.waku`` (``--quick`` for a short run). The target is waku/1 within
10 % of shh/6: both adapters hand the same core the same packets, so the rows show what the adapter
itself costs.

Both protocols are timed under the same conditions: each gets an untimed warm-up window first (the
process's first window pays for heap growth and cold caches), rounds run in ABBA order (each
protocol is first as often as second, on each packet set), and every window starts from a fresh
collection (a generation-2 GC left over from one window must not land in the next). A noisy
neighbour then slows both alike, and the best window of each is compared.
"""

from __future__ import annotations

import asyncio
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, print_table
from pimail.config import NodeConfig, WakuConfig, WhisperConfig
from pimail.crypto.keys import NodeKey
from pimail.envelope.codec import Envelope, encode_envelope_list
from pimail.node.server import NodeServer
from pimail.relay.core import RelayCore
from pimail.waku import status as ws
from pimail.waku.service import WakuService
from pimail.whisper import status as st
from pimail.whisper.service import WhisperService

AREA = "waku"
PAYLOAD_BYTES = 256
BATCH = 50  # envelopes per Messages packet
RATIO_TARGET = 0.9  # waku/1 within 10 % of shh/6


class _FakePeer:
    """A connected peer as the adapters see it, with nowhere to send to (no I/O in this row)."""

    def __init__(self, protocol: str) -> None:
        self.pubkey = os.urandom(64)
        self.node_id = os.urandom(32)
        self.client_id = "bench"
        self.remote_address = ("127.0.0.1", 1)
        self.inbound = True
        self.closed = False
        self.capabilities = [("waku", 1)] if protocol == "waku" else [("shh", 6)]

    def send(self, capability: str, code: int, payload: bytes) -> bool:
        return True

    async def send_wait(self, capability: str, code: int, payload: bytes) -> None:
        return None

    def disconnect(self, reason: Any) -> None:
        self.closed = True


def _packets(n: int) -> list[bytes]:
    now = int(time.time())
    raws = [Envelope.build(now + 50, 50, os.urandom(4), os.urandom(PAYLOAD_BYTES + 44), i).raw
            for i in range(n)]
    return [encode_envelope_list(raws[i:i + BATCH]) for i in range(0, n, BATCH)]


async def _validate_window(protocol: str, packets: list[bytes]) -> float:
    """Envelopes per CPU second through one adapter's Messages handler into a fresh core."""
    cfg = WhisperConfig(min_pow=0.000002, pool_max_bytes=1 << 30, confirmations=False)
    core = RelayCore(cfg, archive=None, clock_trusted=lambda: True)
    peer = _FakePeer(protocol)
    if protocol == "waku":
        adapter: WakuService | WhisperService = WakuService(WakuConfig(confirmations=False,
                                                                       rate_limit_packets_per_s=1e9), core)
        status = ws.StatusOptions(pow=0.0).encode(1)
    else:
        cfg.rate_limit_packets_per_s = 1e9
        adapter = WhisperService(cfg, archive=None, clock_trusted=lambda: True, core=core)
        status = st.StatusPacket(pow=0.0).encode()
    await adapter.peer_started(peer)  # type: ignore[arg-type]
    await adapter.handle_message(peer, 0, status)  # type: ignore[arg-type]
    gc.collect()
    t = time.thread_time()
    for p in packets:
        await adapter.handle_message(peer, 1, p)  # type: ignore[arg-type]
    cpu = time.thread_time() - t
    await core.close()
    accepted = core.counters["accepted"]
    assert accepted == len(packets) * BATCH, (protocol, accepted)
    return accepted / cpu if cpu > 0 else 0.0


def _abba(rounds: int) -> list[tuple[str, str]]:
    """Round orders shh-waku, waku-shh, waku-shh, shh-waku, …: each protocol first equally often."""
    return [("shh", "waku") if i % 4 in (0, 3) else ("waku", "shh") for i in range(rounds)]


async def _validations(quick: bool) -> dict[str, float]:
    rounds = 8 if quick else 16
    sets = [_packets(4000) for _ in range(2)]
    for protocol in ("shh", "waku"):  # warm-up, untimed
        for packets in sets:
            await _validate_window(protocol, packets)
    best = {"shh": 0.0, "waku": 0.0}
    for i, order in enumerate(_abba(rounds)):
        for protocol in order:
            best[protocol] = max(best[protocol], await _validate_window(protocol, sets[(i // 2) % 2]))
    return best


async def _post_round(s: Any, capability: str, packets: list[bytes]) -> float:
    """Send ``packets`` with at most 32 unacknowledged; envelopes per second to the last ack."""
    from pimail.crypto.keccak import keccak256

    pending: set[bytes] = set()
    window = asyncio.Semaphore(32)
    done = asyncio.Event()

    class Acks:
        def on_batch_ack(self, peer: object, h: bytes) -> None:
            if h in pending:
                pending.discard(h)
                window.release()
                if not pending:
                    done.set()

    s.whisper.listeners.append(Acks())
    gc.collect()
    t0 = time.perf_counter()
    for p in packets:
        await window.acquire()
        pending.add(keccak256(p))
        done.clear()
        await s.peer.send_wait(capability, 1, p)
    if pending:
        await asyncio.wait_for(done.wait(), 120)
    return len(packets) * BATCH / (time.perf_counter() - t0)


async def _ingest(quick: bool) -> tuple[dict[str, float], str]:
    """Envelopes per second posted over the wire to a dual-stack node with a SQLite archive, acked."""
    from pimail.archive.sqlite import SqliteArchive
    from pimail.mailserver.client import client_whisper_config
    from pimail.whisper.client import client_session

    n = 10000 if quick else 40000
    rounds = 4
    best = {"shh": 0.0, "waku": 0.0}
    with tempfile.TemporaryDirectory(prefix="pimail-bench-waku-") as tmp:
        root = Path(tmp)
        archive = SqliteArchive(root / "archive.sqlite")
        await archive.open()
        cfg = WhisperConfig(min_pow=0.000002, rate_limit_packets_per_s=1e6, rate_limit_tolerance=10**6)
        core = RelayCore(cfg, archive=archive, clock_trusted=lambda: True)
        whisper = WhisperService(cfg, archive=archive, clock_trusted=lambda: True, core=core)
        waku = WakuService(WakuConfig(rate_limit_packets_per_s=1e6, rate_limit_tolerance=10**6), core)
        server = NodeServer(NodeKey.generate(), NodeConfig(listen="127.0.0.1:0", data_dir=root),
                            [whisper, waku])
        await server.start()
        try:
            for protocol in ("shh", "waku"):  # warm-up, untimed: the archive's first pages, caches
                async with client_session(server.enode, client_whisper_config(), timeout=30,
                                          protocol=protocol) as s:
                    await _post_round(s, protocol, _packets(n // 10))
            for order in _abba(rounds):
                for protocol in order:
                    packets = _packets(n)  # sealed outside the timed part
                    async with client_session(server.enode, client_whisper_config(), timeout=30,
                                              protocol=protocol) as s:
                        assert s.whisper.chosen(s.peer) == protocol
                        best[protocol] = max(best[protocol], await _post_round(s, protocol, packets))
        finally:
            await server.stop()
            await core.close()
            await archive.close()
    return best, f"{n:,} envelopes per round, {rounds} rounds each, one connection, acks after the archive"


def run(quick: bool) -> list[Result]:
    results: list[Result] = []
    val = asyncio.run(_validations(quick))
    for protocol in ("shh", "waku"):
        results.append(Result(AREA, f"validations/CPU-s through the {protocol} adapter "
                              f"(Messages, {BATCH}/packet)", val[protocol], "env/s",
                              note="best window; decode, hash, PoW, judge, pool"))
    results.append(Result(AREA, "validations waku/1 ÷ shh/6", val["waku"] / val["shh"] if val["shh"] else 0,
                          "ratio", RATIO_TARGET, note="same packets, same run"))
    ingest, note = asyncio.run(_ingest(quick))
    for protocol in ("shh", "waku"):
        results.append(Result(AREA, f"ingest over {protocol} (acked after archive)", ingest[protocol],
                              "env/s", note=note))
    results.append(Result(AREA, "ingest waku/1 ÷ shh/6", ingest["waku"] / ingest["shh"]
                          if ingest["shh"] else 0, "ratio", RATIO_TARGET, note="same node, same run"))
    return results


if __name__ == "__main__":
    print_table(run(quick="--quick" in sys.argv))
