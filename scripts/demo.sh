#!/usr/bin/env bash
# The main job on local defaults: bring up a real Kafka, OpenSearch and
# Prometheus, run the router and both sinks, simulate a fleet (200 hosts ×
# 1,500 packages and a day of changes, written through the producer's own
# spool and flush code), then print a drift report, a host's history, the
# rogue rpm changes, the Prometheus counters, an audit replay, and where to
# look. The services keep running afterwards (scripts/services.sh stop).
#
#   DEMO_HOSTS=1000 scripts/demo.sh     # a bigger fleet (default 200)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh
echo "[demo] building pkgstream-emit and pkgstream" >&2
cargo build --workspace --bins --locked
bash scripts/services.sh start kafka opensearch prometheus

hosts="${DEMO_HOSTS:-200}"
home="${PKGSTREAM_HOME:-$HOME/.cache/pkgstream}/demo"
run_id="demo-$(date +%Y%m%d-%H%M%S)"
mkdir -p "$home/$run_id"
out="$home/$run_id"
engine="${OPENSEARCH_URL:-http://127.0.0.1:${OPENSEARCH_PORT:-9200}}"
prom="${PROMETHEUS_URL:-http://127.0.0.1:${PROMETHEUS_PORT:-9090}}"
pkgstream=target/debug/pkgstream

# One run's topics, consumer groups and index prefix, so runs never mix.
export PKGSTREAM__KAFKA__BROKERS="${KAFKA_BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}"
export PKGSTREAM__TOPICS__CHANGES_RAW="$run_id.changes.raw"
export PKGSTREAM__TOPICS__INVENTORY_RAW="$run_id.inventory.raw"
export PKGSTREAM__TOPICS__CHANGES_ENRICHED="$run_id.changes.enriched"
export PKGSTREAM__TOPICS__HOSTS="$run_id.hosts"
export PKGSTREAM__TOPICS__DLQ="$run_id.dlq"
export PKGSTREAM__ROUTER__GROUP_ID="$run_id-router"
export PKGSTREAM__ROUTER__TRANSACTIONAL_ID="$run_id-router-0"
export PKGSTREAM__ROUTER__METRICS_LISTEN="127.0.0.1:${PKGSTREAM_DEMO_METRICS_PORT:-9108}"
export PKGSTREAM__SEARCH_SINK__URL="$engine"
export PKGSTREAM__SEARCH_SINK__INDEX_PREFIX="$run_id"
export PKGSTREAM__SEARCH_SINK__GROUP_ID="$run_id-sink-search"
export PKGSTREAM__SEARCH_SINK__METRICS_LISTEN="127.0.0.1:${PKGSTREAM_DEMO_SEARCH_PORT:-9110}"
export PKGSTREAM__METRICS_SINK__REMOTE_WRITE_URL="$prom/api/v1/write"
export PKGSTREAM__METRICS_SINK__GROUP_ID="$run_id-sink-metrics"
export PKGSTREAM__METRICS_SINK__PUSH_INTERVAL_SECS=2
export PKGSTREAM__METRICS_SINK__METRICS_LISTEN="127.0.0.1:${PKGSTREAM_DEMO_FLEET_PORT:-9111}"

# One simulated present for both runs of the simulator (same fleet, same events).
at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
echo
echo "== 1. simulate a fleet of $hosts hosts: their metadata (group, environment, maintenance windows) to $run_id.hosts and one inventory snapshot each, through spools and flush"
RUST_LOG="${RUST_LOG:-info,pkgstream_producer=warn}" "$pkgstream" simulate --hosts "$hosts" --at "$at" --no-traffic

