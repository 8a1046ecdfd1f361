#!/usr/bin/env bash
# Time from `goldvm create` to a running VM with its address, for the tiny
# test guest (TCG here), split into goldvm's own part (request to QEMU
# started: clone, network, QEMU up) and the guest's (QEMU started to
# running: boot, DHCP, guest agent, discovery), from the daemon's log.
# The image is fetched once before the timed VMs. The same is measured for
# the test guest without a guest agent (guest-noagent.qcow2, which build.sh
# makes too), which goldvm reports running from its DHCP lease once
# --agent-wait (default 3s) has passed without an answer from an agent.
#
#   sudo bash bench/boot.sh [COUNT]     (default 6 VMs, one after another)
#
# Then, with WARM=1 (the default), cold against warm start: a second daemon
# (QEMU as root, so VMs map the template's RAM file) boots the agent guest
# cold, makes a template of it through POST /images/{key}/templates, and
# times create-to-running (the API call until the record is running with
# its address) for 1 VM and 4 at once, cold and from the template, as the
# CLI sees it and in the daemon's log (first "vm accepted" to last "vm
# running"), with each VM's memory (PSS of its QEMU). A third daemon, on
# the root default of a QEMU user id per VM, times the warm start from a
# sealed memfd copy of the template's RAM (the daemon makes it at the first
# warm start) the same way.
#
# GOLDVM_TEST_GUEST, when set, is the test guest to use (else build.sh
# makes or finds it).
#
# As root it runs in a private network and mount namespace of its own
# (unshare): the NAT bridge, dnsmasq and the image server exist only there.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-6}"
if [[ "${GOLDVM_BOOT_NETNS:-}" != 1 ]]; then
	[[ $(id -u) -eq 0 ]] || { echo "boot.sh: run as root (it makes a bridge, in a namespace of its own)" >&2; exit 1; }
	export PATH="$PATH:/usr/local/go/bin"
	work="$(mktemp -d)"
	chmod 711 "$work" # QEMU runs under a user id of its own per VM and must reach the data dir
	trap 'rm -rf "$work"' EXIT
	go build -o "$work/goldvm" ./cmd/goldvm
	guest="${GOLDVM_TEST_GUEST:-$(bash testdata/guest/build.sh | tail -n 1)}"
	GOLDVM_BOOT_NETNS=1 WORK="$work" GUEST="$guest" unshare --net --mount -- bash "$0" "$count"
	exit
fi

