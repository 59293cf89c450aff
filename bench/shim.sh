#!/usr/bin/env bash
# The proxy shim's per-call figures, each against runc's shim measured in the same run,
# through a private containerd 1.6, or the release BENCH_CONTAINERD names (set-up in
# bench/lib.sh). Needs root and `make deps`.
#
#   bash bench/shim.sh [PAIRS] [CALLS]     # defaults: 20 pairs of `ctr run`, 2000 State calls
#   BENCH_CONTAINERD=2.3.4 bash bench/shim.sh
#
# Prints one line per figure; BENCHMARKS.md records a run of it.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-20}
CALLS=${2:-2000}
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup bench/shim.sh

# 1. `ctr run --rm /bin/true`, alternating proxy and runc, median of PAIRS each.
: > "$W/run.txt"
for i in $(seq "$PAIRS"); do
  w=$(bench_us "${CTR[@]}" run --rm "${PROXIED[@]}" --rootfs "$W/rootfs" "w$i" /bin/true)
  d=$(bench_us "${CTR[@]}" run --rm "${DIRECT[@]}" --rootfs "$W/rootfs" "d$i" /bin/true)
  echo "$w $d" >> "$W/run.txt"
done
python3 - "$W/run.txt" <<'PY'
import statistics, sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
w = statistics.median(r[0] for r in rows) / 1000
d = statistics.median(r[1] for r in rows) / 1000
print(f"ctr run --rm /bin/true, median of {len(rows)} pairs: proxy {w:.1f} ms, runc shim {d:.1f} ms, ratio {w/d:.3f}")
PY

# 2. RSS of the proxy and of runc's shim with one sleeping task each.
"${CTR[@]}" run -d "${PROXIED[@]}" --rootfs "$W/rootfs" proxied /bin/busybox sleep 600 >/dev/null
"${CTR[@]}" run -d "${DIRECT[@]}" --rootfs "$W/rootfs" direct /bin/busybox sleep 600 >/dev/null
sleep 1
PROXY_PID=$(pgrep -f "$SHIM .*-id proxied .*serve" | awk 'NR == 1')
DOWN_PID=$(pgrep -f "containerd-shim-runc-v2 -namespace default -id proxied" | awk 'NR == 1')
RUNC_PID=$(pgrep -f "containerd-shim-runc-v2 -namespace default -id direct" | awk 'NR == 1')
echo "RSS: proxy $(bench_status "$PROXY_PID") KiB (anon $(bench_status "$PROXY_PID" RssAnon), file $(bench_status "$PROXY_PID" RssFile), $(bench_status "$PROXY_PID" Threads) threads), runc shim daemon $(bench_status "$RUNC_PID") KiB (the proxy's own downstream: $(bench_status "$DOWN_PID") KiB)"

# 3. One forwarded call: State through the proxy vs straight to runc's shim.
B="$STATE/containerd/io.containerd.runtime.v2.task/default"
# A shim's address: its bundle's `address` (ours, and 1.x's runc shim), else the
# `bootstrap.json` containerd 2.x keeps there.
address() {
  if [ -f "$1/address" ]; then cat "$1/address"
  else python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["address"])' "$1/bootstrap.json"; fi
}
# containerd 2.x's runc shim serves the task API under its v3 name (the proxy under both).
if [ -n "${BENCH_CONTAINERD:-}" ]; then export TASK_SERVICE=containerd.task.v3.Task; fi
"$TARGET/shim-call-latency" "$CALLS" "$(address "$B/proxied")" proxied "$(address "$B/direct")" direct > "$W/lat.txt"
python3 - "$W/lat.txt" "$CALLS" <<'PY'
import sys
(w50, w99), (d50, d99) = [tuple(map(float, l.split()[1:])) for l in open(sys.argv[1])]
print(f"State, {sys.argv[2]} calls: through the proxy p50 {w50:.1f} us p99 {w99:.1f} us; runc shim directly p50 {d50:.1f} us p99 {d99:.1f} us; added p50 {w50-d50:.1f} us, p99 {w99-d99:.1f} us")
PY

# 4. Memory at node scale: PSS (/proc/PID/smaps_rollup, so that the pages the proxies share
# count once) of the proxies of PODS running pods of one task each, summed and divided by
# PODS, against runc's shims of as many tasks started directly.
PODS=${PODS:-20}
for i in $(seq "$PODS"); do
  "${CTR[@]}" run -d "${PROXIED[@]}" --rootfs "$W/rootfs" "pp$i" /bin/busybox sleep 600 >/dev/null
  "${CTR[@]}" run -d "${DIRECT[@]}" --rootfs "$W/rootfs" "pd$i" /bin/busybox sleep 600 >/dev/null
done
sleep 1
mapfile -t PROXIES < <(pgrep -f "$SHIM .*-id pp[0-9]+ .*serve")
mapfile -t RUNCS < <(pgrep -f "containerd-shim-runc-v2 -namespace default -id pd[0-9]+ ")
python3 - "$PODS" "${#PROXIES[@]}" "${PROXIES[@]}" "${RUNCS[@]}" <<'PY'
import sys
pods, n = int(sys.argv[1]), int(sys.argv[2])
pids = sys.argv[3:]
def pss(pid):
    for line in open(f"/proc/{pid}/smaps_rollup"):
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0
proxies, runcs = pids[:n], pids[n:]
assert len(proxies) == pods and len(runcs) == pods, (len(proxies), len(runcs))
p = sum(map(pss, proxies)) / pods / 1024
r = sum(map(pss, runcs)) / pods / 1024
print(f"PSS per pod, {pods} pods: proxy {p:.2f} MiB, runc shim {r:.2f} MiB, ratio {p/r:.2f}")
PY
