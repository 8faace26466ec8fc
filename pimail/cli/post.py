"""``pimail post``: seal and send Whisper messages to one node, as an ordinary peer."""

from __future__ import annotations

import argparse
import asyncio
import math
import string
import sys
import time
from typing import Any

from pimail.cli import quiet_node_logs
from pimail.envelope import payload as pl
from pimail.envelope.codec import Envelope
from pimail.envelope.pow import ENVELOPE_HEADER_LEN, PowFormula, pow_meets
from pimail.envelope.seal import seal_async
from pimail.errors import RuntimeFailure, UserError
from pimail.whisper.status import MessageResponse

DEFAULT_TTL_S = 30
DEFAULT_POW = 0.002  # what Status clients seal with
MAX_COUNT = 10_000


def register(sub: Any) -> None:
    p = sub.add_parser(
        "post",
        help="send a Whisper or Waku message to a node",
        description="Encrypt MESSAGE (with a password's symmetric key, or to a public key), seal "
        "it with proof of work that satisfies both PoW formulas, and hand it to --peer, which "
        "relays it. Prints the envelope hash of each message sent.",
    )
    p.add_argument("--peer", required=True, metavar="ENODE", help="enode://<key>@host:port to send through")
    p.add_argument("--topic", required=True, metavar="HEX", help="4-byte topic in hex")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--sym-password", metavar="P", help="encrypt with the key derived from this password")
    how.add_argument("--to-pubkey", metavar="HEX", help="encrypt to this secp256k1 public key")
    p.add_argument("--ttl", type=int, default=DEFAULT_TTL_S, metavar="S",
                   help=f"time to live in seconds (default {DEFAULT_TTL_S})")
    p.add_argument("--pow", type=float, default=DEFAULT_POW, metavar="X",
                   help=f"proof of work to seal with (default {DEFAULT_POW}; raised to the peer's "
                   "requirement if that is higher)")
    p.add_argument("--count", type=int, default=1, metavar="N", help="send N messages (default 1)")
    p.add_argument("--work-time", type=float, default=5.0, metavar="S",
                   help="seconds of sealing allowed per message (default 5)")
    p.add_argument("--protocol", choices=("auto", "waku", "shh"), default="auto",
                   help="waku (waku/1, waku/0) or shh (shh/6); default auto: waku when the peer offers it")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the connection and for confirmations (default 10)")
    p.add_argument("message", metavar="MESSAGE")
    p.set_defaults(func=run)


def parse_hex(text: str, flag: str, sizes: tuple[int, ...]) -> bytes:
    """``--topic cd423760`` → 4 bytes; a wrong length is said as such (it is still hex)."""
    digits = text[2:] if text.lower().startswith("0x") else text
    want = " or ".join(f"{n} bytes ({2 * n} hex digits)" for n in sizes)
    if not digits or any(c not in string.hexdigits for c in digits):
        raise UserError(f"{flag} must be hex, {want}: {text!r}")
    if len(digits) % 2 or len(digits) // 2 not in sizes:
        raise UserError(f"{flag} must be {want}, got {len(digits)} hex digits: {text!r}")
    return bytes.fromhex(digits)


def run(args: argparse.Namespace) -> int:
    from pimail.whisper.client import parse_enode

    enode = parse_enode(args.peer)
    topic = parse_hex(args.topic, "--topic", (4,))
    pubkey = parse_hex(args.to_pubkey, "--to-pubkey", (64, 65)) if args.to_pubkey else None
    if pubkey is not None:
        try:
            pl.seal_asymmetric(pubkey, b"")
        except pl.PayloadError:
            raise UserError("--to-pubkey is not a valid secp256k1 public key") from None
    if not 1 <= args.ttl < 2**31:
        raise UserError("--ttl must be a positive number of seconds")
    if not args.pow >= 0 or args.work_time <= 0 or args.timeout <= 0:
        raise UserError("--pow must be ≥ 0, --work-time and --timeout > 0")
    if not 1 <= args.count <= MAX_COUNT:
        raise UserError(f"--count must be between 1 and {MAX_COUNT}")
    quiet_node_logs(args)
    return asyncio.run(_post(args, enode, topic, pubkey))


