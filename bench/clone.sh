#!/usr/bin/env bash
# Linked clone vs full copy of the gold disk, for a 1 GiB and a 10 GiB
# (sparse, 64 MiB of data) raw image. Prints each time and the ratio
# full-copy / linked-clone: the linked clone must cost the same at both sizes.
#
#   bash bench/clone.sh [COUNT]     (default 3 runs of each)
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-3}"
out="$(go test -run XXX -bench 'Clone' -benchtime "${count}x" ./internal/hypervisor/qemu/ | grep '^BenchmarkClone')"
awk '
	{ split($1, p, "/"); sub(/-[0-9]+$/, "", p[2]); ns[p[2]] = $3 }
	END {
		printf "%-8s %14s %14s %10s\n", "size", "linked clone", "full copy", "ratio"
		n = split("1GiB 10GiB", sizes, " ")
		for (i = 1; i <= n; i++) {
			s = sizes[i]; l = ns["linked-" s]; f = ns["fullcopy-" s]
			printf "%-8s %12.1fms %12.1fms %9.1fx\n", s, l / 1e6, f / 1e6, f / l
		}
		printf "linked clone 10GiB / 1GiB: %.2fx (1.0 = independent of size)\n", ns["linked-10GiB"] / ns["linked-1GiB"]
	}' <<<"$out"
