#!/usr/bin/env bash
# Records and flushes one inventory snapshot of N packages (default 25,000)
# with the release `pkgstream-emit` against the Kafka on $BROKERS, and
# prints record time, flush time, chunks and bytes on the raw topic.
#   cargo build --release -p pkgstream-producer
#   bash benches/snapshot_chunks.sh [N]
set -euo pipefail
N=${1:-25000}
BROKERS=${BROKERS:-127.0.0.1:9092}
EMIT=${EMIT:-target/release/pkgstream-emit}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
printf '0123456789abcdef0123456789abcdef\n' >"$dir/machine-id"
printf 'bench-host\n' >"$dir/hostname"
printf 'ID="rocky"\nVERSION_ID="9.4"\n' >"$dir/os-release"
topic="bench-chunks-$(date +%s%N)"
python3 - "$N" >"$dir/line.json" <<'PY'
import json, sys
n = int(sys.argv[1])
pk = [{"name": f"pkg-{i:05}-libs", "version": "1.2.3", "release": "4.el9", "arch": "x86_64",
       "repo": "baseos", "vendor": "Rocky Enterprise Software Foundation",
       "buildtime": 1700000000 + i, "install_time": 1710000000 + i, "size": 100000 + i,
       "digest": "sha256:%064x" % i} for i in range(n)]
print(json.dumps({"kind": "inventory", "packages": pk}))
PY
export PKGSTREAM_EMIT__KAFKA__BROKERS=$BROKERS PKGSTREAM_EMIT__SPOOL__DIR=$dir/spool \
  PKGSTREAM_EMIT__TOPICS__INVENTORY_RAW=$topic PKGSTREAM_EMIT__TOPICS__CHANGES_RAW=$topic-changes \
  PKGSTREAM_EMIT__HOST__MACHINE_ID_FILE=$dir/machine-id PKGSTREAM_EMIT__HOST__HOSTNAME_FILE=$dir/hostname \
  PKGSTREAM_EMIT__HOST__OS_RELEASE_FILE=$dir/os-release RUST_LOG=warn
t0=$(date +%s%N); "$EMIT" record <"$dir/line.json"; t1=$(date +%s%N)
bytes=$(du -b "$dir"/spool/inventory/*.seg | awk '{s+=$1} END {print s}')
t2=$(date +%s%N); RUST_LOG=info "$EMIT" flush 2>"$dir/flush.log"; t3=$(date +%s%N)
records=$(grep -o 'snapshots=[0-9]*' "$dir/flush.log" | tail -1 | cut -d= -f2)
echo "packages=$N json_bytes=$(stat -c %s "$dir/line.json") spool_bytes=$bytes records=$records record_ms=$(( (t1-t0)/1000000 )) flush_ms=$(( (t3-t2)/1000000 )) topic=$topic"
