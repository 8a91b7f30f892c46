#!/usr/bin/env bash
# The appliance's Secure Boot test (run as root after images/build.sh; .ci/image-smoke runs
# it after images/smoke.sh). Boots copies of the disk image under OVMF (qemu TCG, q35 with
# SMM, OVMF_CODE_4M.secboot.fd) with Secure Boot enforcing and, in a copy of
# OVMF_VARS_4M.fd, a test platform key and KEK and only the image's signing certificate
# (secureboot-db.crt) in db, enrolled with virt-fw-vars (PyPI virt-firmware):
#  1. the image as built: the firmware runs the signed systemd-boot, which runs the signed
#     UKI EFI/Linux/hexa-a.efi; the kernel reports Secure Boot and locks down (integrity),
#     gets exactly the UKI's command line, the root is verified, GET /readyz answers through
#     a forwarded port and the in-guest self-test passes;
#  2. the same UKI signed by another key: the firmware refuses it; no kernel starts;
#  3. the signed UKI with one byte of its command line changed (a different root hash):
#     refused likewise;
#  4. a loader entry that hands the signed UKI another command line (a root hash of zeros):
#     the stub ignores it under Secure Boot; the kernel gets the UKI's own command line.
#     Control: the same disk without Secure Boot, where the entry's command line does win.
# Every wait is bounded (HEXA_SB_READY_TIMEOUT, HEXA_SB_REFUSE_TIMEOUT, seconds).
#   images/secureboot-test.sh      (uses $HEXA_IMAGE_OUT, default $CARGO_TARGET_DIR/image)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$here/../target}"
out="${HEXA_IMAGE_OUT:-$target/image}"
ready_timeout="${HEXA_SB_READY_TIMEOUT:-480}"
refuse_timeout="${HEXA_SB_REFUSE_TIMEOUT:-180}"
code=/usr/share/OVMF/OVMF_CODE_4M.secboot.fd
vars_template=/usr/share/OVMF/OVMF_VARS_4M.fd
owner=3a6ed8de-e240-42c8-a5e6-b5b315cfd8d5 # the owner GUID of hexa's db entry
say() { echo "secureboot: $*"; }
die() { echo "secureboot: FAIL: $*" >&2; exit 1; }
work=$(mktemp -d /var/tmp/hexa-sb.XXXXXX)
qpid=""
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid"; wait "$qpid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
for f in hexa.img hexa-a.efi hexa-a.unsigned.efi secureboot-db.crt cmdline roothash; do
	[ -e "$out/$f" ] || die "$out/$f missing: run images/build.sh first"
done
for f in "$code" "$vars_template"; do [ -e "$f" ] || die "$f missing (Debian package ovmf)"; done
python3 -c "import virt.firmware.vars" 2>/dev/null || die "virt-firmware missing (pip install virt-firmware; .ci/setup)"
virt_fw_vars() { python3 -m virt.firmware.vars "$@"; }
t_start=$(date +%s)

