#!/bin/bash
# mmdebstrap customize hook of the base stage: boot configuration and the single initramfs build.
# usage: base-customize.sh ROOTFS MODULES   (run by mmdebstrap, which has /proc, /sys, /dev mounted)
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

root=${1:?rootfs}
modules=${2:?modules}
run() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 "$@"; }

# FSTYPE: in the chroot the fsck hook cannot probe LABEL=PIMAILROOT and would leave e2fsck out.
mkdir -p "$root/etc/initramfs-tools/conf.d"
printf 'MODULES=%s\nFSTYPE=ext4\n' "$modules" > "$root/etc/initramfs-tools/conf.d/10-pimail"
if [ "$modules" = list ]; then
    sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$IMAGE_DIR/initramfs-modules.txt" >> "$root/etc/initramfs-tools/modules"
fi

# raspi-firmware writes config.txt and cmdline.txt from these. Root by label; the HDMI console
# (tty0) last so that /dev/console, where first boot prints the pairing QR, is the screen.
cat >> "$root/etc/default/raspi-firmware" <<CONF

# pimail image
ROOTPART=LABEL=$ROOT_LABEL
CONSOLES="ttyS1,115200 tty0"
CONF
cat >> "$root/etc/default/raspi-firmware-custom" <<'CONF'
# pimail image: the SoC watchdog that systemd's RuntimeWatchdogSec feeds
dtparam=watchdog=on
CONF

# A stale initrd.img-*.new from an interrupted build would be picked as the newest initrd.
rm -f "$root"/boot/initrd.img-*.new "$root"/boot/firmware/*.dpkg-bak
run update-initramfs -c -k all
# Re-run the raspi-firmware kernel hook so config.txt/cmdline.txt pick up the settings above and the
# initrd now exists.
for vmlinuz in "$root"/boot/vmlinuz-*; do
    kver=${vmlinuz##*/vmlinuz-}
    run env DEB_MAINT_PARAMS=configure /etc/kernel/postinst.d/z50-raspi-firmware "$kver" "/boot/vmlinuz-$kver"
done
echo "base-customize: kernels: $(ls "$root/lib/modules")"
echo "base-customize: cmdline.txt: $(cat "$root/boot/firmware/cmdline.txt")"
