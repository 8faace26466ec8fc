"""Fault suite: ``python -m bench.faults [--short] [--only a,b]`` (``make faults``), loopback only.

Each fault runs against real ``pimail run`` processes (bench/load.ServerProc) or, for the bulk of
the fuzzing, against the sans-I/O decoders in this process, and prints one row of what held:

* kill9      — kill -9 the server at a random moment of full-rate ingest, restart on the same data
               dir; every round: PRAGMA integrity_check is ok and every envelope of a Batch Ack
               (pimail acks only durable batches) is in the archive once it is opened again (the
               open replays the ack log). 100 rounds (short: 3).
* diskfull   — the data dir on a 6 MB tmpfs (needs root), ingest until the disk is full; the
               server must stay up and serve history afterwards.
* halfopen   — 1,000 connections (short: 100) that connect and send nothing or half an auth, held
               open while a client fetches history: it must succeed.
* peers      — 200 peers (short: 20) + 20 history clients (short: 4), each peer connected and
               fed the pool while the history clients fetch; every tick of the daemon's loop
               monitor (``pimail status`` ``loop``) must be ≤ 100 ms late. The clients run in
               this process: both CPU totals are reported (2 cores shared with the clients).
* fuzz       — 1M mutated inputs (short: 20k) through the handshake reader, FrameCodec, devp2p
               Hello/Disconnect, envelope list, Status and request decoders: 0 exceptions outside
               each decoder's own error types, RSS growth < 10 MB; then 2,000 (short: 200) mutated
               streams over real sockets: the server survives, its RSS grows < 10 MB.
* powercut   — only with ``--only powercut`` (root, QEMU, about an hour): the node in a VM built
               like the Pi image from this checkout, SIGKILL of QEMU at a random moment of ingest,
               boot again: 30 cuts (short: 3) with the default config, 0 acknowledged envelopes
               missing, 0 corrupt archives, READY after every boot; then 8 cuts (short: 2) with
               ``synchronous = "normal"`` as the control that shows what a loss looks like
               (bench/powercut/run.py; ``--cuts N`` and ``--control-cuts N`` change the counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.load import ServerProc, history, preseal, proc_status_kb

LOOP_LAG_LIMIT_MS = 100.0
RSS_GROWTH_LIMIT_MB = 10.0


@dataclass
class Outcome:
    fault: str
    held: bool | None  # None: could not run here (said in detail)
    detail: str
    seconds: float = 0.0


def print_outcomes(rows: list[Outcome]) -> None:
    print(f"{'fault':<10} {'held':<6} {'time':>7}  detail")
    for r in rows:
        held = "n/a" if r.held is None else "yes" if r.held else "NO"
        print(f"{r.fault:<10} {held:<6} {r.seconds:>6.1f}s  {r.detail}")


def _rss_self_mb() -> float:
    return proc_status_kb(os.getpid(), "VmRSS") / 1024


# -- kill -9 during ingest -------------------------------------------------------------------------


async def _acquired(slots: asyncio.Semaphore, wait_s: float = 0.5) -> bool:
    """A slot within ``wait_s``, or False (the caller checks whether it should still wait)."""
    try:
        await asyncio.wait_for(slots.acquire(), wait_s)
    except TimeoutError:
        return False
    return True


async def _post_tracking(enode: str, raws: list[bytes], acked: set[bytes], stop: asyncio.Event) -> None:
    """Post batches over two connections; add each acknowledged batch's envelope hashes to ``acked``."""
    from pimail.crypto.keccak import keccak256
    from pimail.crypto.keys import Enode
    from pimail.envelope.codec import encode_envelope_list
    from pimail.whisper import status as st
    from pimail.whisper.client import client_session

    async def one(share: list[bytes]) -> None:
        async with client_session(Enode.parse(enode), timeout=10) as s:
            pending: dict[bytes, list[bytes]] = {}
            slots = asyncio.Semaphore(32)

            class Acks:
                def on_batch_ack(self, peer: object, h: bytes) -> None:
                    if h in pending:
                        acked.update(keccak256(r) for r in pending.pop(h))
                        slots.release()

            s.whisper.listeners.append(Acks())
            for i in range(0, len(share), 50):
                if stop.is_set() or s.peer.closed:
                    return
                chunk = share[i:i + 50]
                payload = encode_envelope_list(chunk)
                while not await _acquired(slots):  # a killed server acks no more: never wait on it
                    if stop.is_set() or s.peer.closed:
                        return
                pending[keccak256(payload)] = chunk
                await s.peer.send_wait("shh", st.MESSAGES, payload)
            await asyncio.wait_for(s.peer.closed_event.wait(), 30)

    with contextlib.suppress(Exception):
        await asyncio.gather(one(raws[0::2]), one(raws[1::2]))