say "== static: signatures and ESP"
# (sbverify warns about the padding between the UKI's sections: "data remaining ... gaps")
sbverify --cert "$out/secureboot-db.crt" "$out/hexa-a.efi" >/dev/null 2>&1 || die "sbverify rejects hexa-a.efi"
esp_off=$(($(sfdisk --json "$out/hexa.img" | python3 -c "import json,sys; print(json.load(sys.stdin)['partitiontable']['partitions'][0]['start'])") * 512))
mcopy -n -i "$out/hexa.img@@$esp_off" ::/EFI/BOOT/BOOTX64.EFI "$work/BOOTX64.EFI"
sbverify --cert "$out/secureboot-db.crt" "$work/BOOTX64.EFI" >/dev/null 2>&1 || die "sbverify rejects the ESP's systemd-boot"
mcopy -n -i "$out/hexa.img@@$esp_off" ::/EFI/Linux/hexa-a.efi "$work/esp-uki.efi"
cmp -s "$work/esp-uki.efi" "$out/hexa-a.efi" || die "the ESP's EFI/Linux/hexa-a.efi is not the signed hexa-a.efi"
objcopy -O binary --only-section=.cmdline "$out/hexa-a.efi" "$work/uki-cmdline"
[ "$(cat "$work/uki-cmdline")" = "$(cat "$out/cmdline")" ] || die "the UKI's .cmdline differs from cmdline"
grep -q "roothash=$(cat "$out/roothash")" "$work/uki-cmdline" || die "the UKI's command line lacks the root hash"
mcopy -n -i "$out/hexa.img@@$esp_off" ::/loader/loader.conf "$work/loader.conf"
grep -qx 'editor no' "$work/loader.conf" || die "loader.conf does not disable the editor"
files=$(mdir -/ -b -i "$out/hexa.img@@$esp_off" :: | sed 's|^::/||' | LC_ALL=C sort | tr '\n' ' ')
[ "$files" = "EFI/ EFI/BOOT/ EFI/BOOT/BOOTX64.EFI EFI/Linux/ EFI/Linux/hexa-a.efi loader/ loader/loader.conf " ] ||
	die "unexpected files on the ESP: $files"
say "sbverify --cert: systemd-boot and hexa-a.efi signed; the UKI's .cmdline carries the root hash; editor no; ESP holds only [$files]"

say "== firmware variables: test PK/KEK, db = $(openssl x509 -noout -subject -in "$out/secureboot-db.crt")"
virt_fw_vars -i "$vars_template" -o "$work/vars.fd" --enroll-generate "hexa secureboot-test platform" \
	--microsoft-kek none --no-microsoft --add-db "$owner" "$out/secureboot-db.crt" --sb >"$work/vars.log" 2>&1 ||
	{ cat "$work/vars.log"; die "virt-fw-vars (python3 -m virt.firmware.vars)"; }
