#!/usr/bin/env python3
"""Boot the test guest once under QEMU (TCG) and check it works.

Usage: smoke.py [IMAGE] [--mem MiB] [--format qcow2|raw] [--tap IFNAME] [--machine q35]

Boots IMAGE (default: $GOLDVM_GUEST_DIR/guest.qcow2 or
~/.cache/goldvm/guest/guest.qcow2) on a throwaway qcow2 overlay with user-mode
networking (or --tap, e.g. on a bridge with dnsmasq), then checks over the guest agent that guest-sync,
guest-network-get-interfaces (an IPv4 on eth0) and guest-get-osinfo answer,
waits for the console marker "goldvm-guest: ready", and that QMP
system_powerdown makes QEMU exit. Prints timings; exits non-zero on failure.
"""
import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def default_image():
    d = os.environ.get("GOLDVM_GUEST_DIR") or os.path.expanduser("~/.cache/goldvm/guest")
    return os.path.join(d, "guest.qcow2")


class JSONSock:
    """A line-oriented JSON connection to a QMP or qemu-ga unix socket."""

    def __init__(self, path, timeout):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def send(self, obj):
        self.s.sendall(json.dumps(obj).encode() + b"\n")

    def recv(self):
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError("socket closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        line = line.strip().lstrip(b"\xff")
        if not line:
            return self.recv()
        return json.loads(line)

    def close(self):
        self.s.close()


def qga_sync(path, deadline):
    """Connect to qemu-ga and repeat guest-sync until one is answered; returns the socket.

    QEMU accepts the connection before qemu-ga runs in the guest, and bytes sent
    meanwhile wait in the socket, so keep one connection and resend every 0.2 s.
    """
    c = None
    sent = set()
    while time.monotonic() < deadline:
        if c is None:
            try:
                c = JSONSock(path, 0.2)
            except OSError:
                time.sleep(0.05)
                continue
        try:
            token = random.randint(1, 2**31)
            sent.add(token)
            c.send({"execute": "guest-sync", "arguments": {"id": token}})
            while True:
                r = c.recv()
                if r.get("return") in sent:
                    # drain answers to earlier guest-syncs
                    c.s.settimeout(0.3)
                    try:
                        while True:
                            c.recv()
                    except (socket.timeout, EOFError, ValueError):
                        pass
                    c.s.settimeout(10)
                    return c
        except socket.timeout:
            continue
        except (OSError, EOFError, ValueError):
            c.close()
            c = None
            time.sleep(0.1)
    raise TimeoutError("guest agent did not answer guest-sync")


def qga(c, cmd):
    c.send({"execute": cmd})
    r = c.recv()
    if "return" not in r:
        raise RuntimeError(f"{cmd}: {r}")
    return r["return"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("image", nargs="?", default=default_image())
    ap.add_argument("--mem", type=int, default=128)
    ap.add_argument("--format", default=None)
    ap.add_argument("--timeout", type=float, default=90)
    ap.add_argument("--machine", default=None, help="QEMU -machine type, e.g. q35")
    ap.add_argument("--tap", help="use this existing tap device instead of user-mode networking")
    args = ap.parse_args()
    fmt = args.format or ("raw" if args.image.endswith(".raw") else "qcow2")

    tmp = tempfile.mkdtemp(prefix="goldvm-smoke.")
    ov = os.path.join(tmp, "ov.qcow2")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.abspath(args.image),
                    "-F", fmt, ov], check=True)
    console = os.path.join(tmp, "console.log")
    qga_sock = os.path.join(tmp, "qga.sock")
    qmp_sock = os.path.join(tmp, "qmp.sock")
    cmd = ["qemu-system-x86_64", "-accel", "tcg,tb-size=32", "-m", str(args.mem), "-smp", "1",
           "-display", "none", "-nodefaults", "-no-reboot",
           *(["-machine", args.machine] if args.machine else []),
           "-serial", "file:" + console,
           "-drive", f"file={ov},if=virtio,format=qcow2",
           "-netdev", (f"tap,id=n0,ifname={args.tap},script=no,downscript=no" if args.tap
                       else "user,id=n0"),
           "-device", "virtio-net-pci,netdev=n0",
           "-device", "virtio-serial",
           "-chardev", f"socket,id=qga0,path={qga_sock},server=on,wait=off",
           "-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
           "-qmp", f"unix:{qmp_sock},server=on,wait=off"]
    t0 = time.monotonic()
    q = subprocess.Popen(cmd)
    ok = False
    try:
        deadline = t0 + args.timeout
        c = qga_sync(qga_sock, deadline)
        t_qga = time.monotonic() - t0
        print(f"guest-sync answered after {t_qga:.2f}s")
        ip = None
        while time.monotonic() < deadline:
            ifs = qga(c, "guest-network-get-interfaces")
            for i in ifs:
                if i.get("name") == "eth0":
                    for a in i.get("ip-addresses", []):
                        if a.get("ip-address-type") == "ipv4":
                            ip = a["ip-address"]
            if ip:
                break
            time.sleep(0.2)
        t_ip = time.monotonic() - t0
        print(f"guest-network-get-interfaces: eth0 ipv4={ip} after {t_ip:.2f}s")
        print("  " + json.dumps(ifs))
        osinfo = qga(c, "guest-get-osinfo")
        print("guest-get-osinfo: " + json.dumps(osinfo))
        c.close()
        marker = None
        while time.monotonic() < deadline:
            with open(console, errors="replace") as f:
                for line in f:
                    if line.startswith("goldvm-guest: ready"):
                        marker = line.strip()
            if marker:
                break
            time.sleep(0.1)
        print(f"console marker: {marker!r}")
        m = JSONSock(qmp_sock, 5)
        m.recv()  # greeting
        m.send({"execute": "qmp_capabilities"})
        m.recv()
        tp = time.monotonic()
        m.send({"execute": "system_powerdown"})
        try:
            q.wait(timeout=15)
            print(f"system_powerdown: QEMU exited rc={q.returncode} after {time.monotonic() - tp:.2f}s")
        except subprocess.TimeoutExpired:
            print("system_powerdown: QEMU still running after 15s")
            raise
        ok = (ip is not None and osinfo.get("pretty-name") ==
              "goldvm test guest (Debian kernel, busybox)" and marker is not None)
    finally:
        if q.poll() is None:
            q.kill()
            q.wait()
        if not ok:
            try:
                with open(console, errors="replace") as f:
                    sys.stderr.write("---- console ----\n" + f.read()[-4000:])
            except OSError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
