#!/usr/bin/env bash
# A group of VMs over a three-member LXD cluster on this one host, and its
# healing when a member goes offline.
#
#   sudo bash bench/lxd-cluster.sh [SIZE]     (default 30 VMs)
#
# The cluster is three LXD daemons beside the host's, each with its own
# directory and loopback port (scripts/lxd-cluster-init.sh with three
# members; no nested virtualisation needed), their containers on the host
# LXD's lxdbr0. A goldvm daemon drives it (--backend lxd, containers of the
# test root file system from testdata/container/build.sh, served over
# loopback) and keeps a group of SIZE VMs: the script prints how LXD's
# scheduler spread them, then stops member3's daemon (SIGSTOP: it answers
# nothing, as a member cut off the network; LXD marks it offline after 11 s
# without heartbeat) and prints how long the group takes to be whole again
# on the two others, then resumes it (SIGCONT) and prints how long until
# the lost VMs are deleted from LXD too. Everything it made goes at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
size="${1:-30}"
[[ $(id -u) -eq 0 ]] || { echo "lxd-cluster.sh: run as root" >&2; exit 1; }
export PATH="$PATH:/usr/local/go/bin"

base=/var/lib/goldvm-test-lxd-cluster3
sock=$(GOLDVM_LXD_CLUSTER_DIR=$base GOLDVM_LXD_CLUSTER_MEMBERS=3 GOLDVM_LXD_CLUSTER_PORT=18451 bash scripts/lxd-cluster-init.sh | tail -1)
pkg=$(bash testdata/container/build.sh | tail -1)
work=$(mktemp -d)
project=goldvm-bench-$$
api=127.0.0.1:12399
pids=()
member3=""
cleanup() {
	[[ -n $member3 ]] && kill -CONT "$member3" 2>/dev/null || true
	curl -s -X DELETE "http://$api/groups/farm" >/dev/null 2>&1 || true
	for _ in $(seq 120); do
		[[ $(curl -s "http://$api/vms" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["vms"]))' 2>/dev/null) == 0 ]] && break
		sleep 1
	done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
	for n in $(LXD_DIR=$base lxc list --project "$project" --format csv -c n 2>/dev/null); do LXD_DIR=$base lxc delete --force --project "$project" "$n"; done
	for f in $(LXD_DIR=$base lxc image list --project "$project" --format csv -c f 2>/dev/null); do LXD_DIR=$base lxc image delete --project "$project" "$f"; done
	LXD_DIR=$base lxc project delete "$project" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/goldvm" ./cmd/goldvm
mkdir "$work/www"
cp "$pkg" "$work/www/container.tar.gz"
sum=$(sha256sum "$pkg" | cut -d' ' -f1)
python3 -m http.server --bind 127.0.0.1 --directory "$work/www" 12398 >/dev/null 2>&1 &
pids+=($!)
"$work/goldvm" serve --listen "$api" --data-dir "$work/data" --backend lxd --lxd-url "unix://$sock" \
	--lxd-project "$project" --lxd-instance-type container --capacity-cpus 256 --capacity-memory 64gib \
	--group-retry-backoff 1s 2>"$work/goldvm.log" &
pids+=($!)
for _ in $(seq 60); do curl -sf "http://$api/healthz" >/dev/null && break; sleep 0.5; done

# spread prints the group's VMs by status and location.
spread() {
	curl -s "http://$api/vms" | python3 -c '
import collections, json, sys
vms = json.load(sys.stdin)["vms"]
c = collections.Counter((v["status"], v.get("location", "")) for v in vms)
print("  " + ", ".join("%d %s on %s" % (n, s, l or "?") for (s, l), n in sorted(c.items())))'
}
# count prints how many VMs match the python condition on v.
count() {
	curl -s "http://$api/vms" | python3 -c "
import json, sys
print(sum(1 for v in json.load(sys.stdin)['vms'] if $1))"
}
lxd_count() { LXD_DIR=$base lxc list --project "$project" --format csv -c n | wc -l; }

t0=$(date +%s.%N)
curl -sf -X PUT -H 'Content-Type: application/json' "http://$api/groups/farm" -d @- >/dev/null <<JSON
{"size": $size, "max_surge": 10, "template": {"cpus": 1, "memory": 64,
 "image": {"url": "http://127.0.0.1:12398/container.tar.gz", "checksum": "$sum", "checksum_type": "sha256"}}}
JSON
until [[ $(count 'v["status"] == "running"') -ge $size ]]; do sleep 1; done
t1=$(date +%s.%N)
printf '%d VMs running after %.1f s, spread by LXD:\n' "$size" "$(echo "$t1 - $t0" | bc)"
spread
curl -s "http://$api/capacity" | python3 -c '
import json, sys
b = json.load(sys.stdin)["backend"]
for m in b["members"]:
    print("  %s: %s, %d instances, %d vCPUs / %d MiB used by goldvm" % (m["name"], m["status"], m["instances"], m["used"]["cpus"], m["used"]["memory"]))'

member3=$(ss -ltnpH 'sport = :18453' | sed -n 's/.*pid=\([0-9]*\).*/\1/p' | head -1)
on3=$(count 'v.get("location") == "member3"')
kill -STOP "$member3"
t2=$(date +%s.%N)
echo "member3 (LXD pid $member3, $on3 VMs) stopped"
# Stopped, they are soon "deleting" too: the group deletes them, which
# fails until member3 is back, and tries again.
until [[ $(count 'v.get("location") == "member3" and v["status"] == "running"') -eq 0 ]]; do sleep 1; done
t3=$(date +%s.%N)
printf '%.1f s: its VMs marked stopped (%s)\n' "$(echo "$t3 - $t2" | bc)" \
	"$(curl -s "http://$api/vms" | python3 -c 'import json,sys; print(next(v["stop_reason"] for v in json.load(sys.stdin)["vms"] if v.get("stop_reason")))')"
until [[ $(count 'v["status"] == "running" and v.get("location") != "member3"') -ge $size ]]; do sleep 1; done
t4=$(date +%s.%N)
printf '%.1f s: the group is whole again on the other members:\n' "$(echo "$t4 - $t2" | bc)"
spread

kill -CONT "$member3"
t5=$(date +%s.%N)
echo "member3 resumed"
until [[ $(count 'True') -eq $size && $(lxd_count) -eq $size ]]; do sleep 1; done
t6=$(date +%s.%N)
printf '%.1f s: the lost VMs deleted; goldvm and LXD each have %d instances, no duplicate:\n' "$(echo "$t6 - $t5" | bc)" "$size"
spread
