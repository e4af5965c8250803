"""The core slice for real: l3hostd in a hypervisor namespace, VMs behind TAP-named veths.

No shared L2: VM addresses are from one /24 whose gateway exists nowhere; the hypervisor
has a default route out of a non-TAP interface (``eth0``). Everything a VM reaches, it
reaches through /32 and /128 routes, proxy-ARP and the ``fe80::1`` gateway on the TAP.
"""

from __future__ import annotations

import signal
import subprocess
import time

import pytest

from l3hostd.lab import Hypervisor, Lab, Vm, wait_until


def boot(lab: Lab, vms: int = 2) -> tuple[Hypervisor, list[Vm]]:
    fabric = lab.netns("fabric")
    hv = Hypervisor(lab, "hv", 1)
    hv.attach_uplink(fabric)
    # These tests are about routing, proxy-ARP and the kernel state, VM -> host pings
    # included, which the firewall's host protection forbids (tests/integration/
    # test_firewall.py covers it).
    hv.write_config({"firewall": {"enabled": False}})
    machines = [hv.add_vm(f"vm{i}", 10 + i) for i in range(1, vms + 1)]
    hv.start()
    hv.wait_ready()
    for vm in machines:
        hv.write_endpoint(vm)
    wait_until(lambda: len(hv.routes("-4")) == vms and len(hv.routes("-6")) == vms, 10,
               what="host routes")
    return hv, machines


def test_vms_reach_each_other_and_the_host_over_ipv4_and_ipv6(lab: Lab) -> None:
    hv, (vm1, vm2) = boot(lab)
    shown = hv.ns.ip("route", "show", f"{vm2.ipv4}/32").stdout
    assert f"{vm2.ipv4} dev {vm2.tap} proto l3hostd scope link" in shown
    shown = hv.ns.ip("-6", "route", "show", f"{vm2.ipv6}/128").stdout
    assert f"{vm2.ipv6} dev {vm2.tap} proto l3hostd" in shown
    neigh = hv.ns.ip("neigh", "show", "dev", vm1.tap, "nud", "permanent").stdout
    assert f"{vm1.ipv4} lladdr {vm1.mac} PERMANENT" in neigh
    assert vm1.ns.ping(vm2.ipv4), "vm1 -> vm2 over IPv4"
    assert vm2.ns.ping(vm1.ipv4), "vm2 -> vm1 over IPv4"
    assert vm1.ns.ping(hv.uplink4), "vm1 -> hypervisor over IPv4"
    assert vm1.ns.ping(vm2.ipv6), "vm1 -> vm2 over IPv6 via fe80::1"
    assert vm1.ns.ping(hv.uplink6), "vm1 -> hypervisor over IPv6"
    # the VM learnt the gateway's MAC by proxy-ARP: the TAP's own MAC answered
    tap_mac = hv.ns.ip("-br", "link", "show", vm1.tap).stdout.split()[2]
    assert tap_mac in vm1.ns.ip("neigh", "show", "10.10.0.1").stdout
    sysctl = hv.ns.run("sysctl", "-n", f"net.ipv4.conf.{vm1.tap}.proxy_arp").stdout.strip()
    assert sysctl == "1"


