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

# pip flags that select aarch64 glibc wheels for one CPython version. pip does not expand a newer
# manylinux tag to the older ones, so every tag is listed: without manylinux_2_34, lgpio silently
# resolves to its 0.0.0.2 "py3-none-any" stub instead of the real 0.2.2.0 wheel.
platform_args() {
    local t
    for t in manylinux2014_aarch64 manylinux_2_17_aarch64 manylinux_2_24_aarch64 manylinux_2_26_aarch64 \
        manylinux_2_27_aarch64 manylinux_2_28_aarch64 manylinux_2_31_aarch64 manylinux_2_34_aarch64 \
        manylinux_2_35_aarch64 manylinux_2_36_aarch64; do
        printf -- '--platform %s ' "$t"
    done
    printf -- '--python-version 3.%s --implementation cp --abi cp%s --abi abi3 --abi none' "${1#3}" "$1"
}
