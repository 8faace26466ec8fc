"""The power-cut fault: ``python -m bench.faults --only powercut`` (root; QEMU; ~1 min per cut).

For each mode (first ``[archive] synchronous = "normal"`` as the control that shows the fault can
see a loss, then the tree's default config):

1. build the VM from this checkout (bench/powercut/build-vm.sh: the cached Debian base, pimail's
   amd64 .deb from the tree, image/stages/app.sh), write the mode's pimail.toml onto a fresh root
   disk, give it an empty data disk, boot it and wait for READY;
2. post from the host with pimail's own client over the forwarded 127.0.0.1 port (two connections,
   50-envelope batches, up to 32 unacknowledged each); every Batch Ack goes into the ledger with the
   hashes of its batch;
3. at a random moment 5-20 s into the posting, SIGKILL QEMU (bench/powercut/vm.py says why that is
   a power cut); boot again and wait for READY and `pimail archive check`;
4. fetch this cut's envelopes back over the same port (a history request on the cut's own topic)
   and count acknowledged envelopes that are missing (bench/powercut/ledger.py).

After the last cut the whole archive is fetched once and every cut's acks are checked again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from pathlib import Path

from bench.powercut.ledger import Ledger, ModeSummary, judge_cut
from bench.powercut.vm import Guest, GuestError, accel, make_boot_disk, make_data_disk, make_root_disk

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
WORK_DIR = Path(os.environ.get("PIMAIL_POWERCUT_WORK", REPO / "build" / "powercut"))
TTL = 3600
PER_SECOND = 2000  # envelopes per second of sent time, as bench.load.preseal
BATCH = 50
WINDOW = 32
CUT_AFTER_S = (5.0, 20.0)  # the cut comes this long after the first batch is sent
ENVELOPES_PER_CUT = 60_000  # more than one cut's posting can ack under TCG
BOOT_TIMEOUT_S = 900.0
HISTORY_LIMIT = 1000
LATE_ACKS_S = 10.0
MIN_CUTS = 30  # the bar for the default mode


def guest_config(synchronous: str | None) -> str:
    """The guest's pimail.toml: the defaults, except what lets one host poster push hard (no PoW,
    no per-peer packet limit, no request throttling) and a clock the guest cannot sync (no NTP).
    ``synchronous`` None keeps the tree's default durability, whatever it is."""
    sync = f'synchronous = "{synchronous}"\n' if synchronous else ""
    return ('# written by bench/powercut/run.py\n[node]\ndata_dir = "/var/lib/pimail"\n'
            'listen = "0.0.0.0:30303"\n'
            "[whisper]\nmin_pow = 0.0\nrate_limit_packets_per_s = 100000.0\nrate_limit_tolerance = 100000\n"
            f'[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\nmax_age = "0"\n{sync}'
            "[mailserver]\nmin_request_interval_s = 0\nbucket_rate_per_s = 0\n")


def topic_for(mode_index: int, cut: int) -> bytes:
    return bytes([0xBE, 0x50 + mode_index]) + cut.to_bytes(2, "big")


def cut_envelopes(topic: bytes, n: int) -> tuple[list[bytes], int, int]:
    """``n`` distinct envelopes on ``topic`` with sent times rising to now; (raws, first, last sent).
    The guest takes PoW 0, so no sealing: the fault is about storage, not proof of work."""
    from pimail.envelope.codec import Envelope

    salt = os.urandom(8)
    first = int(time.time()) - (n - 1) // PER_SECOND
    raws = [Envelope.build(first + i // PER_SECOND + TTL, TTL, topic,
                           salt + i.to_bytes(8, "big") + bytes(200 + i % 80), 0).raw for i in range(n)]
    return raws, first, first + (n - 1) // PER_SECOND


