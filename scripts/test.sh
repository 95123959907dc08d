#!/usr/bin/env bash
# Runs pkgstream's whole test suite on this machine: installs what it needs,
# builds everything once, starts the real services (scripts/services.sh),
# runs every test of the workspace (the search sink's again against
# Elasticsearch 7.10), and stops the services it started.
# This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh

echo "[test] formatting (cargo fmt --check)" >&2
cargo fmt --all --check

echo "[test] building (binaries and test targets)" >&2
cargo build --workspace --bins --locked
cargo test --workspace --no-run --locked

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
# kafka-secure: the TLS/SASL broker with ACLs of tests/tests/kafka_security.rs
for s in kafka opensearch prometheus kafka-secure; do ensure_running "$s"; done

echo "[test] running the suite" >&2
rc=0
cargo test --workspace --locked --no-fail-fast || rc=$?

# The search sink suite again, against Elasticsearch 7.10 OSS (the second
# engine the sink supports), started here for it alone.
echo "[test] the search sink suite against Elasticsearch 7.10" >&2
ensure_running elasticsearch
PKGSTREAM_TEST_OPENSEARCH="http://127.0.0.1:${ELASTICSEARCH_PORT:-9201}" \
  cargo test --locked -p pkgstream-tests --test sink_search || rc=$?
exit "$rc"
