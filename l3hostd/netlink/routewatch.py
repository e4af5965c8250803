"""Kernel-learn mode: routes that *another* component installed on export interfaces.

On a Calico-style hypervisor Felix (or an operator) installs ``<ip>/32 dev tapX`` routes;
BIRD's ``protocol kernel { learn; }`` picks them up and exports those whose interface
matches ``tap*``, ``cali*``, ``dummy1``... This watcher does the same for l3hostd: every
route in the export table whose output device matches ``bgp.export.interfaces``, whose
protocol is not ours (44, 45) nor ``kernel`` (2: addresses' connected routes), that is a
unicast route and not a default route, is an export candidate; per prefix the lowest
metric counts (it becomes LOCAL_PREF = 2^31-1 - metric).

Sources of truth, as for links: route events on a socket of its own (IPv4 and IPv6 route
groups, 32 MiB buffer; the kernel drops the notifications of our own and its own routes
before they are queued) are hints; on overflow and on the periodic resync the routes of
the matching interfaces are dumped again. A new interface or two: one dump per interface
with a kernel-side ``RTA_OIF`` filter. More: one dump of the table, our own routes
skipped unparsed -- an ``RTA_OIF`` dump still walks the whole table in the kernel, and
1000 of them with 100k learned routes took 4 s of CPU. Linux sends no RTM_DELROUTE when a
device goes away or down, so link events drop that device's routes here too.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Iterable

from l3hostd.calc import matches
from l3hostd.model import RTPROT_L3HOSTD, RTPROT_L3HOSTD_BGP, IPNetwork, Link
from l3hostd.netlink import bpf, wire
from l3hostd.netlink.batch import RtnlBatchSocket
from l3hostd.netlink.queued import Queued

log = logging.getLogger("l3hostd.netlink.routewatch")

#: Bytes read per notification datagram. The kernel sends each event in its own small
#: datagram (a few hundred bytes, at most NLMSG_GOODSIZE); a 1 MiB buffer cost a 1 MiB
#: allocation per event (~10 us), for nothing.
RECV_SIZE = 1 << 16

RTMGRP_IPV4_ROUTE = 0x40
RTMGRP_IPV6_ROUTE = 0x400
SO_RCVBUFFORCE = 33
RCVBUF = 32 << 20
RTPROT_REDIRECT = 1
RTPROT_KERNEL = 2
IGNORED_PROTOCOLS = frozenset({RTPROT_REDIRECT, RTPROT_KERNEL, RTPROT_L3HOSTD, RTPROT_L3HOSTD_BGP})

#: Up to this many links, their routes are read with one kernel-filtered dump per link;
#: beyond, with one dump of the whole table (see ``KernelRouteWatch._read``).
PER_LINK_DUMPS = 4

_RTM_PROTOCOL_OFFSET = 16 + 5  # nlmsghdr + rtmsg.rtm_protocol


def attach_protocol_filter(sock: socket.socket, protocols: tuple[int, ...]) -> None:
    """Drop route notifications of ``protocols`` in the kernel, before they are queued.

    Our own bulk writes (100k learned routes) would otherwise flood this socket with
    notifications it must ignore, and overflow it. A route notification carries one
    message per datagram, so its rtm_protocol is at a fixed offset. Classic BPF:
    ``ldb [21]; jeq p1 -> drop; ...; ret accept; drop: ret 0``."""
    prog: list[bpf.Insn] = [(bpf.LDB_ABS, 0, 0, _RTM_PROTOCOL_OFFSET)]
    n = len(protocols)
    for i, proto in enumerate(protocols):
        prog.append((bpf.JEQ_K, n - i, 0, proto))  # jump over the rest and "accept"
    prog.append((bpf.RET_K, 0, 0, bpf.ACCEPT))
    prog.append((bpf.RET_K, 0, 0, 0))
    bpf.attach(sock, prog)


def watch_socket() -> socket.socket:
    """The notification socket: IPv4 and IPv6 route groups, a large receive buffer, and a
    filter that drops every notification of :data:`IGNORED_PROTOCOLS` in the kernel --
    ours, and the kernel's own: a TAP coming up adds its IPv6 connected and local routes
    (``proto kernel``) on the path of that TAP's announcement, and each of them woke the
    daemon for nothing."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK,
                         socket.NETLINK_ROUTE)
    try:
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        attach_protocol_filter(sock, tuple(sorted(IGNORED_PROTOCOLS)))
        sock.bind((0, RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE))
    except BaseException:
        sock.close()
        raise
    return sock


