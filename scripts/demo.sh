#!/usr/bin/env bash
# The main job on local defaults. Today (the foundation): bring up a real
# Kafka, record the sample hook events of config/sample-events.ndjson with
# pkgstream-emit (as a dnf/rpm hook would), ship them with `flush`, and read
# them back from the topics, decoded. Kafka keeps running afterwards
# (scripts/services.sh stop kafka stops it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
echo "[demo] building pkgstream-emit and pkgstream" >&2
cargo build --workspace --bins --locked
bash scripts/services.sh start kafka

home="${PKGSTREAM_HOME:-$HOME/.cache/pkgstream}/demo"
mkdir -p "$home/etc"
# A demo host identity, so the demo needs nothing from /etc.
[[ -s "$home/etc/machine-id" ]] || python3 -c 'import uuid; print(uuid.uuid4().hex)' >"$home/etc/machine-id"
echo "demo-host.example.com" >"$home/etc/hostname"
printf 'ID="rocky"\nVERSION_ID="9.4"\n' >"$home/etc/os-release"

run_id="demo-$(date +%Y%m%d-%H%M%S)"
export PKGSTREAM__KAFKA__BROKERS="${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export PKGSTREAM__SPOOL__DIR="$home/spool"
export PKGSTREAM__TOPICS__CHANGES_RAW="$run_id.changes.raw"
export PKGSTREAM__TOPICS__INVENTORY_RAW="$run_id.inventory.raw"
export PKGSTREAM__HOST__MACHINE_ID_FILE="$home/etc/machine-id"
export PKGSTREAM__HOST__HOSTNAME_FILE="$home/etc/hostname"
export PKGSTREAM__HOST__OS_RELEASE_FILE="$home/etc/os-release"
emit=target/debug/pkgstream-emit
pkgstream=target/debug/pkgstream

echo
echo "== 1. a hook records 3 package changes and 1 inventory snapshot into the host spool ($PKGSTREAM__SPOOL__DIR)"
"$emit" record <config/sample-events.ndjson
"$emit" status
echo
echo "== 2. flush ships the spool to Kafka at $PKGSTREAM__KAFKA__BROKERS and removes what Kafka acknowledged"
"$emit" flush
"$emit" status
echo
echo "== 3. read back from $PKGSTREAM__TOPICS__CHANGES_RAW (Avro single-object encoded, decoded here)"
"$pkgstream" tail --brokers "$PKGSTREAM__KAFKA__BROKERS" --topic "$PKGSTREAM__TOPICS__CHANGES_RAW" --from-beginning --max 3 --idle-secs 10
echo
echo "== 4. read back from $PKGSTREAM__TOPICS__INVENTORY_RAW"
"$pkgstream" tail --brokers "$PKGSTREAM__KAFKA__BROKERS" --topic "$PKGSTREAM__TOPICS__INVENTORY_RAW" --from-beginning --max 1 --idle-secs 10
echo
cat <<EOT
== where to look
  Kafka:   $PKGSTREAM__KAFKA__BROKERS (log: ${PKGSTREAM_HOME:-$HOME/.cache/pkgstream}/run/kafka/kafka.log)
  Spool:   $PKGSTREAM__SPOOL__DIR
  Again:   $pkgstream tail --topic $PKGSTREAM__TOPICS__CHANGES_RAW --from-beginning --idle-secs 3
  Stop:    scripts/services.sh stop kafka
EOT
