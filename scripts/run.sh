#!/usr/bin/env bash
# Sets up a fresh Debian machine for goldvm and runs the daemon with its
# defaults (127.0.0.1:12345, data in /var/lib/goldvm as root). Extra
# arguments go to `goldvm serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

bash scripts/deps.sh
mkdir -p bin
go build -o bin/goldvm ./cmd/goldvm
exec ./bin/goldvm serve "$@"
