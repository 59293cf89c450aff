#!/usr/bin/env bash
# Runs a command as Kata 3.30 needs it on a host without a syslog socket, inside the private
# mount namespace `unshare -m --propagation private` gives this script; the host's /dev and
# /opt are never changed:
#   - /dev becomes a tmpfs copy of the host's /dev (devpts and /dev/shm bound back) with
#     `busybox syslogd` on /dev/log, writing to SYSLOG; it dies with the command (its pid
#     is appended to SYSLOG.pids, for when the command dropped the right to signal it);
#   - with VSOCK=dir, /dev/vhost-vsock is a directory: `stat` passes, `open` fails. Never a
#     regular file: Kata then spins over 2^32 ioctls;
#   - /opt becomes an empty tmpfs holding the files listed in STUBS, one a line: `PATH` is
#     a small file, `PATH TARGET` a symbolic link (Kata checks that configured paths exist).
# Usage: kata-ns.sh SCRATCH SYSLOG VSOCK(none|dir) STUBS -- COMMAND [ARG…]
# SCRATCH is an empty directory to mount the new /dev on first.
set -euo pipefail
[ $# -ge 6 ] && [ "$5" = "--" ] || { echo "usage: $0 SCRATCH SYSLOG VSOCK STUBS -- COMMAND…" >&2; exit 2; }
scratch=$1 syslog=$2 vsock=$3 stubs=$4
shift 5

mount -t tmpfs -o mode=755 kata-ns-dev "$scratch"
cp -a /dev/. "$scratch"/ 2>/dev/null || true
for m in pts shm; do
  if mountpoint -q "/dev/$m"; then mount --rbind "/dev/$m" "$scratch/$m"; fi
done
mount --move "$scratch" /dev
rm -f /dev/log /dev/vhost-vsock
case $vsock in
  dir) mkdir /dev/vhost-vsock ;;
  none) ;;
  *) echo "$0: VSOCK is none or dir, not $vsock" >&2; exit 2 ;;
esac

mount -t tmpfs -o mode=755 kata-ns-opt /opt
while read -r path target; do
  [ -n "$path" ] || continue
  case $path in /opt/*) ;; *) echo "$0: $path is not under /opt" >&2; exit 2 ;; esac
  mkdir -p "$(dirname "$path")"
  if [ -n "${target:-}" ]; then ln -s "$target" "$path"; else echo stub >"$path"; fi
done <"$stubs"

# syslogd dies with this process (which becomes COMMAND) while COMMAND stays root; a COMMAND
# that drops privileges (setpriv --reuid) may no longer signal it, so its pid is also listed
# in SYSLOG.pids for whoever set the namespace up to kill.
setpriv --pdeathsig KILL busybox syslogd -n -O "$syslog" </dev/null >/dev/null 2>&1 &
echo $! >>"$syslog.pids"
for _ in $(seq 3000); do [ -S /dev/log ] && break; sleep 0.01; done
[ -S /dev/log ] || { echo "$0: busybox syslogd made no /dev/log" >&2; exit 1; }
exec "$@"
