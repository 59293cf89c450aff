#!/usr/bin/env bash
# The proxy shim under load and faults, each figure against runc's shim measured in the
# same run, through a private containerd 1.6 (set-up in bench/lib.sh). Needs root and
# `make deps`. The tests in tests/tests/shim_ctr.rs assert the same behaviours; this script
# measures them.
#
#   bash bench/load.sh [BURST] [CONTAINERS] [KILLS]
#   # defaults: 50 concurrent runs, 200 containers in one pod, 5 kills of each kind
#
# Prints one line per figure; BENCHMARKS.md records a run of it.
set -euo pipefail
cd "$(dirname "$0")/.."
BURST=${1:-50}
CONTAINERS=${2:-200}
KILLS=${3:-5}
# shellcheck source=bench/lib.sh
. bench/lib.sh
bench_setup bench/load.sh

# What is left of one runtime's work: tasks, shim processes, proxy sockets and state.
leftovers() {
  local tasks procs state
  tasks=$("${CTR[@]}" tasks ls -q | wc -l)
  procs=$(pgrep -fc "$SHIM|containerd-shim-runc-v2" || true)
  state=$(find "$STATE" -mindepth 1 -path "$STATE/containerd" -prune -o -not -name s -print | wc -l)
  echo "$tasks tasks, $procs shim processes, $state proxy state entries"
}

# 1. BURST concurrent `ctr run --rm`, all at once, the wall time of the whole burst.
burst() {
  local prefix=$1; shift
  local pids=() fails=0 i s e
  s=$(date +%s%N)
  for i in $(seq "$BURST"); do
    "${CTR[@]}" run --rm "$@" --rootfs "$W/rootfs" "$prefix$i" /bin/busybox echo "$prefix$i" >"$W/burst.$prefix$i" 2>&1 &
    pids+=($!)
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}" || [ "$(cat "$W/burst.$prefix$((i + 1))")" != "$prefix$((i + 1))" ]; then
      fails=$((fails + 1))
    fi
  done
  e=$(date +%s%N)
  echo "$(( (e - s) / 1000000 )) $fails"
}
read -r bw bwf <<<"$(burst bw "${PROXIED[@]}")"
left_w=$(leftovers)
read -r bd bdf <<<"$(burst bd "${DIRECT[@]}")"
echo "$BURST concurrent ctr run --rm: proxy ${bw} ms ($bwf failed; left: $left_w), runc shim ${bd} ms ($bdf failed; left: $(leftovers)), ratio $(python3 -c "print(f'{$bw/$bd:.3f}')")"

# 2. kill -9, then the time until containerd publishes the task's exit (`ctr events`), and
#    whether `ctr task rm` and `ctr c rm` then succeed. Three kinds, KILLS rounds each:
#    the proxy's downstream killed; runc's shim killed (containerd's own dead-shim path);
#    the container's process killed under runc's shim (the ordinary exit, the floor).
exit_after_kill() { # ID PID: prints milliseconds from kill -9 PID to /tasks/exit of ID
  python3 - "$W/c.sock" "$1" "$2" <<'PY'
import os, signal, subprocess, sys, threading, time
addr, cid, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
ev = subprocess.Popen(["ctr", "--address", addr, "events"], stdout=subprocess.PIPE, text=True)
threading.Timer(10, ev.kill).start()
time.sleep(0.5)  # subscribed
t0 = time.monotonic()
os.kill(pid, signal.SIGKILL)
for line in ev.stdout:
    if "/tasks/exit" in line and f'"container_id":"{cid}"' in line:
        print(f"{(time.monotonic() - t0) * 1000:.1f}")
        break
else:
    print("none")
ev.kill()
PY
}
kill_round() { # KIND N: one round; prints "ms removed(0|1)"
  local kind=$1 id="$1$2" flags pid ms
  if [ "$kind" = proxy ]; then flags=("${PROXIED[@]}"); else flags=("${DIRECT[@]}"); fi
  "${CTR[@]}" run -d "${flags[@]}" --rootfs "$W/rootfs" "$id" /bin/busybox sleep 600 >/dev/null
  case $kind in
    proxy) pid=$(pgrep -f "containerd-shim-runc-v2 -namespace default -id $id( |$)") ;;
    runcshim) pid=$(pgrep -f "containerd-shim-runc-v2 -namespace default -id $id( |$)") ;;
    task) pid=$("${CTR[@]}" tasks ls | awk -v id="$id" '$1 == id {print $2}') ;;
  esac
  ms=$(exit_after_kill "$id" "$pid")
  # containerd may have deleted the task itself (its dead-shim path does): then rm has
  # nothing to do, and what counts is that neither the task nor the container is left.
  "${CTR[@]}" tasks delete "$id" >/dev/null 2>&1 || true
  if ! grep -qx "$id" <<<"$("${CTR[@]}" tasks ls -q)" && "${CTR[@]}" containers delete "$id" >/dev/null 2>&1; then
    echo "$ms 1"
  else
    echo "$ms 0"
  fi
}
: > "$W/kills.txt"
for n in $(seq "$KILLS"); do
  for kind in proxy runcshim task; do
    echo "$kind $(kill_round "$kind" "$n")" >> "$W/kills.txt"
  done
