"""Mailserver benchmark: history delivery to real clients over 127.0.0.1.

A SQLite archive is filled with N envelopes (1M; quick mode 100k) of ~300 B and a pimail node in
this process serves it on uvloop, as ``pimail run`` does, with the default request limits (1 s
between requests, token bucket; next-page requests carrying our cursor are exempt). The clients
run in a second process, as a phone is another machine, and are lean (``_LeanShh``: pimail's
RLPx/devp2p transport, then only count and hash the raw envelopes), so the figures are what the
server delivers. Every fetch is checked: the number of distinct envelopes and the XOR of their
hashes must equal what the archive holds in the requested window.

* one 100k-envelope request (quick: 20k), in the Status form (direct MessagesRequest, list
  packets, 1000 per page, following cursors) and in the go-ethereum form (legacy payload without
  a limit: one request, one envelope per packet); the Status form again through pimail's own
  history client (``pimail history``: Whisper service, Envelope objects), for comparison;
* time to first envelope for a 100-envelope request (median of 20, a fresh peer each);
* 20 concurrent clients, each fetching its own 5k (quick: 1k) envelopes.

Targets: ≥ 30,000 envelopes/s delivered; first envelope ≤ 50 ms. "per second of server CPU" rows
divide by the CPU time of this process (all threads) during the fetch: on a shared machine they
are steadier than wall-clock rates.
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
from pimail.node.capability import Capability

AREA = "mailserver"
TOPICS = [i.to_bytes(4, "big") for i in range(1, 65)]
PER_SECOND = 20  # envelopes stored per second of "sent" time
BASE = 1_600_000_000


def _envelopes(n: int, first: int) -> list[Any]:
    from pimail.archive.base import ArchivedEnvelope
    from pimail.envelope.codec import Envelope

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


class _LeanShh(Capability):
    """The bench's phone: shh/6 cut down to a history fetch, so the client process costs as little as
    a client can (a real phone is another machine) and the figures are the server's.

    It sends a Status, takes 125s, and for every envelope that arrives on 127 (a list, or one
    envelope per packet) hashes the raw bytes: the fetch counts distinct envelopes and folds their
    hashes into one digest that the server side compares with its archive. No ``Envelope`` objects,
    no Whisper service; the RLPx/devp2p transport is pimail's own.
    """

    name = "shh"
    version = 6
    length = 128

    def __init__(self) -> None:
        self.status = asyncio.Event()
        self.first = asyncio.Event()
        self.completes: asyncio.Queue[bytes] = asyncio.Queue(64)
        self.batch = True
        self.seen: set[bytes] = set()
        self.digest = 0
        self.duplicates = 0

    async def peer_started(self, peer: Any) -> None:
        from pimail.whisper.status import StatusPacket

        peer.send(self.name, 0, StatusPacket(pow=0.0).encode())

    def peer_stopped(self, peer: Any) -> None:
        self.status.set()  # wake a waiter; it sees the peer closed

    async def handle_message(self, peer: Any, code: int, payload: bytes) -> None:
        if code == 127:
            self.first.set()
            if self.batch:
                self._take_list(payload)
            else:
                self._take(payload)
        elif code == 125:
            self.completes.put_nowait(payload)
        elif code == 0:
            self.status.set()

    def _take_list(self, payload: bytes) -> None:
        from pimail.rlpcodec import scan_item, top_level_list

        pos, end = top_level_list(payload)
        take = self._take
        while pos < end:
            stop = scan_item(payload, pos, end)[2]
            take(payload[pos:stop])
            pos = stop

    def _take(self, raw: bytes) -> None:
        from pimail.crypto.keccak import keccak256

        h = keccak256(raw)
        if h in self.seen:
            self.duplicates += 1
            return
        self.seen.add(h)
        self.digest ^= int.from_bytes(h, "big")


async def _client_main(spec: dict[str, Any]) -> dict[str, Any]:
    from pimail.config import NodeConfig, WhisperConfig
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.envelope.bloom import FULL_BLOOM
    from pimail.envelope.payload import key_from_password
    from pimail.envelope.pow import PowFormula
    from pimail.mailserver.client import (
        HistoryClient,
        HistoryOptions,
        HistorySummary,
        connect_trusted,
        seal_request_envelope,
    )
    from pimail.mailserver.request import LegacyRequestPayload, MessagesRequest
    from pimail.mailserver.response import RequestComplete, decode
    from pimail.node.server import NodeServer
    from pimail.whisper.service import WhisperService

    enode = Enode.parse(spec["enode"])
    tmp = Path(spec["tmp"])
    loop = asyncio.get_running_loop()
    sym_key = await loop.run_in_executor(None, key_from_password, "status-offline-inbox")

    async def lean(idx: int) -> tuple[NodeKey, _LeanShh, NodeServer, Any]:
        ck = NodeKey.generate()
        shh = _LeanShh()
        cn = NodeServer(ck, NodeConfig(listen="127.0.0.1:0", data_dir=tmp / f"c{idx}"), [shh])
        await cn.start()
        peer = await cn.connect(enode)
        await asyncio.wait_for(shh.status.wait(), 10)
        return ck, shh, cn, peer

    async def lean_fetch(idx: int, lo: int, hi: int, form: str) -> tuple[int, float, str]:
        ck, shh, cn, peer = await lean(idx)
        try:
            shh.batch = form == "direct"
            t0 = time.perf_counter()
            cursor = b""
            while True:
                if form == "direct":
                    payload = MessagesRequest(os.urandom(32), lo, hi, 1000, cursor, FULL_BLOOM).encode()
                else:  # go-ethereum's form: no limit, one envelope per packet, no paging
                    env = await loop.run_in_executor(
                        None, seal_request_envelope, LegacyRequestPayload(lo, hi, FULL_BLOOM).encode(),
                        sym_key, ck.private, int(time.time()), 0.000002, 50, PowFormula.LEGACY)
                    payload = env.raw
                await peer.send_wait("shh", 126, payload)
                resp = decode(await asyncio.wait_for(shh.completes.get(), 60))
                if not isinstance(resp, RequestComplete):
                    raise RuntimeError(f"mailserver refused: {resp.message}")
                if resp.cursor is None or form != "direct":
                    break
                cursor = resp.cursor
            secs = time.perf_counter() - t0
            return len(shh.seen), secs, f"{shh.digest:064x}"
        finally:
            await cn.stop()

    async def history_fetch(idx: int, lo: int, hi: int, form: str) -> tuple[int, float, str]:
        """pimail's own history client (Whisper service, Envelope objects, dedup) for comparison."""
        ck = NodeKey.generate()
        cw = WhisperService(WhisperConfig(), archive=None, clock_trusted=lambda: True)
        cn = NodeServer(ck, NodeConfig(listen="127.0.0.1:0", data_dir=tmp / f"h{idx}"), [cw])
        await cn.start()
        try:
            summary = HistorySummary()
            opts = HistoryOptions(form=form, lower=lo, upper=hi, limit=1000, request_pow=0.000002,
                                  quiet_s=2.0)
            await connect_trusted(cn, cw, enode)  # connect first: time the history exchange only
            t0 = time.perf_counter()
            digest = 0
            async for got in HistoryClient(ck, cw, cn).fetch(enode, opts, summary):
                digest ^= int.from_bytes(got.envelope.hash, "big")
            secs = time.perf_counter() - t0 - (0.0 if summary.completed else opts.quiet_s)
            return summary.envelopes, secs, f"{digest:064x}"
        finally:
            await cn.stop()

    out: dict[str, Any] = {}
    if spec["kind"] == "single":
        fetch = history_fetch if spec.get("client") == "history" else lean_fetch
        out["n"], out["secs"], out["digest"] = await fetch(0, spec["lo"], spec["hi"], spec["form"])
    elif spec["kind"] == "concurrent":
        t0 = time.perf_counter()
        got = await asyncio.gather(*[lean_fetch(10 + i, lo, hi, "direct")
                                     for i, (lo, hi) in enumerate(spec["jobs"])])
        out["n"], out["secs"] = sum(g[0] for g in got), time.perf_counter() - t0
        out["digests"] = [g[2] for g in got]
    elif spec["kind"] == "first":
        samples = []
        for i in range(20):  # a fresh peer each time, as a phone coming online (and the rate limits)
            _, shh, cn, peer = await lean(100 + i)
            try:
                lo = spec["lo"] + 37 * i
                req = MessagesRequest(i.to_bytes(32, "big"), lo, lo + 100 // PER_SECOND - 1, 100, b"",
                                      FULL_BLOOM)
                t0 = time.perf_counter()
                await peer.send_wait("shh", 126, req.encode())
                await asyncio.wait_for(shh.first.wait(), 10)
                samples.append((time.perf_counter() - t0) * 1000)
                resp = decode(await asyncio.wait_for(shh.completes.get(), 10))
                if not isinstance(resp, RequestComplete):
                    raise RuntimeError(f"mailserver refused: {resp.message}")
            finally:
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


