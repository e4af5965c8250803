"""The kernel driver: implements the reconcilers' :class:`~l3hostd.netlink.kernel.Kernel`
port, and is the only module that imports pyroute2.

Everything on the hot paths is packed and parsed directly (:mod:`l3hostd.netlink.wire`)
and sent through :class:`~l3hostd.netlink.batch.RtnlBatchSocket`, up to 256 requests per
``sendmsg``. That is a measured choice: pyroute2 encodes ~3.7k routes/s here where packed
batches reach the kernel's own rate, and its decoder took ~450 us per RTM_NEWLINK message
(1.4 s of CPU for the 3,000 link events of a 1000-TAP burst; ``wire.parse_link`` takes
~5 us). Links, routes, neighbours and addresses therefore never go through pyroute2.

pyroute2 stays for what it is good at and what is not hot: the tests use it as the
reference decoder for our parsers, and the firewall will use its nftables netlink support
for set elements. Its asyncio sockets fail on uvloop ("invalid family 16"; pyroute2 #1335,
uvloop #676): :func:`open_pyroute2` returns an ``AsyncIPRoute`` whose datagram endpoint is
replaced by a small transport driven by ``loop.add_reader()`` (everything above it --
request tagging, queues, parsing -- is pyroute2's own code); the integration tests run it
on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Collection, Iterator, Sequence
from typing import Any

from l3hostd.model import (
    IPV6_GATEWAY,
    HostRoute,
    IPAddress,
    Link,
    Neighbour,
    TapConfig,
)
from l3hostd.netlink import resolve, sysctl, wire
from l3hostd.netlink.batch import NetlinkError, RtnlBatchSocket

log = logging.getLogger("l3hostd.netlink")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
#: Reads of the learned routes started over (concurrent changes) before giving up.
_FOLD_ATTEMPTS = 5
#: Exclusive create: never replace a route someone else installed for the same prefix.
ROUTE_ADD_FLAGS = wire.NLM_F_CREATE | wire.NLM_F_EXCL


class _ReaderTransport:
    """The part of an asyncio datagram transport pyroute2 uses, over ``add_reader``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket, protocol: Any) -> None:
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._fd = sock.fileno()
        loop.add_reader(self._fd, self._on_readable)

    def _on_readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(1 << 20)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._protocol.error_received(exc)
                return
            self._protocol.datagram_received(data, None)

    def abort(self) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(ValueError, OSError, RuntimeError):
                self._loop.remove_reader(self._fd)
            self._fd = -1


def link_from_record(rec: wire.LinkRecord) -> Link:
    return Link(
        ifindex=rec.ifindex,
        ifname=rec.ifname,
        admin_up=bool(rec.flags & IFF_UP),
        lower_up=bool(rec.flags & IFF_LOWER_UP),
    )


def parse_link_messages(data: bytes) -> Iterator[tuple[bool, Link]]:
    """Decode one event datagram: ``(present, link)`` per RTM_NEWLINK / RTM_DELLINK."""
    for mtype, _flags, _seq, start, end in wire.iter_headers(data):
        if mtype == wire.RTM_NEWLINK:
            yield True, link_from_record(wire.parse_link(data, start, end))
        elif mtype == wire.RTM_DELLINK:
            yield False, link_from_record(wire.parse_link(data, start, end))


def open_pyroute2() -> Any:
    """A pyroute2 ``AsyncIPRoute`` that works on uvloop (see the module docstring).

    pyroute2 is imported here, not at module level: it costs ~11 MiB of RSS and nothing
    on the daemon's hot paths needs it."""
    from pyroute2 import AsyncIPRoute
    from pyroute2.netlink.core import CoreDatagramProtocol

    class UvloopSafeIPRoute(AsyncIPRoute):  # type: ignore[misc]
        async def setup_endpoint(self) -> None:
            if getattr(self.local, "transport", None) is not None:
                return
            sock = self.socket
            sock.setblocking(False)
            protocol = CoreDatagramProtocol(
                self.connection_lost, self.enqueue, self._error_event, self.status
            )
            self.local.transport = _ReaderTransport(self.event_loop, sock, protocol)
            self.local.protocol = protocol

    return UvloopSafeIPRoute()


