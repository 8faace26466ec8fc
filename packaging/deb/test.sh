#!/bin/bash
# make deb-test: install the .deb into a fresh Debian 12 root (mmdebstrap; no systemd runs there)
# and check what an operator relies on: files, owners and modes, the unit verifies, `pimail --help`
# and `pimail init` as the pimail user, the maintainer scripts' systemctl calls (policy-rc.d
# respected), an upgrade from an older build keeps the edited config, node key and data, remove
# keeps the data, purge deletes it after saying so. Then lintian. arm64 runs under qemu-user.
#
# usage: packaging/deb/test.sh [ARCH...]      (as root; default: amd64 arm64)
# env:   PIMAIL_DEB_SUITES (default: bookworm trixie): each suite's package in a fresh root of
#        that suite (Debian 12 / Python 3.11, Debian 13 / Python 3.13)
#        PIMAIL_DEB_TEST_KEEP=1 keeps the test roots in build/deb/test-<suite>-<arch>
# shellcheck disable=SC2016  # the single-quoted scripts run in the test root, expanded there
set -euo pipefail
# shellcheck source=SCRIPTDIR/../lib.sh
. "$(dirname "$0")/../lib.sh"

[ "$(id -u)" -eq 0 ] || pdie "deb-test needs root (mmdebstrap --mode=root, chroot)"
arches=${*:-$DEB_ARCHES}
cache=${PIMAIL_DEB_CACHE:-$REPO_DIR/build/deb}
mirror=${PIMAIL_IMAGE_MIRROR:-http://deb.debian.org/debian}
upstream=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO_DIR/pyproject.toml" | head -n1)
suites=${PIMAIL_DEB_SUITES:-$DEB_SUITES}
fails=0
pass() { printf '  ok    %s\n' "$*"; }
fail() { printf '  FAIL  %s\n' "$*"; fails=$((fails + 1)); }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; fi
}

tools="mmdebstrap lintian"
case " $arches " in *" arm64 "*) tools="$tools qemu-user-static binfmt-support arch-test" ;; esac
missing=""
for p in $tools; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    plog "deb-test: apt-get install$missing"
    apt-get update -qq
    # shellcheck disable=SC2086  # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

# Run a command in the test root with a clean environment and /proc, /sys, /dev mounted in a
# private mount namespace.
in_root() {
    local root=$1
    shift
    unshare --mount --fork -- /bin/sh -euc '
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount -t sysfs sys "$root/sys"
        mount --rbind /dev "$root/dev"
        exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
            LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
    ' sh "$root" "$@"
}

