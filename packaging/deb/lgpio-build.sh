#!/bin/bash
# Build lgpio for trixie's CPython 3.13 from its pinned sdist (PyPI has no cp313 wheels) straight
# into a site-packages directory: SWIG, then gcc for the target (aarch64-linux-gnu-gcc on an amd64
# host: no emulation), against the Python headers of trixie's own libpython3.13-dev for that
# architecture (fetched with apt-get download, not installed). The library is linked into the
# module statically, as in lgpio's own PyPI wheels.
#
# usage: packaging/deb/lgpio-build.sh ARCH SITE_PACKAGES_DIR
# env:   PIMAIL_DEB_CACHE (default build/deb), PIMAIL_IMAGE_MIRROR (Debian mirror)
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

arch=${1:?usage: lgpio-build.sh ARCH SITE_PACKAGES_DIR}
site=${2:?usage: lgpio-build.sh ARCH SITE_PACKAGES_DIR}
set_suite trixie
machine=$(wheel_machine "$arch")
triplet=$machine-linux-gnu
cache=${PIMAIL_DEB_CACHE:-$REPO_DIR/build/deb}
mirror=${PIMAIL_IMAGE_MIRROR:-http://deb.debian.org/debian}
cc=$triplet-gcc
for tool in "$cc" swig apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || pdie "$tool is missing (scripts/ensure-deps deb-trixie installs it)"
done

# The sdist, checked against the lock's hash.
src=$cache/lgpio-sdist
mkdir -p "$src"
pip=$(host_pip "$cache")
grep "^lgpio==$LGPIO_VERSION " "$LOCK" > "$src/req.txt" || pdie "the lock pins no lgpio $LGPIO_VERSION"
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT "$pip" download -q --isolated --disable-pip-version-check \
    --cert "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" --no-binary=:all: --no-deps --require-hashes \
    -d "$src" -r "$src/req.txt" >&2

# trixie's Python headers for this architecture (a private apt state; nothing is installed).
hdr=$cache/py$PYTAG-$arch
if [ ! -f "$hdr/usr/include/$PYTHON/Python.h" ]; then
    plog "lgpio: $PYTHON headers from trixie's libpython3.13-dev:$arch"
    apt=$cache/apt-trixie
    mkdir -p "$apt/lists/partial" "$apt/archives/partial" "$apt/debs"
    echo "deb [arch=$arch] $mirror trixie main" > "$apt/sources.list"
    aptopts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
        -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt" -o "APT::Architecture=$arch"
        -o "APT::Architectures::=$arch" -o Dir::Etc::Preferences=/dev/null
        -o Dir::Etc::PreferencesParts=/dev/null -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
    apt-get "${aptopts[@]}" update -qq >&2
    (cd "$apt/debs" && apt-get "${aptopts[@]}" download "libpython3.13-dev:$arch" >&2)
    rm -rf "$hdr.partial"
    dpkg-deb -x "$(find "$apt/debs" -name "libpython3.13-dev_*_$arch.deb" | head -n1)" "$hdr.partial"
    rm -rf "$hdr"
    mv "$hdr.partial" "$hdr"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xzf "$src/lgpio-$LGPIO_VERSION.tar.gz"
cd "$work/lgpio-$LGPIO_VERSION"
plog "lgpio: swig + $cc for cp$PYTAG $machine"
swig -python -o lgpio_wrap.c lgpio.i
# What lgpio's setup.py does for its PyPI wheels (PYPI=1): the library's sources in the module.
# shellcheck disable=SC2046  # one word per source file
"$cc" -O2 -pthread -fPIC -shared -ffile-prefix-map="$work=." -Isrc -I"$hdr/usr/include" \
    -I"$hdr/usr/include/$PYTHON" $(ls src/lg*.c) src/rgpiod.c lgpio_wrap.c -lrt -ldl \
    -o "_lgpio.cpython-$PYTAG-$triplet.so"
mkdir -p "$site"
install -m 0644 lgpio.py "_lgpio.cpython-$PYTAG-$triplet.so" "$site/"
info=$site/lgpio-$LGPIO_VERSION.dist-info
mkdir -p "$info"
printf 'Metadata-Version: 2.1\nName: lgpio\nVersion: %s\nSummary: Linux SBC GPIO module (built from the sdist by pimail'"'"'s package)\nLicense: unlicense.org\n' \
    "$LGPIO_VERSION" > "$info/METADATA"
printf 'lgpio\n_lgpio\n' > "$info/top_level.txt"
echo pimail-deb > "$info/INSTALLER"
(cd "$site" && for f in lgpio.py "_lgpio.cpython-$PYTAG-$triplet.so" "${info#"$site"/}/METADATA" \
    "${info#"$site"/}/top_level.txt" "${info#"$site"/}/INSTALLER"; do
    printf '%s,sha256=%s,%s\n' "$f" "$(python3 -c 'import base64,hashlib,sys; print(base64.urlsafe_b64encode(hashlib.sha256(open(sys.argv[1],"rb").read()).digest()).decode().rstrip("="))' "$f")" "$(stat -c %s "$f")"
done; echo "${info#"$site"/}/RECORD,,") > "$info/RECORD"
plog "lgpio: _lgpio.cpython-$PYTAG-$triplet.so built"
