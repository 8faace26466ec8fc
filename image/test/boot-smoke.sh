#!/bin/bash
# Boot test of the built image in QEMU (make image-test). Needs no root.
#
# usage: image/test/boot-smoke.sh [IMAGE(.img|.img.xz)] [--one-boot]
#
# Boots a copy of the image (grown to 4 GiB like a real card) in qemu-system-aarch64 -M virt (TCG)
# with the image's own kernel and initrd taken from its boot partition. The node's port is forwarded
# to 127.0.0.1 only (user-mode network, restrict=on: the guest reaches nothing outside). The kernel
# command line pulls in the image's test-only pimail-smoketest.service, which reports SMOKE: lines
# on the serial console; image/test/smokecheck.py reads them, does a real RLPx handshake against
# the forwarded port with pimail's own transport and judges the boot. Then the guest powers off
# and the image is booted a second time to check that first boot does not run again and that the
# node keeps its identity and data. Bounded: each boot is killed after BOOT_TIMEOUT_S.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

BOOT_TIMEOUT_S=${BOOT_TIMEOUT_S:-1200}
CARD_SIZE=${CARD_SIZE:-4G}
image=""
boots=2
for arg in "$@"; do
    case $arg in
        --one-boot) boots=1 ;;
        -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) die "unknown option '$arg'" ;;
        *) image=$arg ;;
    esac
done
if [ -z "$image" ]; then
    image=$(find "$OUT_DIR" -maxdepth 1 -name 'pimail-*-arm64.img' -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n1 | cut -d' ' -f2-)
    [ -n "$image" ] || image=$(find "$DIST_DIR" -maxdepth 1 -name 'pimail-*-arm64.img.xz' -printf '%T@ %p\n' 2>/dev/null | sort -rn | head -n1 | cut -d' ' -f2-)
fi
[ -f "${image:-}" ] || die "no image found; run 'make image' first or pass the image path"
for tool in qemu-system-aarch64 mcopy sfdisk; do
    command -v "$tool" >/dev/null || die "$tool is missing (scripts/ensure-deps image-test installs it)"
done
python=$REPO_DIR/.venv/bin/python
[ -x "$python" ] || python=python3
"$python" -c 'import pimail, zxingcpp' 2>/dev/null || die "$python cannot import pimail and zxingcpp (run 'make venv-test')"

work=$OUT_DIR/smoke
rm -rf "$work"
mkdir -p "$work"
disk=$work/card.img
t0=$(date +%s)
log "image-test: $image"
case $image in
    *.xz) xz -dc "$image" | dd of="$disk" bs=1M conv=sparse status=none ;;
    *) cp --sparse=always "$image" "$disk" ;;
esac
truncate -s "$CARD_SIZE" "$disk"

# The boot partition: its kernel and initrd boot QEMU; the operator's files go onto it like on a
# real card (a throwaway SSH key and a pimail.toml), to check that first boot imports them.
boot_start=$(sfdisk -d "$disk" | awk -F'[=,]' '/start=/ {gsub(/ /, "", $2); print $2; exit}')
[ -n "$boot_start" ] || die "cannot read the partition table of $image"
fat="$disk@@$((boot_start * 512))"
export MTOOLS_SKIP_CHECK=1
# The same kernel and initrd the Pi firmware would load: the ones config.txt names.
mcopy -n -i "$fat" ::config.txt "$work/config.txt"
kernel=$(sed -n 's/^kernel=//p' "$work/config.txt" | tail -n1)
initrd=$(sed -n 's/^initramfs \([^ ]*\).*/\1/p' "$work/config.txt" | tail -n1)
if [ -z "$kernel" ] || [ -z "$initrd" ]; then die "config.txt on the boot partition names no kernel or initramfs"; fi
mcopy -n -i "$fat" "::$kernel" "$work/vmlinuz"
mcopy -n -i "$fat" "::$initrd" "$work/initrd.img"
log "image-test: kernel $kernel, initrd $initrd (from config.txt on the boot partition)"
"$python" - "$work/authorized_keys" <<'PY'
import base64, os, struct, sys
kind = b"ssh-ed25519"
blob = struct.pack(">I", len(kind)) + kind + struct.pack(">I", 32) + os.urandom(32)
open(sys.argv[1], "w").write(f"ssh-ed25519 {base64.b64encode(blob).decode()} image-test@host\n")
PY
cat > "$work/pimail.toml" <<'TOML'
# dropped on the boot partition by image/test/boot-smoke.sh
[node]
data_dir = "/var/lib/pimail"
listen = "0.0.0.0:30303"

[status]
pairing_minutes = 7
TOML
mcopy -o -i "$fat" "$work/authorized_keys" "$work/pimail.toml" ::/

free_port() { "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
status=0
for boot in $(seq 1 "$boots"); do
    node_port=$(free_port)
    control_port=$(free_port)
    serial=$work/serial-$boot.log
    log "image-test: boot $boot (node port 30303 -> 127.0.0.1:$node_port)"
    b0=$(date +%s)
    qemu_started=$(date +%s.%N)
    timeout --kill-after=10 "$BOOT_TIMEOUT_S" qemu-system-aarch64 -M virt -cpu cortex-a72 -smp 2 -m 1024 \
        -display none -monitor none -serial "file:$serial" -no-reboot \
        -kernel "$work/vmlinuz" -initrd "$work/initrd.img" \
        -append "console=ttyAMA0 root=LABEL=$ROOT_LABEL rw rootwait net.ifnames=0 systemd.wants=pimail-smoketest.service" \
        -drive "if=none,file=$disk,format=raw,id=hd0,cache=unsafe" -device virtio-blk-pci,drive=hd0 \
        -netdev "user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:$node_port-:30303,hostfwd=tcp:127.0.0.1:$control_port-:30399" \
        -device virtio-net-pci,netdev=n0,romfile= -device virtio-rng-pci -device i6300esb \
        </dev/null >"$work/qemu-$boot.log" 2>&1 &
    qemu=$!
    rc=0
    "$python" "$IMAGE_DIR/test/smokecheck.py" --log "$serial" --boot "$boot" --qemu-pid "$qemu" \
        --node-port "$node_port" --control-port "$control_port" --state "$work/boot1.json" \
        --timeout "$BOOT_TIMEOUT_S" --settings-expected --qemu-started "$qemu_started" || rc=$?
    # The guest powers itself off after reporting; give it a bounded moment, then stop it.
    for _ in $(seq 1 60); do
        kill -0 "$qemu" 2>/dev/null || break
        sleep 1
    done
    if kill -0 "$qemu" 2>/dev/null; then
        log "image-test: boot $boot did not power off by itself; stopping QEMU"
        kill "$qemu" 2>/dev/null || true
        rc=1
    fi
    wait "$qemu" 2>/dev/null || true
    log "image-test: boot $boot took $(($(date +%s) - b0)) s (serial log $serial)"
    [ "$rc" -eq 0 ] || status=1
    [ "$rc" -eq 0 ] || break
done
log "image-test: $([ "$status" -eq 0 ] && echo PASSED || echo FAILED) in $(($(date +%s) - t0)) s"
exit "$status"
