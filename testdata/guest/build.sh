#!/usr/bin/env bash
# build.sh — build a tiny bootable guest disk for goldvm's QEMU tests.
#
# Everything comes from Debian packages: the cloud kernel, busybox-static and
# qemu-guest-agent (plus the host's copies of the shared libraries qemu-ga
# links against). The result is a FAT "superfloppy" disk booted by syslinux,
# holding the kernel and a busybox initramfs that loads the virtio drivers,
# gets an address by DHCP, runs qemu-ga on the virtio-serial port
# org.qemu.guest_agent.0 and powers off on an ACPI power-button event. If a
# cidata CD-ROM (cloud-init NoCloud seed) is attached it prints its user-data
# on the console, and it prints what the metadata service at 169.254.169.254
# says about it.
#
# Usage: build.sh [--force]
#   Output dir: $GOLDVM_GUEST_DIR (default ~/.cache/goldvm/guest), holding
#   guest.qcow2, guest.raw, guest-noagent.qcow2 (the same guest without
#   qemu-guest-agent), stamp and debs/ (the downloaded packages).
#   Does nothing when the stamp matches (same build.sh, same package versions).
#   The last line on stdout is the path of guest.qcow2; logs go to stderr.
set -euo pipefail

FORCE=0
for arg in "$@"; do
	case "$arg" in
	--force | -f) FORCE=1 ;;
	-h | --help)
		sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "build.sh: unknown argument: $arg" >&2
		exit 2
		;;
	esac
done

log() { echo "build.sh: $*" >&2; }
die() {
	echo "build.sh: error: $*" >&2
	exit 1
}

OUT="${GOLDVM_GUEST_DIR:-${HOME:-/root}/.cache/goldvm/guest}"
DEBS="$OUT/debs"
SELF="$(readlink -f "${BASH_SOURCE[0]}")"
ARCH="$(dpkg --print-architecture)"
[ "$ARCH" = amd64 ] || die "only amd64 hosts are supported (got $ARCH)"

# Modules to load, in dependency order (the initramfs has no modules.dep).
MODULES="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_net virtio_console virtio_blk button evdev scsi_common scsi_mod cdrom sr_mod virtio_scsi isofs"
QGA_PORT_NAME="org.qemu.guest_agent.0"
KERNEL_CMDLINE="console=ttyS0,115200 panic=-1 loglevel=4 cryptomgr.notests tsc=reliable no_timer_check 8250.nr_uarts=1 i8042.noaux scsi_mod.scan=sync"
DISK_MIN_KIB=32768

APT_OPTS=(-q)
if [ "$(id -u)" = 0 ]; then
	# apt's _apt sandbox user cannot write into root-owned cache dirs.
	APT_OPTS+=(-o APT::Sandbox::User=root)
fi

APT_UPDATED=0
apt_update_once() {
	[ "$APT_UPDATED" = 1 ] && return 0
	APT_UPDATED=1
	log "running apt-get update"
	[ "$(id -u)" = 0 ] || die "apt-get update needs root"
	apt-get "${APT_OPTS[@]}" update >&2
}

# ---- build dependencies ---------------------------------------------------
need_pkgs=()
command -v syslinux >/dev/null || need_pkgs+=(syslinux)
[ -e /usr/lib/syslinux/modules/bios/ldlinux.c32 ] || need_pkgs+=(syslinux-common)
command -v mcopy >/dev/null || need_pkgs+=(mtools)
command -v mkfs.vfat >/dev/null || [ -x /usr/sbin/mkfs.vfat ] || [ -x /sbin/mkfs.vfat ] || need_pkgs+=(dosfstools)
command -v qemu-img >/dev/null || need_pkgs+=(qemu-utils)
command -v mkfs.ext4 >/dev/null || [ -x /usr/sbin/mkfs.ext4 ] || [ -x /sbin/mkfs.ext4 ] || need_pkgs+=(e2fsprogs)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
	[ "$(id -u)" = 0 ] || die "missing build dependencies (${need_pkgs[*]}); install them as root"
	log "installing build dependencies: ${need_pkgs[*]}"
	if ! DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${need_pkgs[@]}" >&2; then
		apt_update_once
		DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y --no-install-recommends "${need_pkgs[@]}" >&2
	fi
