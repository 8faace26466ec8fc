"""Mailserver benchmark: history delivery to real clients over 127.0.0.1.

A SQLite archive is filled with N envelopes (1M; quick mode 100k) of ~300 B, a pimail node serves
it, and clients in the same process (so server and clients share the CPU) ask for history:

* one 100k-envelope request (quick: 20k): the Status form (direct MessagesRequest, list packets,
  1000 per page, following cursors) and the go-ethereum form (legacy payload without a limit:
  one request, one envelope per packet);
* time to first envelope for a 100-envelope request (median of 20);
* 20 concurrent clients, each fetching its own 5k (quick: 1k) envelopes.

Targets: ≥ 30,000 envelopes/s delivered; first envelope ≤ 50 ms.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result, max_rss_mb, print_table

AREA = "mailserver"
TOPICS = [i.to_bytes(4, "big") for i in range(1, 65)]


def _envelopes(n: int, base: int, per_second: int = 20) -> list[object]:
    import os

    from pimail.archive.base import ArchivedEnvelope
    from pimail.whisper.envelope import Envelope

    out: list[object] = []
    blob = os.urandom(300)
    arrived = int(time.time())
    for i in range(n):
        sent = base + i // per_second
        data = blob[: 250 + i % 50] + i.to_bytes(8, "big")
        env = Envelope.build(sent + 60, 60, TOPICS[i % len(TOPICS)], data, i)
        out.append(ArchivedEnvelope(sent, env.hash, env.topic, env.expiry, env.raw, arrived))
    return out


async def _fill(archive: object, n: int, base: int) -> float:
    started = time.perf_counter()
    chunk = 20_000
    for off in range(0, n, chunk):
        batch = _envelopes(min(chunk, n - off), base + off // 20)
        await archive.submit(batch)  # type: ignore[attr-defined]
    return time.perf_counter() - started


async def _run(quick: bool) -> list[Result]:
    from pimail.archive import open_archive
    from pimail.config import ArchiveConfig, MailserverConfig, NodeConfig, WhisperConfig
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.mailserver.client import HistoryClient, HistoryOptions, HistorySummary, connect_trusted
    from pimail.mailserver.request import MessagesRequest
    from pimail.mailserver.server import create_mailserver
    from pimail.node.server import NodeServer
    from pimail.whisper.bloom import FULL_BLOOM
    from pimail.whisper.service import WhisperService

    stored = 100_000 if quick else 1_000_000
    request_n = 20_000 if quick else 100_000
    per_client = 1_000 if quick else 5_000
    clients_n = 20
    base = 1_600_000_000
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pimail-bench-ms-") as tmp:
        data = Path(tmp)
        archive = open_archive(ArchiveConfig(max_age="0", min_free_disk="0"), data / "server", None)
        await archive.open()
        fill_s = await _fill(archive, stored, base)
        results.append(Result(AREA, f"archive fill ({stored:,} stored)", stored / fill_s, "env/s",
                              note="setup, not a target"))
        cfg = MailserverConfig(min_request_interval_s=0, bucket_rate_per_s=0, max_concurrent_per_peer=4)
        key = NodeKey.generate()
        ms = await create_mailserver(archive, cfg, private_key=key.private)
        sw = WhisperService(WhisperConfig(), archive=archive, clock_trusted=lambda: True, health=None,
                            trusted=set())
        sw.request_handler = ms
        server = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=data / "server", max_peers=64),
                            [sw])
        await server.start()
        enode = Enode(key.public, "127.0.0.1", server.listen_port)
        span = request_n // 20  # seconds covering request_n envelopes (20 per second)
        lower = base + 1000
        upper = lower + span - 1

        async def one_client(idx: int, lo: int, hi: int, form: str) -> tuple[int, float, HistorySummary]:
            ck = NodeKey.generate()
            cw = WhisperService(WhisperConfig(), archive=None, clock_trusted=lambda: True, health=None,
                                trusted=set())
            cn = NodeServer(ck, NodeConfig(listen="127.0.0.1:0", data_dir=data / f"c{idx}"), [cw])
            await cn.start()
            try:
                summary = HistorySummary()
                client = HistoryClient(ck, cw, cn)
                opts = HistoryOptions(form=form, lower=lo, upper=hi, limit=1000, request_pow=0.000002,
                                      quiet_s=2.0)
                t0 = time.perf_counter()
                n = 0
                async for _ in client.fetch(enode, opts, summary):
                    n += 1
                return n, time.perf_counter() - t0 - (0 if summary.completed else opts.quiet_s), summary
            finally:
                await cn.stop()

        n, secs, _ = await one_client(0, lower, upper, "direct")
        results.append(Result(AREA, f"{n:,}-envelope request, Status form (lists, 1000/page)",
                              n / secs, "env/s", 30_000))
        n, secs, _ = await one_client(1, lower, upper, "legacy")
        results.append(Result(AREA, f"{n:,}-envelope request, geth form (1 env/packet)",
                              n / secs, "env/s", 30_000))

        # time to first envelope
        ck = NodeKey.generate()
        cw = WhisperService(WhisperConfig(), archive=None, clock_trusted=lambda: True, health=None,
                            trusted=set())
        first = asyncio.Event()
        done = asyncio.Event()

        class Probe:
            def on_p2p_envelopes(self, peer: object, envs: object) -> None:
                first.set()

            def on_request_complete(self, peer: object, payload: bytes) -> None:
                done.set()

        cw.listeners.append(Probe())
        cn = NodeServer(ck, NodeConfig(listen="127.0.0.1:0", data_dir=data / "probe"), [cw])
        await cn.start()
        peer = await connect_trusted(cn, cw, enode)
        samples = []
        for i in range(20):
            first.clear()
            done.clear()
            lo = lower + 37 * i
            req = MessagesRequest(i.to_bytes(32, "big"), lo, lo + 4, 100, b"", FULL_BLOOM)
            t0 = time.perf_counter()
            await peer.send_wait("shh", 126, req.encode())
            await asyncio.wait_for(first.wait(), 10)
            samples.append((time.perf_counter() - t0) * 1000)
            await asyncio.wait_for(done.wait(), 10)
        await cn.stop()
        results.append(Result(AREA, "time to first envelope (100-env request, median of 20)",
                              statistics.median(samples), "ms", 50, higher_is_better=False,
                              note=f"max {max(samples):.1f} ms"))

        # 20 concurrent clients
        t0 = time.perf_counter()
        span_c = per_client // 20
        got = await asyncio.gather(*[
            one_client(100 + i, lower + i * span_c, lower + (i + 1) * span_c - 1, "direct")
            for i in range(clients_n)
        ])
        wall = time.perf_counter() - t0
        total = sum(g[0] for g in got)
        results.append(Result(AREA, f"{clients_n} concurrent clients ({total:,} envelopes)", total / wall,
                              "env/s", 30_000, note=f"{wall:.1f} s wall"))
        results.append(Result(AREA, "max RSS (server + clients + archive)", max_rss_mb(), "MB",
                              higher_is_better=False))
        await server.stop()
        await ms.close()
        await archive.close()
    return results


def run(quick: bool) -> list[Result]:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    print_table(run("--quick" in sys.argv))
