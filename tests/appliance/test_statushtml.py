"""The status page's HTML: words an operator reads, not the snapshot's field names; one reason and one
hint for a node in trouble; LEDs only where there are LEDs; units, escaping, limits read as words."""

from __future__ import annotations

import html as htmllib
import re
import time
from typing import Any

from pimail.appliance.statushtml import hint_for, human_duration, render_page
from pimail.health import HealthModel, Severity


def text_of(page: str) -> str:
    """The page as a reader sees it: no tags, no styles, entities decoded, spaces collapsed."""
    body = page.split("<body>", 1)[1]
    body = re.sub(r"<svg.*?</svg>", " ", body, flags=re.S)
    return re.sub(r"\s+", " ", htmllib.unescape(re.sub(r"<[^>]+>", " ", body)))


def daemon_shaped(**changes: Any) -> dict[str, Any]:
    """A snapshot with every key ``Daemon.status_snapshot()`` has (docs/ARCHITECTURE.md)."""
    now = time.time()
    health = HealthModel()
    health.mark_started()
    snap: dict[str, Any] = {
        "version": "0.1.0", "enode": "enode://ab@192.168.1.5:30303", "listen": "0.0.0.0:30303",
        "data_dir": "/var/lib/pimail", "started_at": now - 4000, "uptime_s": 4000.0,
        "health": health.snapshot(), "peer_count": 0, "peers": [], "peers_by_protocol": {},
        "archive": {"backend": "sqlite", "count": 1200, "bytes": 57344, "oldest_sent": now - 7200,
                    "newest_sent": now - 60, "bytes_written_since_start": 4096, "reason": "ok"},
        "retention": {"max_age_s": 30 * 86400, "max_count": 0, "max_bytes": 0,
                      "min_free_disk_bytes": 256_000_000},
        "disk": {"path": "/var/lib/pimail", "free_bytes": 20_000_000_000, "total_bytes": 31_000_000_000},
        "clock": {"trusted": True, "mode": "auto", "source": "timesyncd", "now": now,
                  "trusted_since": now - 3900},
        "counters": {"envelopes_in": 9, "archived": 7, "archive_errors": 0, "envelopes_out": 3,
                     "requests": 1},
        "node_counters": {"inbound_connections": 2, "handshake_timeout": 0, "bad_frame_mac": 0},
        "discovery": {"enabled": False, "inbound_peers": 0, "dialled_peers": 0, "peers_by_protocol": {}},
        "mailserver": {"requests": 1, "rejected": 0, "rate_limited": 0, "denied": 0, "malformed": 0,
                       "completed": 1, "aborted": 0, "envelopes_sent": 3, "bytes_sent": 900,
                       "sync_served": 0, "by_form": {"direct": 1}, "by_protocol": {"shh": 1},
                       "active_deliveries": 0, "open": None},
        "loop_lag_ms": 0.4,
        "loop": {"tick_s": 0.25, "tick": 1397, "max_lag_ms": 1.3, "recent_lag_ms": [0.6, 0.7, 0.5],
                 "recent_cpu_ms": [0.3, 0.4, 0.3]},
        "systemd": {"notify": "none", "watchdog_s": None},
        "metrics_url": None,
        "leds": {"enabled": False, "why_off": "no GPIO on this machine", "patterns": {}},
        "generated_at": now,
    }
    snap.update(changes)
    return snap


def test_retention_and_loop_read_as_words_with_no_duplicate_or_wrong_labels() -> None:
    text = text_of(render_page(daemon_shaped()))
    assert "keeps messages for 30 days" in text and "30 d 0 h" not in text
    assert "largest archive no limit" in text and "most messages no limit" in text
    assert "max no limit" not in text  # "max" was max_bytes with its unit stripped
    assert "leaves free on disk 256.0 MB" in text
    assert "tick" not in text and "1397" not in text and "1 397" not in text
    assert "responsive (worst delay since start 1 ms)" in text


