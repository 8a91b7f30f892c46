#!/usr/bin/env bash
# Tests the hexa .deb in a Debian root through chroot: install, check what it put where,
# purge, check that nothing of it is left (but the data directory, which is never deleted).
#   images/test-deb.sh <debian-root> <hexa.deb>
set -euo pipefail
root="$1" deb="$2"
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
ok() { echo "test-deb: ok: $*" >&2; }
files=(/usr/bin/hexa /usr/lib/systemd/system/hexa.service /usr/lib/hexa/hexa-firstboot
	/usr/lib/udev/rules.d/60-hexa-readers.rules /usr/lib/sysusers.d/hexa.conf
	/usr/lib/modules-load.d/hexa-readers.conf /usr/share/hexa/hexa.nft /etc/hexa/site.env)
wants=/etc/systemd/system/multi-user.target.wants/hexa.service

cp "$deb" "$root/tmp/hexa-test.deb"
chroot "$root" dpkg -i /tmp/hexa-test.deb >/dev/null || fail "dpkg -i"
for f in "${files[@]}"; do [ -e "$root$f" ] || fail "$f not installed"; done
ok "installed ${#files[@]} files"
[ -L "$root$wants" ] || fail "hexa.service not enabled"
ok "hexa.service enabled"
chroot "$root" getent group hexa-readers >/dev/null || fail "group hexa-readers missing"
ok "group hexa-readers created"
chroot "$root" /usr/bin/hexa --version >/dev/null || fail "hexa does not run in the root"
ok "hexa runs: $(chroot "$root" /usr/bin/hexa --version)"
chroot "$root" systemd-analyze security --offline=yes --threshold=15 hexa.service >/dev/null 2>&1 ||
	fail "installed unit fails systemd-analyze security --threshold=15"
ok "installed unit passes systemd-analyze security --offline=yes --threshold=15"
# A client directory the administrator added, and some data: purge removes the first only.
mkdir -p "$root/etc/hexa/clients/emr" "$root/var/lib/private/hexa"
echo keep >"$root/var/lib/private/hexa/marker"

chroot "$root" dpkg --purge hexa >/dev/null || fail "dpkg --purge"
chroot "$root" dpkg -s hexa >/dev/null 2>&1 && fail "hexa still known to dpkg after purge"
for f in "${files[@]}"; do [ ! -e "$root$f" ] || fail "$f left after purge"; done
[ ! -e "$root/etc/hexa" ] || fail "/etc/hexa left after purge"
[ ! -L "$root$wants" ] || fail "enablement symlink left after purge"
[ ! -L "$root/etc/systemd/system/hexa.service" ] || fail "mask left after purge"
[ -e "$root/var/lib/private/hexa/marker" ] || fail "purge deleted the data directory"
ok "purged: no files, configuration or enablement left; data directory kept"
rm -rf "$root/var/lib/private/hexa" "$root/tmp/hexa-test.deb"
rmdir "$root/var/lib/private" 2>/dev/null || true