fi
PATH="$PATH:/usr/sbin:/sbin"

# ---- package versions -------------------------------------------------------
kernel_pkg() {
	apt-cache depends linux-image-cloud-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }'
}
# candidates PKG... prints "PKG VERSION" per package ("(none)" when not installable).
candidates() {
	apt-cache policy "$@" 2>/dev/null |
		awk '/^[^ ].*:$/ { sub(/:$/, ""); pkg = $0 } $1 == "Candidate:" { print pkg, $2 }'
}

KPKG="$(kernel_pkg)"
if [ -z "$KPKG" ]; then
	apt_update_once
	KPKG="$(kernel_pkg)"
fi
[ -n "$KPKG" ] || die "cannot find the kernel package behind linux-image-cloud-amd64"
PKGS=("$KPKG" busybox-static qemu-guest-agent)
declare -A VER
read_versions() {
	local p v
	VER=()
	while read -r p v; do
		[ "$v" = "(none)" ] || VER[$p]="$v"
	done < <(candidates "${PKGS[@]}")
	for p in "${PKGS[@]}"; do
		[ -n "${VER[$p]:-}" ] || return 1
	done
}
if ! read_versions; then
	apt_update_once
	read_versions || die "no installable version of one of: ${PKGS[*]}"
fi

deb_path() { echo "$DEBS/${1}_${2//:/%3a}_${ARCH}.deb"; }

# Versions of the host libraries qemu-ga is linked against (they are copied in).
host_lib_versions() {
	local deb
	deb="$(deb_path qemu-guest-agent "${VER[qemu-guest-agent]}")"
	[ -f "$deb" ] || {
		echo "libs=unknown"
		return 0
	}
	local names
	names="$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' | grep -v '^$' | sort -u)"
	# shellcheck disable=SC2086
	dpkg-query -W -f '${Package}=${Version} ' $names 2>/dev/null || true
	echo
}

stamp_content() {
	{
		sha256sum <"$SELF" | cut -d' ' -f1
		for p in "${PKGS[@]}"; do echo "$p=${VER[$p]}"; done
		host_lib_versions
	} | sha256sum | cut -d' ' -f1
	echo "kernel=$KPKG ${VER[$KPKG]}"
	echo "busybox-static=${VER[busybox-static]}"
	echo "qemu-guest-agent=${VER[qemu-guest-agent]}"
}

mkdir -p "$OUT" "$DEBS"
exec 9>"$OUT/.lock"
flock 9

if [ "$FORCE" = 0 ] && [ -f "$OUT/stamp" ] && [ -f "$OUT/guest.qcow2" ] && [ -f "$OUT/guest.raw" ] && [ -f "$OUT/guest-noagent.qcow2" ] &&
	[ "$(cat "$OUT/stamp")" = "$(stamp_content)" ]; then
	log "up to date ($OUT/stamp)"
	echo "$OUT/guest.qcow2"
	exit 0
fi

# ---- download -------------------------------------------------------------
download() {
	(cd "$DEBS" && apt-get "${APT_OPTS[@]}" download "$@" >&2)
}
want=()
for p in "${PKGS[@]}"; do
	[ -f "$(deb_path "$p" "${VER[$p]}")" ] || want+=("$p=${VER[$p]}")
done
if [ "${#want[@]}" -gt 0 ]; then
	log "downloading ${want[*]}"
	if ! download "${want[@]}"; then
		apt_update_once
		download "${want[@]}"
	fi
fi
for p in "${PKGS[@]}"; do
	f="$(deb_path "$p" "${VER[$p]}")"
	[ -f "$f" ] || die "download of $p did not produce $f"
	# Drop older versions of the same package from the cache.
	for old in "$DEBS/${p}_"*.deb; do
		[ "$old" = "$f" ] || rm -f -- "$old"
	done
