#!/bin/bash
# Stage: the pimail wheel (built from this checkout) and the locked aarch64 wheelhouse.
# usage: stages/wheels.sh PYTHON_TAG OUT_DIR      prints "APP_WHEEL WHEELHOUSE" on stdout
# Everything is a binary wheel downloaded on the host (seconds); nothing is compiled. The
# wheelhouse is cached per Python version and only fetches what the lock adds.
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

pytag=${1:?python tag}
out=${2:?out dir}
lock=$IMAGE_DIR/requirements-arm64.lock
wheelhouse=$CACHE_DIR/wheelhouse-cp$pytag
# The project's venv pip, else a small build venv of our own (a bare Debian has no pip).
if [ -x "$REPO_DIR/.venv/bin/pip" ]; then
    pip=("$REPO_DIR/.venv/bin/pip")
else
    [ -x "$CACHE_DIR/host-venv/bin/pip" ] || python3 -m venv "$CACHE_DIR/host-venv" >&2
    pip=("$CACHE_DIR/host-venv/bin/pip")
fi

[ "$pytag" = 311 ] || die "requirements-arm64.lock is for CPython 3.11 (bookworm); regenerate it with image/wheels-lock.sh $pytag"
mkdir -p "$out/app" "$wheelhouse"
rm -f "$out"/app/pimail-*.whl
log "wheels: building the pimail wheel"
"${pip[@]}" wheel -q --no-deps -w "$out/app" "$REPO_DIR" > "$out/app/wheel.log" 2>&1 || {
    cat "$out/app/wheel.log" >&2
    die "could not build the pimail wheel"
}
app_wheel=$(find "$out/app" -name 'pimail-*.whl' | head -n1)

log "wheels: aarch64 cp$pytag wheelhouse from $(basename "$lock")"
# shellcheck disable=SC2046  # platform_args prints one word per flag
env -u PIP_FIND_LINKS -u PIP_CONSTRAINT "${pip[@]}" download -q --isolated \
    --cert "${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}" -d "$wheelhouse" \
    --only-binary=:all: --no-deps --require-hashes $(platform_args "$pytag") -r "$lock" >&2
# Every locked package must be there as a wheel for this platform (the lgpio stub trap).
missing=""
while read -r name _; do
    stem=$(echo "${name%%==*}" | tr '-' '_')
    version=${name##*==}
    find "$wheelhouse" -maxdepth 1 -iname "${stem}-${version}-*.whl" | grep -q . || missing="$missing ${name}"
done < <(grep -v '^#' "$lock")
[ -z "$missing" ] || die "wheelhouse lacks:$missing"
log "wheels: $(grep -vc '^#' "$lock") locked wheels, $(du -sh "$wheelhouse" | cut -f1)"
echo "$app_wheel $wheelhouse"
