"""Faults of the hypervisor side: the daemon killed mid-burst, lost netlink events, nft
failing -- each checked against a real BIRD 2 reflector and read back from the kernel.

Topology: ``BgpTopology`` (reflector ``rr``, l3hostd on ``hv1`` and ``hv2``, IPv4
sessions). The many-endpoint tests use macvlans named like TAPs (``faultlab``: IPv4
only, so l3hostd runs with ``dataplane.ipv6_gateway: false``) and endpoint files written
as the orchestrator does. "Exactly the desired state" is :class:`faultlab.KernelState`
read with ``ip``/``nft -j`` on hv1, the reflector's table from ``birdc``, and hv2's
learned routes -- each compared with the set of endpoints that have both a file and a TAP.

``L3HOSTD_LONG_TESTS=1`` also runs the 10,000-TAP version of the overflow test (~20 s):
``L3HOSTD_LONG_TESTS=1 .venv/bin/python -m pytest -q tests/integration/test_faults_daemon.py
-k 10k``.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import threading
import time

import pytest
from faultlab import (
    IPV4_ONLY_TAPS,
    Port,
    add_taps,
    endpoint_files,
    ip_batch_quiet,
    make_ports,
    remove_endpoint_files,
    rr_prefixes,
    state_diff,
)

from bench.kstate import nft_chains
from l3hostd.birdlab import BgpTopology
from l3hostd.lab import Hypervisor, Lab, wait_until

LONG = os.environ.get("L3HOSTD_LONG_TESTS") == "1"


def ipv4_topology(lab: Lab, hypervisors: int = 2) -> BgpTopology:
    topo = BgpTopology(lab, hypervisors=hypervisors, ipv6=False, speaker="l3hostd",
                       l3hostd_config={**IPV4_ONLY_TAPS, "logging": {"level": "info"}})
    topo.start(timeout=30)
    return topo


def converged(topo: BgpTopology, live: list[Port], filed: list[Port] | None = None) -> str:
    """'' when hv1, the reflector and hv2 hold exactly ``live`` (and hv1's nft exactly
    ``filed``): :func:`bench.kstate.state_diff`."""
    return state_diff(topo, live, filed)


def wait_converged(topo: BgpTopology, live: list[Port], timeout: float,
                   filed: list[Port] | None = None) -> float:
    last = [""]

    def check() -> bool:
        last[0] = converged(topo, live, filed)
        return not last[0]

    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < timeout, f"not converged: {last[0]}"
        time.sleep(0.2)
    return time.monotonic() - start


# ---- kill -9 during a burst ------------------------------------------------------------------


def test_kill_9_during_a_burst_then_exactly_the_desired_state(lab: Lab) -> None:
    topo = ipv4_topology(lab)
    hv = topo.hv(1)
    initial = make_ports(200, "a", "10.40.0.0")
    endpoint_files(hv, initial)
    add_taps(hv.ns, initial)
    wait_converged(topo, initial, 30)
    chains = nft_chains(hv.ns)
    # one more endpoint, alone in a security group of its own: its group and profile
    # chains must go too once it is gone (deleted with its group file while hv1 is down)
    (solo,) = make_ports(1, "9", "10.44.0.0")
    group = hv.endpoints / "security-groups" / "solo.yaml"
    group.write_text("name: solo\nrules:\n  - {direction: ingress, ethertype: IPv4}\n")
    endpoint_files(hv, [solo])
    path = hv.endpoints / f"{solo.tap}.yaml"
    path.write_text(path.read_text().replace("[default]", "[solo]"))
    add_taps(hv.ns, [solo])
    wait_converged(topo, [*initial, solo], 30)
    assert len(nft_chains(hv.ns) - chains) >= 2, "the solo group's chains"

    gone = initial[:60]            # TAP and file deleted
    unfiled = initial[60:80]       # file deleted, TAP stays: closed, not announced
    untapped = initial[80:100]     # TAP deleted, file stays: nothing to route
    kept = initial[100:]
    new = make_ports(100, "b", "10.41.0.0")  # file and TAP created
    steps: list[tuple[str, list[Port]]] = []
    for i in range(10):  # ten rounds of a bit of everything, ~0.1 s apart
        steps += [("files", new[i * 10:(i + 1) * 10]), ("taps", new[i * 10:(i + 1) * 10]),
                  ("del", gone[i * 6:(i + 1) * 6]), ("unfile", unfiled[i * 2:(i + 1) * 2]),
                  ("untap", untapped[i * 2:(i + 1) * 2])]
    done = threading.Event()
    errors: list[BaseException] = []

    def burst() -> None:
        try:
            for n, (what, items) in enumerate(steps):
                if what == "files":
                    endpoint_files(hv, items)
                elif what == "taps":
                    add_taps(hv.ns, items)
                elif what == "del":
                    ip_batch_quiet(hv.ns, [f"link del {p.tap}" for p in items])
                    remove_endpoint_files(hv, items)
                elif what == "unfile":
                    remove_endpoint_files(hv, items)
                elif what == "untap":
                    ip_batch_quiet(hv.ns, [f"link del {p.tap}" for p in items])
                if n % 5 == 4:
                    time.sleep(0.1)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    worker = threading.Thread(target=burst)
    worker.start()
    time.sleep(0.5)  # some of the burst applied, some in flight
    topo.speaker(1).stop(signal.SIGKILL)
    killed_with_left = not done.is_set()
    worker.join(60)
    assert not errors, errors
    assert killed_with_left, "the burst ended before the kill: make it longer"
    ip_batch_quiet(hv.ns, [f"link del {solo.tap}"])
    remove_endpoint_files(hv, [solo])
    group.unlink()
    # while hv1 is down: stale objects of it remain (what the restart has to clean up)
    assert converged(topo, kept + new, kept + new + untapped) != ""
    assert nft_chains(hv.ns) != chains
    topo.speaker(1).start()
    took = wait_converged(topo, kept + new, 30, filed=kept + new + untapped)
    print(f"exact convergence {took:.2f}s after the restart "
          f"({len(kept + new)} endpoints live, {len(gone) + len(unfiled) + len(untapped) + 1} "
          "gone)")
    wait_until(lambda: nft_chains(hv.ns) == chains, 10, what="the solo group's chains gone")
    # the TAPs left without a file are closed: no element, no route (checked above), and
    # the daemon shows them nowhere as endpoints
    rows = endpoint_rows(hv)
    assert {r["interface"] for r in rows if r["state"] == "active"} == {p.tap for p in kept + new}


# ---- netlink overflow -------------------------------------------------------------------------


def endpoint_rows(hv: Hypervisor) -> list[dict[str, object]]:
    rows = hv.ctl("show", "endpoints")
    assert isinstance(rows, list)
    return rows


def link_monitor_drops(hv: Hypervisor, pid: int) -> int:
    """Messages the kernel dropped for the daemon's link-event socket (the one subscribed
    to RTMGRP_LINK, group mask 1), from /proc/PID/net/netlink of its namespace."""
    drops = 0
    with open(f"/proc/{pid}/net/netlink") as f:
        for line in f.readlines()[1:]:
            words = line.split()
            if words[1] == "0" and int(words[3], 16) == 1:
                drops += int(words[8])
    return drops


def _overflow(lab: Lab, count: int, stall: bool, timeout: float) -> None:
    topo = ipv4_topology(lab, hypervisors=2)
    hv = topo.hv(1)
    pid = topo.speaker(1).pid
    ports = make_ports(count, "c", "10.42.0.0")
    endpoint_files(hv, ports)
    wait_until(lambda: len(endpoint_rows(hv)) == count, 30, interval=0.2,
               what="endpoint files read")
    if stall:  # the daemon does not read for a while (descheduled, busy)
        os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        add_taps(hv.ns, ports)
        created = time.monotonic() - start
    finally:
        if stall:
            os.kill(pid, signal.SIGCONT)
    took = wait_converged(topo, ports, timeout)
    drops = link_monitor_drops(hv, pid)
    status = hv.ctl("show", "status")
    assert isinstance(status, dict)
    overflows = int(str(status["link_overflows"]))
    print(f"{count} TAPs created in {created:.1f}s; the kernel dropped {drops} link events; "
          f"link_overflows {overflows}; exact convergence {took:.1f}s later")
    assert drops > 0, "no link event was lost: the test did not overflow the socket"
    assert overflows >= 1
    assert "netlink link events overflowed (ENOBUFS): full resync" in hv.log()


def test_link_event_overflow_is_noticed_and_resynced(lab: Lab) -> None:
    """3,000 TAPs created while the daemon is stopped (SIGSTOP): the events do not fit
    its 8 MiB receive buffer, the kernel drops the rest (ENOBUFS); once it runs again it
    notices, re-dumps the links and converges -- which it could not do from the events
    that arrived."""
    _overflow(lab, 3000, stall=True, timeout=20)


@pytest.mark.skipif(not LONG, reason="long: set L3HOSTD_LONG_TESTS=1")
def test_10k_taps_at_once_overflow_and_converge(lab: Lab) -> None:
    """10,000 TAPs created at once by ``ip -batch`` while the daemon runs."""
    _overflow(lab, 10_000, stall=False, timeout=180)


# ---- nft failing --------------------------------------------------------------------------


def test_nft_failing_nothing_announced_error_visible_then_recovers(lab: Lab) -> None:
    """``tests/integration/test_firewall_failure.py`` checks the pending state and the
    route; this adds the fabric: while nft fails, the reflector and the other hypervisor
    see nothing of the endpoint -- at start (base table not loadable), and later for an
    endpoint in a new security group (its chains need nft; elements alone go over
    netlink) -- and all of it is announced once nft works again."""
    topo = BgpTopology(lab, hypervisors=2, ipv6=False, speaker="l3hostd")
    hv = topo.hv(1)
    real = shutil.which("nft")
    assert real is not None
    stub = lab.workdir / "nft"
    broken = "#!/bin/sh\necho 'Error: simulated nft failure' >&2\nexit 1\n"
    working = f'#!/bin/sh\nexec {real} "$@"\n'
    stub.write_text(broken)
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    topo.start_rr()
    hv.start({**os.environ, "NFT": str(stub)})
    topo.start_speaker(2)
    wait_until(lambda: topo.speaker(1).established("rr"), 20, what="hv1 session")
    vm1 = topo.add_vm(1, "vm1", 11)

    def row(vm_tap: str) -> dict[str, object]:
        return next((r for r in endpoint_rows(hv) if r["interface"] == vm_tap), {})

    wait_until(lambda: row(vm1.tap).get("state") == "firewall-pending", 10,
               what="vm1 pending")
    time.sleep(1)  # time enough for a wrong announcement to reach the reflector
    assert "simulated nft failure" in str(row(vm1.tap)["reason"])
    status = hv.ctl("show", "status")
    assert isinstance(status, dict) and "simulated" in str(status["firewall_error"])
    assert topo.rr.routes() == {}, "nothing may be announced for a pending endpoint"
    assert topo.learned_routes(2) == []
    assert hv.routes() == []

    stub.write_text(working)
    wait_until(lambda: row(vm1.tap).get("state") == "active", 40, interval=0.2,
               what="vm1 active once nft works")
    wait_until(lambda: rr_prefixes(topo.rr) == {f"{vm1.ipv4}/32": [hv.uplink4]}, 5,
               what="vm1 announced")
    wait_until(lambda: len(topo.learned_routes(2)) == 1, 5, what="vm1 learned on hv2")

    # nft breaks again while the daemon runs: a VM in a group never seen (new chains)
    stub.write_text(broken)
    (hv.endpoints / "security-groups" / "web.yaml").write_text(
        "name: web\nrules:\n  - {direction: ingress, ethertype: IPv4}\n")
    vm2 = hv.add_vm("vm2", 12)
    endpoint = vm2.endpoint()
    endpoint["security_groups"] = ["web"]
    import yaml

    path = hv.endpoints / f"{vm2.tap}.yaml"
    path.with_suffix(".tmp").write_text(yaml.safe_dump(endpoint))
    path.with_suffix(".tmp").rename(path)
    wait_until(lambda: row(vm2.tap).get("state") == "firewall-pending", 10,
               what="vm2 pending")
    time.sleep(1)
    assert "simulated nft failure" in str(row(vm2.tap)["reason"])
    assert rr_prefixes(topo.rr) == {f"{vm1.ipv4}/32": [hv.uplink4]}
    assert row(vm1.tap).get("state") == "active", "vm1 is not affected"
    stub.write_text(working)
    wait_until(lambda: row(vm2.tap).get("state") == "active", 40, interval=0.2,
               what="vm2 active once nft works")
    wait_until(lambda: set(rr_prefixes(topo.rr)) == {f"{vm1.ipv4}/32", f"{vm2.ipv4}/32"}, 5,
               what="vm2 announced")
