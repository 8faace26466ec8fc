#!/bin/bash
# Build the power-cut fault's VM (bench/powercut): the Pi image's root filesystem, built the same
# way (image/packages.txt through mmdebstrap, pimail from its .deb through image/stages/app.sh), for
# amd64 so that it boots under KVM in seconds, plus this fault's config and report unit.
#
# usage: bench/powercut/build-vm.sh OUT_DIR      (root; python -m bench.faults --only powercut runs it)
#
# Stages:
#   base   mmdebstrap bookworm amd64 + one initramfs, cached in $PIMAIL_POWERCUT_CACHE (default
#          ~/.cache/pimail/powercut) by package list and this script (~4 min once, then 0)
#   deb    dist/pimail_<version>_amd64.deb from this checkout (packaging/deb/build.sh, ~1 min)
#   app    image/stages/app.sh on a fresh copy of the base (~1 min)
#   disk   OUT_DIR/root.ext4 (label PIMAILROOT), OUT_DIR/vmlinuz, OUT_DIR/initrd.img (~20 s)
# The guest's pimail.toml is not baked in: the harness writes it per mode onto the root disk.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=SCRIPTDIR/../../image/lib.sh
. "$HERE/../../image/lib.sh"

out=$(realpath -m "${1:?usage: build-vm.sh OUT_DIR}")
need_root
suite=bookworm
cache=${PIMAIL_POWERCUT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pimail/powercut}
mkdir -p "$cache" "$out"
declare -A took=()
t0=$(date +%s)
stage_start=$t0
mark() {
    local now
    now=$(date +%s)
    took[$1]=$((now - stage_start))
    stage_start=$now
}

# The image's package list with the Pi's boot packages swapped for the PC kernel.
vm_packages() {
    package_list | sed -e 's/^linux-image-arm64$/linux-image-amd64/' -e '/^raspi-firmware$/d' \
        -e '/^firmware-brcm80211$/d'
}

key=$({
    echo "$suite amd64"
    vm_packages
    sed -n '/^# -- base/,/^# -- end base/p' "$0"
} | sha256sum | cut -c1-16)
base=$cache/base-$suite-amd64-$key.tar
# -- base
if [ -s "$base" ]; then
    log "powercut vm: reusing cached base $base"
else
    debs=$cache/debs-$suite-amd64
    mkdir -p "$debs"
    log "powercut vm: mmdebstrap $suite amd64 (.deb cache $debs)"
    hook=$cache/customize-$key.sh
    cat > "$hook" <<'HOOK'
#!/bin/sh
# initramfs: only what finds and mounts a virtio root (a small initrd is seconds faster to unpack
# and probe under TCG), built once; root by label like the image
set -eu
root=$1
mkdir -p "$root/etc/initramfs-tools/conf.d"
printf 'MODULES=list\nFSTYPE=ext4\n' > "$root/etc/initramfs-tools/conf.d/10-pimail"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$root/etc/initramfs-tools/modules"
chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 update-initramfs -c -k all
HOOK
    chmod +x "$hook"
    export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$IMAGE_DIR/packages.txt")}
    export INITRD=No
    rm -f "$base.partial"
    # shellcheck disable=SC2016  # "$1" in the hooks is mmdebstrap's (the root), expanded by its shell
    env -u PIP_FIND_LINKS -u PIP_CERT -u REQUESTS_CA_BUNDLE \
        mmdebstrap --mode=root --arch=amd64 --variant=minbase --format=tar \
        --include="$(vm_packages | paste -sd, -)" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
        --skip=download/empty --skip=essential/unlink \
        --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
        --setup-hook="sync-in '$debs' /var/cache/apt/archives/" \
        --customize-hook="sync-out /var/cache/apt/archives '$debs'" \
        --customize-hook="'$hook' \"\$1\"" \
        "$suite" "$base.partial" \
        "deb $MIRROR $suite main non-free-firmware" \
        "deb $MIRROR $suite-updates main non-free-firmware" \
        "deb $SECURITY_MIRROR $suite-security main non-free-firmware" >&2
    mv "$base.partial" "$base"
    find "$cache" -maxdepth 1 -name "base-$suite-amd64-*.tar" ! -name "$(basename "$base")" -delete
    log "powercut vm: base done, $(du -h "$base" | cut -f1)"
fi
# -- end base
mark base

deb=$(PIMAIL_DEB_COMPRESSION=gzip "$REPO_DIR/packaging/deb/build.sh" amd64 | tail -n1)
[ -f "$deb" ] || die "the deb stage failed"
mark deb

rootfs=$out/rootfs
"$IMAGE_DIR/stages/app.sh" "$base" "$deb" "$rootfs" >&2
# This fault's own unit: once pimail is READY, check the archive with pimail's own command and say
# so on the serial console, which the harness reads.
install -m 0644 "$HERE/pimail-powercut-report.service" "$HERE/pimail-powercut.target" "$rootfs/etc/systemd/system/"
install -m 0755 "$HERE/pimail-powercut-report" "$rootfs/usr/local/sbin/"
ln -sf /etc/systemd/system/pimail-powercut-report.service \
    "$rootfs/etc/systemd/system/multi-user.target.wants/pimail-powercut-report.service"
# The image's binfmt_misc automount is triggered by systemd-binfmt while udevd's sandbox is being set
# up; under TCG that race is lost often enough (udevd: "Failed to set up mount namespacing:
# .../proc/sys/kernel/domainname: Device or resource busy", then no disks by label) to spoil a run
# of many boots. The VM runs no foreign binaries, so both are masked here.
ln -sf /dev/null "$rootfs/etc/systemd/system/systemd-binfmt.service"
ln -sf /dev/null "$rootfs/etc/systemd/system/proc-sys-fs-binfmt_misc.automount"
mark app

kver=$(find "$rootfs/boot" -name 'vmlinuz-*' -printf '%f\n' | sed 's/^vmlinuz-//' | sort -V | tail -n1)
if [ -z "$kver" ] || [ ! -f "$rootfs/boot/initrd.img-$kver" ]; then die "no kernel and initrd in the root"; fi
cp "$rootfs/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$rootfs/boot/initrd.img-$kver" "$out/initrd.img"
dpkg-deb -f "$deb" Version > "$out/pimail-version"
git -C "$REPO_DIR" rev-parse --short HEAD > "$out/commit" 2>/dev/null || echo unknown > "$out/commit"
mark disk
{
    echo "powercut vm: pimail $(cat "$out/pimail-version") (commit $(cat "$out/commit")), kernel $kver, rootfs $(du -sh "$rootfs" | cut -f1)"
    for s in base deb app disk; do printf 'powercut vm: stage %-5s %4d s\n' "$s" "${took[$s]}"; done
    printf 'powercut vm: total       %4d s\n' $(($(date +%s) - t0))
} | tee "$out/build-summary.txt" >&2
