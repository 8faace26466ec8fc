"""``pimail status`` ``loop``: every recent tick of the loop monitor, read over the control socket
(the fault suite merges these by tick number); a loop stall shows up as a late tick with CPU."""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from pimail.appliance import control
from pimail.configfile import load_config
from pimail.daemon import Daemon


def test_status_reports_recent_ticks_and_a_stall() -> None:
    root = Path(tempfile.mkdtemp(prefix="pmi-"))
    conf = root / "pimail.toml"
    conf.write_text(
        f'[node]\nlisten = "127.0.0.1:0"\ndata_dir = "{root / "data"}"\n'
        '[archive]\nclock_trust = "always"\nmin_free_disk = "1MB"\n'
        '[status]\npage = false\nmetrics = false\n'
    )

    async def scenario() -> None:
        daemon = Daemon(load_config(conf).config, config_path=conf, env={})
        await daemon.start()
        try:
            sock = control.socket_path(root / "data", {})
            loop = asyncio.get_running_loop()

            async def status() -> dict[str, Any]:
                snap: dict[str, Any] = await loop.run_in_executor(None, control.call, sock, "status")
                return snap

            async def ticked_past(tick: int) -> dict[str, Any]:
                for _ in range(600):
                    loop_status: dict[str, Any] = (await status())["loop"]
                    if loop_status["tick"] > tick:
                        return loop_status
                    await asyncio.sleep(0.05)
                raise AssertionError(f"the loop monitor did not tick past {tick}")

            first = await ticked_past(0)
            assert first["tick"] >= 1 and first["tick_s"] > 0
            assert len(first["recent_lag_ms"]) == len(first["recent_cpu_ms"]) == min(first["tick"], 64)
            # hold the loop for 0.6 s of its own CPU time (not wall time: on a loaded machine the
            # wall clock runs ahead of it). The tick due inside measures all of it as CPU, and it is
            # late by at least the CPU time less one tick interval — whatever else the machine does.
            cpu0 = time.thread_time()
            while time.thread_time() - cpu0 < 0.6:
                pass
            after = await ticked_past(first["tick"] + 1)
            new = min(after["tick"] - first["tick"], len(after["recent_lag_ms"]))
            lags = after["recent_lag_ms"][-new:]
            cpus = after["recent_cpu_ms"][-new:]
            held = max(range(new), key=lambda i: cpus[i])
            tick_ms = after["tick_s"] * 1000
            assert cpus[held] >= 600
            assert lags[held] >= cpus[held] - tick_ms - 1  # 1 ms: the figures are rounded
            assert after["max_lag_ms"] >= lags[held]
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
