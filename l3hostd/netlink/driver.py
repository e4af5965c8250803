"""The kernel driver: the only module that imports pyroute2.

pyroute2 is used for what it does well: links (dumps and the parsing of RTM_NEWLINK /
RTM_DELLINK messages, whose IFLA_LINKINFO nesting is tedious to decode by hand). Bulk
work on routes, neighbours and addresses goes through :mod:`l3hostd.netlink.batch`, which
packs messages directly and sends up to 256 per ``sendmsg`` (pyroute2 encodes ~3.7k
routes/s here; packed batches reach the kernel's own ~50k/s).

uvloop compatibility: pyroute2's asyncio sockets call ``loop.create_datagram_endpoint``
on an AF_NETLINK socket, which uvloop refuses ("invalid family 16"; pyroute2 #1335,
uvloop #676). :class:`_UvloopSafeIPRoute` replaces that one step with a small transport
driven by ``loop.add_reader()``; everything above it (request tagging, queues, parsing)
is pyroute2's own code. ``tests/integration/test_driver.py`` runs it on uvloop.

:class:`NetlinkDriver` implements :class:`l3hostd.netlink.kernel.Kernel`, the port the
reconcilers use; :func:`parse_link_messages` decodes the event socket's datagrams for
:mod:`l3hostd.netlink.monitor`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Collection, Iterator, Sequence
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.core import CoreDatagramProtocol
from pyroute2.netlink.rtnl.marshal import MarshalRtnl

from l3hostd.model import HostRoute, Link, Neighbour, TapConfig
from l3hostd.netlink import sysctl
from l3hostd.netlink.batch import RtnlBatchSocket

log = logging.getLogger("l3hostd.netlink")

IFF_UP = 0x1
IFF_LOWER_UP = 0x10000
RTM_NEWLINK = 16
RTM_DELLINK = 17


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
            try:
                self._loop.remove_reader(self._fd)
            except (ValueError, OSError, RuntimeError):
                pass
            self._fd = -1


class _UvloopSafeIPRoute(AsyncIPRoute):  # type: ignore[misc]
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


def _link_from_msg(msg: Any) -> Link:
    flags = int(msg["flags"])
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    return Link(
        ifindex=int(msg["index"]),
        ifname=str(msg.get_attr("IFLA_IFNAME")),
        admin_up=bool(flags & IFF_UP),
        lower_up=bool(flags & IFF_LOWER_UP),
        mac=msg.get_attr("IFLA_ADDRESS"),
        kind=kind,
    )


_marshal = MarshalRtnl()


def parse_link_messages(data: bytes) -> Iterator[tuple[bool, Link]]:
    """Decode one event datagram: ``(present, link)`` per RTM_NEWLINK / RTM_DELLINK."""
    for msg in _marshal.parse(data):
        kind = msg["header"]["type"]
        if kind == RTM_NEWLINK:
            yield True, _link_from_msg(msg)
        elif kind == RTM_DELLINK:
            yield False, _link_from_msg(msg)


class NetlinkDriver:
    """The real kernel behind the :class:`~l3hostd.netlink.kernel.Kernel` port."""

    def __init__(self, request_timeout: float = 5.0) -> None:
        self._ipr: Any = None
        self._batch: RtnlBatchSocket | None = None
        self._timeout = request_timeout

    async def open(self) -> None:
        self._ipr = _UvloopSafeIPRoute()
        self._batch = RtnlBatchSocket(timeout=self._timeout)

    def close(self) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None
        if self._batch is not None:
            self._batch.close()
            self._batch = None

    @property
    def batch(self) -> RtnlBatchSocket:
        assert self._batch is not None, "driver not open"
        return self._batch

    # ---- links ---------------------------------------------------------------------------

    async def dump_links(self) -> list[Link]:
        async def dump() -> list[Link]:
            return [_link_from_msg(m) async for m in await self._ipr.link("dump")]

        return await asyncio.wait_for(dump(), self._timeout * 4)

    # ---- routes --------------------------------------------------------------------------

    async def dump_routes(self, protocol: int) -> list[HostRoute]:
        out: list[HostRoute] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for rec in await self.batch.dump_routes(family, protocol):
                if rec.oif is None or rec.gateway is not None or rec.multipath:
                    # Ours, but not a host route: give it an ifindex of 0 so that it
                    # never equals a desired route and is replaced or swept.
                    out.append(HostRoute(rec.dst, 0, rec.table, rec.protocol, rec.scope))
                else:
                    out.append(HostRoute(rec.dst, rec.oif, rec.table, rec.protocol, rec.scope))
        return out

    async def write_routes(
        self, deletes: Sequence[HostRoute], adds: Sequence[HostRoute]
    ) -> list[int]:
        from l3hostd.netlink import wire

        reqs = [wire.host_route_del(r) for r in deletes] + [wire.host_route_add(r) for r in adds]
        return await self.batch.execute(reqs)

    # ---- neighbours ----------------------------------------------------------------------

    async def dump_neighbours(self, ifindexes: Collection[int]) -> list[Neighbour]:
        from l3hostd.netlink import wire

        out: list[Neighbour] = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for rec in await self.batch.dump_neighbours(family):
                if rec.ifindex in ifindexes and rec.state & wire.NUD_PERMANENT and rec.lladdr:
                    out.append(Neighbour(rec.ifindex, rec.ip, rec.lladdr))
        return out

    async def write_neighbours(
        self, deletes: Sequence[Neighbour], adds: Sequence[Neighbour]
    ) -> list[int]:
        from l3hostd.netlink import wire

        reqs = [wire.neighbour_del(n) for n in deletes] + [wire.neighbour_add(n) for n in adds]
        return await self.batch.execute(reqs)

    # ---- per-TAP configuration ------------------------------------------------------------

    async def dump_tap_configs(self, taps: Collection[TapConfig]) -> list[TapConfig]:
        from l3hostd.netlink import wire

        with_gateway = await self.batch.gateway_ifindexes()
        out = []
        for tap in taps:
            if tap.ipv6 and tap.ifindex not in with_gateway:
                continue
            if sysctl.tap_is_configured(tap.ifname, tap.ipv6):
                out.append(tap)
        del wire
        return out

    async def write_tap_configs(self, taps: Sequence[TapConfig]) -> list[int]:
        from l3hostd.netlink import wire

        errs = [sysctl.configure_tap(t.ifname, t.ipv6) for t in taps]
        v6 = [i for i, t in enumerate(taps) if t.ipv6 and errs[i] == 0]
        if v6:
            results = await self.batch.execute(
                [wire.gateway_address_add(taps[i].ifindex) for i in v6]
            )
            for i, err in zip(v6, results, strict=True):
                errs[i] = err
        return errs
