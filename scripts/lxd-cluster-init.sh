#!/usr/bin/env bash
# Starts a second LXD daemon beside the host's, with a directory of its own,
# bootstrapped as a one-member LXD cluster (scripts/lxd-init.sh with cluster
# settings): member "member1" listening on 127.0.0.1:18443 (loopback only),
# a dir storage pool, a bridge goldvmbr1 on a fixed subnet (10.187.43.0/24,
# NAT, no IPv6) and the default profile on both. goldvm's tests of what only
# a cluster does (placement ?target=, location, GET /capacity over
# /1.0/cluster/members) run against it; the host's own LXD stays
# standalone. Safe to run again. Run as root. The last line on stdout is
# the daemon's unix socket.
set -euo pipefail

export LXD_DIR=${GOLDVM_LXD_CLUSTER_DIR:-/var/lib/goldvm-test-lxd-cluster}
export GOLDVM_LXD_CLUSTER_ADDRESS=${GOLDVM_LXD_CLUSTER_ADDRESS:-127.0.0.1:18443}
export GOLDVM_LXD_CLUSTER_MEMBER=member1
export GOLDVM_LXD_SUBNET=${GOLDVM_LXD_CLUSTER_SUBNET:-10.187.43.1/24}
export GOLDVM_LXD_BRIDGE=goldvmbr1
mkdir -p "$LXD_DIR"
chmod 0711 "$LXD_DIR"
bash "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/lxd-init.sh" >&2
echo "$LXD_DIR/unix.socket"
