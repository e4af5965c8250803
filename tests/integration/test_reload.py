"""Reload of a running ``l3hostd run`` against a real BIRD 2 route reflector.

One topology (``l3hostd.birdlab.BgpTopology``, IPv4 sessions): ``hv1`` announces a VM's
host route, ``hv2`` learns it from the reflector and is the one reloaded. The reflector
also has a second, idle session for ``hv2`` on a second pair of addresses (``hv2b``:
100.64.2.2 <-> 100.64.2.253), which ``hv2`` uses when a reload adds a peer.

Steps: (1) SIGHUP with the same file; (2) a file with errors and one that changes a
restart-only setting, both via ``l3hostctl reload``; (3) a second peer added, changed,
removed; (4) an import filter that rejects the learned route, then undone.

Throughout, the ``rr`` session of ``hv2`` must never reset: its uptime in ``l3hostctl show
peers`` keeps growing, its flap count stays 0, and BIRD's "since" time of the ``hv2``
protocol stays the same.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from typing import Any

import yaml

from l3hostd.birdlab import LAB_ASN, RR_ROUTER_ID, BgpTopology, rr_config
from l3hostd.lab import Hypervisor, Lab, wait_until

HV2B, RR_B = "100.64.2.2", "100.64.2.253"


def peers(hv: Hypervisor) -> dict[str, dict[str, Any]]:
    rows = hv.ctl("show", "peers")
    assert isinstance(rows, list)
    return {str(row["name"]): row for row in rows}


def read_config(hv: Hypervisor) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(hv.config_path.read_text())
    return data


def write_config(hv: Hypervisor, data: dict[str, Any]) -> None:
    hv.config_path.write_text(yaml.safe_dump(data))


def reload_lines(hv: Hypervisor) -> list[str]:
    return [line for line in hv.log().splitlines() if re.search(r"reload(: | rejected)", line)]


def sighup(hv: Hypervisor) -> list[str]:
    """SIGHUP (as ``systemctl reload`` does); return the reload's log lines."""
    before = len(reload_lines(hv))
    assert hv.proc is not None
    os.kill(hv.proc.pid, signal.SIGHUP)
    wait_until(lambda: len(reload_lines(hv)) > before, 15, what="reload logged")
    time.sleep(0.2)  # the rest of its lines
    return reload_lines(hv)[before:]


def ctl_reload(hv: Hypervisor) -> subprocess.CompletedProcess[str]:
    """``l3hostctl reload``, the real command line."""
    return subprocess.run(
        [sys.executable, "-m", "l3hostd.ctl", "--socket", str(hv.socket), "reload"],
        capture_output=True, text=True, timeout=90, check=False,
    )


class Unreset:
    """The ``rr`` session of hv2, seen from both ends: it must never reset."""

    def __init__(self, topo: BgpTopology) -> None:
        self.topo = topo
        self.bird_since = topo.rr.protocols()["hv2"]["since"]
        self.last_uptime = 0.0
        self.check()

    def check(self) -> None:
        row = peers(self.topo.hv(2))["rr"]
        assert row["state"] == "Established", row
        assert row["flaps"] == 0, row
        assert row["since"] is not None and row["since"] >= self.last_uptime, row
        self.last_uptime = float(row["since"])
        bird = self.topo.rr.protocols()["hv2"]
        assert "Established" in bird["info"], bird
        assert bird["since"] == self.bird_since, bird


