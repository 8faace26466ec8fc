"""The dial scheduler: one loop that keeps the node meshed, with explicit slot accounting.

Slots (``[node]``): of ``max_peers``, at most ``dial_share`` are peers we dialled, and the last
``reserved_slots`` are never dialled at all: only an inbound LAN address, a paired or allowed client
or a trusted peer may take them (``NodeServer.admit``), so a phone always gets in. Static peers are
kept by ``NodeServer`` itself and are not counted here. Candidates come from discovery; a candidate
that failed waits out an exponential backoff, and one that offered no shared capability (no shh/6,
no waku) is not redialled for ``useless_retry_s`` (geth p2p/dial.go follows the same shape: one
loop, a history of recent dials, and counts of free slots).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pimail.config import NodeConfig
from pimail.crypto.keys import Enode

if TYPE_CHECKING:
    from pimail.node.server import NodeServer

log = logging.getLogger(__name__)

MAX_HISTORY = 4096  # remembered failures and useless peers
MAX_CONCURRENT_DIALS = 8  # geth defaultMaxPendingPeers is 50; a Pi dials a handful at a time


def is_useless_failure(reason: str) -> bool:
    """Did a dial end because the peer shares no capability with us (either side said so)?"""
    return "no shared capability" in reason or "useless_peer" in reason


def dial_slots(config: NodeConfig) -> int:
    """How many peers the scheduler may have dialled at once."""
    share = max(1, int(config.max_peers * config.dial_share))
    return max(0, min(share, config.max_peers - config.reserved_slots))


class DialScheduler:
    """Dials candidates until the dialled slots are full; ``start()``/``stop()``."""

    def __init__(
        self,
        server: NodeServer,
        config: NodeConfig,
        candidates: Callable[[int], list[Enode]],
        *,
        want_more: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.server = server
        self.config = config
        self._candidates = candidates
        self._want_more = want_more
        self._clock = clock
        self._dialing: dict[bytes, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # every dial, also those now watching a peer
        self._dialled: set[bytes] = set()  # node ids of connected peers we dialled
        self._backoff: OrderedDict[bytes, tuple[int, float]] = OrderedDict()  # id → (failures, until)
        self._useless: OrderedDict[bytes, float] = OrderedDict()  # id → retry after
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.counters: dict[str, int] = {"dials": 0, "dial_failures": 0, "useless_skipped": 0,
                                         "backoff_skipped": 0}

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="dial-scheduler")

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None
        self._dialing.clear()
        self._tasks.clear()

    def wake(self) -> None:
        self._wake.set()

    # -- accounting -------------------------------------------------------------------------------
    @property
    def max_dialled(self) -> int:
        return dial_slots(self.config)

    def dialled_peers(self) -> int:
        connected = {p.node_id for p in self.server.peers}
        self._dialled &= connected
        return len(self._dialled)

    def free_slots(self) -> int:
        total_room = self.config.max_peers - self.config.reserved_slots - len(self.server.peers)
        dial_room = self.max_dialled - self.dialled_peers()
        return max(0, min(total_room, dial_room) - len(self._dialing))

    def snapshot(self) -> dict[str, int]:
        return {"dialled": self.dialled_peers(), "max_dialled": self.max_dialled,
                "dialing": len(self._dialing),
                "useless_remembered": len(self._useless), **self.counters}

    # -- the loop -----------------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            try:
                self._schedule()
            except Exception:
                log.exception("dial scheduler")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.config.dial_interval_s)
            self._wake.clear()

    def _schedule(self) -> None:
        free = min(self.free_slots(), MAX_CONCURRENT_DIALS - len(self._dialing))
        if free <= 0:
            return
        now = self._clock()
        connected = {p.node_id for p in self.server.peers}
        started = 0
        for enode in self._candidates(free * 4):
            if started >= free:
                break
            nid = enode.node_id
            if nid in connected or nid in self._dialing or nid == self.server.key.node_id:
                continue
            if self.server.is_static(nid):
                continue
            until = self._useless.get(nid)
            if until is not None:
                if now < until:
                    self.counters["useless_skipped"] += 1
                    continue
                del self._useless[nid]
            failed = self._backoff.get(nid)
            if failed is not None and now < failed[1]:
                self.counters["backoff_skipped"] += 1
                continue
            task = asyncio.get_running_loop().create_task(self._dial(enode), name=f"dial-{nid[:4].hex()}")
            self._dialing[nid] = task
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            started += 1
        if started < free and self._want_more is not None:
            self._want_more()

    async def _dial(self, enode: Enode) -> None:
        nid = enode.node_id
        self.counters["dials"] += 1
        try:
            peer = await self.server.connect(enode)
        except (OSError, TimeoutError, ConnectionError, ValueError) as exc:
            self.counters["dial_failures"] += 1
            self._failed(nid, str(exc))
            return
        finally:
            self._dialing.pop(nid, None)
            self._wake.set()
        self._backoff.pop(nid, None)
        if peer.inbound:  # they dialled us first; the slot is theirs
            return
        self._dialled.add(nid)
        await peer.closed_event.wait()
        self._dialled.discard(nid)
        if is_useless_failure(peer.close_reason):
            self._remember(self._useless, nid, self._clock() + self.config.useless_retry_s)
        self._wake.set()

    def _failed(self, nid: bytes, reason: str) -> None:
        if is_useless_failure(reason):
            log.info("peer %s shares no capability; not redialled for %.0f s", nid[:4].hex(),
                     self.config.useless_retry_s)
            self._remember(self._useless, nid, self._clock() + self.config.useless_retry_s)
            return
        failures = self._backoff.get(nid, (0, 0.0))[0] + 1
        delay = min(self.config.redial_min_s * 2 ** (failures - 1), self.config.redial_max_s)
        self._remember(self._backoff, nid, (failures, self._clock() + delay))

    @staticmethod
    def _remember(table: OrderedDict[bytes, Any], key: bytes, value: Any) -> None:
        table.pop(key, None)
        table[key] = value
        while len(table) > MAX_HISTORY:
            table.popitem(last=False)