for suite in $suites; do
set_suite "$suite"
old=$upstream~test1$SUITE_SUFFIX
new=$upstream$SUITE_SUFFIX
for arch in $arches; do
    t0=$(date +%s)
    if [ "$arch" != "$(dpkg --print-architecture)" ]; then
        mountpoint -q /proc/sys/fs/binfmt_misc || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
        update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
        arch-test "$arch" >/dev/null || pdie "cannot run $arch binaries (qemu-user-static binfmt)"
    fi
    echo "== $suite $arch"
    dist=$cache/test-dist
    mkdir -p "$dist"
    plog "deb-test $arch: building $old and $new"
    PIMAIL_DEB_SUITE=$suite PIMAIL_DEB_DIST=$dist PIMAIL_DEB_COMPRESSION=gzip "$PACKAGING_DIR/deb/build.sh" "$arch" "$upstream~test1" >/dev/null
    PIMAIL_DEB_SUITE=$suite PIMAIL_DEB_DIST=$dist PIMAIL_DEB_COMPRESSION=gzip "$PACKAGING_DIR/deb/build.sh" "$arch" "$upstream" >/dev/null
    t_built=$(date +%s)

    base=$cache/root-$suite-$arch.tar
    if [ ! -s "$base" ]; then
        plog "deb-test $arch: mmdebstrap a minimal $suite root (cached as $(basename "$base"))"
        mmdebstrap --quiet --mode=root --format=tar --variant=minbase --arch="$arch" "$suite" "$base.partial" \
            "deb $mirror $suite main" "deb $mirror $suite-updates main" \
            "deb ${PIMAIL_IMAGE_SECURITY_MIRROR:-http://deb.debian.org/debian-security} $suite-security main"
        mv "$base.partial" "$base"
    fi
    root=$cache/test-$suite-$arch
    rm -rf "$root"
    mkdir -p "$root"
    tar -C "$root" -xpf "$base"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    cp "$dist/pimail_${old}_$arch.deb" "$dist/pimail_${new}_$arch.deb" "$root/tmp/"
    # The root has neither python3 nor systemd: one apt install must bring everything.
    check "fresh root has no python3 and no systemd" \
        sh -c "! test -e '$root/usr/bin/python3' && ! test -e '$root/bin/systemctl'"
    t_root=$(date +%s)

    plog "deb-test $arch: apt install ./pimail_${old}_$arch.deb (chroot: no systemd running)"
    in_root "$root" apt-get update -qq
    if in_root "$root" apt-get install -y -q --no-install-recommends "/tmp/pimail_${old}_$arch.deb" > "$root/tmp/install.log" 2>&1; then
        pass "apt install in a chroot without systemd"
    else
        fail "apt install in a chroot without systemd"
        tail -20 "$root/tmp/install.log"
        continue
    fi
    t_install=$(date +%s)
    check "postinst says where config, data and logs are" grep -q 'config /etc/pimail/pimail.toml, data /var/lib/pimail, logs: journalctl -u pimail' "$root/tmp/install.log"

    # files, owners, modes
    stat_is() { # stat_is PATH "owner:group mode"
        local got
        got=$(in_root "$root" stat -c '%U:%G %a' "$1" 2>/dev/null || echo missing)
        if [ "$got" = "$2" ]; then pass "$1 is $2"; else fail "$1 is $2 (got $got)"; fi
    }
    stat_is /etc/pimail "root:pimail 750"
    stat_is /etc/pimail/pimail.toml "root:pimail 640"
    stat_is /var/lib/pimail "pimail:pimail 750"
    stat_is /opt/pimail/venv/bin/pimail "root:root 755"
    stat_is /lib/systemd/system/pimail.service "root:root 644"
    stat_is /usr/lib/sysusers.d/pimail.conf "root:root 644"
    stat_is /lib/udev/rules.d/60-pimail-gpio.rules "root:root 644"
    check "the GPIO rule gives group gpio the GPIO chips" grep -q 'KERNEL=="gpiochip\*", GROUP="gpio", MODE="0660"' "$root/lib/udev/rules.d/60-pimail-gpio.rules"
    check "/usr/bin/pimail points into the venv" test "$(readlink "$root/usr/bin/pimail")" = /opt/pimail/venv/bin/pimail
    check "the venv's python is the system $PYTHON" test "$(readlink "$root/opt/pimail/venv/bin/python3")" = "/usr/bin/$PYTHON"
    check "the venv's modules are byte-compiled for $PYTHON" sh -c "ls '$root'/opt/pimail/venv/lib/$PYTHON/site-packages/pimail/__pycache__/__init__.cpython-$PYTAG.pyc"
    check "lgpio's C module imports ($PYTHON)" in_root "$root" /opt/pimail/venv/bin/python3 -c 'import lgpio, gpiozero.pins.lgpio'
    check "config is the commented sample" cmp "$root/etc/pimail/pimail.toml" "$REPO_DIR/pimail.toml"
    check "config is a conffile" in_root "$root" sh -c "dpkg-query -W -f='\${Conffiles}' pimail | grep -q /etc/pimail/pimail.toml"
    check "pimail is a system user with no login shell" in_root "$root" sh -c \
        'getent passwd pimail | awk -F: "\$3 < 1000 && \$7 ~ /nologin/ { ok = 1 } END { exit !ok }"'
    check "pimail is in group gpio" in_root "$root" sh -c 'id -nG pimail | grep -qw gpio'
    check "unit enabled (multi-user.target.wants)" test -L "$root/etc/systemd/system/multi-user.target.wants/pimail.service"
    check "no files outside the package's own" in_root "$root" sh -c \
        '! dpkg -L pimail | grep -vE "^/(\.|etc|etc/pimail.*|lib|lib/systemd|lib/systemd/system|lib/systemd/system/pimail.service|lib/udev|lib/udev/rules.d|lib/udev/rules.d/60-pimail-gpio.rules|opt|opt/pimail.*|usr|usr/bin|usr/bin/pimail|usr/lib|usr/lib/sysusers.d|usr/lib/sysusers.d/pimail.conf|usr/share|usr/share/(doc|man|man/man1|lintian|lintian/overrides)(/pimail.*)?|usr/share/man/man1/pimail.1.gz)$"'
    check "no system Python package came with it" in_root "$root" sh -c '! dpkg -l "python3-*" 2>/dev/null | grep -q "^ii"'
    check "dpkg --verify is clean" in_root "$root" dpkg --verify pimail
    if in_root "$root" systemd-analyze verify --man=no /lib/systemd/system/pimail.service > "$root/tmp/verify.log" 2>&1 &&
        ! grep -q pimail "$root/tmp/verify.log"; then
        pass "systemd-analyze verify pimail.service"
    else
        fail "systemd-analyze verify pimail.service"
        cat "$root/tmp/verify.log"
    fi
    check "pimail --help as the pimail user" in_root "$root" runuser -u pimail -- pimail --help
    check "man page" test -s "$root/usr/share/man/man1/pimail.1.gz"
    if in_root "$root" runuser -u pimail -- pimail init --data-dir /var/lib/pimail > "$root/tmp/init.log" 2>&1; then
        pass "pimail init as the pimail user"
    else
        fail "pimail init as the pimail user"
        cat "$root/tmp/init.log"
    fi
    stat_is /var/lib/pimail/nodekey "pimail:pimail 600"
    check "pimail enode reads the installed config and the key" in_root "$root" runuser -u pimail -- \
        pimail enode --config /etc/pimail/pimail.toml --host localhost

    plog "deb-test $arch: maintainer scripts as if systemd ran (a systemctl stand-in logs the calls)"
    # apt runs dpkg with its own PATH, so the stand-in takes the real systemctl's place for now.
    mkdir -p "$root/run/systemd/system"
    sysctl_bin=$root/usr/bin/systemctl
    [ -e "$sysctl_bin" ] || sysctl_bin=$root/bin/systemctl
    mv "$sysctl_bin" "$sysctl_bin.real"
    cat > "$sysctl_bin" <<'SH'
