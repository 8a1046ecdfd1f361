#!/bin/sh
# Measures goldvm's one-pass image fetch (download + sha256 + decompress +
# unpack at once) against the sequential baseline `curl -o` then
# `sha256sum` then `tar -x`/`unzip`, and against the slowest single stage,
# for tar.gz, tar.zst and zip packages of a disk-like image served over
# loopback HTTP. Prints a table of times and ratios (lower is better;
# goldvm/slowest = 1.00 would be perfect overlap of all stages), then the
# CPU work of each stage alone on the whole machine and their sum over the
# CPUs: the bound no one-pass fetch can beat on this machine.
#
#   bench/fetch.sh                       # 1 GiB image, about 6-7 minutes on 2 cores
#   SIZE_MIB=256 REPS=1 bench/fetch.sh   # quicker (REPS: best of N, default 2)
#   WORK=/var/tmp/x FORMATS=tar.zst bench/fetch.sh
#
# To profile goldvm's side only (after one run has made the packages):
#   $WORK/imagebench -work $WORK -formats tar.gz -reps 3 -cpuprofile cpu.prof
#   go tool pprof -top $WORK/imagebench cpu.prof
# It prints each fetch's time and CPU time. -trace trace.out adds an
# execution trace: `go tool trace -pprof=sched trace.out` shows where the
# goroutines waited for a CPU, -pprof=sync where they waited on each other.
#
# Needs curl, sha256sum, tar, unzip and zstd. Generated files are kept in
# $WORK (default /tmp/goldvm-bench) and reused by later runs.
set -eu
cd "$(dirname "$0")/.."
for tool in curl sha256sum tar unzip zstd; do
	command -v "$tool" >/dev/null || { echo "fetch.sh: $tool is needed" >&2; exit 1; }
done
WORK=${WORK:-/tmp/goldvm-bench}
mkdir -p "$WORK"
go build -o "$WORK/imagebench" ./bench/imagebench
exec "$WORK/imagebench" -work "$WORK" -size-mib "${SIZE_MIB:-1024}" -formats "${FORMATS:-tar.gz,tar.zst,zip}" -reps "${REPS:-2}"