done

# ---- unpack ---------------------------------------------------------------
WORK="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf -- "$WORK"' EXIT
X="$WORK/x"
R="$WORK/root"
mkdir -p "$X" "$R"
for p in "${PKGS[@]}"; do
	dpkg-deb -x "$(deb_path "$p" "${VER[$p]}")" "$X"
done
KVER="${KPKG#linux-image-}"
VMLINUZ="$X/boot/vmlinuz-$KVER"
[ -f "$VMLINUZ" ] || die "kernel not found at $VMLINUZ"
BB="$X/bin/busybox"
[ -x "$BB" ] || BB="$X/usr/bin/busybox"
[ -x "$BB" ] || die "busybox not found in busybox-static"
QGA="$X/usr/sbin/qemu-ga"
[ -x "$QGA" ] || QGA="$X/usr/bin/qemu-ga"
[ -x "$QGA" ] || die "qemu-ga not found in qemu-guest-agent"

# ---- initramfs tree -------------------------------------------------------
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,run,tmp,root,mnt,var/log,lib/modules,lib64,lib/x86_64-linux-gnu}
chmod 1777 "$R/tmp"
ln -s ../run "$R/var/run"
if [ "$(id -u)" = 0 ]; then
	mknod -m 600 "$R/dev/console" c 5 1
	mknod -m 666 "$R/dev/null" c 1 3
fi

# busybox and its applets
cp "$BB" "$R/bin/busybox"
"$BB" --list-full | while read -r applet; do
	case "$applet" in "" | linuxrc | bin/busybox) continue ;; esac
	[ -e "$R/$applet" ] || [ -L "$R/$applet" ] && continue
	ln -s /bin/busybox "$R/$applet"
done

# kernel modules (decompressed: busybox insmod may not read .ko.xz/.ko.zst)
MODSRC="$X/lib/modules/$KVER/kernel"
[ -d "$MODSRC" ] || MODSRC="$X/usr/lib/modules/$KVER/kernel"
[ -d "$MODSRC" ] || die "no modules for $KVER"
: >"$R/etc/goldvm-modules"
for m in $MODULES; do
	src="$(find "$MODSRC" -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" | head -n1)"
	if [ -z "$src" ]; then
		if grep -q "/$m.ko" "$X/lib/modules/$KVER/modules.builtin" 2>/dev/null; then
			log "module $m is built in"
			continue
		fi
		die "module $m not found in $KPKG"
	fi
	case "$src" in
	*.ko) cp "$src" "$R/lib/modules/$m.ko" ;;
	*.ko.xz) xz -dc "$src" >"$R/lib/modules/$m.ko" ;;
	*.ko.zst) zstd -qdc "$src" >"$R/lib/modules/$m.ko" ;;
	*.ko.gz) gzip -dc "$src" >"$R/lib/modules/$m.ko" ;;
	esac
	echo "$m" >>"$R/etc/goldvm-modules"
done

# qemu-ga and its shared libraries (taken from the host, as ldd resolves them)
cp "$QGA" "$R/usr/sbin/qemu-ga"
ldd_out="$(ldd "$QGA" 2>&1 || true)"
if grep -q 'not found' <<<"$ldd_out"; then
	libpkgs="$(dpkg-deb -f "$(deb_path qemu-guest-agent "${VER[qemu-guest-agent]}")" Depends |
		tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/[[:space:]]//g' | grep -v '^$')"
	[ "$(id -u)" = 0 ] || die "qemu-ga libraries missing on the host: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t\n' ' ')"
	log "installing qemu-ga's libraries on the host: $(echo $libpkgs)"
	# shellcheck disable=SC2086
	if ! DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y --no-install-recommends $libpkgs >&2; then
		apt_update_once
		# shellcheck disable=SC2086
		DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y --no-install-recommends $libpkgs >&2
	fi
	ldd_out="$(ldd "$QGA" 2>&1)"
	! grep -q 'not found' <<<"$ldd_out" || die "qemu-ga libraries still missing: $ldd_out"
