#!/bin/bash
# mmdebstrap setup hook of the base stage: the Wi-Fi firmware comes from bookworm-backports.
# usage: base-sources.sh ROOTFS SUITE
#
# bookworm's firmware-brcm80211 (20230210) has no NVRAM file for the Zero 2 W
# (brcmfmac43430-sdio.raspberrypi,model-zero-2-w.txt), so even its BCM43430/1 radio stays dark.
# Debian's own newer build (20250410, in bookworm-backports and trixie) has it. Only that one
# package is taken from backports (pinned here and kept pinned in the image, so a later
# `apt full-upgrade` follows the backports firmware and nothing else comes from backports).
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

root=${1:?rootfs}
suite=${2:?suite}
[ "$suite" = bookworm ] || exit 0   # trixie's own firmware-brcm80211 is that newer build
mkdir -p "$root/etc/apt/sources.list.d" "$root/etc/apt/preferences.d"
echo "deb $MIRROR bookworm-backports non-free-firmware" > "$root/etc/apt/sources.list.d/backports.list"
cat > "$root/etc/apt/preferences.d/pimail-firmware" <<'PREF'
# pimail image: Wi-Fi firmware for the Zero 2 W from bookworm-backports (image/stages/base-sources.sh)
Package: firmware-brcm80211
Pin: release n=bookworm-backports
Pin-Priority: 990
PREF
