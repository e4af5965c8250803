"""RtnlBatchSocket against the real kernel, inside throw-away network namespaces.

Each test creates its own namespace (``l3t-batch-<random>``) with a veth pair (this kernel
has no dummy module; a bridge without ports has no carrier and ``ip route`` would print
``linkdown``), talks to it through ``RtnlBatchSocket(netns=...)`` and compares with what
``ip -n NS ...`` reads back. The namespace is deleted in a ``finally``. The main tests run
under both the default asyncio loop and uvloop.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, TypeVar

import pytest
import uvloop

from l3hostd.model import RTPROT_L3HOSTD, RTPROT_L3HOSTD_BGP
from l3hostd.netlink import wire
from l3hostd.netlink.batch import (
    RESULT_NOT_SENT,
    RESULT_UNKNOWN,
    NetlinkSocketError,
    NetlinkTimeoutError,
    Result,
    RtnlBatchSocket,
)

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2"),
]

T = TypeVar("T")
LOOPS = ["asyncio", "uvloop"]
P44, P45 = RTPROT_L3HOSTD, RTPROT_L3HOSTD_BGP


def run(loop_kind: str, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        if loop_kind == "uvloop":
            assert isinstance(runner.get_loop(), uvloop.Loop)
        return runner.run(main())


@dataclass
class Netns:
    name: str
    veth0: int
    veth1: int

    def ip(self, *args: str) -> str:
        out = subprocess.run(
            ["ip", "-n", self.name, *args], check=True, capture_output=True, text=True, timeout=30
        )
        return out.stdout

    def lines(self, *args: str) -> list[str]:
        # iproute2 prints a protocol name if some rt_protos file names 44/45
        text = self.ip(*args)
        text = re.sub(r"proto l3hostd-bgp\b", "proto 45", text)
        text = re.sub(r"proto l3hostd\b", "proto 44", text)
        return [line.rstrip() for line in text.splitlines() if line.strip()]

    def ip_json(self, *args: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = json.loads(self.ip("-j", *args) or "[]")
        return out


@pytest.fixture
def ns() -> Iterator[Netns]:
    name = f"l3t-batch-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:

        def ip(*args: str) -> None:
            subprocess.run(["ip", "-n", name, *args], check=True, timeout=30)

        ip("link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        for dev in ("lo", "veth0", "veth1"):
            ip("link", "set", dev, "up")
        ip("addr", "add", "10.0.0.2/24", "dev", "veth0")
        ip("addr", "add", "10.0.1.2/24", "dev", "veth1")
        links = json.loads(
            subprocess.run(
                ["ip", "-n", name, "-j", "link", "show"], check=True, capture_output=True, text=True
            ).stdout
        )
        index = {link["ifname"]: link["ifindex"] for link in links}
        yield Netns(name, index["veth0"], index["veth1"])
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def v4(i: int, base: str = "10.100.0.0") -> IPv4Network:
    return IPv4Network((int(IPv4Address(base)) + i, 32))


def v6(i: int, base: str = "2001:db8:100::") -> IPv6Network:
    return IPv6Network((int(IPv6Address(base)) + i, 128))


# --- bulk routes ----------------------------------------------------------------------


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_bulk_host_routes_install_dump_delete(ns: Netns, loop_kind: str) -> None:
    n4, n6 = 10_000, 500
    dst4 = [v4(i) for i in range(n4)]
    dst6 = [v6(i) for i in range(n6)]
    # somebody else's route on the same device: never returned by dump(protocol=44)
    ns.ip("route", "add", "10.200.0.1/32", "dev", "veth0", "proto", "static", "scope", "link")
    # same prefix, other metric: a separate route (NLM_F_REPLACE with the same table, prefix,
    # tos and metric would replace it whatever its protocol; see the errors test)
    ns.ip("route", "add", "10.100.0.7/32", "dev", "veth1", "proto", "static", "scope", "link",
          "metric", "100")  # fmt: skip

    async def install() -> tuple[list[int], list[int]]:
        with RtnlBatchSocket(ns.name) as sock:
            adds = [wire.route_add(d, protocol=P44, oif=ns.veth0) for d in dst4]
            adds += [wire.route_add(d, protocol=P44, oif=ns.veth0) for d in dst6]
            return await sock.execute(adds), await sock.execute(adds)  # replace: idempotent

    first, again = run(loop_kind, install)
    assert first == [0] * (n4 + n6) and again == [0] * (n4 + n6)

    lines4 = ns.lines("route", "show", "proto", "44")
    assert len(lines4) == n4
    assert "10.100.0.0 dev veth0 scope link" in lines4
    assert "10.100.0.5 dev veth0 scope link" in lines4
    assert f"{dst4[-1].network_address} dev veth0 scope link" in lines4
    assert "10.200.0.1 dev veth0 proto 4 scope link" not in lines4
    lines6 = ns.lines("-6", "route", "show", "proto", "44")
    assert len(lines6) == n6
    assert "2001:db8:100::5 dev veth0 metric 1024 pref medium" in lines6
    everything = ns.lines("route", "show")
    assert "10.100.0.5 dev veth0 proto 44 scope link" in everything
    assert "10.200.0.1 dev veth0 proto static scope link" in everything

    async def dump() -> tuple[list[wire.RouteRecord], ...]:
        async with RtnlBatchSocket(ns.name) as sock:
            return (
                await sock.dump_routes(socket.AF_INET, P44),
                await sock.dump_routes(socket.AF_INET6, P44),
                await sock.dump_routes(socket.AF_INET, wire.RTPROT_STATIC),
                await sock.dump_routes(socket.AF_INET, 0, table=254),
            )

    ours4, ours6, static4, main4 = run(loop_kind, dump)
    assert [r.dst for r in ours4] == dst4  # the kernel returns them in trie order
    assert {r.dst for r in ours6} == set(dst6) and len(ours6) == n6
    assert all(
        (r.protocol, r.table, r.oif, r.scope, r.type) == (P44, 254, ns.veth0, 253, 1) for r in ours4
    )
    assert all((r.protocol, r.table, r.oif) == (P44, 254, ns.veth0) for r in ours6)
    assert {r.dst for r in static4} == {IPv4Network("10.200.0.1/32"), IPv4Network("10.100.0.7/32")}
    assert all(r.protocol == wire.RTPROT_STATIC for r in static4)
    # unfiltered by protocol (table main only): ours + static + the connected /24s
    assert len(main4) == n4 + 2 + 2

    async def delete() -> tuple[list[int], list[int], list[wire.RouteRecord]]:
        async with RtnlBatchSocket(ns.name) as sock:
            dels = [wire.route_del(d, protocol=P44) for d in dst4 + dst6]
            first = await sock.execute(dels)
            second = await sock.execute(dels[:3])
            return first, second, await sock.dump_routes(socket.AF_INET, P44)

    deleted, again_del, left = run(loop_kind, delete)
    assert deleted == [0] * (n4 + n6)
    assert again_del == [errno.ESRCH] * 3
    assert left == []
    assert ns.lines("route", "show", "proto", "44") == []
    assert ns.lines("-6", "route", "show", "proto", "44") == []
    # a delete that names protocol 44 never removes the static route with the same prefix
    statics = ns.lines("route", "show", "proto", "static")
    assert statics == [
        "10.100.0.7 dev veth1 scope link metric 100",
        "10.200.0.1 dev veth0 scope link",
    ]


def test_tables_over_255(ns: Netns) -> None:
    async def main() -> dict[str, Any]:
        async with RtnlBatchSocket(ns.name) as sock:
            reqs = [
                wire.route_add(v4(i), protocol=P44, oif=ns.veth0, table=1000) for i in range(100)
            ]
            reqs += [
                wire.route_add(v6(i), protocol=P44, oif=ns.veth1, table=70000) for i in range(50)
            ]
            reqs.append(wire.route_add(v4(0), protocol=P44, oif=ns.veth1))  # main, same prefix
            out: dict[str, Any] = {"add": await sock.execute(reqs)}
            out["t1000"] = await sock.dump_routes(socket.AF_INET, P44, table=1000)
            out["t70000"] = await sock.dump_routes(socket.AF_INET6, P44, table=70000)
            out["main"] = await sock.dump_routes(socket.AF_INET, P44, table=254)
            out["all"] = await sock.dump_routes(socket.AF_INET, P44)
            out["missing"] = await sock.dump_routes(socket.AF_INET, P44, table=1001)
            out["missing6"] = await sock.dump_routes(socket.AF_INET6, P44, table=1001)
            dels = [wire.route_del(v4(i), protocol=P44, table=1000) for i in range(100)]
            out["del"] = await sock.execute(dels)
            out["after"] = await sock.dump_routes(socket.AF_INET, P44, table=1000)
            return out

    out = run("uvloop", main)
    assert out["add"] == [0] * 151
    assert len(out["t1000"]) == 100 and {r.table for r in out["t1000"]} == {1000}
    assert len(out["t70000"]) == 50 and {r.table for r in out["t70000"]} == {70000}
    assert [(r.dst, r.oif, r.table) for r in out["main"]] == [(v4(0), ns.veth1, 254)]
    assert len(out["all"]) == 101
    assert out["missing"] == [] and out["missing6"] == []
    assert out["del"] == [0] * 100 and out["after"] == []
    assert ns.lines("route", "show", "table", "1000") == []
    lines = ns.lines("-6", "route", "show", "table", "70000")
    assert (
        len(lines) == 50 and "2001:db8:100::1 dev veth1 proto 44 metric 1024 pref medium" in lines
    )
    assert ns.lines("route", "show", "proto", "44") == ["10.100.0.0 dev veth1 scope link"]


# --- neighbours -------------------------------------------------------------------------


def neigh_set(lines: list[str]) -> set[tuple[str, str, str]]:
    """``ip neigh show dev X`` lines -> {(ip, mac, state)}."""
    out = set()
    for line in lines:
        m = re.match(r"(\S+) lladdr (\S+) (.+)$", line)
        if m:
            out.add((m.group(1), m.group(2), m.group(3).split()[-1]))
    return out


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_neighbours_add_dump_delete(ns: Netns, loop_kind: str) -> None:
    entries0: list[tuple[IPv4Address | IPv6Address, str]] = [
        (IPv4Address("10.0.0.10") + i, f"fa:16:3e:00:00:{i:02x}") for i in range(40)
    ]
    entries0 += [(IPv6Address("2001:db8::10") + i, f"fa:16:3e:00:01:{i:02x}") for i in range(40)]
    entries1 = [(IPv4Address("10.0.1.10"), "fa:16:3e:00:02:01")]

    async def add_and_dump() -> tuple[list[int], list[wire.NeighRecord], list[wire.NeighRecord]]:
        async with RtnlBatchSocket(ns.name) as sock:
            reqs = [wire.neigh_add(ns.veth0, ip, mac) for ip, mac in entries0]
            reqs += [wire.neigh_add(ns.veth1, ip, mac) for ip, mac in entries1]
            res = await sock.execute(reqs)
            dev0 = await sock.dump_neighbours(socket.AF_UNSPEC, ns.veth0)
            all4 = await sock.dump_neighbours(socket.AF_INET)
            return res, dev0, all4

    res, dev0, all4 = run(loop_kind, add_and_dump)
    assert res == [0] * (len(entries0) + 1)
    ours = {(str(r.ip), r.lladdr, "PERMANENT") for r in dev0 if r.state == wire.NUD_PERMANENT}
    assert ours == {(str(ip), mac, "PERMANENT") for ip, mac in entries0}
    assert {r.ifindex for r in dev0} == {ns.veth0}
    # the same as iproute2 reads (permanent entries; the kernel adds its own NOARP ones)
    ip_view = neigh_set(ns.lines("neigh", "show", "dev", "veth0", "nud", "permanent"))
    ip_view |= neigh_set(ns.lines("-6", "neigh", "show", "dev", "veth0", "nud", "permanent"))
    assert ip_view == ours
    assert {r.family for r in all4} == {socket.AF_INET}
    assert {(r.ifindex, str(r.ip)) for r in all4 if r.state == wire.NUD_PERMANENT} == {
        (ns.veth0, str(ip)) for ip, _ in entries0 if ip.version == 4
    } | {(ns.veth1, "10.0.1.10")}
    recs = {r.ip: r for r in dev0}
    assert recs[entries0[0][0]].as_neighbour() is not None

    async def delete() -> tuple[list[int], list[wire.NeighRecord]]:
        async with RtnlBatchSocket(ns.name) as sock:
            reqs = [wire.neigh_del(ns.veth0, ip) for ip, _ in entries0]
            res = await sock.execute(reqs)
            return res, await sock.dump_neighbours(socket.AF_UNSPEC, ns.veth0)

    res, left = run(loop_kind, delete)
    assert res == [0] * len(entries0)
    assert [r for r in left if r.state == wire.NUD_PERMANENT] == []
    assert ns.lines("neigh", "show", "dev", "veth0", "nud", "permanent") == []
    assert neigh_set(ns.lines("neigh", "show", "dev", "veth1")) == {
        ("10.0.1.10", "fa:16:3e:00:02:01", "PERMANENT")
    }


# --- errors -----------------------------------------------------------------------------


def test_errors_are_reported_per_request(ns: Netns) -> None:
    excl = wire.NLM_F_CREATE | wire.NLM_F_EXCL
    # host bits set for the prefix length: built by hand (IPv4Network refuses it)
    bad_prefix = bytearray(wire.route_add(IPv4Network("10.55.0.0/24"), protocol=P44, oif=ns.veth0))
    struct.pack_into("4s", bad_prefix, 16 + 12 + 4, bytes([10, 55, 0, 1]))
    # a foreign route with the same key: EXCL refuses to touch it (REPLACE would take it over)
    ns.ip("route", "add", "10.100.0.50/32", "dev", "veth1", "proto", "static", "scope", "link")
    reqs = [
        wire.route_add(v4(1), protocol=P44, oif=ns.veth0),
        wire.route_add(v4(2), protocol=P44, oif=99999),  # no such device
        wire.route_add(v4(3), protocol=P44, oif=ns.veth0),
        wire.route_add(v4(1), protocol=P44, oif=ns.veth0, flags=excl),  # exists
        wire.route_del(v4(4), protocol=P44),  # not there
        bytes(bad_prefix),
        wire.neigh_add(99999, IPv4Address("10.0.0.99"), "02:00:00:00:00:01"),
        wire.addr_add(ns.veth0, IPv6Address("fe80::1"), 64),
        wire.route_add(v4(5), protocol=P44, oif=ns.veth0),
        wire.route_add(v4(50), protocol=P44, oif=ns.veth0, flags=excl),  # foreign: EEXIST
        wire.route_del(v4(50), protocol=P44),  # foreign: ESRCH, not deleted
    ]

    async def main() -> tuple[list[Result], list[wire.RouteRecord], list[wire.AddrRecord]]:
        async with RtnlBatchSocket(ns.name, max_in_flight=4) as sock:
            res = await sock.execute_detailed(reqs)
            routes = await sock.dump_routes(socket.AF_INET, P44)
            return res, routes, await sock.dump_addresses(socket.AF_INET6, ns.veth0)

    res, routes, addrs = run("uvloop", main)
    assert [r.errno for r in res] == [
        0,
        errno.ENODEV,
        0,
        errno.EEXIST,
        errno.ESRCH,
        errno.EINVAL,
        errno.ENODEV,
        0,
        0,
        errno.EEXIST,
        errno.ESRCH,
    ]
    assert res[5].message == "Invalid prefix for given prefix length"
    assert {r.dst for r in routes} == {v4(1), v4(3), v4(5)}
    assert ns.lines("route", "show", "proto", "static") == ["10.100.0.50 dev veth1 scope link"]
    lines = [line.strip() for line in ns.lines("-6", "addr", "show", "dev", "veth0")]
    assert any(line.startswith("inet6 fe80::1/64 scope link nodad") for line in lines), lines
    gateway = [a for a in addrs if a.address == IPv6Address("fe80::1")]
    assert [(a.ifindex, a.prefixlen, a.scope, a.flags & wire.IFA_F_NODAD) for a in gateway] == [
        (ns.veth0, 64, 253, wire.IFA_F_NODAD)
    ]
    assert {a.ifindex for a in addrs} == {ns.veth0}


# --- ECMP -------------------------------------------------------------------------------


def test_ecmp_multipath_routes(ns: Netns) -> None:
    dst4, dst6 = IPv4Network("192.0.2.0/24"), IPv6Network("2001:db8:1::/48")
    gw = [IPv4Address("10.0.0.1"), IPv4Address("10.0.1.1")]
    gw6 = [IPv6Address("fe80::1"), IPv6Address("fe80::2")]
    hops4 = [wire.NextHop(gw[0], ns.veth0), wire.NextHop(gw[1], ns.veth1, weight=2)]
    hops6 = [(gw6[0], ns.veth0), (gw6[1], ns.veth1)]

    async def add() -> tuple[list[int], list[wire.RouteRecord], list[wire.RouteRecord]]:
        async with RtnlBatchSocket(ns.name) as sock:
            res = await sock.execute(
                [
                    wire.route_add(dst4, protocol=P45, multipath=hops4),
                    wire.route_add(dst6, protocol=P45, multipath=hops6),
                ]
            )
            return (
                res,
                await sock.dump_routes(socket.AF_INET, P45),
                await sock.dump_routes(socket.AF_INET6, P45),
            )

    res, r4, r6 = run("uvloop", add)
    assert res == [0, 0]
    (route,) = ns.ip_json("route", "show", str(dst4))
    assert route["protocol"] in ("45", "l3hostd-bgp")
    assert [(h["gateway"], h["dev"], h["weight"]) for h in route["nexthops"]] == [
        ("10.0.0.1", "veth0", 1),
        ("10.0.1.1", "veth1", 2),
    ]
    (route6,) = ns.ip_json("-6", "route", "show", str(dst6))
    assert [(h["gateway"], h["dev"]) for h in route6["nexthops"]] == [
        ("fe80::1", "veth0"),
        ("fe80::2", "veth1"),
    ]
    assert [(r.dst, r.multipath) for r in r4] == [
        (dst4, (wire.NextHop(gw[0], ns.veth0, 1, 0), wire.NextHop(gw[1], ns.veth1, 2, 0)))
    ]
    assert [(r.dst, [(h.gateway, h.ifindex) for h in r.multipath]) for r in r6] == [
        (dst6, [(gw6[0], ns.veth0), (gw6[1], ns.veth1)])
    ]

    async def replace_and_delete() -> list[list[int]]:
        async with RtnlBatchSocket(ns.name) as sock:
            one = await sock.execute(
                [
                    wire.route_add(dst4, protocol=P45, multipath=hops4[:1]),
                    wire.route_add(dst6, protocol=P45, gateway=gw6[1], oif=ns.veth1),
                ]
            )
            # IPv6: NLM_F_REPLACE of a multipath route with a single path replaces it
            return [one]

    (one,) = run("asyncio", replace_and_delete)
    assert one == [0, 0]
    assert ns.lines("route", "show", str(dst4)) == [
        "192.0.2.0/24 via 10.0.0.1 dev veth0 proto 45"
    ]  # fmt: skip
    assert ns.lines("-6", "route", "show", str(dst6)) == [
        "2001:db8:1::/48 via fe80::2 dev veth1 proto 45 metric 1024 pref medium"
    ]

    async def delete() -> list[int]:
        async with RtnlBatchSocket(ns.name) as sock:
            return await sock.execute(
                [wire.route_del(dst4, protocol=P45), wire.route_del(dst6, protocol=P45)]
            )

    assert run("asyncio", delete) == [0, 0]
    assert ns.lines("route", "show", "proto", "45") == []
    assert ns.lines("-6", "route", "show", "proto", "45") == []


# --- socket behaviour -------------------------------------------------------------------


def test_netns_socket_leaves_the_calling_thread_alone(ns: Netns) -> None:
    before = os.readlink("/proc/thread-self/ns/net")
    sock = RtnlBatchSocket(f"/run/netns/{ns.name}")
    try:
        assert os.readlink("/proc/thread-self/ns/net") == before
        recs = run("asyncio", lambda: sock.dump_routes(socket.AF_INET, wire.RTPROT_KERNEL))
        # the connected routes of the namespace, not of the host
        assert {str(r.dst) for r in recs if r.table == 254} == {"10.0.0.0/24", "10.0.1.0/24"}
    finally:
        sock.close()
    assert sock.closed


def test_timeout_and_closed_socket(ns: Netns) -> None:
    """No reply within the timeout raises (the kernel is replaced by a silent peer)."""
    sock = RtnlBatchSocket(ns.name, timeout=0.2)
    silent, peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    real = sock._sock
    assert real is not None
    sock._sock = silent
    silent.setblocking(False)
    try:
        reqs = [wire.route_add(v4(i), protocol=P44, oif=1) for i in range(3)]
        with pytest.raises(NetlinkTimeoutError) as info:
            run("uvloop", lambda: sock.execute(reqs))
        assert info.value.results == [-1, -1, -1]
        assert "3 of 3 requests unacknowledged" in str(info.value)
        # three requests went out in one datagram, with their own sequence numbers
        datagram = peer.recv(65536)
        seqs = [m.seq for m in wire.split_messages(datagram)]
        assert len(seqs) == 3 and seqs == list(range(seqs[0], seqs[0] + 3))
        with pytest.raises(NetlinkTimeoutError):
            run("asyncio", lambda: sock.dump_routes(socket.AF_INET, P44))
    finally:
        sock._sock = real
        sock.close()
        silent.close()
        peer.close()
    with pytest.raises(NetlinkSocketError):
        run("asyncio", lambda: sock.execute(reqs))
    with RtnlBatchSocket(ns.name) as other:
        with pytest.raises(ValueError, match="dump request"):
            run("asyncio", lambda: other.execute([wire.route_dump_request(2)]))
        with pytest.raises(ValueError, match="nlmsg_len"):
            run("asyncio", lambda: other.execute([reqs[0] + bytes(4)]))
    assert run("asyncio", lambda: sock.execute([])) == []


def test_concurrent_operations_are_serialized(ns: Netns) -> None:
    async def main() -> tuple[list[int], list[wire.NeighRecord], list[int], list[wire.RouteRecord]]:
        async with RtnlBatchSocket(ns.name, max_in_flight=32) as sock:
            adds = [wire.route_add(v4(i), protocol=P44, oif=ns.veth0) for i in range(2000)]
            return await asyncio.gather(
                sock.execute(adds[:1000]),
                sock.dump_neighbours(socket.AF_INET),
                sock.execute(adds[1000:]),
                sock.dump_routes(socket.AF_INET, P44),
            )

    first, _neigh, second, routes = run("uvloop", main)
    assert first == [0] * 1000 and second == [0] * 1000
    assert len(routes) == 2000
    assert ip_address("10.100.0.1") in {r.dst.network_address for r in routes}


def test_receive_overflow_fails_the_operation_and_the_socket_recovers(ns: Netns) -> None:
    """Too many answers in flight for a small receive buffer: successful requests are not
    answered one by one (only the last of each datagram asks for an ACK), but failures
    always are -- 4096 failing deletes overflow an 8 KiB buffer (ENOBUFS). The operation
    fails at once, not at the timeout, and the socket works again afterwards."""

    async def main() -> tuple[NetlinkSocketError, list[int], list[wire.RouteRecord]]:
        async with RtnlBatchSocket(ns.name, max_in_flight=4096, rcvbuf=8192) as sock:
            deletes = [wire.route_del(v4(i), protocol=P44) for i in range(4096)]
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            with pytest.raises(NetlinkSocketError) as info:
                await sock.execute(deletes)
            assert loop.time() - t0 < sock.timeout
            sock.max_in_flight = 16
            adds = [wire.route_add(v4(i), protocol=P44, oif=ns.veth0) for i in range(100)]
            again = await sock.execute(adds)
            return info.value, again, await sock.dump_routes(socket.AF_INET, P44)

    exc, again, routes = run("uvloop", main)
    assert exc.errno == errno.ENOBUFS
    # some errors arrived, some were lost, the rest was never sent (64 KiB per datagram)
    assert len(exc.results) == 4096
    assert {errno.ESRCH, RESULT_UNKNOWN, RESULT_NOT_SENT} == set(exc.results)
    assert again == [0] * 100
    assert len(routes) == 100


def test_successes_are_confirmed_by_one_ack_per_datagram(ns: Netns) -> None:
    """Mixed outcomes in one batch: every failure is reported at its index, every success
    is 0, although only the last request of each datagram asked for an ACK."""

    async def main() -> list[int]:
        async with RtnlBatchSocket(ns.name) as sock:
            reqs = []
            for i in range(3000):
                if i % 7 == 3:
                    reqs.append(wire.route_del(v4(50_000 + i), protocol=P44))  # ESRCH
                else:
                    reqs.append(wire.route_add(v4(i), protocol=P44, oif=ns.veth0))
            return await sock.execute(reqs)

    results = run("uvloop", main)
    assert results == [errno.ESRCH if i % 7 == 3 else 0 for i in range(3000)]


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_a_small_batch_is_answered_without_a_trip_through_the_loop(
    ns: Netns, loop_kind: str
) -> None:
    """The kernel answers route requests inside send(): their ACK is read right there, and
    the operation is over before the event loop runs anything else (a callback scheduled
    before the batch has not run when it returns). A bulk still goes datagram by
    datagram through the reader, and a dump still completes."""

    async def main() -> tuple[list[bool], list[int], int]:
        loop = asyncio.get_running_loop()
        async with RtnlBatchSocket(ns.name) as sock:
            await sock.execute([wire.route_add(v4(9999), protocol=P44, oif=ns.veth0)])
            ran_before: list[bool] = []
            for i in range(5):
                ticked: list[bool] = []
                loop.call_soon(ticked.append, True)
                results = await sock.execute(
                    [wire.route_add(v4(i), protocol=P44, oif=ns.veth0)]
                )
                assert results == [0]
                ran_before.append(bool(ticked))
            bulk = await sock.execute(
                [wire.route_add(v4(10_000 + i), protocol=P44, oif=ns.veth0) for i in range(3000)]
            )
            routes = await sock.dump_routes(socket.AF_INET, P44)
            return ran_before, bulk, len(routes)

    ran_before, bulk, dumped = run(loop_kind, main)
    assert ran_before == [False] * 5
    assert bulk == [0] * 3000
    assert dumped == 3006
