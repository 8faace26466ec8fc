"""pimail.appliance.lastboot: the image's record of how the previous boot ended."""

from __future__ import annotations

from pathlib import Path

from pimail.appliance import lastboot
from pimail.cli.status import render


def test_reads_each_kind_the_image_writes(tmp_path: Path) -> None:
    f = tmp_path / "last-boot"
    for ended in ("clean", "watchdog", "power-loss", "first"):
        f.write_text(f"ended={ended}\nat=2026-12-02T14:03:11+00:00\n")
        got = lastboot.read(f)
        assert got == {"ended": ended, "words": lastboot.WORDS[ended], "at": "2026-12-02T14:03:11+00:00"}


def test_absent_empty_or_garbled_file_reports_nothing(tmp_path: Path) -> None:
    assert lastboot.read(tmp_path / "missing") is None
    f = tmp_path / "last-boot"
    f.write_text("")
    assert lastboot.read(f) is None
    f.write_bytes(b"\xff\xfe nonsense\n")
    assert lastboot.read(f) is None


def test_unknown_kind_is_kept_with_unknown_words(tmp_path: Path) -> None:
    f = tmp_path / "last-boot"
    f.write_text("ended=meteor\n")
    assert lastboot.read(f) == {"ended": "meteor", "words": "unknown", "at": ""}


def test_status_text_shows_how_the_last_boot_ended() -> None:
    snap = {"version": "0", "health": {"summary": "ok"},
            "last_boot": {"ended": "watchdog", "words": lastboot.WORDS["watchdog"], "at": "2026-12-02T14:03"}}
    text = render(snap)
    assert "last boot ended: reset by the hardware watchdog" in text
    assert "last boot" not in render({"version": "0", "health": {"summary": "ok"}})


def test_status_page_shows_how_the_last_boot_ended() -> None:
    from pimail.appliance.statushtml import render_page

    record = {"ended": "power-loss", "words": lastboot.WORDS["power-loss"], "at": ""}
    html = render_page({"last_boot": record})
    assert "power loss or crash" in html
