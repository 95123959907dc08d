#!/usr/bin/env bash
# The main job on local defaults: bring up a real Kafka, record the sample
# hook events of config/sample-events.ndjson with pkgstream-emit (as a
# dnf/rpm hook would), ship them with `flush`, read them back decoded, then
# run the router over them and show the enriched events. Kafka keeps running
# afterwards (scripts/services.sh stop kafka stops it).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
echo "[demo] building pkgstream-emit and pkgstream" >&2
cargo build --workspace --bins --locked
bash scripts/services.sh start kafka opensearch prometheus

home="${PKGSTREAM_HOME:-$HOME/.cache/pkgstream}/demo"
mkdir -p "$home/etc"
# A demo host identity, so the demo needs nothing from /etc.
[[ -s "$home/etc/machine-id" ]] || python3 -c 'import uuid; print(uuid.uuid4().hex)' >"$home/etc/machine-id"
echo "demo-host.example.com" >"$home/etc/hostname"
printf 'ID="rocky"\nVERSION_ID="9.4"\n' >"$home/etc/os-release"

run_id="demo-$(date +%Y%m%d-%H%M%S)"
# Host side and central side read the same PKGSTREAM__SECTION__KEY
# variables but have different sections; on real machines they never share
# an environment, here each command gets its own.
export PKGSTREAM__KAFKA__BROKERS="${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export PKGSTREAM__TOPICS__CHANGES_RAW="$run_id.changes.raw"
export PKGSTREAM__TOPICS__INVENTORY_RAW="$run_id.inventory.raw"
spool="$home/spool"
emit() {
  PKGSTREAM__SPOOL__DIR="$spool" \
  PKGSTREAM__HOST__MACHINE_ID_FILE="$home/etc/machine-id" \
  PKGSTREAM__HOST__HOSTNAME_FILE="$home/etc/hostname" \
  PKGSTREAM__HOST__OS_RELEASE_FILE="$home/etc/os-release" \
    target/debug/pkgstream-emit "$@"
}
pkgstream=target/debug/pkgstream

echo
echo "== 1. a hook records 3 package changes and 1 inventory snapshot into the host spool ($spool)"
emit record <config/sample-events.ndjson
emit status
echo
echo "== 2. flush ships the spool to Kafka at $PKGSTREAM__KAFKA__BROKERS and removes what Kafka acknowledged"
emit flush
emit status
echo
echo "== 3. read back from $PKGSTREAM__TOPICS__CHANGES_RAW (Avro single-object encoded, decoded here)"
"$pkgstream" tail --brokers "$PKGSTREAM__KAFKA__BROKERS" --topic "$PKGSTREAM__TOPICS__CHANGES_RAW" --from-beginning --max 3 --idle-secs 10
echo
echo "== 4. read back from $PKGSTREAM__TOPICS__INVENTORY_RAW"
"$pkgstream" tail --brokers "$PKGSTREAM__KAFKA__BROKERS" --topic "$PKGSTREAM__TOPICS__INVENTORY_RAW" --from-beginning --max 1 --idle-secs 10
echo
echo "== 5. the router: decode, enrich (config/sample-hosts.csv), deduplicate, produce $run_id.changes.enriched in Kafka transactions"
export PKGSTREAM__TOPICS__CHANGES_ENRICHED="$run_id.changes.enriched"  # (emit is done: these are central-only)
export PKGSTREAM__TOPICS__HOSTS="$run_id.hosts"
export PKGSTREAM__TOPICS__DLQ="$run_id.dlq"
export PKGSTREAM__ROUTER__GROUP_ID="$run_id-router"
export PKGSTREAM__ROUTER__TRANSACTIONAL_ID="$run_id-router-0"
export PKGSTREAM__ROUTER__HOSTS_FILE="$PWD/config/sample-hosts.csv"
export PKGSTREAM__ROUTER__METRICS_LISTEN="127.0.0.1:${PKGSTREAM_DEMO_METRICS_PORT:-9108}"
RUST_LOG=warn "$pkgstream" router &
router_pid=$!
trap 'kill -TERM $router_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  curl -sf "http://$PKGSTREAM__ROUTER__METRICS_LISTEN/readyz" >/dev/null && break
  kill -0 "$router_pid" 2>/dev/null || { echo "[demo] the router exited; see its error above" >&2; exit 1; }
  sleep 0.5
