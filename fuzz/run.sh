#!/usr/bin/env bash
# Runs every cargo-fuzz target of the given fuzz projects (default: cdi/fuzz and fuzz) for
# SECONDS seconds each (default 20) and fails if any of them finds a crash.
# Usage: fuzz/run.sh [SECONDS [PROJECT_DIR...]]   (or: make fuzz)
#
# cargo-fuzz passes -Z flags (sanitizers, coverage passes) to rustc; RUSTC_BOOTSTRAP=1 lets
# the stable toolchain accept them, so no nightly toolchain is needed.
#
# Seeds in corpus/<target>/ are tracked in git and only read; what libFuzzer finds goes to
# target/corpus/<target>/ (ignored), and crashing inputs to artifacts/<target>/ (ignored).
set -euo pipefail

seconds=${1:-20}
if ! [[ $seconds =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: $0 [SECONDS]" >&2
  exit 2
fi
shift || true
cd "$(dirname "$0")/.."
projects=("$@")
[ "${#projects[@]}" -gt 0 ] || projects=(cdi/fuzz fuzz)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing; installing it first with cargo install cargo-fuzz --locked" \
       "(a build of several minutes, about 8 on a 2-core machine, done once)" >&2
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1

declare -A extra=([spec_parse]="-dict=spec.dict")
failed=()
top=$PWD
for project in "${projects[@]}"; do
cd "$top/$project"
for target in $(cargo fuzz list); do
  mkdir -p "target/corpus/$target"
  log="target/fuzz-$target.log"
  echo "fuzz: $target for ${seconds}s (log: $project/$log)"
  # shellcheck disable=SC2086 # extra flags are words on purpose
  if cargo fuzz run "$target" "target/corpus/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
      ${extra[$target]:-} >"$log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
    added=$(sed -n 's/^stat::new_units_added: *//p' "$log")
    echo "fuzz: $target ok: ${runs:-?} runs, ${rate:-?} exec/s, ${added:-?} new corpus units"
  else
    echo "fuzz: $target FAILED; last lines of $project/$log:" >&2
    tail -n 40 "$log" >&2
    failed+=("$project/$target")
  fi
done
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "fuzz: crashes in: ${failed[*]} (inputs under <project>/artifacts/)" >&2
  exit 1
fi
echo "fuzz: all targets ran ${seconds}s without a crash"
