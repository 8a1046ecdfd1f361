#!/usr/bin/env bash
# build.sh — build the tiny container root file system of goldvm's LXD tests.
#
# From one Debian package, busybox-static: rootfs/ holds busybox and its
# applet links, an /etc/os-release naming it, and an /sbin/init (a shell
# script) that brings eth0 up, keeps a DHCP lease (udhcpc) and exits on
# SIGPWR, LXD's clean-shutdown signal. The package has no metadata.yaml:
# the LXD driver builds one, as it does for any bare root file system.
#
# Usage: build.sh [--force]
#   Output dir: $GOLDVM_CONTAINER_DIR (default ~/.cache/goldvm/container),
#   holding container.tar.gz, stamp and the downloaded .deb.
#   Does nothing when the stamp matches (same build.sh, same busybox).
#   The last line on stdout is the path of container.tar.gz.
set -euo pipefail

FORCE=0
[[ "${1:-}" == "--force" || "${1:-}" == "-f" ]] && FORCE=1

log() { echo "container/build.sh: $*" >&2; }
OUT="${GOLDVM_CONTAINER_DIR:-${HOME:-/root}/.cache/goldvm/container}"
SELF="$(readlink -f "${BASH_SOURCE[0]}")"
mkdir -p "$OUT"

APT_OPTS=(-q)
[[ $(id -u) -eq 0 ]] && APT_OPTS+=(-o APT::Sandbox::User=root)

version=$(apt-cache policy busybox-static 2>/dev/null | awk '/Candidate:/ {print $2}')
if [[ -z "$version" || "$version" == "(none)" ]]; then
	log "running apt-get update"
	apt-get "${APT_OPTS[@]}" update >&2
	version=$(apt-cache policy busybox-static | awk '/Candidate:/ {print $2}')
fi
stamp="$(sha256sum "$SELF" | cut -d' ' -f1) busybox-static=$version"
if [[ $FORCE -eq 0 && -f "$OUT/container.tar.gz" && "$(cat "$OUT/stamp" 2>/dev/null)" == "$stamp" ]]; then
	echo "$OUT/container.tar.gz"
	exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get "${APT_OPTS[@]}" download "busybox-static=$version" >&2)
dpkg-deb -x "$work"/busybox-static_*.deb "$work/deb"

r="$work/pkg/rootfs"
mkdir -p "$r"/{bin,sbin,etc,proc,sys,dev,tmp,run,root,var/log}
cp "$work/deb/bin/busybox" "$r/bin/busybox"
for applet in $("$r/bin/busybox" --list); do
	[[ "$applet" == busybox || -e "$r/bin/$applet" ]] || ln -s busybox "$r/bin/$applet"
done
cat >"$r/etc/os-release" <<'OSR'
NAME="goldvm test container"
ID=goldvm-busybox
VERSION_ID=1
PRETTY_NAME="goldvm test container (busybox)"
OSR
echo goldvm >"$r/etc/hostname"
echo 'root:x:0:0:root:/root:/bin/sh' >"$r/etc/passwd"
echo 'root:x:0:' >"$r/etc/group"
cat >"$r/etc/udhcpc.sh" <<'DHCP'
#!/bin/sh
# udhcpc's hook: apply the lease to $interface.
case "$1" in
deconfig) ip addr flush dev "$interface" ;;
bound | renew)
	ip addr flush dev "$interface"
	ip addr add "$ip/$mask" dev "$interface"
	[ -n "$router" ] && ip route replace default via "${router%% *}" dev "$interface"
	;;
esac
exit 0
DHCP
cat >"$r/sbin/init" <<'INIT'
#!/bin/sh
# The test container's init: network by DHCP, then wait for SIGPWR (LXD's
# clean stop) or SIGTERM.
export PATH=/bin
trap 'kill $(cat /run/udhcpc.pid) 2>/dev/null; exit 0' PWR TERM INT
mount -t proc proc /proc 2>/dev/null
mount -t tmpfs tmpfs /run 2>/dev/null
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -s /etc/udhcpc.sh -b -p /run/udhcpc.pid -x hostname:goldvm
echo "goldvm test container: up"
while :; do
	sleep 3600 &
	wait $!
done
INIT
chmod 755 "$r/sbin/init" "$r/etc/udhcpc.sh"
chmod 1777 "$r/tmp"

tar --sort=name --mtime=@1700000000 --owner=0 --group=0 --numeric-owner \
	-C "$work/pkg" -cf - rootfs | gzip -9n >"$OUT/container.tar.gz.tmp"
mv "$OUT/container.tar.gz.tmp" "$OUT/container.tar.gz"
echo "$stamp" >"$OUT/stamp"
log "built $OUT/container.tar.gz ($(stat -c %s "$OUT/container.tar.gz") bytes)"
echo "$OUT/container.tar.gz"