virt_fw_vars -i "$work/vars.fd" -p >"$work/vars.txt" 2>&1
grep -q 'SecureBootEnable.*ON\|SecureBootEnable.*bool: *True' "$work/vars.txt" ||
	{ grep -i secureboot "$work/vars.txt"; die "SecureBootEnable is not on in the variables"; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# boot <disk> <console-log> [<port>]: OVMF with Secure Boot, in the background; sets qpid.
# (fw_code and fw_vars name the firmware; only the control boot of step 4 changes them.)
fw_code="$code" fw_vars="$work/vars.fd"
boot() {
	cp "$fw_vars" "$work/vars-run.fd"
	local net=(-nic none)
	# shellcheck disable=SC2054 # qemu option lists, not array elements
	[ -n "${3:-}" ] && net=(-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$3-:8080" -device virtio-net-pci,netdev=n0,romfile=)
	qemu-system-x86_64 -accel tcg -machine q35,smm=on -cpu max -m 1024 -smp 2 \
		-global driver=cfi.pflash01,property=secure,value=on -global ICH9-LPC.disable_s3=1 \
		-drive "if=pflash,format=raw,unit=0,readonly=on,file=$fw_code" \
		-drive "if=pflash,format=raw,unit=1,file=$work/vars-run.fd" \
		-display none -monitor none -serial "file:$2" -no-reboot \
		-drive "file=$1,format=raw,if=virtio" "${net[@]}" \
		-device virtio-rng-pci >"$work/qemu.log" 2>&1 &
	qpid=$!
}
stop() {
	if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; fi
	qpid=""
}
# wait_for <log> <regex> <timeout>: until the console log matches (0) or the time is up (1).
wait_for() {
	local deadline=$(($(date +%s) + $3))
	until grep -aqE "$2" "$1" 2>/dev/null; do
		[ "$(date +%s)" -lt "$deadline" ] || return 1
		kill -0 "$qpid" 2>/dev/null || return 1
		sleep 1
	done
}
kernel_cmdline() { grep -a 'Kernel command line:' "$1" | head -n1 | tr -d '\r' | sed 's/.*Kernel command line: *//; s/ *$//'; }

say "== 1. the signed image under Secure Boot"
site="$work/site"
mkdir -p "$site"
port=$(free_port)
cat >"$site/site.env" <<SITE
HEXA_FACILITY_ID=rw-dh-secureboot
HEXA_FACILITY_NAME=Secure Boot Test Hospital
HEXA_LISTEN=0.0.0.0:8080
HEXA_PUBLIC_BASE_URL=http://127.0.0.1:$port
HEXA_NTP=127.0.0.1
SITE
disk="$work/disk.img"
cp --sparse=always "$out/hexa.img" "$disk"
"$here/site-seed.sh" "$disk" "$site" >/dev/null
t0=$(date +%s.%N)
boot "$disk" "$work/console.log" "$port"
deadline=$(($(date +%s) + ready_timeout))
until curl -fsS -m 5 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; do
	kill -0 "$qpid" 2>/dev/null || { tail -n 40 "$work/console.log"; die "qemu exited before /readyz answered"; }
	[ "$(date +%s)" -lt "$deadline" ] || { tail -n 60 "$work/console.log"; die "/readyz did not answer within ${ready_timeout}s"; }
	sleep 1
done
ready_secs=$(python3 -c "print(f'{$(date +%s.%N) - $t0:.1f}')")
say "GET /readyz: 200 after ${ready_secs} s (OVMF + Secure Boot, TCG)"
wait_for "$work/console.log" '^HEXA-SELFTEST-RESULT:' 240 || { tail -n 60 "$work/console.log"; die "no self-test report"; }
stop
grep -aE '^HEXA-SELFTEST|Secure boot|secureboot|[Ll]ockdown' "$work/console.log" | tr -d '\r' | sed 's/^/  guest: /'
grep -aq '^HEXA-SELFTEST-RESULT: PASS' "$work/console.log" || die "in-guest self-test failed under Secure Boot"
grep -aq 'Secure boot enabled' "$work/console.log" || die "the kernel did not report Secure Boot enabled"
grep -aq '^HEXA-SELFTEST-INFO: lockdown .*\[integrity\]' "$work/console.log" || die "the kernel is not locked down (integrity)"
[ "$(kernel_cmdline "$work/console.log")" = "$(cat "$out/cmdline")" ] ||
	die "the kernel's command line [$(kernel_cmdline "$work/console.log")] is not the UKI's"
say "signed image: Secure Boot enabled, lockdown integrity, the UKI's command line, self-test PASS"

# refused <name> <disk>: boots it and requires the firmware's refusal, and no kernel.
refused() {
	local log="$work/$1.log"
	boot "$2" "$log"
	wait_for "$log" 'Security Violation|Access Denied|Linux version|HEXA-BOOT' "$refuse_timeout" || true
	sleep 2
	stop
	if grep -aqE 'Linux version|HEXA-BOOT' "$log"; then tail -n 20 "$log"; die "$1: a kernel started"; fi
	grep -aqE 'Security Violation|Access Denied' "$log" ||
		{ tail -c 2000 "$log"; die "$1: no refusal by the firmware within ${refuse_timeout}s"; }
	say "$1: refused by the firmware, systemd-boot reports: $(sed 's/\x1b\[[0-9;]*[A-Za-z]//g' "$log" | grep -aoE '[^[:cntrl:]]*(Security Violation|Access Denied)' | head -n1)"
}
# with_uki <disk> <uki>: a fresh copy of the image whose ESP carries <uki> as hexa-a.efi.
with_uki() {
	cp --sparse=always "$out/hexa.img" "$1"
	mcopy -o -i "$1@@$esp_off" "$2" ::/EFI/Linux/hexa-a.efi
}

say "== 2. the UKI signed by another key"
openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 1 -keyout "$work/other.key" -out "$work/other.crt" \
	-subj "/CN=not the hexa signing key/" 2>/dev/null
sbsign --key "$work/other.key" --cert "$work/other.crt" --output "$work/other.efi" "$out/hexa-a.unsigned.efi" 2>/dev/null
sbverify --cert "$out/secureboot-db.crt" "$work/other.efi" >/dev/null 2>&1 && die "sbverify accepts the other key's UKI"
with_uki "$work/other.img" "$work/other.efi"
refused other-key "$work/other.img"

say "== 3. one byte of the signed UKI's command line changed"
cp "$out/hexa-a.efi" "$work/tampered.efi"
cmd_off=$(objdump -h "$out/hexa-a.efi" | awk '$2 == ".cmdline" {print $6}')
hash_at=$(($(printf '%d' "0x$cmd_off") + $(grep -ob 'roothash=' "$out/cmdline" | cut -d: -f1) + 9))
orig=$(dd if="$work/tampered.efi" bs=1 skip="$hash_at" count=1 status=none)
new=0
[ "$orig" = 0 ] && new=1
printf '%s' "$new" | dd of="$work/tampered.efi" bs=1 seek="$hash_at" conv=notrunc status=none
objcopy -O binary --only-section=.cmdline "$work/tampered.efi" "$work/tampered-cmdline"
say "roothash's first digit in the signed UKI: $orig -> $new ($(cut -c1-40 "$work/tampered-cmdline" | tr -d '\n')...)"
sbverify --cert "$out/secureboot-db.crt" "$work/tampered.efi" >/dev/null 2>&1 && die "sbverify accepts the changed UKI"
with_uki "$work/tampered.img" "$work/tampered.efi"
refused changed-byte "$work/tampered.img"

say "== 4. a loader entry passing another command line to the signed UKI"
cp --sparse=always "$out/hexa.img" "$work/override.img"
zeros=$(printf '0%.0s' $(seq 64))
printf 'title override\nefi /EFI/Linux/hexa-a.efi\noptions console=ttyS0 roothash=%s hexa.root=hexa-root-a hexa.verity=hexa-verity-a\n' "$zeros" >"$work/override.conf"
printf 'default override.conf\ntimeout 0\neditor no\n' >"$work/override-loader.conf"
mmd -i "$work/override.img@@$esp_off" ::/loader/entries
mcopy -i "$work/override.img@@$esp_off" "$work/override.conf" ::/loader/entries/override.conf
mcopy -o -i "$work/override.img@@$esp_off" "$work/override-loader.conf" ::/loader/loader.conf
boot "$work/override.img" "$work/override.log"
wait_for "$work/override.log" 'Kernel command line:' "$ready_timeout" || { tail -n 30 "$work/override.log"; die "override: the kernel did not start"; }
stop
got=$(kernel_cmdline "$work/override.log")
[ "$got" = "$(cat "$out/cmdline")" ] || die "override: the kernel got [$got], not the UKI's command line"
grep -aq "roothash=$zeros" "$work/override.log" && die "override: the passed command line reached the kernel"
say "override: the entry's options were ignored; the kernel got the UKI's own command line"
# Control: the same disk without Secure Boot (OVMF_CODE_4M.fd, no keys). The stub then
# takes the entry's options, which shows that step 4 booted the override entry.
fw_code=/usr/share/OVMF/OVMF_CODE_4M.fd fw_vars="$vars_template"
boot "$work/override.img" "$work/control.log"
wait_for "$work/control.log" 'Kernel command line:' "$ready_timeout" || { tail -n 30 "$work/control.log"; die "control: the kernel did not start"; }
stop
grep -aq 'Secure boot enabled' "$work/control.log" && die "control: Secure Boot is on in the control boot"
got=$(kernel_cmdline "$work/control.log")
case "$got" in
*"roothash=$zeros"*) say "control: without Secure Boot the same entry does replace the command line ([${got:0:40}...])" ;;
*) die "control: without Secure Boot the entry's options did not reach the kernel ([$got]): step 4 proves nothing" ;;
esac

say "PASS: Secure Boot enforcing with the image's db certificate: signed image boots (ready ${ready_secs} s), other key and changed byte refused, command line not overridable; $(($(date +%s) - t_start)) s in all"
