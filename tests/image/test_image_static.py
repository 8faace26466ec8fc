"""Static checks of image/ that CI runs on every push (the image itself is built by `make image`,
never by the test suite): shellcheck, cross-references between units, scripts, labels and the
boot test, and a real run of the loop-free assembly step
on a tiny root filesystem."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.image.conftest import IMAGE, REPO

OVERLAY = IMAGE / "rootfs"
UNITS = OVERLAY / "usr/lib/systemd/system"


def shell_scripts() -> list[Path]:
    """image/**/*.sh plus the extension-less scripts with a sh/bash shebang."""
    found = []
    for path in sorted(IMAGE.rglob("*")):
        if not path.is_file() or "cache" in path.parts or "out" in path.relative_to(IMAGE).parts[:1]:
            continue
        shebang = path.read_bytes()[:32].startswith((b"#!/bin/sh", b"#!/bin/bash"))
        if path.suffix == ".sh" or (path.suffix == "" and shebang):
            found.append(path)
    return found


def test_shellcheck_is_clean_on_every_image_script() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing (scripts/ensure-deps test installs it)"
    scripts = shell_scripts()
    names = {p.name for p in scripts}
    # The list must really contain the scripts (a broken glob would make this test vacuous).
    assert {"build.sh", "boot-smoke.sh", "assemble.sh", "pimail-mount-data", "smoketest"} <= names
    proc = subprocess.run(
        [shellcheck, "-x", *map(str, scripts)], cwd=IMAGE, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_script_is_executable() -> None:
    for path in [*shell_scripts(), OVERLAY / "usr/lib/pimail-image/bootsettings.py"]:
        if path.name == "lib.sh":  # sourced, not run
            continue
        assert os.access(path, os.X_OK), f"{path.relative_to(REPO)} is not executable"


def unit_values(unit: Path, key: str) -> list[str]:
    return [m.group(1).strip() for m in re.finditer(rf"^{key}=(.*)$", unit.read_text(), re.M)]


def test_units_run_programs_that_the_overlay_ships() -> None:
    units = sorted(UNITS.glob("*.service"))
    assert len(units) >= 5
    for unit in units:
        for line in unit_values(unit, "ExecStart"):
            argv = line.lstrip("-@+!").split()
            program = argv[0]
            if program == "/usr/bin/python3":
                program = argv[1]
            shipped = OVERLAY / program.lstrip("/")
            if program.startswith(("/usr/local/", "/usr/lib/pimail-image/")):
                assert shipped.is_file(), f"{unit.name}: {program} is not in image/rootfs"
                assert os.access(shipped, os.X_OK), f"{unit.name}: {program} is not executable"


def test_smoke_test_unit_is_never_enabled_by_itself() -> None:
    unit = (UNITS / "pimail-smoketest.service").read_text()
    assert "[Install]" not in unit
    assert "systemd.wants=pimail-smoketest.service" in (IMAGE / "test/boot-smoke.sh").read_text()
    enable = re.search(r"systemctl enable((?:[^\n]*\\\n)*[^\n]*)", (IMAGE / "stages/app.sh").read_text())
    assert enable and "pimail.service" in enable.group(1)
    assert "pimail-smoketest" not in enable.group(1)


def test_every_installable_overlay_unit_is_enabled_by_the_build() -> None:
    """A unit with an [Install] section in the overlay that app.sh forgets to enable never runs
    on the board (pimail-mdns-name.service, say, and the box would keep avahi's pimail-2)."""
    enable = re.search(r"systemctl enable((?:[^\n]*\\\n)*[^\n]*)", (IMAGE / "stages/app.sh").read_text())
    assert enable
    enabled = set(enable.group(1).replace("\\", " ").split())
    installable = {u.name for u in UNITS.iterdir() if "[Install]" in u.read_text()}
    assert "pimail-mdns-name.service" in installable
    assert installable - enabled == set()


def label(name: str) -> str:
    m = re.search(rf"^{name}=(\w+)$", (IMAGE / "lib.sh").read_text(), re.M)
    assert m, name
    return m.group(1)


def test_partition_labels_agree_everywhere() -> None:
    boot, root, sd, usb = (label(n) for n in ("BOOT_LABEL", "ROOT_LABEL", "SD_DATA_LABEL", "USB_DATA_LABEL"))
    assert len({boot, root, sd, usb}) == 4
    assert all(len(x) <= 11 for x in (boot,))  # FAT labels are at most 11 characters
    assert all(len(x) <= 16 for x in (root, sd, usb))  # ext4 labels at most 16
    fstab = (OVERLAY / "etc/fstab").read_text()
    assert f"LABEL={root}  /  " in fstab.replace("             ", "  ")
    assert f"LABEL={boot}  /boot/firmware" in fstab
    mount_data = (OVERLAY / "usr/local/sbin/pimail-mount-data").read_text()
    assert f"/dev/disk/by-label/{usb}" in mount_data and f"/dev/disk/by-label/{sd}" in mount_data
    smokecheck = (IMAGE / "test/smokecheck.py").read_text()
    assert f'"{sd}"' in smokecheck


def test_boot_test_reads_only_keys_the_guest_reports() -> None:
    guest = (OVERLAY / "usr/lib/pimail-image/smoketest").read_text()
    reported = set(re.findall(r'^\s*smoke ([\w.-]+) ', guest, re.M))
    unit_loop = guest.split("for unit in")[1].split("; do")[0]
    reported |= {f"{u}.active" for u in re.findall(r"([\w-]+)\.service", unit_loop)}
    host = (IMAGE / "test/smokecheck.py").read_text()
    used = set(re.findall(r'\bv\("([\w.-]+)"\)', host)) | set(re.findall(r"\bv\('([\w.-]+)'\)", host))
    units = ("ssh", "avahi-daemon", "systemd-timesyncd", "pimail-import-settings", "pimail-show-qr")
    used |= {f"{u}.active" for u in units}
    assert used, "no keys found: the pattern is broken"
    assert used - reported == set(), f"the host checks keys the guest never prints: {used - reported}"


def test_package_list_has_what_the_issue_asks_for() -> None:
    packages = {
        ln.split("#")[0].strip() for ln in (IMAGE / "packages.txt").read_text().splitlines()
    } - {""}
    assert {
        "linux-image-arm64",
        "raspi-firmware",
        "systemd-timesyncd",
        "openssh-server",
        "avahi-daemon",
        "python3",
        "cloud-guest-utils",
    } <= packages


def test_make_targets_and_gitignore() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert "image/build.sh $(IMAGE_ARGS)" in makefile
    assert "image/test/boot-smoke.sh $(IMAGE_TEST_ARGS)" in makefile
    ignored = (REPO / ".gitignore").read_text().split()
    assert {"image/out/", "image/cache/", "dist/"} <= set(ignored)


def test_build_refuses_bad_options_with_one_line() -> None:
    for args, message in (
        (["--initramfs", "tiny"], "--initramfs must be 'most' or 'list'"),
        (["--bogus"], "unknown option '--bogus'"),
        (["--suite", "sid"], "unknown suite 'sid'"),
    ):
        proc = subprocess.run(
            [str(IMAGE / "build.sh"), *args], capture_output=True, text=True, timeout=30
        )
        assert proc.returncode == 1
        assert message in proc.stderr


def test_assembly_makes_a_labelled_mbr_image_from_a_tiny_tree(tmp_path: Path) -> None:
    """The real assemble.sh (mkfs.ext4 -d, mkfs.vfat + mcopy, sfdisk, dd) on a small tree."""
    tools = ["mkfs.ext4", "mkfs.vfat", "mcopy", "sfdisk", "debugfs", "fsck.vfat"]
    missing = [t for t in tools if not shutil.which(t)]
    assert not missing, f"missing tools {missing} (scripts/ensure-deps test installs them)"
    root = tmp_path / "rootfs"
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text("arm_64bit=1\n")
    (root / "boot/firmware/cmdline.txt").write_text("root=LABEL=PIMAILROOT\n")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("pimail\n")
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin/passwd"
    tool.write_bytes(b"\x7fELF")
    tool.chmod(0o4755)
    for d in ("proc", "sys", "dev", "run", "var/lib/pimail"):
        (root / d).mkdir(parents=True)
    (root / "proc/junk").write_text("must not be copied")
    # The kernel is stored once, on the boot partition; a /boot file that differs stays on root.
    (root / "boot/vmlinuz-6.1.0-9-arm64").write_bytes(b"kernel" * 100)
    (root / "boot/firmware/vmlinuz-6.1.0-9-arm64").write_bytes(b"kernel" * 100)
    (root / "boot/initrd.img-6.1.0-9-arm64").write_bytes(b"initrd, not the boot partition's")
    (root / "boot/firmware/initrd.img-6.1.0-9-arm64").write_bytes(b"initrd")
    img = tmp_path / "out.img"
    env = dict(os.environ, MTOOLS_SKIP_CHECK="1")
    proc = subprocess.run(
        [str(IMAGE / "stages/assemble.sh"), str(root), str(img)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stderr

    table = json.loads(subprocess.run(["sfdisk", "-J", str(img)], capture_output=True, text=True,
                                      check=True).stdout)["partitiontable"]
    assert table["label"] == "dos"
    parts = table["partitions"]
    assert [p["type"] for p in parts] == ["c", "83", "83"]
    assert parts[0]["start"] == 8192 and parts[0].get("bootable") is True
    assert parts[0]["size"] == 512 * 2048 and parts[2]["size"] == 64 * 2048
    assert parts[1]["start"] == parts[0]["start"] + parts[0]["size"]
    assert parts[2]["start"] == parts[1]["start"] + parts[1]["size"]
    assert img.stat().st_size == (parts[2]["start"] + parts[2]["size"]) * 512

    def extract(i: int) -> Path:
        out = tmp_path / f"p{i}"
        with img.open("rb") as src, out.open("wb") as dst:
            src.seek(parts[i]["start"] * 512)
            dst.write(src.read(parts[i]["size"] * 512))
        return out

    boot, rootfs, data = extract(0), extract(1), extract(2)
    fat = subprocess.run(["mdir", "-b", "-i", str(boot), "::/"], capture_output=True, text=True, env=env)
    assert "config.txt" in fat.stdout and "README-pimail.txt" in fat.stdout
    label = subprocess.run(["mlabel", "-s", "-i", str(boot), "::"], capture_output=True, text=True, env=env)
    assert "PIMAILBOOT" in label.stdout

    def debugfs(fs: Path, request: str) -> str:
        return subprocess.run(["debugfs", "-R", request, str(fs)], capture_output=True, text=True).stdout

    assert "PIMAILROOT" in debugfs(rootfs, "stats")
    assert "PIMAILSD" in debugfs(data, "stats")
    assert "04755" in debugfs(rootfs, "stat /usr/bin/passwd") or "Mode:  04755" in debugfs(
        rootfs, "stat /usr/bin/passwd"
    )
    assert "config.txt" not in debugfs(rootfs, "ls /boot/firmware")
    boot_dir = debugfs(rootfs, "ls /boot")
    assert "vmlinuz-6.1.0-9-arm64" not in boot_dir and "initrd.img-6.1.0-9-arm64" in boot_dir
    assert "vmlinuz-6.1.0-9-arm64" in fat.stdout
    stats = debugfs(data, "stats")
    assert re.search(r"Block size:\s+4096", stats) and re.search(r"Reserved block count:\s+0\b", stats)
    blocks = int(re.search(r"Block count:\s+(\d+)", stats).group(1))  # type: ignore[union-attr]
    inodes = int(re.search(r"Inode count:\s+(\d+)", stats).group(1))  # type: ignore[union-attr]
    assert blocks * 4096 // inodes >= 65536
    assert "junk" not in debugfs(rootfs, "ls /proc")
    assert "pimail" in debugfs(rootfs, "cat /etc/hostname")


def test_assembly_refuses_a_tree_without_firmware(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(IMAGE / "stages/assemble.sh"), str(tmp_path), str(tmp_path / "x.img")],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 1
    assert "no config.txt" in proc.stderr
    assert not (tmp_path / "x.img").exists()


@pytest.mark.parametrize("script", ["stages/base.sh", "stages/app.sh"])
def test_stage_scripts_demand_their_arguments(script: str) -> None:
    proc = subprocess.run([str(IMAGE / script)], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert proc.stderr.strip(), "a stage called wrongly must say why"
