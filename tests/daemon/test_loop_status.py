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

            await asyncio.sleep(0.6)
            first = (await status())["loop"]
            assert first["tick"] >= 1 and first["tick_s"] > 0
            assert len(first["recent_lag_ms"]) == len(first["recent_cpu_ms"]) == min(first["tick"], 64)
            # > tick_s of the loop thread's CPU time (so at least as much wall time on a busy
            # machine): the tick due inside is >= 0.35 s late
            end = time.thread_time() + 0.6
            while time.thread_time() < end:  # hold the loop: the next tick is late, with CPU
                pass
            await asyncio.sleep(0.6)
            after = (await status())["loop"]
            assert after["tick"] > first["tick"]
            new = after["tick"] - first["tick"]
            lags = after["recent_lag_ms"][-new:]
            cpus = after["recent_cpu_ms"][-new:]
            worst = max(range(new), key=lambda i: lags[i])
            assert lags[worst] >= 300 and cpus[worst] >= 300
            assert after["max_lag_ms"] >= lags[worst]
        finally:
            await daemon.stop()

    asyncio.run(asyncio.wait_for(scenario(), 60))
