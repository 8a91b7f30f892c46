#!/usr/bin/env bash
# Writes a site's first-boot configuration into an appliance disk (image file or device)
# before its first boot: a tar archive of <site-dir>/site.env and <site-dir>/clients/ at the
# start of the hexa-data partition, which the initramfs reads before formatting it.
#   images/site-seed.sh <disk> <site-dir>
# site.env: HEXA_FACILITY_ID=..., HEXA_FACILITY_NAME=..., HEXA_LISTEN=0.0.0.0:8080
# clients/<id>/jwks.json, clients/<id>/scopes[, clients/<id>/facility]
set -euo pipefail
disk="$1" site="$2"
[ -f "$site/site.env" ] || { echo "no $site/site.env" >&2; exit 1; }
grep -q '^HEXA_FACILITY_ID=' "$site/site.env" || { echo "$site/site.env sets no HEXA_FACILITY_ID" >&2; exit 1; }
start=$(sfdisk --json "$disk" | python3 -c '
import json, sys
for p in json.load(sys.stdin)["partitiontable"]["partitions"]:
    if p.get("name") == "hexa-data":
        print(p["start"], p["size"])
')
[ -n "$start" ] || { echo "$disk has no hexa-data partition" >&2; exit 1; }
set -- $start
tarball=$(mktemp)
trap 'rm -f "$tarball"' EXIT
members=(site.env)
[ -d "$site/clients" ] && members+=(clients)
tar -C "$site" --owner=0 --group=0 --numeric-owner --format=ustar -cf "$tarball" "${members[@]}"
size=$(stat -c %s "$tarball")
[ "$size" -le 1048576 ] || { echo "site seed is $size bytes; at most 1 MiB" >&2; exit 1; }
# Zero the start of the partition first (a disk used before may carry a filesystem there).
dd if=/dev/zero of="$disk" bs=512 seek="$1" count=4096 conv=notrunc status=none
dd if="$tarball" of="$disk" bs=512 seek="$1" conv=notrunc status=none
echo "site seed ($size bytes) written to hexa-data of $disk"
