"""``pimail status``: ask the running daemon how it is (over its control socket)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from pimail.appliance import control
from pimail.appliance.hints import hint_for
from pimail.cli import plural
from pimail.cli.run import add_config_options, load_readonly
from pimail.configfile import refuse_file_as_data_dir
from pimail.errors import RuntimeFailure

EXIT_FAILING = 3  # the daemon answered and says it is failing


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show the running node's health, peers, archive, disk and clock",
        description="Talks to the running daemon over its control socket ($RUNTIME_DIRECTORY or "
        "/run/pimail under systemd, else the data directory). Exit code 0 when it answers, "
        "1 when no daemon answers, 3 when it answers but its health is failing.",
    )
    add_config_options(p)
    p.add_argument("--json", action="store_true", help="print the full status as JSON")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S",
                   help="seconds to wait for an answer (default 5)")
    p.set_defaults(func=run)


def human_bytes(n: float | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "?"


def human_duration(seconds: float | None) -> str:
    if not seconds:
        return "0 s"
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{n} {unit}" for n, unit in ((days, "d"), (hours, "h"), (minutes, "min")) if n]
    return " ".join(parts[:2]) if parts else f"{s} s"


def _utc(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts)) if ts else "-"


def archive_lines(archive: dict[str, Any]) -> list[str]:
    """The archive's check and salvage, when there is something to say."""
    out: list[str] = []
    check = archive.get("check") or {}
    state = check.get("state")
    if state == "running":
        if check.get("phase") == "rows":
            rows, expected = check.get("rows", 0), check.get("expected")
            pct = f" ({100 * rows // expected}%)" if expected else ""
            out.append(f"  check      running: {rows} of {expected if expected is not None else '?'} "
                       f"envelopes read{pct}")
        else:
            out.append("  check      running: quick_check")
    elif state == "damaged":
        out.append(f"  check      damaged: {(check.get('problems') or ['?'])[0]}")
    elif state == "ok":
        out.append("  check      ok (full check since start)")
    salvage = archive.get("salvage") or {}
    if salvage:
        expected = salvage.get("expected")
        of = f" of ~{expected}" if expected is not None else ""
        out.append(f"  salvage    {salvage.get('state')}: {salvage.get('read', 0)}{of} read, "
                   f"{salvage.get('salvaged', 0)} salvaged, {salvage.get('rejected', 0)} rejected "
                   f"from {salvage.get('source')}")
        if salvage.get("error"):
            out.append(f"             ({salvage['error']})")
    for path in archive.get("damaged_files") or []:
        out.append(f"  kept       {path} (damaged; remove it when done)")
    return out