def _archive_hashes(data_dir: Path) -> tuple[str, set[bytes]]:
    """Integrity and stored hashes after a kill: first the archive is opened and closed once, as the
    next ``pimail run`` would (acknowledged envelopes still only in its ack log go into SQLite)."""
    from pimail.archive.sqlite import SqliteArchive
    from pimail.crypto.keccak import keccak256

    async def replay() -> None:
        archive = SqliteArchive(data_dir / "archive.sqlite", prune_interval_s=0)
        await archive.open()
        await archive.close()

    asyncio.run(replay())
    con = sqlite3.connect(f"file:{data_dir / 'archive.sqlite'}?mode=ro", uri=True, timeout=30)
    try:
        check = con.execute("PRAGMA integrity_check").fetchone()[0]
        return str(check), {keccak256(bytes(r[0])) for r in con.execute("SELECT raw FROM envelopes")}
    finally:
        con.close()


def fault_kill9(rounds: int) -> Outcome:
    rng = random.Random(9)
    corrupt = lost = acked_total = 0
    with tempfile.TemporaryDirectory(prefix="pimail-kill9-") as tmp:
        srv = ServerProc(Path(tmp))
        all_acked: set[bytes] = set()
        for rnd in range(rounds):
            raws, _, _ = preseal(6000, salt=rnd.to_bytes(8, "big"))
            srv.start()
            acked: set[bytes] = set()

            async def go(srv: ServerProc = srv, raws: list[bytes] = raws, acked: set[bytes] = acked) -> None:
                stop = asyncio.Event()
                task = asyncio.ensure_future(_post_tracking(srv.enode, raws, acked, stop))
                # kill after the first durable batch, at a random moment of the ingest that follows
                for _ in range(200):
                    if acked or task.done():
                        break
                    await asyncio.sleep(0.05)
                await asyncio.sleep(rng.uniform(0.0, 0.8))
                os.kill(srv.pid, signal.SIGKILL)
                stop.set()
                await asyncio.wait_for(task, 40)

            asyncio.run(go())
            assert srv.proc is not None
            srv.proc.wait()
            all_acked |= acked
            acked_total += len(acked)
            check, held = _archive_hashes(srv.data_dir)
            corrupt += check != "ok"
            lost += len(all_acked - held)
    return Outcome("kill9", corrupt == 0 and lost == 0 and acked_total > 0,
                   f"{rounds} kills; {corrupt} corrupt archives, {lost} of {acked_total:,} acknowledged "
                   "envelopes lost")


# -- disk full -------------------------------------------------------------------------------------


def fault_diskfull() -> Outcome:
    if os.geteuid() != 0:
        return Outcome("diskfull", None, "not run: mounting a tmpfs needs root")
    with tempfile.TemporaryDirectory(prefix="pimail-full-") as tmp:
        mnt = Path(tmp) / "fs"
        mnt.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
                           capture_output=True)
        if r.returncode != 0:
            why = r.stderr.decode().strip()[:60]
            return Outcome("diskfull", None, f"not run: mount tmpfs failed ({why})")
        try:
            srv = ServerProc(mnt)
            srv.start()
            try:
                raws, lower, upper = preseal(30_000)

                async def go() -> tuple[int, bool]:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(
                            _post_tracking(srv.enode, raws, set(), asyncio.Event()), 15)
                    n, _, _, done = await history(srv.enode, lower - 5, upper + 5)
                    return n, done

                n, _ = asyncio.run(go())
                alive = srv.proc is not None and srv.proc.poll() is None
                health = srv.status()["health"] if alive else {}
                st = health.get("state") if isinstance(health, dict) else health
                return Outcome("diskfull", alive and n > 0,
                               f"6 MB tmpfs filled with 30,000 posts: server {'up' if alive else 'DOWN'}, "
                               f"health {st}, history served {n:,} envelopes")
            finally:
                srv.stop()
        finally:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


