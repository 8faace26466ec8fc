"""The power-cut fault's guest: QEMU on the VM that bench/powercut/build-vm.sh builds.

Two virtio disks, root and data, both raw files opened with ``cache=unsafe``: QEMU writes every
guest write straight into the file (the host's page cache) and ignores the guest's flushes. SIGKILL
of QEMU then loses exactly what the guest kernel still held in its own page cache, as a power cut
would, and keeps what the guest had written to its disk: a disk that honours flushes (a real SD card
with a volatile cache can lose more, never less). The host does not crash, so its page cache hides
nothing; ``writeback``/``none``/``directsync`` would give the same result more slowly.

The network is QEMU user mode with ``restrict=on``: the guest reaches nothing, and the host reaches
the node only through one port forwarded from 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

GUEST_RLPX_PORT = 30303  # [node] listen in the guest's pimail.toml
ROOT_LABEL = "PIMAILROOT"  # image/lib.sh
BOOT_LABEL = "PIMAILBOOT"  # the card's FAT partition (/boot/firmware); empty here, but the
# image's units wait for it (pimail-import-settings.service needs the mount)
DATA_LABEL = "PIMAILDATA"  # the image's USB data medium label: pimail-data.service mounts it
DATA_DISK_SIZE = "8G"  # sparse
GUEST_MEMORY_MB = 1024  # a Pi 3's
# Two vCPUs and QEMU's default devices: with -nodefaults and -cpu max,-svm,-vmx (one vCPU or two)
# every sandboxed unit, udevd first, failed under TCG with "Failed to set up mount namespacing:
# .../proc/sys/kernel/domainname: Device or resource busy"; not isolated further.
GUEST_CPUS = 2
BOOT_TARGET = "pimail-powercut.target"  # bench/powercut/pimail-powercut.target
READY_RE = re.compile(r"POWERCUT-READY boot=(\S+) pimail=(\S+) status=([^\r\n]*)")
CHECK_RE = re.compile(r"POWERCUT-CHECK rc=(\d+) ([^\r\n]*)")


class GuestError(RuntimeError):
    """The guest did not boot to READY, or QEMU failed."""


@dataclass(frozen=True)
class BootReport:
    seconds: float  # QEMU start to the archive check's line
    boot_id: str
    active: str  # systemctl is-active pimail
    status: str  # pimail's STATUS= text
    check_rc: int  # pimail archive check's exit code
    check: str  # its JSON output

    @property
    def ready(self) -> bool:
        return self.active == "active"

    @property
    def check_ok(self) -> bool:
        return self.check_rc == 0 and '"ok": true' in self.check


def accel() -> tuple[list[str], str]:
    """KVM when /dev/kvm opens and the CPU has hardware virtualisation, else TCG (slower boots).

    A /dev/kvm without vmx/svm in the CPU flags (here: a VM whose /dev/kvm is kvm_pvm, which runs only
    PVM guest kernels) lets QEMU start and then hang before the guest's first instruction, so the
    flags are checked too.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    if os.access("/dev/kvm", os.R_OK | os.W_OK) and re.search(r"^flags\s*:.*\b(vmx|svm)\b", flags, re.M):
        return ["-accel", "kvm", "-cpu", "host"], "kvm"
    return ["-accel", "tcg,thread=multi", "-cpu", "max"], "tcg"


def make_root_disk(rootfs: Path, config: str, out: Path) -> None:
    """``out`` = an ext4 image of ``rootfs`` (label PIMAILROOT) with ``config`` as pimail.toml."""
    conf = rootfs / "etc/pimail/pimail.toml"
    conf.write_text(config)
    os.chmod(conf, 0o640)
    used = int(subprocess.run(["du", "-sm", str(rootfs)], check=True, capture_output=True,
                              text=True).stdout.split()[0])
    out.unlink(missing_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", ROOT_LABEL, "-d", str(rootfs), str(out),
                    f"{int(used * 1.3) + 256}M"], check=True)


