"""``python -m bench`` — every benchmark in one table (``make bench``; ``--quick`` for about a minute).

    python -m bench [--quick] [--json FILE] [--areas a,b] [--target ENODE --target-pid PID] [--cpu-limited]

Areas: the per-layer modules (transport, whisper, waku (waku/1 beside shh/6), archive, mailserver,
daemon, memory (idle and after-load RSS of ``pimail run``), postgres when
PIMAIL_TEST_PG_URL/PIMAIL_BENCH_PG_URL is set) and ``load``, the end-to-end run
against a real ``pimail run`` (bench/load.py). ``--target`` runs the same load against another
mailserver and prints pimail/other ratios (``python -m bench.load`` takes several targets and prints
them side by side). ``--cpu-limited`` adds a single-core, CPU-quota run of the load (a rough
Raspberry Pi Zero 2 W stand-in), reported under its own area. Figures are printed, never asserted;
an area that fails is reported as such and the others still run (exit code 1).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import platform
import sys
import time
import traceback
from pathlib import Path

from bench.common import Result, print_table

QUICK_AREAS = ["transport", "whisper", "waku", "load"]
ALL_AREAS = [
    "transport", "whisper", "waku", "archive", "mailserver", "daemon", "memory", "discovery", "postgres",
    "load",
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs (about a minute)")
    ap.add_argument("--json", type=Path, help="also write the results to this file")
    ap.add_argument("--areas", help=f"comma-separated subset of {','.join(ALL_AREAS)}")
    ap.add_argument("--target", help="enode of another mailserver to run the same load against")
    ap.add_argument("--target-pid", type=int, help="its process id, or a wrapper's such as timeout "
                    "(for CPU, RSS and bytes written); default: the process listening on its port")
    ap.add_argument("--target-form", choices=("direct", "envelope", "legacy"), default="direct",
                    help="how to ask the target for history: direct (pimail, status-go), envelope "
                    "(status-go RPC form) or legacy (go-ethereum wnode); default direct")
    ap.add_argument("--target-password", default="status-offline-inbox",
                    help="the target's mailserver password for the envelope forms (wnode -test: wwww)")
    ap.add_argument("--cpu-limited", action="store_true", help="also run the load on one CPU-limited core")
    a = ap.parse_args(argv)
    if a.areas:
        a.area_list = [x.strip() for x in a.areas.split(",") if x.strip()]
        bad = [x for x in a.area_list if x not in ALL_AREAS]
        if bad:
            ap.error(f"unknown area {', '.join(bad)} (choose from {', '.join(ALL_AREAS)})")
    else:
        a.area_list = QUICK_AREAS if a.quick else ALL_AREAS
    if a.target_pid is not None and not a.target:
        ap.error("--target-pid needs --target")
    if a.target:
        try:
            from pimail.whisper.client import parse_enode

            parse_enode(a.target, "--target")
        except Exception as exc:  # UserError with a readable line
            ap.error(str(exc))
    if a.target_pid is not None and not Path(f"/proc/{a.target_pid}").exists():
        ap.error(f"--target-pid {a.target_pid}: no such process")
    return a


def run_area(name: str, a: argparse.Namespace) -> list[Result]:
    pg_url = os.environ.get("PIMAIL_TEST_PG_URL") or os.environ.get("PIMAIL_BENCH_PG_URL")
    if name == "postgres" and not pg_url:
        return [Result(name, "skipped: no PostgreSQL URL in PIMAIL_TEST_PG_URL", 0, "", note="not run")]
    if name == "load":
        from bench.load import run_load

        out = run_load(a.quick, a.target, a.target_pid, target_form=a.target_form,
                       target_password=a.target_password)
        if a.cpu_limited:
            out += run_load(a.quick, None, None, cpu_limited=True)
        return out
    mod = importlib.import_module(f"bench.{name}")
    results: list[Result] = mod.run(a.quick)
    return results


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    if a.cpu_limited and "load" not in a.area_list:
        a.area_list = [*a.area_list, "load"]
    results: list[Result] = []
    failed: list[str] = []
    started = time.perf_counter()
    for name in a.area_list:
        t0 = time.perf_counter()
        try:
            got = run_area(name, a)
        except Exception as exc:
            traceback.print_exc()
            failed.append(name)
            got = [Result(name, f"FAILED: {type(exc).__name__}: {exc}"[:52], 0, "", note="see traceback")]
        results += got
        print(f"# {name}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    print(f"# pimail bench on {platform.machine()} with {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}, {'quick' if a.quick else 'full'}, "
          f"{time.perf_counter() - started:.0f} s; the machine may be shared, so figures are indicative")
    print_table(results)
    if a.json:
        a.json.write_text(json.dumps({
            "quick": a.quick, "areas": a.area_list, "target": a.target, "failed": failed,
            "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "results": [r.as_dict() for r in results],
        }, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
