"""Faults of the route reflectors, with two real BIRD 2 reflectors as in production.

Topology: ``BgpTopology(reflectors=2, shared_fabric=True)``: ``rr`` and ``rr2`` on one L2
fabric with every hypervisor; each l3hostd peers with both (IPv4 and IPv6 sessions), both
reflect every path with ADD-PATH and the same next hop (the announcing hypervisor), so a
hypervisor's kernel route is one next hop whichever reflector carries it. Losses are
watched with ``ip monitor route`` on every hypervisor for the whole fault: a learned route
(proto 45) that leaves a kernel, even for a moment, shows as a ``Deleted`` line.
"""

from __future__ import annotations

import signal
import time

from faultlab import deleted_learned, learned_lines, paths_by_peer, peer_rows, route_monitor

from l3hostd.birdlab import BgpTopology
from l3hostd.lab import Lab, Vm, wait_until

#: The restart time the reflectors advertise (BIRD ``graceful restart time``): short, so
#: that the test of its expiry takes seconds. The default is 120 s.
RESTART_TIME = 6
#: How long a reflector restarted in recovery holds its routes and End-of-RIB back: with
#: :data:`GHOST` configured it waits that long, so its End-of-RIB comes after the restart
#: time while its sessions are up well before it.
GR_WAIT = 10
#: A client of the reflectors that never connects (graceful restart on: a reflector in
#: recovery waits for its End-of-RIB until ``graceful restart wait`` ends).
GHOST = """\
protocol bgp ghost {
  local as 65501;
  neighbor 100.64.99.1 as 65501;
  rr client;
  direct;
  graceful restart on;
  ipv4 { import all; export all; };
}
"""


def two_reflectors(lab: Lab, **rr_options: object) -> tuple[BgpTopology, Vm, Vm]:
    topo = BgpTopology(lab, hypervisors=2, speaker="l3hostd", shared_fabric=True,
                       reflectors=2, rr_options=rr_options or None)
    topo.start(timeout=30)
    vm1 = topo.add_vm(1, "vm1", 11)
    vm2 = topo.add_vm(2, "vm2", 12)
    wait_until(lambda: all_paths(topo, vm1, vm2, {"rr", "rr2"}), 15,
               what="every route learned from both reflectors")
    return topo, vm1, vm2


def all_paths(topo: BgpTopology, vm1: Vm, vm2: Vm, peers: set[str]) -> bool:
    """Each hypervisor has exactly ``peers`` (their IPv4 sessions; the IPv6 ones with _6
    or rr6) as the senders of the other VM's routes."""
    peers6 = {"rr6" if p == "rr" else f"{p}_6" for p in peers}
    for hv, vm in ((topo.hv(1), vm2), (topo.hv(2), vm1)):
        if set(paths_by_peer(hv, f"{vm.ipv4}/32")) != peers:
            return False
        if set(paths_by_peer(hv, f"{vm.ipv6}/128")) != peers6:
            return False
    return True


def learned(topo: BgpTopology) -> list[list[str]]:
    return [topo.learned_routes(i, f) for i in (1, 2) for f in ("-4", "-6")]