PROGRESS_AFTER_S = 1.0  # sealing longer than this gets an estimate and a progress line on stderr
CALIBRATE_FROM_HASHES = 2**16  # below this the work is a fraction of a second: no estimate needed
CALIBRATE_S = 0.1


def expected_hashes(
    expiry: int, ttl: int, topic: bytes, data: bytes, legacy_t: float, current_t: float
) -> float:
    """How many nonces a seal tries on average: each formula needs its number of leading (legacy:
    trailing) zero bits, from two independent hashes of the same nonce (PROTOCOL.md §3.4)."""
    rlp_nn = Envelope.build(expiry, ttl, topic, data, 0).rlp_without_nonce

    def bits(target: float, size: int) -> int:
        return 0 if target <= 0 else max(1, math.ceil(math.log2(target * size * ttl)))

    return float(2 ** (bits(legacy_t, ENVELOPE_HEADER_LEN + len(data)) + bits(current_t, len(rlp_nn))))


def describe_work(label: str, hashes: float, per_s: float, work_time: float) -> str:
    """The one line said before a long seal: the work, the expected time, the limit."""
    expected = hashes / per_s if per_s > 0 else float("inf")
    within = (f"about {expected:.1f} s" if expected < work_time
              else f"about {expected:.0f} s, more than --work-time {work_time:g} s: the best nonce "
              "found by then is used")
    return (f"sealing {label}: proof of work needs ~{hashes:,.0f} hashes at ~{per_s:,.0f}/s here, "
            f"{within}")


async def _seal_with_progress(
    expiry: int, ttl: int, topic: bytes, data: bytes, legacy_t: float, current_t: float,
    work_time: float, label: str,
) -> Any:
    """``seal_async``, saying on stderr what to expect when the work is long, and how it goes."""
    loop = asyncio.get_running_loop()
    hashes = expected_hashes(expiry, ttl, topic, data, legacy_t, current_t)
    if hashes >= CALIBRATE_FROM_HASHES:  # measure this machine's rate on unreachable work
        probe = await seal_async(expiry, ttl, topic, data, 1e12, CALIBRATE_S)
        per_s = probe.tried / probe.seconds if probe.seconds > 0 else 0.0
        if per_s <= 0 or hashes / per_s > PROGRESS_AFTER_S:
            print(describe_work(label, hashes, per_s, work_time), file=sys.stderr, flush=True)
    task = loop.create_task(seal_async(expiry, ttl, topic, data, legacy_t, work_time, current_t))
    started = loop.time()
    tty = sys.stderr.isatty()
    shown = False
    while True:
        done, _ = await asyncio.wait({task}, timeout=PROGRESS_AFTER_S)
        if done:
            break
        shown = True
        elapsed = loop.time() - started
        text = f"sealing {label}: {elapsed:.0f} s of at most {work_time:g} s"
        print(f"\r{text}" if tty else text, end="" if tty else "\n", file=sys.stderr, flush=True)
    result = task.result()
    if shown:
        reached = "target reached" if result.met else "time up, best nonce used"
        end = "\r" if tty else ""
        print(f"{end}sealing {label}: done in {result.seconds:.1f} s ({reached}, {result.tried:,} hashes)",
              file=sys.stderr, flush=True)
    return result


