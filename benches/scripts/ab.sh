#!/usr/bin/env bash
# One hexa-load run against a fresh data directory, with the server's CPU per request.
#
#   benches/scripts/ab.sh HEXA_BINARY SCENARIO [CLIENTS] [DURATION]
#
# SCENARIO: read | search | create | transaction | update. Uses target/release/hexa-load (or
# $HEXA_LOAD). Prints hexa-load's throughput and latency line, then the number of HTTP
# requests the server counted (hexa_http_requests_total), the kilobytes it wrote per
# request (/proc/<pid>/io write_bytes) and its user+system CPU per request
# (/proc/<pid>/stat) and the requests per group commit (hexa_store_commits_total). Alternate two binaries a few times to compare them on a shared
# machine: single runs move by +-20 % here.
set -euo pipefail
BIN=$1 SC=$2 CL=${3:-64} DUR=${4:-8}
LOAD=${HEXA_LOAD:-target/release/hexa-load}
D=$(mktemp -d /tmp/hexa-ab.XXXX)
port=$((18500 + RANDOM % 1000))
"$BIN" --data-dir "$D/data" init --listen 127.0.0.1:$port >/dev/null
"$LOAD" --gen-key "$D/load.jwk" >/dev/null
"$BIN" --data-dir "$D/data" client add --id hexa-load --facility demo-facility \
    --jwks "$D/load.jwks.json" --scopes "system/*.cruds" >/dev/null 2>&1
sed -i 's/^client_rate_per_sec = .*/client_rate_per_sec = 0/' "$D/data/hexa.toml"
RUST_LOG=warn "$BIN" --data-dir "$D/data" serve >"$D/serve.log" 2>&1 &
spid=$!
trap 'kill $spid 2>/dev/null; wait $spid 2>/dev/null; rm -rf "$D"' EXIT
for _ in $(seq 100); do curl -fs http://127.0.0.1:$port/readyz >/dev/null && break; sleep 0.1; done
requests() { curl -s http://127.0.0.1:$port/metrics | awk '/^hexa_http_requests_total/{s+=$2} END{print s}'; }
commits() { curl -s http://127.0.0.1:$port/metrics | awk '/^hexa_store_commits_total/{print $2}'; }
w0=$(awk '/^write_bytes/{print $2}' /proc/$spid/io); c0=$(awk '{print $14+$15}' /proc/$spid/stat); r0=$(requests); k0=$(commits)
"$LOAD" --url http://127.0.0.1:$port --key "$D/load.jwk" --clients "$CL" --duration "$DUR" \
    --warmup 1 --scenario "$SC" --population 500 2>&1 | grep -E "throughput|latency" | tr '\n' ' '
w1=$(awk '/^write_bytes/{print $2}' /proc/$spid/io); c1=$(awk '{print $14+$15}' /proc/$spid/stat); r1=$(requests); k1=$(commits)
n=$((r1 - r0)); tick=$(getconf CLK_TCK)
echo
echo "requests $n  write KB/req $(((w1 - w0) / 1024 / n))  cpu us/req $(((c1 - c0) * 1000000 / tick / n))  requests/commit $((n / (k1 - k0 > 0 ? k1 - k0 : 1)))"
