#!/usr/bin/env bash
# Runs pkgstream's whole test suite on this machine: installs what it needs,
# builds everything once, starts the real services (scripts/services.sh),
# runs every test of the workspace, and stops the services it started.
# This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/bootstrap.sh

echo "[test] building (binaries and test targets)" >&2
cargo build --workspace --bins --locked
cargo test --workspace --no-run --locked

started=()
stop_started() {
  for s in "${started[@]}"; do bash scripts/services.sh stop "$s" || true; done
}
trap stop_started EXIT
for s in kafka opensearch prometheus; do
  if ! bash scripts/services.sh status "$s" 2>/dev/null; then
    bash scripts/services.sh start "$s"
    started+=("$s")
  fi
done

echo "[test] running the suite" >&2
cargo test --workspace --locked --no-fail-fast