fi
while read -r lib; do
	[ -n "$lib" ] || continue
	mkdir -p "$R$(dirname "$lib")"
	cp -L "$lib" "$R$lib"
done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | sort -u)
[ -e "$R/lib64/ld-linux-x86-64.so.2" ] || die "dynamic loader not copied (ldd output: $ldd_out)"

# ---- /etc -----------------------------------------------------------------
cat >"$R/etc/os-release" <<'EOF'
NAME="goldvm test guest"
PRETTY_NAME="goldvm test guest (Debian kernel, busybox)"
ID=goldvm-testguest
VERSION_ID="1"
VERSION="1"
HOME_URL="https://github.com/goldvm/goldvm"
EOF
ln -s ../../etc/os-release "$R/usr/lib/os-release" 2>/dev/null || {
	mkdir -p "$R/usr/lib"
	ln -s ../../etc/os-release "$R/usr/lib/os-release"
}
cat >"$R/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$R/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
echo "root::0:0:99999:7:::" >"$R/etc/shadow"
chmod 600 "$R/etc/shadow"
echo goldvm-guest >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tgoldvm-guest\n' >"$R/etc/hosts"
cat >"$R/etc/nsswitch.conf" <<'EOF'
passwd: files
group: files
shadow: files
hosts: files dns
EOF
echo 'export PS1="goldvm-guest# " PATH=/sbin:/bin:/usr/sbin:/usr/bin' >"$R/etc/profile"

# ACPI power button -> immediate poweroff (QMP system_powerdown)
mkdir -p "$R/etc/acpi/PWRF"
cat >"$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "goldvm-guest: power button, powering off" >/dev/console
sync
exec poweroff -f
EOF
chmod 755 "$R/etc/acpi/PWRF/00000080"

# qemu-ga's guest-shutdown runs /sbin/shutdown -P|-H|-r +0 "message"
rm -f "$R/sbin/shutdown"
cat >"$R/sbin/shutdown" <<'EOF'
#!/bin/sh
# Stand-in for shutdown(8), used by qemu-ga's guest-shutdown.
mode=poweroff
for a in "$@"; do
	case "$a" in
	-r) mode=reboot ;;
	-H | -h) mode=halt ;;
	-P) mode=poweroff ;;
	esac
done
echo "goldvm-guest: shutdown ($mode) requested" >/dev/console
sync
( sleep 1; $mode -f ) </dev/null >/dev/null 2>&1 &
exit 0
EOF
chmod 755 "$R/sbin/shutdown"

