"""Mailserver benchmark: history delivery to real clients over 127.0.0.1.

A SQLite archive is filled with N envelopes (1M; quick mode 100k) of ~300 B and a pimail node in
this process serves it. The clients run in a second process, as a phone would be another machine,
so the figures are what the server delivers (client decoding does not steal its CPU):

* one 100k-envelope request (quick: 20k), in the Status form (direct MessagesRequest, list
  packets, 1000 per page, following cursors) and in the go-ethereum form (legacy payload without
  a limit: one request, one envelope per packet);
* time to first envelope for a 100-envelope request (median of 20);
* 20 concurrent clients, each fetching its own 5k (quick: 1k) envelopes.

Targets: ≥ 30,000 envelopes/s delivered; first envelope ≤ 50 ms.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import Result, max_rss_mb, print_table

AREA = "mailserver"
TOPICS = [i.to_bytes(4, "big") for i in range(1, 65)]
PER_SECOND = 20  # envelopes stored per second of "sent" time
BASE = 1_600_000_000


def _envelopes(n: int, first: int) -> list[Any]:
    from pimail.archive.base import ArchivedEnvelope
    from pimail.whisper.envelope import Envelope

    out: list[Any] = []
    blob = os.urandom(300)
    arrived = int(time.time())
    for i in range(first, first + n):
        sent = BASE + i // PER_SECOND
        data = blob[: 250 + i % 50] + i.to_bytes(8, "big")
        env = Envelope.build(sent + 60, 60, TOPICS[i % len(TOPICS)], data, i)
        out.append(ArchivedEnvelope(sent, env.hash, env.topic, env.expiry, env.raw, arrived))
    return out


async def _fill(archive: Any, n: int) -> float:
    started = time.perf_counter()
    chunk = 20_000
    for off in range(0, n, chunk):
        await archive.submit(_envelopes(min(chunk, n - off), off))
    return time.perf_counter() - started


# -- the client side (second process) --------------------------------------------------------------


async def _client_main(spec: dict[str, Any]) -> dict[str, Any]:
    from pimail.config import NodeConfig, WhisperConfig
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.mailserver.client import HistoryClient, HistoryOptions, HistorySummary, connect_trusted
    from pimail.mailserver.request import MessagesRequest
    from pimail.node.server import NodeServer
    from pimail.whisper.bloom import FULL_BLOOM
    from pimail.whisper.service import WhisperService

    enode = Enode.parse(spec["enode"])
    tmp = Path(spec["tmp"])

    async def make(idx: int) -> tuple[NodeKey, WhisperService, NodeServer]:
        ck = NodeKey.generate()
        cw = WhisperService(WhisperConfig(), archive=None, clock_trusted=lambda: True)
        cn = NodeServer(ck, NodeConfig(listen="127.0.0.1:0", data_dir=tmp / f"c{idx}"), [cw])
        await cn.start()
        return ck, cw, cn

    async def fetch(idx: int, lo: int, hi: int, form: str) -> tuple[int, float]:
        ck, cw, cn = await make(idx)
        try:
            summary = HistorySummary()
            opts = HistoryOptions(form=form, lower=lo, upper=hi, limit=1000, request_pow=0.000002,
                                  quiet_s=2.0)
            # connect first so that the timing covers the history exchange only
            await connect_trusted(cn, cw, enode)
            t0 = time.perf_counter()
            n = 0
            async for _ in HistoryClient(ck, cw, cn).fetch(enode, opts, summary):
                n += 1
            secs = time.perf_counter() - t0 - (0.0 if summary.completed else opts.quiet_s)
            return n, secs
        finally:
            await cn.stop()

    out: dict[str, Any] = {}
    if spec["kind"] == "single":
        out["n"], out["secs"] = await fetch(0, spec["lo"], spec["hi"], spec["form"])
    elif spec["kind"] == "concurrent":
        t0 = time.perf_counter()
        got = await asyncio.gather(*[fetch(10 + i, lo, hi, "direct")
                                     for i, (lo, hi) in enumerate(spec["jobs"])])
        out["n"], out["secs"] = sum(g[0] for g in got), time.perf_counter() - t0
    elif spec["kind"] == "first":
        _, cw, cn = await make(99)
        first, done = asyncio.Event(), asyncio.Event()

        class Probe:
            def on_p2p_envelopes(self, peer: object, envs: object) -> None:
                first.set()

            def on_request_complete(self, peer: object, payload: bytes) -> None:
                done.set()

        cw.listeners.append(Probe())
        peer = await connect_trusted(cn, cw, enode)
        samples = []
        for i in range(20):
            first.clear()
            done.clear()
            lo = spec["lo"] + 37 * i
            req = MessagesRequest(i.to_bytes(32, "big"), lo, lo + 100 // PER_SECOND - 1, 100, b"", FULL_BLOOM)
            t0 = time.perf_counter()
            await peer.send_wait("shh", 126, req.encode())
            await asyncio.wait_for(first.wait(), 10)
            samples.append((time.perf_counter() - t0) * 1000)
            await asyncio.wait_for(done.wait(), 10)
        await cn.stop()
        out["samples_ms"] = samples
    return out


def _cpu_s(who: int = resource.RUSAGE_SELF) -> float:
    """CPU seconds used so far by this process (all threads: loop, archive readers and writer), or
    by its finished children (``RUSAGE_CHILDREN``: the client processes)."""
    ru = resource.getrusage(who)
    return ru.ru_utime + ru.ru_stime


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    cpu0, child0 = _cpu_s(), _cpu_s(resource.RUSAGE_CHILDREN)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.mailserver", "--client", json.dumps(spec),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"bench client failed: {err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    result["server_cpu_s"] = _cpu_s() - cpu0
    result["client_cpu_s"] = _cpu_s(resource.RUSAGE_CHILDREN) - child0
    return result


def _cpu_note(r: dict[str, Any]) -> str:
    return (f"server {r['server_cpu_s']:.1f} cpu-s, client process {r['client_cpu_s']:.1f} cpu-s "
            "(incl. its start-up)")


# -- the server side (this process) ----------------------------------------------------------------


async def _run(quick: bool) -> list[Result]:
    from pimail.archive import open_archive
    from pimail.config import ArchiveConfig, MailserverConfig, NodeConfig, WhisperConfig
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.mailserver.server import create_mailserver
    from pimail.node.server import NodeServer
    from pimail.whisper.service import WhisperService

    stored = 100_000 if quick else 1_000_000
    request_n = 20_000 if quick else 100_000
    per_client = 1_000 if quick else 5_000
    clients_n = 20
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="pimail-bench-ms-") as tmp:
        data = Path(tmp)
        archive = open_archive(ArchiveConfig(max_age="0", min_free_disk="0"), data / "server", None)
        await archive.open()
        fill_s = await _fill(archive, stored)
        results.append(Result(AREA, f"archive fill ({stored:,} stored)", stored / fill_s, "env/s",
                              note="setup, not a target"))
        cfg = MailserverConfig(min_request_interval_s=0, bucket_rate_per_s=0, max_concurrent_per_peer=4)
        key = NodeKey.generate()
        ms = await create_mailserver(archive, cfg, private_key=key.private)
        sw = WhisperService(WhisperConfig(), archive=archive, clock_trusted=lambda: True)
        sw.request_handler = ms
        server = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=data / "server", max_peers=64,
                                            max_pending_handshakes=64), [sw])
        await server.start()
        url = Enode(key.public, "127.0.0.1", server.listen_port).url()
        # the requested window starts in the middle of the archive
        lower = BASE + (stored // 2) // PER_SECOND
        upper = lower + request_n // PER_SECOND - 1
        common = {"enode": url, "tmp": str(data)}
        try:
            for form, label in (("direct", "Status form (lists, 1000/page)"),
                                ("legacy", "geth form (1 env/packet, no limit)")):
                r = await _client({**common, "kind": "single", "form": form, "lo": lower, "hi": upper})
                results.append(Result(AREA, f"{r['n']:,}-envelope request, {label}", r["n"] / r["secs"],
                                      "env/s", 30_000, note=f"{r['secs']:.2f} s"))
                results.append(Result(AREA, "  same, per second of server CPU", r["n"] / r["server_cpu_s"],
                                      "env/cpu-s", note=_cpu_note(r)))
            r = await _client({**common, "kind": "first", "lo": lower})
            s = r["samples_ms"]
            results.append(Result(AREA, "time to first envelope (100-env request, median of 20)",
                                  statistics.median(s), "ms", 50, higher_is_better=False,
                                  note=f"max {max(s):.1f} ms"))
            span = per_client // PER_SECOND
            jobs = [(lower + i * span, lower + (i + 1) * span - 1) for i in range(clients_n)]
            r = await _client({**common, "kind": "concurrent", "jobs": jobs})
            results.append(Result(AREA, f"{clients_n} concurrent clients ({r['n']:,} envelopes)",
                                  r["n"] / r["secs"], "env/s", 30_000, note=f"{r['secs']:.2f} s wall"))
            results.append(Result(AREA, "  same, per second of server CPU", r["n"] / r["server_cpu_s"],
                                  "env/cpu-s", note=_cpu_note(r)))
            results.append(Result(AREA, "server max RSS (node + archive, 1 process)", max_rss_mb(), "MB",
                                  higher_is_better=False))
        finally:
            await server.stop()
            await ms.close()
            await sw.close()
            await archive.close()
    return results


def run(quick: bool) -> list[Result]:
    return asyncio.run(_run(quick))


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    if len(sys.argv) > 2 and sys.argv[1] == "--client":
        print(json.dumps(asyncio.run(_client_main(json.loads(sys.argv[2])))))
    else:
        print_table(run("--quick" in sys.argv))
