#!/usr/bin/env bash
# Builds the goldvm Debian package with dpkg-deb: the static binary as
# /usr/bin/goldvm, the systemd unit contrib/systemd/goldvm.service and the
# default configuration contrib/goldvm.toml as the conffile
# /etc/goldvm/goldvm.toml. Prints the .deb's path.
#
#   scripts/deb.sh [OUTDIR]        (default: dist/)
#
# VERSION=1.2.3 sets the package and binary version; by default it is
# 0.0.0~git<commit time>.<commit> from the checkout. GOARCH cross-builds
# (amd64, arm64, ...: Debian's names for these are Go's).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/dist}
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [[ -z "${VERSION:-}" ]]; then
	if rev=$(git -C "$root" log -1 --format='%cd.%h' --date=format:%Y%m%d%H%M%S 2>/dev/null); then
		VERSION="0.0.0~git$rev"
		if [[ -n "$(git -C "$root" status --porcelain --untracked-files=no 2>/dev/null)" ]]; then
			VERSION="$VERSION+dirty"
		fi
	else
		VERSION=0.0.0
	fi
fi
if ! [[ "$VERSION" =~ ^[0-9][A-Za-z0-9.+~-]*$ ]]; then
	echo "deb.sh: VERSION $VERSION: a Debian version starts with a digit" >&2
	exit 1
fi
# The go command records the commit in a clone's binaries but not in a git
# worktree's: stamp it.
REVISION=${REVISION:-$(git -C "$root" rev-parse HEAD 2>/dev/null || true)}
arch=${GOARCH:-$(go env GOARCH)}

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/goldvm
install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/goldvm" "$pkg/usr/share/doc/goldvm"

# Static (no cgo: user lookups read /etc/passwd), reproducible paths, the
# version and commit stamped in (goldvm version).
(cd "$root" && CGO_ENABLED=0 GOARCH=$arch go build -trimpath -buildvcs=auto \
	-ldflags "-s -w -X main.version=$VERSION -X main.revision=$REVISION" -o "$pkg/usr/bin/goldvm" ./cmd/goldvm)
chmod 0755 "$pkg/usr/bin/goldvm"
install -m 0644 "$root/contrib/systemd/goldvm.service" "$pkg/lib/systemd/system/goldvm.service"
# 0640: it may hold the API token.
install -m 0640 "$root/contrib/goldvm.toml" "$pkg/etc/goldvm/goldvm.toml"
install -m 0644 "$root/README.md" "$pkg/usr/share/doc/goldvm/README.md"
for s in postinst prerm postrm; do
	install -m 0755 "$root/contrib/deb/$s" "$pkg/DEBIAN/$s"
done
echo /etc/goldvm/goldvm.toml >"$pkg/DEBIAN/conffiles"

size=$(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: goldvm
Version: $VERSION
Architecture: $arch
Maintainer: goldvm developers <goldvm@localhost>
Installed-Size: $size
Depends: qemu-system-x86 | qemu-system-arm, qemu-utils, dnsmasq-base, iproute2, nftables
Recommends: iptables, ovmf, ca-certificates
Section: admin
Priority: optional
Homepage: https://github.com/goldvm/goldvm
Description: virtual machines over HTTP
 goldvm is a daemon that hands out virtual machines from gold images over
 an HTTP API (QEMU/KVM, LXD or VMware), and its command-line client.
 The daemon runs as the systemd service goldvm, configured in
 /etc/goldvm/goldvm.toml.
CONTROL

deb=$out/goldvm_${VERSION}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "$deb"
