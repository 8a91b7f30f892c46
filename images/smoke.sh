#!/usr/bin/env bash
# The appliance image smoke test (run as root by .ci/image-smoke after images/build.sh):
#  1. static gates: systemd-analyze security of the unit (threshold 1.5), `nft -c` of the
#     ruleset inside the image root (rootless: unshare -rn), veritysetup verify of the root;
#  2. boots a copy of the image, seeded with a site config (with an NTP server) and a client
#     key made here, and enlarged by 1 GiB, under qemu (TCG) with a forwarded port; waits for
#     /readyz through it; gets a token, creates and reads a Patient; reads the in-guest
#     self-test from the serial console (hexa-data grown to the disk, timesyncd synchronised
#     with the site's NTP server, smoke_ntp.py on the host's 127.0.0.1:123, ...);
#  3. negative: one flipped byte in the root partition, and the boot must refuse it.
# Prints the image size and boot-to-ready time. Every wait is bounded.
#   images/smoke.sh            (uses $HEXA_IMAGE_OUT, default $CARGO_TARGET_DIR/image)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
target="${CARGO_TARGET_DIR:-$here/../target}"
out="${HEXA_IMAGE_OUT:-$target/image}"
ready_timeout="${HEXA_SMOKE_READY_TIMEOUT:-420}"
selftest_timeout="${HEXA_SMOKE_SELFTEST_TIMEOUT:-240}"
refuse_timeout="${HEXA_SMOKE_REFUSE_TIMEOUT:-300}"
say() { echo "smoke: $*"; }
die() { echo "smoke: FAIL: $*" >&2; exit 1; }
work=$(mktemp -d /var/tmp/hexa-smoke.XXXXXX)
qpid="" ntppid=""
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then kill "$qpid"; wait "$qpid" 2>/dev/null || true; fi
	if [ -n "$ntppid" ] && kill -0 "$ntppid" 2>/dev/null; then kill "$ntppid"; wait "$ntppid" 2>/dev/null || true; fi
	rm -rf "$work"
}
trap cleanup EXIT
for f in hexa.img vmlinuz initrd.img cmdline roothash root.sqfs root.verity root.start; do
	[ -e "$out/$f" ] || die "$out/$f missing: run images/build.sh first"
done

say "== static gates"
systemd-analyze security --offline=yes --threshold=15 "$here/hexa.service" | tail -n1
systemd-analyze security --offline=yes --threshold=15 "$here/hexa-ntp-site.service" | tail -n1
# timesyncd needs the clock and the network; its exposure with the appliance's drop-in:
systemd-analyze security --offline=yes --root="$out/root" --threshold=25 systemd-timesyncd.service | tail -n1
unshare -rn --root="$out/root" nft -c -f /etc/nftables.conf || die "nft -c rejects the image's ruleset"
say "nft -c -f /etc/nftables.conf in the image root (unshare -rn): ok"
veritysetup verify "$out/root.sqfs" "$out/root.verity" "$(cat "$out/roothash")" || die "veritysetup verify"
say "veritysetup verify of the root against its root hash: ok"
img_bytes=$(stat -c %s "$out/hexa.img")
img_alloc=$(du -k "$out/hexa.img" | cut -f1)
xz_bytes=$(xz -T1 -1 -c "$out/hexa.img" | wc -c)
say "image: $((img_bytes / 1048576)) MiB disk, $((img_alloc / 1024)) MiB allocated, $((xz_bytes / 1048576)) MiB xz -1; root squashfs $(($(stat -c %s "$out/root.sqfs") / 1048576)) MiB"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# boot <disk> <console-log> <port>: starts qemu in the background, sets qpid.
boot() {
	qemu-system-x86_64 -accel tcg -machine q35 -cpu max -m 1024 -smp 2 \
		-display none -monitor none -serial "file:$2" -no-reboot \
		-kernel "$out/vmlinuz" -initrd "$out/initrd.img" -append "$(cat "$out/cmdline")" \
		-drive "file=$1,format=raw,if=virtio" \
		-netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$3-:8080" -device virtio-net-pci,netdev=n0 \
		-device virtio-rng-pci >"$work/qemu.log" 2>&1 &
	qpid=$!
}
stop() {
	if [ -n "$qpid" ]; then kill "$qpid" 2>/dev/null || true; wait "$qpid" 2>/dev/null || true; fi
	qpid=""
}