#: per prefix: (ifindex, protocol, metric) of every candidate route seen
_Routes = dict[IPNetwork, set[tuple[int, int, int]]]

#: called with a prefix and its export metric, or None when it is no longer exported
ChangeCallback = Callable[[IPNetwork, int | None], None]


class KernelRouteWatch:
    def __init__(
        self, patterns: Iterable[str], table: int, on_change: ChangeCallback
    ) -> None:
        self.patterns = tuple(patterns)
        self.table = table
        self._on_change = on_change
        self._ifindexes: dict[int, str] = {}  # matching links
        self._routes: _Routes = {}
        self._by_ifindex: dict[int, set[IPNetwork]] = {}  # prefixes with a route via it
        self._pending: set[int] = set()  # new matching links whose routes are to be read
        self._full = True  # next resync re-reads every matching link (start, overflow)
        self._exported: dict[IPNetwork, int] = {}
        self._sock: socket.socket | None = None
        self._queued: Queued | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.resync_needed = asyncio.Event()
        self.overflows = 0

    # ---- links -----------------------------------------------------------------------------

    def on_link(self, link: Link) -> None:
        match = matches(link.ifname, self.patterns)
        if match and link.admin_up:
            if link.ifindex not in self._ifindexes:
                self._ifindexes[link.ifindex] = link.ifname
                self._pending.add(link.ifindex)  # read the routes it already has (only its)
                self.resync_needed.set()
        elif link.ifindex in self._ifindexes:
            del self._ifindexes[link.ifindex]
            self._drop_ifindex(link.ifindex)

    def on_link_removed(self, ifindex: int) -> None:
        if self._ifindexes.pop(ifindex, None) is not None:
            self._drop_ifindex(ifindex)

    def _drop_ifindex(self, ifindex: int) -> None:
        self._pending.discard(ifindex)
        touched = []
        for prefix in self._by_ifindex.pop(ifindex, ()):
            seen = self._routes.get(prefix)
            if seen:
                seen.difference_update({s for s in seen if s[0] == ifindex})
                touched.append(prefix)
        self._publish(touched)

    def full_resync(self) -> None:
        """Re-read the routes of every matching link at the next resync (periodic safety
        net; a lost event)."""
        self._full = True
        self.resync_needed.set()

    # ---- events ----------------------------------------------------------------------------

    def start(self) -> None:
        sock = watch_socket()
        self._sock = sock
        self._queued = Queued(sock)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)
        self.full_resync()

    def stop(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            self._queued = None

    def _on_readable(self) -> None:
        assert self._sock is not None and self._queued is not None
        queued = self._queued
        touched: list[IPNetwork] = []
        for _ in range(256):
            try:
                data = self._sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    self.overflows += 1
                    self.full_resync()
                    continue
                log.error("route event socket failed: %s", exc)
                self.full_resync()
                break
            for mtype, _flags, _seq, start, end in wire.iter_headers(data):
                if mtype not in (wire.RTM_NEWROUTE, wire.RTM_DELROUTE):
                    continue
                rec = wire.parse_route(data, start, end)  # IGNORED_PROTOCOLS: never queued
                if not self._candidate(rec):
                    continue
                assert rec.oif is not None
                seen = self._routes.setdefault(rec.dst, set())
                item = (rec.oif, rec.protocol, rec.priority or 0)
                if mtype == wire.RTM_NEWROUTE:
                    seen.add(item)
                    self._by_ifindex.setdefault(rec.oif, set()).add(rec.dst)
                else:
                    seen.discard(item)
                    if not any(s[0] == rec.oif for s in seen):
                        self._by_ifindex.get(rec.oif, set()).discard(rec.dst)
                touched.append(rec.dst)
            if not queued():  # (not a recv() that would block: see l3hostd.netlink.queued)
                break
        self._publish(touched)

    def _candidate(self, rec: wire.RouteRecord) -> bool:
        return (
            rec.table == self.table
            and rec.oif in self._ifindexes
            and rec.protocol not in IGNORED_PROTOCOLS
            and rec.type == wire.RTN_UNICAST
            and rec.dst.prefixlen > 0
        )

    def _publish(self, prefixes: Iterable[IPNetwork]) -> None:
        for prefix in set(prefixes):
            seen = self._routes.get(prefix)
            metric = min((s[2] for s in seen), default=None) if seen else None
            if not seen:
                self._routes.pop(prefix, None)
            if self._exported.get(prefix) != metric:
                if metric is None:
                    del self._exported[prefix]
                else:
                    self._exported[prefix] = metric
                self._on_change(prefix, metric)

    # ---- resync -----------------------------------------------------------------------------

    async def resync(self, batch: RtnlBatchSocket) -> None:
        """Read routes from the kernel: every matching link's after a start or a lost event
        (and at the periodic resync); otherwise only those of links that just appeared."""
        self.resync_needed.clear()
        if not self._full:
            pending, self._pending = self._pending, set()
            touched: list[IPNetwork] = []
            for dst, item in await self._read(batch, pending & self._ifindexes.keys()):
                self._routes.setdefault(dst, set()).add(item)
                self._by_ifindex.setdefault(item[0], set()).add(dst)
                touched.append(dst)
            self._publish(touched)
            return
        self._full = False
        self._pending.clear()
        fresh: _Routes = {}
        by_ifindex: dict[int, set[IPNetwork]] = {}
        for dst, item in await self._read(batch, set(self._ifindexes)):
            fresh.setdefault(dst, set()).add(item)
            by_ifindex.setdefault(item[0], set()).add(dst)
        touched_all = set(self._routes) | set(fresh)
        self._routes = fresh
        self._by_ifindex = by_ifindex
        self._publish(touched_all)

    async def _read(
        self, batch: RtnlBatchSocket, ifindexes: set[int]
    ) -> list[tuple[IPNetwork, tuple[int, int, int]]]:
        """The candidate routes via ``ifindexes``. A dump filtered by RTA_OIF still walks
        the whole table in the kernel (~4 ms with 100k learned routes): one such dump per
        link is right for a new TAP or two, not for a host's 1000 (4 s of CPU at every
        periodic resync, measured). Beyond :data:`PER_LINK_DUMPS` links: one dump of the
        table per family, our own routes skipped unparsed, the rest kept by link here."""
        if not ifindexes:
            return []
        few = len(ifindexes) <= PER_LINK_DUMPS
        dumps: list[int | None] = [*sorted(ifindexes)] if few else [None]  # None: no filter
        out = []
        for oif in dumps:
            for family in (socket.AF_INET, socket.AF_INET6):
                try:
                    records = await batch.dump_routes(
                        family, 0, self.table, oif=oif, skip_protocols=IGNORED_PROTOCOLS
                    )
                except OSError as exc:
                    log.debug("route dump (ifindex %s) failed: %s", oif or "any", exc)
                    continue
                for rec in records:
                    if rec.oif in ifindexes and self._candidate(rec):
                        assert rec.oif is not None
                        out.append((rec.dst, (rec.oif, rec.protocol, rec.priority or 0)))
        return out

    @property
    def exported(self) -> dict[IPNetwork, int]:
        return dict(self._exported)
