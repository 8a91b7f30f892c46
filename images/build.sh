#!/usr/bin/env bash
# Builds the hexa appliance disk image, as root, without docker or loop devices:
#   images/build.sh [<path/to/hexa>]      (default: $CARGO_TARGET_DIR/release/hexa)
# Output in $HEXA_IMAGE_OUT (default $CARGO_TARGET_DIR/image, or target/image):
#   hexa.img (GPT disk), hexa-a.efi (the signed unified kernel image), secureboot-db.crt
#   (the certificate it is signed under), vmlinuz, initrd.img, cmdline, roothash, root.sqfs,
#   root.verity, hexa_<version>_amd64.deb. Downloaded .debs are cached in /var/cache/hexa-image.
# Steps: the .deb; a Debian bookworm root (mmdebstrap, variant essential + systemd);
# the .deb installed, purged and installed again in that root (the package test);
# hardening and stripping; squashfs + dm-verity; an initramfs; a unified kernel image
# (kernel + initramfs + command line with the root hash) signed for Secure Boot with
# sbsign, and a signed systemd-boot, on an ESP; the disk assembled with sfdisk and dd.
# Secure Boot signing key: HEXA_SB_KEY_DIR=<dir> with db.key and db.crt (the vendor's).
# Unset, a throwaway TEST key pair is generated in $HEXA_IMAGE_OUT/sb-test-keys/ (never in
# the image, never committed): such an image boots only on firmware that enrols that test
# certificate.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$here/../target}"
out="${HEXA_IMAGE_OUT:-$target/image}"
bin="${1:-$target/release/hexa}"
cache=/var/cache/hexa-image
mirror="${HEXA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
suite=bookworm
log() { echo "build: $*" >&2; }
[ "$(id -u)" = 0 ] || { echo "build.sh must run as root" >&2; exit 1; }
[ -x "$bin" ] || { echo "no hexa binary at $bin (cargo build --release -p hexa-appliance)" >&2; exit 1; }
mkdir -p "$out" "$cache/debs" "$cache/kernel"
root="$out/root"
boot_mods="crc32c_generic crc32c_intel virtio_pci virtio_blk virtio_scsi virtio_rng ahci nvme sd_mod usb_storage uas xhci_pci ehci_pci dm_verity squashfs ext4"
modclosure() { # prints module paths (relative to lib/modules/<kver>), dependencies first
	python3 - "$out/kernel/lib/modules/$kver/modules.dep" "$@" <<'PY'
import sys
dep = {}
for line in open(sys.argv[1]):
    path, _, deps = line.partition(":")
    dep[path] = deps.split()
byname = {p.rsplit("/", 1)[1][:-3].replace("-", "_"): p for p in dep}
seen, order = set(), []
def visit(p):
    if p in seen:
        return
    seen.add(p)
    for d in dep[p]:
        visit(d)
    order.append(p)
for n in sys.argv[2:]:
    p = byname.get(n.replace("-", "_"))
    if p:
        visit(p)  # modules built into the kernel have no file; nothing to load
print("\n".join(order))
PY
}

# HEXA_IMAGE_REUSE_ROOT=1 (development only) keeps the root, kernel and squashfs of the
# previous build and redoes the initramfs, ESP and disk.
if [ "${HEXA_IMAGE_REUSE_ROOT:-0}" != 1 ]; then
rm -rf "$root" "$out/initramfs" "$out/kernel"

log "package"
deb=$("$here/build-deb.sh" "$bin" "$out")

log "debian root ($suite, mmdebstrap)"
mmdebstrap --mode=root --variant=essential --format=directory --quiet \
	--include=systemd,systemd-sysv,systemd-timesyncd,udev,kmod,nftables,cryptsetup-bin,e2fsprogs,fdisk,init-system-helpers \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias' \
	--setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
	--setup-hook="sync-in $cache/debs /var/cache/apt/archives/" \
	--customize-hook="sync-out /var/cache/apt/archives $cache/debs" --skip=essential/unlink \
	--customize-hook='rm -f "$1"/var/cache/apt/archives/*.deb' \
	"$suite" "$root" "$mirror"

log "package install/purge test in the image root"
"$here/test-deb.sh" "$root" "$deb"
cp "$deb" "$root/tmp/hexa.deb"
chroot "$root" dpkg -i /tmp/hexa.deb >/dev/null
rm "$root/tmp/hexa.deb"

log "kernel"
kpkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/{print $2; exit}')
if ! ls "$cache/kernel/${kpkg}"_*.deb >/dev/null 2>&1; then
	(cd "$cache/kernel" && apt-get download -q "$kpkg" systemd-boot-efi)