say "== boot"
site="$work/site"
mkdir -p "$site/clients/smoke-emr"
python3 "$here/smoke_client.py" keygen "$work"
cp "$work/jwks.json" "$site/clients/smoke-emr/jwks.json"
echo "system/Patient.cruds system/Observation.cruds" >"$site/clients/smoke-emr/scopes"
# The guest listens on 8080 behind qemu's forwarded port: the site names the URL the host
# reaches it at, as a hospital behind NAT would.
port=$(free_port)
cat >"$site/site.env" <<SITE
HEXA_FACILITY_ID=rw-dh-smoke
HEXA_FACILITY_NAME=Smoke Test District Hospital
HEXA_LISTEN=0.0.0.0:8080
HEXA_PUBLIC_BASE_URL=http://127.0.0.1:$port
HEXA_NTP=10.0.2.2
SITE
disk="$work/disk.img"
cp --sparse=always "$out/hexa.img" "$disk"
"$here/site-seed.sh" "$disk" "$site"
# A bigger disk than the image: first boot must grow hexa-data to its end.
truncate -s +1G "$disk"
say "disk copy enlarged by 1 GiB to $(($(stat -c %s "$disk") / 1048576)) MiB (hexa-data is $(($(stat -c %s "$out/hexa.img") / 1048576 - $(cat "$out/data.start") / 2048)) MiB in the image)"
# The site's NTP server: smoke_ntp.py on the host's 127.0.0.1:123, which qemu's user
# networking shows the guest as 10.0.2.2:123 (no NTP packet leaves the machine).
python3 "$here/smoke_ntp.py" --seconds $((ready_timeout + selftest_timeout + 120)) >"$work/ntp.log" 2>&1 &
ntppid=$!
sleep 1
kill -0 "$ntppid" 2>/dev/null || { cat "$work/ntp.log"; die "the test NTP server could not start (UDP 127.0.0.1:123 taken?)"; }
t0=$(date +%s.%N)
boot "$disk" "$work/console.log" "$port"
base="http://127.0.0.1:$port"
deadline=$(($(date +%s) + ready_timeout))
until curl -fsS -m 5 "$base/readyz" >/dev/null 2>&1; do
	kill -0 "$qpid" 2>/dev/null || { tail -n 40 "$work/console.log"; die "qemu exited before /readyz answered"; }
	[ "$(date +%s)" -lt "$deadline" ] || { tail -n 60 "$work/console.log"; die "/readyz did not answer within ${ready_timeout}s"; }
	sleep 1
done
t1=$(date +%s.%N)
ready_secs=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
say "GET /readyz through the forwarded port: 200 after ${ready_secs} s (TCG boot to ready)"
python3 "$here/smoke_client.py" exercise "$base" "$work" || { tail -n 40 "$work/console.log"; die "API exercise"; }
deadline=$(($(date +%s) + selftest_timeout))
until grep -aq '^HEXA-SELFTEST-RESULT:' "$work/console.log"; do
	[ "$(date +%s)" -lt "$deadline" ] || { tail -n 60 "$work/console.log"; die "no self-test report within ${selftest_timeout}s"; }
	sleep 1
done
grep -a '^HEXA-SELFTEST' "$work/console.log" | tr -d '\r' | sed 's/^/  guest: /'
grep -aq '^HEXA-SELFTEST-RESULT: PASS' "$work/console.log" || die "in-guest self-test failed"
grep -aq '^HEXA-BOOT: site seed read' "$work/console.log" || die "the site seed was not read"
grep -aq '^HEXA-BOOT: first boot: hexa-data grown to the end of the disk' "$work/console.log" || die "hexa-data was not grown"
var_mib=$(grep -a '^HEXA-SELFTEST: data-fills-disk PASS' "$work/console.log" | sed -n 's/.*var_mib=\([0-9]*\).*/\1/p')
{ [ -n "$var_mib" ] && [ "$var_mib" -gt 1024 ]; } || die "/var is ${var_mib:-?} MiB: not grown past the 1 GiB added"
say "/var grew to $var_mib MiB on the enlarged disk"
grep -aq '^HEXA-SELFTEST: timesyncd-active PASS site=\[10.0.2.2\] synchronized=yes timesyncd=\[.*10.0.2.2' "$work/console.log" ||
	die "timesyncd did not synchronise with the site's NTP server"
kill "$ntppid" 2>/dev/null || true
wait "$ntppid" 2>/dev/null || true
ntppid=""
say "timesyncd synchronised with the site's NTP server ($(tail -n1 "$work/ntp.log" | sed 's/^smoke_ntp: //'))"
stop

say "== negative: one flipped byte in the root partition"
bad="$work/bad.img"
cp --sparse=always "$out/hexa.img" "$bad"
rootsize=$(stat -c %s "$out/root.sqfs")
offset=$(($(cat "$out/root.start") * 512 + rootsize / 2))
orig=$(dd if="$bad" bs=1 skip="$offset" count=1 status=none | od -An -tu1 | tr -d ' ')
printf "$(printf '\\%03o' $((orig ^ 0x01)))" | dd of="$bad" bs=1 seek="$offset" conv=notrunc status=none
say "byte at offset $offset of the disk (the middle of the root) flipped: $orig -> $((orig ^ 1))"
port=$(free_port)
boot "$bad" "$work/bad-console.log" "$port"
deadline=$(($(date +%s) + refuse_timeout))
while kill -0 "$qpid" 2>/dev/null; do
	[ "$(date +%s)" -lt "$deadline" ] || { tail -n 40 "$work/bad-console.log"; die "the corrupted image neither refused nor stopped within ${refuse_timeout}s"; }
	curl -fsS -m 2 "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && die "the corrupted image booted and served"
	sleep 1
done
wait "$qpid" 2>/dev/null || true
qpid=""
grep -a '^HEXA-BOOT: FAILED' "$work/bad-console.log" | tr -d '\r' | sed 's/^/  guest: /'
grep -aq '^HEXA-BOOT: FAILED: dm-verity' "$work/bad-console.log" || { tail -n 30 "$work/bad-console.log"; die "no dm-verity refusal on the console"; }
say "the corrupted root was refused and the machine powered off"
say "PASS: image $((img_bytes / 1048576)) MiB ($((xz_bytes / 1048576)) MiB xz), boot to ready ${ready_secs} s under TCG; ${SECONDS} s in all"