done
python3 - "$W/kills.txt" "$(leftovers)" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def fig(kind):
    ms = [float(r[1]) for r in rows if r[0] == kind and r[1] != "none"]
    missed = sum(1 for r in rows if r[0] == kind and r[1] == "none")
    removed = sum(int(r[2]) for r in rows if r[0] == kind)
    n = sum(1 for r in rows if r[0] == kind)
    return (statistics.median(ms) if ms else float("nan")), max(ms, default=float("nan")), missed, removed, n
w, r, t = fig("proxy"), fig("runcshim"), fig("task")
print(f"kill -9, exit seen by containerd (median, max of {w[4]}): proxy's downstream {w[0]:.1f} ms, {w[1]:.1f} ms ({w[2]} missed, {w[3]}/{w[4]} removed); "
      f"runc shim {r[0]:.1f} ms, {r[1]:.1f} ms ({r[2]} missed, {r[3]}/{r[4]} removed); ratio {w[0]/r[0]:.2f}; "
      f"floor, the task killed under runc's shim: {t[0]:.1f} ms; left: {sys.argv[2]}")
PY

# 3. CONTAINERS sequential create/delete cycles in one pod: the pod's shim RSS after the
#    sandbox, halfway and at the end, and the median time per cycle.
pod_cycles() { # PREFIX FLAGS...: prints "rss0 rss_half rss_end median_ms pid"
  local prefix=$1; shift
  local pod="${prefix}pod" member pid rss0 rss_half i
  member="io.kubernetes.cri.sandbox-id=$pod"
  "${CTR[@]}" run -d "$@" --annotation io.kubernetes.cri.container-type=sandbox \
    --annotation "$member" --rootfs "$W/rootfs" "$pod" /bin/busybox sleep 600 >/dev/null
  sleep 0.5
  if [ "$prefix" = w ]; then
    pid=$(pgrep -f "$SHIM .*-id $pod .*serve" | awk 'NR == 1')
  else
    pid=$(pgrep -f "containerd-shim-runc-v2 -namespace default -id $pod( |$)" | awk 'NR == 1')
  fi
  rss0=$(bench_status "$pid")
  : > "$W/cycles.$prefix"
  for i in $(seq "$CONTAINERS"); do
    bench_us "${CTR[@]}" run --rm "$@" --annotation io.kubernetes.cri.container-type=container \
      --annotation "$member" --rootfs "$W/rootfs" "$prefix$i" /bin/true >> "$W/cycles.$prefix"
    [ "$i" = $((CONTAINERS / 2)) ] && rss_half=$(bench_status "$pid")
  done
  echo "$rss0 $rss_half $(bench_status "$pid") $(sort -n "$W/cycles.$prefix" | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]/1000}')"
  "${CTR[@]}" tasks kill -s SIGKILL "$pod" >/dev/null 2>&1
  sleep 0.5
  "${CTR[@]}" tasks delete "$pod" >/dev/null 2>&1
  "${CTR[@]}" containers delete "$pod" >/dev/null
}
read -r w0 wh we wm <<<"$(pod_cycles w "${PROXIED[@]}")"
read -r d0 dh de dm <<<"$(pod_cycles d "${DIRECT[@]}")"
echo "$CONTAINERS containers in one pod, RSS after the sandbox / after $((CONTAINERS / 2)) / after $CONTAINERS: proxy $w0 / $wh / $we KiB (last half $((we - wh)) KiB), runc shim $d0 / $dh / $de KiB (last half $((de - dh)) KiB); median cycle proxy $wm ms, runc shim $dm ms, ratio $(python3 -c "print(f'{$wm/$dm:.3f}')"); left: $(leftovers)"