# DHCP hook for udhcpc
mkdir -p "$R/etc/udhcpc"
cat >"$R/etc/udhcpc/hook" <<'EOF'
#!/bin/sh
# udhcpc hook: configure $interface from the lease.
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound | renew)
	old="$(cat /run/goldvm-ip 2>/dev/null || true)"
	if [ "$1" = bound ] || [ "$old" != "$ip" ]; then
		ip -4 addr flush dev "$interface"
	fi
	if [ -n "$broadcast" ]; then
		ip addr replace "$ip/${mask:-24}" broadcast "$broadcast" dev "$interface"
	else
		ip addr replace "$ip/${mask:-24}" dev "$interface"
	fi
	if [ -n "$router" ]; then
		while ip route del default dev "$interface" 2>/dev/null; do :; done
		for r in $router; do
			ip route add default via "$r" dev "$interface" && break
		done
	fi
	: >/run/resolv.conf
	[ -n "$domain" ] && echo "search $domain" >>/run/resolv.conf
	for d in $dns; do echo "nameserver $d" >>/run/resolv.conf; done
	echo "$ip" >/run/goldvm-ip
	# classless static routes (option 121), e.g. to the metadata address
	if [ -n "$staticroutes" ]; then
		set -- $staticroutes
		while [ $# -ge 2 ]; do
			ip route replace "$1" via "$2" dev "$interface"
			shift 2
		done
	fi
	;;
esac
exit 0
EOF
chmod 755 "$R/etc/udhcpc/hook"
ln -sf ../run/resolv.conf "$R/etc/resolv.conf"

# qemu-ga supervisor: find the port by name, (re)start qemu-ga on it
cat >"$R/sbin/goldvm-qga" <<EOF
#!/bin/sh
# Run qemu-ga on the virtio-serial port named $QGA_PORT_NAME; restart it if it dies.
find_port() {
	for d in /sys/class/virtio-ports/*; do
		[ -r "\$d/name" ] || continue
		if [ "\$(cat "\$d/name")" = "$QGA_PORT_NAME" ]; then
			echo "/dev/\${d##*/}"
			return 0
		fi
	done
	return 1
}
while :; do
	port="\$(find_port || true)"
	if [ -n "\$port" ] && [ -e "\$port" ]; then
		echo "\$(date) starting qemu-ga on \$port" >>/run/qemu-ga.log
		/usr/sbin/qemu-ga -m virtio-serial -p "\$port" -t /run -f /run/qemu-ga.pid >>/run/qemu-ga.log 2>&1
		echo "\$(date) qemu-ga exited: \$?" >>/run/qemu-ga.log
	fi
	sleep 1
done
EOF
chmod 755 "$R/sbin/goldvm-qga"

cat >"$R/etc/inittab" <<'EOF'
# busybox init: /init has done the setup already; keep a shell on the console.
::respawn:/bin/sh -c '/bin/cttyhack /bin/sh -l; sleep 1'
::ctrlaltdel:/sbin/poweroff -f
EOF

cat >"$R/init" <<'EOF'
#!/bin/sh
# goldvm test guest: set up, then hand over to busybox init (PID 1 stays).
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
umask 022
mount -t proc proc /proc
mount -t sysfs sysfs /sys
if ! mount -t devtmpfs devtmpfs /dev 2>/dev/null; then
	mount -t tmpfs -o mode=0755 tmpfs /dev
	USE_MDEV=1
fi
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
[ -e /dev/console ] || mknod -m 600 /dev/console c 5 1
exec </dev/console >/dev/console 2>&1
hostname -F /etc/hostname

echo "goldvm-guest: loading modules"
while read -r m; do
	[ -n "$m" ] || continue
	insmod "/lib/modules/$m.ko" || echo "goldvm-guest: insmod $m failed"
done </etc/goldvm-modules
if [ -n "$USE_MDEV" ]; then
	echo /sbin/mdev >/proc/sys/kernel/hotplug
	mdev -s
fi

# qemu-ga (needs virtio_console; absent from the no-agent variant) and
# acpid (needs button + evdev)
[ -x /usr/sbin/qemu-ga ] && /sbin/goldvm-qga </dev/null >/dev/null 2>&1 &
acpid -l /run/acpid.log || echo "goldvm-guest: acpid failed"

# network
ip link set lo up
n=0
while [ ! -e /sys/class/net/eth0 ] && [ "$n" -lt 50 ]; do
	sleep 0.1
	n=$((n + 1))
done
ip=
if [ -e /sys/class/net/eth0 ]; then
	ip link set eth0 up
	udhcpc -i eth0 -s /etc/udhcpc/hook -x hostname:goldvm-guest -O staticroutes -t 15 -T 1 -A 2 -b >/dev/null 2>&1
	ip="$(cat /run/goldvm-ip 2>/dev/null)"
else
	echo "goldvm-guest: no eth0"
fi

# a cloud-init NoCloud seed (an ISO 9660 CD-ROM labelled cidata): print its user-data
for dev in /dev/sr0 /dev/sr1; do
	[ -b "$dev" ] || continue
	mkdir -p /run/cidata
	mount -t iso9660 -o ro "$dev" /run/cidata 2>/dev/null || continue
	if [ -f /run/cidata/meta-data ]; then
		echo "goldvm-guest: cidata $dev user-data begin"
		cat /run/cidata/user-data
		echo
		echo "goldvm-guest: cidata user-data end"
		break
	fi
	umount /run/cidata
