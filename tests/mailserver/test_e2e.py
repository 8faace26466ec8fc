"""End to end on 127.0.0.1: real NodeServers, Whisper services, SQLite archives and MailServers."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
import rlp

from pimail.crypto.keys import NodeKey
from pimail.envelope.bloom import FULL_BLOOM
from pimail.envelope.codec import Envelope
from pimail.envelope.payload import key_from_password, seal_symmetric
from pimail.mailserver.client import HistoryError, seal_request_envelope
from pimail.mailserver.request import LegacyRequestPayload, MessagesRequest, MessagesRequestPayload
from pimail.mailserver.response import RequestComplete, RequestFailed
from tests.waiting import eventually

from .nodes import (
    MIN_POW,
    TOPIC_A,
    TOPIC_B,
    client_node,
    mail_node,
    make_envelope,
    msg_key,
    open_mailserver_config,
    plain_envelopes,
)

pytestmark = pytest.mark.timeout(120)
PASSWORD_KEY = key_from_password("status-offline-inbox")
NOW = int(time.time())


def _run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def _history_envs(n: int, base: int, topic: bytes = TOPIC_A) -> list[Envelope]:
    return [make_envelope(i, base + i, topic=topic) for i in range(n)]


# -- the poster path: relay → archive → history in each form -------------------------------------


def test_poster_envelopes_come_back_in_every_form(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "poster") as poster:
            peer = await poster.connect(ms.enode)
            assert peer is not None
            sent = int(time.time())
            envs = [make_envelope(i, sent, ttl=2, text=f"hello {i}") for i in range(12)]
            for e in envs:
                assert poster.whisper.post(e)
            want = {e.hash for e in envs}
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if all([await ms.archive.contains(e.sent, e.hash) for e in envs]):
                    break
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the mailserver did not archive every posted envelope")
            await asyncio.sleep(max(0.0, sent + 3 - time.time()))  # let their TTL pass
            async with client_node(tmp_path / "c") as client:
                for form in ("direct", "envelope", "legacy"):
                    got, summary = await client.history(ms.enode, form=form, lower=sent - 10,
                                                        upper=sent + 10, request_pow=MIN_POW)
                    assert {e.hash for e in got} == want, form
                    assert summary.completed and summary.duplicates == 0
                    texts = sorted(_open(e) for e in got)
                    assert texts == sorted(f"hello {i}" for i in range(12))

    _run(main())


def _open(env: Envelope) -> str:
    from pimail.envelope.payload import open_data

    return open_data(env.data, sym_key=msg_key()).payload.decode()


# -- paging ------------------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["direct", "envelope", "legacy"])
def test_paging_with_small_limits_returns_each_envelope_once(tmp_path: Path, form: str) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            envs = _history_envs(60, NOW - 1000)
            envs += [make_envelope(1000 + i, NOW - 1000 + i, topic=TOPIC_B) for i in range(5)]
            # several envelopes with the same timestamp, to cross page boundaries
            envs += [make_envelope(2000 + i, NOW - 900, text=f"same second {i}") for i in range(9)]
            await ms.fill(envs)
            got, summary = await client.history(ms.enode, form=form, lower=NOW - 2000, upper=NOW,
                                                limit=7, request_pow=MIN_POW)
            hashes = [e.hash for e in got]
            assert len(hashes) == len(set(hashes)) == len(envs)
            assert set(hashes) == {e.hash for e in envs}
            assert summary.duplicates == 0
            assert summary.pages >= len(envs) // 7
            # topic filter
            got_b, _ = await client.history(ms.enode, form=form, lower=NOW - 2000, upper=NOW, limit=3,
                                            topics=(TOPIC_B,), request_pow=MIN_POW)
            assert {e.topic for e in got_b} == {TOPIC_B} and len(got_b) == 5

    _run(main())


def test_oldest_first_and_cursor_in_125(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            envs = _history_envs(30, NOW - 500)
            await ms.fill(envs)
            peer = await client.connect(ms.enode)
            req = MessagesRequest(b"r" * 32, NOW - 600, NOW, 10, b"", FULL_BLOOM)
            await peer.send_wait("shh", 126, req.encode())
            (resp,) = await client.recorder.wait_responses(1)
            assert isinstance(resp, RequestComplete) and resp.request_id == b"r" * 32
            assert resp.cursor is not None and len(resp.body()) == 100
            got = [e for pkt in client.recorder.packets for e in pkt]
            sent = [_env(e).sent for e in got]
            assert sent == sorted(sent) and len(got) == 10
            assert resp.last_envelope_hash == _env(got[-1]).hash
            assert resp.cursor == _env(got[-1]).sent.to_bytes(4, "big") + _env(got[-1]).hash

    _run(main())


def _env(item: object) -> Envelope:
    if isinstance(item, Envelope):
        return item
    assert isinstance(item, bytes)
    return Envelope.decode(item)


# -- batch vs single delivery ------------------------------------------------------------------


def test_batch_lists_vs_single_envelope_packets(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            await ms.fill(_history_envs(40, NOW - 300))
            peer = await client.connect(ms.enode)
            rec = client.recorder
            await peer.send_wait("shh", 126, MessagesRequest(b"b" * 32, NOW - 400, NOW, 0, b"",
                                                             FULL_BLOOM).encode())
            await rec.wait_responses(1)
            assert len(rec.packets) == 1 and len(rec.packets[0]) == 40  # one list packet
            rec.packets.clear()
            legacy = LegacyRequestPayload(NOW - 400, NOW, FULL_BLOOM).encode()
            env = seal_request_envelope(legacy, PASSWORD_KEY, client.key.private, int(time.time()), MIN_POW)
            await peer.send_wait("shh", 126, env.raw)
            await rec.wait_responses(2)
            assert isinstance(rec.responses[1], RequestComplete)
            assert len(rec.packets) == 40 and all(len(p) == 1 for p in rec.packets)  # form (b): single

    _run(main())


def test_bundles_stay_under_max_message_size(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms", max_message_size=64 * 1024) as ms, \
                client_node(tmp_path / "c") as client:
            envs = [make_envelope(i, NOW - 300 + i, size=20_000) for i in range(12)]
            await ms.fill(envs)
            peer = await client.connect(ms.enode)
            await peer.send_wait("shh", 126, MessagesRequest(b"s" * 32, NOW - 400, NOW, 0, b"",
                                                             FULL_BLOOM).encode())
            await client.recorder.wait_responses(1)
            pkts = client.recorder.packets
            assert len(pkts) > 1 and sum(len(p) for p in pkts) == 12
            for p in pkts:
                assert sum(len(_env(e).raw) for e in p) < 64 * 1024

    _run(main())


# -- errors ------------------------------------------------------------------------------------


async def _request_error(client: object, peer: object, payload: bytes, n: int) -> str:
    await peer.send_wait("shh", 126, payload)  # type: ignore[attr-defined]
    resps = await client.recorder.wait_responses(n)  # type: ignore[attr-defined]
    resp = resps[n - 1]
    assert isinstance(resp, RequestFailed), resp
    return resp.message


def test_error_responses(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = open_mailserver_config(min_request_pow=0.0001)
        async with mail_node(tmp_path / "ms", cfg) as ms, client_node(tmp_path / "c") as client:
            await ms.fill(_history_envs(5, NOW - 100))
            peer = await client.connect(ms.enode)
            me = client.key.private
            now = int(time.time())

            def sealed(payload: bytes, *, key: bytes = PASSWORD_KEY, signer: bytes | None = me,
                       pow_: float = 0.0002) -> bytes:
                data = seal_symmetric(key, payload, signer)
                for nonce in range(1_000_000):
                    e = Envelope.build(now + 50, 50, b"\x00" * 4, data, nonce)
                    if pow_ > 0:
                        if e.pow_legacy() >= pow_ and e.pow_current() >= pow_:
                            return e.raw
                    elif e.pow_legacy() < 0.0001 and e.pow_current() < 0.0001:
                        return e.raw
                raise AssertionError

            good = MessagesRequestPayload(NOW - 200, NOW, FULL_BLOOM, 10, b"", True, (), 7).encode()
            cases = [
                (sealed(good, key=key_from_password("wrong")), "failed to decrypt p2p request"),
                (sealed(good, signer=None), "check message signature failed: wrong signature of p2p request"),
                (sealed(good, signer=NodeKey.generate().private),
                 "check message signature failed: request signer is not the requesting peer"),
                (sealed(good, pow_=0.0), "PoW too low"),
                (sealed(MessagesRequestPayload(NOW, NOW - 10, FULL_BLOOM, 10, b"").encode()),
                 "query range is invalid: lower > upper"),
                (sealed(MessagesRequestPayload(1, NOW, FULL_BLOOM, 5000, b"").encode()),
                 "request is invalid: limit exceeds the maximum allowed value"),
                (MessagesRequest(b"x" * 32, 1, NOW, 5000, b"", FULL_BLOOM).encode(),
                 "request is invalid: limit exceeds the maximum allowed value"),
                (MessagesRequest(b"x" * 32, 9, 5, 0, b"", FULL_BLOOM).encode(),
                 "request is invalid: query range is invalid: lower > upper"),
                (MessagesRequest(b"x" * 32, 1, NOW, 10, (NOW - 50).to_bytes(4, "big") + os.urandom(32),
                                 FULL_BLOOM).encode(), "request is invalid: invalid cursor"),
            ]
            for i, (payload, message) in enumerate(cases, start=1):
                assert await _request_error(client, peer, payload, i) == message
            assert not peer.closed
            assert client.recorder.packets == []  # nothing delivered for refused requests

    _run(main())


def test_garbage_request_disconnects(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            peer = await client.connect(ms.enode)
            await peer.send_wait("shh", 126, rlp.encode([b"not", b"a", b"request"]))
            for _ in range(100):
                if peer.closed:
                    break
                await asyncio.sleep(0.05)
            assert peer.closed
            assert ms.mailserver.stats.malformed == 1

    _run(main())


def test_request_flood_is_rate_limited(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = open_mailserver_config(min_request_interval_s=1.0, bucket_rate_per_s=1.0, bucket_burst=10)
        async with mail_node(tmp_path / "ms", cfg) as ms, client_node(tmp_path / "c") as client:
            await ms.fill(_history_envs(3, NOW - 100))
            peer = await client.connect(ms.enode)
            for i in range(50):
                await peer.send_wait("shh", 126, MessagesRequest(i.to_bytes(32, "big"), NOW - 200, NOW, 0,
                                                                 b"", FULL_BLOOM).encode())
            resps = await client.recorder.wait_responses(50)
            ok = [r for r in resps if isinstance(r, RequestComplete)]
            limited = [r for r in resps
                       if isinstance(r, RequestFailed) and r.message == "rate limit exceeded"]
            assert len(ok) == 1 and len(limited) == 49
            assert not peer.closed
            # the history client waits out the limit and still gets everything
            got, summary = await client.history(ms.enode, lower=NOW - 200, upper=NOW, limit=1)
            assert len(got) == 3 and summary.rate_limited >= 1

    _run(main())


def test_client_that_stops_reading_is_dropped_without_blocking_others(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms", stall_timeout_s=1.0) as ms, \
                client_node(tmp_path / "slow") as slow, client_node(tmp_path / "ok") as other:
            big = [make_envelope(i, NOW - 3000 + i, size=4000) for i in range(2500)]
            await ms.fill(big)
            speer = await slow.connect(ms.enode)
            # stop reading: pause the slow client's transport so the server's buffer fills up
            speer._transport.pause_reading()  # type: ignore[attr-defined]
            legacy = LegacyRequestPayload(NOW - 4000, NOW, FULL_BLOOM).encode()
            env = seal_request_envelope(legacy, PASSWORD_KEY, slow.key.private, int(time.time()), MIN_POW)
            await speer.send_wait("shh", 126, env.raw)
            await eventually(lambda: ms.mailserver.active_deliveries == 1, what="the slow delivery started")
            # meanwhile another client is served normally
            got, summary = await other.history(ms.enode, lower=NOW - 3000, upper=NOW - 2990, limit=100)
            assert len(got) == 11 and summary.completed
            for _ in range(100):
                if ms.mailserver.stats.aborted:
                    break
                await asyncio.sleep(0.1)
            assert ms.mailserver.stats.aborted == 1 and ms.mailserver.active_deliveries == 0

    _run(main())


# -- access control ----------------------------------------------------------------------------


def test_allowlist(tmp_path: Path) -> None:
    async def main() -> None:
        friend = NodeKey.generate()
        cfg = open_mailserver_config(allowed_clients=[friend.public.hex()])
        async with mail_node(tmp_path / "ms", cfg) as ms:
            await ms.fill(_history_envs(4, NOW - 100))
            async with client_node(tmp_path / "friend", friend) as c1:
                got, _ = await c1.history(ms.enode, lower=NOW - 200, upper=NOW)
                assert len(got) == 4
            async with client_node(tmp_path / "stranger") as c2:
                with pytest.raises(HistoryError, match="not allowed"):
                    await c2.history(ms.enode, lower=NOW - 200, upper=NOW)
                assert c2.recorder.packets == []
            assert ms.mailserver.stats.denied == 1

    _run(main())


# -- mailserver-to-mailserver sync ---------------------------------------------------------------


def test_sync_between_two_pimail_nodes_fills_a_gap(tmp_path: Path) -> None:
    async def main() -> None:
        from pimail.config import MailserverConfig
        from pimail.mailserver.access import SiblingPolicy
        from pimail.mailserver.sync import Backfill, Heartbeat, SyncClient

        b_key_holder: list[bytes] = []
        policy_keys: set[bytes] = set()

        async with mail_node(tmp_path / "a",
                             sync_allowed=lambda p: p.pubkey in policy_keys) as a:
            gap = plain_envelopes(1500, NOW - 5000)
            before = [make_envelope(9000 + i, NOW - 90_000 + i) for i in range(5)]
            await a.fill(gap + before)
            cfg = MailserverConfig(sync_from=[a.enode.url()], min_request_interval_s=0, bucket_rate_per_s=0)
            async with mail_node(tmp_path / "b", cfg) as b:
                b_key_holder.append(b.key.public)
                await b.fill(gap[:100])  # some overlap: dedup
                hb = Heartbeat(b.data_dir)
                hb.beat(NOW - 6000)
                # not trusted yet: A refuses
                res0 = await Backfill(b.node, SyncClient(b.mailserver, b.archive), cfg, hb).run(NOW)
                assert res0.new == 0
                policy_keys.add(b.key.public)
                assert SiblingPolicy([b.enode.url()]).admit(b.key.public)
                res = await Backfill(b.node, SyncClient(b.mailserver, b.archive), cfg, hb).run(NOW)
                assert res.new == 1400 and res.received == 1500
                for e in gap:
                    assert await b.archive.contains(e.sent, e.hash)
                for e in before:  # outside the missed window
                    assert not await b.archive.contains(e.sent, e.hash)

    _run(main())


def test_concurrent_requests_per_peer_are_bounded(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = open_mailserver_config(max_concurrent_per_peer=1)
        async with mail_node(tmp_path / "ms", cfg) as ms, client_node(tmp_path / "c") as client:
            await ms.fill([make_envelope(i, NOW - 3000 + i, size=4000) for i in range(1500)])
            peer = await client.connect(ms.enode)
            legacy = LegacyRequestPayload(NOW - 4000, NOW, FULL_BLOOM).encode()
            env = seal_request_envelope(legacy, PASSWORD_KEY, client.key.private, int(time.time()), MIN_POW)
            await peer.send_wait("shh", 126, env.raw)
            await peer.send_wait("shh", 126, MessagesRequest(b"2" * 32, NOW - 4000, NOW, 0, b"",
                                                             FULL_BLOOM).encode())
            resps = await client.recorder.wait_responses(2, timeout=30)
            assert isinstance(resps[0], RequestFailed) and resps[0].request_id == b"2" * 32
            assert resps[0].message == "too many concurrent requests"
            assert isinstance(resps[1], RequestComplete) and resps[1].request_id == env.hash
            assert sum(len(p) for p in client.recorder.packets) == 1500

    _run(main())


class _GethLike:
    """Makes a MailServer answer like go-ethereum's WMailServer: no request-complete (125) at all."""

    def __init__(self, ms: object) -> None:
        real_send = ms._send  # type: ignore[attr-defined]

        async def send(peer: object, code: int, payload: bytes) -> None:
            if code != 125:
                await real_send(peer, code, payload)

        ms._send = send  # type: ignore[attr-defined]


