"""The real netlink driver and link monitor, on uvloop, inside a throw-away namespace."""

from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

from l3hostd.lab import Lab

PROBE = Path(__file__).with_name("driver_probe.py")


def test_driver_and_monitor_on_uvloop(lab: Lab) -> None:
    ns = lab.netns("drv")
    proc = ns.run(sys.executable, str(PROBE), timeout=60)
    out = json.loads(proc.stdout)
    assert out["loop"].startswith("uvloop")
    assert out["links_match_pyroute2"], "wire.parse_link disagrees with pyroute2's decoder"

    events = [tuple(e) for e in out["events"]]
    names = [e[2] for e in events if e[0] == "link"]
    assert "tapmon0" in names and "tapmon1" in names  # appear ... rename
    assert any(e[0] == "link" and e[2] == "tapmon0" and e[3] for e in events)  # up
    ifindex = next(e[1] for e in events if e[2] == "tapmon0")
    assert all(e[1] == ifindex for e in events if e[2].startswith("tapmon"))  # rename keeps it
    assert ("gone", ifindex, "", False) in events
    assert not [e for e in events if e[0] == "overflow"]

    assert out["write_routes"] == [0, 0]
    assert out["write_again_eexist"] == [errno.EEXIST]  # exclusive: never replaces
    assert out["write_neigh"] == [0, 0]
    assert (out["tap_before"], out["write_tap"], out["tap_after"]) == (0, [0], 1)
    assert out["routes_equal"], out["dump_routes"]
    assert out["dump_neigh_equal"]
    assert "proto l3hostd scope link" in out["ip_route"]
    assert out["del_routes"] == [0, 0] and out["del_neigh"] == [0, 0]
    assert out["after_delete"] == [0, 0]
