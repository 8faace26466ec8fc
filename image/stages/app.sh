#!/bin/bash
# Stage 2: the app layer on a fresh copy of the cached base: overlay files, service account, the
# pimail venv (offline, from the wheelhouse), enabled units, and image hygiene. ~1-2 min.
#
# usage: stages/app.sh BASE_TARBALL WHEELHOUSE_DIR APP_WHEEL ROOTFS_DIR [SERVICE_UNIT]
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

base=${1:?base tarball}
wheelhouse=${2:?wheelhouse}
app_wheel=${3:?app wheel}
root=${4:?rootfs dir}
unit=${5:-$REPO_DIR/systemd/pimail.service}
need_root
[ -f "$unit" ] || die "no systemd unit at $unit (the daemon's systemd/pimail.service); pass one with --unit"

log "app: unpacking base $(basename "$base")"
rm -rf "$root"
mkdir -p "$root"
tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$base"

log "app: overlay files"
cp -rT --preserve=mode "$IMAGE_DIR/rootfs" "$root"
# Everything the overlay adds belongs to root; the checkout may be owned by someone else.
(cd "$IMAGE_DIR/rootfs" && find . -mindepth 1 -print0) | (cd "$root" && xargs -0 chown -h root:root)

log "app: pimail's systemd files from $(dirname "$unit")"
install -m 0644 "$unit" "$root/usr/lib/systemd/system/pimail.service"
for f in "$(dirname "$unit")"/*; do
    [ "$f" = "$unit" ] && continue
    case $f in
        *.service | *.socket | *.timer | *.path) install -m 0644 "$f" "$root/usr/lib/systemd/system/" ;;
        # systemd/pimail.conf is the sysusers file (user pimail, group gpio)
        */pimail.conf | *sysusers*) install -D -m 0644 "$f" "$root/usr/lib/sysusers.d/pimail.conf" ;;
        *tmpfiles*) install -m 0644 "$f" "$root/usr/lib/tmpfiles.d/pimail.conf" ;;
    esac
done

log "app: service account (sysusers)"
[ -f "$root/usr/lib/sysusers.d/pimail.conf" ] || die "no sysusers file for the pimail user (systemd/pimail.conf)"
in_chroot "$root" systemd-sysusers
# The unit's ConfigurationDirectory=pimail (mode 0750) leaves the owner alone: group pimail lets the
# service (and first boot, as the service user) read the config.
pimail_gid=$(awk -F: '$1 == "pimail" { print $3 }' "$root/etc/group")
[ -n "$pimail_gid" ] || die "systemd-sysusers did not create the pimail group"
chown "0:$pimail_gid" "$root/etc/pimail" "$root/etc/pimail/pimail.toml"
chmod 0750 "$root/etc/pimail"
chmod 0640 "$root/etc/pimail/pimail.toml"

log "app: venv /opt/pimail/venv from the wheelhouse (offline, under emulation)"
stage=$root/tmp/pimail-wheels
rm -rf "$stage"
mkdir -p "$stage"
cp "$wheelhouse"/*.whl "$IMAGE_DIR/requirements-arm64.lock" "$app_wheel" "$stage/"
pip_whl=$(find "$stage" -maxdepth 1 -name 'pip-*.whl' -printf '%f\n' | head -n1)
[ -n "$pip_whl" ] || die "the wheelhouse has no pip wheel to install with"
in_chroot "$root" python3 -m venv --without-pip /opt/pimail/venv
# pip runs straight from its wheel; the lock pins every dependency by hash.
in_chroot "$root" /opt/pimail/venv/bin/python "/tmp/pimail-wheels/$pip_whl/pip" install -q \
    --no-index --find-links /tmp/pimail-wheels --require-hashes -r /tmp/pimail-wheels/requirements-arm64.lock
in_chroot "$root" /opt/pimail/venv/bin/python "/tmp/pimail-wheels/$pip_whl/pip" install -q \
    --no-index --find-links /tmp/pimail-wheels --no-deps "/tmp/pimail-wheels/$(basename "$app_wheel")"
in_chroot "$root" /opt/pimail/venv/bin/python -m pip check
in_chroot "$root" /opt/pimail/venv/bin/python -c 'import pimail, coincurve, uvloop, lgpio, gpiozero, Crypto; print("app: imports ok, pimail", pimail.__version__)'
rm -rf "$stage"
ln -sf /opt/pimail/venv/bin/pimail "$root/usr/local/bin/pimail"

log "app: enabling units"
in_chroot "$root" systemctl enable pimail.service pimail-data.service pimail-import-settings.service \
    pimail-firstboot.service pimail-show-qr.service systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service avahi-daemon.service ssh.service
# Wi-Fi starts when wlan0 appears (and only with imported settings: see the unit's drop-in), so a
# board or VM without wlan0 does not wait for it.
mkdir -p "$root/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants"
ln -sf /lib/systemd/system/wpa_supplicant@.service \
    "$root/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/wpa_supplicant@wlan0.service"
# systemd-analyze verify of our units inside the target (warnings only; the build goes on).
in_chroot "$root" systemd-analyze verify --man=no pimail.service pimail-data.service pimail-firstboot.service \
    pimail-import-settings.service pimail-show-qr.service pimail-smoketest.service >&2 || log "app: systemd-analyze verify reported problems (above)"

log "app: hygiene (no keys, passwords or identities in the image)"
usermod -R "$root" -p '*' root
rm -f "$root"/etc/ssh/ssh_host_* "$root/var/lib/dbus/machine-id"
: > "$root/etc/machine-id"
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
    "$root"/var/log/*.log "$root"/var/lib/pimail-image "$root"/tmp/* "$root"/root/.ssh
mkdir -p "$root/var/lib/pimail"
find "$root/var/lib/pimail" -mindepth 1 -delete
log "app: done, rootfs $(du -sh "$root" | cut -f1)"