done

# what the metadata service says about this VM (in the background: none may
# answer). busybox's static wget crashes on a refused connection: use nc.
if [ -n "$ip" ]; then
	(
		for try in 1 2 3; do
			md="$(printf 'GET /goldvm/v1/vm HTTP/1.0\r\nHost: 169.254.169.254\r\n\r\n' |
				nc -w 5 169.254.169.254 80 2>/dev/null | sed '1,/^\r*$/d')"
			[ -n "$md" ] && echo "goldvm-guest: metadata $md" && break
			sleep 2
		done
	) </dev/null >/dev/console 2>/dev/null &
fi

# wait (briefly) for qemu-ga to be running before announcing readiness
n=0
while [ -x /usr/sbin/qemu-ga ] && ! pidof qemu-ga >/dev/null && [ "$n" -lt 30 ]; do
	sleep 0.1
	n=$((n + 1))
done
pidof qemu-ga >/dev/null && qga=running || qga=none

# ---- hardware report (machine definitions): what this guest sees ----
cpus="$(grep -c '^processor' /proc/cpuinfo)"
sib="$(awk -F': ' '/^siblings/ { print $2; exit }' /proc/cpuinfo)"
cores="$(awk -F': ' '/^cpu cores/ { print $2; exit }' /proc/cpuinfo)"
nics=
for d in /sys/bus/pci/devices/*; do
	case "$(cat "$d/class")" in 0x0200*) ;; *) continue ;; esac
	nics="$nics $(cat "$d/vendor"):$(cat "$d/device")"
done
drv=none
[ -e /sys/class/net/eth0/device/driver ] && drv="$(basename "$(readlink /sys/class/net/eth0/device/driver)")"
echo "goldvm-guest: hw cpus=$cpus siblings=${sib:-?} cores=${cores:-?} nic=${nics# } eth0=$drv"
# ---- end of hardware report ----

read -r up _ </proc/uptime
echo "goldvm-guest: ready ip=${ip:-none} qga=$qga uptime=$up"
exec /sbin/init
EOF
chmod 755 "$R/init"

# ---- initramfs and disk -----------------------------------------------------
# make_disk NAME [parted]: the initramfs of $R on a bootable FAT disk,
# $WORK/NAME.raw and .qcow2. With "parted" the disk has an MBR partition
# table: the FAT file system (active, booted by syslinux's mbr.bin) in the
# first partition, and a small ext4 file system in the second holding $R's
# os-release (/etc/os-release a symlink to ../usr/lib/os-release, as in
# Debian), where a stock cloud image has its root file system: goldvm reads
# the OS of an image whose guest agent does not answer from it. The guest
# itself still runs from its initramfs.
make_disk() {
	local name="$1" parted="${2:-}" disk_kib need_kib off=0
	local fat="$WORK/$name.raw"
	(cd "$R" && find . -mindepth 1 | sort | "$BB" cpio -o -H newc 2>/dev/null) | gzip -9n >"$WORK/$name-initrd.gz"
	need_kib=$((($(stat -c %s "$VMLINUZ") + $(stat -c %s "$WORK/$name-initrd.gz")) / 1024 + 4096))
	disk_kib=$DISK_MIN_KIB
	while [ "$disk_kib" -lt "$need_kib" ]; do disk_kib=$((disk_kib + 8192)); done
	if [ -n "$parted" ]; then
		fat="$WORK/$name-boot.raw"
		off=2048 # sectors: the first partition starts at 1 MiB
	fi
	mkfs.vfat -n GOLDVM -h "$off" -C "$fat" "$disk_kib" >/dev/null
	mcopy -i "$fat" "$VMLINUZ" ::/vmlinuz
	mcopy -i "$fat" "$WORK/$name-initrd.gz" ::/initrd.gz
	mcopy -i "$fat" "$WORK/syslinux.cfg" ::/syslinux.cfg
	syslinux --install "$fat" # the BPB says where it lies on the disk (-h)
	if [ -n "$parted" ]; then
		local root="$WORK/$name-rootfs" root_kib=4096 disk="$WORK/$name.raw"
		rm -rf "$root"
		mkdir -p "$root/etc" "$root/usr/lib"
		cp "$R/etc/os-release" "$root/usr/lib/os-release"
		ln -s ../usr/lib/os-release "$root/etc/os-release"
		mkfs.ext4 -q -F -L goldvm-root -d "$root" "$WORK/$name-root.raw" "${root_kib}k" >&2
		rm -f "$disk"
		truncate -s $(((1024 + disk_kib + root_kib) * 1024)) "$disk"
		dd if=/usr/lib/syslinux/mbr/mbr.bin of="$disk" bs=440 count=1 conv=notrunc status=none
		dd if="$fat" of="$disk" bs=1M seek=1 conv=notrunc status=none
		dd if="$WORK/$name-root.raw" of="$disk" bs=1k seek=$((1024 + disk_kib)) conv=notrunc status=none
		{
			mbr_entry 0x80 0x0e "$off" $((disk_kib * 2))
			mbr_entry 0x00 0x83 $((off + disk_kib * 2)) $((root_kib * 2))
			printf '\0%.0s' $(seq 1 32) # entries 3 and 4: unused
			printf '\x55\xaa'
		} | dd of="$disk" bs=1 seek=446 conv=notrunc status=none
		rm -rf "$fat" "$root" "$WORK/$name-root.raw"
	fi
	qemu-img convert -f raw -O qcow2 "$WORK/$name.raw" "$WORK/$name.qcow2"
	log "made $name.qcow2 (initrd $(($(stat -c %s "$WORK/$name-initrd.gz") / 1024)) KiB, disk $((disk_kib / 1024)) MiB${parted:+, partitioned})"
}
# mbr_entry STATUS TYPE START COUNT: a 16-byte MBR partition entry (LBA only).
mbr_entry() {
	byte "$1"
	byte 0xfe; byte 0xff; byte 0xff
	byte "$2"
	byte 0xfe; byte 0xff; byte 0xff
	le32 "$3"
	le32 "$4"
}
le32() { byte $(($1 & 255)); byte $((($1 >> 8) & 255)); byte $((($1 >> 16) & 255)); byte $((($1 >> 24) & 255)); }
# byte N: the byte of value N.
byte() { printf "\\$(printf '%03o' $(($1)))"; }
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT goldvm
PROMPT 0
TIMEOUT 0
LABEL goldvm
  LINUX /vmlinuz
  INITRD /initrd.gz
  APPEND $KERNEL_CMDLINE
EOF
export MTOOLS_SKIP_CHECK=1
make_disk guest
# The variant without a guest agent: the same tree minus qemu-ga.
rm -f "$R/usr/sbin/qemu-ga" "$R/sbin/goldvm-qga"
sed -i 's/^PRETTY_NAME=.*/PRETTY_NAME="goldvm test guest without agent (Debian kernel, busybox)"/' "$R/etc/os-release"
make_disk guest-noagent parted

# ---- publish atomically ---------------------------------------------------
stamp_content >"$WORK/stamp"
sync -f "$WORK/guest.qcow2" 2>/dev/null || sync
rm -f "$OUT/stamp"
mv -f "$WORK/guest.raw" "$OUT/guest.raw"
mv -f "$WORK/guest.qcow2" "$OUT/guest.qcow2"
mv -f "$WORK/guest-noagent.qcow2" "$OUT/guest-noagent.qcow2"
mv -f "$WORK/stamp" "$OUT/stamp"
log "built $OUT/guest.qcow2 and $OUT/guest-noagent.qcow2 (kernel $KPKG ${VER[$KPKG]})"
echo "$OUT/guest.qcow2"
