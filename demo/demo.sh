#!/usr/bin/env bash
# `make demo`: the whole path on any Linux machine, no GPU or confidential hardware needed.
# A simulated H100 host, a private containerd set up by `kata-gpu install`, and a container
# asking for `nvidia.com/pgpu=0` through the shim. runc's shim stands in for Kata's, because
# this machine cannot start a confidential VM: everything up to Kata's door is real.
# Run as root (it starts a private containerd; the system's is never touched).
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

[ "$(id -u)" = 0 ] || { echo "demo: run as root (it starts a private containerd)" >&2; exit 1; }
BIN=${CARGO_TARGET_DIR:-target}/debug

step "building kata-gpu, the shim and the host simulator"
cargo build --quiet -p kata-gpu -p kata-gpu-shim -p kata-gpu-tests --bins

W=$(mktemp -d /tmp/kata-gpu-demo.XXXXXX)
CTRD_PID=""
teardown() {
  step "tearing down"
  if [ -n "$CTRD_PID" ]; then
    ctr --address "$W/c.sock" tasks kill -s SIGKILL demo >/dev/null 2>&1 || true
    sleep 0.3
    ctr --address "$W/c.sock" tasks delete demo >/dev/null 2>&1 || true
    ctr --address "$W/c.sock" containers delete demo >/dev/null 2>&1 || true
    kill "$CTRD_PID" 2>/dev/null && wait "$CTRD_PID" 2>/dev/null || true
  fi
  [ -n "${ROOT:-}" ] && "$BIN/kata-gpu" uninstall --host-root "$ROOT" >/dev/null 2>&1 || true
  rm -rf "$W" "${ROOT:-}"
  echo "removed $W and the simulated host"
}
trap teardown EXIT

step "a simulated host: one H100 PCIe (10de:2331) bound to vfio-pci, iommufd, SEV-SNP on"
ROOT=$("$BIN/simhost" h100)
echo "host root: $ROOT"

step "a private containerd config (its own root, state and socket) at the host's /etc/containerd"
mkdir -p "$ROOT/etc/containerd"
cat > "$ROOT/etc/containerd/config.toml" <<EOF
# containerd for the kata-gpu demo
version = 2
root = "$W/root"
state = "$W/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]

[grpc]
  address = "$W/c.sock"
[ttrpc]
  address = "$W/c.sock.ttrpc"
EOF

step "a stand-in artifact set (a real one holds the confidential kernel, guest image and AMDSEV.fd)"
SET="$W/artifacts"
mkdir -p "$SET"
echo kernel >"$SET/vmlinuz-6.12-nvidia-gpu-confidential"
echo image >"$SET/kata-containers-confidential.img"
echo firmware >"$SET/AMDSEV.fd"
cp configs/templates/configuration-qemu-nvidia-gpu-snp.toml "$SET/"

step "make install: kata-gpu and the shim under every profile's name, where containerd finds them"
"$BIN/kata-gpu" binaries install --from "$BIN" --prefix /usr/local --host-root "$ROOT"

step "kata-gpu install: artifacts, host CDI spec, containerd registration, RuntimeClass"
"$BIN/kata-gpu" install --host-root "$ROOT" --artifacts "$SET"

step "the shim's settings: runc's shim downstream (no Kata here), devices by annotation (no kubelet here), everything else as on a node"
cat > "$W/shim.toml" <<EOF
downstream = "$(command -v containerd-shim-runc-v2)"
downstream_kind = "runc"
host_root = "$ROOT"
state_dir = "$W/st"
device_source = "annotations"
EOF
cat "$W/shim.toml"

step "starting the private containerd with the registered config"
PATH="$ROOT/usr/local/bin:$PATH" KATA_GPU_SHIM_CONFIG="$W/shim.toml" \
  containerd --config "$ROOT/etc/containerd/config.toml" >"$W/containerd.log" 2>&1 &
CTRD_PID=$!
for _ in $(seq 100); do ctr --address "$W/c.sock" version >/dev/null 2>&1 && break; sleep 0.1; done
# Read whole before grep: grep -m1 exits early, and ctr's SIGPIPE would fail the pipeline.
version=$(ctr --address "$W/c.sock" version)
grep -m1 Version <<<"$version"

step "what the pod would get: kata-gpu plan"
"$BIN/kata-gpu" plan --host-root "$ROOT" --annotation cdi.k8s.io/gpu=nvidia.com/pgpu=0

step "a container asking for nvidia.com/pgpu=0, through the shim"
mkdir -p "$W/rootfs/bin" "$W/rootfs/proc" "$W/rootfs/dev" "$W/rootfs/sys"
cp "$(command -v busybox)" "$W/rootfs/bin/busybox"
ln -s busybox "$W/rootfs/bin/sh"
ctr --address "$W/c.sock" run -d --runtime io.containerd.kata-qemu-nvidia-gpu-snp.v2 \
  --annotation cdi.k8s.io/gpu=nvidia.com/pgpu=0 --rootfs "$W/rootfs" demo /bin/busybox sleep 120
echo "in the container: $(ctr --address "$W/c.sock" tasks exec --exec-id ls demo /bin/busybox ls -l /dev/vfio/devices)"

step "the per-sandbox Kata config the shim wrote (Kata would boot the VM from it)"
CONFIG="$W/st/default/demo/configuration.toml"
echo "$CONFIG:"
grep -E '^(pcie_root_port|cold_plug_vfio|hot_plug_vfio|default_memory|kernel|image|firmware|sev_snp_guest|confidential_guest) ' "$CONFIG"
echo "(with Kata downstream, its Create carries runtimeoptions.v1.Options{config_path = $CONFIG})"

step "done: the demo's containerd, simulated host and state are removed on exit"