def test_internal_fields_stay_in_status_json() -> None:
    text = text_of(render_page(daemon_shaped()))
    for internal in ("recent lag", "recent cpu", "reason", "open —", "node counters", "handshake",
                     "by form", "by protocol", "archive errors", "watchdog", "notify", "Counters"):
        assert internal not in text, internal
    assert "messages kept 1 200" in text.replace("\u202f", " ")
    assert "requests answered 1" in text and "envelopes sent 3" in text


def test_leds_are_described_only_where_there_are_leds() -> None:
    assert "LEDs" not in text_of(render_page(daemon_shaped()))
    lit = daemon_shaped(leds={"enabled": True, "why_off": "", "patterns": {"green": "on"}})
    assert "LEDs: green on" in text_of(render_page(lit))


def test_a_failing_node_gives_one_reason_and_one_hint() -> None:
    health = HealthModel()
    health.mark_started()
    why = "archive cannot write: disk I/O error"
    health.report("archive.write_failed", Severity.FAILING, why)
    health.report("whisper.archive", Severity.DEGRADED,
                  f"archive write failed; confirmations withheld ({why})")
    health.report("whisper.no_peers", Severity.DEGRADED, "no Whisper or Waku peers connected")
    snap = daemon_shaped(health=health.snapshot())
    snap["archive"]["reason"] = why
    text = text_of(render_page(snap))
    assert text.count("disk I/O error") == 1, text
    assert text.count("What to do:") == 1 and "pimail archive check" in text
    assert "<code>pimail archive check</code>" in render_page(snap)
    assert "Also: no Whisper or Waku peers connected" in text
    from pimail.cli.status import render

    terminal = render(snap)  # `pimail status` gives the same one hint
    assert terminal.count("what to do") == 1 and hint_for("archive.write_failed") in terminal


def test_every_reported_condition_has_a_hint() -> None:
    keys = ["archive.unwritable", "archive.disk_full", "archive.disk_low", "disk.low", "archive.write_failed",
            "archive.backlog", "archive.retention_failed", "whisper.archive", "whisper.no_peers",
            "clock.untrusted", "node.listen", "loop.stalled", "pairing.store", "something.new"]
    hints = [hint_for(k) for k in keys]
    assert all(hints) and "doctor" in hint_for("something.new")
    assert hint_for("node.listen") != hint_for("clock.untrusted") != hint_for("disk.low")


def test_timestamps_are_one_unbreakable_piece() -> None:
    page = render_page(daemon_shaped())
    stamps = re.findall(r"<time[^>]*>([^<]*)</time>", page)
    assert stamps and all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d UTC", s) for s in stamps), stamps
    assert "time{white-space:nowrap}" in page


def test_durations_read_as_people_say_them() -> None:
    assert [human_duration(s) for s in (30 * 86400, 86400, 90061, 7200, 3720, 60, 61, 5)] == [
        "30 days", "1 day", "1 d 1 h", "2 h", "1 h 2 min", "1 min", "1 min 1 s", "5 s"]


def test_unknown_sections_are_listed_and_escaped() -> None:
    page = render_page(daemon_shaped(weird={"<b>": "<i>x</i>", "size_bytes": 1_500_000},
                                     salvage=[{"file": "a.sqlite", "done_at": 1_700_000_000}]))
    assert "<i>x</i>" not in page and "&lt;b&gt;" in page and "1.5 MB" in page
    assert "<h2>Salvage</h2><ul><li><dl><dt>file</dt><dd>a.sqlite</dd>" in page
    assert "2023-11-14 22:13 UTC" in page


def test_zero_caps_read_as_no_limit() -> None:
    text = text_of(render_page({"retention": {"max_bytes": 0, "max_count": 0, "max_age_s": 86400,
                                              "min_free_disk_bytes": 0}}))
    assert text.count("no limit") == 3 and "keeps messages for 1 day" in text
