"""An in-memory kernel for unit tests, with the semantics that matter to the reconcilers.

* A route needs an existing, admin-up device (ENODEV / ENETDOWN otherwise).
* An exclusive add fails with EEXIST when *any* route (whatever its protocol) holds the
  same (table, destination); a delete removes only a route of the given protocol.
* Setting a device admin-down or deleting it silently drops its routes, its neighbour
  entries and its IPv6 gateway address; nothing reports that (as in Linux).
* Every write is recorded in ``writes`` so tests can assert on what was NOT written.
* ``fail_next`` makes chosen requests fail, to test retries.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace

from l3hostd.model import (
    HostRoute,
    IPAddress,
    IPNetwork,
    Link,
    Neighbour,
    NeighbourKey,
    RouteKey,
    TapConfig,
)


@dataclass(frozen=True, slots=True)
class Write:
    op: str  # "route-add", "route-del", "neigh-add", "neigh-del", "tap-config"
    obj: object


class FakeKernel:
    def __init__(self) -> None:
        self.links: dict[int, Link] = {}
        self.routes: dict[RouteKey, HostRoute] = {}  # one route per key is enough here
        self.neighbours: dict[NeighbourKey, Neighbour] = {}
        self.tap_configured: set[int] = set()
        #: (table, dst) -> (metric, protocol, next hops)
        #: next hop -> gateway (None: unreachable); absent: on-link
        self.gateways: dict[IPAddress, IPAddress | None] = {}
        self.learned: dict[tuple[int, IPNetwork], tuple[int, int, tuple[IPAddress, ...]]] = {}
        self.writes: list[Write] = []
        self.fail_next: dict[str, int] = {}  # op -> errno for its next request
        self._next_ifindex = 100

    # ---- test controls -----------------------------------------------------------------------

    def add_link(self, ifname: str, up: bool = True) -> Link:
        self._next_ifindex += 1
        link = Link(self._next_ifindex, ifname, up, up)
        self.links[link.ifindex] = link
        return link

    def set_link_up(self, ifindex: int, up: bool) -> Link:
        link = replace(self.links[ifindex], admin_up=up, lower_up=up)
        self.links[ifindex] = link
        if not up:
            self._flush(ifindex)
        return link

    def rename_link(self, ifindex: int, ifname: str) -> Link:
        link = replace(self.links[ifindex], ifname=ifname)
        self.links[ifindex] = link
        return link

    def del_link(self, ifindex: int) -> None:
        del self.links[ifindex]
        self._flush(ifindex)

    def _flush(self, ifindex: int) -> None:
        self.routes = {k: r for k, r in self.routes.items() if r.ifindex != ifindex}
        self.neighbours = {k: n for k, n in self.neighbours.items() if n.ifindex != ifindex}
        self.tap_configured.discard(ifindex)

    def clear_writes(self) -> None:
        self.writes.clear()

    def _fail(self, op: str) -> int:
        return self.fail_next.pop(op, 0)

    # ---- the Kernel port ------------------------------------------------------------------------

    async def dump_links(self) -> list[Link]:
        return list(self.links.values())

    async def dump_routes(self, protocol: int) -> list[HostRoute]:
        return [r for r in self.routes.values() if r.protocol == protocol]

    async def write_routes(
        self, deletes: Sequence[HostRoute], adds: Sequence[HostRoute]
    ) -> list[int]:
        out = []
        for r in deletes:
            self.writes.append(Write("route-del", r))
            err = self._fail("route-del")
            if not err:
                have = self.routes.get(r.key)
                if have is None or have.protocol != r.protocol:
                    err = errno.ESRCH
                else:
                    del self.routes[r.key]
            out.append(err)
        for r in adds:
            self.writes.append(Write("route-add", r))
            err = self._fail("route-add")
            if not err:
                link = self.links.get(r.ifindex)
                if link is None:
                    err = errno.ENODEV
                elif not link.admin_up:
                    err = errno.ENETDOWN
                elif r.key in self.routes:
                    err = errno.EEXIST
                else:
                    self.routes[r.key] = r
            out.append(err)
        return out

    async def dump_neighbours(self, ifindexes: Collection[int]) -> list[Neighbour]:
        return [n for n in self.neighbours.values() if n.ifindex in ifindexes]

    async def write_neighbours(
        self, deletes: Sequence[Neighbour], adds: Sequence[Neighbour]
    ) -> list[int]:
        out = []
        for n in deletes:
            self.writes.append(Write("neigh-del", n))
            err = self._fail("neigh-del")
            if not err:
                err = 0 if self.neighbours.pop(n.key, None) is not None else errno.ENOENT
            out.append(err)
        for n in adds:
            self.writes.append(Write("neigh-add", n))
            err = self._fail("neigh-add")
            if not err:
                if n.ifindex not in self.links:
                    err = errno.ENODEV
                else:
                    self.neighbours[n.key] = n
            out.append(err)
        return out

    async def dump_tap_configs(self, taps: Collection[TapConfig]) -> list[TapConfig]:
        return [t for t in taps if t.ifindex in self.tap_configured]

    async def write_tap_configs(self, taps: Sequence[TapConfig]) -> list[int]:
        out = []
        for t in taps:
            self.writes.append(Write("tap-config", t))
            err = self._fail("tap-config")
            if not err:
                if t.ifindex not in self.links:
                    err = errno.ENODEV
                else:
                    self.tap_configured.add(t.ifindex)
            out.append(err)
        return out

    def resolve_next_hop(self, next_hop: IPAddress) -> IPAddress | None:
        return self.gateways.get(next_hop, next_hop)

    async def fold_learned(
        self,
        protocol: int,
        table: int,
        sink: Callable[[int, tuple[bytes, ...]], None],
        restart: Callable[[], None],
    ) -> None:
        from l3hostd.bgp.rib import prefix_key

        restart()
        for (t, dst), (_m, p, hops) in list(self.learned.items()):
            if p == protocol and t == table:
                sink(prefix_key(dst), tuple(h.packed for h in hops))

    async def write_learned(
        self,
        deletes: Sequence[int],
        adds: Sequence[tuple[int, int]],
        next_hops: Callable[[int], tuple[IPAddress, ...]],
        table: int,
        metric: int,
        protocol: int,
    ) -> list[int]:
        from l3hostd.bgp.rib import key_prefix

        out = []
        for key in deletes:
            dst = key_prefix(key)
            self.writes.append(Write("learned-del", dst))
            have = self.learned.get((table, dst))
            if have is None or have[:2] != (metric, protocol):
                out.append(errno.ESRCH)
            else:
                del self.learned[(table, dst)]
                out.append(0)
        for key, nh_set in adds:
            hops = next_hops(nh_set)
            dst = key_prefix(key)
            self.writes.append(Write("learned-add", (dst, hops)))
            err = self._fail("learned-add")
            if not err:
                self.learned[(table, dst)] = (metric, protocol, hops)
            out.append(err)
        return out
