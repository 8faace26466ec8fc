"""``MailServer``: the relay core's ``request_handler`` for codes 123, 124 (shh) and 126 (shh, waku).

For each history request (126): decode (garbage ⇒ disconnect), check access and concurrency,
open and validate it (status-go's checks and ``ERROR=`` texts), apply the rate limits (a request
for the next page with a cursor we just issued is exempt), then stream the matching envelopes
oldest-first from the archive page by page and finish with code 125. Delivery runs in its own
task per request, so the peer's read loop (and every other peer) keeps going; each packet goes
out through ``peer.send`` and, when the write buffer is full, ``peer.send_wait`` (backpressure),
so a huge request holds at most two archive pages (after the first, each sized to about 4 MiB) in
memory, and a client that stops reading is given up after ``stall_timeout_s``. Pages are read as
stored bytes (``query_raw`` where the backend has it) and passed through without re-encoding; the
loop gets a turn after every page of lists or every ``YIELD_EVERY_PACKETS`` single packets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from pimail.archive.base import (
    Archive,
    ArchiveError,
    HistoryQuery,
    InvalidCursor,
    RawHistoryPage,
)
from pimail.config import MailserverConfig
from pimail.envelope.payload import key_from_password
from pimail.node.capability import DisconnectReason, PeerLike, ProtocolError

from .access import AccessPolicy, StaticAccessPolicy
from .limits import RequestLimits
from .request import (
    UNLIMITED,
    HistoryRequest,
    MalformedRequest,
    RequestOpener,
    RequestRejected,
    parse_p2p_request,
)
from .response import RequestComplete, RequestFailed
from .syncwire import SyncMailRequest, SyncResponse, SyncWireError, encode_list_of_raw

log = logging.getLogger(__name__)

CAPABILITY = "shh"
CODE_SYNC_REQUEST = 123
CODE_SYNC_RESPONSE = 124
CODE_REQUEST_COMPLETE = 125
CODE_P2P_REQUEST = 126
CODE_P2P_MESSAGE = 127

STREAM_PAGE_SIZE = 500  # most envelopes fetched per archive query while streaming (≤ 2 pages in memory)
FIRST_PAGE_SIZE = 100  # a small first page: the first envelope goes out sooner
PAGE_BYTES_BUDGET = 4 * 1024 * 1024  # later pages are sized so that one holds about this many bytes
MIN_PAGE_SIZE = 8
YIELD_EVERY_PACKETS = 64  # single-envelope packets written between two yields to the event loop
STALL_TIMEOUT_S = 60.0  # status-go processRequestTimeout: give up on a client that stops reading
MAX_ACTIVE_DELIVERIES = 256  # over all peers; beyond this new requests get "mailserver is busy"
LIMITER_PURGE_INTERVAL_S = 1.0  # status-go purges its limiter every second
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024  # geth DefaultMaxMessageSize
CONTINUATION_TTL_S = 300.0  # a next-page request within this time of our 125 is not rate limited
CURSORS_PER_PEER = 8  # issued cursors remembered per peer
MAX_TRACKED_PEERS = 10_000  # peers whose issued cursors are remembered (least recent dropped)


@dataclass
class DeliveryStats:
    """Counters the appliance/metrics layer may read."""

    requests: int = 0
    rejected: int = 0
    rate_limited: int = 0
    denied: int = 0
    malformed: int = 0
    completed: int = 0
    aborted: int = 0
    envelopes_sent: int = 0
    bytes_sent: int = 0
    sync_served: int = 0
    by_form: dict[str, int] = field(default_factory=dict)
    by_protocol: dict[str, int] = field(default_factory=dict)  # accepted requests per capability


@dataclass(frozen=True)
class Channel:
    """Where a request came in and its answers go: the capability, and whether 127 must be a list."""

    capability: str = "shh"
    lists_only: bool = False


SyncResponseSink = Callable[[PeerLike, SyncResponse], None]
#: (form, result, duration_s, envelopes); results: completed | rejected | denied | rate_limited |
#: malformed | aborted | failed (docs/ARCHITECTURE.md, Metrics)
RequestDoneHook = Callable[[str, str, float, int], None]


class MailServer:
    """History for peers. Plug into ``WhisperService.request_handler``."""

    def __init__(
        self,
        archive: Archive,
        config: MailserverConfig,
        opener: RequestOpener,
        *,
        access: AccessPolicy | None = None,
        sync_allowed: Callable[[PeerLike], bool] | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        stall_timeout_s: float = STALL_TIMEOUT_S,
        page_size: int = STREAM_PAGE_SIZE,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        capability: str = CAPABILITY,
        newest_first: bool = False,
    ) -> None:
        self.archive = archive
        self.config = config
        self.opener = opener
        self.access: AccessPolicy = access or StaticAccessPolicy(config.allowed_clients)
        self.sync_allowed = sync_allowed
        self.max_message_size = max_message_size
        self.stall_timeout_s = stall_timeout_s
        self.page_size = page_size
        self.clock = clock
        self.monotonic = monotonic
        self.capability = capability
        #: page newest-first like status-go's PostgreSQL backend (default: oldest first, LevelDB)
        self.newest_first = newest_first
        self.limits = RequestLimits(
            config.min_request_interval_s, config.bucket_rate_per_s, config.bucket_burst
        )
        self.stats = DeliveryStats()
        self._active: dict[bytes, set[asyncio.Task[None]]] = {}
        self._last_purge = 0.0
        #: cursors handed out in 125s, per peer: their follow-up requests skip the rate limits
        self._issued: OrderedDict[bytes, OrderedDict[bytes, float]] = OrderedDict()
        #: where 124 responses go (set by ``SyncClient`` while it waits on a peer)
        self.sync_sinks: dict[bytes, SyncResponseSink] = {}
        #: optional metrics hook, set by the daemon
        self.on_request_done: RequestDoneHook | None = None

    # -- request_handler interface ---------------------------------------------------------

    async def handle(self, peer: PeerLike, code: int, payload: bytes, *, capability: str = CAPABILITY,
                     lists_only: bool = False) -> None:
        """One request-side message. ``capability`` is the protocol it came in on (answers go back
        the same way: shh/6 or waku); ``lists_only`` forces list-form 127s (waku knows no other)."""
        if code == CODE_P2P_REQUEST:
            self._on_p2p_request(peer, payload, Channel(capability, lists_only))
        elif code == CODE_SYNC_REQUEST:
            self._on_sync_request(peer, payload)
        elif code == CODE_SYNC_RESPONSE:
            self._on_sync_response(peer, payload)

    def peer_stopped(self, peer: PeerLike) -> None:
        """Cancel what is still being delivered to a peer that went away."""
        for task in list(self._active.get(peer.node_id, ())):
            task.cancel()
        self.sync_sinks.pop(peer.node_id, None)

    @property
    def active_deliveries(self) -> int:
        return sum(len(s) for s in self._active.values())

    async def close(self) -> None:
        tasks = [t for s in self._active.values() for t in s]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- 126 -------------------------------------------------------------------------------

    def _on_p2p_request(self, peer: PeerLike, payload: bytes, channel: Channel) -> None:
        self.stats.requests += 1
        try:
            parsed = parse_p2p_request(payload)
        except MalformedRequest as exc:
            self.stats.malformed += 1
            self._done("unknown", "malformed")
            raise ProtocolError(f"bad history request: {exc}", DisconnectReason.SUBPROTOCOL_ERROR) from exc
        rid = parsed.request_id
        if not self.access.admit(peer.pubkey):
            self.stats.denied += 1
            self._done(parsed.form_hint, "denied")
            log.info("history request from %s refused: not an allowed client", _short(peer))
            self._reply_error(peer, rid, "peer is not allowed to request history", channel)
            return
        active = self._active.get(peer.node_id, set())
        if len(active) >= self.config.max_concurrent_per_peer:
            self.stats.rate_limited += 1
            self._done(parsed.form_hint, "rate_limited")
            self._reply_error(peer, rid, "too many concurrent requests", channel)
            return
        if self.active_deliveries >= MAX_ACTIVE_DELIVERIES:
            self.stats.rate_limited += 1
            self._done(parsed.form_hint, "rate_limited")
            self._reply_error(peer, rid, "mailserver is busy", channel)
            return
        now_m = self.monotonic()
        self._purge_limits(now_m)
        # A request the limits would refuse is still opened: it may be the next page of a
        # delivery we just made (its cursor is one we issued), which is not limited (see below).
        # Refusals are cheap for direct requests; envelope requests cost one decryption.
        limited = not self.limits.interval.would_allow(peer.node_id, now_m)
        if limited and parsed.direct is not None and not self._is_continuation(peer, parsed.direct.cursor):
            self._refuse_rate(peer, rid, parsed.form_hint, channel)
            return
        try:
            req = self.opener.open(parsed, peer.pubkey, int(self.clock()))
        except RequestRejected as exc:
            self.stats.rejected += 1
            self._done(parsed.form_hint, "rejected")
            log.info("history request %s from %s rejected: %s", rid.hex()[:12], _short(peer), exc.message)
            self._reply_error(peer, rid, exc.message, channel)
            return
        if self._take_continuation(peer, req.cursor):
            pass  # paging on: Status clients ask for the next page at once and fail on a refusal
        elif not self.limits.allow(peer.node_id, now_m):
            self._refuse_rate(peer, rid, req.form.value, channel)
            return
        self.stats.by_form[req.form.value] = self.stats.by_form.get(req.form.value, 0) + 1
        self.stats.by_protocol[channel.capability] = self.stats.by_protocol.get(channel.capability, 0) + 1
        task = asyncio.get_running_loop().create_task(self._deliver(peer, req, channel))
        self._track(peer.node_id, task)

    def _track(self, node_id: bytes, task: asyncio.Task[None]) -> None:
        self._active.setdefault(node_id, set()).add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._task_done(node_id, t)

        task.add_done_callback(done)

    def _task_done(self, node_id: bytes, task: asyncio.Task[None]) -> None:
        s = self._active.get(node_id)
        if s is not None:
            s.discard(task)
            if not s:
                del self._active[node_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("history delivery failed: %r", task.exception())

    def _refuse_rate(self, peer: PeerLike, rid: bytes, form: str, channel: Channel) -> None:
        self.stats.rate_limited += 1
        self._done(form, "rate_limited")
        log.debug("history request from %s refused: rate limit", _short(peer))
        self._reply_error(peer, rid, "rate limit exceeded", channel)

    def _is_continuation(self, peer: PeerLike, cursor: bytes | None) -> bool:
        issued = self._issued.get(peer.node_id)
        return bool(cursor) and issued is not None and cursor in issued

    def _take_continuation(self, peer: PeerLike, cursor: bytes | None) -> bool:
        """True (once) if ``cursor`` is one this server handed this peer in a 125 recently."""
        issued = self._issued.get(peer.node_id)
        if not cursor or issued is None:
            return False
        stamp = issued.pop(cursor, None)
        return stamp is not None and self.monotonic() - stamp <= CONTINUATION_TTL_S

    def _remember_cursor(self, peer: PeerLike, cursor: bytes) -> None:
        issued = self._issued.get(peer.node_id)
        if issued is None:
            issued = self._issued[peer.node_id] = OrderedDict()
            while len(self._issued) > MAX_TRACKED_PEERS:
                self._issued.popitem(last=False)
        else:
            self._issued.move_to_end(peer.node_id)
        issued[cursor] = self.monotonic()
        while len(issued) > CURSORS_PER_PEER:
            issued.popitem(last=False)

    def _done(self, form: str, result: str, started: float | None = None, envelopes: int = 0) -> None:
        hook = self.on_request_done
        if hook is None:
            return
        duration = self.monotonic() - started if started is not None else 0.0
        try:
            hook(form, result, duration, envelopes)
        except Exception:  # a metrics bug must not break delivery
            log.exception("request metrics hook failed")

    def snapshot(self) -> dict[str, object]:
        """DeliveryStats plus live figures, JSON-able (status page, metrics)."""
        d: dict[str, object] = dict(asdict(self.stats))
        d["active_deliveries"] = self.active_deliveries
        d["open"] = getattr(self.access, "open", None)
        return d

    def _purge_limits(self, now_m: float) -> None:
        if now_m - self._last_purge >= LIMITER_PURGE_INTERVAL_S:
            self.limits.purge(now_m)
            self._last_purge = now_m

    def _reply_error(self, peer: PeerLike, rid: bytes, message: str, channel: Channel | None = None) -> None:
        # Never waits: a peer that floods us and does not read loses its error replies.
        cap = channel.capability if channel is not None else self.capability
        peer.send(cap, CODE_REQUEST_COMPLETE, RequestFailed(rid, message).encode())

    async def _send(self, peer: PeerLike, code: int, payload: bytes, channel: Channel | None = None) -> None:
        cap = channel.capability if channel is not None else self.capability
        if peer.send(cap, code, payload):
            return
        await asyncio.wait_for(peer.send_wait(cap, code, payload), self.stall_timeout_s)

    async def _deliver(self, peer: PeerLike, req: HistoryRequest, channel: Channel) -> None:
        started = self.monotonic()
        try:
            last_hash, cursor, count = await self._stream(peer, req, channel)
        except InvalidCursor as exc:
            log.info("history request %s from %s: %s", req.request_id.hex()[:12], _short(peer), exc)
            self.stats.rejected += 1
            self._done(req.form.value, "rejected", started)
            self._reply_error(peer, req.request_id, "request is invalid: invalid cursor", channel)
            return
        except ArchiveError as exc:
            log.error("history request %s failed reading the archive: %s", req.request_id.hex()[:12], exc)
            self._done(req.form.value, "failed", started)
            self._reply_error(peer, req.request_id, "failed to process the request", channel)
            return
        except (TimeoutError, ConnectionError, OSError) as exc:
            self.stats.aborted += 1
            log.warning(
                "history delivery to %s stopped (%s): the client is not reading or went away",
                _short(peer), type(exc).__name__,
            )
            self._done(req.form.value, "aborted", started)
            return
        try:
            await self._send(peer, CODE_REQUEST_COMPLETE,
                             RequestComplete(req.request_id, last_hash, cursor).encode(), channel)
        except (TimeoutError, ConnectionError, OSError):
            self.stats.aborted += 1
            self._done(req.form.value, "aborted", started, count)
            return
        self.stats.completed += 1
        if cursor is not None:
            self._remember_cursor(peer, cursor)
        self._done(req.form.value, "completed", started, count)
        log.info(
            "delivered %d envelope%s (%s form%s, %s) to %s in %.2f s%s",
            count, "" if count == 1 else "s", req.form.value, ", batched" if req.batch else "",
            channel.capability, _short(peer),
            self.monotonic() - started, ", more pages" if cursor else "",
        )

    async def _stream(self, peer: PeerLike, req: HistoryRequest,
                      channel: Channel) -> tuple[bytes, bytes | None, int]:
        """Send every matching envelope; return (last hash, next cursor, count).

        Stored bytes go out as they are (never re-encoded): one list packet per page (split at
        ``max_message_size``) for batching clients, else one packet per envelope, written without
        an await while the peer's write buffer has room.
        """
        remaining = req.limit if req.limit != UNLIMITED else None
        last_cursor: bytes | None = None
        count = 0
        next_cursor: bytes | None = None
        page_n = min(FIRST_PAGE_SIZE, self.page_size)

        def fetch(cursor: bytes | None, want: int | None) -> asyncio.Future[RawHistoryPage]:
            n = page_n if want is None else min(page_n, want)
            q = HistoryQuery(req.lower, req.upper, req.topics, req.bloom, n, cursor, self.newest_first)
            return asyncio.ensure_future(self._fetch_page(q))

        pending: asyncio.Future[RawHistoryPage] | None = fetch(req.cursor, remaining)
        try:
            while pending is not None:
                page = await pending
                pending = None
                raws = page.raws
                if remaining is not None:
                    if len(raws) > remaining:  # never asked for: the cursor would not match
                        raise ArchiveError(f"archive returned {len(raws)} envelopes, {remaining} asked")
                    remaining -= len(raws)
                more = page.more and (remaining is None or remaining > 0)
                size = sum(map(len, raws))
                if raws:  # size pages by bytes, so big envelopes cannot make a page huge
                    avg = max(1, size // len(raws))
                    page_n = max(MIN_PAGE_SIZE, min(self.page_size, PAGE_BYTES_BUDGET // avg))
                if more:  # prefetch the next page while this one goes out
                    pending = fetch(page.next_cursor, remaining)
                if req.batch or channel.lists_only:
                    await self._send_bundles(peer, raws, size, channel)
                    await asyncio.sleep(0)  # one page (≤ page_size envelopes) per slice of the loop
                else:
                    await self._send_each(peer, raws, channel)
                if raws:
                    count += len(raws)
                    last_cursor = page.last_cursor
                    if remaining == 0 and page.more:
                        # status-go: the limit-th envelope is sent and its key becomes the cursor
                        next_cursor = page.last_cursor
        finally:
            if pending is not None:
                pending.cancel()
        last_hash = last_cursor[4:] if last_cursor is not None else b"\x00" * 32
        return last_hash, next_cursor, count

    async def _fetch_page(self, q: HistoryQuery) -> RawHistoryPage:
        """One page as stored bytes: the backend's ``query_raw`` when it has one, else ``query``."""
        query_raw = getattr(self.archive, "query_raw", None)
        if query_raw is not None:
            page: RawHistoryPage = await query_raw(q)
            return page
        full = await self.archive.query(q)
        envs = full.envelopes
        return RawHistoryPage([e.raw for e in envs], envs[-1].cursor if envs else None,
                              full.next_cursor is not None)

    async def _send_bundles(self, peer: PeerLike, raws: list[bytes], size: int, channel: Channel) -> None:
        """List packets of whole envelopes, each under ``max_message_size`` (one if the page fits)."""
        if size < self.max_message_size:
            if raws:
                await self._flush(peer, raws, size, channel)
            return
        bundle: list[bytes] = []
        bundle_size = 0
        for raw in raws:
            if bundle and bundle_size + len(raw) >= self.max_message_size:
                await self._flush(peer, bundle, bundle_size, channel)
                bundle, bundle_size = [], 0
            bundle.append(raw)
            bundle_size += len(raw)
        if bundle:
            await self._flush(peer, bundle, bundle_size, channel)

    async def _send_each(self, peer: PeerLike, raws: list[bytes], channel: Channel) -> None:
        """One packet per envelope (go-ethereum clients); waits only when the write buffer is full,
        and lets other tasks run every ``YIELD_EVERY_PACKETS`` packets."""
        cap, stats = channel.capability, self.stats
        for i, raw in enumerate(raws, 1):
            if not peer.send(cap, CODE_P2P_MESSAGE, raw):
                await asyncio.wait_for(peer.send_wait(cap, CODE_P2P_MESSAGE, raw), self.stall_timeout_s)
            elif i % YIELD_EVERY_PACKETS == 0:
                await asyncio.sleep(0)
            stats.envelopes_sent += 1
            stats.bytes_sent += len(raw)

    async def _flush(self, peer: PeerLike, bundle: list[bytes], size: int, channel: Channel) -> None:
        await self._send(peer, CODE_P2P_MESSAGE, encode_list_of_raw(bundle), channel)
        self.stats.envelopes_sent += len(bundle)
        self.stats.bytes_sent += size

    # -- 123 / 124 -------------------------------------------------------------------------

    def _on_sync_request(self, peer: PeerLike, payload: bytes) -> None:
        if self.sync_allowed is None or not self.sync_allowed(peer):
            log.info("sync request from %s refused: not a trusted mailserver", _short(peer))
            peer.send(self.capability, CODE_SYNC_RESPONSE,
                      SyncResponse([], b"", True, "sync is only served to trusted mailservers").encode())
            return
        try:
            req = SyncMailRequest.decode(payload)
        except SyncWireError as exc:
            raise ProtocolError(f"bad sync request: {exc}") from exc
        active = self._active.get(peer.node_id, set())
        if len(active) >= self.config.max_concurrent_per_peer:
            peer.send(self.capability, CODE_SYNC_RESPONSE,
                      SyncResponse([], b"", True, "too many concurrent requests").encode())
            return
        task = asyncio.get_running_loop().create_task(self._serve_sync(peer, req))
        self._track(peer.node_id, task)

    async def _serve_sync(self, peer: PeerLike, req: SyncMailRequest) -> None:
        bloom = req.bloom or None
        bundle: list[bytes] = []
        size = 0
        try:
            page = await self.archive.query(
                HistoryQuery(req.lower, req.upper, (), bloom, req.limit, req.cursor or None, False)
            )
            for env in page.envelopes:
                if bundle and size + len(env.raw) >= self.max_message_size - 1024:
                    await self._send(peer, CODE_SYNC_RESPONSE, SyncResponse(bundle).encode())
                    bundle, size = [], 0
                bundle.append(env.raw)
                size += len(env.raw)
            if bundle:
                await self._send(peer, CODE_SYNC_RESPONSE, SyncResponse(bundle).encode())
            await self._send(peer, CODE_SYNC_RESPONSE,
                             SyncResponse([], page.next_cursor or b"", True).encode())
            self.stats.sync_served += len(page.envelopes)
        except InvalidCursor:
            peer.send(self.capability, CODE_SYNC_RESPONSE,
                      SyncResponse([], b"", True, "invalid cursor").encode())
        except ArchiveError as exc:
            log.error("sync for %s failed reading the archive: %s", _short(peer), exc)
            peer.send(self.capability, CODE_SYNC_RESPONSE,
                      SyncResponse([], b"", True, "failed to process all envelopes").encode())
        except (TimeoutError, ConnectionError, OSError):
            log.warning("sync delivery to %s stopped: the peer is not reading or went away", _short(peer))

    def _on_sync_response(self, peer: PeerLike, payload: bytes) -> None:
        sink = self.sync_sinks.get(peer.node_id)
        if sink is None:
            log.debug("ignoring an unsolicited sync response from %s", _short(peer))
            return
        try:
            resp = SyncResponse.decode(payload)
        except SyncWireError as exc:
            raise ProtocolError(f"bad sync response: {exc}") from exc
        sink(peer, resp)


def _short(peer: PeerLike) -> str:
    host, port = peer.remote_address
    return f"{peer.pubkey.hex()[:8]}@{host}:{port}"


async def create_mailserver(
    archive: Archive,
    config: MailserverConfig,
    *,
    private_key: bytes | None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    access: AccessPolicy | None = None,
    sync_allowed: Callable[[PeerLike], bool] | None = None,
    stall_timeout_s: float = STALL_TIMEOUT_S,
) -> MailServer:
    """A ``MailServer`` from the config. The password key (PBKDF2, ~50 ms) is derived off the loop.

    ``private_key`` is the node key: requests encrypted to it (asymmetric) are accepted too.
    """
    loop = asyncio.get_running_loop()
    sym_key = None
    if config.password:
        sym_key = await loop.run_in_executor(None, key_from_password, config.password)
    opener = RequestOpener(sym_key, private_key, config.min_request_pow)
    return MailServer(archive, config, opener, access=access, sync_allowed=sync_allowed,
                      max_message_size=max_message_size, stall_timeout_s=stall_timeout_s)
