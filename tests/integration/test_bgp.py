"""l3hostd as BGP speaker against a real BIRD 2 route reflector, in namespaces.

Topology (``l3hostd.birdlab.BgpTopology``): ``rr`` runs BIRD 2 (``rr client``, ADD-PATH
tx, graceful restart), each ``hv<i>`` runs the real ``l3hostd run`` with an IPv4 session
carrying IPv4 routes and an IPv6 session carrying IPv6 routes, VMs sit behind TAP-named
veths. ``shared_fabric=True`` puts every hypervisor and the RR on one L2 segment (next
hops on-link, so ECMP over several hypervisors is visible); otherwise each hypervisor has
its own link to the RR and next hops are resolved through it.
"""

from __future__ import annotations

import re
import signal
import time

import pytest

from l3hostd.birdlab import BgpTopology
from l3hostd.lab import Lab, route_monitor, wait_until


def deleted_learned(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("Deleted") and
            ("l3hostd-bgp" in line or "proto 45" in line)]


def up(lab: Lab, hypervisors: int = 2, **kw: object) -> BgpTopology:
    topo = BgpTopology(lab, hypervisors=hypervisors, speaker="l3hostd", **kw)  # type: ignore[arg-type]
    topo.start(timeout=30)
    return topo


def test_vms_on_two_hypervisors_reach_each_other_over_bgp_routes(lab: Lab) -> None:
    topo = up(lab)
    vm1 = topo.add_vm(1, "vm1", 11)
    vm2 = topo.add_vm(2, "vm2", 12)
    wait_until(lambda: len(topo.learned_routes(2)) == 1 and len(topo.learned_routes(1)) == 1
               and len(topo.learned_routes(2, "-6")) == 1, 10, what="routes learned")
    assert topo.learned_routes(2)[0].startswith(f"{vm1.ipv4} via ")
    assert vm1.ns.ping(vm2.ipv4, timeout=3), "IPv4 VM to VM over BGP-learned /32s"
    assert vm1.ns.ping(vm2.ipv6, timeout=3), "IPv6 VM to VM over BGP-learned /128s"
    # the reflector holds exactly the two host routes, next hop = the hypervisors
    routes4 = topo.rr.routes("master4")
    routes6 = topo.rr.routes("master6")
    assert {p: sorted(h) for p, h in routes4.items()} == {
        f"{vm1.ipv4}/32": [topo.hv(1).uplink4], f"{vm2.ipv4}/32": [topo.hv(2).uplink4]}
    assert {p: sorted(h) for p, h in routes6.items()} == {
        f"{vm1.ipv6}/128": [topo.hv(1).uplink6], f"{vm2.ipv6}/128": [topo.hv(2).uplink6]}


def test_tap_removed_on_hv1_is_gone_from_hv2_within_100ms(lab: Lab) -> None:
    topo = up(lab)
    vm1 = topo.add_vm(1, "vm1", 11)
    wait_until(lambda: len(topo.learned_routes(2)) == 1, 10, what="route learned")
    start = time.monotonic()
    topo.hv(1).ns.ip("link", "del", vm1.tap)
    took = wait_until(lambda: not topo.learned_routes(2), 2, interval=0.001, what="withdrawn")
    assert took < 0.1, f"withdrawal took {took * 1000:.1f} ms"
    assert time.monotonic() - start < 0.5


def test_anycast_prefix_gives_ecmp_on_a_third_hypervisor(lab: Lab) -> None:
    topo = up(lab, hypervisors=3, shared_fabric=True)
    vm_a = topo.add_vm(1, "vma", 50, plug=False)
    vm_b = topo.add_vm(2, "vmb", 51, plug=False)
    # the same address on both VMs (anycast / shared address)
    for vm in (vm_a, vm_b):
        vm.ipv4 = "10.10.0.50"
    topo.hv(1).write_endpoint(vm_a)
    topo.hv(2).write_endpoint(vm_b)

    def ecmp() -> bool:
        out = topo.hv(3).ns.ip("route", "show", "10.10.0.50/32", "proto", "45").stdout
        return out.count("nexthop via") == 2

    wait_until(ecmp, 10, what="ECMP route on hv3")
    out = topo.hv(3).ns.ip("route", "show", "10.10.0.50/32").stdout
    assert topo.hv(1).uplink4 in out and topo.hv(2).uplink4 in out
    # l3hostctl show routes --prefix: both paths, both selected, both installed
    from l3hostd.ctl import request

    reply = request(str(topo.hv(3).socket),
                    {"command": "show", "what": "routes", "prefix": "10.10.0.50/32"})
    detail = reply["data"]
    assert len(detail["paths"]) == 2, detail
    want = sorted([topo.hv(1).uplink4, topo.hv(2).uplink4])
    assert sorted(detail["selected_next_hops"]) == want
    assert sorted(detail["installed_next_hops"]) == want
    # each announcer keeps its own local route and still announces it
    local = topo.hv(1).ns.ip("route", "show", "10.10.0.50/32").stdout
    assert f"dev {vm_a.tap} proto l3hostd" in local
    # one announcer goes: a single path remains
    topo.hv(2).ns.ip("link", "del", vm_b.tap)
    wait_until(lambda: "nexthop" not in topo.hv(3).ns.ip(
        "route", "show", "10.10.0.50/32", "proto", "45").stdout, 5, what="one path left")


