#!/usr/bin/env bash
# Makes a local LXD ready for goldvm's tests (and a one-host trial): starts
# the daemon when nothing answers on its socket (hosts without systemd, CI
# containers), then initialises it with a preseed when it has no storage
# pool yet: a dir storage pool "default", a bridge lxdbr0 on a fixed subnet
# (10.187.42.0/24, NAT, no IPv6) and the default profile on both. Safe to
# run again: an LXD that runs and has a pool is left as it is. Run as root.
#
# With LXD_DIR set it starts a daemon of that directory (never the
# system's service), and with GOLDVM_LXD_CLUSTER_MEMBER and
# GOLDVM_LXD_CLUSTER_ADDRESS set it bootstraps it as a one-member cluster
# (scripts/lxd-cluster-init.sh); GOLDVM_LXD_BRIDGE names the bridge, and
# GOLDVM_LXD_PARENT, instead, a host bridge another LXD manages that the
# default profile's NIC joins (for a cluster of several daemons on one
# host, which cannot each make a managed bridge of one name).
set -euo pipefail

subnet=${GOLDVM_LXD_SUBNET:-10.187.42.1/24}
bridge=${GOLDVM_LXD_BRIDGE:-lxdbr0}
log=${GOLDVM_LXD_LOG:-${LXD_DIR:-/var/log/lxd}/lxd.log}
parent=${GOLDVM_LXD_PARENT:-}
member=${GOLDVM_LXD_CLUSTER_MEMBER:-}
address=${GOLDVM_LXD_CLUSTER_ADDRESS:-}

if [[ $(id -u) -ne 0 ]]; then
	echo "lxd-init: run as root" >&2
	exit 1
fi
command -v lxd >/dev/null || { echo "lxd-init: lxd is not installed (scripts/deps.sh --test)" >&2; exit 1; }

if ! lxd waitready --timeout=1 >/dev/null 2>&1; then
	if [[ -z ${LXD_DIR:-} ]] && command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
		systemctl start lxd
	else
		mkdir -p "$(dirname "$log")"
		# Detached from this shell and its process group, so that it
		# outlives the test that started it, as a system service does.
		setsid lxd --group lxd --logfile="$log" </dev/null >/dev/null 2>&1 &
	fi
	lxd waitready --timeout=120
fi

if [[ -n $(lxc storage list --format csv 2>/dev/null) ]]; then
	exit 0
fi
config="config: {}"
cluster=""
if [[ -n $member ]]; then
	config=$'config:\n  core.https_address: '"$address"
	cluster=$'cluster:\n  server_name: '"$member"$'\n  enabled: true'
fi
networks=$(cat <<NETWORKS
networks:
- name: $bridge
  type: bridge
  config:
    ipv4.address: $subnet
    ipv4.nat: "true"
    ipv6.address: none
NETWORKS
)
nic="network: $bridge"
if [[ -n $parent ]]; then
	networks=""
	nic=$'nictype: bridged\n      parent: '"$parent"
fi
lxd init --preseed <<PRESEED
$config
$networks
storage_pools:
- name: default
  driver: dir
profiles:
- name: default
  devices:
    root:
      path: /
      pool: default
      type: disk
    eth0:
      name: eth0
      $nic
      type: nic
$cluster
PRESEED
