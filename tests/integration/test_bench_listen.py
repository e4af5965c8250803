"""bench/listen.py's socket filter against the real kernel.

P1's listeners run SCHED_FIFO: each notification that reaches one wakes it ahead of the
speakers. Its filter lets link messages and the routes of the protocols it reports
through and makes the kernel drop everything else (the speakers' own routes, the
kernel's IPv6 routes of a TAP coming up) before it is queued.
"""

from __future__ import annotations

import select
import socket

from bench.listen import event_filter
from l3hostd.lab import Lab
from l3hostd.netlink import batch, bpf, wire

RTMGRP_LINK, RTMGRP_IPV4_ROUTE = 0x1, 0x40


def _events(lab: Lab, role: str, program: list[bpf.Insn] | None) -> list[tuple[int, str]]:
    ns = lab.netns(role)

    def listener() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                          socket.NETLINK_ROUTE)
        if program is not None:
            bpf.attach(s, program)
        s.bind((0, RTMGRP_LINK | RTMGRP_IPV4_ROUTE))
        return s

    sock = batch.in_netns(ns.name, listener)
    try:
        ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ns.ip("link", "set", "v0", "up")
        for proto in (4, 44, 45, 12):
            ns.ip("route", "add", f"10.9.0.{proto}/32", "dev", "v0", "proto", str(proto))
            ns.ip("route", "del", f"10.9.0.{proto}/32", "dev", "v0", "proto", str(proto))
        ns.ip("link", "del", "v0")
        seen: list[tuple[int, str]] = []
        while select.select([sock], [], [], 0.5)[0]:
            data = sock.recv(1 << 16)
            for mtype, _flags, _seq, start, end in wire.iter_headers(data):
                if mtype in (wire.RTM_NEWROUTE, wire.RTM_DELROUTE):
                    seen.append((mtype, str(wire.parse_route(data, start, end).dst)))
                else:
                    seen.append((mtype, ""))
        return seen
    finally:
        sock.close()


def test_the_filter_passes_links_and_the_wanted_protocols_only(lab: Lab) -> None:
    seen = _events(lab, "lsf", event_filter([4, 12]))
    routes = [(t, dst) for t, dst in seen if dst]
    assert routes == [
        (wire.RTM_NEWROUTE, "10.9.0.4/32"), (wire.RTM_DELROUTE, "10.9.0.4/32"),
        (wire.RTM_NEWROUTE, "10.9.0.12/32"), (wire.RTM_DELROUTE, "10.9.0.12/32"),
    ]
    kinds = {t for t, _ in seen}
    assert wire.RTM_NEWLINK in kinds and wire.RTM_DELLINK in kinds
    assert kinds <= {wire.RTM_NEWLINK, wire.RTM_DELLINK, wire.RTM_NEWROUTE, wire.RTM_DELROUTE}


def test_without_the_filter_the_others_arrive_too(lab: Lab) -> None:
    """The control: the same events on an unfiltered socket include protocols 44 and 45
    (and the kernel's connected route of the veth), so the test above can fail."""
    routes = {dst for _, dst in _events(lab, "lsn", None) if dst}
    assert {"10.9.0.44/32", "10.9.0.45/32", "10.9.0.4/32"} <= routes
