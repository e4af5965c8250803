"""The port between the reconcilers and the kernel.

:class:`Kernel` is what the reconcilers need from the kernel, nothing more: dump what we
own, write a batch (deletes first, then adds; one errno per request, 0 for success). The
real implementation is :class:`l3hostd.netlink.driver.NetlinkDriver`; unit tests use
:class:`l3hostd.netlink.fake.FakeKernel`, an in-memory kernel with the same semantics
(routes need an admin-up device, a device going down loses its routes, neighbours and IPv6
addresses without any event, an exclusive add fails on any route with the same key).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Protocol

from l3hostd.model import HostRoute, IPAddress, Link, Neighbour, TapConfig


class Kernel(Protocol):
    async def dump_links(self) -> list[Link]: ...

    async def dump_routes(self, protocol: int) -> list[HostRoute]:
        """Every route with this ``rtm_protocol``, in every table, both families."""
        ...

    async def write_routes(
        self, deletes: Sequence[HostRoute], adds: Sequence[HostRoute]
    ) -> list[int]:
        """Deletes match on protocol (never remove a foreign route); adds are exclusive
        (never replace a foreign route)."""
        ...

    async def dump_neighbours(self, ifindexes: Collection[int]) -> list[Neighbour]:
        """Permanent neighbour entries on these interfaces."""
        ...

    async def write_neighbours(
        self, deletes: Sequence[Neighbour], adds: Sequence[Neighbour]
    ) -> list[int]: ...

    async def dump_tap_configs(self, taps: Collection[TapConfig]) -> list[TapConfig]:
        """Those of ``taps`` whose sysctls and gateway address are already right."""
        ...

    async def write_tap_configs(self, taps: Sequence[TapConfig]) -> list[int]: ...

    def resolve_next_hop(self, next_hop: IPAddress) -> IPAddress | None:
        """The gateway the FIB uses to reach ``next_hop`` (itself when on-link)."""
        ...

    async def fold_learned(
        self,
        protocol: int,
        table: int,
        sink: Callable[[int, tuple[bytes, ...]], None],
        restart: Callable[[], None],
    ) -> None:
        """Each route of ``protocol`` in ``table`` to ``sink(prefix key, gateways)`` as it
        is read, nothing accumulated (keys as :func:`l3hostd.bgp.rib.prefix_key`,
        gateways as packed addresses: 4 or 16 bytes each);
        ``restart()`` runs before the first route and again whenever the read starts over
        (a dump interrupted by concurrent changes)."""
        ...

    async def write_learned(
        self,
        deletes: Sequence[int],
        adds: Sequence[tuple[int, int]],
        next_hops: Callable[[int], tuple[IPAddress, ...]],
        table: int,
        metric: int,
        protocol: int,
    ) -> list[int]:
        """Prefixes are RIB keys (:func:`l3hostd.bgp.rib.prefix_key`): no network objects
        for 100k routes. Deletes match protocol, table and metric; adds ``(key, next-hop
        set)`` create or replace our route (one multipath route when there are several
        next hops); ``next_hops(set)`` gives a set's gateways (asked once per set)."""
        ...
