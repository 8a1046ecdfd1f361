#!/usr/bin/env bash
# Sets up a fresh Debian machine for goldvm and runs the daemon with its
# defaults (127.0.0.1:12345, data in /var/lib/goldvm as root). Extra
# arguments go to `goldvm serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

bash scripts/deps.sh
# QEMU runs as this unprivileged system user (GOLDVM_QEMU_USER= runs it as
# root); made here once.
export GOLDVM_QEMU_USER=${GOLDVM_QEMU_USER-goldvm-qemu}
if [[ $(id -u) -eq 0 && -n "$GOLDVM_QEMU_USER" ]] && ! id "$GOLDVM_QEMU_USER" >/dev/null 2>&1; then
	useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin "$GOLDVM_QEMU_USER"
fi
mkdir -p bin
go build -o bin/goldvm ./cmd/goldvm
exec ./bin/goldvm serve "$@"
