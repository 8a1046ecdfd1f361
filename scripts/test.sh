#!/usr/bin/env bash
# Sets up a fresh Debian machine for goldvm's tests and runs them all:
# unit tests, fuzz seed corpora, and the end-to-end tests that boot real
# QEMU guests (as root, inside a network namespace the tests create).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

bash scripts/deps.sh --test
# Build the test guest once (cached in ~/.cache/goldvm/guest).
GOLDVM_TEST_GUEST="$(bash testdata/guest/build.sh | tail -n 1)"
export GOLDVM_TEST_GUEST

go vet ./...
unformatted="$(gofmt -l .)"
if [[ -n "$unformatted" ]]; then
	echo "gofmt needed on: $unformatted" >&2
	exit 1
fi
# Bounded fuzzing of every target first (their seed corpora also run in go test).
FUZZTIME="${FUZZTIME:-5s}" bash scripts/fuzz.sh
go test -count=1 -timeout 50m ./...