fi
# Unpacked in the root's /tmp so the root's own depmod indexes it, then moved out: the
# kernel package itself is not installed in the root (the image is updated as a whole).
mkdir -p "$root/tmp/kernel"
dpkg-deb -x "$(ls "$cache/kernel/${kpkg}"_*.deb | tail -n1)" "$root/tmp/kernel"
kver=$(ls "$root/tmp/kernel/lib/modules")
chroot "$root" depmod -b /tmp/kernel "$kver"
mv "$root/tmp/kernel" "$out/kernel"
cp "$out/kernel/boot/vmlinuz-$kver" "$out/vmlinuz"

# Modules: the boot set goes into the initramfs, the boot set plus networking, netfilter
# and the readers into the root; everything else (sound, GPU, wireless...) is left out.
# autofs4 is left out on purpose: with it, systemd's gpt-auto generator automounts the ESP
# on /boot (a failed unit without vfat, and nothing an appliance should mount).
root_mods="$boot_mods virtio_net e1000 e1000e igb igc r8169 i2c_dev i2c_tiny_usb cdc_acm ftdi_sio cp210x ch341 pl2303 $(cd "$out/kernel/lib/modules/$kver/kernel/net" && find netfilter ipv4/netfilter ipv6/netfilter -name '*.ko' -printf '%f\n' | sed 's/\.ko$//' | tr '\n' ' ')"
mkdir -p "$root/usr/lib/modules/$kver"
modclosure $root_mods | while read -r m; do
	install -Dm644 "$out/kernel/lib/modules/$kver/$m" "$root/usr/lib/modules/$kver/$m"
done
cp "$out/kernel/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$root/usr/lib/modules/$kver/"
chroot "$root" depmod "$kver"

log "hardening"
install -Dm644 "$here/hexa.nft" "$root/etc/nftables.conf"
sed -i '1a flush ruleset' "$root/etc/nftables.conf"
install -Dm644 "$here/90-hexa-hardening.conf" "$root/usr/lib/sysctl.d/90-hexa-hardening.conf"
install -Dm644 "$here/90-hexa-journal.conf" "$root/usr/lib/systemd/journald.conf.d/90-hexa-journal.conf"
install -Dm755 "$here/hexa-selftest" "$root/usr/lib/hexa/hexa-selftest"
install -Dm644 "$here/hexa-selftest.service" "$root/usr/lib/systemd/system/hexa-selftest.service"
install -Dm755 "$here/hexa-ntp-site" "$root/usr/lib/hexa/hexa-ntp-site"
install -Dm644 "$here/hexa-ntp-site.service" "$root/usr/lib/systemd/system/hexa-ntp-site.service"
install -Dm644 "$here/timesyncd-hexa.conf" "$root/usr/lib/systemd/system/systemd-timesyncd.service.d/90-hexa.conf"
cat >"$root/etc/systemd/network/80-hexa-dhcp.network" <<'NET'
# The appliance takes its address from the hospital's DHCP server (v4) and SLAAC (v6).
[Match]
Name=en* eth*
[Network]
DHCP=yes
NET
# The site configuration lives on the data partition (/var), seeded at first boot.
rm -rf "$root/etc/hexa"
ln -s /var/lib/hexa-site "$root/etc/hexa"
echo hexa >"$root/etc/hostname"
: >"$root/etc/machine-id"
: >"$root/etc/fstab"
chroot "$root" usermod -p '!' root
# /tmp as a tmpfs (Debian's tmp.mount): a read-only /tmp breaks services' PrivateDevices=
# (systemd makes the private /dev in /tmp) and tmpfiles.
cp "$root/usr/share/systemd/tmp.mount" "$root/etc/systemd/system/tmp.mount"
chroot "$root" systemctl enable --quiet tmp.mount
chroot "$root" systemctl enable --quiet systemd-networkd.service nftables.service hexa.service hexa-selftest.service \
	systemd-timesyncd.service hexa-ntp-site.service
# No logins of any kind: no getty on any console, no logind, no debug or emergency shells.
# (systemd-remount-fs has nothing to do: the root is squashfs, /var is mounted by the initramfs.)
chroot "$root" systemctl mask --quiet getty@.service serial-getty@.service console-getty.service \
	getty.target systemd-logind.service debug-shell.service systemd-firstboot.service \
	emergency.service rescue.service systemd-ask-password-console.path \
	systemd-remount-fs.service \
	systemd-ask-password-wall.path apt-daily.timer apt-daily-upgrade.timer 2>/dev/null
