#!/usr/bin/env bash
# Warm VMs of a group against cold creates, in the same run: the time from
# POST /vms to a running VM with its address, for the tiny test guest.
#
#   sudo bash bench/warm.sh [COUNT]     (default 3 VMs of each kind)
#
# Cold: COUNT creates one after another (the image fetched once before),
# each timed from the request until GET /vms/{id} says running with an
# address. Warm: a group {"size": 0, "warm": 2} keeps two VMs booted; COUNT
# creates with "from_group" one after another (each once the pool is full
# again), each timed until its 202 reply, which is already running with its
# address. It prints each time, the medians and cold/warm.
#
# As root it runs in a private network and mount namespace of its own
# (unshare): the NAT bridge, dnsmasq and the image server exist only there.
set -euo pipefail
cd "$(dirname "$0")/.."
count="${1:-3}"
if [[ "${GOLDVM_WARM_NETNS:-}" != 1 ]]; then
	[[ $(id -u) -eq 0 ]] || { echo "warm.sh: run as root (it makes a bridge, in a namespace of its own)" >&2; exit 1; }
	export PATH="$PATH:/usr/local/go/bin"
	work="$(mktemp -d)"
	chmod 711 "$work" # QEMU runs under a user id of its own per VM and must reach the data dir
	trap 'rm -rf "$work"' EXIT
	go build -o "$work/goldvm" ./cmd/goldvm
	guest="${GOLDVM_TEST_GUEST:-$(bash testdata/guest/build.sh | tail -n 1)}"
	GOLDVM_WARM_NETNS=1 WORK="$work" GUEST="$guest" unshare --net --mount -- bash "$0" "$count"
	exit
fi

ip link set lo up
addr=127.0.0.1:12345
"$WORK/goldvm" serve --data-dir "$WORK/data" --listen "$addr" --log-format text >"$WORK/daemon.log" 2>&1 &
daemon=$!
(cd "$(dirname "$GUEST")" && exec python3 -m http.server 8000 --bind 127.0.0.1 >/dev/null 2>&1) &
server=$!
cleanup() {
	curl -sf -X DELETE "http://$addr/groups/pool" >/dev/null 2>&1 || true
	for id in $(curl -sf "http://$addr/vms" | python3 -c 'import json,sys; [print(v["id"]) for v in json.load(sys.stdin)["vms"]]' 2>/dev/null); do
		curl -sf -X DELETE "http://$addr/vms/$id" >/dev/null || true
	done
	kill "$daemon" "$server" 2>/dev/null || true
	wait "$daemon" 2>/dev/null || true
	pkill -f "dnsmasq.*$WORK" || true
}
trap cleanup EXIT
for _ in $(seq 100); do curl -sf "http://$addr/healthz" >/dev/null && break; sleep 0.1; done

python3 - "http://$addr" "http://127.0.0.1:8000/$(basename "$GUEST")" "$(sha256sum "$GUEST" | cut -d' ' -f1)" "$count" <<'PY'
import json, sys, time, urllib.request

base, url, checksum, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
template = {"memory": 128, "image": {"url": url, "checksum": checksum, "checksum_type": "sha256"}}

def call(method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(base + path, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        raw = r.read()
        return json.loads(raw) if raw else None

def wait_running(vid):
    while True:
        v = call("GET", "/vms/" + vid)
        if v["status"] == "running" and v["ip_address"]:
            return v
        if v["status"] not in ("creating",):
            sys.exit("VM %s ended %s: %s" % (vid, v["status"], v.get("error")))
        time.sleep(0.05)

def cold():
    t0 = time.monotonic()
    v = call("POST", "/vms", template)
    wait_running(v["id"])
    return time.monotonic() - t0, v["id"]

def pool_full():
    deadline = time.monotonic() + 600
    while call("GET", "/groups/pool")["warm_ready"] < 2:
        if time.monotonic() > deadline:
            sys.exit("the warm pool did not fill: %s" % call("GET", "/groups/pool"))
        time.sleep(0.2)

# Cold: the image is fetched once first; no group exists yet, so nothing
# is served warm.
_, first = cold()
call("DELETE", "/vms/" + first)
colds = []
for _ in range(count):
    t, vid = cold()
    colds.append(t)
    call("DELETE", "/vms/" + vid)

call("PUT", "/groups/pool", {"size": 0, "warm": 2, "max_surge": 2, "template": template})
warms = []
for _ in range(count):
    pool_full()
    t0 = time.monotonic()
    v = call("POST", "/vms", {"from_group": "pool", "tags": {"bench": "warm"}})
    t = time.monotonic() - t0
    if v["status"] != "running" or not v["ip_address"] or not v["from_group"]["warm"]:
        sys.exit("hand-out not warm: %s" % v)
    warms.append(t)
    call("DELETE", "/vms/" + v["id"])

med = lambda xs: sorted(xs)[len(xs) // 2]
print("%-6s %s" % ("cold", " ".join("%.2fs" % t for t in colds)))
print("%-6s %s" % ("warm", " ".join("%.1fms" % (t * 1000) for t in warms)))
print("median cold %.2fs, warm %.1fms, cold/warm %.0f" % (med(colds), med(warms) * 1000, med(colds) / med(warms)))
PY
