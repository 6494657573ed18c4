#!/bin/sh
# Install the tvcfs mount helpers and the systemd unit template (run as root).
#
#   packaging/install.sh [--tvcfs PATH] [--sbindir DIR] [--unitdir DIR]
#                        [--destdir DIR] [--no-systemd] [--uninstall]
#
# Installs
#   SBINDIR/mount.fuse.tvcfs     so `mount -t fuse.tvcfs REPO MNT` and fstab lines work
#   SBINDIR/umount.fuse.tvcfs    so `umount MNT` waits for pending commits
#   UNITDIR/tvcfs-mount@.service systemd unit template (not with --no-systemd)
#   UNITDIR/tvcfs-hub.service    systemd unit of a hub (not with --no-systemd)
#   /etc/tvcfs/mounts/           directory for the unit's INSTANCE.conf files
# with @TVCFS@ replaced by the absolute path of the tvcfs executable (--tvcfs, else
# the `tvcfs` found on PATH). SBINDIR defaults to /sbin (mount(8) looks only there;
# on merged-/usr systems it is /usr/sbin), UNITDIR to /etc/systemd/system.
# --destdir prefixes every path (for packages). Idempotent; --uninstall removes them.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
tvcfs=
sbindir=/sbin
unitdir=/etc/systemd/system
destdir=
systemd=1
uninstall=0
while [ $# -gt 0 ]; do
  case $1 in
    --tvcfs) tvcfs=$2; shift 2 ;;
    --sbindir) sbindir=$2; shift 2 ;;
    --unitdir) unitdir=$2; shift 2 ;;
    --destdir) destdir=$2; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 1 ;;
  esac
done

if [ "$uninstall" = 1 ]; then
  rm -f "$destdir$sbindir/mount.fuse.tvcfs" "$destdir$sbindir/umount.fuse.tvcfs"
  if [ "$systemd" = 1 ]; then
    rm -f "$destdir$unitdir/tvcfs-mount@.service" "$destdir$unitdir/tvcfs-hub.service"
    if [ -z "$destdir" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
      systemctl daemon-reload || true
    fi
  fi
  echo "removed the tvcfs mount helpers"
  exit 0
fi

if [ -z "$tvcfs" ]; then
  tvcfs=$(command -v tvcfs || true)
  [ -n "$tvcfs" ] || { echo "install.sh: tvcfs is not on PATH; pass --tvcfs PATH" >&2; exit 1; }
fi
case $tvcfs in
  /*) ;;
  *) tvcfs=$(cd "$(dirname "$tvcfs")" && pwd)/$(basename "$tvcfs") ;;
esac
# pyenv and similar shims resolve the real executable from the caller's environment,
# which mount(8) and systemd do not have: record the real script.
if head -c 256 "$tvcfs" 2>/dev/null | grep -q pyenv && command -v pyenv >/dev/null 2>&1; then
  real=$(pyenv which tvcfs 2>/dev/null || true)
  [ -n "$real" ] && tvcfs=$real
fi
[ -x "$tvcfs" ] || { echo "install.sh: $tvcfs is not executable" >&2; exit 1; }

subst() {  # subst SRC DEST MODE
  tmp="$2.tmp.$$"
  sed "s|@TVCFS@|$tvcfs|g" "$1" > "$tmp"
  chmod "$3" "$tmp"
  mv -f "$tmp" "$2"
}

mkdir -p "$destdir$sbindir"
subst "$here/mount.fuse.tvcfs" "$destdir$sbindir/mount.fuse.tvcfs" 0755
subst "$here/umount.fuse.tvcfs" "$destdir$sbindir/umount.fuse.tvcfs" 0755
echo "installed $destdir$sbindir/mount.fuse.tvcfs and umount.fuse.tvcfs (tvcfs: $tvcfs)"
if [ "$systemd" = 1 ]; then
  mkdir -p "$destdir$unitdir" "$destdir/etc/tvcfs/mounts"
  subst "$here/tvcfs-mount@.service" "$destdir$unitdir/tvcfs-mount@.service" 0644
  subst "$here/tvcfs-hub.service" "$destdir$unitdir/tvcfs-hub.service" 0644
  echo "installed $destdir$unitdir/tvcfs-mount@.service and tvcfs-hub.service"
  if [ -z "$destdir" ] && command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
  fi
fi
