# Shared set-up of the shim benchmarks (sourced by bench/shim.sh and bench/load.sh): a
# private containerd (never the system one; Debian's 1.6, or with BENCH_CONTAINERD=2.3.4 a
# release `make deps` unpacked under KATA_GPU_PARTS) with the release build of the proxy
# (that release's runc shim downstream) and that runc shim itself, a busybox rootfs, containerd's state (bundles)
# and the proxy's state on tmpfs as /run is on a node, and a clean-up that leaves nothing.
# Needs root and `make deps`.
#
# After `bench_setup NAME`: W (work dir), TARGET (release dir), CTR (ctr with the address),
# PROXIED / DIRECT (the --runtime flags), SHIM (the proxy's binary name).

SHIM=containerd-shim-kata-qemu-nvidia-gpu-snp-v2

bench_setup() {
  local name=$1
  [ "$(id -u)" = 0 ] || { echo "$name: run as root (it starts a private containerd)" >&2; exit 1; }
  local version=2
  bin=/usr/bin
  if [ -n "${BENCH_CONTAINERD:-}" ]; then
    bin="${KATA_GPU_PARTS:-$PWD/parts}/containerd-$BENCH_CONTAINERD/bin"
    version=3
  fi
  for p in "$bin/containerd" "$bin/ctr" "$bin/containerd-shim-runc-v2" busybox python3; do
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
downstream = "$bin/containerd-shim-runc-v2"
downstream_kind = "runc"
state_dir = "$STATE"
host_root = "$W/host"
base_config = "$W/base.toml"
EOF
  if [ "$version" = 2 ]; then
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
  else
    # 2.x: shim sockets go to /run/containerd/s unless the shim manager says else (2.3+).
    cat > "$W/config.toml" <<EOF
version = 3
root = "$W/root"
state = "$STATE/containerd"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images"]
[grpc]
  address = "$W/c.sock"
[ttrpc]
  address = "$W/c.sock.ttrpc"
[plugins."io.containerd.shim.v1.manager"]
  socket_dir = "$STATE/s"
EOF
  fi
  PATH="$W/bin:$bin:$PATH" KATA_GPU_SHIM_CONFIG="$W/shim.toml" "$bin/containerd" --config "$W/config.toml" >"$W/containerd.log" 2>&1 &
  CTRD_PID=$!
  for _ in $(seq 100); do "$bin/ctr" --address "$W/c.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
  CTR=("$bin/ctr" --address "$W/c.sock")
  PROXIED=(--runtime io.containerd.kata-qemu-nvidia-gpu-snp.v2)
  DIRECT=(--runtime io.containerd.runc.v2)
  echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load $(cut -d' ' -f1-3 /proc/loadavg), containerd $("$bin/containerd" --version | awk '{print $3}')"
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
