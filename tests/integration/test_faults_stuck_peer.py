"""A BGP peer that stops reading (TCP window full) beside a real BIRD reflector.

Topology: ``BgpTopology(hypervisors=1, shared_fabric=True)`` (BIRD 2 reflector ``rr``,
``hv1`` running l3hostd) plus a namespace ``stuck`` on the same fabric running
``stuckpeer.py``: a passive BGP peer that completes OPEN/KEEPALIVE and then never reads
its socket (4 KiB receive buffer) and sends nothing either, like a hung process. hv1 peers
with both; its session to ``stuck`` has hold time 6 s.

Then 20,000 host routes appear on a TAP (kernel-learn mode) and 20 endpoints are created:
UPDATEs for both peers. Checked: the stuck peer's TCP window is closed with l3hostd's data
queued (``ss`` Send-Q on hv1, Recv-Q on the peer), every route and endpoint still reaches
BIRD promptly, the control socket keeps answering quickly, the reflector's session never
flaps, a TAP created then reaches BIRD in milliseconds, and the hold timer ends the
stuck session.

A second test runs the peer in ``--keepalives`` mode (reads nothing, keeps sending
KEEPALIVEs): its hold timer never expires, the RFC 9687 send hold timer ends the session.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import yaml
from faultlab import add_taps, endpoint_files, ip_batch, make_ports

from l3hostd.birdlab import BgpTopology, BirdError, parse_routes
from l3hostd.lab import Hypervisor, Lab, Netns, wait_until

STUCK = "100.64.1.252"
STUCK_HOLD = 6
ROUTES = 20_000
TOOL = Path(__file__).with_name("stuckpeer.py")
LONG = os.environ.get("L3HOSTD_LONG_TESTS") == "1"


def peer_state(topo: BgpTopology, name: str) -> dict[str, object]:
    peers = topo.hv(1).ctl("show", "peers")
    assert isinstance(peers, list)
    return next(p for p in peers if p["name"] == name)


def at_bird(topo: BgpTopology, prefix: str) -> bool:
    try:
        return prefix in parse_routes(topo.rr.birdc("show", "route", prefix))
    except BirdError:  # "Network not found"
        return False


def queues(ns: Netns, remote: str) -> tuple[int, int]:
    """(Recv-Q, Send-Q) of the established TCP connection to ``remote`` port 179, or of
    the one from it when ``remote`` is the peer's side."""
    out = ns.run("ss", "-Htn", "state", "established").stdout
    for line in out.splitlines():
        words = line.split()
        if len(words) >= 4 and remote in (words[2].rsplit(":", 1)[0],
                                          words[3].rsplit(":", 1)[0]):
            return int(words[0]), int(words[1])
    return -1, -1


def stuck_topology(lab: Lab, keepalives: bool = False, send_hold_time: int | None = None
                   ) -> tuple[BgpTopology, Netns, subprocess.Popen[bytes]]:
    """The topology of the module docstring, sessions up, the peer stuck from now on."""
    topo = BgpTopology(lab, hypervisors=1, ipv6=False, speaker="l3hostd", shared_fabric=True)
    hv = topo.hv(1)
    stuck_ns = lab.netns("stuck")
    lab.veth(stuck_ns, "eth0", topo.rr_ns, "stuck")
    topo.rr_ns.ip("link", "set", "stuck", "master", "fabric")
    stuck_ns.ip("addr", "add", f"{STUCK}/16", "dev", "eth0")
    config = yaml.safe_load(hv.config_path.read_text())
    config["bgp"]["peers"].append({
        "name": "stuck", "address": STUCK, "asn": 65501, "source_address": hv.uplink4,
        "families": ["ipv4"], "hold_time": STUCK_HOLD, "keepalive_time": 2,
    })
    config["dataplane"] = {"ipv6_gateway": False}  # the endpoints' TAPs are IPv4-only
    if send_hold_time is not None:
        config["bgp"]["send_hold_time"] = send_hold_time
    hv.config_path.write_text(yaml.safe_dump(config))
    stuck = lab.start(stuck_ns, [sys.executable, str(TOOL), STUCK, "65501", STUCK,
                                 *(["--keepalives"] if keepalives else [])], "stuck.log")
    log = lab.workdir / "stuck.log"
    wait_until(lambda: "listening" in log.read_text(), 10, what="stuck peer listening")
    topo.start(timeout=30)
    wait_until(lambda: peer_state(topo, "stuck")["state"] == "Established", 15,
               what="session to the stuck peer")
    wait_until(lambda: "established" in log.read_text(), 5, what="stuck peer established")
    return topo, stuck_ns, stuck