class NetlinkDriver:
    """The real kernel behind the :class:`~l3hostd.netlink.kernel.Kernel` port."""

    def __init__(self, request_timeout: float = 5.0) -> None:
        self._batch: RtnlBatchSocket | None = None
        self._timeout = request_timeout
        self._packers: dict[tuple[int, int, int], wire.KeyedRoutePacker] = {}

    async def open(self) -> None:
        # 1024 unacknowledged requests: a full datagram of route messages (~64 bytes each)
        self._batch = RtnlBatchSocket(timeout=self._timeout, max_in_flight=1024)

    def close(self) -> None:
        if self._batch is not None:
            self._batch.close()
            self._batch = None

    @property
    def batch(self) -> RtnlBatchSocket:
        assert self._batch is not None, "driver not open"
        return self._batch

    # ---- links ---------------------------------------------------------------------------

    async def dump_links(self) -> list[Link]:
        records = await self.batch.dump(
            lambda seq: wire.link_dump_request(seq=seq), wire.RTM_NEWLINK, wire.parse_link
        )
        return [link_from_record(r) for r in records]

    # ---- routes --------------------------------------------------------------------------

    async def dump_routes(self, protocol: int) -> list[HostRoute]:
        out: list[HostRoute] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for rec in await self.batch.dump_routes(family, protocol):
                # Ours but not a plain host route (gateway, multipath): ifindex 0 never
                # equals a desired route, so it is replaced or swept.
                plain = rec.oif is not None and rec.gateway is None and not rec.multipath
                out.append(
                    HostRoute(rec.dst, rec.oif if plain and rec.oif else 0, rec.table,
                              rec.protocol, rec.scope)
                )
        return out

    async def write_routes(
        self, deletes: Sequence[HostRoute], adds: Sequence[HostRoute]
    ) -> list[int]:
        reqs = [wire.host_route_del(r) for r in deletes]
        reqs += [wire.host_route_add(r, flags=ROUTE_ADD_FLAGS) for r in adds]
        return await self.batch.execute(reqs)

    # ---- neighbours ----------------------------------------------------------------------

    async def dump_neighbours(self, ifindexes: Collection[int]) -> list[Neighbour]:
        out: list[Neighbour] = []
        for rec in await self.batch.dump_neighbours(socket.AF_UNSPEC):
            if (
                rec.ifindex in ifindexes
                and rec.state & wire.NUD_PERMANENT
                and rec.lladdr
                and rec.ip is not None
            ):
                out.append(Neighbour(rec.ifindex, rec.ip, rec.lladdr))
        return out

    async def write_neighbours(
        self, deletes: Sequence[Neighbour], adds: Sequence[Neighbour]
    ) -> list[int]:
        reqs = [wire.neigh_del(n.ifindex, n.ip) for n in deletes]
        reqs += [wire.neigh_add(n.ifindex, n.ip, n.mac) for n in adds]
        return await self.batch.execute(reqs)

    # ---- learned (BGP) routes ------------------------------------------------------------

    def resolve_next_hop(self, next_hop: IPAddress) -> IPAddress | None:
        return resolve.resolve(next_hop)

    async def fold_learned(
        self,
        protocol: int,
        table: int,
        sink: Callable[[int, tuple[bytes, ...]], None],
        restart: Callable[[], None],
    ) -> None:
        def one(brief: wire.RouteBrief) -> None:
            family, dst, plen, gateways = brief
            sink((dst << 9) | (plen << 1) | (family == socket.AF_INET6), gateways)

        for _attempt in range(_FOLD_ATTEMPTS):
            restart()
            starts = 0

            def started() -> None:
                nonlocal starts
                starts += 1

            for family in (socket.AF_INET, socket.AF_INET6):
                await self.batch.fold_routes(family, protocol, table, one, started)
            if starts == 2:  # neither family's dump had to start over: one clean read
                return
        raise NetlinkError(errno.EAGAIN, "learned routes: dump interrupted too often",
                           what="netlink dump")

    async def write_learned(
        self,
        deletes: Sequence[int],
        adds: Sequence[tuple[int, int]],
        next_hops: Callable[[int], tuple[IPAddress, ...]],
        table: int,
        metric: int,
        protocol: int,
    ) -> list[int]:
        packer = self._packers.get((table, protocol, metric))
        if packer is None:
            packer = self._packers[(table, protocol, metric)] = wire.KeyedRoutePacker(
                table, protocol, metric
            )
        reqs = [packer.delete(key) for key in deletes]
        reqs += packer.adds(
            adds, lambda nh_set, family: wire.next_hop_attrs(family, next_hops(nh_set))
        )
        return await self.batch.execute(reqs)

    # ---- per-TAP configuration ------------------------------------------------------------

    async def _gateway_ifindexes(self) -> set[int]:
        addrs = await self.batch.dump(
            lambda seq: wire.addr_dump_request(socket.AF_INET6, seq=seq),
            wire.RTM_NEWADDR,
            wire.parse_addr,
        )
        return {a.ifindex for a in addrs if a.address == IPV6_GATEWAY and a.prefixlen == 64}

    async def dump_tap_configs(self, taps: Collection[TapConfig]) -> list[TapConfig]:
        with_gateway = await self._gateway_ifindexes() if any(t.ipv6 for t in taps) else set()
        return [
            t for t in taps
            if (not t.ipv6 or t.ifindex in with_gateway)
            and sysctl.tap_is_configured(t.ifname, t.ipv6, localnet=t.route_localnet)
        ]

    async def write_tap_configs(self, taps: Sequence[TapConfig]) -> list[int]:
        errs = [sysctl.configure_tap(t.ifname, t.ipv6, localnet=t.route_localnet) for t in taps]
        v6 = [i for i, t in enumerate(taps) if t.ipv6 and errs[i] == 0]
        if v6:
            results = await self.batch.execute(
                [wire.addr_add(taps[i].ifindex, IPV6_GATEWAY, 64) for i in v6]
            )
            for i, err in zip(v6, results, strict=True):
                errs[i] = 0 if err == errno.EEXIST else err
        return errs
