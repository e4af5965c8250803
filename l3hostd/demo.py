"""``l3hostd demo``: the lab, in network namespaces, narrated step by step.

    vm1 ──tap── hv1 (l3hostd) ──┐
                                 ├── rr (BIRD 2 route reflector)
    vm2 ──tap── hv2 (l3hostd) ──┘

Each hypervisor runs the real ``l3hostd run`` with an IPv4 and an IPv6 iBGP session to
the reflector. The demo writes the VMs' endpoint files, shows the host routes installed
and announced, the routes each hypervisor learned from the reflector, VM-to-VM pings over
IPv4 and IPv6 (no shared L2 anywhere: /32 and /128 routes, proxy-ARP and the fe80::1
gateway), ``l3hostctl`` output and ``birdc show route`` on the reflector; then a VM goes
away and its routes disappear everywhere, and the lab is torn down. A security group on
vm2 shows the nftables enforcement (TCP 22 and ping allowed, TCP 80 dropped). ``--keep``
leaves it up until Ctrl-C and prints how to look around. Everything it creates is removed on
success, failure and Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from typing import NoReturn

import yaml

from l3hostd.lab import Lab, LabError, Vm, wait_until


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def show(cmd: str, output: str) -> None:
    print(f"$ {cmd}")
    print("\n".join("  " + line for line in output.rstrip().splitlines()), flush=True)


def check(ok: bool, what: str) -> None:
    print(f"  [{'ok' if ok else 'FAILED'}] {what}", flush=True)
    if not ok:
        raise LabError(what)


SSH_GROUP = """\
name: ssh
rules:
  - {direction: ingress, protocol: tcp, port_range_min: 22, port_range_max: 22}
  - {direction: ingress, protocol: icmp}
  - {direction: egress}
