"""The load generator: several processes posting to one server as relaying peers do.

``Generator(link)`` starts ``link.procs`` processes (multiprocessing, spawn); each opens
``link.conns`` RLPx connections of its own (pimail.whisper.client, shh/6 or waku) and keeps them
for every phase, as relaying peers stay connected. ``run(plan)`` is one phase: each process seals
its share of the envelopes before the timed phase (on a thread, so its connections stay alive) and
reports ready; the parent then releases them all at once. Each connection forwards the way a
relaying peer does: it sends its packets without waiting for acknowledgements and counts Batch
Acks as they come back, recording post-to-ack latency per packet. Two guards keep it an honest
load and not a flood:

* at most ``plan.max_in_flight`` packets per connection unacknowledged (pimail disconnects a peer
  with 64 batches waiting on the archive); a connection at the cap waits, and the waits are counted
  (``in_flight_waits``): then the server's acks are what sets the pace;
* with ``plan.rate`` set, packets leave on a schedule (one packet per connection per
  ``cycle_s`` transmission cycle, as geth's 300 ms relay cycle does) instead of back to back.

A server that sends no acks (go-ethereum 1.8) is timed to the Pong of a devp2p Ping sent after
each connection's last packet: it answers only once it has read everything before it.

What the server relays back to the posting peers (everything the other connections posted: they
are full nodes) is read off the socket and dropped undecoded: a relay that holds those envelopes
already spends nothing on them, and the generator's CPU goes to posting.

Envelope ``i`` of a phase goes to connection ``i mod (procs × conns)``, so a phase posts exactly
``plan.n`` distinct envelopes; its sent time is ``plan.first_sent + i // plan.per_second``.
Everything is bounded: connect, ready and each phase have timeouts, and the parent terminates
any worker still alive at the end. 127.0.0.1 (or whatever the enode names) only.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import queue
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

TTL = 3600
TOPIC = b"\xbe\x4c\x00\x01"
POW_TARGET = 0.000002  # pimail's (and status-go's) default min_pow
SENT_PER_SECOND = 2000  # sent times rise by one second every this many envelopes
BATCH = 50  # envelopes per Messages packet when posting flat out
MAX_IN_FLIGHT = 48  # unacknowledged packets per connection (pimail drops a peer at 64)
CYCLE_S = 0.3  # geth transmissionCycle: a relaying peer sends each peer one packet per cycle
MAX_PACKET_ENVELOPES = 2000  # ~600 KB: a paced packet stays well under a 1 MiB message limit
READY_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class GenPlan:
    """What to post, how, and to whom."""

    enode: str
    n: int
    procs: int = 4
    conns: int = 1  # per process
    first_sent: int = 0  # sent time of envelope 0 (0: chosen so that the last one is "now")
    per_second: int = SENT_PER_SECOND
    per_packet: int = BATCH  # flat out; a paced run sizes its packets from the rate
    rate: float | None = None  # envelopes/s over all connections; None = as fast as accepted
    cycle_s: float = CYCLE_S
    want_acks: bool = True
    max_in_flight: int = MAX_IN_FLIGHT
    protocol: str = "auto"
    salt: bytes = b""  # makes the run's envelopes distinct from every other run's
    timeout_s: float = 300.0  # the timed phase

    @property
    def total_conns(self) -> int:
        return self.procs * self.conns

    def sent_range(self) -> tuple[int, int]:
        return self.first_sent, self.first_sent + (self.n - 1) // self.per_second

    def packet_size(self) -> int:
        """Envelopes per packet: ``per_packet`` flat out; a paced run sends one cycle's worth."""
        if self.rate is None:
            return max(1, self.per_packet)
        per_conn = self.rate / self.total_conns
        return max(1, min(MAX_PACKET_ENVELOPES, round(per_conn * self.cycle_s)))


def connection_indices(n: int, conn: int, total_conns: int) -> range:
    """The envelope indices one connection posts: every ``total_conns``-th, from ``conn``."""
    return range(conn, n, total_conns)


def chunk_sizes(count: int, per_packet: int) -> list[int]:
    """How ``count`` envelopes split into packets of at most ``per_packet``."""
    full, rest = divmod(count, per_packet)
    return [per_packet] * full + ([rest] if rest else [])


@dataclass
class ConnReport:
    """What one connection did in the timed phase (monotonic clock, comparable across processes)."""

    sent: int = 0
    raw_bytes: int = 0  # of the envelopes sent
    acked: int = 0
    packets: int = 0
    first_send: float = 0.0
    last_send: float = 0.0
    last_ack: float = 0.0
    drained: float = 0.0  # without acks: the Pong after the last packet came back
    in_flight_waits: int = 0
    late_packets: int = 0  # paced: packets that left more than one cycle behind schedule
    relayed_bytes: int = 0  # what the server relayed to us, dropped unread
    latencies: list[float] = field(default_factory=list)  # per acknowledged packet, seconds
    latency_weights: list[int] = field(default_factory=list)  # envelopes in that packet
    closed: str = ""  # why the connection ended early, if it did


