"""Abuse: what a VM or a BGP peer may try, and who may talk to the daemon.

Covered elsewhere (referenced, not repeated): a VM spoofing its source IP or MAC
(``test_firewall.py``: ``test_spoofed_source_ip_reaches_nobody``,
``test_spoofed_source_ip_does_not_reach_the_hypervisor``,
``test_spoofed_source_mac_reaches_nobody``), a VM sending to the hypervisor's own
addresses, BGP and SSH included (``test_vm_reaches_only_dhcp_and_dns_on_the_hypervisor``),
a peer sending more prefixes than max-prefix
(``test_bgp.py::test_max_prefix_exceeded_tears_the_session_down_with_cease``), the
metrics port listening on loopback only by default
(``test_metrics_live.py::test_metrics_match_the_kernel_and_listen_on_loopback_only``).

Here:

* a reflector announcing a local endpoint's /32 (and /128) and a default route (real
  BIRD 2, ``protocol static`` exported over iBGP): the local route stays the one the
  kernel uses, traffic still reaches the VM, hv1 keeps announcing its endpoint; the
  default route is filtered until ``bgp.import.allow_default`` is set by a reload;
* ARP poisoning from a VM: ARP whose sender address is not the VM's own (another VM,
  the gateway, the hypervisor) is dropped before the kernel sees it (no proxy-ARP reply,
  no neighbour entry); a control shows the same frames would poison without the filter;
* the control socket: mode 0600, owned by root; ``nobody`` cannot connect (with every
  directory on the way open to it, so only the socket's mode stops it).
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import time

import yaml
from faultlab import peer_rows

from l3hostd.birdlab import BgpTopology
from l3hostd.ctl import request
from l3hostd.lab import Hypervisor, Lab, Netns, Vm, wait_until

# ---- a peer announcing what it must not ------------------------------------------------------


def hijack(vm_ipv4: str, vm_ipv6: str) -> str:
    """BIRD statics the reflector exports to every client (next hop: itself)."""
    return (
        "protocol static hijack4 {\n  ipv4;\n"
        f"  route {vm_ipv4}/32 blackhole;\n  route 0.0.0.0/0 blackhole;\n}}\n"
        "protocol static hijack6 {\n  ipv6;\n"
        f"  route {vm_ipv6}/128 blackhole;\n  route ::/0 blackhole;\n}}\n"
    )


def test_a_peer_announcing_a_local_endpoint_and_a_default_route(lab: Lab) -> None:
    # the VM's addresses are known before the reflector's config is written
    vm_ipv4, vm_ipv6 = "10.10.0.11", "2001:db8:10::b"
    topo = BgpTopology(lab, hypervisors=1, speaker="l3hostd",
                       rr_options={"extra": hijack(vm_ipv4, vm_ipv6)})
    topo.start(timeout=30)
    hv = topo.hv(1)
    vm = topo.add_vm(1, "vm1", 11)
    assert (vm.ipv4, vm.ipv6) == (vm_ipv4, vm_ipv6)
    wait_until(lambda: len(topo.learned_routes(1)) == 1 and len(topo.learned_routes(1, "-6"))
               == 1, 15, what="the reflector's /32 and /128 learned")
    wait_until(lambda: f"{vm.ipv4}/32" in topo.rr.routes() and
               hv.uplink4 in topo.rr.routes()[f"{vm.ipv4}/32"], 10,
               what="hv1's own announcement at the reflector")

    for family, address, plen in (("-4", vm.ipv4, 32), ("-6", vm.ipv6, 128)):
        routes = hv.ns.ip(family, "route", "show", f"{address}/{plen}").stdout
        # both are there: ours (proto l3hostd, dev TAP, lowest metric) and the learned one
        # at metric 2048, which never replaces it
        assert f"dev {vm.tap} proto l3hostd" in routes, routes
        assert "proto l3hostd-bgp" in routes and "metric 2048" in routes, routes
        got = hv.ns.ip(family, "route", "get", address).stdout
        assert f"dev {vm.tap}" in got, f"the kernel must use the local route: {got}"
    # traffic to the VM is delivered to it: from another VM on hv1 (forwarded by hv1)
    other = topo.add_vm(1, "vm2", 12)
    assert other.ns.ping(vm.ipv4, timeout=3) and other.ns.ping(vm.ipv6, timeout=3)
    detail = request(str(hv.socket), {"command": "show", "what": "routes",
                                      "prefix": f"{vm.ipv4}/32"})["data"]
    assert detail["local"] is not None and detail["exported"] is not None, detail
    # still announced by hv1, whatever it learns for the prefix
    assert hv.uplink4 in topo.rr.routes()[f"{vm.ipv4}/32"]

    # the default routes were received and filtered
    assert hv.ns.ip("route", "show", "default", "proto", "45").stdout.strip() == ""
    assert hv.ns.ip("-6", "route", "show", "default", "proto", "45").stdout.strip() == ""
    peers = peer_rows(hv)
    assert peers["rr"]["prefixes_filtered"] >= 1 and peers["rr6"]["prefixes_filtered"] >= 1

    # allowed by a reload: installed (beside the lab's own default route, at metric 2048)
    config = yaml.safe_load(hv.config_path.read_text())
    config["bgp"]["import"] = {"allow_default": True}
    hv.config_path.write_text(yaml.safe_dump(config))
    reply = request(str(hv.socket), {"command": "reload"})
    assert reply["ok"], reply
    wait_until(lambda: "proto l3hostd-bgp" in hv.ns.ip("route", "show", "default").stdout
               and "proto l3hostd-bgp" in hv.ns.ip("-6", "route", "show", "default").stdout,
               10, what="default routes installed once allowed")
    assert "metric 2048" in hv.ns.ip("route", "show", "default", "proto", "45").stdout
    # and the local endpoint route is still the one used
    assert f"dev {vm.tap}" in hv.ns.ip("route", "get", vm.ipv4).stdout


# ---- ARP poisoning from a VM ---------------------------------------------------------------------

#: Send one ARP frame from eth0 and report whether an ARP reply for the asked address came
#: back within WAIT seconds: ``arp.py OP SENDER_MAC SENDER_IP TARGET_IP WAIT``.
ARP = r"""
import socket, struct, sys, time
op, smac, sip, tip = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
wait = float(sys.argv[5])
mac = bytes.fromhex(smac.replace(":", ""))
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
s.settimeout(0.1)
arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, mac, socket.inet_aton(sip),
                  b"\xff" * 6 if op == 2 else b"\0" * 6, socket.inet_aton(tip))
