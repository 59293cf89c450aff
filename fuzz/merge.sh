#!/usr/bin/env bash
# Folds what the fuzzers found (target/corpus/<target>/, ignored by git) into the tracked
# seeds (corpus/<target>/), keeping only inputs that reach edges the seeds do not: libFuzzer's
# set-cover merge on edge coverage alone (-use_counters=0), which keeps the tracked corpora
# small (hundreds of files, not thousands). Run it after a long `fuzz/run.sh` and commit
# corpus/.   Usage: fuzz/merge.sh [PROJECT_DIR...]   (default: cdi/fuzz and fuzz)
set -euo pipefail
cd "$(dirname "$0")/.."
projects=("$@")
[ "${#projects[@]}" -gt 0 ] || projects=(cdi/fuzz fuzz)
export RUSTC_BOOTSTRAP=1
top=$PWD
for project in "${projects[@]}"; do
  cd "$top/$project"
  for target in $(cargo fuzz list); do
    [ -d "target/corpus/$target" ] || continue
    before=$(find "corpus/$target" -type f | wc -l)
    cargo fuzz run "$target" "corpus/$target" "target/corpus/$target" -- \
      -set_cover_merge=1 -use_counters=0 >"target/merge-$target.log" 2>&1
    echo "merge: $project/$target: $before -> $(find "corpus/$target" -type f | wc -l) seeds"
  done
done