async def post_until_cut(enode_url: str, raws: list[bytes], ledger: Ledger, cut: int, guest: Guest,
                         cut_after_s: float) -> tuple[float, int]:
    """Post ``raws`` and record acks until the guest is killed ``cut_after_s`` after the first send;
    (the cut's moment on the monotonic clock, envelopes sent)."""
    from pimail.crypto.keccak import keccak256
    from pimail.crypto.keys import Enode
    from pimail.envelope.codec import encode_envelope_list
    from pimail.mailserver.client import client_whisper_config
    from pimail.whisper import status as st
    from pimail.whisper.client import client_session

    enode = Enode.parse(enode_url)
    first_send = asyncio.Event()
    stop = asyncio.Event()
    sent = 0

    async def one(share: list[bytes]) -> None:
        nonlocal sent
        async with client_session(enode, client_whisper_config(), timeout=60) as s:
            pending: dict[bytes, list[bytes]] = {}
            slots = asyncio.Semaphore(WINDOW)

            class Acks:
                def on_batch_ack(self, peer: object, h: bytes) -> None:
                    if peer is s.peer and h in pending:
                        ledger.record(cut, time.monotonic(), (keccak256(r) for r in pending.pop(h)))
                        slots.release()

            s.whisper.listeners.append(Acks())
            for i in range(0, len(share), BATCH):
                await slots.acquire()
                if stop.is_set() or s.peer.closed:
                    return
                chunk = share[i:i + BATCH]
                payload = encode_envelope_list(chunk)
                pending[keccak256(payload)] = chunk
                await s.peer.send_wait(s.whisper.chosen(s.peer), st.MESSAGES, payload)
                sent += len(chunk)
                first_send.set()
            await s.peer.closed_event.wait()

    async def guarded(share: list[bytes]) -> None:
        with contextlib.suppress(Exception):
            await one(share)

    tasks = [asyncio.ensure_future(guarded(raws[k::2])) for k in range(2)]
    await asyncio.wait_for(first_send.wait(), 120)
    await asyncio.sleep(cut_after_s)
    cut_at = time.monotonic()
    guest.kill()
    stop.set()
    # acks QEMU handed to the host's socket before it died still arrive; then the sessions end
    _, unfinished = await asyncio.wait(tasks, timeout=LATE_ACKS_S)
    for t in unfinished:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return cut_at, sent


