#!/usr/bin/env bash
# Installs what the tests need on a Debian 12 machine, as root, and is a no-op when all is there:
#   - Debian packages: containerd 1.6, runc, ctr, busybox-static, protoc, ovmf (the firmware the
#     boot test's guest starts with);
#   - QEMU 10 from bookworm-backports (Debian 12's own QEMU 7.2 has neither sev-snp-guest nor iommufd);
#   - the real parts Debian 12 does not ship (containerd 1.7.24, 2.1.9, 2.3.4, Kata 3.30, kata-qemu-args
#     3.30, Kata 4.1's Rust shim), unpacked
#     from the tarballs in $THIRD_PARTY into $PARTS after their checksums are checked;
#   - Debian 12's cloud kernel for the boot test's guest, unpacked (not installed) into
#     $PARTS/guest/: `vmlinuz` and `version` (the package it came from).
# Settings (environment): THIRD_PARTY (default ../shared/third_party), PARTS (default ./parts),
#   DEPS_FOR=demo: only what `make demo` uses (Debian's containerd 1.6, runc, ctr, busybox and
#   protoc for the build), no QEMU, no tarballs, no guest kernel.
set -euo pipefail
cd "$(dirname "$0")/.."
THIRD_PARTY=${THIRD_PARTY:-../shared/third_party}
PARTS=${PARTS:-parts}
DEPS_FOR=${DEPS_FOR:-tests}
APT_PACKAGES=(containerd runc busybox-static protobuf-compiler)
[ "$DEPS_FOR" = demo ] || APT_PACKAGES+=(ovmf)
QEMU_MIN_MAJOR=10

say() { echo "deps: $*"; }
die() { echo "deps: $*" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
updated=
apt_update() { [ -n "$updated" ] || { apt-get update -q; updated=1; }; }
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  apt_update
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "Debian packages present (${APT_PACKAGES[*]})"
fi

check_commands() {
  for cmd in containerd ctr runc containerd-shim-runc-v2 busybox protoc; do
    command -v "$cmd" >/dev/null || die "$cmd still missing after the install"
  done
}
if [ "$DEPS_FOR" = demo ]; then
  check_commands
  say "what the demo uses is here"
  exit 0
fi

qemu_major() {
  command -v qemu-system-x86_64 >/dev/null || { echo 0; return; }
  qemu-system-x86_64 --version | sed -n 's/^QEMU emulator version \([0-9]*\).*/\1/p'
}
if [ "$(qemu_major)" -lt "$QEMU_MIN_MAJOR" ]; then
  # bookworm-backports lives in the same archive as bookworm itself: reuse the URI the machine
  # already uses for bookworm, so no host name is written here.
  if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
    uri=$(awk '/^URIs:/{u=$2} /^Suites:/ && / bookworm( |$)/ && u {print u; exit}' \
            /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [ -n "$uri" ] || die "no apt source for bookworm found, so bookworm-backports cannot be added; add it and install qemu-system-x86 from it"
    say "adding bookworm-backports ($uri) for QEMU $QEMU_MIN_MAJOR"
    printf 'Types: deb\nURIs: %s\nSuites: bookworm-backports\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
      "$uri" > /etc/apt/sources.list.d/kata-gpu-backports.sources
    updated=
  fi
  say "installing qemu-system-x86 from bookworm-backports"
  apt_update
  apt-get install -y -q --no-install-recommends -t bookworm-backports qemu-system-x86
fi
[ "$(qemu_major)" -ge "$QEMU_MIN_MAJOR" ] || die "qemu-system-x86_64 is $(qemu-system-x86_64 --version | head -1), $QEMU_MIN_MAJOR or later is needed"
say "$(qemu-system-x86_64 --version | head -1)"

check_commands

# The real parts from the tarballs. A part is unpacked again only when its tarball changed.
[ -d "$THIRD_PARTY" ] || die "no directory of third-party tarballs at $THIRD_PARTY (set THIRD_PARTY, or PARTS to a directory laid out as README.md says)"
mkdir -p "$PARTS"
for tarball in "$THIRD_PARTY"/*.tar.xz; do
  [ -e "$tarball" ] || die "no *.tar.xz in $THIRD_PARTY"
  name=$(basename "$tarball" .tar.xz)
  sum=$(sha256sum "$tarball" | cut -d' ' -f1)
  want=$(awk -v n="$name.tar.xz" '$2==n {print $1}' scripts/third_party.sha256)
  if [ -z "$want" ]; then
    say "$name.tar.xz is not in scripts/third_party.sha256: not unpacked (add its sha256 there to use it)"
    continue
  fi
  [ "$want" = "$sum" ] || die "$tarball: sha256 $sum, expected $want (scripts/third_party.sha256)"
  if [ "$(cat "$PARTS/$name/.tarball-sha256" 2>/dev/null)" = "$sum" ]; then
    say "$name present in $PARTS"
    continue
  fi
  say "unpacking $name into $PARTS"
  tmp=$(mktemp -d "$PARTS/.unpack.XXXXXX")
  tar -xJf "$tarball" -C "$tmp"
  [ -d "$tmp/$name/bin" ] || die "$tarball does not unpack into $name/bin"
  echo "$sum" > "$tmp/$name/.tarball-sha256"
  rm -rf "$PARTS/$name"
  mv "$tmp/$name" "$PARTS/$name"
  rmdir "$tmp"
done

# The boot test's guest kernel: Debian 12's cloud kernel, whatever `linux-image-cloud-amd64`
# (a metapackage) depends on from bookworm itself, downloaded and unpacked into $PARTS/guest, so
# nothing lands in the host's /boot and no initramfs hook runs. Kept while `version` names the
# package the metapackage points at now.
guest_kernel_package() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '$1=="Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}'
}
kernel_pkg=$(guest_kernel_package)
if [ -z "$kernel_pkg" ]; then apt_update; kernel_pkg=$(guest_kernel_package); fi
[ -n "$kernel_pkg" ] || die "apt knows no linux-image-cloud-amd64 to take the guest kernel from"
if [ -f "$PARTS/guest/vmlinuz" ] && [ "$(cat "$PARTS/guest/version" 2>/dev/null)" = "$kernel_pkg" ]; then
  say "guest kernel $kernel_pkg present in $PARTS/guest"
else
  say "unpacking $kernel_pkg into $PARTS/guest"
  tmp=$(mktemp -d "$PARTS/.guest.XXXXXX")
  chmod 755 "$tmp" # apt-get download writes as the _apt user where it can
  (cd "$tmp" && apt-get download -q "$kernel_pkg")
  dpkg-deb -x "$tmp"/"$kernel_pkg"_*.deb "$tmp/root"
  mkdir -p "$tmp/guest"
  cp "$tmp"/root/boot/vmlinuz-* "$tmp/guest/vmlinuz"
  echo "$kernel_pkg" > "$tmp/guest/version"
  rm -rf "$PARTS/guest"
  mv "$tmp/guest" "$PARTS/guest"
  rm -rf "$tmp"
fi
[ -f /usr/share/ovmf/OVMF.fd ] || die "ovmf is installed but /usr/share/ovmf/OVMF.fd is missing"

rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
python3 -c 'import kubernetes_validate' 2>/dev/null || {
  say "installing kubernetes-validate (Kubernetes schemas for the manifest tests)"
  python3 -m pip install -q kubernetes-validate
}
