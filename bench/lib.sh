# Shared set-up of the shim benchmarks (sourced by bench/shim.sh and bench/load.sh): a
# private containerd 1.6 (never the system one) with the release build of the wrapper (runc's
# shim downstream) and runc's shim itself, a busybox rootfs, containerd's state (bundles)
# and the wrapper's state on tmpfs as /run is on a node, and a clean-up that leaves nothing.
# Needs root and `make deps`.
#
# After `bench_setup NAME`: W (work dir), TARGET (release dir), CTR (ctr with the address),
# WRAPPED / DIRECT (the --runtime flags), SHIM (the wrapper's binary name).

SHIM=containerd-shim-kata-qemu-nvidia-gpu-snp-v2

bench_setup() {
  local name=$1
  [ "$(id -u)" = 0 ] || { echo "$name: run as root (it starts a private containerd)" >&2; exit 1; }
  for p in containerd ctr containerd-shim-runc-v2 busybox python3; do
    command -v "$p" >/dev/null || { echo "$name: $p missing; run make deps" >&2; exit 1; }
  done
  cargo build --quiet --release -p kata-gpu-shim --bin "$SHIM"
  cargo build --quiet --release -p kata-gpu-tests --bin shim-call-latency
  TARGET=${CARGO_TARGET_DIR:-target}/release

  W=$(mktemp -d /tmp/shimbench.XXXXXX)
  STATE=$(mktemp -d /dev/shm/shimbench.XXXXXX)
  CTRD_PID=""
  trap bench_cleanup EXIT

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
state = "$STATE/containerd"
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
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), containerd $(containerd --version | awk '{print $3}')"
}

# Kills and deletes every task and container left, stops containerd, removes the dirs.
bench_cleanup() {
  if [ -n "${CTRD_PID:-}" ]; then
    local id
    for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
    done
    sleep 0.3
    for id in $("${CTR[@]}" tasks ls -q 2>/dev/null); do
      "${CTR[@]}" tasks delete -f "$id" >/dev/null 2>&1 || true
    done
    for id in $("${CTR[@]}" containers ls -q 2>/dev/null); do
      "${CTR[@]}" containers delete "$id" >/dev/null 2>&1 || true
    done
    kill "$CTRD_PID" 2>/dev/null && wait "$CTRD_PID" 2>/dev/null || true
  fi
  rm -rf "${W:-/nonexistent}" "${STATE:-/nonexistent}"
}

# Microseconds a command takes (its output discarded).
bench_us() { local s e; s=$(date +%s%N); "$@" >/dev/null; e=$(date +%s%N); echo $(( (e - s) / 1000 )); }

# VmRSS (or another /proc/PID/status field) in KiB.
bench_status() { awk -v k="${2:-VmRSS}:" '$1 == k {print $2}' "/proc/$1/status"; }