@dataclass
class WorkerReport:
    index: int
    seal_s: float = 0.0
    cpu_s: float = 0.0  # this process's CPU-seconds in the timed phase
    conns: list[ConnReport] = field(default_factory=list)


@dataclass
class GenResult:
    """The whole run, from the parent's side."""

    plan: GenPlan
    start: float  # when the workers were released
    end: float  # when the last worker reported
    workers: list[WorkerReport]

    @property
    def conns(self) -> list[ConnReport]:
        return [c for w in self.workers for c in w.conns]

    @property
    def sent(self) -> int:
        return sum(c.sent for c in self.conns)

    @property
    def acked(self) -> int:
        return sum(c.acked for c in self.conns)

    @property
    def raw_bytes(self) -> int:
        return sum(c.raw_bytes for c in self.conns)

    @property
    def generator_cpu_s(self) -> float:
        return sum(w.cpu_s for w in self.workers)

    @property
    def seal_s(self) -> float:
        return max((w.seal_s for w in self.workers), default=0.0)

    @property
    def in_flight_waits(self) -> int:
        return sum(c.in_flight_waits for c in self.conns)

    @property
    def late_packets(self) -> int:
        return sum(c.late_packets for c in self.conns)

    @property
    def relayed_bytes(self) -> int:
        return sum(c.relayed_bytes for c in self.conns)

    @property
    def closed(self) -> list[str]:
        return [c.closed for c in self.conns if c.closed]

    def seconds(self) -> float:
        """From release to the last ack (without acks: to the Pong after the last packet)."""
        ends = [c.last_ack if self.plan.want_acks else (c.drained or c.last_send) for c in self.conns]
        return max(max(ends, default=self.start) - self.start, 1e-9)

    def latencies(self) -> list[tuple[float, int]]:
        return [(lat, w) for c in self.conns for lat, w in zip(c.latencies, c.latency_weights, strict=True)]


# -- the worker process ----------------------------------------------------------------------------


def seal_indices(plan: GenPlan, indices: range) -> list[bytes]:
    """Envelopes ``indices`` of the run, meeting both PoW formulas at POW_TARGET."""
    from pimail.envelope.seal import seal

    raws = []
    for i in indices:
        sent = plan.first_sent + i // plan.per_second
        data = plan.salt + i.to_bytes(8, "big") + bytes(200 + i % 80)
        res = seal(sent + TTL, TTL, TOPIC, data, POW_TARGET, work_time_s=5.0)
        if not res.met:
            raise RuntimeError(f"could not seal envelope {i} at PoW {POW_TARGET}")
        raws.append(res.envelope.raw)
    return raws


def _packets(plan: GenPlan, conn: int) -> list[tuple[bytes, bytes, int, int]]:
    """(payload, keccak of payload, envelopes, their raw bytes) for every packet of one connection,
    built up front."""
    from pimail.crypto.keccak import keccak256
    from pimail.envelope.codec import encode_envelope_list

    raws = seal_indices(plan, connection_indices(plan.n, conn, plan.total_conns))
    out = []
    off = 0
    for size in chunk_sizes(len(raws), plan.packet_size()):
        chunk = raws[off:off + size]
        payload = encode_envelope_list(chunk)
        out.append((payload, keccak256(payload), size, sum(len(r) for r in chunk)))
        off += size
    return out


def _all_packets(plan: GenPlan, conns: list[int]) -> dict[int, list[tuple[bytes, bytes, int, int]]]:
    return {c: _packets(plan, c) for c in conns}


class _Drop:
    """Stands in for the client core's Messages handler: relayed packets are counted, not decoded."""

    def __init__(self) -> None:
        self.bytes = 0

    def __call__(self, rp: object, payload: bytes) -> None:
        self.bytes += len(payload)