# -- half-open connections -------------------------------------------------------------------------


def fault_halfopen(n: int) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="pimail-half-") as tmp:
        srv = ServerProc(Path(tmp))
        srv.start()
        socks: list[socket.socket] = []
        try:
            raws, lower, upper = preseal(500)
            from bench.load import post_load

            asyncio.run(post_load(srv.enode, raws, 1))
            port = int(srv.enode.rsplit(":", 1)[1])
            refused = 0
            for i in range(n):
                s = socket.socket()
                s.setblocking(True)
                s.settimeout(2)
                try:
                    s.connect(("127.0.0.1", port))
                    if i % 2:
                        s.send(os.urandom(150))  # about half of an EIP-8 auth packet
                except OSError:
                    refused += 1
                socks.append(s)
            # a phone redials: retry for up to 3 handshake timeouts while the sockets stay open
            t0 = time.perf_counter()
            got, secs, attempts, why = 0, 0.0, 0, ""
            while got < len(raws) and time.perf_counter() - t0 < 15:
                attempts += 1
                try:
                    got, secs, _, _ = asyncio.run(history(srv.enode, lower - 5, upper + 5))
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    time.sleep(0.5)
            alive = srv.proc is not None and srv.proc.poll() is None
            return Outcome("halfopen", got == len(raws) and alive,
                           f"{n:,} half-open connections ({refused} refused at connect); history got "
                           f"{got}/{len(raws)} after {time.perf_counter() - t0:.2f} s, attempt {attempts}"
                           + (f" (earlier attempts: {why})" if attempts > 1 else ""), secs)
        finally:
            for s in socks:
                s.close()
            srv.stop()


# -- many peers + history clients ------------------------------------------------------------------


