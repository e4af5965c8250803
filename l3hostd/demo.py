"""``l3hostd demo``: the lab, in network namespaces, narrated step by step.

Today it is one hypervisor running the real ``l3hostd run`` with two VMs (the BGP route
reflector and a second hypervisor join it when the BGP issue lands):

    fabric ──eth0── hv (l3hostd) ──tap…── vm1
                                 ──tap…── vm2

It writes the VMs' endpoint files, waits for the routes, pings VM to VM and VM to host
over IPv4 and IPv6 (no shared L2: /32 and /128 routes plus proxy-ARP and the fe80::1
gateway), shows what ``ip route`` and ``l3hostctl`` print, takes a VM away and brings it
back, then tears everything down. ``--keep`` leaves the lab up until Ctrl-C and prints
how to look around. Everything it creates is removed on success, failure and Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time

from l3hostd.lab import Hypervisor, Lab, LabError, wait_until


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(cmd: str, output: str) -> None:
    print(f"$ {cmd}")
    print("\n".join("  " + line for line in output.rstrip().splitlines()), flush=True)


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)
    if not ok:
        raise LabError(what)


def main(keep: bool = False) -> int:
    if os.geteuid() != 0:
        print("l3hostd demo: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "ping"):
        if shutil.which(tool) is None:
            print(f"l3hostd demo: '{tool}' is missing (run scripts/setup.sh)", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        with Lab("l3demo") as lab:
            return _demo(lab, keep)
    except KeyboardInterrupt:
        print("\ninterrupted; lab removed", flush=True)
        return 130
    except LabError as exc:
        print(f"\ndemo failed: {exc}", file=sys.stderr)
        return 1


def _demo(lab: Lab, keep: bool) -> int:
    say("building the lab: fabric, hypervisor hv1, VMs vm1 and vm2 (network namespaces)")
    fabric = lab.netns("fabric")
    hv = Hypervisor(lab, "hv1", 1)
    hv.attach_uplink(fabric)
    vm1 = hv.add_vm("vm1", 11)
    vm2 = hv.add_vm("vm2", 12)
    print(f"  vm1 {vm1.ipv4} {vm1.ipv6} behind {vm1.tap}")
    print(f"  vm2 {vm2.ipv4} {vm2.ipv6} behind {vm2.tap}")
    print("  VMs: IPv4 /24 with 'default via 10.10.0.1' (exists nowhere: proxy-ARP),")
    print("       IPv6 /128 with 'default via fe80::1 dev eth0' (on every TAP)")

    say("starting l3hostd on hv1 and writing the endpoint files")
    hv.start()
    hv.wait_ready()
    started = time.monotonic()
    hv.write_endpoint(vm1)
    hv.write_endpoint(vm2)
    wait_until(lambda: len(hv.routes("-4")) == 2 and len(hv.routes("-6")) == 2, 10,
               what="host routes")
    print(f"  4 host routes installed {1000 * (time.monotonic() - started):.1f} ms "
          "after the files were written")
    show(f"ip -n {hv.ns.name} route show proto l3hostd", "\n".join(hv.routes("-4")))
    show(f"ip -n {hv.ns.name} -6 route show proto l3hostd", "\n".join(hv.routes("-6")))
    show(f"ip -n {hv.ns.name} neigh show nud permanent",
         hv.ns.ip("neigh", "show", "nud", "permanent").stdout)

    say("traffic, with no shared L2 between the VMs")
    check(vm1.ns.ping(vm2.ipv4), f"vm1 -> vm2 {vm2.ipv4}")
    check(vm1.ns.ping(vm2.ipv6), f"vm1 -> vm2 {vm2.ipv6}")
    check(vm1.ns.ping(hv.uplink4), f"vm1 -> hypervisor {hv.uplink4}")
    check(vm1.ns.ping(hv.uplink6), f"vm1 -> hypervisor {hv.uplink6}")
    show(f"ip netns exec {vm1.ns.name} ip neigh",
         vm1.ns.ip("neigh", "show").stdout or "(empty)")

    say("l3hostctl, the operator's view")
    ctl = f"l3hostctl --socket {hv.socket}"
    from l3hostd.ctl import main as ctl_main

    print(f"$ {ctl} show endpoints", flush=True)
    ctl_main(["--socket", str(hv.socket), "show", "endpoints"])

    say("vm2's TAP goes away: its routes go with it")
    hv.ns.ip("link", "del", vm2.tap)
    wait_until(lambda: len(hv.routes("-4")) == 1, 5, what="route removal")
    check(not vm1.ns.ping(vm2.ipv4, timeout=1), "vm1 -> vm2 fails now")

    if keep:
        say("the lab stays up; Ctrl-C removes it. Look around with:")
        print(f"  ip netns exec {hv.ns.name} ip route")
        print(f"  ip netns exec {vm1.ns.name} ping {hv.uplink4}")
        print(f"  {ctl} show status")
        print(f"  endpoint files: {hv.endpoints}  (add/edit/remove and watch the routes)")
        print(f"  daemon log: {lab.workdir / 'hv1.log'}")
        os.environ["L3HOSTD_KEEP_LABDIR"] = ""
        while True:
            time.sleep(3600)
    say("tearing down")
    return 0
