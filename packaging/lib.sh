# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings here are used by the scripts that source this file
# Shared settings for packaging/ (the .deb) and image/ (which installs that .deb). Sourced, never run.

PACKAGING_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$PACKAGING_DIR/.." && pwd)
# The one wheel lock: every runtime dependency pinned, with a sha256 per platform's wheel.
LOCK=$PACKAGING_DIR/requirements.lock
# Debian architectures the package is built for, and the CPU name in their manylinux wheel tags.
# armhf is not among them: uvloop, coincurve, pycryptodome and cffi have no armv7l wheels on PyPI.
DEB_ARCHES="amd64 arm64"
# Debian suites the package is built for: one package per suite, because the venv runs on the
# suite's own interpreter (bookworm / Raspberry Pi OS bookworm: Python 3.11; trixie: 3.13).
DEB_SUITES="bookworm trixie"
# The interpreter inside the package's venv; set_suite changes them (bookworm unless told).
PYTAG=311
PYTHON=python3.11
SUITE=bookworm
# Appended to a trixie package's version (pimail_0.1.0+deb13_arm64.deb), so the two never clash.
SUITE_SUFFIX=""
# lgpio publishes no cp313 wheels: trixie's package builds it from this sdist (the lock pins its
# sha256, tagged "sdist"), see packaging/deb/lgpio-build.sh.
LGPIO_VERSION=0.2.2.0

set_suite() {
    case $1 in
        bookworm) SUITE=bookworm PYTAG=311 PYTHON=python3.11 SUITE_SUFFIX="" ;;
        trixie) SUITE=trixie PYTAG=313 PYTHON=python3.13 SUITE_SUFFIX="+deb13" ;;
        *) pdie "no package for Debian suite '$1' (built: $DEB_SUITES)" ;;
    esac
}

plog() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
pdie() { printf 'packaging: error: %s\n' "$*" >&2; exit 1; }

wheel_machine() {
    case $1 in
        amd64) echo x86_64 ;;
        arm64) echo aarch64 ;;
        *) pdie "no wheels for Debian architecture '$1' (built: $DEB_ARCHES)" ;;
    esac
}

# pip flags that select one machine's glibc wheels for one CPython version. pip does not expand a
# newer manylinux tag to the older ones, so every tag is listed: without manylinux_2_34, lgpio
# silently resolves to its 0.0.0.2 "py3-none-any" stub instead of the real 0.2.2.0 wheel.
platform_args() {
    local pytag=$1 machine=$2 t
    for t in manylinux1 manylinux2010 manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_26 \
        manylinux_2_27 manylinux_2_28 manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_36; do
        case $t/$machine in manylinux1/aarch64 | manylinux2010/aarch64) continue ;; esac
        printf -- '--platform %s_%s ' "$t" "$machine"
    done
    printf -- '--python-version 3.%s --implementation cp --abi cp%s --abi abi3 --abi none' "${pytag#3}" "$pytag"
}

# A pip for the build host: the project's venv if there is one, else a small venv of our own
# (a bare Debian has no pip). Prints the path.
host_pip() {
    local cache=$1
    if [ -x "$REPO_DIR/.venv/bin/pip" ]; then
        echo "$REPO_DIR/.venv/bin/pip"
        return
    fi
    [ -x "$cache/host-venv/bin/pip" ] || python3 -m venv "$cache/host-venv" >&2
    echo "$cache/host-venv/bin/pip"
}

# Build the pimail wheel from this checkout into DIR; prints its path.
build_app_wheel() {
    local pip=$1 dir=$2
    mkdir -p "$dir"
    rm -f "$dir"/pimail-*.whl
    "$pip" wheel -q --no-deps -w "$dir" "$REPO_DIR" > "$dir/wheel.log" 2>&1 || {
        cat "$dir/wheel.log" >&2
        pdie "could not build the pimail wheel"
    }
    find "$dir" -maxdepth 1 -name 'pimail-*.whl' | head -n1
}
