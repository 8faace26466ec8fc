"""pimail-mount-data (which medium holds the archive, first-boot growth) run for real on a scratch
tree. Only the block-device tools are stand-ins (mount, e2fsck, growpart, resize2fs, lsblk,
udevadm): they log their calls and return the exit codes a test asks for."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.image.conftest import IMAGE

SCRIPT = IMAGE / "rootfs/usr/local/sbin/pimail-mount-data"
STUB = """#!/bin/sh
echo "$(basename "$0") $*" >> "$STUB_LOG"
target=""
for a in "$@"; do target=$a; done
rc_file="$STUB_DIR/$(basename "$0").rc.$(basename "$target")"
[ "$(basename "$0")" = lsblk ] && echo vda
[ -f "$rc_file" ] && exit "$(cat "$rc_file")"
exit 0
"""


@dataclass
class Tree:
    root: Path
    env: dict[str, str]

    def rc(self, tool: str, target: str, code: int) -> None:
        (self.root / "stubs" / f"{tool}.rc.{target}").write_text(str(code))

    def device(self, label: str, name: str) -> None:
        (self.root / "dev" / name).write_text("")
        (self.root / "by-label" / label).symlink_to(self.root / "dev" / name)

    def run(self) -> tuple[int, str, list[str]]:
        proc = subprocess.run(
            ["/bin/sh", str(SCRIPT)], env=self.env, capture_output=True, text=True, timeout=60
        )
        log = self.root / "calls.log"
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return proc.returncode, proc.stdout + proc.stderr, calls

    @property
    def medium(self) -> str:
        return (self.root / "run/data-medium").read_text().strip()


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for tool in ("mount", "e2fsck", "growpart", "resize2fs", "lsblk", "udevadm"):
        path = stubs / tool
        path.write_text(STUB)
        path.chmod(0o755)
    for d in ("dev", "by-label", "mnt", "state", "run", "sys/vda3", "sysusb/1-1:1.0"):
        (tmp_path / d).mkdir(parents=True)
    (tmp_path / "sys/vda3/partition").write_text("3\n")
    (tmp_path / "defaults").write_text("PIMAIL_USB_WAIT_S=0\nSD_WAIT_S=0\n")
    env = {
        "PATH": f"{stubs}:/usr/sbin:/usr/bin:/sbin:/bin",
        "STUB_DIR": str(stubs),
        "STUB_LOG": str(tmp_path / "calls.log"),
        "PIMAIL_DATA_MNT": str(tmp_path / "mnt"),
        "PIMAIL_DATA_USB": str(tmp_path / "by-label/PIMAILDATA"),
        "PIMAIL_DATA_SD": str(tmp_path / "by-label/PIMAILSD"),
        "PIMAIL_DATA_STATE": str(tmp_path / "state"),
        "PIMAIL_DATA_MEDIUM_FILE": str(tmp_path / "run/data-medium"),
        "PIMAIL_DATA_SYS_BLOCK": str(tmp_path / "sys"),
        "PIMAIL_DATA_SYS_USB": str(tmp_path / "sysusb"),
        "PIMAIL_DATA_DEFAULTS": str(tmp_path / "defaults"),
    }
    return Tree(tmp_path, env)


def mounts(calls: list[str]) -> list[str]:
    return [c for c in calls if c.startswith("mount ")]


def test_waits_for_a_usb_stick_only_while_usb_storage_is_plugged_in(tree: Tree) -> None:
    tree.device("PIMAILSD", "vda3")
    (tree.root / "defaults").write_text("PIMAIL_USB_WAIT_S=3\nSD_WAIT_S=0\n")
    hub = tree.root / "sysusb/1-1:1.0/bInterfaceClass"
    hub.write_text("09\n")  # a hub: nothing to wait for
    rc, out, calls = tree.run()
    assert rc == 0, out
    assert not [c for c in calls if c.startswith("udevadm settle --timeout=1")]
    (tree.root / "mnt").mkdir(exist_ok=True)
    hub.write_text("08\n")  # mass storage whose label has not appeared (yet)
    rc, out, calls = tree.run()
    assert rc == 0, out
    assert len([c for c in calls if c.startswith("udevadm settle --timeout=1")]) == 3
    assert tree.medium == "sd"


def test_usb_stick_wins_and_the_sd_card_is_left_alone(tree: Tree) -> None:
    tree.device("PIMAILSD", "vda3")
    tree.device("PIMAILDATA", "sda1")
    rc, out, calls = tree.run()
    assert rc == 0, out
    assert mounts(calls) == [f"mount -o noatime {tree.root}/by-label/PIMAILDATA {tree.root}/mnt"]
    assert not any(c.startswith("growpart") for c in calls)
    assert tree.medium == "usb"
    assert "USB stick" in out


def test_first_boot_from_sd_grows_the_partition_before_mounting_then_never_again(tree: Tree) -> None:
    tree.device("PIMAILSD", "vda3")
    rc, out, calls = tree.run()
    assert rc == 0, out
    grow = calls.index("growpart /dev/vda 3")
    resize = next(i for i, c in enumerate(calls) if c.startswith("resize2fs"))
    mount = next(i for i, c in enumerate(calls) if c.startswith("mount"))
    assert f"e2fsck -f -p {tree.root}/dev/vda3" in calls[grow:resize]  # forced check before resize
    assert grow < resize < mount
    assert tree.medium == "sd"
    assert (tree.root / "state/sd-data-grown").read_text().strip()

    rc, out, calls = tree.run()  # second boot
    assert rc == 0, out
    assert not any(c.startswith(("growpart", "resize2fs")) for c in calls)
    assert len(mounts(calls)) == 1


def test_growpart_nochange_still_counts_as_done(tree: Tree) -> None:
    tree.device("PIMAILSD", "vda3")
    tree.rc("growpart", "3", 1)  # growpart's "NOCHANGE"
    rc, out, _ = tree.run()
    assert rc == 0 and "already fills the card" in out
    assert (tree.root / "state/sd-data-grown").exists()


def test_failed_growpart_is_reported_and_the_archive_still_mounts(tree: Tree) -> None:
    tree.device("PIMAILSD", "vda3")
    tree.rc("growpart", "3", 2)
    rc, out, calls = tree.run()
    assert rc == 0
    assert "growpart failed (2)" in out
    assert not any(c.startswith("resize2fs") for c in calls)
    assert len(mounts(calls)) == 1
    assert not (tree.root / "state/sd-data-grown").exists()  # tried again next boot


def test_usb_stick_fsck_cannot_repair_falls_back_to_sd(tree: Tree) -> None:
    tree.device("PIMAILSD", "vda3")
    tree.device("PIMAILDATA", "sda1")
    tree.rc("e2fsck", "PIMAILDATA", 8)
    rc, out, calls = tree.run()
    assert rc == 0, out
    assert "fsck could not repair; using the SD card instead" in out
    assert mounts(calls) == [f"mount -o noatime {tree.root}/by-label/PIMAILSD {tree.root}/mnt"]
    assert tree.medium == "sd"


def test_fsck_repaired_usb_stick_is_used(tree: Tree) -> None:
    tree.device("PIMAILDATA", "sda1")
    tree.rc("e2fsck", "PIMAILDATA", 1)  # errors corrected
    rc, _, calls = tree.run()
    assert rc == 0 and tree.medium == "usb" and len(mounts(calls)) == 1


def test_broken_sd_data_partition_fails_the_unit(tree: Tree) -> None:
    tree.device("PIMAILSD", "vda3")
    (tree.root / "state/sd-data-grown").write_text("earlier\n")
    tree.rc("e2fsck", "PIMAILSD", 4)
    rc, out, calls = tree.run()
    assert rc == 1
    assert "could not repair" in out
    assert mounts(calls) == []


def test_no_data_partition_at_all_fails_with_one_line(tree: Tree) -> None:
    rc, out, calls = tree.run()
    assert rc == 1
    assert "no data partition found" in out
    assert mounts(calls) == []


def test_script_is_what_the_unit_runs() -> None:
    unit = (IMAGE / "rootfs/usr/lib/systemd/system/pimail-data.service").read_text()
    assert "ExecStart=/usr/local/sbin/pimail-mount-data" in unit
    assert os.access(SCRIPT, os.X_OK)
