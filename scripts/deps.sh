#!/usr/bin/env bash
# Installs the Debian packages goldvm needs to run (QEMU, networking) and,
# with --test, what its tests need too. Safe to run again.
set -euo pipefail

# ovmf: UEFI firmware for VMs whose machine definition says "firmware": "uefi".
pkgs=(qemu-system-x86 qemu-utils ovmf dnsmasq-base iproute2 iptables nftables ca-certificates)
if [[ "${1:-}" == "--test" ]]; then
	# The test guest is built from Debian packages (kernel, busybox, qemu-guest-agent)
	# and made bootable with syslinux; the end-to-end tests package it with
	# tar/gzip/bzip2/zstd/xz/zip and ping the guests; one opens a VM's
	# window (QEMU's gtk display) on a virtual X server; the cloud-init seed
	# writer is checked with isoinfo (genisoimage) and xorriso.
	pkgs+=(syslinux syslinux-common mtools dosfstools busybox-static
		tar gzip bzip2 zstd xz-utils zip unzip iputils-ping util-linux
		qemu-system-gui xvfb x11-utils genisoimage xorriso
		# The lxd backend's tests run containers in a local LXD
		# (scripts/lxd-init.sh starts and initialises it).
		lxd lxd-client
		# The dashboard's test opens the web page in a headless browser.
		chromium)
fi

missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "goldvm: missing Debian packages: ${missing[*]} (run as root or: sudo apt-get install ${missing[*]})" >&2
		exit 1
	fi
	echo "goldvm: installing ${missing[*]}" >&2
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v go >/dev/null 2>&1; then
	if [[ -x /usr/local/go/bin/go ]]; then
		echo "goldvm: add /usr/local/go/bin to PATH" >&2
	else
		echo "goldvm: Go 1.26 or newer is needed (https://go.dev/dl/, or your distribution's golang package)" >&2
	fi
	exit 1
fi
