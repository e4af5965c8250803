"""The kernel-learn watcher (:mod:`l3hostd.netlink.routewatch`) against the real kernel.

Its socket filter (``attach_protocol_filter``):

Every route notification of a protocol the watcher ignores -- the kernel's own connected
and local routes, ICMP redirects, l3hostd's host routes and learned routes -- must be
dropped by the kernel, before it is queued: a TAP coming up makes the kernel add its IPv6
routes (``proto kernel``) right on the path of that TAP's announcement, and each queued
notification woke the daemon for nothing. Other daemons' routes (here ``proto static``,
Felix's) still arrive.

Its resync: the routes it finds, by either way of reading them.
"""

from __future__ import annotations

import asyncio
import select
import socket

import pytest

from l3hostd.lab import Lab
from l3hostd.netlink import batch, wire
from l3hostd.netlink.batch import RtnlBatchSocket
from l3hostd.netlink.driver import link_from_record
from l3hostd.netlink.routewatch import (
    IGNORED_PROTOCOLS,
    PER_LINK_DUMPS,
    RTMGRP_IPV4_ROUTE,
    KernelRouteWatch,
    watch_socket,
)


def test_ignored_protocols_are_dropped_in_the_kernel(lab: Lab) -> None:
    ns = lab.netns("rwf")
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns.ip("link", "set", "v0", "up")
    sock = batch.in_netns(ns.name, watch_socket)
    try:
        for i, proto in enumerate(sorted(IGNORED_PROTOCOLS)):
            ns.ip("route", "add", f"10.9.0.{i + 1}/32", "dev", "v0", "proto", str(proto))
        ns.ip("route", "add", "10.9.1.1/32", "dev", "v0", "proto", "static")
        seen: list[tuple[str, int]] = []
        while select.select([sock], [], [], 0.5)[0]:
            data = sock.recv(1 << 16)
            for mtype, _flags, _seq, start, end in wire.iter_headers(data):
                if mtype == wire.RTM_NEWROUTE:
                    rec = wire.parse_route(data, start, end)
                    seen.append((str(rec.dst), rec.protocol))
        assert seen == [("10.9.1.1/32", 4)]
    finally:
        sock.close()


def test_the_filter_is_what_drops_them(lab: Lab) -> None:
    """Without the filter, the same socket gets them all: the test above can fail."""
    ns = lab.netns("rwn")
    ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ns.ip("link", "set", "v0", "up")

    def unfiltered() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                          socket.NETLINK_ROUTE)
        s.bind((0, RTMGRP_IPV4_ROUTE))
        return s

    sock = batch.in_netns(ns.name, unfiltered)
    try:
        for i, proto in enumerate(sorted(IGNORED_PROTOCOLS)):
            ns.ip("route", "add", f"10.9.0.{i + 1}/32", "dev", "v0", "proto", str(proto))
        count = 0
        while select.select([sock], [], [], 0.5)[0]:
            data = sock.recv(1 << 16)
            count += sum(m == wire.RTM_NEWROUTE for m, *_ in wire.iter_headers(data))
        assert count == len(IGNORED_PROTOCOLS)
    finally:
        sock.close()


@pytest.mark.parametrize("links", [2, PER_LINK_DUMPS + 8])
def test_resync_reads_other_daemons_routes_on_matching_links(lab: Lab, links: int) -> None:
    """A full resync finds every candidate route -- another daemon's, on a link that
    matches, lowest metric per prefix -- and nothing else, whether it reads one dump per
    link (few links) or one dump of the table (many: ours skipped unparsed)."""
    ns = lab.netns("rws")
    names = [f"tapw{i}" for i in range(links)] + ["eth9"]
    for i, name in enumerate(names):
        ns.ip("link", "add", name, "type", "veth", "peer", "name", f"pw{i}")
        ns.ip("link", "set", name, "up")
        ns.ip("link", "set", f"pw{i}", "up")
    for i, name in enumerate(names):
        ns.ip("route", "add", f"10.8.{i}.1/32", "dev", name, "proto", "static", "metric", "10")
        for j, proto in enumerate(sorted(IGNORED_PROTOCOLS)):  # ours and the kernel's
            ns.ip("route", "add", f"10.8.{i}.{10 + j}/32", "dev", name, "proto", str(proto))
        ns.ip("-6", "route", "add", f"2001:db8:8:{i + 1}::1/128", "dev", name, "proto", "static")
    # one prefix on two matching links: the lower metric counts
    ns.ip("route", "add", "10.8.200.1/32", "dev", "tapw0", "proto", "static", "metric", "30")
    ns.ip("route", "add", "10.8.200.1/32", "dev", "tapw1", "proto", "static", "metric", "20")

    changes: list[tuple[str, int | None]] = []

    async def main() -> dict[str, int]:
        async with RtnlBatchSocket(ns.name) as sock:
            watch = KernelRouteWatch(["tap*"], 254, lambda p, m: changes.append((str(p), m)))
            links = await sock.dump(
                lambda seq: wire.link_dump_request(seq=seq), wire.RTM_NEWLINK, wire.parse_link
            )
            for rec in links:
                watch.on_link(link_from_record(rec))
            await watch.resync(sock)
            return {str(prefix): metric for prefix, metric in watch.exported.items()}

    exported = asyncio.run(main())
    expected = {f"10.8.{i}.1/32": 10 for i in range(links)}
    expected |= {f"2001:db8:8:{i + 1}::1/128": 1024 for i in range(links)}
    expected["10.8.200.1/32"] = 20
    assert exported == expected
    assert sorted(changes) == sorted(expected.items())