async def _until(what: Any, peer: Any, deadline: float) -> None:
    """Await ``what`` unless the connection closes or the deadline passes first (then raise)."""
    task = asyncio.ensure_future(what)
    closed = asyncio.ensure_future(peer.closed_event.wait())
    try:
        await asyncio.wait({task, closed}, timeout=max(0.0, deadline - time.monotonic()),
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        closed.cancel()
    if not task.done():
        task.cancel()
        raise ConnectionError("closed") if peer.closed else TimeoutError("no ack in time")
    task.result()


async def _drive(plan: GenPlan, conn: int, session: Any, packets: list[tuple[bytes, bytes, int, int]],
                 drop: _Drop, start: float) -> ConnReport:
    from pimail.whisper import status as st

    rep = ConnReport()
    peer = session.peer
    capability = session.whisper.chosen(peer)
    pending: dict[bytes, tuple[float, int]] = {}
    slots = asyncio.Semaphore(plan.max_in_flight)
    all_acked = asyncio.Event()

    class Acks:
        def on_batch_ack(self, who: object, h: bytes) -> None:
            got = pending.pop(h, None) if who is peer else None
            if got is None:
                return
            now = time.monotonic()
            rep.acked += got[1]
            rep.last_ack = now
            rep.latencies.append(now - got[0])
            rep.latency_weights.append(got[1])
            slots.release()
            if not pending:
                all_acked.set()

    listener = Acks()
    session.whisper.listeners.append(listener)
    relayed0 = drop.bytes
    interval = 0.0
    if plan.rate is not None:
        interval = plan.packet_size() / (plan.rate / plan.total_conns)
    offset = interval * conn / plan.total_conns  # staggered, as independent relays would be
    deadline = start + plan.timeout_s
    try:
        for k, (payload, h, count, nbytes) in enumerate(packets):
            if plan.rate is not None:
                due = start + offset + k * interval
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                elif -wait > plan.cycle_s:
                    rep.late_packets += 1
            if plan.want_acks:
                if slots.locked():
                    rep.in_flight_waits += 1
                await _until(slots.acquire(), peer, deadline)
                all_acked.clear()
            now = time.monotonic()
            if plan.want_acks:
                pending[h] = (now, count)
            if not rep.packets:
                rep.first_send = now
            await peer.send_wait(capability, st.MESSAGES, payload)
            rep.packets += 1
            rep.sent += count
            rep.raw_bytes += nbytes
            rep.last_send = time.monotonic()
        if plan.want_acks and pending:
            await _until(all_acked.wait(), peer, deadline)
        elif not plan.want_acks and rep.packets:
            # no acks: the Pong to a Ping sent after the last packet says the server has read
            # them all (go-ethereum hands each message to Whisper before reading the next)
            if await peer.round_trip(max(0.1, deadline - time.monotonic())):
                rep.drained = time.monotonic()
            else:
                rep.closed = "no Pong after the last packet in time"
    except (TimeoutError, ConnectionError, OSError) as exc:
        rep.closed = peer.close_reason or f"{type(exc).__name__}: {exc}"
    finally:
        session.whisper.listeners.remove(listener)
    rep.relayed_bytes = drop.bytes - relayed0
    return rep


@dataclass(frozen=True)
class Link:
    """What the generator's connections are: to whom, how many, in which protocol."""

    enode: str
    procs: int = 4
    conns: int = 1  # per process
    protocol: str = "auto"
    # True: relaying peers (full nodes: the server forwards them what the others post);
    # False: posting clients, as phones are (an empty bloom: nothing is relayed to them)
    live: bool = True

    def matches(self, plan: GenPlan) -> bool:
        return (plan.enode, plan.procs, plan.conns, plan.protocol) == (
            self.enode, self.procs, self.conns, self.protocol)


async def _worker_async(link: Link, index: int, inbox: Any, out: Any) -> None:
    from pimail.crypto.keys import Enode
    from pimail.mailserver.client import client_whisper_config
    from pimail.whisper.client import client_session

    loop = asyncio.get_running_loop()

    async def command() -> Any:
        return await loop.run_in_executor(None, inbox.get, True, READY_TIMEOUT_S)

    conns = [index * link.conns + j for j in range(link.conns)]
    enode = Enode.parse(link.enode)
    async with contextlib.AsyncExitStack() as stack:
        sessions, drops = {}, {}
        for c in conns:
            s = await stack.enter_async_context(client_session(enode, client_whisper_config(), timeout=30,
                                                               protocol=link.protocol, live=link.live))
            drops[c] = _Drop()
            s.whisper.core.receive_messages = drops[c]  # type: ignore[method-assign]
            sessions[c] = s
        out.put(("connected", index, None))
        while True:
            what, plan = await command()
            if what == "stop":
                return
            report = WorkerReport(index)
            t0 = time.perf_counter()
            # sealed on a thread: the loop keeps answering pings and reading what the server relays
            # (status-go drops a peer whose socket it cannot write for 20 s)
            packets = await loop.run_in_executor(None, _all_packets, plan, conns)
            report.seal_s = time.perf_counter() - t0
            out.put(("ready", index, None))
            what, _ = await command()
            if what != "go":
                return
            start = time.monotonic()
            cpu0 = time.process_time()
            report.conns = list(await asyncio.gather(
                *(_drive(plan, c, sessions[c], packets[c], drops[c], start) for c in conns)))
            report.cpu_s = time.process_time() - cpu0
            out.put(("done", index, report))


def _worker_main(link: Link, index: int, inbox: Any, out: Any) -> None:
    import logging

    logging.basicConfig(level=logging.ERROR)
    try:
        asyncio.run(_worker_async(link, index, inbox, out))
    except BaseException:
        out.put(("error", index, traceback.format_exc(limit=8)))


class GeneratorError(RuntimeError):
    """A worker failed (its traceback is the message) or a phase did not finish in time."""


def default_first_sent(n: int, per_second: int = SENT_PER_SECOND) -> int:
    """Sent time of envelope 0 such that the last one is now, as on a busy network."""
    return int(time.time()) - (n - 1) // per_second


class Generator:
    """The worker processes and their connections, kept across phases.

    A fresh full-bloom peer is pushed the server's whole relay pool at once, which status-go and
    go-ethereum cannot send past 16 MB (about 50,000 envelopes): they drop the connection. So
    relaying peers (``link.live``) are connected before the pool fills, and posting clients
    connected later ask for nothing relayed. ``with Generator(link) as g: g.run(plan)``."""

    def __init__(self, link: Link) -> None:
        self.link = link
        ctx = mp.get_context("spawn")
        self._out: Any = ctx.Queue()
        self._inboxes: list[Any] = [ctx.Queue() for _ in range(link.procs)]
        self._procs = [ctx.Process(target=_worker_main, args=(link, i, self._inboxes[i], self._out),
                                   daemon=True, name=f"loadgen-{i}") for i in range(link.procs)]

    def __enter__(self) -> Generator:
        for p in self._procs:
            p.start()
        try:
            self._wait_for("connected", READY_TIMEOUT_S)
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def run(self, plan: GenPlan, on_start: Any = None, on_end: Any = None) -> GenResult:
        """One phase; ``on_start()`` is called right before the release, ``on_end()`` right after the
        last worker reported (the caller reads the server's CPU there)."""
        if not self.link.matches(plan):
            raise ValueError("the plan is for other connections than this generator's")
        if plan.n < plan.total_conns:
            raise ValueError(f"{plan.n} envelopes cannot feed {plan.total_conns} connections")
        if not plan.salt or not plan.first_sent:
            raise ValueError("a plan needs its salt and first_sent (new_plan)")
        for box in self._inboxes:
            box.put(("phase", plan))
        self._wait_for("ready", READY_TIMEOUT_S)
        if on_start is not None:
            on_start()
        start = time.monotonic()
        for box in self._inboxes:
            box.put(("go", None))
        reports = self._wait_for("done", plan.timeout_s + 60.0)
        end = time.monotonic()
        if on_end is not None:
            on_end()
        return GenResult(plan, start, end, [r for _, r in sorted(reports.items())])

    def close(self) -> None:
        for box in self._inboxes:
            with contextlib.suppress(Exception):
                box.put(("stop", None))
        for p in self._procs:
            if p.pid is not None:
                p.join(15)
        for p in self._procs:
            if p.is_alive():
                p.terminate()
                p.join(5)

    def _wait_for(self, kind: str, timeout: float) -> dict[int, Any]:
        got: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(got) < len(self._procs):
            left = deadline - time.monotonic()
            if left <= 0:
                raise GeneratorError(f"{len(self._procs) - len(got)} of {len(self._procs)} generator "
                                     f"processes not {kind} in {timeout:.0f} s")
            try:
                what, index, item = self._out.get(timeout=min(left, 1.0))
            except queue.Empty:
                dead = [p.name for p in self._procs if not p.is_alive()]
                if dead:
                    raise GeneratorError(f"generator process(es) {', '.join(dead)} died") from None
                continue
            if what == "error":
                raise GeneratorError(f"generator process {index} failed:\n{item}")
            if what == kind:
                got[index] = item
        return got


def run_generator(plan: GenPlan, on_start: Any = None, on_end: Any = None) -> GenResult:
    """One phase on connections of its own."""
    if plan.n < plan.total_conns:
        raise ValueError(f"{plan.n} envelopes cannot feed {plan.total_conns} connections")
    with Generator(Link(plan.enode, plan.procs, plan.conns, plan.protocol)) as gen:
        return gen.run(plan, on_start, on_end)


def new_plan(enode: str, n: int, **kw: Any) -> GenPlan:
    """A plan with a fresh salt and sent times ending now."""
    per_second = kw.get("per_second", SENT_PER_SECOND)
    return GenPlan(enode, n, salt=os.urandom(8), first_sent=default_first_sent(n, per_second), **kw)
