#!/usr/bin/env bash
# Builds the hexa appliance disk image, as root, without docker or loop devices:
#   images/build.sh [<path/to/hexa>]      (default: $CARGO_TARGET_DIR/release/hexa)
# Output in $HEXA_IMAGE_OUT (default $CARGO_TARGET_DIR/image, or target/image):
#   hexa.img (GPT disk), vmlinuz, initrd.img, cmdline, roothash, root.sqfs, root.verity,
#   hexa_<version>_amd64.deb. Downloaded .debs are cached in /var/cache/hexa-image.
# Steps: the .deb; a Debian bookworm root (mmdebstrap, variant essential + systemd);
# the .deb installed, purged and installed again in that root (the package test);
# hardening and stripping; squashfs + dm-verity; an initramfs; an ESP with systemd-boot;
# the disk assembled with sfdisk and dd.
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
	--include=systemd,systemd-sysv,udev,kmod,nftables,cryptsetup-bin,e2fsprogs,init-system-helpers \
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
install -Dm755 "$here/hexa-selftest" "$root/usr/lib/hexa/hexa-selftest"
install -Dm644 "$here/hexa-selftest.service" "$root/usr/lib/systemd/system/hexa-selftest.service"
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
chroot "$root" systemctl enable --quiet systemd-networkd.service nftables.service hexa.service hexa-selftest.service
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
for b in /usr/sbin/veritysetup /usr/sbin/mke2fs /usr/sbin/e2fsck /usr/sbin/blkid; do
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

log "EFI system partition (systemd-boot)"
sdboot=$(mktemp -d)
dpkg-deb -x "$(ls "$cache"/kernel/systemd-boot-efi_*.deb | tail -n1)" "$sdboot"
esp="$out/esp.vfat"
rm -f "$esp"
truncate -s 64M "$esp"
mkfs.vfat -F 32 -n HEXA-ESP "$esp" >/dev/null
mmd -i "$esp" ::/EFI ::/EFI/BOOT ::/loader ::/loader/entries ::/hexa
mcopy -i "$esp" "$sdboot/usr/lib/systemd/boot/efi/systemd-bootx64.efi" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$esp" "$out/vmlinuz" ::/hexa/vmlinuz
mcopy -i "$esp" "$out/initrd.img" ::/hexa/initrd.img
printf 'default hexa-a.conf\ntimeout 0\n' >"$sdboot/loader.conf"
printf 'title hexa (slot A)\nlinux /hexa/vmlinuz\ninitrd /hexa/initrd.img\noptions %s\n' "$cmdline" >"$sdboot/hexa-a.conf"
mcopy -i "$esp" "$sdboot/loader.conf" ::/loader/loader.conf
mcopy -i "$esp" "$sdboot/hexa-a.conf" ::/loader/entries/hexa-a.conf
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
