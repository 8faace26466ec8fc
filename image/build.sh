#!/bin/bash
# Build the flashable pimail Raspberry Pi image (arm64; Pi 3, Pi 4, Zero 2 W) from Debian packages.
#
# usage: image/build.sh [--suite bookworm] [--initramfs most|list] [--unit FILE] [--no-xz]
#   (as root; `make image IMAGE_ARGS="..."`)
#
# Stages (see image/README.md):
#   host     apt-get install the build tools if missing; enable qemu-aarch64 binfmt
#   base     mmdebstrap + one initramfs, cached in image/cache by package list (~15 min, then 0)
#   deb      dist/pimail_<version>_arm64.deb from this checkout (packaging/deb/build.sh, ~1 min)
#   app      fresh copy of the base + overlay + that .deb (dpkg -i) + units + hygiene (~2 min)
#   assemble MBR image without loop devices (~15 s)
#   release  xz + sha256 into dist/ (~4 min)
# Output: dist/pimail-<version>-arm64.img.xz and .sha256; the raw image stays in image/out/.
set -euo pipefail
# shellcheck source=SCRIPTDIR/lib.sh
. "$(dirname "$0")/lib.sh"

suite=bookworm
modules=most
unit=$REPO_DIR/systemd/pimail.service
compress=yes
usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case $1 in
        --suite) suite=${2:?--suite needs a value}; shift 2 ;;
        --initramfs) modules=${2:?--initramfs needs most or list}; shift 2 ;;
        --unit) unit=${2:?--unit needs a file}; shift 2 ;;
        --no-xz) compress=no; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option '$1'" ;;
    esac
done
case $modules in most | list) ;; *) die "--initramfs must be 'most' or 'list', not '$modules'" ;; esac
python_tag_for_suite "$suite" >/dev/null  # refuses an unknown suite
need_root
[ -f "$unit" ] || die "no systemd unit at $unit (written by the daemon in systemd/); pass one with --unit FILE"

HOST_TOOLS="dpkg-dev mmdebstrap qemu-user-static binfmt-support arch-test debian-archive-keyring dosfstools mtools fdisk e2fsprogs xz-utils python3-venv"
declare -A took=()
t0=$(date +%s)
stage_start=$t0
mark() {
    local now
    now=$(date +%s)
    took[$1]=$((now - stage_start))
    stage_start=$now
}

missing=""
for p in $HOST_TOOLS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    log "host: apt-get install$missing"
    # Another apt run (unattended-upgrades, a second build) may hold the dpkg lock: wait for it.
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends $missing >/dev/null
fi
mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
arch-test arm64 >/dev/null || die "cannot run arm64 binaries (qemu-user-static binfmt); see 'arch-test arm64'"
mkdir -p "$CACHE_DIR" "$OUT_DIR" "$DIST_DIR"
mark host

base=$("$IMAGE_DIR/stages/base.sh" "$suite" "$modules")
mark base

# The suite's own package (bookworm: Python 3.11; trixie: pimail_<v>+deb13, Python 3.13).
deb=$(PIMAIL_DEB_SUITE=$suite "$REPO_DIR/packaging/deb/build.sh" arm64 | tail -n1)
[ -f "$deb" ] || die "the deb stage failed"
version=$(dpkg-deb -f "$deb" Version)
mark deb

rootfs=$OUT_DIR/rootfs
"$IMAGE_DIR/stages/app.sh" "$base" "$deb" "$rootfs" "$unit"
mark app

name=pimail-$version-arm64
img=$OUT_DIR/$name.img
MTOOLS_SKIP_CHECK=1 "$IMAGE_DIR/stages/assemble.sh" "$rootfs" "$img"
mark assemble

if [ "$compress" = yes ]; then
    log "release: xz -T2 -6 (a few minutes)"
    xz -T2 -6 -c "$img" > "$DIST_DIR/$name.img.xz.partial"
    mv "$DIST_DIR/$name.img.xz.partial" "$DIST_DIR/$name.img.xz"
    (cd "$DIST_DIR" && sha256sum "$name.img.xz" > "$name.img.xz.sha256")
    mark release
fi

{
    echo "image: $img"
    echo "suite: $suite, initramfs MODULES=$modules, pimail $version"
    echo "raw size: $(du -h --apparent-size "$img" | cut -f1) apparent, $(du -h "$img" | cut -f1) allocated"
    [ "$compress" = yes ] && echo "release: $DIST_DIR/$name.img.xz ($(du -h "$DIST_DIR/$name.img.xz" | cut -f1)), sha256 $(cut -c1-16 "$DIST_DIR/$name.img.xz.sha256")…"
    for s in host base deb app assemble release; do
        [ -n "${took[$s]:-}" ] && printf 'stage %-9s %5d s\n' "$s" "${took[$s]}"
    done
    printf 'total           %5d s\n' $(($(date +%s) - t0))
} | tee "$OUT_DIR/build-summary.txt"