def test_tap_down_and_up_gets_its_routes_back(lab: Lab) -> None:
    hv, (vm1, vm2) = boot(lab)
    hv.ns.ip("link", "set", vm2.tap, "down")
    wait_until(lambda: vm2.ipv4 not in " ".join(hv.routes("-4")), 2, what="flush on down")
    # the kernel drops the TAP's IPv6 addresses when it goes down; the gateway address is
    # put back while it is still down (the TAP's configuration does not wait for link up:
    # it is off the path from up to announcement)
    wait_until(lambda: "fe80::1/64" in hv.ns.ip("-6", "addr", "show", "dev", vm2.tap).stdout,
               2, what="fe80::1 on the TAP while it is down")
    # so are the VM's permanent neighbour entries, which the kernel flushed too: when the
    # TAP comes up, only its routes are written before the announcement
    wait_until(lambda: {vm2.ipv4, vm2.ipv6} <= set(hv.ns.ip(
        "neigh", "show", "dev", vm2.tap, "nud", "permanent").stdout.split()), 2,
        what="the VM's neighbour entries on the TAP while it is down")
    assert "UP" not in hv.ns.ip("-br", "link", "show", vm2.tap).stdout.split()[1]
    hv.ns.ip("link", "set", vm2.tap, "up")
    wait_until(lambda: len(hv.routes("-4")) == 2 and len(hv.routes("-6")) == 2, 2,
               what="routes back after up")
    neigh = hv.ns.ip("neigh", "show", "dev", vm2.tap, "nud", "permanent").stdout
    assert f"{vm2.ipv4} lladdr {vm2.mac} PERMANENT" in neigh  # kept through the way up
    assert vm1.ns.ping(vm2.ipv4, timeout=3)
    assert vm1.ns.ping(vm2.ipv6, timeout=3)


def test_deleting_a_tap_removes_its_routes_within_100ms(lab: Lab) -> None:
    hv, (_vm1, vm2) = boot(lab)
    hv.ns.ip("link", "del", vm2.tap)
    took = wait_until(lambda: len(hv.routes("-4")) == 1 and len(hv.routes("-6")) == 1, 0.1,
                      interval=0.002, what="routes gone")
    assert took < 0.1

    def daemon_forgot() -> bool:
        status = hv.ctl("show", "status")
        return isinstance(status, dict) and status["host_routes_installed"] == 2

    wait_until(daemon_forgot, 0.5, what="daemon's view")
    # its neighbour entries and configuration, written again when it went down (just
    # before it went away), failed quietly: a routine deletion is no warning
    assert not [line for line in hv.log().splitlines()
                if "writes failed" in line and "DEBUG" not in line]


def test_endpoint_file_added_and_removed(lab: Lab) -> None:
    hv, (vm1, _vm2) = boot(lab)
    vm3 = hv.add_vm("vm3", 13)
    path = hv.write_endpoint(vm3)
    wait_until(lambda: len(hv.routes("-4")) == 3, 2, what="vm3 route")
    assert vm1.ns.ping(vm3.ipv4)
    path.unlink()
    wait_until(lambda: len(hv.routes("-4")) == 2, 2, what="vm3 route removed")
    # a broken file for a new port changes nothing else
    (hv.endpoints / "broken.yaml").write_text("id: [unclosed\n")
    time.sleep(0.3)
    assert len(hv.routes("-4")) == 2 and hv.proc is not None and hv.proc.poll() is None
    status = hv.ctl("show", "status")
    assert isinstance(status, dict) and any("broken.yaml" in k for k in
                                            status["endpoint_file_errors"])


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_restart_touches_no_route_and_sweeps_what_went_away(lab: Lab, sig: int) -> None:
    hv, (vm1, vm2, _vm3) = boot(lab, vms=3)
    monitor = subprocess.Popen(
        ["ip", "-n", hv.ns.name, "monitor", "route"], stdout=subprocess.PIPE, text=True
    )
    lab.on_close(monitor.kill)
    try:
        time.sleep(0.2)
        hv.stop(sig)
        hv.start()
        hv.wait_ready()
        time.sleep(0.5)  # time to do anything wrong
    finally:
        monitor.terminate()
    events = monitor.communicate(timeout=5)[0]
    ours = [line for line in events.splitlines() if "l3hostd" in line or "proto 44" in line]
    assert ours == [], f"routes were rewritten across the restart: {ours}"
    assert len(hv.routes("-4")) == 3

    # an endpoint removed while the daemon is down is swept after the start
    hv.stop(sig)
    (hv.endpoints / f"{vm2.tap}.yaml").unlink()
    hv.start()
    hv.wait_ready()
    routes = " ".join(hv.routes("-4") + hv.routes("-6"))
    assert vm2.ipv4 not in routes and vm2.ipv6 not in routes
    assert vm1.ipv4 in routes
    assert vm1.ns.ping(hv.uplink4)