# The initramfs opens the verity root itself; systemd's veritysetup generator would read
# the same roothash= and wait 90 s for partitions named by the hash's discoverable UUIDs.
mkdir -p "$root/etc/systemd/system-generators"
ln -sf /dev/null "$root/etc/systemd/system-generators/systemd-veritysetup-generator"
# Strip what an appliance does not need.
rm -rf "$root"/usr/share/{doc,man,info,lintian,linda,bug,menu}/* "$root"/var/cache/apt/* \
	"$root"/var/lib/apt/lists/* "$root"/var/log/*.log "$root"/usr/share/zoneinfo/right
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +

log "squashfs root and dm-verity"
rm -f "$out/root.sqfs" "$out/root.verity"
find "$root/tmp" "$root/run" -mindepth 1 -delete
mksquashfs "$root" "$out/root.sqfs" -comp zstd -noappend -quiet -no-progress >/dev/null
veritysetup format "$out/root.sqfs" "$out/root.verity" >"$out/verity.txt"
roothash=$(sed -n 's/^Root hash:[[:space:]]*//p' "$out/verity.txt")
echo "$roothash" >"$out/roothash"

else
	kver=$(ls "$out/kernel/lib/modules")
	roothash=$(cat "$out/roothash")
	rm -rf "$out/initramfs"
fi

log "initramfs"
ir="$out/initramfs"
mkdir -p "$ir"/{bin,sbin,etc,proc,sys,dev,run,tmp,sysroot,lib/modules}
cp /bin/busybox "$ir/bin/busybox"
install -m755 "$here/initramfs/init" "$ir/init"
for b in /usr/sbin/veritysetup /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/blkid /usr/sbin/sfdisk; do
	cp "$root$b" "$ir/sbin/"
	chroot "$root" ldd "$b" | grep -o '/[^ ]*' | while read -r lib; do
		mkdir -p "$ir$(dirname "$lib")"
		cp -L "$root$lib" "$ir$lib"
	done
done
modclosure $boot_mods | while read -r m; do
	install -Dm644 "$out/kernel/lib/modules/$kver/$m" "$ir/lib/modules/$m"
	echo "$m"
done >"$ir/etc/hexa-modules"
(cd "$ir" && find . | LC_ALL=C sort | cpio -o -H newc --quiet -R 0:0 | gzip -9) >"$out/initrd.img"

cmdline="console=ttyS0 panic=-1 roothash=$roothash hexa.root=hexa-root-a hexa.verity=hexa-verity-a"
echo "$cmdline" >"$out/cmdline"

log "Secure Boot signing key"
if [ -n "${HEXA_SB_KEY_DIR:-}" ]; then
	sbkey="$HEXA_SB_KEY_DIR/db.key" sbcrt="$HEXA_SB_KEY_DIR/db.crt"
	[ -r "$sbkey" ] && [ -r "$sbcrt" ] || { echo "HEXA_SB_KEY_DIR=$HEXA_SB_KEY_DIR needs db.key and db.crt" >&2; exit 1; }
	log "signing with the key in HEXA_SB_KEY_DIR ($(openssl x509 -noout -subject -in "$sbcrt"))"
else
	keys="$out/sb-test-keys"
	sbkey="$keys/db.key" sbcrt="$keys/db.crt"
	if [ ! -s "$sbkey" ] || [ ! -s "$sbcrt" ]; then
		mkdir -p "$keys" && chmod 700 "$keys"
		openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout "$sbkey" -out "$sbcrt" \
			-subj "/CN=hexa TEST Secure Boot db key (throwaway, not for production)/" 2>/dev/null
	fi
	cat >&2 <<WARN
build: ############################################################################
build: WARNING: HEXA_SB_KEY_DIR is not set: the boot loader and the kernel image are
build: signed with a THROWAWAY TEST KEY ($keys, made on this machine).
build: This image boots under Secure Boot only where that test certificate is enrolled.
build: Production images are signed with the vendor's key: HEXA_SB_KEY_DIR=<dir> with
build: db.key and db.crt.
build: ############################################################################
WARN
fi
cp "$sbcrt" "$out/secureboot-db.crt"

log "unified kernel image (kernel + initramfs + command line), signed"
sdboot=$(mktemp -d)
dpkg-deb -x "$(ls "$cache"/kernel/systemd-boot-efi_*.deb | tail -n1)" "$sdboot"
efidir="$sdboot/usr/lib/systemd/boot/efi"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n1)
# .osrel names the entry in systemd-boot's menu (it lists no UKI without one).
cat >"$sdboot/os-release" <<OSREL
NAME="hexa"
ID=hexa
ID_LIKE=debian
PRETTY_NAME="hexa appliance $version (slot A)"
VERSION_ID="$version"
IMAGE_ID=hexa
IMAGE_VERSION="$version"
OSREL
printf '%s' "$cmdline" >"$sdboot/cmdline"
# The stub (systemd-boot-efi 252; bookworm has no ukify) with the sections appended at
# page-aligned addresses after its own, the kernel last.
uki_unsigned="$out/hexa-a.unsigned.efi"
python3 - "$efidir/linuxx64.efi.stub" "$sdboot/os-release" "$sdboot/cmdline" "$out/initrd.img" "$out/vmlinuz" >"$sdboot/objcopy-args" <<'PY'
import os, subprocess, sys
stub, files = sys.argv[1], dict(zip((".osrel", ".cmdline", ".initrd", ".linux"), sys.argv[2:]))
end = 0
for line in subprocess.run(["objdump", "-h", stub], capture_output=True, text=True, check=True).stdout.splitlines():
    f = line.split()
    if len(f) == 7 and f[0].isdigit():
        end = max(end, int(f[3], 16) + int(f[2], 16))
