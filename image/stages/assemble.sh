#!/bin/bash
# Stage 3: assemble the SD card image from the root filesystem directory, without loop devices or
# mounts: mkfs.ext4 -d, mkfs.vfat + mcopy, sfdisk on a plain file, dd into place. ~15 s.
#
# usage: stages/assemble.sh ROOTFS_DIR IMAGE_FILE
#
# MBR (the Pi 3 / Zero 2 W boot ROM cannot boot GPT), partitions found by label:
#   1  PIMAILBOOT  FAT32  512 MiB  /boot/firmware  firmware, kernel, initrd; operator's settings
#   2  PIMAILROOT  ext4   content + ROOT_SPARE_MIB (1 GiB)   /   (room for a second kernel and
#                         a full upgrade: the image stays updatable in place; zeros cost nothing in .xz)
#   3  PIMAILSD    ext4   64 MiB, grown to fill the card on first boot   /var/lib/pimail (no USB stick)
#                         made for a few large files: 4 KiB blocks, one inode per 256 KiB, no
#                         root reserve (the small-filesystem profile would be kept when it grows)
#
# The kernel and initrd exist twice in the tree (/boot, and the copies raspi-firmware made in
# /boot/firmware, which the Pi boots). The root filesystem gets /boot's only when they differ;
# pimail-firstboot copies them back from the boot partition, so apt's kernel hooks find them.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

rootfs=${1:?rootfs dir}
img=${2:?image file}
BOOT_MIB=512
DATA_MIB=64
START_MIB=4
ROOT_SPARE_MIB=${ROOT_SPARE_MIB:-1024}
DATA_INODE_RATIO=262144
[ -f "$rootfs/boot/firmware/config.txt" ] || die "$rootfs/boot/firmware has no config.txt; is this a built rootfs?"

work=$(mktemp -d "${img%/*}/.assemble.XXXXXX")
trap 'rm -rf "$work"' EXIT

# /boot's kernel and initrd that are byte-identical to the boot partition's copies stay out.
dedup=()
for f in "$rootfs"/boot/vmlinuz-* "$rootfs"/boot/initrd.img-*; do
    [ -f "$f" ] || continue
    copy=$rootfs/boot/firmware/${f##*/}
    if cmp -s "$f" "$copy"; then
        dedup+=("--exclude=./boot/${f##*/}")
        log "assemble: /boot/${f##*/} is also on the boot partition; stored there only, restored at first boot"
    fi
done

used_mib=$(du -sm --exclude="$rootfs/boot/firmware" "$rootfs" | cut -f1)
ROOT_MIB=$(( (used_mib + ROOT_SPARE_MIB + 3) / 4 * 4 ))
log "assemble: root ${used_mib} MiB used -> ${ROOT_MIB} MiB partition"

# ext4 from the tree, minus the FAT contents, the deduplicated kernel and the API filesystems.
mkdir "$work/root"
tar -C "$rootfs" --one-file-system --numeric-owner --xattrs --xattrs-include='*' --acls \
    --exclude=./boot/firmware/* --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* --exclude=./run/* \
    "${dedup[@]}" -cf - . | tar -C "$work/root" --numeric-owner --xattrs --xattrs-include='*' --acls -xpf -
mkfs.ext4 -q -F -L "$ROOT_LABEL" -d "$work/root" "$work/root.ext4" "${ROOT_MIB}M"
rm -rf "$work/root"

truncate -s "${BOOT_MIB}M" "$work/boot.vfat"
mkfs.vfat -F 32 -n "$BOOT_LABEL" "$work/boot.vfat" >/dev/null
mcopy -s -p -i "$work/boot.vfat" "$rootfs"/boot/firmware/* ::/
cat > "$work/README.txt" <<'TXT'
pimail boot partition. Before the first boot you may put here:
  authorized_keys   your SSH public key(s); log in as root@pimail.local (there are no passwords)
  wifi.txt          country=DE / ssid=... / psk=... (one per line) for Wi-Fi instead of Ethernet
  pimail.toml       your pimail settings (checked; a bad file is renamed .rejected with the reason)
Do not edit config.txt or cmdline.txt: they are regenerated on kernel updates.
TXT
mcopy -i "$work/boot.vfat" "$work/README.txt" ::/README-pimail.txt

# Not mke2fs's "small" profile (1 KiB blocks, an inode per 4 KiB, 5 % reserved), which the
# filesystem would keep when it grows to the card: on 32 GB that is ~2 GiB of inode tables that
# the kernel's lazy init then writes in the first minutes.
mkfs.ext4 -q -F -L "$SD_DATA_LABEL" -b 4096 -i "$DATA_INODE_RATIO" -m 0 -T default "$work/data.ext4" "${DATA_MIB}M"

total=$((START_MIB + BOOT_MIB + ROOT_MIB + DATA_MIB))
rm -f "$img"
truncate -s "${total}M" "$img"
sfdisk -q "$img" <<PART
label: dos
unit: sectors
start=$((START_MIB * 2048)), size=$((BOOT_MIB * 2048)), type=c, bootable
start=$(((START_MIB + BOOT_MIB) * 2048)), size=$((ROOT_MIB * 2048)), type=83
start=$(((START_MIB + BOOT_MIB + ROOT_MIB) * 2048)), size=$((DATA_MIB * 2048)), type=83
PART
dd if="$work/boot.vfat" of="$img" bs=1M seek="$START_MIB" conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$img" bs=1M seek=$((START_MIB + BOOT_MIB)) conv=notrunc,sparse status=none
dd if="$work/data.ext4" of="$img" bs=1M seek=$((START_MIB + BOOT_MIB + ROOT_MIB)) conv=notrunc,sparse status=none

fsck.vfat -n "$work/boot.vfat" >/dev/null || die "the FAT filesystem does not check clean"
e2fsck -fn "$work/root.ext4" >/dev/null || die "the root filesystem does not check clean"
log "assemble: $img: ${total} MiB (${BOOT_MIB} boot + ${ROOT_MIB} root + ${DATA_MIB} data), $(du -h "$img" | cut -f1) allocated"