s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
end = time.monotonic() + wait
while time.monotonic() < end:
    try:
        frame = s.recv(2048)
    except TimeoutError:
        continue
    rop, sha, spa = struct.unpack("!H6s4s", frame[20:32])
    if rop == 2 and socket.inet_ntoa(spa) == tip:
        print("reply", sha.hex(":"))
        break
else:
    print("none")
"""


def arp(vm: Vm, op: int, sender_ip: str, target_ip: str, sender_mac: str | None = None,
        wait: float = 0.5) -> str:
    """Proxy-ARP answers at once here (``proxy_delay`` 0): 0.5 s is ample."""
    return vm.ns.run(sys.executable, "-c", ARP, str(op), sender_mac or vm.mac, sender_ip,
                     target_ip, str(wait)).stdout.strip()


def neighbours_with(ns: Netns, mac: str) -> list[str]:
    out = ns.ip("neigh", "show").stdout
    return [line for line in out.splitlines() if mac in line]


def test_arp_poisoning_from_a_vm_reaches_nobody(lab: Lab) -> None:
    fabric = lab.netns("fabric")
    hv = Hypervisor(lab, "hv", 1)
    hv.attach_uplink(fabric)
    hv.start()
    hv.wait_ready()
    vm1 = hv.add_vm("vm1", 11)
    vm2 = hv.add_vm("vm2", 12)
    hv.write_endpoint(vm1)
    hv.write_endpoint(vm2)
    wait_until(lambda: len(hv.routes()) == 2, 10, what="both VMs routed")
    gateway = "10.10.0.1"
    assert vm2.ns.ping(vm1.ipv4, timeout=3)  # vm2 resolves its gateway (tap2's MAC)
    vm2_gateway = vm2.ns.ip("neigh", "show", gateway).stdout

    # control: asked with its own address, the VM gets the proxy-ARP answer
    assert arp(vm1, 1, vm1.ipv4, gateway).startswith("reply"), "proxy-ARP control"

    claims = [vm2.ipv4, gateway, hv.uplink4, "10.10.0.99"]
    for claimed in claims:
        # a request "tell <claimed>" (answered, it would create <claimed> -> vm1's MAC)
        assert arp(vm1, 1, claimed, gateway) == "none", f"request claiming {claimed}"
        # an unsolicited reply "<claimed> is-at vm1's MAC" (gratuitous ARP): checked by
        # its effect on the neighbour tables below
        arp(vm1, 2, claimed, claimed, wait=0)
    # with another VM's MAC as well: no better
    assert arp(vm1, 1, vm2.ipv4, gateway, sender_mac=vm2.mac) == "none"
    time.sleep(0.2)
    poisoned = [line for line in neighbours_with(hv.ns, vm1.mac)
                if line.split()[0] not in (vm1.ipv4, vm1.ipv6)]
    assert poisoned == [], f"the hypervisor learned vm1's MAC for others: {poisoned}"
    assert {line.split()[0] for line in neighbours_with(hv.ns, vm2.mac)} == {
        vm2.ipv4, vm2.ipv6}, hv.ns.ip("neigh", "show").stdout
    assert vm2.ns.ip("neigh", "show", gateway).stdout.split()[:4] == vm2_gateway.split()[:4]
    assert vm2.ns.ping(vm1.ipv4, timeout=3)

    # control: without l3hostd's ARP filter the same request poisons the neighbour table
    hv.ns.run("nft", "delete", "table", "arp", "l3hostd")
    assert arp(vm1, 1, vm2.ipv4, gateway).startswith("reply")
    assert any(vm2.ipv4 in line for line in neighbours_with(hv.ns, vm1.mac)), \
        "control: an unfiltered spoofed request should have poisoned the table"


# ---- the control socket -------------------------------------------------------------------------

CONNECT = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
except OSError as exc:
    print(type(exc).__name__, exc.errno)
    sys.exit(0)
s.sendall(b'{"command": "show", "what": "status"}\n')
print("connected", json.loads(s.makefile().readline())["ok"])
"""


def as_nobody(path: str) -> str:
    # the system interpreter: nobody may not be able to run the checkout's venv
    python = shutil.which("python3", path="/usr/bin:/bin") or sys.executable
    proc = subprocess.run(["runuser", "-u", "nobody", "--", python, "-c", CONNECT, path],
                          capture_output=True, text=True, timeout=30, check=False)
    return (proc.stdout + proc.stderr).strip()


def test_control_socket_is_root_only(lab: Lab) -> None:
    fabric = lab.netns("fabric")
    hv = Hypervisor(lab, "hv", 1)
    hv.attach_uplink(fabric)
    hv.start()
    hv.wait_ready()
    info = os.stat(hv.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0, oct(info.st_mode)
    # open every directory on the way (the lab's are 0700), so the socket's mode is all
    # that stands between nobody and the daemon
    for directory in (lab.workdir, hv.socket.parent):
        directory.chmod(0o755)
    assert as_nobody(str(hv.socket)) == "PermissionError 13"
    # control: the same client connects once the mode allows it
    hv.socket.chmod(0o666)
    try:
        assert as_nobody(str(hv.socket)) == "connected True"
    finally:
        hv.socket.chmod(0o600)
