#!/usr/bin/env bash
# The node image and the node agent, each figure against a baseline measured in the same
# run. Needs `make image` (release binaries), a debug `simhost`, and Debian's containerd
# (for `containerd config default`). No root needed; nothing outside temp dirs is touched.
#
#   bash bench/image.sh [RUNS]      # default 10 runs of each timing; medians printed
#
# 1. image size: the tar (gzip -6 layer) against the binaries and libraries it holds, and
#    against `tar | gzip -6` of the same files;
# 2. image build (kata-gpu-image alone, binaries built) against `tar | gzip -6`;
# 3. install time: `kata-gpu agent` from start to "waiting for SIGTERM" on a simulated H100
#    host (shim copy, install, doctor, labels) against `kata-gpu install` alone, and from
#    SIGTERM to exit (labels, uninstall, shim) against `kata-gpu uninstall` alone.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-10}
BIN=target/release
SIM=target/debug/simhost
for f in "$BIN/kata-gpu" "$BIN/kata-gpu-image" "$BIN/containerd-shim-kata-qemu-nvidia-gpu-snp-v2" "$SIM"; do
  [ -x "$f" ] || { echo "bench/image.sh: $f missing (make image; cargo build -p kata-gpu-simhost)" >&2; exit 1; }
done
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
ms() { awk -v n="$1" 'BEGIN {printf "%.1f", n/1e6}'; }

# 1 and 2.
files=("$BIN/kata-gpu" "$BIN/containerd-shim-kata-qemu-nvidia-gpu-snp-v2")
mapfile -t libs < <(ldd "${files[@]}" | awk '$2=="=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | sort -u)
raw=$(du -bcL "${files[@]}" "${libs[@]}" | tail -1 | cut -f1)
build=(); base=()
for _ in $(seq "$RUNS"); do
  t=$(now); "$BIN/kata-gpu-image" --kata-gpu "$BIN/kata-gpu" --shim "${files[1]}" \
      --name bench/kata-gpu:1 --revision bench --output "$WORK/image.tar" >/dev/null
  build+=($(( $(now) - t )))
  t=$(now); tar -chf - "${files[@]}" "${libs[@]}" 2>/dev/null | gzip -6 > "$WORK/base.tar.gz"
  base+=($(( $(now) - t )))
done
size=$(stat -c %s "$WORK/image.tar")
gz=$(stat -c %s "$WORK/base.tar.gz")
echo "image size: $size bytes ($(awk -v a="$size" -v b="$raw" 'BEGIN {printf "%.3f", a/b}')x the $raw bytes of binaries and libraries; $(awk -v a="$size" -v b="$gz" 'BEGIN {printf "%.3f", a/b}')x tar|gzip -6 of them, $gz bytes)"
b=$(printf '%s\n' "${build[@]}" | median); g=$(printf '%s\n' "${base[@]}" | median)
echo "image build, median of $RUNS: $(ms "$b") ms (tar|gzip -6: $(ms "$g") ms, $(awk -v a="$b" -v c="$g" 'BEGIN {printf "%.2f", a/c}')x)"

# 3.
host() {
  local root; root=$("$SIM" h100)
  mkdir -p "$root/etc/containerd" "$root/opt/kata/bin"
  containerd config default > "$root/etc/containerd/config.toml"
  echo kata > "$root/opt/kata/bin/containerd-shim-kata-v2"
  echo "$root"
}
set_dir=$WORK/set; mkdir -p "$set_dir"
echo kernel > "$set_dir/vmlinuz-6.12-nvidia-gpu-confidential"
echo image > "$set_dir/kata-containers-confidential.img"
echo fw > "$set_dir/AMDSEV.fd"
cp configs/templates/configuration-qemu-nvidia-gpu-snp.toml "$set_dir/"
up=(); down=(); inst=(); uninst=()
for _ in $(seq "$RUNS"); do
  root=$(host)
  t=$(now); "$BIN/kata-gpu" --host-root "$root" install --artifacts "$set_dir" >/dev/null
  inst+=($(( $(now) - t )))
  t=$(now); "$BIN/kata-gpu" --host-root "$root" uninstall >/dev/null
  uninst+=($(( $(now) - t )))
  rm -rf "$root"
  root=$(host); log=$WORK/agent.log; : > "$log"
  t=$(now)
  "$BIN/kata-gpu" --host-root "$root" agent --label --from "$BIN" --artifacts "$set_dir" > "$log" &
  pid=$!
  # ready, or (a host doctor fails on) its first "not ready, checking again" line
  until grep -qE "waiting for SIGTERM|not ready, checking again" "$log"; do
    kill -0 "$pid" 2>/dev/null || { cat "$log"; exit 1; }
    sleep 0.001
  done
  up+=($(( $(now) - t )))
  t=$(now); kill -TERM "$pid"; wait "$pid"
  down+=($(( $(now) - t )))
  rm -rf "$root"
done
for pair in "agent start to ready:up:install alone:inst" "agent SIGTERM to exit:down:uninstall alone:uninst"; do
  IFS=: read -r what a bwhat bb <<< "$pair"
  declare -n A=$a B=$bb
  x=$(printf '%s\n' "${A[@]}" | median); y=$(printf '%s\n' "${B[@]}" | median)
  echo "$what, median of $RUNS: $(ms "$x") ms ($bwhat: $(ms "$y") ms, $(awk -v a="$x" -v c="$y" 'BEGIN {printf "%.2f", a/c}')x)"
  unset -n A B
done