done
"$pkgstream" tail --topic "$PKGSTREAM__TOPICS__CHANGES_ENRICHED" --from-beginning --max 4 --idle-secs 30
echo "   router metrics (http://$PKGSTREAM__ROUTER__METRICS_LISTEN/metrics):"
curl -s "http://$PKGSTREAM__ROUTER__METRICS_LISTEN/metrics" | grep -E '^pkgstream_router_(events_(in|out)_total|dedupe_window_entries)' | sed 's/^/     /' || true
kill -TERM "$router_pid" && wait "$router_pid" && echo "   router stopped cleanly on SIGTERM"
trap - EXIT
echo
echo "== 6. the sinks: $run_id.changes.enriched -> OpenSearch (history, package state, hosts) and -> Prometheus (remote write)"
engine="${OPENSEARCH_URL:-http://127.0.0.1:${OPENSEARCH_PORT:-9200}}"
prom="${PROMETHEUS_URL:-http://127.0.0.1:${PROMETHEUS_PORT:-9090}}"
export PKGSTREAM__SEARCH_SINK__URL="$engine"
export PKGSTREAM__SEARCH_SINK__INDEX_PREFIX="$run_id"
export PKGSTREAM__SEARCH_SINK__GROUP_ID="$run_id-sink-search"
export PKGSTREAM__SEARCH_SINK__METRICS_LISTEN="127.0.0.1:${PKGSTREAM_DEMO_SEARCH_PORT:-9110}"
export PKGSTREAM__METRICS_SINK__REMOTE_WRITE_URL="$prom/api/v1/write"
export PKGSTREAM__METRICS_SINK__GROUP_ID="$run_id-sink-metrics"
export PKGSTREAM__METRICS_SINK__PUSH_INTERVAL_SECS=2
export PKGSTREAM__METRICS_SINK__METRICS_LISTEN="127.0.0.1:${PKGSTREAM_DEMO_FLEET_PORT:-9111}"
RUST_LOG=warn "$pkgstream" sink search &
search_pid=$!
RUST_LOG=warn "$pkgstream" sink metrics &
metrics_pid=$!
trap 'kill -TERM $search_pid $metrics_pid 2>/dev/null || true' EXIT
changes=0
for _ in $(seq 1 120); do
  changes=$(curl -s "$engine/$run_id-changes-*/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))' 2>/dev/null || echo 0)
  [[ "$changes" -ge 3 ]] && break
  kill -0 "$search_pid" 2>/dev/null || { echo "[demo] the search sink exited; see its error above" >&2; exit 1; }
  sleep 0.5
done
curl -s -XPOST "$engine/$run_id-*/_refresh" >/dev/null
echo "   $engine: $changes change documents in $run_id-changes-*; package state ($run_id-packages):"
curl -s "$engine/$run_id-packages/_search?size=5&sort=package.name:asc" | python3 -c '
import json, sys
for h in json.load(sys.stdin)["hits"]["hits"]:
    s = h["_source"]
    print("     %-28s %-12s %-24s %s via %s" % (s["host"]["name"], s["package"]["name"], s["package"]["evr"], s["pkgstream"]["action"], s["pkgstream"]["source"]))'
echo "   host documents ($run_id-hosts):"
curl -s "$engine/$run_id-hosts/_search" | python3 -c '
import json, sys
for h in json.load(sys.stdin)["hits"]["hits"]:
    s = h["_source"]
    print("     %s group=%s last_seen=%s packages=%s drift=%s" % (s["host"]["name"], s["pkgstream"]["hostgroup"], s["last_seen"], s.get("package_count", "-"), s.get("drift_count", "-")))'
sleep 5
echo "   Prometheus ($prom): sum by (action, hostgroup) (pkgstream_fleet_package_changes_total)"
curl -s "$prom/api/v1/query" --data-urlencode 'query=sum by (action, hostgroup) (pkgstream_fleet_package_changes_total)' | python3 -c '
import json, sys
for r in json.load(sys.stdin)["data"]["result"]:
    print("     %-10s %-12s %s" % (r["metric"].get("action"), r["metric"].get("hostgroup"), r["value"][1]))'
kill -TERM "$search_pid" "$metrics_pid" && wait "$search_pid" "$metrics_pid" && echo "   sinks stopped cleanly on SIGTERM"
trap - EXIT
echo
cat <<EOT
== where to look
  Kafka:      $PKGSTREAM__KAFKA__BROKERS (log: ${PKGSTREAM_HOME:-$HOME/.cache/pkgstream}/run/kafka/kafka.log)
  Spool:      $spool
  Again:      $pkgstream tail --topic $PKGSTREAM__TOPICS__CHANGES_ENRICHED --from-beginning --idle-secs 3
  Search:     $engine/$run_id-changes-*/_search?q=package.name:openssl-libs
  Prometheus: $prom/graph?g0.expr=pkgstream_fleet_package_changes_total
  Dashboards: sinks/grafana/pkgstream.json (Grafana), sinks/kibana/pkgstream.ndjson (Kibana / OpenSearch Dashboards saved objects)
  Alerts:     sinks/prometheus/alerts.yml (promtool test rules sinks/prometheus/alerts.test.yml)
  Run:        $pkgstream {router|sink search|sink metrics} --config config/pkgstream.example.toml   (every setting documented there)
  Stop:       scripts/services.sh stop
EOT
