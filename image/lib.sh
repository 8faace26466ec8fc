# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings here are used by the scripts that source this file
# Shared settings and helpers for the image build stages. Sourced, never run.

IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$IMAGE_DIR/.." && pwd)
CACHE_DIR=${PIMAIL_IMAGE_CACHE:-$IMAGE_DIR/cache}
OUT_DIR=${PIMAIL_IMAGE_OUT:-$IMAGE_DIR/out}
DIST_DIR=${PIMAIL_IMAGE_DIST:-$REPO_DIR/dist}
MIRROR=${PIMAIL_IMAGE_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${PIMAIL_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security}

# Partition labels. The SD card's own data partition is PIMAILSD; a USB stick labelled PIMAILDATA
# takes precedence when present (see rootfs/usr/local/sbin/pimail-mount-data).
BOOT_LABEL=PIMAILBOOT
ROOT_LABEL=PIMAILROOT
SD_DATA_LABEL=PIMAILSD
USB_DATA_LABEL=PIMAILDATA

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "the image build needs root (mmdebstrap --mode=root, chroot); run it with sudo"
}

# Package list without comments and blank lines, one per line.
package_list() {
    sed -e 's/#.*//' -e 's/[[:space:]]//g' "$IMAGE_DIR/packages.txt" | grep -v '^$'
}

# Run a command inside a root filesystem with a clean environment (the host's PIP_*, *_CA_BUNDLE
# and proxy variables must not leak in) and /proc, /sys, /dev mounted in a private mount namespace
# so that nothing stays mounted if the step fails.
in_chroot() {
    local root=$1
    shift
    unshare --mount --fork -- /bin/sh -euc '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount -t sysfs sys "$root/sys"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
            DEBIAN_FRONTEND=noninteractive "$@"
    ' sh "$root" "$@"
}

# Python version of the interpreter shipped by a suite (the wheelhouse must match it).
python_tag_for_suite() {
    case $1 in
        bookworm) echo 311 ;;
        trixie) echo 313 ;;
        *) die "unknown suite '$1' (bookworm or trixie)" ;;
    esac
}
