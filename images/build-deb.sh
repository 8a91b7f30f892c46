#!/usr/bin/env bash
# Builds the hexa .deb from a release binary with dpkg-deb (no cargo-deb needed):
#   images/build-deb.sh <path/to/hexa> <output-dir>
# Prints the path of the .deb it wrote. Depends on libc6 at the newest GLIBC symbol
# version the binary uses (what dpkg-shlibdeps would compute).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$1" out="$2"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n1)
[ -n "$version" ] || { echo "no workspace version in Cargo.toml" >&2; exit 1; }
glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n1)
pkg="$out/hexa-deb"
rm -rf "$pkg"
install -Dm755 "$bin" "$pkg/usr/bin/hexa"
install -Dm644 "$here/hexa.service" "$pkg/usr/lib/systemd/system/hexa.service"
install -Dm755 "$here/hexa-firstboot" "$pkg/usr/lib/hexa/hexa-firstboot"
install -Dm644 "$here/hexa-readers.rules" "$pkg/usr/lib/udev/rules.d/60-hexa-readers.rules"
install -Dm644 "$here/hexa.sysusers" "$pkg/usr/lib/sysusers.d/hexa.conf"
install -Dm644 "$here/hexa-readers.modules" "$pkg/usr/lib/modules-load.d/hexa-readers.conf"
# The firewall and sysctl settings are the host's business on a general-purpose machine:
# shipped for the administrator to include, applied only by the appliance image.
install -Dm644 "$here/hexa.nft" "$pkg/usr/share/hexa/hexa.nft"
install -Dm644 "$here/90-hexa-hardening.conf" "$pkg/usr/share/hexa/90-hexa-hardening.conf"
install -Dm644 "$here/site.env" "$pkg/etc/hexa/site.env"
install -Dm644 "$here/README.md" "$pkg/usr/share/doc/hexa/README.md"
install -d "$pkg/DEBIAN"
install -m755 "$here/deb/postinst" "$here/deb/prerm" "$here/deb/postrm" "$pkg/DEBIAN/"
echo /etc/hexa/site.env >"$pkg/DEBIAN/conffiles"
size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: hexa
Version: $version
Architecture: amd64
Maintainer: hexa maintainers <hexa@localhost>
Section: net
Priority: optional
Installed-Size: $size
Depends: libc6 (>= $glibc), libgcc-s1
Recommends: systemd, nftables
Description: hexa, the health exchange appliance
 A district hospital's node in a national health information exchange: registries and
 the shared health record in LMDB, signed records, a Merkle audit log, patient consent
 by card, and a FHIR R4 API. Runs as the hardened systemd unit hexa.service.
CONTROL
deb="$out/hexa_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
