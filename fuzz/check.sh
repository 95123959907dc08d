#!/usr/bin/env bash
# Fast fuzz check (no fuzzing): builds every cargo-fuzz target and runs each
# once over its committed seed corpus (fuzz/seeds/<target>/) and its
# regression inputs (fuzz/regressions/<target>/, crashes found earlier).
# Fails when a target does not build or any of those inputs crashes it.
#
# Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz --locked
# Usage: fuzz/check.sh [target...]   (default: every target)
set -euo pipefail

cd "$(dirname "$0")/.."
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
mapfile -t ALL < <(cargo "+$TOOLCHAIN" fuzz list)
TARGETS=("${@:-${ALL[@]}}")

start=$(date +%s)
# As in the fuzzing runs: debug assertions on (-a), so overflows panic; no
# sanitizer (-s none): librdkafka's configure cannot link the ASan-built
# zstd that the cc crate produces, and the code under test is safe Rust
# (bounds and overflow checks catch what ASan would).
if [ $# -eq 0 ]; then
  cargo "+$TOOLCHAIN" fuzz build -a -s none
else
  for t in "${TARGETS[@]}"; do cargo "+$TOOLCHAIN" fuzz build -a -s none "$t"; done
fi
built=$(date +%s)

failed=()
for t in "${TARGETS[@]}"; do
  dirs=()
  for d in "fuzz/seeds/$t" "fuzz/regressions/$t"; do
    if [ -d "$d" ] && [ -n "$(ls -A "$d")" ]; then dirs+=("$d"); fi
  done
  if [ ${#dirs[@]} -eq 0 ]; then
    echo "fuzz/check.sh: $t has no seeds and no regressions" >&2
    failed+=("$t")
    continue
  fi
  n=$(find "${dirs[@]}" -type f | wc -l)
  # -runs=0: run every input once, mutate nothing. Inputs are read-only
  # here: libFuzzer writes nothing into a directory when -runs=0.
  if cargo "+$TOOLCHAIN" fuzz run -a -s none "$t" "${dirs[@]}" -- -runs=0 >"/tmp/fuzz-check-$t.log" 2>&1; then
    echo "ok   $t: $n inputs"
  else
    echo "FAIL $t: see /tmp/fuzz-check-$t.log" >&2
    tail -n 30 "/tmp/fuzz-check-$t.log" >&2
    failed+=("$t")
  fi
done
end=$(date +%s)
echo "fuzz/check.sh: build $((built - start)) s, replay $((end - built)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz/check.sh: failed: ${failed[*]}" >&2
  exit 1
fi
echo "${#TARGETS[@]} passed, 0 failed"