async def _digest(archive: Any, lower: int, upper: int) -> tuple[int, str]:
    """(count, XOR of the envelope hashes) of what the archive holds in [lower, upper]."""
    from pimail.archive.base import HistoryQuery
    from pimail.crypto.keccak import keccak256

    n, digest, cursor = 0, 0, None
    while True:
        page = await archive.query_raw(HistoryQuery(lower, upper, limit=1000, cursor=cursor))
        for raw in page.raws:
            digest ^= int.from_bytes(keccak256(raw), "big")
        n += len(page.raws)
        if page.next_cursor is None:
            return n, f"{digest:064x}"
        cursor = page.next_cursor


def _verify(what: str, got: tuple[int, str], want: tuple[int, str]) -> None:
    if got != want:
        why = "" if got[0] != want[0] else " (same count, hash digest differs)"
        raise RuntimeError(f"{what}: the client received {got[0]:,} distinct envelopes, the archive holds "
                           f"{want[0]:,} in the window{why}")


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
        # the daemon's default limits (1 s between requests, token bucket): next-page requests with
        # the cursor of our 125 are exempt, which is what lets a phone page at full speed
        cfg = MailserverConfig()
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
            expected = await _digest(archive, lower, upper)
            for form, client, label in (
                ("direct", "lean", "Status form (lists, 1000/page)"),
                ("legacy", "lean", "geth form (1 env/packet, no limit)"),
                ("direct", "history", "Status form, pimail history client"),
            ):
                r = await _client({**common, "kind": "single", "form": form, "client": client,
                                   "lo": lower, "hi": upper})
                _verify(label, (r["n"], r["digest"]), expected)
                target = 30_000 if client == "lean" else None
                results.append(Result(AREA, f"{r['n']:,}-envelope request, {label}", r["n"] / r["secs"],
                                      "env/s", target, note=f"{r['secs']:.2f} s, count+hashes verified"))
                results.append(Result(AREA, "  same, per second of server CPU", r["n"] / r["server_cpu_s"],
                                      "env/cpu-s", note=_cpu_note(r)))
            r = await _client({**common, "kind": "first", "lo": lower})
            s = r["samples_ms"]
            results.append(Result(AREA, "time to first envelope (100-env request, median of 20)",
                                  statistics.median(s), "ms", 50, higher_is_better=False,
                                  note=f"max {max(s):.1f} ms"))
            span = per_client // PER_SECOND
            jobs = [(lower + i * span, lower + (i + 1) * span - 1) for i in range(clients_n)]
            want = [await _digest(archive, lo, hi) for lo, hi in jobs]
            r = await _client({**common, "kind": "concurrent", "jobs": jobs})
            for k, (w, d) in enumerate(zip(want, r["digests"], strict=True)):
                _verify(f"concurrent client {k}", (w[0], d), w)
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


def _loop_run(coro: Any) -> Any:
    """Run on uvloop when importable, as ``pimail run`` does (daemon.run_daemon)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def run(quick: bool) -> list[Result]:
    result: list[Result] = _loop_run(_run(quick))
    return result


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.WARNING)
    if len(sys.argv) > 2 and sys.argv[1] == "--client":
        print(json.dumps(_loop_run(_client_main(json.loads(sys.argv[2])))))
    else:
        print_table(run("--quick" in sys.argv))
