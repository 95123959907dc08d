#!/usr/bin/env bash
# Runs pkgstream's whole test suite on this machine: installs what it needs,
# checks formatting and lints, builds everything once, runs the fast tier
# (unit, property and schema tests of every crate, no services), then starts
# the real services (scripts/services.sh), runs the service tier (the
# pkgstream-tests crate; the search sink's suite again against
# Elasticsearch 7.10), and stops the services it started.
# This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh

echo "[test] formatting (cargo fmt --check)" >&2
cargo fmt --all --check

echo "[test] lints (cargo clippy --all-targets -D warnings)" >&2
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "[test] building (binaries and test targets)" >&2
cargo build --workspace --bins --locked
cargo test --workspace --no-run --locked

rc=0
echo "[test] fast tier: unit, property and schema tests (no services)" >&2
cargo test --workspace --exclude pkgstream-tests --locked --no-fail-fast || rc=$?

# The Helm chart, offline (helm lint/template, kubernetes-validate, promtool,
# pkgstream config check on the rendered ConfigMap): before any service.
echo "[test] the Helm chart (helm/check.sh)" >&2
bash helm/check.sh || rc=$?

started=()
stop_started() {
  for s in "${started[@]}"; do bash scripts/services.sh stop "$s" || true; done
}
trap stop_started EXIT
ensure_running() {
  if ! bash scripts/services.sh status "$1" 2>/dev/null; then
    bash scripts/services.sh start "$1"
    started+=("$1")
  fi
}
# opensearch-secure and prometheus-secure: the TLS + authentication targets of
# tests/tests/engine_security.rs; kafka-secure: the TLS/SASL broker with ACLs
# of tests/tests/kafka_security.rs.
for s in kafka opensearch prometheus opensearch-secure prometheus-secure kafka-secure; do ensure_running "$s"; done

echo "[test] service tier: against the real services" >&2
cargo test -p pkgstream-tests --locked --no-fail-fast || rc=$?

# The search sink suite again, against Elasticsearch 7.10 OSS (the second
# engine the sink supports), started here for it alone.
echo "[test] the search sink suite against Elasticsearch 7.10" >&2
ensure_running elasticsearch
PKGSTREAM_TEST_OPENSEARCH="http://127.0.0.1:${ELASTICSEARCH_PORT:-9201}" \
  cargo test --locked -p pkgstream-tests --test sink_search || rc=$?
exit "$rc"