ip link set lo up
bin="$WORK/goldvm" addr=127.0.0.1:12345
"$bin" serve --data-dir "$WORK/data" --listen "$addr" --log-format text >"$WORK/daemon.log" 2>&1 &
daemon=$!
# rmall: deletes every VM.
rmall() {
	for id in $("$bin" ls --addr "$addr" --json 2>/dev/null | python3 -c 'import json,sys; [print(v["id"]) for v in json.load(sys.stdin)]'); do
		"$bin" rm --addr "$addr" "$id" >/dev/null || true
	done
}
(cd "$(dirname "$GUEST")" && exec python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1) &
server=$!
cleanup() {
	rmall
	kill "$daemon" "$server" 2>/dev/null || true
	wait "$daemon" 2>/dev/null || true
	pkill -f "dnsmasq.*$WORK" || true
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "http://$addr/healthz" >/dev/null && break; sleep 0.1; done
# create DISK: one VM of DISK (a file next to $GUEST); prints its id.
create() {
	local sum
	sum="$(sha256sum "$(dirname "$GUEST")/$1" | cut -d' ' -f1)"
	"$bin" create --addr "$addr" --image "http://127.0.0.1:8000/$1" --checksum "$sum" --memory 128mib --json 2>/dev/null |
		python3 -c 'import json,sys; v=json.load(sys.stdin); assert v["status"]=="running", v; print(v["id"], v.get("sources"), file=sys.stderr); print(v["id"])'
}
# report ID...: the two parts of each VM's creation, from the daemon's log.
report() {
python3 - "$WORK/daemon.log" "$@" <<'PY'
import re, sys
from datetime import datetime
log, ids = sys.argv[1], sys.argv[2:]
t = {}
for line in open(log):
    m = re.match(r'time=(\S+) level=\S+ msg=("[^"]*"|\S+).* vm=(\S+)', line)
    if m and m.group(3) in ids:
        t.setdefault(m.group(3), {})[m.group(2).strip('"')] = datetime.fromisoformat(m.group(1).replace("Z", "+00:00"))
rows = []
for i in ids:
    e = t[i]
    own = (e["started"] - e["vm accepted"]).total_seconds()
    guest = (e["vm running"] - e["started"]).total_seconds()
    rows.append((own, guest))
print("%-4s %12s %14s %10s %10s" % ("vm", "goldvm part", "guest part", "total", "goldvm/total"))
for n, (own, guest) in enumerate(rows, 1):
    print("%-4d %11.2fs %13.2fs %9.2fs %11.2f" % (n, own, guest, own + guest, own / (own + guest)))
med = lambda xs: sorted(xs)[len(xs) // 2]
o, g = med([r[0] for r in rows]), med([r[1] for r in rows])
print("median %9.2fs %13.2fs %9.2fs %11.2f" % (o, g, o + g, o / (o + g)))
PY
}
for disk in "$(basename "$GUEST")" guest-noagent.qcow2; do
	echo "== $disk"
	create "$disk" >/dev/null # fetches the image once
	ids=()
	for _ in $(seq "$count"); do ids+=("$(create "$disk")"); done
	report "${ids[@]}"
done

[[ "${WARM:-1}" == 1 ]] || exit 0
disk="$(basename "$GUEST")"
# span LOG ID...: seconds from the first "vm accepted" to the last "vm
# running" of the VMs ID in the daemon's log LOG (the API's own view,
# without the CLI processes).
span() {
	python3 - "$@" <<'PY'
import re, sys
from datetime import datetime
log, ids = sys.argv[1], set(sys.argv[2:])
acc, run = [], []
for line in open(log):
    m = re.match(r'time=(\S+) level=\S+ msg="(vm accepted|vm running)".* vm=(\S+)', line)
    if m and m.group(3) in ids:
        (acc if m.group(2) == "vm accepted" else run).append(datetime.fromisoformat(m.group(1).replace("Z", "+00:00")))
print("%.2f" % (max(run) - min(acc)).total_seconds())
PY
}
# timed N: N creates at once; prints the seconds until all run as the CLI
# sees it and in the daemon's log (span), and each QEMU's PSS.
timed() {
	local t0 t1 ids
	t0=$(date +%s.%N)
	ids=$(for _ in $(seq "$1"); do create "$disk" & done; wait)
	t1=$(date +%s.%N)
	local pss=""
	for id in $ids; do
		pid=$(cat "$data/vms/$id/qemu.pid")
		pss="$pss $(awk '/^Pss:/ {print int($2/1024)}' "/proc/$pid/smaps_rollup")MB"
	done
	# shellcheck disable=SC2086 # one argument per id
	echo "$(python3 -c "print('%.2f' % ($t1 - $t0))")s (daemon: $(span "$log" $ids)s), PSS:$pss"
}
# warm NAME COLD FLAGS...: a daemon on data dir NAME with FLAGS; with COLD=1
# the cold rows first; then a template and the warm rows.
warm() {
	local name="$1" cold="$2"
	shift 2
	rmall
	kill "$daemon"
	wait "$daemon" 2>/dev/null || true
	data="$WORK/$name" log="$WORK/$name.log"
	"$bin" serve --data-dir "$data" --listen "$addr" --log-format text "$@" >"$log" 2>&1 &
	daemon=$!
	for _ in $(seq 100); do curl -sf "http://$addr/healthz" >/dev/null && break; sleep 0.1; done
	create "$disk" >/dev/null # fetches the image once
	local key t0
	key=$(curl -sf "http://$addr/images" | python3 -c 'import json,sys; print(json.load(sys.stdin)["images"][0]["key"])')
	if [[ "$cold" == 1 ]]; then
		echo "cold, 1 VM:      $(timed 1)"
		echo "cold, 4 at once: $(timed 4)"
	fi
	rmall
	t0=$(date +%s.%N)
	curl -sf -X POST -H 'Content-Type: application/json' -d '{"memory":128}' \
		"http://$addr/images/$key/templates" >/dev/null
	echo "template made in $(python3 -c "print('%.2f' % ($(date +%s.%N) - $t0))")s"
	for _ in 1 2 3; do echo "warm, 1 VM:      $(timed 1)"; done
	echo "warm, 4 at once: $(timed 4)"
	grep -o 'msg="started from template".*' "$WORK/$name.log" | sed 's/^/  /' | tail -4
}
echo "== cold against warm start ($disk, create until running with its address; load: $(cut -d' ' -f1-3 /proc/loadavg))"
echo "-- QEMU as root: VMs map the template's RAM file"
warm data-warm 1 --qemu-user root
echo "-- a QEMU user id per VM (the root default): VMs map a sealed memfd copy of the template's RAM"
warm data-warm-uids 0
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