def test_one_reflector_down_loses_no_route_and_its_sessions_come_back(lab: Lab) -> None:
    topo, vm1, vm2 = two_reflectors(lab)
    before = learned(topo)
    assert all(len(routes) == 1 for routes in before), before
    with route_monitor(lab, topo.hv(1).ns) as lines1, route_monitor(lab, topo.hv(2).ns) as lines2:
        # SIGTERM: BIRD closes its sessions with a Cease, which ends graceful restart
        # (RFC 4724): the hypervisors drop rr's paths at once, only rr2 carries the routes
        topo.rr.stop(signal.SIGTERM)
        wait_until(lambda: all_paths(topo, vm1, vm2, {"rr2"}), 5,
                   what="rr's paths gone, rr2's kept")
        assert learned(topo) == before
        assert vm1.ns.ping(vm2.ipv4, timeout=3) and vm1.ns.ping(vm2.ipv6, timeout=3)
        peers = peer_rows(topo.hv(2))
        assert peers["rr"]["state"] != "Established" and not peers["rr"]["stale"], peers
        assert peers["rr2"]["state"] == "Established"

        topo.rr.start()
        topo.wait_established(30)
        wait_until(lambda: all_paths(topo, vm1, vm2, {"rr", "rr2"}), 15,
                   what="paths from both reflectors again")
    # the kernels never saw a change of a learned route: not deleted, not even replaced
    assert learned_lines(lines1) == [] and learned_lines(lines2) == [], (lines1, lines2)
    assert learned(topo) == before
    flaps = {name: p["flaps"] for name, p in peer_rows(topo.hv(1)).items()}
    assert flaps == {"rr": 1, "rr6": 1, "rr2": 0, "rr2_6": 0}, flaps


def test_both_reflectors_restart_within_the_restart_time_then_stay_down(lab: Lab) -> None:
    """Graceful restart with both reflectors gone: killed (no NOTIFICATION) and back
    within their restart time, nothing leaves the kernels -- also while the restarted
    reflectors hold their End-of-RIB back past the restart time (RFC 4724 §4.2: the
    restart time bounds the re-establishment, then the stale routes wait for End-of-RIB);
    killed and left down, their stale routes go once the restart time is over, not
    before; and they come back."""
    topo, vm1, vm2 = two_reflectors(lab, graceful_restart_time=RESTART_TIME,
                                    graceful_restart_wait=GR_WAIT, extra=GHOST)
    before = learned(topo)

    def any_stale() -> bool:
        return any(p["stale"] for i in (1, 2) for p in peer_rows(topo.hv(i)).values())

    # 1. both killed, restarted (with -R: forwarding state preserved) within the time
    with route_monitor(lab, topo.hv(1).ns) as lines1, route_monitor(lab, topo.hv(2).ns) as lines2:
        killed = time.monotonic()
        for rr in topo.reflectors:
            rr.kill()
        time.sleep(1)
        assert learned(topo) == before, "stale routes are kept while the reflectors are down"
        assert any_stale()
        for rr in topo.reflectors:
            rr.start()
        topo.wait_established(RESTART_TIME)
        established = time.monotonic() - killed
        wait_until(lambda: not any_stale(), GR_WAIT + 5, what="End-of-RIB from the reflectors")
        end_of_rib = time.monotonic() - killed
        wait_until(lambda: all_paths(topo, vm1, vm2, {"rr", "rr2"}), 5,
                   what="paths from both reflectors again")
    assert established < RESTART_TIME < end_of_rib, (established, end_of_rib)
    assert deleted_learned(lines1) == [] and deleted_learned(lines2) == [], (lines1, lines2)
    assert learned(topo) == before
    assert vm1.ns.ping(vm2.ipv4, timeout=3)

    # 2. both killed and left down: stale until the restart time ends, then removed
    with route_monitor(lab, topo.hv(2).ns) as lines:
        killed = time.monotonic()
        for rr in topo.reflectors:
            rr.kill()
        wait_until(lambda: learned(topo) == [[], [], [], []], RESTART_TIME + 5,
                   interval=0.05, what="stale routes removed after the restart time")
        gone_after = time.monotonic() - killed
    assert gone_after >= RESTART_TIME - 0.5, f"stale routes removed after {gone_after:.1f}s"
    assert len(deleted_learned(lines)) == 2, lines  # vm1's /32 and /128, once each
    assert "restart time over, removing its stale routes" in topo.hv(2).log()

    # 3. back (not in recovery: no wait for the ghost): sessions and routes return
    for rr in topo.reflectors:
        rr.start(recovery=False)
    topo.wait_established(30)
    wait_until(lambda: learned(topo) == before, 10, what="routes learned again")
