#!/usr/bin/env bash
# Starts LXD daemons beside the host's, each with a directory of its own,
# and makes them one LXD cluster (scripts/lxd-init.sh with cluster
# settings): GOLDVM_LXD_CLUSTER_MEMBERS members (default 1) named member1,
# member2, … listening on loopback from port GOLDVM_LXD_CLUSTER_PORT
# (default 18443) up, member1's directory GOLDVM_LXD_CLUSTER_DIR (default
# /var/lib/goldvm-test-lxd-cluster) and member N's that directory with -N
# appended; a dir storage pool and the default profile's NIC on a bridge
# member1 makes (goldvmbr1, 10.187.43.0/24, NAT, no IPv6), or, for several
# members (several daemons on one host cannot each make a bridge of one
# name), on the host LXD's lxdbr0 (scripts/lxd-init.sh first), whose DHCP
# serves them. goldvm's tests of what only a cluster does (placement
# ?target=, location, GET /capacity over /1.0/cluster/members, a member
# going offline, after 11 s without heartbeat) run against it; the host's own LXD stays standalone.
# Safe to run again. Run as root. The last line on stdout is member1's
# unix socket.
set -euo pipefail

self=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")
base=${GOLDVM_LXD_CLUSTER_DIR:-/var/lib/goldvm-test-lxd-cluster}
members=${GOLDVM_LXD_CLUSTER_MEMBERS:-1}
port=${GOLDVM_LXD_CLUSTER_PORT:-18443}

export GOLDVM_LXD_CLUSTER_ADDRESS=127.0.0.1:$port
export GOLDVM_LXD_CLUSTER_MEMBER=member1
export GOLDVM_LXD_SUBNET=${GOLDVM_LXD_CLUSTER_SUBNET:-10.187.43.1/24}
export GOLDVM_LXD_BRIDGE=goldvmbr1
if ((members > 1)); then
	bash "$self/lxd-init.sh" >&2
	export GOLDVM_LXD_PARENT=lxdbr0
fi
# start DIR starts the LXD daemon of DIR unless it answers.
start() {
	if ! LXD_DIR=$1 lxd waitready --timeout=1 >/dev/null 2>&1; then
		LXD_DIR=$1 setsid lxd --group lxd --logfile="$1/lxd.log" </dev/null >/dev/null 2>&1 &
	fi
}
# Members made before start together: none is ready without a quorum of
# the cluster's database.
for ((i = 2; i <= members; i++)); do
	[[ -d $base-$i/database/global ]] && start "$base-$i"
done
export LXD_DIR=$base
mkdir -p "$LXD_DIR"
chmod 0711 "$LXD_DIR"
bash "$self/lxd-init.sh" >&2
# A member without heartbeat for 11 s (LXD's least) is offline.
lxc config set cluster.offline_threshold 11

for ((i = 2; i <= members; i++)); do
	dir=$base-$i
	mkdir -p "$dir"
	chmod 0711 "$dir"
	start "$dir"
	LXD_DIR=$dir lxd waitready --timeout=120
	if LXD_DIR=$dir lxc cluster list --format csv >/dev/null 2>&1; then
		continue
	fi
	LXD_DIR=$dir lxc config set core.https_address "127.0.0.1:$((port + i - 1))"
	token=$(LXD_DIR=$base lxc cluster add "member$i" --quiet)
	LXD_DIR=$dir lxd init --preseed >&2 <<PRESEED
cluster:
  enabled: true
  server_name: member$i
  server_address: 127.0.0.1:$((port + i - 1))
  cluster_address: 127.0.0.1:$port
  cluster_token: $token
  member_config:
  - entity: storage-pool
    name: default
    key: source
    value: ""
PRESEED
done
# A restarted member is listed offline until its first heartbeat.
for _ in $(seq 60); do
	[[ $(LXD_DIR=$base lxc cluster list --format csv | grep -vc ',ONLINE,Fully operational$') -eq 0 ]] && break
	sleep 1
done
echo "$base/unix.socket"