def test_client_against_a_server_that_never_sends_125(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            _GethLike(ms.mailserver)
            envs = _history_envs(30, NOW - 300)
            await ms.fill(envs)
            # done after the quiet period, long before the response timeout (an hour) runs out
            got, summary = await asyncio.wait_for(
                client.history(ms.enode, form="legacy", lower=NOW - 400, upper=NOW,
                               request_pow=MIN_POW, quiet_s=0.5, response_timeout_s=3600), 120)
            assert {e.hash for e in got} == {e.hash for e in envs}
            assert not summary.completed and summary.pages == 1

    _run(main())


def test_client_against_a_newest_first_server(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            ms.mailserver.newest_first = True
            envs = _history_envs(45, NOW - 300)
            await ms.fill(envs)
            peer = await client.connect(ms.enode)
            await peer.send_wait("shh", 126, MessagesRequest(b"n" * 32, NOW - 400, NOW, 10, b"",
                                                             FULL_BLOOM).encode())
            await client.recorder.wait_responses(1)
            sent = [_env(e).sent for p in client.recorder.packets for e in p]
            assert sent == sorted(sent, reverse=True) and sent[0] == NOW - 300 + 44
            got, summary = await client.history(ms.enode, lower=NOW - 400, upper=NOW, limit=10)
            assert sorted(e.hash for e in got) == sorted(e.hash for e in envs)
            assert summary.completed and summary.duplicates == 0

    _run(main())


def test_sync_requests_bad_input(tmp_path: Path) -> None:
    async def main() -> None:
        from pimail.mailserver.syncwire import SyncMailRequest, SyncResponse

        trusted: set[bytes] = set()
        async with mail_node(tmp_path / "a", sync_allowed=lambda p: p.pubkey in trusted) as a, \
                client_node(tmp_path / "b") as b:
            got: list[SyncResponse] = []

            class Sink:
                async def handle(self, peer: object, code: int, payload: bytes) -> None:
                    if code == 124:
                        got.append(SyncResponse.decode(payload))

            b.whisper.request_handler = Sink()
            peer = await b.connect(a.enode)
            await peer.send_wait("shh", 123, SyncMailRequest(1, NOW, FULL_BLOOM, 10).encode())
            for _ in range(100):
                if got:
                    break
                await asyncio.sleep(0.05)
            assert got and got[0].final and "trusted" in got[0].error  # untrusted: refused, kept
            assert not peer.closed
            trusted.add(b.key.public)
            await peer.send_wait("shh", 123, SyncMailRequest(1, NOW, FULL_BLOOM, 5000).encode())
            for _ in range(100):
                if peer.closed:
                    break
                await asyncio.sleep(0.05)
            assert peer.closed  # invalid sync request from a trusted peer: disconnect (status-go)

    _run(main())


def test_big_request_to_a_stalled_client_reads_only_a_bounded_part_of_the_archive(tmp_path: Path) -> None:
    async def main() -> None:
        async with mail_node(tmp_path / "ms", stall_timeout_s=2.0) as ms, client_node(tmp_path / "c") as c:
            blob = os.urandom(4000)
            envs = [Envelope.build(NOW - 9000 + i + 60, 60, TOPIC_A, blob + i.to_bytes(4, "big"), 0)
                    for i in range(10_000)]  # ~40 MB in 20 pages of 500
            await ms.fill(envs)
            pages = 0
            real_query, real_query_raw = ms.archive.query, ms.archive.query_raw

            async def counting_query(q: object) -> object:
                nonlocal pages
                pages += 1
                return await real_query(q)  # type: ignore[arg-type]

            async def counting_query_raw(q: object) -> object:
                nonlocal pages
                pages += 1
                return await real_query_raw(q)  # type: ignore[arg-type]

            ms.archive.query = counting_query  # type: ignore[method-assign]
            ms.archive.query_raw = counting_query_raw  # type: ignore[method-assign]
            peer = await c.connect(ms.enode)
            peer._transport.pause_reading()  # type: ignore[attr-defined]
            legacy = LegacyRequestPayload(NOW - 10_000, NOW, FULL_BLOOM).encode()
            env = seal_request_envelope(legacy, PASSWORD_KEY, c.key.private, int(time.time()), MIN_POW)
            await peer.send_wait("shh", 126, env.raw)
            for _ in range(100):
                if ms.mailserver.stats.aborted:
                    break
                await asyncio.sleep(0.1)
            assert ms.mailserver.stats.aborted == 1
            # write buffer + socket buffers hold a few MB; the server stopped reading the archive there
            assert 1 <= pages <= 12, pages
            assert ms.mailserver.stats.envelopes_sent < 5000

    _run(main())


def test_client_reports_a_server_that_hangs_up_on_its_request_form(tmp_path: Path) -> None:
    async def main() -> None:
        from pimail.envelope.codec import EnvelopeError
        from pimail.node.capability import ProtocolError

        class GethDecoder:
            """go-ethereum: a 126 payload must be one envelope, else the peer is dropped."""

            async def handle(self, peer: object, code: int, payload: bytes) -> None:
                try:
                    Envelope.decode(payload)
                except EnvelopeError as exc:
                    raise ProtocolError(f"invalid p2p request: {exc}") from exc

        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            ms.whisper.request_handler = GethDecoder()
            with pytest.raises(HistoryError, match="closed the connection"):  # not the hour's timeout
                await asyncio.wait_for(client.history(ms.enode, form="direct", lower=NOW - 100, upper=NOW,
                                                      response_timeout_s=3600), 120)

    _run(main())


def test_paging_is_not_rate_limited_but_forged_cursors_are(tmp_path: Path) -> None:
    async def main() -> None:
        # the shipped defaults: 1 s between requests, bucket 1/s with a burst of 10
        cfg = open_mailserver_config(min_request_interval_s=1.0, bucket_rate_per_s=1.0, bucket_burst=10)
        async with mail_node(tmp_path / "ms", cfg) as ms, client_node(tmp_path / "c") as client:
            envs = _history_envs(100, NOW - 500)
            await ms.fill(envs)
            for form in ("direct", "envelope"):
                if form == "envelope":
                    await asyncio.sleep(1.1)  # a fresh request after the interval
                got, summary = await client.history(ms.enode, form=form, lower=NOW - 600, upper=NOW,
                                                    limit=5, request_pow=MIN_POW)
                assert len(got) == 100 and summary.pages == 20 and summary.rate_limited == 0, form
            # a cursor the server did not hand to this peer is an ordinary (limited) request
            peer = await client.connect(ms.enode)
            forged = envs[3].sent.to_bytes(4, "big") + envs[3].hash
            await asyncio.sleep(1.1)
            n = len(client.recorder.responses)
            await peer.send_wait("shh", 126, MessagesRequest(b"e" * 32, NOW - 600, NOW, 5, b"",
                                                             FULL_BLOOM).encode())
            await peer.send_wait("shh", 126, MessagesRequest(b"f" * 32, NOW - 600, NOW, 5, forged,
                                                             FULL_BLOOM).encode())
            by_id = {r.request_id: r for r in (await client.recorder.wait_responses(n + 2))[n:]}
            fresh, refused = by_id[b"e" * 32], by_id[b"f" * 32]
            assert isinstance(fresh, RequestComplete) and fresh.request_id == b"e" * 32
            assert isinstance(refused, RequestFailed) and refused.message == "rate limit exceeded"
            # while the cursor the server did hand out is honoured at once
            assert fresh.cursor is not None
            await peer.send_wait("shh", 126, MessagesRequest(b"g" * 32, NOW - 600, NOW, 5, fresh.cursor,
                                                             FULL_BLOOM).encode())
            (follow,) = (await client.recorder.wait_responses(n + 3))[n + 2:]
            assert isinstance(follow, RequestComplete) and follow.request_id == b"g" * 32

    _run(main())


def test_metrics_hook_and_snapshot(tmp_path: Path) -> None:
    async def main() -> None:
        seen: list[tuple[str, str, int]] = []
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            ms.mailserver.on_request_done = lambda form, result, secs, n: seen.append((form, result, n))
            await ms.fill(_history_envs(7, NOW - 100))
            got, _ = await client.history(ms.enode, lower=NOW - 200, upper=NOW)
            assert len(got) == 7
            peer = await client.connect(ms.enode)
            await peer.send_wait("shh", 126, MessagesRequest(b"x" * 32, 9, 5, 0, b"", FULL_BLOOM).encode())
            await client.recorder.wait_responses(2)
            assert seen == [("direct", "completed", 7), ("direct", "rejected", 0)]
            snap = ms.mailserver.snapshot()
            assert snap["completed"] == 1 and snap["rejected"] == 1 and snap["envelopes_sent"] == 7
            assert snap["by_form"] == {"direct": 1} and snap["active_deliveries"] == 0
            assert snap["open"] is True

    _run(main())


def test_the_delivery_log_line_counts_in_words_an_operator_reads(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """journalctl shows one line per answered request: "1 envelope", "3 envelopes"."""
    async def main() -> None:
        async with mail_node(tmp_path / "ms") as ms, client_node(tmp_path / "c") as client:
            await ms.fill(_history_envs(3, NOW - 500))
            with caplog.at_level("INFO", logger="pimail.mailserver.server"):
                got_one, _ = await client.history(ms.enode, lower=NOW - 500, upper=NOW - 500,
                                                  request_pow=MIN_POW)
                got_all, _ = await client.history(ms.enode, lower=NOW - 500, upper=NOW, request_pow=MIN_POW)
            assert (len(got_one), len(got_all)) == (1, 3)
            lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("delivered ")]
            assert len(lines) == 2, lines
            assert lines[0].startswith("delivered 1 envelope (")
            assert lines[1].startswith("delivered 3 envelopes (")

    _run(main())
