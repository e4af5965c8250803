"""Learned-route reconciler: what the BGP RIB selected, installed with ``proto l3hostd-bgp``.

Keys and values are the RIB's compact ints (:mod:`l3hostd.bgp.rib`): the prefix key and
the index of the interned ECMP next-hop set. The desired state is not a copy: it is a
view of the RIB's selection (:class:`SelectionView`, resolved as below), so 100k learned
routes cost one small dict entry here (observed), not objects. A prefix with several next
hops is one multipath route.

Ownership: ``rtm_protocol`` :data:`~l3hostd.model.RTPROT_L3HOSTD_BGP` in the import table,
at metric :data:`LEARNED_METRIC` (2048). The metric keeps learned routes out of the way of
every local route: our endpoint routes (IPv4 metric 0, IPv6 1024) and routes of other
daemons (Felix, static) have lower metrics, so a learned /32 can be installed next to a
local one without replacing it and the local one wins the lookup -- a hypervisor's own
anycast endpoint is served locally while the other announcers stay ready as backup.
Changes are written as one NLM_F_REPLACE of our route (no delete/add gap); the replace
matches table, prefix and metric, i.e. only routes at our metric.

Next hops are resolved (:mod:`l3hostd.netlink.resolve`): the value installed is the set of
*kernel* gateways -- the BGP next hop itself when it is on-link, else the gateway the FIB
uses to reach it -- so what a dump reads back compares equal to what is desired. The
resolution of each BGP next-hop set is cached; :meth:`LearnedRouteReconciler.re_resolve`
refreshes it (link changes, periodic resync) and re-plans only the prefixes whose
gateways changed. A prefix whose next hops are all unreachable is not installed.

Graceful restart: at start the learned routes found in the kernel are adopted (they keep
forwarding) and ``protect_unwanted`` stops the first passes from sweeping them; the BGP
manager releases the protection once the peers sent End-of-RIB (or a capped wait ended).
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping, Sequence

from l3hostd.bgp.rib import AdjRibIn, prefix_key
from l3hostd.model import RT_TABLE_MAIN, RTPROT_L3HOSTD_BGP
from l3hostd.netlink.kernel import Kernel
from l3hostd.reconcile import Reconciler

LEARNED_METRIC = 2048


class SelectionView(MutableMapping[int, int]):
    """The learned reconciler's desired state: the RIB's selection, resolved to kernel
    gateways, computed on access. Read-only: the RIB is the one place it changes."""

    __slots__ = ("_owner",)

    def __init__(self, owner: LearnedRouteReconciler) -> None:
        self._owner = owner

    def __getitem__(self, key: int) -> int:
        value = self._owner.desired_value(key)
        if value is None:
            raise KeyError(key)
        return value

    def get(self, key: int, default: int | None = None) -> int | None:  # type: ignore[override]
        value = self._owner.desired_value(key)
        return default if value is None else value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self._owner.desired_value(key) is not None

    def __iter__(self) -> Iterator[int]:
        resolved = self._owner._resolved_set
        for key, bgp_set in self._owner._rib.iter_selected():
            if resolved(bgp_set) is not None:
                yield key

    def __len__(self) -> int:
        if not self._owner.unresolved:
            return self._owner._rib.prefix_count()
        return sum(1 for _ in self)

    def __setitem__(self, key: int, value: int) -> None:
        raise TypeError("learned routes follow the RIB: use LearnedRouteReconciler.select")

    def __delitem__(self, key: int) -> None:
        raise TypeError("learned routes follow the RIB: use LearnedRouteReconciler.select")


class LearnedRouteReconciler(Reconciler[int, int]):
    name = "learned-routes"

    def __init__(
        self,
        kernel: Kernel,
        rib: AdjRibIn,
        table: int = RT_TABLE_MAIN,
        metric: int = LEARNED_METRIC,
        protocol: int = RTPROT_L3HOSTD_BGP,
    ) -> None:
        super().__init__()
        self._kernel = kernel
        self._rib = rib
        self.table = table
        self.metric = metric
        self.protocol = protocol
        self.replace_in_place = True
        self._gateway: dict[int, int | None] = {}  # BGP next hop idx -> kernel gateway idx
        self._set_cache: dict[int, int | None] = {}  # BGP ECMP set idx -> gateway set idx
        self.unresolved: set[int] = set()  # BGP next hops (idx) without a usable path
        self.desired = SelectionView(self)

    # ---- input from the RIB ----------------------------------------------------------------

    def desired_value(self, key: int) -> int | None:
        bgp_set = self._rib.selection(key)
        return None if bgp_set is None else self._resolved_set(bgp_set)

    def select(self, key: int, bgp_set: int | None) -> None:
        """The RIB selected this ECMP set (None: nothing) for the prefix ``key``: mark the
        key dirty when that differs from what is installed (the RIB holds the wish)."""
        want = None if bgp_set is None else self._resolved_set(bgp_set)
        have = self.observed.get(key)
        self._retry.pop(key, None)
        if want is None:
            self._dirty_add.discard(key)
            if have is None:
                self._dirty_rm.discard(key)
            else:
                self._dirty_rm.add(key)
        elif want != have:
            self._dirty_rm.discard(key)
            self._dirty_add.add(key)
        else:
            self._dirty_add.discard(key)
            self._dirty_rm.discard(key)

    def set_desired(self, key: int, value: int | None) -> None:
        raise TypeError("learned routes follow the RIB: use LearnedRouteReconciler.select")

    def _resolved_set(self, bgp_set: int) -> int | None:
        if bgp_set in self._set_cache:
            return self._set_cache[bgp_set]
        gateways: set[int] = set()
        for nh in self._rib.ecmp_sets[bgp_set]:
            if nh not in self._gateway:
                gw = self._kernel.resolve_next_hop(self._rib.next_hops[nh])
                self._gateway[nh] = None if gw is None else self._rib.next_hops.add(gw)
                if gw is None:
                    self.unresolved.add(nh)
                else:
                    self.unresolved.discard(nh)
            gw_idx = self._gateway[nh]
            if gw_idx is not None:
                gateways.add(gw_idx)
        result = self._rib.ecmp_sets.add(tuple(sorted(gateways))) if gateways else None
        self._set_cache[bgp_set] = result
        return result

    def re_resolve(self) -> int:
        """Resolve every known BGP next hop again; re-plan the prefixes whose gateways
        changed. Returns how many prefixes were re-planned."""
        changed = set()
        for nh, old in list(self._gateway.items()):
            gw = self._kernel.resolve_next_hop(self._rib.next_hops[nh])
            new = None if gw is None else self._rib.next_hops.add(gw)
            if new != old:
                self._gateway[nh] = new
                changed.add(nh)
                if new is None:
                    self.unresolved.add(nh)
                else:
                    self.unresolved.discard(nh)
        if not changed:
            return 0
        sets = self._rib.ecmp_sets
        stale = {s for s in self._set_cache if changed.intersection(sets[s])}
        for s in stale:
            del self._set_cache[s]
        n = 0
        for key, bgp_set in list(self._rib.iter_selected()):
            if bgp_set in stale:
                self.select(key, bgp_set)
                n += 1
        return n

    async def _dump(self) -> dict[int, int]:
        out: dict[int, int] = {}
        nh_add = self._rib.next_hops.add
        sets = self._rib.ecmp_sets
        for dst, hops in await self._kernel.dump_learned(self.protocol, self.table):
            out[prefix_key(dst)] = sets.add(tuple(sorted({nh_add(h) for h in hops})))
        return out

    async def _write(
        self, deletes: Sequence[tuple[int, int]], adds: Sequence[tuple[int, int]]
    ) -> list[int]:
        hops = self._rib.ecmp_next_hops
        return await self._kernel.write_learned(
            [k for k, _ in deletes],
            [(k, hops(v)) for k, v in adds],
            self.table,
            self.metric,
            self.protocol,
        )
