#!/bin/bash
# Stage 2: the app layer on a fresh copy of the cached base: overlay files, pimail from its arm64
# .deb (the same package `apt install` puts on Raspberry Pi OS / Debian: venv, unit, service user,
# config), enabled units, and image hygiene. ~1-2 min.
#
# usage: stages/app.sh BASE_TARBALL PIMAIL_DEB ROOTFS_DIR [SERVICE_UNIT]
#   SERVICE_UNIT: only when it differs from the packaged one, it goes to /etc/systemd/system
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

base=${1:?base tarball}
deb=${2:?pimail .deb}
root=${3:?rootfs dir}
unit=${4:-$REPO_DIR/systemd/pimail.service}
need_root
[ -f "$deb" ] || die "no pimail package at $deb (make deb builds it)"
[ -f "$unit" ] || die "no systemd unit at $unit (the daemon's systemd/pimail.service); pass one with --unit"

log "app: unpacking base $(basename "$base")"
rm -rf "$root"
mkdir -p "$root"
tar -C "$root" --numeric-owner --xattrs --xattrs-include='*' -xpf "$base"

log "app: overlay files"
cp -rT --preserve=mode "$IMAGE_DIR/rootfs" "$root"
# Everything the overlay adds belongs to root; the checkout may be owned by someone else.
(cd "$IMAGE_DIR/rootfs" && find . -mindepth 1 -print0) | (cd "$root" && xargs -0 chown -h root:root)

log "app: pimail from $(basename "$deb") (dpkg; no systemd runs here, so its postinst only enables)"
cp "$deb" "$root/tmp/pimail.deb"
in_chroot "$root" dpkg -i /tmp/pimail.deb >&2
rm -f "$root/tmp/pimail.deb"
[ -f "$root/usr/lib/sysusers.d/pimail.conf" ] || die "the package did not install its sysusers file"
grep -q '^pimail:' "$root/etc/passwd" || die "the package's postinst did not create the pimail user"
[ -L "$root/etc/systemd/system/multi-user.target.wants/pimail.service" ] ||
    die "the package's postinst did not enable pimail.service"
if ! cmp -s "$unit" "$root/lib/systemd/system/pimail.service"; then
    log "app: using $unit instead of the packaged unit (/etc/systemd/system/pimail.service)"
    install -m 0644 "$unit" "$root/etc/systemd/system/pimail.service"
fi
in_chroot "$root" /opt/pimail/venv/bin/python3 -c 'import pimail, coincurve, uvloop, lgpio, gpiozero, Crypto; print("app: imports ok, pimail", pimail.__version__)' >&2

log "app: enabling units"
in_chroot "$root" systemctl enable pimail.service pimail-data.service pimail-import-settings.service \
    pimail-firstboot.service pimail-show-qr.service pimail-journal-keep.service pimail-journal-save.timer \
    pimail-mdns-name.service systemd-networkd.service systemd-resolved.service systemd-timesyncd.service avahi-daemon.service \
    ssh.service apt-daily.timer apt-daily-upgrade.timer
# /tmp in RAM, not on the card (bookworm ships the unit but does not enable it).
install -m 0644 "$root/usr/share/systemd/tmp.mount" "$root/etc/systemd/system/tmp.mount"
in_chroot "$root" systemctl enable tmp.mount
# The login prompts show the pairing QR: Debian's /etc/issue moves aside (a local diversion, so
# base-files upgrades keep it there) and /etc/issue points at the banner pimail-show-qr keeps in
# /run (agetty reads /run/issue.d only when there is no /etc/issue).
in_chroot "$root" dpkg-divert --local --no-rename --divert /etc/issue.debian --add /etc/issue >&2
mv "$root/etc/issue" "$root/etc/issue.debian"
ln -s /run/pimail-issue/issue "$root/etc/issue"
# Wi-Fi starts when wlan0 appears (and only with imported settings: see the unit's drop-in), so a
# board or VM without wlan0 does not wait for it.
mkdir -p "$root/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants"
ln -sf /lib/systemd/system/wpa_supplicant@.service \
    "$root/etc/systemd/system/sys-subsystem-net-devices-wlan0.device.wants/wpa_supplicant@wlan0.service"
# systemd-analyze verify of our units inside the target (warnings only; the build goes on).
in_chroot "$root" systemd-analyze verify --man=no pimail.service pimail-data.service pimail-firstboot.service \
    pimail-import-settings.service pimail-show-qr.service pimail-smoketest.service pimail-journal-keep.service \
    pimail-journal-save.service pimail-journal-save.timer pimail-mdns-name.service >&2 || log "app: systemd-analyze verify reported problems (above)"

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