def make_boot_disk(out: Path) -> None:
    """An empty FAT filesystem labelled like the card's boot partition."""
    out.unlink(missing_ok=True)
    subprocess.run(["mkfs.vfat", "-C", "-F", "32", "-n", BOOT_LABEL, str(out), str(64 * 1024)], check=True,
                   stdout=subprocess.DEVNULL)


def make_data_disk(out: Path, rootfs: Path, nodekey: bytes) -> None:
    """A fresh data medium holding only the node key (so the host knows the enode without asking),
    owned by the guest's pimail user like the key pimail would create itself."""
    uid = gid = -1
    for line in (rootfs / "etc/passwd").read_text().splitlines():
        f = line.split(":")
        if f[0] == "pimail":
            uid, gid = int(f[2]), int(f[3])
    if uid < 0:
        raise GuestError("the VM's root has no pimail user")
    seed = out.with_name(out.name + ".seed")
    shutil.rmtree(seed, ignore_errors=True)
    seed.mkdir()
    (seed / "nodekey").write_text(nodekey.hex() + "\n")
    os.chmod(seed / "nodekey", 0o600)
    os.chmod(seed, 0o750)
    for p in (seed, seed / "nodekey"):
        os.chown(p, uid, gid)
    out.unlink(missing_ok=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", DATA_LABEL, "-d", str(seed), str(out), DATA_DISK_SIZE],
                   check=True)
    shutil.rmtree(seed)


class Guest:
    """One boot of the VM; ``kill()`` is the power cut."""

    def __init__(self, vm_dir: Path, root_disk: Path, boot_disk: Path, data_disk: Path, serial_log: Path,
                 host_port: int, cache: str = "unsafe") -> None:
        self.vm_dir = vm_dir
        self.root_disk = root_disk
        self.boot_disk = boot_disk
        self.data_disk = data_disk
        self.serial_log = serial_log
        self.host_port = host_port
        self.cache = cache
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def command(self) -> list[str]:
        accel_args, _ = accel()
        drives: list[str] = []
        for name, path in (("root", self.root_disk), ("boot", self.boot_disk), ("data", self.data_disk)):
            drives += ["-drive", f"if=none,id={name},file={path},format=raw,cache={self.cache},aio=threads",
                       "-device", f"virtio-blk-pci,drive={name}"]
        return ["qemu-system-x86_64", "-machine", "q35", *accel_args, "-smp", str(GUEST_CPUS),
                "-m", str(GUEST_MEMORY_MB), "-display", "none", "-monitor", "none", "-no-reboot",
                "-serial", f"file:{self.serial_log}",
                "-kernel", str(self.vm_dir / "vmlinuz"), "-initrd", str(self.vm_dir / "initrd.img"),
                "-append", f"console=ttyS0 root=LABEL={ROOT_LABEL} rw rootwait net.ifnames=0 quiet "
                f"loglevel=3 systemd.show_status=error systemd.unit={BOOT_TARGET} "
                + os.environ.get("PIMAIL_POWERCUT_APPEND", ""),
                *drives,
                "-netdev", f"user,id=n0,restrict=on,"
                f"hostfwd=tcp:127.0.0.1:{self.host_port}-:{GUEST_RLPX_PORT}",
                "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-rng-pci"]

    def start(self) -> None:
        self.serial_log.unlink(missing_ok=True)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)

    def wait_ready(self, timeout_s: float) -> BootReport:
        """Wait for the report unit's two lines (READY, then the archive check)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                raise GuestError(f"QEMU exited with {self.proc.returncode} before READY: {err.strip()[:300]}")
            text = self._serial()
            ready, check = READY_RE.search(text), CHECK_RE.search(text)
            if ready and check:
                return BootReport(time.monotonic() - self.started, ready.group(1), ready.group(2),
                                  ready.group(3).strip(), int(check.group(1)), check.group(2).strip())
            time.sleep(0.25)
        raise GuestError(f"no READY on the serial console within {timeout_s:.0f} s "
                         f"(last lines: {self._serial()[-400:]!r})")

    def _serial(self) -> str:
        try:
            return self.serial_log.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """The power cut: SIGKILL, nothing gets flushed."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None