#!/bin/sh
echo "$*" >> /tmp/systemctl.log
case " $* " in *" is-enabled "*) echo enabled ;; esac
exit 0
SH
    chmod 0755 "$sysctl_bin"
    printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
    chmod 0755 "$root/usr/sbin/policy-rc.d"
    : > "$root/tmp/systemctl.log"
    check "reinstall under policy-rc.d 101" in_root "$root" dpkg -i "/tmp/pimail_${old}_$arch.deb"
    check "policy-rc.d 101: no start or restart" sh -c "! grep -qE '(start|restart) pimail' '$root/tmp/systemctl.log'"
    rm -f "$root/usr/sbin/policy-rc.d"

    # the operator's changes, then the upgrade
    sed -i 's/^max_peers = 50$/max_peers = 7/' "$root/etc/pimail/pimail.toml"
    echo "# edited by the operator" >> "$root/etc/pimail/pimail.toml"
    echo "aa" > "$root/var/lib/pimail/pairings-marker"
    in_root "$root" chown pimail:pimail /var/lib/pimail/pairings-marker
    key_before=$(sha256sum < "$root/var/lib/pimail/nodekey")
    : > "$root/tmp/systemctl.log"
    plog "deb-test $arch: upgrade to $new"
    if in_root "$root" apt-get install -y -q "/tmp/pimail_${new}_$arch.deb" > "$root/tmp/upgrade.log" 2>&1; then
        pass "apt upgrade $old -> $new"
    else
        fail "apt upgrade $old -> $new"
        tail -20 "$root/tmp/upgrade.log"
    fi
    check "version is $new" test "$(in_root "$root" dpkg-query -W -f='${Version}' pimail)" = "$new"
    check "upgrade restarted the service" grep -q -- '--system restart pimail.service' "$root/tmp/systemctl.log"
    check "upgrade kept the edited config" grep -q '^max_peers = 7$' "$root/etc/pimail/pimail.toml"
    check "upgrade did not leave a .dpkg-dist/.dpkg-old" sh -c "! ls '$root'/etc/pimail/*.dpkg-* 2>/dev/null"
    check "upgrade kept the node key" test "$(sha256sum < "$root/var/lib/pimail/nodekey")" = "$key_before"
    check "upgrade kept the data dir" test -s "$root/var/lib/pimail/pairings-marker"
    stat_is /etc/pimail/pimail.toml "root:pimail 640"

    : > "$root/tmp/systemctl.log"
    in_root "$root" apt-get remove -y -q pimail > "$root/tmp/remove.log" 2>&1 || fail "apt remove"
    check "remove stopped the service" grep -q -- 'stop pimail.service' "$root/tmp/systemctl.log"
    check "remove kept the data" test -s "$root/var/lib/pimail/nodekey"
    check "remove kept the config" grep -q '^max_peers = 7$' "$root/etc/pimail/pimail.toml"
    check "remove said the data is kept" grep -q 'kept /var/lib/pimail' "$root/tmp/remove.log"
    check "remove took the program away" sh -c "! test -e '$root/opt/pimail/venv/bin/pimail' && ! test -e '$root/usr/bin/pimail'"
    in_root "$root" apt-get purge -y -q pimail > "$root/tmp/purge.log" 2>&1 || fail "apt purge"
    check "purge said what it deletes" grep -q 'purge: deleting /var/lib/pimail' "$root/tmp/purge.log"
    check "purge deleted the data" test ! -e "$root/var/lib/pimail"
    check "purge deleted /etc/pimail" test ! -e "$root/etc/pimail"
    check "purge left no unit symlinks" sh -c "! find '$root/etc/systemd' -name 'pimail.service' | grep -q ."
    mv "$sysctl_bin.real" "$sysctl_bin"
    rmdir "$root/run/systemd/system"
    t_end=$(date +%s)

    plog "deb-test $arch: lintian"
    if lintian --fail-on error,warning "$dist/pimail_${new}_$arch.deb" > "$cache/lintian-$suite-$arch.log" 2>&1; then
        pass "lintian clean (overrides explained in packaging/deb/lintian-overrides)"
    else
        fail "lintian"
        cat "$cache/lintian-$suite-$arch.log"
    fi
    echo "   $arch: build x2 $((t_built - t0)) s, root $((t_root - t_built)) s, apt install $((t_install - t_root)) s, checks+upgrade+remove+purge $((t_end - t_install)) s, lintian $(($(date +%s) - t_end)) s"
    echo "   $arch: $(du -h "$dist/pimail_${new}_$arch.deb" | cut -f1) .deb (gzip; make deb's xz is smaller), installed $(dpkg-deb -f "$dist/pimail_${new}_$arch.deb" Installed-Size) KiB"
    [ -n "${PIMAIL_DEB_TEST_KEEP:-}" ] || rm -rf "$root"
done
done

if [ "$fails" -ne 0 ]; then
    echo "deb-test: $fails check(s) failed"
    exit 1
fi
echo "deb-test: all checks passed"
