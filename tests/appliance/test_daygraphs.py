"""The 24-hour graphs in a real headless Chromium: known counts produced in known 10-minute slots
(a fake clock) are what the page's SVGs hold; the page fits a 390 px phone with no sideways
scrolling, and full-page screenshots at 1280 and 390 px are real pictures
(``PIMAIL_SCREENSHOTS=DIR`` keeps them in DIR to look at)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from pimail.appliance.activity import SLOT_S, SLOTS, ActivityLog, slot_of
from pimail.appliance.daygraphs import render_day
from pimail.appliance.statuspage import StatusPage
from pimail.config import StatusConfig
from pimail.crypto.keys import Enode, NodeKey
from pimail.health import HealthModel, Severity
from tests.appliance.cdp import Browser
from tests.appliance.pairing_fixtures import read_png_gray, real_provider

NOW = 1_796_218_000.0  # 2026-12-02 13:26:40 UTC, the fake clock's "now"
SHOTS = Path(os.environ.get("PIMAIL_SCREENSHOTS", "")) if os.environ.get("PIMAIL_SCREENSHOTS") else None

# (slots before now, envelopes archived in it, history envelopes served in it, shh/6, waku/1 peers):
# a few hours a day ago, then the node ran without a break for the last six hours
PRODUCED = [(130, 12, 0, 1, 0), (129, 30, 4, 2, 0), (128, 7, 0, 2, 1), (90, 40, 7, 2, 1), (60, 3, 120, 2, 3)]
PRODUCED += [(back, (back * 7) % 23, (back * 5) % 11 if back % 3 == 0 else 0, 1 + (back // 6) % 3,
              (back // 4) % 4) for back in range(35, -1, -1)]


def produced_log() -> ActivityLog:
    """Observations every 5 s in the slots of PRODUCED, nothing in between (the node was off)."""
    log = ActivityLog()
    archived = served = 0
    for back, n_archived, n_served, shh, waku in PRODUCED:
        start = (slot_of(NOW) - back) * SLOT_S
        steps = 4
        for step in range(steps):
            archived += n_archived // steps + (n_archived % steps if step == steps - 1 else 0)
            served += n_served // steps + (n_served % steps if step == steps - 1 else 0)
            log.observe(start + 5 + step * 5, archived=archived, served=served,
                        peers={"shh/6": shh, "waku/1": waku}, archive_bytes=1_000_000 * (SLOTS - back))
    return log


def expected(column: int) -> list[int | None]:
    values: list[int | None] = [None] * SLOTS
    for row in PRODUCED:
        values[SLOTS - 1 - row[0]] = row[column]
    return values


def test_render_day_holds_the_produced_counts_without_a_browser() -> None:
    html = render_day(produced_log().snapshot(NOW))
    archived = ",".join("" if v is None else str(v) for v in expected(1))
    assert f'data-series="archived" data-first-slot-at="{(slot_of(NOW) - SLOTS + 1) * SLOT_S}"' in html
    assert f'data-values="{archived}"' in html
    total = sum(row[1] for row in PRODUCED)
    assert f"{total} in 24 h" in html
    assert "<script" not in html and "href=" not in html


def _provider(log: ActivityLog) -> Any:
    key = NodeKey.generate()
    health = HealthModel()
    health.mark_started()
    # a node in trouble: its reason and hint must fit a phone too
    health.report("archive.disk_low", Severity.DEGRADED,
                  "disk almost full (120 MB free) and the archive is empty")
    base = real_provider(health, key)

    def provider() -> dict[str, Any]:
        snap = base()
        snap["activity"] = log.snapshot(NOW)
        snap["clock"]["now"] = NOW
        return snap

    return key, provider


READ_GRAPHS = """(() => {
  const out = {};
  for (const el of document.querySelectorAll('[data-series]')) {
    out[el.dataset.series] = el.dataset.values.split(',').map(v => v === '' ? null : Number(v));
  }
  out.bars = {};
  for (const r of document.querySelectorAll('svg[data-series=archived] rect')) {
    out.bars[r.dataset.slotAt] = Number(r.dataset.v);
  }
  out.svgWidths = [...document.querySelectorAll('svg.graph')].map(s => s.getBoundingClientRect().width);
  return out;
})()"""

LAYOUT = """({scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth,
  wide: [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right >
         document.documentElement.clientWidth + 0.5).map(e => e.tagName + '.' + e.className).slice(0, 5),
  timeHeights: [...document.querySelectorAll('time')].map(t => t.getBoundingClientRect().height),
  lineHeight: parseFloat(getComputedStyle(document.body).lineHeight)})"""


def test_graphs_in_headless_chromium_at_desktop_and_phone_width(tmp_path: Path) -> None:
    log = produced_log()
    key, provider = _provider(log)
    enode = Enode(key.public, "192.168.1.50", 30303)
    page = StatusPage(StatusConfig(page_listen="127.0.0.1:0"), provider, enode)
    shots = SHOTS or tmp_path

    async def main() -> None:
        assert await page.start()
        try:
            url = f"http://127.0.0.1:{page.port}/"
            async with Browser() as browser:
                for width in (1280, 390):
                    await browser.open(url, width)
                    graphs = await browser.evaluate(READ_GRAPHS)
                    assert graphs["archived"] == expected(1)
                    assert graphs["served"] == expected(2)
                    assert graphs["peers:shh/6"] == expected(3)
                    assert graphs["peers:waku/1"] == expected(4)
                    first = (slot_of(NOW) - SLOTS + 1) * SLOT_S
                    assert graphs["bars"] == {
                        str(first + (SLOTS - 1 - back) * SLOT_S): n for back, n, *_ in PRODUCED if n
                    }
                    disk = graphs["disk_bytes"]
                    assert disk[-1] == 1_000_000 * SLOTS and disk[SLOTS - 1 - 60] == 1_000_000 * (SLOTS - 60)
                    assert all(w > 0.5 * min(width, 640) for w in graphs["svgWidths"]), graphs["svgWidths"]
                    layout = await browser.evaluate(LAYOUT)
                    assert layout["scroll"] <= layout["client"] == width, layout  # no sideways scrolling
                    assert not layout["wide"], layout
                    # every timestamp is one line at this width (they used to wrap onto three)
                    assert all(h < 1.5 * layout["lineHeight"] for h in layout["timeHeights"]), layout
                    await browser.screenshot(shots / f"status-{width}.png")
        finally:
            await page.stop()

    asyncio.run(asyncio.wait_for(main(), 180))
    for width in (1280, 390):
        w, h, gray = read_png_gray(shots / f"status-{width}.png")
        assert w == width and h > 1000
        # a real picture: dark text, mid-grey lines and light cards, not one flat colour
        assert min(gray) < 60 and max(gray) > 230 and len(set(gray[:: 97])) > 20
