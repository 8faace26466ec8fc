#!/bin/bash
# Build dist/pimail_<version>_<arch>.deb: pimail and its locked wheels in a venv under /opt/pimail,
# the systemd unit and sysusers file from systemd/, /etc/pimail/pimail.toml (the commented sample)
# as a conffile, a man page, and the maintainer scripts next to this file. Plain dpkg-deb; nothing
# is compiled and nothing runs under emulation, so amd64 and arm64 both build in seconds on any
# Debian 12 host (its python3.11 byte-compiles the venv).
#
# usage: packaging/deb/build.sh ARCH [VERSION]     ARCH: amd64 | arm64; VERSION defaults to pyproject's
# env:   PIMAIL_DEB_SUITE (default bookworm; trixie builds pimail_<VERSION>+deb13_<ARCH>.deb for
#        Python 3.13, with lgpio built from its sdist by lgpio-build.sh and the bytecode made by
#        the postinst, since a Debian 12 host has no python3.13),
#        PIMAIL_DEB_DIST (default dist/), PIMAIL_DEB_CACHE (default build/deb: wheel cache, host venv),
#        PIMAIL_DEB_COMPRESSION (default xz; the tests use gzip, which is a minute faster)
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

DEB_DIR=$PACKAGING_DIR/deb
arch=${1:?usage: build.sh amd64|arm64 [VERSION]}
machine=$(wheel_machine "$arch")
set_suite "${PIMAIL_DEB_SUITE:-bookworm}"
upstream=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_DIR/pyproject.toml" | head -n1)
version=${2:-$upstream}
case $version in [0-9]*) ;; *) pdie "version '$version' must start with a digit" ;; esac
version=$version$SUITE_SUFFIX
cache=${PIMAIL_DEB_CACHE:-$REPO_DIR/build/deb}
dist=${PIMAIL_DEB_DIST:-$REPO_DIR/dist}
command -v dpkg-deb >/dev/null || pdie "dpkg-deb is missing (apt-get install dpkg-dev)"
if [ "$SUITE" = bookworm ]; then
    command -v "$PYTHON" >/dev/null || pdie "$PYTHON is missing: the venv's bytecode is made by Debian 12's own Python (apt-get install python3)"
fi
# Reproducible: every timestamp is the last commit's (or SOURCE_DATE_EPOCH).
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
    SOURCE_DATE_EPOCH=$(git -C "$REPO_DIR" log -1 --format=%ct 2>/dev/null || date +%s)
fi
export SOURCE_DATE_EPOCH

mkdir -p "$cache" "$dist"
# One build at a time per cache: two at once (an image build and the power-cut VM's, say) would
# share build/deb/app and the stage directories and pack each other's half-written files.
exec 9>"$cache/.build.lock"
if ! flock -n 9; then
    plog "deb $arch: another build is using $cache; waiting for it"
    flock 9
fi
pip=$(host_pip "$cache")
stage=$cache/stage-$arch
[ "$SUITE" = bookworm ] || stage=$cache/stage-$SUITE-$arch
rm -rf "$stage"
mkdir -p "$stage/DEBIAN"
venv=/opt/pimail/venv
site=$venv/lib/$PYTHON/site-packages

plog "deb $arch: the pimail wheel"
app_wheel=$(build_app_wheel "$pip" "$cache/app")
wheels=$cache/wheels-cp$PYTAG-$machine
mkdir -p "$wheels"
lock=$LOCK
if [ "$PYTAG" != 311 ]; then
    # lgpio has no cp313 wheels: built from its sdist below, so not downloaded as a wheel.
    lock=$cache/lock-cp$PYTAG.txt
    grep -v '^lgpio==' "$LOCK" > "$lock"
fi
plog "deb $arch: $machine cp$PYTAG wheels from $(basename "$LOCK") ($SUITE)"
# shellcheck disable=SC2046  # platform_args prints one word per flag
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT "$pip" download -q --isolated --disable-pip-version-check \
    --cert "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" -d "$wheels" --only-binary=:all: --no-deps \
    --require-hashes $(platform_args "$PYTAG" "$machine") -r "$lock" >&2

plog "deb $arch: venv $venv"
# The venv is written by hand: its interpreter is the system's /usr/bin/python3.11 (so the same tree
# works on either architecture), the packages are the locked wheels, nothing else (no pip).
mkdir -p "$stage$venv/bin" "$stage$site"
ln -s "/usr/bin/$PYTHON" "$stage$venv/bin/python3"
ln -s python3 "$stage$venv/bin/python"
ln -s python3 "$stage$venv/bin/$PYTHON"
printf 'home = /usr/bin\ninclude-system-site-packages = false\nversion = 3.%s\n' "${PYTAG#3}" > "$stage$venv/pyvenv.cfg"
# shellcheck disable=SC2046
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT "$pip" install -q --isolated --disable-pip-version-check --no-index \
    --find-links "$wheels" --only-binary=:all: --no-deps --no-compile --require-hashes \
    $(platform_args "$PYTAG" "$machine") --target "$stage$site" -r "$lock" >&2
rm -rf "${stage:?}$site/bin"
# shellcheck disable=SC2046
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT "$pip" install -q --isolated --disable-pip-version-check --no-index \
    --no-deps --no-compile $(platform_args "$PYTAG" "$machine") --target "$stage$site" "$app_wheel" >&2
# pip --target drops console scripts with the build host's shebang: the package has one command.
rm -rf "${stage:?}$site/bin"
if [ "$PYTAG" != 311 ]; then
    PIMAIL_DEB_CACHE=$cache "$DEB_DIR/lgpio-build.sh" "$arch" "$stage$site" || pdie "building lgpio for cp$PYTAG failed"
