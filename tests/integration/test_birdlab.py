"""The BIRD side of the BGP lab: a BIRD route reflector and two Calico-style BIRD hypervisors.

This is the reference l3hostd's BGP speaker is compared with: a host route added on hv1's
TAP the way Felix adds it (``proto static``) is learned by BIRD's kernel protocol, sent to
the reflector, reflected to hv2 and installed in hv2's kernel as ``proto bird``; VMs on the
two hypervisors then reach each other through the reflector's namespace. It also checks
what the benchmark relies on (the reflector's static routes reach every client with a
usable next hop) and that the lab leaves no namespace or BIRD process behind, also when
the code using it fails.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from l3hostd.birdlab import (
    BgpTopology,
    BirdRouter,
    BirdSpeaker,
    calico_hv_config,
    felix_unplug,
    parse_routes,
    rr_config,
)
from l3hostd.lab import Lab, LabError, wait_until


def bird_of(topo: BgpTopology, index: int) -> BirdRouter:
    speaker = topo.speaker(index)
    assert isinstance(speaker, BirdSpeaker)
    return speaker.router


def test_bird_reflects_felix_routes_and_vms_talk(lab: Lab) -> None:
    topo = BgpTopology(lab, hypervisors=2, ipv6=True, speaker="bird", rr_static_routes=3)
    topo.start(timeout=10)
    vm1 = topo.add_vm(1, "vm1", 11)
    vm2 = topo.add_vm(2, "vm2", 12)

    # hv1's Felix-style route -> BIRD hv1 -> RR -> BIRD hv2 -> hv2's kernel, proto bird
    def learned(index: int, family: str, address: str) -> bool:
        return any(r.split()[0] == address for r in topo.learned_routes(index, family))

    wait_until(lambda: learned(2, "-4", vm1.ipv4) and learned(2, "-6", vm1.ipv6), 5,
               what="vm1's routes in hv2's kernel")
    wait_until(lambda: learned(1, "-4", vm2.ipv4) and learned(1, "-6", vm2.ipv6), 5,
               what="vm2's routes in hv1's kernel")
    shown = topo.hv(2).ns.ip("route", "show", f"{vm1.ipv4}/32").stdout
    assert f"{vm1.ipv4} via 100.64.2.254 dev eth0 proto bird" in shown
    # the reflector keeps hv1's next hop (no next-hop change on reflection)
    assert topo.rr.routes()[f"{vm1.ipv4}/32"] == ["100.64.1.1"]
    assert topo.rr.routes("master6")[f"{vm1.ipv6}/128"] == ["fd00:64:1::1"]
    # hv2's BIRD: its own VM from the kernel (a device route), vm1 from the reflector
    hv2_table = bird_of(topo, 2).routes()
    assert hv2_table[f"{vm2.ipv4}/32"] == [f"dev {vm2.tap}"]
    assert hv2_table[f"{vm1.ipv4}/32"] == ["100.64.2.254"]
    # the default route the hypervisors learned from their kernels is never exported
    assert "0.0.0.0/0" not in topo.rr.routes()
    assert "::/0" not in topo.rr.routes("master6")
    # ADD-PATH negotiated: tx on the reflector, rx on the client
    session = topo.rr.birdc("show", "protocols", "all", "hv2")
    assert "ADD-PATH" in session and "Established" in session

    # the reflector's static blackholes reach each client with its own link address
    for i in (1, 2):
        shown = topo.hv(i).ns.ip("route", "show", "10.200.0.2/32").stdout
        assert f"10.200.0.2 via 100.64.{i}.254 dev eth0 proto bird metric 32" in shown

    assert vm1.ns.ping(vm2.ipv4, timeout=3), "vm1 -> vm2 over IPv4"
    assert vm2.ns.ping(vm1.ipv4), "vm2 -> vm1 over IPv4"
    assert vm1.ns.ping(vm2.ipv6, timeout=3), "vm1 -> vm2 over IPv6"

    # Felix removes the route: withdrawn everywhere
    felix_unplug(topo.hv(1).ns, vm1)
    wait_until(lambda: not learned(2, "-4", vm1.ipv4) and not learned(2, "-6", vm1.ipv6), 5,
               what="vm1's routes withdrawn from hv2")

    # graceful restart: hv2's BIRD dies without closing its session; the reflector keeps
    # hv2's routes as stale, hv1 keeps them in its kernel, and the restarted BIRD (persist:
    # its kernel routes stayed; -R: restart flag set) takes over without a withdrawal
    monitor = subprocess.Popen(["ip", "-n", topo.hv(1).ns.name, "monitor", "route"],
                               stdout=subprocess.PIPE, text=True)
    lab.on_close(monitor.kill)
    bird2 = bird_of(topo, 2)
    bird2.kill()
    assert learned(2, "-4", "10.200.0.2"), "persist: hv2's kernel kept BIRD's routes"
    assert f"{vm2.ipv4}/32" in topo.rr.routes()
    bird2.start(recovery=True)
    bird2.wait_established("rr4", 10)

    def reflector_recovered() -> bool:
        shown = topo.rr.birdc("show", "protocols", "all", "hv2")
        return "Established" in shown and "graceful restart active" not in shown

    wait_until(reflector_recovered, 5, what="reflector: hv2's End-of-RIB, stale routes swept")
    monitor.terminate()
    events = [line for line in monitor.communicate(timeout=5)[0].splitlines()
              if line.startswith("Deleted") and vm2.ipv4 in line]
    assert events == [], f"vm2's route was withdrawn from hv1 during the restart: {events}"
    assert learned(1, "-4", vm2.ipv4)
    assert vm2.ns.ping(topo.hv(1).uplink4, timeout=3)


def test_config_generators_pass_birds_parser(lab: Lab) -> None:
    ns = lab.netns("parse")
    rr = BirdRouter(lab, ns, "rr", "100.64.0.254")
    rr.write_config(rr_config("100.64.0.254", 65501,
                              [("hv1", "100.64.1.1"), ("hv1-v6", "fd00:64:1::1")],
                              static_routes=10, static_prefix="2001:db8:200::/64"))
    rr.check_config()
    hv = BirdRouter(lab, ns, "hv", "100.64.1.1")
    hv.write_config(calico_hv_config("100.64.1.1", 65501, "100.64.1.254", "100.64.1.1",
                                     learn_proto=4, interfaces=("tap*", "cali*", "dummy1"),
                                     rr6_address="fd00:64:1::254",
                                     source6_address="fd00:64:1::1"))
    hv.check_config()
    with pytest.raises(ValueError):
        rr_config("100.64.0.254", 65501, [], static_routes=300, static_prefix="10.0.0.0/24")


def test_parse_routes() -> None:
    text = (
        "Table master4:\n"
        "0.0.0.0/0            unicast [kernel4 14:47:28.680] * (10)\n"
        "\tvia 100.64.2.254 on eth0\n"
        "10.10.0.12/32        unicast [kernel4 14:47:29.716] * (10)\n"
        "\tdev tap020c7a7a-00\n"
        "10.10.0.11/32        unicast [rr4 14:47:29.660] * (100/?) [i]\n"
        "\tvia 100.64.1.254 on eth0 weight 1\n"
        "\tvia 100.64.3.254 on eth1 weight 1\n"
        "                     unicast [rr4 14:47:29.661] (100/?) [i]\n"
        "\tvia 100.64.2.254 on eth0\n"
        "\tType: BGP univ\n"
        "\tBGP.next_hop: 100.64.2.1\n"
        "10.200.0.1/32        blackhole [rr_static 14:47:28.654] * (200)\n"
    )
    assert parse_routes(text) == {
        "0.0.0.0/0": ["100.64.2.254"],
        "10.10.0.12/32": ["dev tap020c7a7a-00"],
        "10.10.0.11/32": ["100.64.1.254", "100.64.3.254", "100.64.2.254"],
        "10.200.0.1/32": ["blackhole"],
    }


def test_lab_removes_bird_and_namespaces_on_failure() -> None:
    pids: list[int] = []
    names: list[str] = []
    with pytest.raises(RuntimeError, match="boom"), Lab("l3t") as lab:
        topo = BgpTopology(lab, hypervisors=1, ipv6=False, speaker="bird")
        topo.start(wait=False)
        pids = [topo.rr.pid, bird_of(topo, 1).pid]
        names = [ns.name for ns in lab.namespaces]
        raise RuntimeError("boom")
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}"), f"bird {pid} survived the lab"
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(name in listed for name in names)


def test_bird_router_reports_a_bad_config(lab: Lab) -> None:
    bird = BirdRouter(lab, lab.netns("bad"), "bad", "100.64.0.1",
                      config="router id 100.64.0.1;\nprotocol bgp rr { }\n")
    with pytest.raises(LabError, match="syntax error"):
        bird.start(timeout=5)
    assert not bird.running()


def test_wake_ends_the_reflectors_missed_wakeup_after_a_feed() -> None:
    """BIRD 2.0.12 sends the last <= 256 routes of a feed and its End-of-RIB only at its
    next wake-up (0-1 s later, at random: with 10k routes and a BIRD client, 0.10-0.13 s
    instead of 0.025 s in half the runs); the bulk benchmark wakes it at each 10 ms poll.
    With that, 10k routes reach a BIRD client's FIB within 0.06 s of Established in each
    of 6 runs (0.024-0.033 s here); without :meth:`wake` this test fails most of the time."""
    from bench.scenarios.p3_bulk import measure_bulk

    times = []
    for _ in range(6):
        result = measure_bulk("bird", 10_000)
        assert result["in_fib"] == 10_000
        times.append(result["established_to_all_s"])
    assert max(times) < 0.06, times
