#!/usr/bin/env bash
# The wrapper shim's figures, each against runc's shim measured in the same run, through a
# private containerd 1.6 (never the system one). Needs root and `make deps`.
#
#   bash bench/shim.sh [PAIRS] [CALLS]     # defaults: 20 pairs of `ctr run`, 2000 State calls
#
# Prints one line per figure; BENCHMARKS.md records a run of it.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-20}
CALLS=${2:-2000}
SHIM=containerd-shim-kata-qemu-nvidia-gpu-snp-v2

[ "$(id -u)" = 0 ] || { echo "bench/shim.sh: run as root (it starts a private containerd)" >&2; exit 1; }
for p in containerd ctr containerd-shim-runc-v2 busybox python3; do
  command -v "$p" >/dev/null || { echo "bench/shim.sh: $p missing; run make deps" >&2; exit 1; }
done

cargo build --quiet --release -p kata-gpu-shim --bin "$SHIM"
cargo build --quiet --release -p kata-gpu-tests --bin shim-call-latency
TARGET=${CARGO_TARGET_DIR:-target}/release

W=$(mktemp -d /tmp/shimbench.XXXXXX)
# Sandbox state on tmpfs, as /run is on a node.
STATE=$(mktemp -d /dev/shm/shimbench.XXXXXX)
CTRD_PID=""
cleanup() {
  for id in wrapped direct; do
    ctr --address "$W/c.sock" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    sleep 0.2
    ctr --address "$W/c.sock" tasks delete "$id" >/dev/null 2>&1 || true
    ctr --address "$W/c.sock" containers delete "$id" >/dev/null 2>&1 || true
  done
  [ -n "$CTRD_PID" ] && kill "$CTRD_PID" 2>/dev/null && wait "$CTRD_PID" 2>/dev/null || true
  rm -rf "$W" "$STATE"
}
trap cleanup EXIT

mkdir -p "$W/bin" "$W/rootfs/bin" "$W/rootfs/proc" "$W/rootfs/dev" "$W/rootfs/sys" "$W/host"
cp "$(command -v busybox)" "$W/rootfs/bin/busybox"
ln -s busybox "$W/rootfs/bin/sh"
ln -s busybox "$W/rootfs/bin/true"
ln -s "$PWD/$TARGET/$SHIM" "$W/bin/$SHIM"
cp configs/templates/configuration-qemu-nvidia-gpu-snp.toml "$W/base.toml"
cat > "$W/shim.toml" <<EOF
downstream = "$(command -v containerd-shim-runc-v2)"
downstream_kind = "runc"
state_dir = "$STATE"
host_root = "$W/host"
base_config = "$W/base.toml"
EOF
cat > "$W/config.toml" <<EOF
version = 2
root = "$W/root"
state = "$W/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$W/c.sock"
[ttrpc]
  address = "$W/c.sock.ttrpc"
EOF
PATH="$W/bin:$PATH" KATA_GPU_SHIM_CONFIG="$W/shim.toml" containerd --config "$W/config.toml" >"$W/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 100); do ctr --address "$W/c.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
CTR=(ctr --address "$W/c.sock")
WRAPPED=(--runtime io.containerd.kata-qemu-nvidia-gpu-snp.v2)
DIRECT=(--runtime io.containerd.runc.v2)

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), containerd $(containerd --version | awk '{print $3}')"

# 1. `ctr run --rm /bin/true`, alternating wrapper and runc, median of PAIRS each.
ms() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }
: > "$W/run.txt"
for i in $(seq "$PAIRS"); do
  w=$(ms "${CTR[@]}" run --rm "${WRAPPED[@]}" --rootfs "$W/rootfs" "w$i" /bin/true)
  d=$(ms "${CTR[@]}" run --rm "${DIRECT[@]}" --rootfs "$W/rootfs" "d$i" /bin/true)
  echo "$w $d" >> "$W/run.txt"
done
python3 - "$W/run.txt" <<'EOF'
import statistics, sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
w = statistics.median(r[0] for r in rows) / 1000
d = statistics.median(r[1] for r in rows) / 1000
print(f"ctr run --rm /bin/true, median of {len(rows)} pairs: wrapper {w:.1f} ms, runc shim {d:.1f} ms, ratio {w/d:.3f}")
EOF

# 2. RSS of the serving daemons with one sleeping task each.
"${CTR[@]}" run -d "${WRAPPED[@]}" --rootfs "$W/rootfs" wrapped /bin/busybox sleep 600 >/dev/null
"${CTR[@]}" run -d "${DIRECT[@]}" --rootfs "$W/rootfs" direct /bin/busybox sleep 600 >/dev/null
sleep 1
rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
WRAPPER_PID=$(pgrep -f "$SHIM .*-id wrapped .*serve" | head -1)
DOWN_PID=$(pgrep -f "containerd-shim-runc-v2 -namespace default -id wrapped" | head -1)
RUNC_PID=$(pgrep -f "containerd-shim-runc-v2 -namespace default -id direct" | head -1)
part() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }
echo "RSS: wrapper daemon $(rss "$WRAPPER_PID") KiB (anon $(part "$WRAPPER_PID" RssAnon), file $(part "$WRAPPER_PID" RssFile), $(part "$WRAPPER_PID" Threads) threads), runc shim daemon $(rss "$RUNC_PID") KiB (the wrapper's own downstream: $(rss "$DOWN_PID") KiB)"

# 3. One forwarded call: State through the wrapper vs straight to runc's shim.
B="$W/state/io.containerd.runtime.v2.task/default"
"$TARGET/shim-call-latency" "$CALLS" "$(cat "$B/wrapped/address")" wrapped "$(cat "$B/direct/address")" direct > "$W/lat.txt"
python3 - "$W/lat.txt" "$CALLS" <<'EOF'
import sys
(w50, w99), (d50, d99) = [tuple(map(float, l.split()[1:])) for l in open(sys.argv[1])]
print(f"State, {sys.argv[2]} calls: through the wrapper p50 {w50:.1f} us p99 {w99:.1f} us; runc shim directly p50 {d50:.1f} us p99 {d99:.1f} us; added p50 {w50-d50:.1f} us, p99 {w99-d99:.1f} us")
EOF