fi
cat > "$stage$venv/bin/pimail" <<PY
#!$venv/bin/python3
import sys

from pimail.cli import main

if __name__ == "__main__":
    sys.exit(main())
PY
chmod 0755 "$stage$venv/bin/pimail"
# Every wheel must be there for this machine (a pure-Python stub in place of lgpio would import).
for mod in pimail coincurve Crypto uvloop cramjam cffi gpiozero lgpio.py "_lgpio.cpython-$PYTAG-$machine-linux-gnu.so"; do
    [ -e "$stage$site/$mod" ] || pdie "the $arch venv has no $mod"
done
# Bytecode, made here (so the Pi does not compile at every start: the unit forbids writing .pyc)
# with paths as installed; unchecked-hash pycs never look at file times, so they stay valid
# whatever times dpkg gives the sources.
if [ "$SUITE" = bookworm ]; then
    "$PYTHON" -m compileall -q -j0 --invalidation-mode unchecked-hash -s "$stage" -p / "$stage$site" >/dev/null ||
        pdie "byte-compiling the venv failed"
else
    # No python3.13 on a Debian 12 build host: the postinst compiles (same options), the prerm
    # removes the bytecode again.
    echo "$PYTHON" > "$stage$venv/pimail-compile-at-install"
fi

plog "deb $arch: systemd, config, docs"
install -D -m 0644 "$REPO_DIR/systemd/pimail.service" "$stage/lib/systemd/system/pimail.service"
install -D -m 0644 "$REPO_DIR/systemd/pimail.conf" "$stage/usr/lib/sysusers.d/pimail.conf"
# Group gpio (the service user's supplementary group) may open /dev/gpiochip* for the LEDs.
install -D -m 0644 "$DEB_DIR/60-pimail-gpio.rules" "$stage/lib/udev/rules.d/60-pimail-gpio.rules"
install -D -m 0644 "$REPO_DIR/pimail.toml" "$stage/etc/pimail/pimail.toml"
mkdir -p "$stage/usr/bin"
ln -s $venv/bin/pimail "$stage/usr/bin/pimail"
doc=$stage/usr/share/doc/pimail
install -D -m 0644 "$DEB_DIR/copyright" "$doc/copyright"
date_rfc=$(date -u -R -d "@$SOURCE_DATE_EPOCH")
printf 'pimail (%s) unstable; urgency=medium\n\n  * Build %s of pimail %s, from git %s.\n\n -- %s  %s\n' \
    "$version" "$version" "$upstream" "$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    "$(sed -n 's/^Maintainer: //p' "$DEB_DIR/control.in")" "$date_rfc" | gzip -9n > "$doc/changelog.gz"
mkdir -p "$stage/usr/share/lintian/overrides"
sed "s/@PYTHON@/$PYTHON/g" "$DEB_DIR/lintian-overrides" > "$stage/usr/share/lintian/overrides/pimail"
# The man page comes from pimail's own --help texts (the venv staged for the build host's machine
# can run here; another machine's uses the host's copy, or a quick amd64 stage).
mkdir -p "$stage/usr/share/man/man1"
if [ "$(uname -m)" = "$machine" ] && [ "$SUITE" = bookworm ]; then
    runner=$stage$venv/bin/python3
else
    [ -x "$cache/stage-$(dpkg --print-architecture)$venv/bin/python3" ] ||
        PIMAIL_DEB_SUITE=bookworm "$0" "$(dpkg --print-architecture)" "${version%"$SUITE_SUFFIX"}" >/dev/null
    runner=$cache/stage-$(dpkg --print-architecture)$venv/bin/python3
fi
"$runner" "$DEB_DIR/manpage.py" "$version" | gzip -9n > "$stage/usr/share/man/man1/pimail.1.gz"

plog "deb $arch: control and maintainer scripts"
for script in postinst prerm postrm; do
    install -m 0755 "$DEB_DIR/$script" "$stage/DEBIAN/$script"
done
echo /etc/pimail/pimail.toml > "$stage/DEBIAN/conffiles"
# Modes as Debian wants them whatever the checkout's umask was: dirs 0755, files 0644, programs 0755.
find "$stage" -path "$stage/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
find "$stage" -path "$stage/DEBIAN" -prune -o -type f ! -perm -u+x -exec chmod 0644 {} +
find "$stage" -path "$stage/DEBIAN" -prune -o -type f -perm -u+x -exec chmod 0755 {} +
# Nothing in site-packages is a program (some wheels mark plain modules executable).
find "$stage$site" -type f -perm -u+x -exec chmod 0644 {} +
installed_kb=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_kb/" -e "s/@PYTHON@/$PYTHON/" \
    "$DEB_DIR/control.in" > "$stage/DEBIAN/control"
(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z |
    xargs -0 md5sum) > "$stage/DEBIAN/md5sums"
chmod 0644 "$stage/DEBIAN/control" "$stage/DEBIAN/conffiles" "$stage/DEBIAN/md5sums"
find "$stage" -newermt "@$SOURCE_DATE_EPOCH" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

out=$dist/pimail_${version}_$arch.deb
dpkg-deb --root-owner-group "-Z${PIMAIL_DEB_COMPRESSION:-xz}" --build "$stage" "$out.partial" >/dev/null
mv "$out.partial" "$out"
plog "deb $arch: $out ($(du -h "$out" | cut -f1), installed $((installed_kb / 1024)) MiB)"
echo "$out"