async def fetch_hashes(enode_url: str, lower: int, upper: int, topics: tuple[bytes, ...]) -> set[bytes]:
    """Every envelope hash the node serves for ``[lower, upper]`` (and ``topics``) over history."""
    import tempfile

    from pimail.config import NodeConfig
    from pimail.crypto.keys import Enode, NodeKey
    from pimail.mailserver.client import (
        HistoryClient,
        HistoryOptions,
        HistorySummary,
        client_whisper_config,
        connect_trusted,
    )
    from pimail.node.server import NodeServer
    from pimail.whisper.service import WhisperService

    enode = Enode.parse(enode_url)
    got: set[bytes] = set()
    with tempfile.TemporaryDirectory(prefix="pimail-powercut-") as tmp:
        key = NodeKey.generate()
        cw = WhisperService(client_whisper_config(), archive=None, clock_trusted=lambda: True)
        cn = NodeServer(key, NodeConfig(listen="127.0.0.1:0", data_dir=Path(tmp)), [cw])
        await cn.start()
        try:
            await connect_trusted(cn, cw, enode)
            summary = HistorySummary()
            opts = HistoryOptions(lower=lower, upper=upper, topics=topics, limit=HISTORY_LIMIT,
                                  response_timeout_s=120.0)
            gen = HistoryClient(key, cw, cn).fetch(enode, opts, summary)
            assert isinstance(gen, AsyncGenerator)
            try:
                async for item in gen:
                    got.add(item.envelope.hash)
            finally:
                await gen.aclose()
            if not summary.completed:
                raise RuntimeError("the history request ended without request-complete")
        finally:
            await cn.stop()
            await cw.close()
    return got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def say(msg: str) -> None:
    print(f"# powercut {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


@dataclass
class BootLog:
    boots: int = 0
    ready: int = 0
    corrupt: int = 0
    seconds: float = 0.0


def boot(vm_dir: Path, work: Path, name: str, log: BootLog, pubkey: bytes) -> tuple[Guest, str]:
    """Start the guest, wait for READY and its archive check; (guest, enode URL on the host)."""
    port = free_port()
    guest = Guest(vm_dir, work / "root.ext4", work / "boot.vfat", work / "data.ext4",
                  work / f"serial-{name}.log", port)
    log.boots += 1
    guest.start()
    try:
        rep = guest.wait_ready(BOOT_TIMEOUT_S)
    except GuestError:
        guest.kill()
        raise
    log.seconds += rep.seconds
    log.ready += rep.ready
    log.corrupt += not rep.check_ok
    if not rep.check_ok:
        say(f"boot {name}: archive check FAILED: rc={rep.check_rc} {rep.check[:300]}")
    if not rep.ready:
        guest.kill()
        raise GuestError(f"boot {name}: pimail is {rep.active!r}")
    say(f"boot {name}: READY in {rep.seconds:.0f} s ({rep.status}); archive check "
        f"{'ok' if rep.check_ok else 'FAILED'}")
    return guest, f"enode://{pubkey.hex()}@127.0.0.1:{port}"


def run_mode(mode: str, mode_index: int, synchronous: str | None, cuts: int, vm_dir: Path,
             rng: random.Random) -> tuple[ModeSummary, dict[str, float]]:
    """One mode's cuts on a fresh data disk; the summary and timings."""
    work = WORK_DIR / f"run-{mode}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    make_root_disk(vm_dir / "rootfs", guest_config(synchronous), work / "root.ext4")
    make_boot_disk(work / "boot.vfat")
    from pimail.crypto.keys import NodeKey

    key = NodeKey.generate()
    make_data_disk(work / "data.ext4", vm_dir / "rootfs", key.private)
    ledger = Ledger()
    log = BootLog()
    verdicts = []
    windows: list[int] = []
    timing = {"post_s": 0.0, "verify_s": 0.0, "first_boot_s": 0.0}
    t0 = time.monotonic()
    guest, enode = boot(vm_dir, work, "0", log, key.public)
    timing["first_boot_s"] = log.seconds
    final_missing: int | None = None
    try:
        for cut in range(1, cuts + 1):
            topic = topic_for(mode_index, cut)
            raws, first, last = cut_envelopes(topic, ENVELOPES_PER_CUT)
            windows += [first, last]
            delay = rng.uniform(*CUT_AFTER_S)
            tp = time.monotonic()
            cut_at, sent = asyncio.run(post_until_cut(enode, raws, ledger, cut, guest, delay))
            timing["post_s"] += time.monotonic() - tp
            del raws
            guest, enode = boot(vm_dir, work, str(cut), log, key.public)
            tv = time.monotonic()
            present = asyncio.run(fetch_hashes(enode, first, last, (topic,)))
            timing["verify_s"] += time.monotonic() - tv
            v = judge_cut(ledger, cut, present, cut_at)
            verdicts.append(v)
            age = ("" if v.oldest_lost_ack_s is None
                   else f", oldest lost ack {v.oldest_lost_ack_s:.1f} s before the cut")
            say(f"{mode} cut {cut}/{cuts} at {delay:.1f} s: sent {sent:,}, acked {v.acked:,}, "
                f"missing {v.missing:,}{age}")
        tv = time.monotonic()
        everything = asyncio.run(fetch_hashes(enode, min(windows), max(windows), ()))
        timing["verify_s"] += time.monotonic() - tv
        final_missing = len(ledger.acked() - everything)
        say(f"{mode}: whole archive {len(everything):,} envelopes, {final_missing:,} acknowledged missing")
    except GuestError as exc:
        say(f"{mode}: stopped: {exc}")
    finally:
        guest.kill()
    timing["total_s"] = time.monotonic() - t0
    timing["boot_s"] = log.seconds
    summary = ModeSummary(mode, tuple(verdicts), log.boots, log.ready, log.corrupt, final_missing)
    return summary, timing


def build_vm() -> tuple[Path, float, str]:
    """Run build-vm.sh on this checkout; (vm dir, seconds, its summary)."""
    vm_dir = WORK_DIR / "vm"
    t0 = time.monotonic()
    subprocess.run([str(HERE / "build-vm.sh"), str(vm_dir)], check=True)
    return vm_dir, time.monotonic() - t0, (vm_dir / "build-summary.txt").read_text().strip()


def missing_tools() -> list[str]:
    return [t for t in ("qemu-system-x86_64", "mmdebstrap", "mkfs.ext4", "mkfs.vfat", "dpkg-deb")
            if shutil.which(t) is None]


def fault_powercut(cuts: int, control_cuts: int,
                   seed: int | None = None) -> tuple[bool | None, str, list[str]]:
    """Run both modes; (held, one-line detail, summary lines). held None: cannot run here."""
    if os.geteuid() != 0:
        return None, "not run: building the VM needs root (mmdebstrap, chroot)", []
    if missing := missing_tools():
        return None, f"not run: {', '.join(missing)} missing (scripts/ensure-deps powercut)", []
    seed = seed if seed is not None else int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    vm_dir, build_s, built = build_vm()
    _, how = accel()
    lines = [built.splitlines()[0], f"build {build_s:.0f} s; QEMU {how}; seed {seed}"]
    # the control first: a run that is stopped early has already shown what a loss looks like
    normal, t_norm = run_mode("normal", 1, "normal", control_cuts, vm_dir, rng)
    default, t_def = run_mode("default", 0, None, cuts, vm_dir, rng)
    for s, t in ((default, t_def), (normal, t_norm)):
        n = max(s.cuts, 1)
        per_cut = (t["total_s"] - t["first_boot_s"]) / n
        lines.append(s.line())
        lines.append(f"  {s.mode}: {t['total_s'] / 60:.1f} min, first boot {t['first_boot_s']:.0f} s, "
                     f"{per_cut:.0f} s per cut (boot {(t['boot_s'] - t['first_boot_s']) / n:.0f} s, "
                     f"posting {t['post_s'] / n:.0f} s, fetching back {t['verify_s'] / n:.0f} s)")
    held = default.held(min(cuts, MIN_CUTS))
    control = (f"control saw {normal.missing:,} missing" if normal.missing
               else "control (normal) saw no loss: this run could not tell")
    detail = (f"default: {default.cuts} cuts, {default.missing:,} of {default.acked:,} acknowledged "
              f"missing, {default.corrupt} corrupt, READY {default.ready}/{default.boots}; "
              f"{control} of {normal.acked:,}")
    return held, detail, lines