def test_kernel_learn_mode_announces_and_withdraws_a_foreign_tap_route(lab: Lab) -> None:
    topo = up(lab)
    vm1 = topo.add_vm(1, "vm1", 11, plug=False)  # no endpoint file: Felix-style route only
    hv1 = topo.hv(1)
    hv1.ns.ip("route", "add", "10.10.0.99/32", "dev", vm1.tap, "proto", "static")
    wait_until(lambda: any(r.startswith("10.10.0.99 ") for r in topo.learned_routes(2)), 10,
               what="kernel-learned route announced")
    assert topo.rr.routes("master4") == {"10.10.0.99/32": [hv1.uplink4]}
    hv1.ns.ip("route", "del", "10.10.0.99/32", "dev", vm1.tap, "proto", "static")
    wait_until(lambda: not topo.learned_routes(2), 5, what="withdrawn")
    # the default route is never exported
    hv1.ns.ip("route", "add", "default", "dev", vm1.tap, "proto", "static", "metric", "500")
    time.sleep(0.5)
    assert topo.rr.routes("master4") == {}


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_restart_of_hv1_loses_no_route_on_hv2(lab: Lab, sig: int) -> None:
    topo = up(lab)
    vm1 = topo.add_vm(1, "vm1", 11)
    topo.add_vm(2, "vm2", 12)
    wait_until(lambda: len(topo.learned_routes(2)) == 1 and len(topo.learned_routes(1)) == 1,
               10, what="routes learned")
    with route_monitor(lab, topo.hv(2).ns) as lines2, route_monitor(lab, topo.hv(1).ns) as lines1:
        topo.speaker(1).stop(sig)
        topo.speaker(1).start()
        topo.speaker(1).wait_established(30)
        time.sleep(1.5)  # End-of-RIB exchanged, stale routes swept
    assert deleted_learned(lines2) == [], lines2
    assert deleted_learned(lines1) == [], lines1  # hv1's own learned routes were adopted
    assert len(topo.learned_routes(2)) == 1 and len(topo.learned_routes(1)) == 1
    assert f"{vm1.ipv4}" in topo.learned_routes(2)[0]


def test_route_reflector_restart_loses_no_route_with_graceful_restart(lab: Lab) -> None:
    topo = up(lab)
    topo.add_vm(1, "vm1", 11)
    topo.add_vm(2, "vm2", 12)
    wait_until(lambda: len(topo.learned_routes(2)) == 1 and len(topo.learned_routes(1)) == 1,
               10, what="routes learned")
    with route_monitor(lab, topo.hv(2).ns) as lines2, route_monitor(lab, topo.hv(1).ns) as lines1:
        topo.rr.kill()  # no NOTIFICATION: the hypervisors keep its routes as stale
        time.sleep(1)
        assert len(topo.learned_routes(2)) == 1
        topo.rr.start()
        topo.wait_established(30)
        time.sleep(1.5)
    assert deleted_learned(lines2) == [] and deleted_learned(lines1) == []
    assert len(topo.learned_routes(2)) == 1 and len(topo.learned_routes(1)) == 1
    peers = topo.hv(2).ctl("show", "peers")
    assert isinstance(peers, list) and all(p["flaps"] >= 1 and not p["stale"] for p in peers)


def test_max_prefix_exceeded_tears_the_session_down_with_cease(lab: Lab) -> None:
    topo = up(lab, l3hostd_config={"bgp": {"import": {"max_prefixes": 2}}})
    for i in range(3):
        topo.add_vm(1, f"vm{i}", 20 + i)
    wait_until(lambda: "Maximum Number of Prefixes Reached" in topo.hv(2).log(), 15,
               what="max-prefix log line on hv2")
    log = topo.hv(2).log()
    assert re.search(r"peer rr: .*more than 2 prefixes", log), log[-2000:]
    info = topo.rr.birdc("show", "protocols", "all", "hv2")
    assert re.search(r"(?i)maximum number of prefixes", info), info


def test_drain_puts_graceful_shutdown_on_the_routes_then_withdraws(lab: Lab) -> None:
    topo = up(lab)
    vm1 = topo.add_vm(1, "vm1", 11)
    prefix = f"{vm1.ipv4}/32"
    wait_until(lambda: prefix in topo.rr.routes("master4"), 10, what="route at the RR")
    from l3hostd.ctl import main as ctl

    assert ctl(["--socket", str(topo.hv(1).socket), "drain", "--wait", "1.5"]) == 0

    def community_at_rr() -> bool:
        out = topo.rr.birdc("show", "route", prefix, "all")
        return "(65535,0)" in out

    wait_until(community_at_rr, 3, what="GRACEFUL_SHUTDOWN (65535,0) on the route at the RR")
    assert prefix in topo.rr.routes("master4")  # still announced during the wait
    wait_until(lambda: prefix not in topo.rr.routes("master4"), 5, what="withdrawn after wait")
    status = topo.hv(1).ctl("show", "status")
    assert isinstance(status, dict) and status["drained"] is True
    assert ctl(["--socket", str(topo.hv(1).socket), "undrain"]) == 0
    wait_until(lambda: prefix in topo.rr.routes("master4"), 5, what="announced again")
    assert "(65535,0)" not in topo.rr.birdc("show", "route", prefix, "all")


def test_bulk_table_arrives_whole_with_input_held_while_the_kernel_catches_up(lab: Lab) -> None:
    """40k routes from the reflector: more than the backlog lets in at once, so hv2 holds
    its input while installing (l3hostd.bgp.flow); every route ends up in the kernel and
    the session never drops."""
    routes = 40_000
    topo = BgpTopology(lab, hypervisors=2, speaker="l3hostd", rr_static_routes=routes)
    topo.start(timeout=30)
    wait_until(lambda: len(topo.learned_routes(2)) >= routes, 30, interval=0.2,
               what="all routes in hv2's kernel")
    assert len(topo.learned_routes(2)) == routes
    status = topo.hv(2).ctl("show", "status")
    peers = topo.hv(2).ctl("show", "peers")
    assert isinstance(peers, list) and all(p["flaps"] == 0 for p in peers), peers
    assert isinstance(status, dict) and status["bgp_input_holds"] >= 1, status
