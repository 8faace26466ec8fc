"""``Discovery``: the table, the transport and the node database, and the loops that keep them fresh.

Start: open the node database, sign the local record (its sequence number is kept in the database
and bumped whenever the address in it changes), bind the UDP socket, then bond with the bootnodes
and the database's seeds. After that, one lookup at a time as ``pimail.discovery.schedule``
decides: a refresh (self-lookup and a random one) at once and every ``refresh_interval_s``, and
while buckets near us have room, self-lookups and lookups aimed at those buckets every
``lookup_interval_s``, each backing off (up to the refresh interval) while it finds nothing new;
a random lookup when the dialler runs out of candidates. Also one revalidation Ping every
``revalidate_interval_s``, and every node that answered a Ping (table entry, replacement or
neither: a full bucket forgets, the database keeps) written to the database every
``persist_interval_s`` and at stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pimail.config import DiscoveryConfig
from pimail.crypto.keccak import keccak256
from pimail.crypto.keys import Enode, NodeKey
from pimail.discovery.enr import Record
from pimail.discovery.nodedb import MAX_ROWS, NodeDB
from pimail.discovery.schedule import (
    AIM_SLICE,
    AIMED,
    RANDOM,
    REFRESH,
    LookupSchedule,
    Plan,
    TableState,
    aim_tries,
    target_in_bucket,
)
from pimail.discovery.table import BUCKET_SIZE, Node, Table, distance
from pimail.discovery.udp import Network, UDPTransport

log = logging.getLogger(__name__)

ALPHA = 3  # discv4.md lookup concurrency
SEED_COUNT = 30  # geth seedCount
MAX_LOOKUP_QUERIES = 64  # a lookup gives up after asking this many nodes
PROVE_PER_ROUND = 32  # unproven entries pinged after each lookup


class Discovery:
    """One discv4 node: ``await start()``, then ``candidates()`` for the dialler; ``await stop()``."""

    def __init__(
        self,
        key: NodeKey,
        config: DiscoveryConfig,
        *,
        listen: tuple[str, int],
        tcp_port: int,
        data_dir: Path | None,
        bootnodes: Sequence[Enode] = (),
        netrestrict: Sequence[Network] = (),
        public_host: str = "",
    ) -> None:
        self.key = key
        self.config = config
        self.listen = listen
        self.tcp_port = tcp_port
        self.bootnodes = [Node(e.pubkey, e.host or "", e.port or 0, e.port or 0) for e in bootnodes
                          if e.host and e.port and e.node_id != key.node_id]
        self.public_host = public_host
        self.table = Table(key.node_id)
        self.db = NodeDB.in_dir(data_dir) if data_dir is not None else None
        self.transport = UDPTransport(key, config, self.table, self.record, netrestrict=netrestrict)
        self.transport.on_verified = self._verified
        self.udp_port = 0
        self._record: Record | None = None
        self._seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._lookup_wake = asyncio.Event()
        self.schedule = LookupSchedule(fast_s=config.lookup_interval_s, refresh_s=config.refresh_interval_s,
                                       live_target=config.table_target)
        self._rng = random.Random()  # lookup targets need no secrecy
        # nodes that answered since the last database write, at most the database's size
        self._unsaved: OrderedDict[bytes, Node] = OrderedDict()
        self.counters: dict[str, int] = {"lookups": 0, "lookups_aimed": 0, "aim_failed": 0,
                                         "revalidations": 0, "revalidation_failed": 0, "record_updates": 0}

    # -- the local record --------------------------------------------------------------------------
    def _advertised_ip(self) -> str:
        if self.public_host:
            return self.public_host
        learned = self.transport.external.ip
        if learned:
            return learned
        host = self.listen[0]
        return "" if host in ("0.0.0.0", "::", "") else host

    def record(self) -> Record:
        """The signed local record, re-signed with a new sequence number when the address moved."""
        ip = self._advertised_ip()
        current = self._record
        if current is not None and current.ip == ip and current.udp == self.udp_port:
            return current
        self._seq += 1
        try:
            self._record = Record.create(self.key.private, self._seq, ip=ip if ":" not in ip else "",
                                         tcp=self.tcp_port, udp=self.udp_port)
        except ValueError:
            self._record = Record.create(self.key.private, self._seq, tcp=self.tcp_port, udp=self.udp_port)
        if current is not None:
            self.counters["record_updates"] += 1
            log.info("discovery: local record now seq %d (%s)", self._seq, ip or "no ip")
            if self.db is not None:
                asyncio.get_running_loop().create_task(self._save_seq())
        return self._record

    async def _save_seq(self) -> None:
        if self.db is not None:
            with contextlib.suppress(Exception):
                await self.db.set_meta("local_seq", str(self._seq))

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        seeds: list[Node] = []
        if self.db is not None:
            await self.db.open()
            stored = await self.db.get_meta("local_seq")
            # a restart signs a fresh record: the stored seq keeps it newer than any copy out there
            self._seq = int(stored) if stored and stored.isdigit() else int(time.time())
            seeds = await self.db.seeds(SEED_COUNT)
        self.udp_port = await self.transport.start(*self.listen)
        self.record()
        if self.db is not None:
            await self.db.set_meta("local_seq", str(self._seq))
        now = time.time()
        for node in [*self.bootnodes, *seeds]:
            self.table.add_seen(node, now)
        log.info("discovery listening on udp %s:%d (%d bootnodes, %d seeds from the node database)",
                 self.listen[0], self.udp_port, len(self.bootnodes), len(seeds))
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._lookup_loop(), name="discovery-lookup"),
            loop.create_task(self._revalidate_loop(), name="discovery-revalidate"),
            loop.create_task(self._persist_loop(), name="discovery-persist"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []
        with contextlib.suppress(Exception):
            await self._persist()
        self.transport.close()
        if self.db is not None:
            await self.db.close()

    # -- what the dialler reads ---------------------------------------------------------------------
    def candidates(self, count: int) -> list[Enode]:
        """Up to ``count`` table entries with a TCP port, verified ones first, as enode URLs."""
        nodes = self.table.random_nodes(len(self.table))
        nodes.sort(key=lambda n: (not self.transport.verified(n.node_id, n.ip), -n.live_checks))
        return [Enode(n.pubkey, n.ip, n.tcp) for n in nodes if n.tcp][:count]

    def want_more(self) -> None:
        """The dialler ran out of candidates: look up now rather than at the next interval."""
        self._lookup_wake.set()

    def snapshot(self) -> dict[str, Any]:
        rec = self._record
        return {
            "enabled": True,
            "udp_port": self.udp_port,
            "table_size": len(self.table),
            "verified": sum(1 for n in self.table.nodes() if self.transport.verified(n.node_id, n.ip)),
            "external_ip": self.transport.external.ip,
            "enr": rec.text() if rec else "",
            "enr_seq": rec.seq if rec else 0,
            "packets": dict(self.transport.counters),
            "counters": {**self.counters, **self.table.counters},
        }

    # -- events from the transport --------------------------------------------------------------------
    def _verified(self, node: Node) -> None:
        if self.db is not None:
            self._unsaved.pop(node.node_id, None)
            self._unsaved[node.node_id] = node
            while len(self._unsaved) > MAX_ROWS:
                self._unsaved.popitem(last=False)
        if not self.table.add_verified(node, time.time()):
            existing = self.table.get(node.node_id)
            if existing is not None:
                self.table.mark_live(existing)

    # -- lookups ------------------------------------------------------------------------------------
    async def lookup(self, target: bytes) -> list[Node]:
        """Iterative Kademlia lookup of ``target`` (a 64-byte key): the closest nodes found."""
        self.counters["lookups"] += 1
        target_id = keccak256(target)
        seen: dict[bytes, Node] = {n.node_id: n for n in self.table.closest(target_id, BUCKET_SIZE)}
        asked: set[bytes] = set()
        failed: set[bytes] = set()
        now = time.time()

        async def ask(node: Node) -> list[Node]:
            try:
                return await self.transport.findnode(node, target)
            except (TimeoutError, ConnectionError, OSError):
                failed.add(node.node_id)
                return []

        while len(asked) < MAX_LOOKUP_QUERIES:
            closest = sorted(seen.values(), key=lambda n: distance(n.node_id, target_id))[:BUCKET_SIZE]
            batch = [n for n in closest if n.node_id not in asked][:ALPHA]
            if not batch:
                break
            asked.update(n.node_id for n in batch)
            results = await asyncio.gather(*(ask(n) for n in batch))
            for found in results:
                for n in found:
                    if n.node_id not in seen and n.node_id != self.key.node_id:
                        seen[n.node_id] = n
                        self.table.add_seen(n, now)
        good = [n for n in seen.values() if n.node_id not in failed]
        return sorted(good, key=lambda n: distance(n.node_id, target_id))[:BUCKET_SIZE]

    async def _lookup_loop(self) -> None:
        await self._bond_all()
        while True:
            if self._lookup_wake.is_set():
                self._lookup_wake.clear()
                self.schedule.want_more()
            at, plan = self.schedule.next(self._state(), time.monotonic())
            delay = at - time.monotonic()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._lookup_wake.wait(), delay)
                continue  # plan again: the dialler may have asked, the table may have changed
            if not len(self.table):
                for node in self.bootnodes:
                    self.table.add_seen(node, time.time())
                await self._bond_all()
            before = self._state()
            try:
                await self._run(plan)
            except Exception:
                log.exception("discovery lookup failed")
            self.schedule.finished(plan, before, self._state(), time.monotonic())

    def _state(self) -> TableState:
        return TableState(self.table.bucket_sizes(), self.transport.verified_count())

    async def _run(self, plan: Plan) -> None:
        """One planned lookup, then Pings for the entries it brought that never answered us."""
        if plan.kind == AIMED:
            target = await self._aimed_target(plan.distance)
            if target is None:
                self.counters["aim_failed"] += 1
                return
            self.counters["lookups_aimed"] += 1
            await self.lookup(target)
        elif plan.kind == RANDOM:
            await self.lookup(os.urandom(64))
        elif plan.kind == REFRESH:
            await self.lookup(self.key.public)
            await self.lookup(os.urandom(64))
        else:
            await self.lookup(self.key.public)
        await self._prove_new_entries()

    async def _aimed_target(self, distance: int) -> bytes | None:
        """A target in bucket ``distance``, drawn in slices that let the event loop run between."""
        left = aim_tries(distance)
        while left > 0:
            found = target_in_bucket(self.key.node_id, distance, self._rng, min(AIM_SLICE, left))
            if found is not None:
                return found
            left -= AIM_SLICE
            await asyncio.sleep(0)
        return None

    def unsaved_ids(self) -> set[bytes]:
        """Nodes that answered since the last node-database write (written at the next one)."""
        return set(self._unsaved)

    async def _prove_new_entries(self) -> None:
        """Ping up to ``PROVE_PER_ROUND`` entries learned from Neighbors that never answered us, so
        the table holds live nodes; the silent ones give their place to a replacement."""
        unproven = [n for n in self.table.nodes() if not self.transport.verified(n.node_id, n.ip)]

        async def prove(node: Node) -> None:
            try:
                await self.transport.ping(node)
            except (TimeoutError, ConnectionError, OSError):
                self.table.replace(node)
            else:
                self.table.mark_live(node)

        await asyncio.gather(*(prove(n) for n in unproven[:PROVE_PER_ROUND]))

    async def _bond_all(self) -> None:
        nodes = list(self.table.nodes())

        async def bond(node: Node) -> None:
            try:
                await self.transport.ensure_bond(node)
            except (TimeoutError, ConnectionError, OSError):
                self.table.replace(node)

        await asyncio.gather(*(bond(n) for n in nodes))

    async def _revalidate_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.revalidate_interval_s)
            node = self.table.revalidation_candidate()
            if node is None:
                continue
            self.counters["revalidations"] += 1
            try:
                await self.transport.ping(node)
            except (TimeoutError, ConnectionError, OSError):
                self.counters["revalidation_failed"] += 1
                self.table.replace(node)
            else:
                self.table.mark_live(node)

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.persist_interval_s)
            try:
                await self._persist()
            except Exception as exc:
                log.warning("discovery: cannot write the node database: %s", exc)

    async def _persist(self) -> None:
        if self.db is None:
            return
        # every node that answered us, in the table or not (geth's nodedb keeps each Pong): a
        # restart then has more seeds than one table's worth
        known = {n.node_id: n for n in [*self.table.nodes(), *self.table.replacement_nodes()]}
        known.update(self._unsaved)
        self._unsaved = OrderedDict()
        rows = [(n, self.transport.last_pong(n.node_id)) for n in known.values()]
        rows = [(n, t) for n, t in rows if t > 0]
        if rows:
            await self.db.save(rows)
