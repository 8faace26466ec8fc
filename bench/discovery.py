"""Discovery on a simulated network: 2,000 discv4 nodes on 127.0.0.1 in a child process, and one
pimail ``Discovery`` (this process) given three of them as bootnodes.

Kademlia caps what a table can hold: bucket *d* takes at most 16 of the nodes at log distance *d*,
so 2,000 random ids fill about 120–130 entries (the bench computes this reachable capacity for the
run's ids); a table of 200 entries needs a network of tens of thousands of nodes. So "filled" is
measured two ways (docs/PERFORMANCE.md): the verified table entries (they answered our Ping)
against the capacity, at 60 s and the time to 90 % of it, with the buckets still short; and the
*live verified nodes*: distinct nodes that answered our Ping during the run and that the node
keeps in its table, its replacement lists or its node database, at 60 s and when they passed 200.
Also printed: the verified replacement entries, the discovery CPU of this process over a window
right after the fill phase (the backoff lookups of the buckets that stay short included) and the
RSS it added. Everything binds 127.0.0.1 with netrestrict 127.0.0.0/8.

    python -m bench --areas discovery          # or: python -m bench.discovery [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from bench.common import Result
from pimail.config import DiscoveryConfig
from pimail.crypto.keys import Enode, NodeKey
from pimail.discovery.enr import Record
from pimail.discovery.nodedb import FILENAME
from pimail.discovery.service import Discovery
from pimail.discovery.table import BUCKET_SIZE, MAX_REPLACEMENTS, Node, Table, log_distance
from pimail.discovery.udp import UDPTransport, parse_netrestrict

NETWORK = 2000
KNOWN_TARGET = 200  # the "≥ 200 live entries", counted over everything the node keeps
FILL_LIMIT_S = 120.0
LOOPBACK = parse_netrestrict(["127.0.0.0/8"])


# -- the simulated network (child process) ----------------------------------------------------------
async def _serve_network(count: int, seed: int) -> None:
    rng = random.Random(seed)
    keys = [NodeKey(rng.randbytes(32)) for _ in range(count)]
    config = DiscoveryConfig(packets_per_s=10_000.0, packet_burst=10_000)
    transports: list[UDPTransport] = []
    tables: list[Table] = []
    for key in keys:
        table = Table(key.node_id, rng=random.Random(rng.random()))
        holder: dict[str, Record] = {}
        transport = UDPTransport(key, config, table, lambda h=holder: h["r"], netrestrict=LOOPBACK)
        port = await transport.start("127.0.0.1", 0)
        holder["r"] = Record.create(key.private, 1, ip="127.0.0.1", tcp=port, udp=port)
        transports.append(transport)
        tables.append(table)
    nodes = [Node(k.public, "127.0.0.1", _port(t), _port(t)) for k, t in zip(keys, transports, strict=True)]
    ids = [int.from_bytes(n.node_id, "big") for n in nodes]
    for i, table in enumerate(tables):
        # a settled Kademlia table: up to 16 random nodes of every log distance
        by_distance: dict[int, list[int]] = {}
        for j in range(count):
            if j != i:
                by_distance.setdefault((ids[i] ^ ids[j]).bit_length(), []).append(j)
        for members in by_distance.values():
            for j in rng.sample(members, min(BUCKET_SIZE, len(members))):
                table.add_seen(nodes[j], 0.0)
    info = {"nodes": [[n.pubkey.hex(), n.udp] for n in nodes]}
    sys.stdout.write(json.dumps(info) + "\n")
    sys.stdout.flush()
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)  # until the parent closes it


def _port(t: UDPTransport) -> int:
    assert t._transport is not None
    return int(t._transport.get_extra_info("sockname")[1])


def capacity_by_distance(self_id: bytes, ids: list[bytes]) -> dict[int, int]:
    """How many entries each bucket of ``self_id`` can hold from ``ids`` (16 per log distance)."""
    per: dict[int, int] = {}
    for nid in ids:
        d = log_distance(self_id, nid)
        if d:
            per[d] = per.get(d, 0) + 1
    return {d: min(BUCKET_SIZE, c) for d, c in per.items()}


def capacity(self_id: bytes, ids: list[bytes]) -> int:
    """How many entries a table of ``self_id`` can hold from ``ids``: its reachable capacity."""
    return sum(capacity_by_distance(self_id, ids).values())


def shortfall(disc: Discovery, cap: dict[int, int]) -> str:
    """The buckets below their capacity, as ``d250 14/16`` (log distance, verified entries/capacity)."""
    verified = disc.transport.verified
    have: dict[int, int] = {}
    for n in disc.table.nodes():
        if verified(n.node_id, n.ip):
            d = log_distance(disc.key.node_id, n.node_id)
            have[d] = have.get(d, 0) + 1
    short = [f"d{d} {have.get(d, 0)}/{c}" for d, c in sorted(cap.items(), reverse=True) if have.get(d, 0) < c]
    return ", ".join(short) or "none"


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the node under test (this process) --------------------------------------------------------------
def _db_live_ids(path: Path, since: float) -> set[bytes]:
    """Ids in the node database that answered a Ping after ``since`` (read-only; none before the
    first write)."""
    if not path.exists():
        return set()
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {bytes(r[0]) for r in conn.execute("SELECT id FROM nodes WHERE last_pong >= ?", (since,))}
        finally:
            conn.close()
    except sqlite3.Error:
        return set()


def known_live(disc: Discovery, db_path: Path, since: float) -> tuple[int, int, int]:
    """(verified table entries, verified replacements, live verified nodes): the last is the
    distinct nodes that answered our Ping after ``since`` (wall clock) and that the node keeps in
    its table, its replacement lists or its node database (with the rows of its next write)."""
    verified = disc.transport.verified
    entries = {n.node_id for n in disc.table.nodes() if verified(n.node_id, n.ip)}
    spares = {n.node_id for n in disc.table.replacement_nodes() if verified(n.node_id, n.ip)}
    recent = {i for i in entries | spares | disc.unsaved_ids() if disc.transport.last_pong(i) >= since}
    stored = _db_live_ids(db_path, since)
    return len(entries), len(spares), len(recent | stored)


async def _measure(count: int, steady_s: float) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    child = subprocess.Popen([sys.executable, "-m", "bench.discovery", "--serve", str(count)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard)))
    try:
        assert child.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, child.stdout.readline)
        network = json.loads(line)["nodes"]
        boots = [Enode(bytes.fromhex(pub), "127.0.0.1", port) for pub, port in network[:3]]
        key = NodeKey.generate()
        ids = [Enode(bytes.fromhex(pub)).node_id for pub, _ in network]
        per_bucket = capacity_by_distance(key.node_id, ids)
        cap = sum(per_bucket.values())
        with TemporaryDirectory(prefix="pimail-bench-disc-") as tmp:
            db_path = Path(tmp) / FILENAME
            rss0 = _rss_mb()
            cpu0 = time.process_time()
            disc = Discovery(key, DiscoveryConfig(), listen=("127.0.0.1", 0), tcp_port=30303,
                             data_dir=Path(tmp), bootnodes=boots, netrestrict=LOOPBACK)
            started, since = time.monotonic(), time.time()
            await disc.start()
            t100 = t90 = t_full = t_known = None
            at60: dict[str, Any] | None = None
            # the fill phase: at least 60 s, then until 90 % of capacity and 200 live nodes were
            # reached, or FILL_LIMIT_S
            while (elapsed := time.monotonic() - started) < FILL_LIMIT_S:
                await asyncio.sleep(0.25)
                live, spare_live, known = known_live(disc, db_path, since)
                if t100 is None and live >= 100:
                    t100 = elapsed
                if t90 is None and live >= 0.9 * cap:
                    t90 = elapsed
                if t_full is None and live >= cap:
                    t_full = elapsed
                if t_known is None and known >= KNOWN_TARGET:
                    t_known = elapsed
                if at60 is None and elapsed >= 60:
                    at60 = {"size": len(disc.table), "live": live, "spare_live": spare_live, "known": known,
                            "lookups": disc.counters["lookups"], "cpu": time.process_time() - cpu0,
                            "short": shortfall(disc, per_bucket)}
                if at60 is not None and t90 is not None and t_known is not None:
                    break
            fill_s = time.monotonic() - started
            # steady state: the window right after the fill phase, backoff lookups included (the
            # lookups of buckets that stay short double their spacing up to the refresh interval)
            lookups1 = disc.counters["lookups"]
            cpu1, wall1 = time.process_time(), time.monotonic()
            await asyncio.sleep(steady_s)
            cpu_share = (time.process_time() - cpu1) / (time.monotonic() - wall1)
            window_lookups = disc.counters["lookups"] - lookups1
            rss_added = _rss_mb() - rss0
            live, spare_live, known = known_live(disc, db_path, since)
            size = len(disc.table)
            spares = sum(1 for _ in disc.table.replacement_nodes())
            short = shortfall(disc, per_bucket)
            await disc.stop()
            stored = len(_db_live_ids(db_path, since))
        return {"t100": t100, "t90": t90, "t_full": t_full, "t_known": t_known, "capacity": cap,
                "live": live, "size": size, "spares": spares, "spare_live": spare_live, "known": known,
                "stored": stored, "at60": at60, "fill_s": fill_s, "window_lookups": window_lookups,
                "short": short, "cpu_share": cpu_share, "rss_added": rss_added}
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            child.wait(10)
        except subprocess.TimeoutExpired:
            child.kill()


def _seconds(value: float | None) -> float:
    return value if value is not None else float("inf")


def run(quick: bool) -> list[Result]:
    steady = 20.0 if quick else 60.0
    m = asyncio.run(_measure(NETWORK, steady))
    area = "discovery"
    cap = m["capacity"]
    note = f"{NETWORK:,} simulated nodes on 127.0.0.1; shared machine"
    at60 = m["at60"] or {}
    live60 = at60.get("live", 0)
    return [
        Result(area, "verified table entries at 60 s", live60, "entries", target=0.9 * cap,
               note=f"= {100 * live60 / cap:.0f} % of the reachable capacity {cap} (16 per log "
                    f"distance for these ids; the target is 90 % of it); table {at60.get('size', 0)}; "
                    f"short: {at60.get('short', '?')}; {note}"),
        Result(area, "time to 90 % of table capacity", _seconds(m["t90"]), "s", target=60.0,
               higher_is_better=False, note=f"100 verified entries at {_seconds(m['t100']):.1f} s; "
                                            f"full capacity at {_seconds(m['t_full']):.1f} s"),
        Result(area, "verified replacement entries at 60 s", at60.get("spare_live", 0), "entries",
               note=f"at most {MAX_REPLACEMENTS} per full bucket"),
        Result(area, "live verified nodes at 60 s", at60.get("known", 0), "nodes", target=float(KNOWN_TARGET),
               note="distinct nodes that answered our Ping during the run, in the table, the "
                    "replacement lists or the node database"),
        Result(area, f"time to {KNOWN_TARGET} live verified nodes", _seconds(m["t_known"]), "s",
               target=60.0, higher_is_better=False,
               note=f"{at60.get('lookups', 0)} lookups and {at60.get('cpu', 0.0):.1f} CPU-s "
                    "in the first 60 s"),
        Result(area, "verified table entries at the end", m["live"], "entries",
               note=f"table {m['size']}, replacements {m['spares']} ({m['spare_live']} verified), "
                    f"{m['known']} live verified nodes, node database {m['stored']}; short: {m['short']}"),
        Result(area, "steady-state discovery CPU", 100.0 * m["cpu_share"], "% of a core", target=2.0,
               higher_is_better=False,
               note=f"window {steady:.0f} s from {m['fill_s']:.0f} s, {m['window_lookups']} lookups in it; "
                    f"= {60 * m['cpu_share']:.2f} CPU-s/min"),
        Result(area, "RSS added by discovery", m["rss_added"], "MB", target=8.0, higher_is_better=False,
               note="at the end of the steady window"),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.discovery", description=__doc__.splitlines()[0])
    ap.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true")
    a = ap.parse_args()
    if a.serve:
        asyncio.run(_serve_network(a.serve, seed=os.getpid()))
        return
    from bench.common import print_table

    print_table(run(a.quick))


if __name__ == "__main__":
    main()