class LoopTicks:
    """Every loop-monitor tick of the server during a phase, from ``pimail status`` ``loop``.

    The daemon keeps its latest 64 ticks (16 s) with their numbers; polling every second and
    merging by tick number sees each tick exactly once, not a sample of the last one.
    """

    def __init__(self, srv: ServerProc) -> None:
        self.srv = srv
        self.ticks: dict[int, tuple[float, float]] = {}  # tick number -> (lag ms, loop CPU ms)
        self.first = 0
        self.polls = 0
        self.tick_ms = 250.0

    def poll(self) -> None:
        loop = self.srv.status()["loop"]
        last = int(loop["tick"])
        lags, cpus = loop["recent_lag_ms"], loop["recent_cpu_ms"]
        for i, (lag, cpu) in enumerate(zip(lags, cpus, strict=True)):
            n = last - len(lags) + 1 + i
            if n > self.first:
                self.ticks[n] = (float(lag), float(cpu))
        self.polls += 1

    def start(self) -> None:
        loop = self.srv.status()["loop"]
        self.first = int(loop["tick"])
        self.tick_ms = float(loop["tick_s"]) * 1000

    def summary(self) -> tuple[float, str]:
        if not self.ticks:
            return float("nan"), "no ticks"
        lags = sorted(v[0] for v in self.ticks.values())
        worst_n = max(self.ticks, key=lambda k: self.ticks[k][0])
        worst_lag, worst_cpu = self.ticks[worst_n]
        missed = (max(self.ticks) - self.first) - len(self.ticks)
        p50 = lags[len(lags) // 2]
        p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
        return worst_lag, (f"loop lag max {worst_lag:.1f} ms (loop thread on CPU {worst_cpu:.0f} ms of that "
                           f"tick's {self.tick_ms + worst_lag:.0f} ms), p99 {p99:.1f}, p50 {p50:.1f} ms over "
                           f"{len(self.ticks)} ticks" + (f", {missed} ticks unseen" if missed else ""))


def _cpu_s(pid: int) -> float:
    """User+system CPU seconds of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fault_peers(peers: int, clients: int) -> Outcome:
    from pimail.whisper.client import client_session

    with tempfile.TemporaryDirectory(prefix="pimail-peers-") as tmp:
        srv = ServerProc(Path(tmp))
        srv.start()
        try:
            raws, lower, upper = preseal(2000)
            from bench.load import post_load

            asyncio.run(post_load(srv.enode, raws, 2))
            ticks = LoopTicks(srv)
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    with contextlib.suppress(Exception):
                        ticks.poll()
                    stop.wait(1.0)

            async def go() -> tuple[int, float, float]:
                from pimail.crypto.keys import Enode

                enode = Enode.parse(srv.enode)
                ticks.start()
                cpu0, own0 = _cpu_s(srv.pid), time.process_time()
                t = threading.Thread(target=sample, daemon=True)
                t.start()
                async with contextlib.AsyncExitStack() as stack:
                    for _ in range(peers):
                        await stack.enter_async_context(client_session(enode, timeout=60))
                    got = await asyncio.gather(*(history(srv.enode, lower - 5, upper + 5)
                                                 for _ in range(clients)))
                    await asyncio.sleep(0.5)
                    stop.set()
                    t.join()
                    ticks.poll()
                    return sum(g[0] for g in got), _cpu_s(srv.pid) - cpu0, time.process_time() - own0

            total, srv_cpu, own_cpu = asyncio.run(go())
            worst, lag_text = ticks.summary()
            ok = bool(ticks.ticks) and worst <= LOOP_LAG_LIMIT_MS and total == clients * len(raws)
            return Outcome("peers", ok, f"{peers} peers + {clients} history clients: {total:,}/"
                           f"{clients * len(raws):,} envelopes delivered, {lag_text} (limit "
                           f"{LOOP_LAG_LIMIT_MS:g} ms); CPU: server {srv_cpu:.1f} s, clients (this "
                           f"process) {own_cpu:.1f} s")
        finally:
            srv.stop()


# -- fuzzing ---------------------------------------------------------------------------------------


FuzzTarget = tuple[str, Callable[[bytes], object], tuple[type[BaseException], ...], bytes]


def _mutate(rng: random.Random, sample: bytes) -> bytes:
    op = rng.randrange(6)
    b = bytearray(sample)
    if op == 0 and b:  # bit flips
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
    elif op == 1 and b:  # truncate
        del b[rng.randrange(len(b)):]
    elif op == 2:  # extend
        b += rng.randbytes(rng.randint(1, 64))
    elif op == 3 and b:  # overwrite a run
        i = rng.randrange(len(b))
        b[i:i + 8] = rng.randbytes(8)
    elif op == 4:  # random bytes
        return rng.randbytes(rng.randint(0, 300))
    else:  # RLP-length-ish prefixes
        b[:1] = bytes([rng.choice([0x80, 0xb7, 0xb8, 0xbf, 0xc0, 0xf7, 0xf8, 0xff])])
    return bytes(b)


def _fuzz_targets() -> list[FuzzTarget]:
    from pimail.config import WhisperConfig
    from pimail.crypto.keys import NodeKey
    from pimail.devp2p.messages import Disconnect, Hello, MessageError
    from pimail.envelope.bloom import FULL_BLOOM
    from pimail.envelope.codec import Envelope, EnvelopeError, decode_envelope_list, encode_envelope_list
    from pimail.mailserver.request import MalformedRequest, MessagesRequest, parse_p2p_request
    from pimail.rlpx.frame import FrameCodec, FrameError
    from pimail.rlpx.handshake import HandshakeError, Initiator, Recipient
    from pimail.whisper import status as st
    from pimail.whisper.service import WhisperService

    a, b = NodeKey.generate(), NodeKey.generate()
    init = Initiator(a, b.public)
    auth = init.auth_packet()
    rec = Recipient(b)
    ack = rec.receive(auth)
    assert ack is not None and rec.secrets is not None
    secrets = init.receive(ack)
    assert secrets is not None
    sender = FrameCodec(secrets)
    frames = b"".join(sender.encode(os.urandom(40)) for _ in range(3))
    env = Envelope.build(int(time.time()) + 60, 60, b"abcd", os.urandom(64), 1)
    hello = Hello(5, "fuzz", (("shh", 6),), 0, a.public).encode()

    def handshake(data: bytes) -> object:
        return Recipient(b, ephemeral_private=b.private, nonce=bytes(32)).receive(data)

    def frame(data: bytes) -> object:
        return FrameCodec(rec.secrets).feed(data)  # type: ignore[arg-type]

    status = WhisperService(WhisperConfig(), archive=None,
                            clock_trusted=lambda: True).status_packet().encode()
    req = MessagesRequest(bytes(32), 1, 2, 100, b"", FULL_BLOOM).encode()
    return [
        ("handshake", handshake, (HandshakeError,), auth),
        ("frame", frame, (FrameError,), frames),
        ("hello", Hello.decode, (MessageError,), hello),
        ("disconnect", Disconnect.decode, (MessageError,), bytes.fromhex("c104")),
        ("envelopes", decode_envelope_list, (EnvelopeError,), encode_envelope_list([env.raw, env.raw])),
        ("status", st.StatusPacket.decode, (st.StatusError,), status),
        ("msgresponse", st.MessageResponse.decode, (st.StatusError, ValueError), bytes.fromhex("c3018080")),
        ("request", parse_p2p_request, (MalformedRequest,), req),
    ]


def fuzz_inprocess(n: int, seed: int = 1, targets: list[FuzzTarget] | None = None
                   ) -> tuple[int, dict[str, str], float]:
    """(inputs, {target: first unexpected exception}, RSS growth MB)."""
    rng = random.Random(seed)
    targets = targets if targets is not None else _fuzz_targets()
    bad: dict[str, str] = {}
    # warm up allocator and caches before the baseline
    def one(name: str, fn: Callable[[bytes], object], allowed: tuple[type[BaseException], ...],
            data: bytes) -> None:
        try:
            fn(data)
        except allowed:
            pass
        except Exception as exc:
            bad.setdefault(name, f"{type(exc).__name__}: {exc} on {data[:24].hex()}")

    for name, fn, allowed, sample in targets:
        for _ in range(200):
            one(name, fn, allowed, _mutate(rng, sample))
    base = _rss_self_mb()
    weights = [1 if name == "handshake" else 10 for name, *_ in targets]  # ECIES attempts are slow
    total_w = sum(weights)
    done = 0
    for (name, fn, allowed, sample), w in zip(targets, weights, strict=True):
        for _ in range(n * w // total_w):
            one(name, fn, allowed, _mutate(rng, sample))
            done += 1
    return done, bad, _rss_self_mb() - base


def fuzz_sockets(n: int) -> tuple[bool, float, str]:
    """Mutated handshake streams over real sockets to a server; (alive, RSS growth MB, note)."""
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.rlpx.handshake import Initiator

    rng = random.Random(2)
    with tempfile.TemporaryDirectory(prefix="pimail-fuzzs-") as tmp:
        srv = ServerProc(Path(tmp))
        srv.start()
        try:
            enode = Enode.parse(srv.enode)
            port = int(srv.enode.rsplit(":", 1)[1])
            auth = Initiator(NodeKey.generate(), enode.pubkey).auth_packet()

            async def one() -> None:
                with contextlib.suppress(OSError, asyncio.TimeoutError):
                    r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
                    w.write(_mutate(rng, auth))
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.drain(), 2)
                        await asyncio.wait_for(r.read(1024), 0.5)
                    w.close()

            async def go(k: int) -> None:
                for i in range(0, k, 50):
                    await asyncio.gather(*(one() for _ in range(min(50, k - i))))

            asyncio.run(go(min(200, n)))  # warm up
            base = proc_status_kb(srv.pid, "VmRSS") / 1024
            asyncio.run(go(n))
            time.sleep(0.5)
            growth = proc_status_kb(srv.pid, "VmRSS") / 1024 - base
            alive = srv.proc is not None and srv.proc.poll() is None and bool(srv.status()["enode"])
            return alive, growth, f"{n:,} mutated auth streams"
        finally:
            srv.stop()


def fault_fuzz(n: int, sockets: int) -> Outcome:
    t0 = time.perf_counter()
    done, bad, growth = fuzz_inprocess(n)
    alive, sgrowth, note = fuzz_sockets(sockets)
    ok = not bad and growth < RSS_GROWTH_LIMIT_MB and alive and sgrowth < RSS_GROWTH_LIMIT_MB
    detail = (f"{done:,} in-process inputs: {len(bad)} decoders raised unexpected exceptions, RSS "
              f"+{growth:.1f} MB; {note}: server {'up' if alive else 'DOWN'}, RSS +{sgrowth:.1f} MB")
    if bad:
        detail += "; " + "; ".join(f"{k}: {v}" for k, v in bad.items())[:400]
    return Outcome("fuzz", ok, detail, time.perf_counter() - t0)


FAULTS = ["kill9", "diskfull", "halfopen", "peers", "fuzz"]
ON_REQUEST = ["powercut"]  # too long for the default run: --only powercut


def fault_powercut(cuts: int, control_cuts: int) -> Outcome:
    from bench.powercut.run import fault_powercut as run_powercut

    held, detail, lines = run_powercut(cuts, control_cuts)
    if lines:
        print("\n".join(["# power-cut summary", *lines]), flush=True)
    return Outcome("powercut", held, detail)


def run_faults(short: bool, only: list[str] | None = None, cuts: int | None = None,
               control_cuts: int | None = None) -> list[Outcome]:
    chosen = only or FAULTS
    out: list[Outcome] = []
    for name in chosen:
        t0 = time.perf_counter()
        try:
            if name == "kill9":
                o = fault_kill9(3 if short else 100)
            elif name == "diskfull":
                o = fault_diskfull()
            elif name == "halfopen":
                o = fault_halfopen(100 if short else 1000)
            elif name == "peers":
                o = fault_peers(20 if short else 200, 4 if short else 20)
            elif name == "fuzz":
                o = fault_fuzz(20_000 if short else 1_000_000, 200 if short else 2000)
            elif name == "powercut":
                o = fault_powercut(cuts or (3 if short else 30), control_cuts or (2 if short else 8))
            else:
                raise ValueError(f"unknown fault {name!r} (choose from {', '.join(FAULTS)})")
        except Exception as exc:
            o = Outcome(name, False, f"the fault run itself failed: {type(exc).__name__}: {exc}"[:300])
        o.seconds = time.perf_counter() - t0
        out.append(o)
        verdict = "not run" if o.held is None else "held" if o.held else "FAILED"
        print(f"# {name}: {verdict} ({o.seconds:.1f} s)", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import logging

    logging.basicConfig(level=logging.ERROR)
    ap = argparse.ArgumentParser(prog="python -m bench.faults")
    ap.add_argument("--short", action="store_true", help="the CI-sized version of each fault")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(FAULTS + ON_REQUEST)} "
                    f"({', '.join(ON_REQUEST)} only when named)")
    ap.add_argument("--cuts", type=int, help="powercut: cuts with the default config (default 30)")
    ap.add_argument("--control-cuts", type=int,
                    help='powercut: cuts with synchronous = "normal" (default 8)')
    a = ap.parse_args(argv)
    only = [x.strip() for x in a.only.split(",")] if a.only else None
    if only and (bad := [x for x in only if x not in FAULTS + ON_REQUEST]):
        ap.error(f"unknown fault {', '.join(bad)} (choose from {', '.join(FAULTS + ON_REQUEST)})")
    for flag, value in (("--cuts", a.cuts), ("--control-cuts", a.control_cuts)):
        if value is not None and value < 1:
            ap.error(f"{flag} must be at least 1")
    rows = run_faults(a.short, only, a.cuts, a.control_cuts)
    print_outcomes(rows)
    return 0 if all(r.held is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