align = 0x1000
for name, path in files.items():
    vma = (end + align - 1) // align * align
    print(f"--add-section\n{name}={path}\n--change-section-vma\n{name}={vma:#x}")
    end = vma + os.path.getsize(path)
PY
mapfile -t objargs <"$sdboot/objcopy-args"
objcopy "${objargs[@]}" "$efidir/linuxx64.efi.stub" "$uki_unsigned"
# (sbsign warns "data remaining ... gaps between PE/COFF sections?" about the section
# alignment padding; sbverify below checks the result.)
for pair in "$uki_unsigned:$out/hexa-a.efi" "$efidir/systemd-bootx64.efi:$sdboot/BOOTX64.EFI"; do
	sbsign --key "$sbkey" --cert "$sbcrt" --output "${pair#*:}" "${pair%%:*}" >"$sdboot/sbsign.log" 2>&1 ||
		{ cat "$sdboot/sbsign.log" >&2; echo "sbsign failed on ${pair%%:*}" >&2; exit 1; }
done
sbverify --cert "$sbcrt" "$out/hexa-a.efi" >/dev/null 2>&1 || { echo "sbverify rejects hexa-a.efi" >&2; exit 1; }
sbverify --cert "$sbcrt" "$sdboot/BOOTX64.EFI" >/dev/null 2>&1 || { echo "sbverify rejects BOOTX64.EFI" >&2; exit 1; }
log "hexa-a.efi: $(($(stat -c %s "$out/hexa-a.efi") / 1024)) KiB, signed and verified (sbverify --cert)"

log "EFI system partition (systemd-boot + the UKI)"
# Only signed binaries and loader.conf on the ESP. No type #1 loader entry and no loose
# kernel or initramfs: systemd-boot finds the UKI in EFI/Linux/, whose command line (and
# so the root hash) is covered by its signature. `editor no`: no editing of command lines
# at the boot menu (under Secure Boot the stub ignores a passed command line anyway).
esp="$out/esp.vfat"
rm -f "$esp"
truncate -s 64M "$esp"
mkfs.vfat -F 32 -n HEXA-ESP "$esp" >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/EFI/Linux ::/loader
mcopy -i "$esp" "$sdboot/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$out/hexa-a.efi" ::/EFI/Linux/hexa-a.efi
printf 'default hexa-a.efi\ntimeout 0\neditor no\nauto-entries no\nauto-firmware no\n' >"$sdboot/loader.conf"
mcopy -i "$esp" "$sdboot/loader.conf" ::/loader/loader.conf
rm -rf "$sdboot"

log "disk"
mib() { echo $((($(stat -c %s "$1") + 1048575) / 1048576)); }
rootmib=$(($(mib "$out/root.sqfs") + 16))
veritymib=$(($(mib "$out/root.verity") + 1))
datamib=${HEXA_DATA_MIB:-256}
img="$out/hexa.img"
rm -f "$img"
truncate -s $((1 + 64 + 2 * (rootmib + veritymib) + datamib + 1))M "$img"
sfdisk --quiet --label gpt "$img" <<PARTS
size=64MiB, type=uefi, name=esp
size=${rootmib}MiB, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, name=hexa-root-a
size=${veritymib}MiB, type=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5, name=hexa-verity-a
size=${rootmib}MiB, type=4f68bce3-e8cd-4db1-96e7-fbcaf984b709, name=hexa-root-b
size=${veritymib}MiB, type=2c7357ed-ebd2-46d9-aec1-23d437ec2bf5, name=hexa-verity-b
size=${datamib}MiB, type=linux, name=hexa-data
PARTS
start() { sfdisk --json "$img" | python3 -c "import json,sys; print(json.load(sys.stdin)['partitiontable']['partitions'][$1-1]['start'])"; }
put() { dd if="$2" of="$img" bs=512 seek="$(start "$1")" conv=notrunc,sparse status=none; }
put 1 "$esp"
put 2 "$out/root.sqfs"
put 3 "$out/root.verity"
echo "$(start 2)" >"$out/root.start"
echo "$(start 6)" >"$out/data.start"
rm -f "$esp"
log "image $img: $(du -h --apparent-size "$img" | cut -f1) apparent, $(du -h "$img" | cut -f1) allocated; root $(du -h "$out/root.sqfs" | cut -f1) squashfs"
