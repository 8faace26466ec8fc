"""pimail-journal-keep (the previous boot's journal on the data medium, and how that boot ended)
run for real on a scratch tree; only journalctl is a stand-in that prints numbered entries and
honours --cursor-file the way the real one does (new entries only)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.image.conftest import IMAGE

SCRIPT = IMAGE / "rootfs/usr/local/sbin/pimail-journal-keep"
# Each call prints the entries after the saved cursor up to $JOURNAL_END, then saves the cursor.
JOURNALCTL = """#!/bin/sh
for a in "$@"; do case $a in --cursor-file=*) cur=${a#--cursor-file=} ;; esac; done
start=$(cat "$cur" 2>/dev/null || echo 0)
end=$(cat "$JOURNAL_END")
i=$((start + 1))
while [ "$i" -le "$end" ]; do
    printf '2026-12-02T14:%02d:00+0000 pimail kernel: entry %d %s\\n' $((i % 60)) "$i" "$PAD"
    i=$((i + 1))
done
echo "$end" > "$cur"
"""


class Box:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.dir = root / "data/system-journal"
        stub = root / "journalctl"
        stub.write_text(JOURNALCTL)
        stub.chmod(0o755)
        self.end = root / "journal-end"
        self.end.write_text("0")
        self.bootstatus = root / "bootstatus"
        self.bootstatus.write_text("0\n")
        self.env = {
            "PATH": "/usr/bin:/bin",
            "PIMAIL_JOURNAL_DIR": str(self.dir),
            "PIMAIL_LAST_BOOT_FILE": str(root / "run/last-boot"),
            "PIMAIL_WATCHDOG_BOOTSTATUS": str(self.bootstatus),
            "PIMAIL_JOURNALCTL": str(stub),
            "PIMAIL_JOURNAL_MAX_KB": "64",
            "JOURNAL_END": str(self.end),
            "PAD": "",
        }

    def run(self, *args: str) -> str:
        proc = subprocess.run(["/bin/sh", str(SCRIPT), *args], env=self.env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def log_entries(self, boot: int) -> None:
        self.end.write_text(str(boot))

    def last_boot(self) -> dict[str, str]:
        lines = (self.root / "run/last-boot").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines)


@pytest.fixture
def box(tmp_path: Path) -> Box:
    return Box(tmp_path)


def test_first_boot_then_clean_shutdown_keeps_the_whole_journal(box: Box) -> None:
    assert "ended: first" in box.run("boot")
    assert box.last_boot()["ended"] == "first"
    box.log_entries(5)
    box.run("save")
    box.log_entries(9)
    box.run("stop")
    kept = (box.dir / "current.log").read_text().splitlines()
    assert [ln.split("entry ")[1].strip() for ln in kept] == [str(i) for i in range(1, 10)]  # each once
    box.end.write_text("0")  # the next boot's journal starts afresh
    box.run("boot")
    assert box.last_boot() == {"ended": "clean", "at": "2026-12-02T14:09:00+0000"}
    assert len((box.dir / "previous.log").read_text().splitlines()) == 9
    assert (box.dir / "current.log").read_text() == ""


def test_no_stop_is_a_power_loss_and_the_last_save_is_kept(box: Box) -> None:
    box.run("boot")
    box.log_entries(3)
    box.run("save")
    box.log_entries(7)  # logged after the last save, lost with the power
    box.end.write_text("0")
    box.run("boot")
    assert box.last_boot()["ended"] == "power-loss"
    assert len((box.dir / "previous.log").read_text().splitlines()) == 3


def test_watchdog_reset_is_told_apart_by_the_driver_bootstatus(box: Box) -> None:
    box.run("boot")
    box.log_entries(2)
    box.run("save")
    box.bootstatus.write_text("32\n")  # WDIOF_CARDRESET
    box.run("boot")
    assert box.last_boot()["ended"] == "watchdog"


def test_the_kept_journal_is_capped(box: Box) -> None:
    box.env["PAD"] = "x" * 200
    box.run("boot")
    for n in range(1, 6):
        box.log_entries(n * 200)
        box.run("save")
        assert (box.dir / "current.log").stat().st_size <= 64 * 1024
    last = (box.dir / "current.log").read_text().splitlines()[-1]
    assert "entry 1000 " in last


def test_bad_usage_is_one_line_and_exit_2(box: Box) -> None:
    proc = subprocess.run(["/bin/sh", str(SCRIPT), "bogus"], env=box.env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "usage: pimail-journal-keep boot|save|stop"
