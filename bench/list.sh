#!/bin/sh
# Measures listing at scale: a 50-record page of GET /vms (plain, from the
# middle, filtered by status, by tag, by both) against GET /vms/{id}, on
# the real API over loopback HTTP, at 1,000 and 100,000 VM records. The
# rows take turns, so load on the machine weighs on all alike; the column
# p50/get is the ratio to GET /vms/{id} in the same run. GET /vms without
# a limit is the full list, for scale. The first line gives the time Open
# took to build the listing indexes of a database that had none.
#
#   bench/list.sh                       # about 3 minutes on 2 cores
#   SIZES=1000 REQS=500 bench/list.sh   # quicker
#
# To profile: go run ./bench/listbench -n 100000 -cpuprofile cpu.prof
set -eu
cd "$(dirname "$0")/.."
SIZES=${SIZES:-1000 100000}
REQS=${REQS:-2000}
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go build -o "$bin/listbench" ./bench/listbench
for n in $SIZES; do
	full=20
	[ "$n" -gt 10000 ] && full=3
	"$bin/listbench" -n "$n" -reqs "$REQS" -full "$full"
	echo
done