class _Tracker:
    def __init__(self) -> None:
        self.batches: dict[bytes, list[bytes]] = {}
        self.acked: set[bytes] = set()
        self.errors: dict[bytes, str] = {}
        self.changed = asyncio.Event()

    def on_sent(self, peer: object, batch_hash: bytes, hashes: list[bytes]) -> None:
        self.batches[batch_hash] = hashes
        self.changed.set()

    def on_batch_ack(self, peer: object, batch_hash: bytes) -> None:
        self.acked.update(self.batches.get(batch_hash, []))
        self.changed.set()

    def on_message_response(self, peer: object, resp: MessageResponse) -> None:
        for e in resp.errors:
            self.errors[e.hash] = f"{e.description} (code {e.code})"
        self.changed.set()

    def sent(self) -> set[bytes]:
        return {h for hs in self.batches.values() for h in hs}


async def _post(args: argparse.Namespace, enode: Any, topic: bytes, pubkey: bytes | None) -> int:
    from pimail.whisper.client import client_session

    loop = asyncio.get_running_loop()
    key = None
    if args.sym_password:  # PBKDF2 off the loop
        key = await loop.run_in_executor(None, pl.key_from_password, args.sym_password)
    text = args.message.encode()
    # live=False: a poster asks for nothing relayed (a busy status-go or go-ethereum node pushes a
    # new full-bloom peer its whole pool and drops it past 16 MB)
    async with client_session(enode, timeout=args.timeout, protocol=args.protocol, live=False) as s:
        # Seal for --pow under both formulas, and for the peer's requirement under the formula it
        # judges by (go-ethereum 1.8 wants 0.2 under the legacy one only: cheap; both would not be).
        req, formula = s.state.pow_requirement, s.state.formula
        legacy_t = max(args.pow, req) if formula is not PowFormula.CURRENT else args.pow
        current_t = max(args.pow, req) if formula is not PowFormula.LEGACY else args.pow
        tracker = _Tracker()
        s.whisper.listeners.append(tracker)
        posted: list[Envelope] = []
        for _ in range(args.count):
            if key is not None:
                data = pl.seal_symmetric(key, text)
            else:
                data = pl.seal_asymmetric(pubkey or b"", text)
            now = int(time.time())
            result = await _seal_with_progress(
                now + args.ttl, args.ttl, topic, data, legacy_t, current_t, args.work_time,
                f"message {len(posted) + 1}/{args.count}",
            )
            pows = (result.pow_legacy, result.pow_current)
            if not pow_meets(pows, s.state.pow_requirement, s.state.formula):
                raise RuntimeFailure(
                    f"could not reach the peer's PoW requirement {s.state.pow_requirement:g} in "
                    f"{args.work_time:g} s (got legacy {result.pow_legacy:.3g}, current "
                    f"{result.pow_current:.3g}); raise --work-time or lower --ttl"
                )
            if not s.whisper.post(result.envelope):
                raise RuntimeFailure("the envelope expired before it could be sent; raise --ttl")
            posted.append(result.envelope)
        hashes = {e.hash for e in posted}
        confirms = bool(s.state.status and s.state.status.confirmations)
        deadline = loop.time() + args.timeout
        while True:
            done = hashes <= (tracker.acked | set(tracker.errors)) if confirms else hashes <= tracker.sent()
            if done or s.peer.closed:
                break
            left = deadline - loop.time()
            if left <= 0:
                break
            tracker.changed.clear()
            try:
                await asyncio.wait_for(tracker.changed.wait(), left)
            except TimeoutError:
                break
        if not confirms and hashes <= tracker.sent():
            await asyncio.sleep(0.2)  # let the write buffer drain before we disconnect
        failed = 0
        for env in posted:
            h = env.hash
            if h in tracker.errors:
                status, failed = f"rejected: {tracker.errors[h]}", failed + 1
            elif h in tracker.acked:
                status = "confirmed"
            elif h in tracker.sent():
                status = "sent" if not confirms else "sent, not confirmed"
                failed += confirms
            else:
                status, failed = "not sent", failed + 1
            print(f"0x{h.hex()} {status}")
        if s.peer.closed:
            raise RuntimeFailure(f"peer disconnected: {s.peer.close_reason}")
        if failed:
            raise RuntimeFailure(f"{failed} of {len(posted)} messages were not confirmed by the peer")
    return 0