def render(snap: dict[str, Any]) -> str:
    """The status dict as lines for a terminal."""
    health = snap.get("health") or {}
    lines = [f"pimail {snap.get('version', '?')} — {health.get('summary', '?')}"]
    lines.append(f"  enode      {snap.get('enode') or '-'}")
    since = _utc(snap.get("started_at"))
    lines.append(f"  uptime     {human_duration(snap.get('uptime_s'))} (since {since})")
    last_boot = snap.get("last_boot")
    if last_boot:
        at = f" (last log {last_boot['at']})" if last_boot.get("at") else ""
        lines.append(f"  last boot ended: {last_boot.get('words') or last_boot.get('ended')}{at}")
    conditions = health.get("conditions") or []
    for cond in conditions:
        lines.append(f"  {cond.get('severity', '?'):<10} {cond.get('message', '')}")
    if conditions:
        lines.append(f"  what to do {hint_for(str(conditions[0].get('key', '')))}")
    archive = snap.get("archive")
    if archive and archive.get("count") is not None:
        oldest = _utc(archive.get("oldest_sent"))
        lines.append(
            f"  archive    {plural(archive.get('count', 0), 'envelope')}, "
            f"{human_bytes(archive.get('bytes'))} "
            f"({archive.get('backend')}), oldest {oldest}"
        )
    elif archive and archive.get("state") == "unreadable":
        why = (archive.get("unreadable") or {}).get("why", "?")
        lines.append(f"  archive    unreadable: {why}")
    else:
        lines.append("  archive    -")
    lines += archive_lines(archive or {})
    ret = snap.get("retention") or {}
    limits = []
    if ret.get("max_age_s"):
        limits.append(f"max age {human_duration(ret['max_age_s'])}")
    if ret.get("max_count"):
        limits.append(f"max {plural(ret['max_count'], 'envelope')}")
    if ret.get("max_bytes"):
        limits.append(f"max {human_bytes(ret['max_bytes'])}")
    if ret.get("min_free_disk_bytes"):
        limits.append(f"keep {human_bytes(ret['min_free_disk_bytes'])} free")
    lines.append(f"  retention  {', '.join(limits) or 'none'}")
    disk = snap.get("disk") or {}
    lines.append(
        f"  disk       {human_bytes(disk.get('free_bytes'))} free of {human_bytes(disk.get('total_bytes'))}"
        f" at {disk.get('path', '?')}"
    )
    clock = snap.get("clock") or {}
    trusted = "trusted" if clock.get("trusted") else "NOT trusted (relaying, not archiving)"
    lines.append(f"  clock      {trusted} (mode {clock.get('mode')}, {clock.get('source')})")
    counters = snap.get("counters") or {}
    lines.append(
        f"  traffic    {plural(counters.get('envelopes_in', 0), 'envelope')} in, "
        f"{counters.get('envelopes_out', 0)} out, "
        f"{counters.get('archived', 0)} archived, {plural(counters.get('requests', 0), 'history request')}"
    )
    peers = snap.get("peers") or []
    by_protocol = snap.get("peers_by_protocol") or {}
    split = ", ".join(f"{k} {v}" for k, v in sorted(by_protocol.items()))
    lines.append(f"  peers      {len(peers)}" + (f" ({split})" if split else ""))
    for p in peers:
        direction = "in " if p.get("inbound") else "out"
        lines.append(
            f"    {direction} {p.get('enode', '')[:28]}…@{p.get('address')}  {p.get('client', '')[:40]}  "
            f"{p.get('protocol', '')}  ↓{human_bytes(p.get('bytes_in'))} ↑{human_bytes(p.get('bytes_out'))}"
        )
    lines.append(f"  discovery  {_discovery_line(snap.get('discovery') or {})}")
    pairing = snap.get("pairing")
    if pairing:
        if pairing.get("window_open"):
            lines.append(f"  pairing    open, {pairing.get('window_remaining_s')} s left")
        else:
            paired = len(pairing.get("paired_clients") or [])
            who = "any phone may request history" if pairing.get("mode") == "open" else "allowlist"
            lines.append(f"  pairing    closed; {who} ({paired} paired)")
    return "\n".join(lines)


def _discovery_line(disc: dict[str, Any]) -> str:
    if not disc.get("enabled"):
        return "off"
    packets = disc.get("packets") or {}
    dropped = {k.removeprefix("dropped_"): v for k, v in packets.items() if k.startswith("dropped_") and v}
    drops = ", ".join(f"{v} {k}" for k, v in sorted(dropped.items())) or "none dropped"
    return (
        f"{disc.get('table_size', 0)} nodes in the table, {disc.get('dialled_peers', 0)} dialled / "
        f"{disc.get('inbound_peers', 0)} inbound peers, packets {packets.get('packets_in', 0)} in / "
        f"{packets.get('packets_out', 0)} out ({drops})"
    )


def run(args: argparse.Namespace) -> int:
    config = load_readonly(args).config
    path = control.find_socket(config.node.data_dir)
    if path is None:
        refuse_file_as_data_dir(Path(config.node.data_dir))  # the likelier mistake than a stopped node
        raise RuntimeFailure(
            f"no running pimail found (no control socket in {config.node.data_dir} or /run/pimail); "
            "start it with `pimail run` or `systemctl start pimail`"
        )
    snap = control.call(path, "status", timeout=args.timeout)
    if not isinstance(snap, dict):
        raise RuntimeFailure("the daemon sent an unexpected status")
    if args.json:
        print(json.dumps(snap, indent=2, sort_keys=True))
    else:
        print(render(snap))
    return EXIT_FAILING if (snap.get("health") or {}).get("state") == "failing" else 0