"""

LISTEN = (
    "import socket\n"
    "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
    "s.bind(('0.0.0.0', {port})); s.listen(8)\n"
    "while True: s.accept()[0].close()\n"
)


def _connects(vm: Vm, address: str, port: int) -> bool:
    code = f"import socket; socket.create_connection(({address!r}, {port}), timeout=1.5)"
    return vm.ns.run(sys.executable, "-c", code, check=False).returncode == 0


def _interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def main(keep: bool = False) -> int:
    if os.geteuid() != 0:
        print("l3hostd demo: needs root (network namespaces)", file=sys.stderr)
        return 2
    for tool in ("ip", "ping", "bird", "birdc"):
        if shutil.which(tool) is None:
            print(f"l3hostd demo: '{tool}' is missing (run scripts/setup.sh)", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, _interrupt)
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
    from l3hostd.birdlab import BgpTopology

    say("building the lab: route reflector rr (BIRD 2), hypervisors hv1 and hv2 (l3hostd)")
    topo = BgpTopology(lab, hypervisors=2, speaker="l3hostd")
    hv1, hv2 = topo.hv(1), topo.hv(2)
    topo.start(timeout=40)
    print("  sessions Established: hv1 and hv2, IPv4 and IPv6, to rr")
    vm1 = topo.add_vm(1, "vm1", 11, plug=False)
    vm2 = topo.add_vm(2, "vm2", 12, plug=False)
    print(f"  vm1 {vm1.ipv4} {vm1.ipv6} behind {vm1.tap} on hv1")
    print(f"  vm2 {vm2.ipv4} {vm2.ipv6} behind {vm2.tap} on hv2")
    print("  VMs: IPv4 /24 with 'default via 10.10.0.1' (exists nowhere: proxy-ARP),")
    print("       IPv6 /128 with 'default via fe80::1 dev eth0' (on every TAP)")

    say("the orchestrator writes the endpoint files")
    started = time.monotonic()
    hv1.write_endpoint(vm1)
    hv2.write_endpoint(vm2)
    wait_until(lambda: len(topo.learned_routes(2)) == 1 and len(topo.learned_routes(1)) == 1
               and len(topo.learned_routes(2, "-6")) == 1, 15, what="routes over BGP")
    print(f"  each VM's routes reached the other hypervisor "
          f"{1000 * (time.monotonic() - started):.0f} ms after its file was written")
    show(f"ip -n {hv1.ns.name} route show proto l3hostd", "\n".join(hv1.routes("-4")))
    show(f"ip -n {hv2.ns.name} route show proto l3hostd-bgp", "\n".join(topo.learned_routes(2)))
    show(f"ip -n {hv2.ns.name} -6 route show proto l3hostd-bgp",
         "\n".join(topo.learned_routes(2, "-6")))
    show(f"birdc -s {topo.rr.sock} show route", topo.rr.birdc("show", "route"))

    say("traffic between VMs on different hypervisors, no shared L2")
    check(vm1.ns.ping(vm2.ipv4, timeout=3), f"vm1 -> vm2 {vm2.ipv4}")
    check(vm1.ns.ping(vm2.ipv6, timeout=3), f"vm1 -> vm2 {vm2.ipv6}")
    check(vm2.ns.ping(vm1.ipv4, timeout=3), f"vm2 -> vm1 {vm1.ipv4}")

    say("a security group: vm2 now accepts only ping and TCP 22 (nftables on hv2)")
    (hv2.endpoints / "security-groups" / "ssh.yaml").write_text(SSH_GROUP)
    endpoint = vm2.endpoint()
    endpoint["security_groups"] = ["ssh"]
    path = hv2.endpoints / f"{vm2.tap}.yaml"
    path.with_suffix(".tmp").write_text(yaml.safe_dump(endpoint))
    path.with_suffix(".tmp").rename(path)
    for port in (22, 80):
        lab.start(vm2.ns, [sys.executable, "-c", LISTEN.format(port=port)], f"listen{port}.log")
    time.sleep(0.5)
    check(_connects(vm1, vm2.ipv4, 22), "vm1 -> vm2 TCP 22 is allowed")
    check(not _connects(vm1, vm2.ipv4, 80), "vm1 -> vm2 TCP 80 is dropped")
    check(vm1.ns.ping(vm2.ipv4, timeout=3), "vm1 -> vm2 ping is allowed")
    show(f"ip netns exec {hv2.ns.name} nft list table inet l3hostd | grep ...",
         "\n".join(line for line in hv2.ns.run("nft", "list", "table", "inet", "l3hostd")
                   .stdout.splitlines() if "dport 22" in line or "l3hostd:" in line)[:2000])

    say("l3hostctl, the operator's view on hv1")
    from l3hostd.ctl import main as ctl_main

    for what in ("peers", "endpoints"):
        print(f"$ l3hostctl --socket {hv1.socket} show {what}", flush=True)
        ctl_main(["--socket", str(hv1.socket), "show", what])

    say("vm2's TAP goes away: its routes are withdrawn everywhere")
    started = time.monotonic()
    hv2.ns.ip("link", "del", vm2.tap)
    wait_until(lambda: not topo.learned_routes(1), 5, interval=0.002, what="withdrawal")
    print(f"  gone from hv1's kernel {1000 * (time.monotonic() - started):.1f} ms later")
    check(not vm1.ns.ping(vm2.ipv4, timeout=1), "vm1 -> vm2 fails now")

    if keep:
        say("the lab stays up; Ctrl-C removes it. Look around with:")
        print(f"  ip netns exec {hv1.ns.name} ip route")
        print(f"  ip netns exec {vm1.ns.name} ping {hv1.uplink4}")
        print(f"  l3hostctl --socket {hv1.socket} show peers")
        print(f"  birdc -s {topo.rr.sock} show protocols")
        print(f"  endpoint files: {hv1.endpoints}  (add/edit/remove and watch the routes)")
        print(f"  daemon logs: {lab.workdir}/hv1.log, {lab.workdir}/hv2.log")
        os.environ["L3HOSTD_KEEP_LABDIR"] = ""
        while True:
            time.sleep(3600)
    say("tearing down")
    return 0