def test_reload_keeps_unchanged_sessions_rejects_bad_files_and_applies_peers_and_filters(
    lab: Lab,
) -> None:
    topo = BgpTopology(lab, hypervisors=2, ipv6=False, speaker="l3hostd")
    hv2 = topo.hv(2)
    # hv2b: a second session between hv2 and the reflector, on other addresses
    hv2.ns.ip("addr", "add", f"{HV2B}/24", "dev", "eth0")
    topo.rr_ns.ip("addr", "add", f"{RR_B}/24", "dev", "hv2")
    clients = [("hv1", topo.hv(1).uplink4, topo.rr_address(1)),
               ("hv2", hv2.uplink4, topo.rr_address(2)), ("hv2b", HV2B, RR_B)]
    topo.rr.write_config(rr_config(RR_ROUTER_ID, LAB_ASN, clients))
    topo.start(timeout=30)
    vm1 = topo.add_vm(1, "vm1", 11)
    prefix = f"{vm1.ipv4}/32"
    wait_until(lambda: any(r.startswith(f"{vm1.ipv4} ") for r in topo.learned_routes(2)), 10,
               what="hv2 learned vm1's route")
    session = Unreset(topo)
    good = read_config(hv2)

    # (1) SIGHUP with the same file: nothing changes, the session stays
    time.sleep(1.1)  # so that a reset would show as a smaller uptime
    lines = sighup(hv2)
    assert any("reload: no changes" in line for line in lines), lines
    session.check()

    # (2) a bad file: every error named with file and field, the old config keeps running
    bad = {**good, "bgp": {**good["bgp"], "hold_time": 2}}
    bad["bgp"]["peers"] = [*good["bgp"]["peers"], {"name": "rr", "asn": 1}]
    write_config(hv2, bad)
    proc = ctl_reload(hv2)
    assert proc.returncode == 2, proc
    errors = proc.stderr.splitlines()
    assert errors[0] == "l3hostctl: reload rejected: the running configuration stays"
    assert f"{hv2.config_path}: bgp.hold_time: must be 0 or 3..65535 seconds (got 2)" in errors
    assert f"{hv2.config_path}: bgp.peers[1].address: required" in errors
    assert any("reload rejected: the running configuration stays" in line
               for line in reload_lines(hv2))
    # a valid file that changes what needs a restart is rejected the same way
    write_config(hv2, {**good, "node": {**good["node"], "router_id": "100.64.2.99"}})
    proc = ctl_reload(hv2)
    assert proc.returncode == 2, proc
    assert "node.router_id cannot change without a restart" in proc.stderr
    session.check()
    assert any(r.startswith(f"{vm1.ipv4} ") for r in topo.learned_routes(2))

    # (3) a second peer: added -> Established; removed -> Cease / Peer De-configured
    second = {"name": "rr_b", "address": RR_B, "asn": LAB_ASN, "source_address": HV2B,
              "families": ["ipv4"]}
    with_b = {**good, "bgp": {**good["bgp"], "peers": [*good["bgp"]["peers"], second]}}
    write_config(hv2, with_b)
    proc = ctl_reload(hv2)
    assert proc.returncode == 0, proc
    assert proc.stdout.splitlines()[0] == "OK"
    assert f"  peer rr_b ({RR_B}): added" in proc.stdout.splitlines()
    topo.rr.wait_established("hv2b", 15)
    wait_until(lambda: peers(hv2)["rr_b"]["state"] == "Established", 10, what="rr_b up")
    session.check()
    # a session setting of rr_b changes: only rr_b restarts (Cease / Other Config Change)
    with_b["bgp"]["peers"][-1] = {**second, "hold_time": 30, "keepalive_time": 10}
    write_config(hv2, with_b)
    proc = ctl_reload(hv2)
    assert proc.returncode == 0, proc
    assert (f"  peer rr_b ({RR_B}): restarting the session: hold_time 90 -> 30; "
            "keepalive_time 30 -> 10") in proc.stdout.splitlines()
    wait_until(lambda: "hv2b: Received: Other configuration change" in topo.rr.log(), 5,
               interval=0.05, what="BIRD got Cease / Other Configuration Change on hv2b")
    wait_until(lambda: peers(hv2)["rr_b"]["state"] == "Established", 15, what="rr_b back")
    assert "peer rr_b: Established (hold 30s" in hv2.log()
    session.check()
    write_config(hv2, good)
    proc = ctl_reload(hv2)
    assert proc.returncode == 0, proc
    assert f"  peer rr_b ({RR_B}): removed" in proc.stdout.splitlines()
    assert "rr_b" not in peers(hv2)

    # BIRD logs the NOTIFICATION it received (its "Last error" is soon its next connect's)
    wait_until(lambda: "hv2b: Received: Peer de-configured" in topo.rr.log(), 5, interval=0.05,
               what="BIRD got Cease / Peer De-configured on hv2b")
    session.check()

    # (4) an import filter: the route leaves the kernel, and comes back, without a reset
    rejecting = {**good, "bgp": {**good["bgp"], "import": {"reject": [prefix]}}}
    write_config(hv2, rejecting)
    lines = sighup(hv2)
    assert any(f"bgp.import.reject: [] -> [{prefix}]" in line for line in lines), lines
    wait_until(lambda: not topo.learned_routes(2), 5, what="route filtered out of the kernel")
    assert peers(hv2)["rr"]["prefixes_received"] == 0
    session.check()
    write_config(hv2, good)
    lines = sighup(hv2)
    assert any("peer rr: ROUTE-REFRESH sent" in line for line in lines), lines
    wait_until(lambda: any(r.startswith(f"{vm1.ipv4} ") for r in topo.learned_routes(2)), 5,
               what="route back after ROUTE-REFRESH")
    session.check()
    assert prefix in topo.rr.routes("master4")