echo
echo "== 2. the central side: router ($run_id.changes.raw -> $run_id.changes.enriched), search sink (-> $engine), metrics sink (-> $prom)"
pids=()
stop_all() {
  [[ ${#pids[@]} -gt 0 ]] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  wait "${pids[@]}" 2>/dev/null || true
  pids=()
}
trap stop_all EXIT
# The router first: it reads the hosts topic and creates the enriched topic
# the sinks subscribe to.
start_stage() {
  local log="$out/${1// /-}.log" listen="$2"
  # shellcheck disable=SC2086 # "sink search" is two words on purpose
  RUST_LOG=warn "$pkgstream" $1 2>>"$log" &
  pids+=($!)
  for _ in $(seq 1 240); do
    curl -sf "http://$listen/readyz" >/dev/null && return 0
    kill -0 "${pids[-1]}" 2>/dev/null || break
    sleep 0.5
  done
  echo "[demo] pkgstream $1 did not become ready; the end of $log:" >&2
  tail -n 5 "$log" >&2
  exit 1
}
start_stage router "$PKGSTREAM__ROUTER__METRICS_LISTEN"
start_stage "sink search" "$PKGSTREAM__SEARCH_SINK__METRICS_LISTEN"
start_stage "sink metrics" "$PKGSTREAM__METRICS_SINK__METRICS_LISTEN"
echo "   running (logs in $out)"

echo
echo "== 3. the fleet's last day of changes: a patch wave some hosts miss, kernel updates, removals, a few rogue rpm changes"
RUST_LOG="${RUST_LOG:-info,pkgstream_producer=warn}" "$pkgstream" simulate --hosts "$hosts" --at "$at" --no-snapshots --facts "$out/facts.json"
read -r want_changes want_docs <<<"$(python3 -c '
import json, sys
f = json.load(open(sys.argv[1]))
print(f["changes"], f["package_docs"])' "$out/facts.json")"

echo
echo "== 4. waiting for the sinks: $want_changes change documents and $want_docs package documents expected"
count() { curl -s "$engine/$1/_count" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("count", 0))' 2>/dev/null || echo 0; }
started=$SECONDS
last=-10
while :; do
  curl -s -XPOST "$engine/$run_id-*/_refresh" >/dev/null || true
  changes=$(count "$run_id-changes-*")
  docs=$(count "$run_id-packages")
  done_now=0
  [[ "$changes" -eq "$want_changes" && "$docs" -eq "$want_docs" ]] && done_now=1
  # On a terminal one line redrawn; in a log a line every 10 s.
  if [[ -t 1 ]]; then
    printf '\r   %4ss: %s/%s changes, %s/%s package documents   ' "$((SECONDS - started))" "$changes" "$want_changes" "$docs" "$want_docs"
  elif ((done_now || SECONDS - last >= 10)); then
    printf '   %4ss: %s/%s changes, %s/%s package documents\n' "$((SECONDS - started))" "$changes" "$want_changes" "$docs" "$want_docs"
    last=$SECONDS
  fi
  ((done_now)) && break
  if ((SECONDS - started > 900)); then echo; echo "[demo] the sinks did not catch up within 15 minutes; logs in $out" >&2; exit 1; fi
  sleep 2
done
[[ -t 1 ]] && echo

echo
echo "== 5. pkgstream drift --package openssl-libs --package glibc  (the patch wave's laggards; all pairs: pkgstream drift)"
"$pkgstream" drift --package openssl-libs --package glibc | head -40
echo "   ..."
"$pkgstream" drift --format json | python3 -c '
import json, sys
r = json.load(sys.stdin)
print("   whole fleet: %d of %d (group, package) pairs drifted, %d host(s) with a stale snapshot, %d contradicted" % (len(r["drift"]), r["checked"], r["stale_count"], r["contradicted_count"]))'

host=$(python3 -c '
import json, sys
f = json.load(open(sys.argv[1]))
print(f["rogue"][0]["host"] if f.get("rogue") else "")' "$out/facts.json" 2>/dev/null || true)
if [[ -n "$host" ]]; then
  echo
  echo "== 6. pkgstream history $host --since 3d  (a host with a rogue change: who, how, from which repo)"
  "$pkgstream" history "$host" --since 3d | head -20
fi

echo
echo "== 7. pkgstream changes --since 3d --source rpm  (plain rpm changes no dnf transaction explains)"
"$pkgstream" changes --since 3d --source rpm | head -20

echo
echo "== 8. Prometheus ($prom): sum by (action, hostgroup) (pkgstream_fleet_package_changes_total)"
sleep 5
curl -s "$prom/api/v1/query" --data-urlencode 'query=sum by (action, hostgroup) (pkgstream_fleet_package_changes_total)' | python3 -c '
import json, sys
rows = sorted((r["metric"].get("hostgroup", ""), r["metric"].get("action", ""), r["value"][1]) for r in json.load(sys.stdin)["data"]["result"])
for g, a, v in rows:
    print("     %-10s %-10s %s" % (g, a, v))'

echo
echo "== 9. pkgstream replay --from 1h --format avro: the audit trail of this run, exactly as reported"
"$pkgstream" replay --from 1h --format avro --out "$out/audit.avro"
ls -l "$out/audit.avro" | awk '{print "   " $5 " bytes in " $9}'

stop_all
trap - EXIT
echo "   router and sinks stopped on SIGTERM"
echo
cat <<EOT
== where to look
  Search engine: $engine/$run_id-changes-*/_search?q=package.name:openssl-libs   (history; also $run_id-packages, $run_id-hosts)
  Prometheus:    $prom/graph?g0.expr=pkgstream_fleet_watched_package_hosts
  Dashboards:    sinks/grafana/pkgstream.json (Grafana), sinks/kibana/pkgstream.ndjson (Kibana / OpenSearch Dashboards)
  Alerts:        sinks/prometheus/alerts.yml (promtool test rules sinks/prometheus/alerts.test.yml)
  Expected:      $out/facts.json (what the simulator says the pipeline must show)
  Same env:      export PKGSTREAM__SEARCH_SINK__INDEX_PREFIX=$run_id PKGSTREAM__TOPICS__CHANGES_ENRICHED=$run_id.changes.enriched
                 then: $pkgstream drift --group web | history HOST | changes --since 1d --outside-window | replay --from 1h
  Run for real:  $pkgstream {router|sink search|sink metrics} --config config/pkgstream.example.toml   (every setting documented there)
  Stop:          scripts/services.sh stop
EOT