def flood(hv: Hypervisor, routes: int) -> None:
    """``routes`` host routes on a TAP, Felix-style (kernel-learn): all announced."""
    (tap,) = make_ports(1, "f", "10.59.0.0")
    add_taps(hv.ns, [tap])
    ip_batch(hv.ns, [f"route add 10.60.{i // 250}.{i % 250 + 1}/32 dev {tap.tap} proto static"
                     for i in range(routes)])


def test_a_peer_that_stops_reading_affects_nobody_else_and_is_torn_down(lab: Lab) -> None:
    topo, stuck_ns, stuck = stuck_topology(lab)
    hv = topo.hv(1)
    stuck_since = time.monotonic()

    # 20k routes on a TAP, Felix-style (kernel-learn), and 20 endpoints: all announced
    flood(hv, ROUTES)
    endpoints = make_ports(20, "e", "10.61.0.0")
    endpoint_files(hv, endpoints)
    add_taps(hv.ns, endpoints)
    wait_until(lambda: topo.rr.route_count() == ROUTES + len(endpoints), STUCK_HOLD - 2,
               interval=0.1, what="every route at BIRD while the stuck session is up")
    converged = time.monotonic() - stuck_since
    # the stuck peer's window is closed: our data waits in hv1's send queue
    recv_q_peer, _ = queues(stuck_ns, hv.uplink4)
    _, send_q_hv = queues(hv.ns, STUCK)
    assert send_q_hv > 0 and recv_q_peer > 0, (recv_q_peer, send_q_hv)
    assert peer_state(topo, "stuck")["state"] == "Established"

    # with the stuck peer still Established: the control socket answers at once, and a
    # new TAP reaches BIRD as fast as ever
    slowest = 0.0
    for _ in range(20):
        t = time.monotonic()
        assert isinstance(hv.ctl("show", "status"), dict)
        slowest = max(slowest, time.monotonic() - t)
        time.sleep(0.02)
    (late,) = make_ports(1, "d", "10.62.0.0")
    endpoint_files(hv, [late])
    t = time.monotonic()
    add_taps(hv.ns, [late])
    wait_until(lambda: at_bird(topo, f"{late.ip}/32"), 2, interval=0.005,
               what="a new endpoint at BIRD")
    tap_to_bird = time.monotonic() - t
    assert peer_state(topo, "stuck")["state"] == "Established"
    print(f"{ROUTES + len(endpoints)} routes at BIRD {converged:.2f}s after the peer stopped; "
          f"stuck peer Recv-Q {recv_q_peer}, hv1 Send-Q {send_q_hv}; control socket slowest "
          f"{slowest * 1000:.1f} ms; new TAP -> BIRD {tap_to_bird * 1000:.0f} ms")
    assert slowest < 0.25, f"control socket took {slowest:.2f}s"

    # the hold timer ends the stuck session; the reflector's session never moved
    wait_until(lambda: peer_state(topo, "stuck")["state"] != "Established",
               STUCK_HOLD + 5, interval=0.1, what="hold timer expiry on the stuck session")
    down_after = time.monotonic() - stuck_since
    assert down_after >= STUCK_HOLD - 1, down_after
    assert "hold timer expired" in hv.log().lower(), hv.log()[-3000:]
    rr = peer_state(topo, "rr")
    assert rr["state"] == "Established" and rr["flaps"] == 0, rr
    assert topo.rr.route_count() == ROUTES + len(endpoints) + 1
    assert stuck.poll() is None  # the speaker ended the session, not the peer


def test_a_peer_that_sends_keepalives_but_never_reads_is_torn_down(lab: Lab) -> None:
    """The same peer, but its timers keep running (``--keepalives``): the hold timer never
    expires, only a send-side limit can end the session -- RFC 9687's SendHoldTimer
    (``bgp.send_hold_time``, here 8 s; its default is max(8 min, 2x the hold time))."""
    topo, _, _ = stuck_topology(lab, keepalives=True, send_hold_time=8)
    flood(topo.hv(1), ROUTES)
    wait_until(lambda: queues(topo.hv(1).ns, STUCK)[1] > 0, 10, what="send queue backed up")
    backed_up = time.monotonic()
    wait_until(lambda: peer_state(topo, "stuck")["state"] != "Established", 4 * STUCK_HOLD,
               interval=0.2, what="the stuck session torn down by a send hold timer")
    took = time.monotonic() - backed_up
    assert re.search(r"peer stuck: send hold timer expired: \d+ bytes not taken by the peer "
                     r"for 8s \(RFC 9687\)", topo.hv(1).log()), topo.hv(1).log()[-2000:]
    assert took >= 6, f"torn down {took:.1f} s after the send queue backed up: too early"
    assert peer_state(topo, "rr")["state"] == "Established"  # the reflector unaffected
