#!/bin/bash
# Stage 1: the Debian base root filesystem (mmdebstrap + one initramfs), cached as a tarball.
#
# usage: stages/base.sh SUITE MODULES        (MODULES: most | list)
# prints the path of the cached tarball on stdout.
#
# This is the slow stage (~15 min on 2 cores, nearly all of it mkinitramfs under qemu-user), so its
# result is kept in $CACHE_DIR keyed by everything that goes into it: the suite, packages.txt, the
# initramfs module choice and this stage's scripts. Downloaded .debs are kept in $CACHE_DIR/debs-SUITE
# and fed back to mmdebstrap, so a rebuild after a package-list change downloads only what changed.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

suite=${1:?suite}
modules=${2:?modules}
case $modules in most | list) ;; *) die "initramfs modules must be 'most' or 'list', not '$modules'" ;; esac

key=$({
    echo "$suite $modules"
    package_list
    cat "$IMAGE_DIR/stages/base.sh" "$IMAGE_DIR/stages/base-sources.sh" "$IMAGE_DIR/stages/base-customize.sh"
    if [ "$modules" = list ]; then cat "$IMAGE_DIR/initramfs-modules.txt"; fi
} | sha256sum | cut -c1-16)
tarball=$CACHE_DIR/base-$suite-$modules-$key.tar

if [ -s "$tarball" ]; then
    log "base: reusing cached $tarball"
    echo "$tarball"
    exit 0
fi

need_root
debs=$CACHE_DIR/debs-$suite
mkdir -p "$debs"
includes=$(package_list | paste -sd, -)
log "base: mmdebstrap $suite arm64 (initramfs MODULES=$modules); .deb cache $debs"

# Reproducible timestamps: everything in the tarball is clamped to the package list's commit time.
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$REPO_DIR" log -1 --format=%ct -- image/packages.txt 2>/dev/null || true)
    [ -n "$SOURCE_DATE_EPOCH" ] || SOURCE_DATE_EPOCH=$(stat -c %Y "$IMAGE_DIR/packages.txt")
fi
export SOURCE_DATE_EPOCH

# INITRD=No: the kernel's postinst (and the dpkg trigger after it) would each run mkinitramfs under
# emulation (~13 min each); base-customize.sh runs update-initramfs exactly once instead.
export INITRD=No
partial=$tarball.partial
rm -f "$partial"
env -u PIP_FIND_LINKS -u PIP_CERT -u REQUESTS_CA_BUNDLE \
    mmdebstrap --mode=root --arch=arm64 --variant=minbase --format=tar \
    --include="$includes" \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    --skip=download/empty --skip=essential/unlink \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="'$IMAGE_DIR/stages/base-sources.sh' \"\$1\" '$suite'" \
    --setup-hook="sync-in '$debs' /var/cache/apt/archives/" \
    --customize-hook="sync-out /var/cache/apt/archives '$debs'" \
    --customize-hook="'$IMAGE_DIR/stages/base-customize.sh' \"\$1\" '$modules'" \
    "$suite" "$partial" \
    "deb $MIRROR $suite main non-free-firmware" \
    "deb $MIRROR $suite-updates main non-free-firmware" \
    "deb $SECURITY_MIRROR $suite-security main non-free-firmware" >&2
mv "$partial" "$tarball"
# Older base layers of the same suite are dead weight (~800 MB each).
find "$CACHE_DIR" -maxdepth 1 -name "base-$suite-*.tar" ! -name "$(basename "$tarball")" -delete
log "base: done, $(du -h "$tarball" | cut -f1)"
echo "$tarball"
