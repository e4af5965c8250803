"""Learned-route reconciler: what the BGP RIB selected, installed with ``proto l3hostd-bgp``.

Keys and values are the RIB's compact ints (:mod:`l3hostd.bgp.rib`): the prefix key and
the index of the interned ECMP next-hop set. A prefix with several next hops is one
multipath route. Neither state is a copy of 100k routes:

* desired is a view of the RIB's selection (:class:`SelectionView`, resolved as below);
* observed (what is installed) is kept as its *difference* from desired
  (:class:`InstalledView`): a key absent from ``drift`` is installed exactly as desired,
  so once the kernel has caught up, observed costs nothing. The RIB reports each change
  of selection with the old one (:data:`~l3hostd.bgp.rib.SelectionDelta`), which is what
  was installed: :meth:`LearnedRouteReconciler.select` pins it in ``drift`` before the
  wish moves on, and the key is dirty until the kernel matches again.
* a resync reads the kernel as a stream (:meth:`Kernel.fold_learned`): each route is
  compared with desired as it is parsed; only differences are kept. A second pass, only
  when some desired routes were not seen, collects the keys present to find them.

Measured with 100k learned routes: the periodic resync built a list of 100k parsed routes
and a second observed dict; the daemon's peak RSS went from 74 to 155 MiB at its first
resync, and stayed there.

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

import time
from collections.abc import Iterator, MutableMapping, Sequence
from ipaddress import ip_address

from l3hostd.bgp.rib import AdjRibIn, SelectionDelta
from l3hostd.model import RT_TABLE_MAIN, RTPROT_L3HOSTD_BGP
from l3hostd.netlink.kernel import Kernel
from l3hostd.reconcile import Phase, Reconciler

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


#: In ``drift``: the key is desired but not installed.
ABSENT = -1
_UNCACHED = -2  # not in the resolution cache (set indexes are >= 0)


class InstalledView(MutableMapping[int, int]):
    """What is installed (the reconciler's observed state), stored as its difference from
    desired: ``drift[key]`` is the installed value (or :data:`ABSENT`) where it differs;
    any other key is installed exactly as desired. Writes keep the difference minimal."""

    __slots__ = ("_owner", "drift")

    def __init__(self, owner: LearnedRouteReconciler) -> None:
        self._owner = owner
        self.drift: dict[int, int] = {}

    def get(self, key: int, default: int | None = None) -> int | None:  # type: ignore[override]
        d = self.drift.get(key)
        if d is None:  # installed as desired
            d = self._owner.desired_value(key)
            return default if d is None else d
        return default if d == ABSENT else d

    def __getitem__(self, key: int) -> int:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return isinstance(key, int) and self.get(key) is not None

    def __setitem__(self, key: int, value: int) -> None:
        if value == self._owner.desired_value(key):
            self.drift.pop(key, None)
        else:
            self.drift[key] = value

    def __delitem__(self, key: int) -> None:
        if self.get(key) is None:
            raise KeyError(key)
        self._gone(key)

    def pop(self, key: int, default: int | None = None) -> int | None:  # type: ignore[override]
        value = self.get(key)
        if value is None:
            return default
        self._gone(key)
        return value

    def _gone(self, key: int) -> None:
        if self._owner.desired_value(key) is None:
            self.drift.pop(key, None)
        else:
            self.drift[key] = ABSENT

    def __iter__(self) -> Iterator[int]:
        drift = self.drift
        for key in self._owner.desired:
            if key not in drift:
                yield key
        for key, value in drift.items():
            if value != ABSENT:
                yield key

    def __len__(self) -> int:
        n = len(self._owner.desired)
        desired = self._owner.desired_value
        for key, value in self.drift.items():
            n += (value != ABSENT) - (desired(key) is not None)
        return n

    def by_family(self) -> tuple[int, int]:
        """(IPv4, IPv6) routes installed, without computing a selection per route."""
        owner = self._owner
        if owner.unresolved:
            v6 = sum(key & 1 for key in self)
            return len(self) - v6, v6
        paths = owner._rib.paths
        v6 = sum(key & 1 for key in paths)
        v4 = len(paths) - v6
        desired = owner.desired_value
        for key, value in self.drift.items():
            delta = (value != ABSENT) - (desired(key) is not None)
            if key & 1:
                v6 += delta
            else:
                v4 += delta
        return v4, v6


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
        self._paths = rib.paths
        self._select = rib._select
        self.desired = SelectionView(self)
        self.installed = InstalledView(self)
        self.observed = self.installed

    # ---- input from the RIB ----------------------------------------------------------------

    def desired_value(self, key: int) -> int | None:
        have = self._paths.get(key)  # rib.selection(key), inlined: the hot path of a load
        if have is None:
            return None
        bgp_set = self._select(have)
        cached = self._set_cache.get(bgp_set, _UNCACHED)
        return self._resolved_set(bgp_set) if cached == _UNCACHED else cached

    def _converged(self, key: int) -> bool:
        return key not in self.installed.drift  # installed == desired, by construction

    def select(self, key: int, old: int | None, new: int | None) -> None:
        """The RIB's selection for the prefix ``key`` went from ``old`` to ``new`` (ECMP
        set indexes, None: nothing). What was installed is pinned (it was ``old``, unless
        the kernel already differed), and the key is dirty until the kernel matches."""
        self.select_many({key: (old, new)})

    def select_many(self, delta: SelectionDelta) -> None:
        """:meth:`select` for every key of a RIB delta (one UPDATE's), in one loop with the
        lookups inlined (a full table is 100k keys); the end of each step is
        :meth:`_settle`'s, inlined too."""
        retry = self._retry
        drift = self.installed.drift
        cache = self._set_cache
        resolve = self._resolved_set
        dirty_add = self._dirty_add
        dirty_rm = self._dirty_rm
        for key, (old, new) in delta.items():
            if retry:
                retry.pop(key, None)
            want = None if new is None else cache[new] if new in cache else resolve(new)
            have = drift.get(key)
            if have is None:  # installed as desired until now, i.e. as ``old``
                was = None if old is None else cache[old] if old in cache else resolve(old)
                if was == want:
                    continue
                drift[key] = ABSENT if was is None else was
                have = was
            elif have == ABSENT:
                have = None
            if have == want:
                del drift[key]
                dirty_add.discard(key)
                dirty_rm.discard(key)
            elif want is None:
                dirty_add.discard(key)
                dirty_rm.add(key)
            else:
                dirty_rm.discard(key)
                dirty_add.add(key)

    def _settle(self, key: int, want: int | None) -> None:
        """``key`` is in drift, ``want`` its desired value: forget the difference if there
        is none, else mark the key dirty for the write it needs."""
        drift = self.installed.drift
        d = drift[key]
        have = None if d == ABSENT else d
        if have == want:
            del drift[key]
            self._dirty_add.discard(key)
            self._dirty_rm.discard(key)
        elif want is None:
            self._dirty_add.discard(key)
            self._dirty_rm.add(key)
        else:
            self._dirty_rm.discard(key)
            self._dirty_add.add(key)

    def set_desired(self, key: int, value: int | None) -> None:
        raise TypeError("learned routes follow the RIB: use LearnedRouteReconciler.select")

    def _shrink(self) -> None:
        super()._shrink()
        if not self.installed.drift:  # a dict keeps the table of its largest size, too
            self.installed.drift = {}

    def release_protection(self) -> None:
        if self.protect_unwanted:
            self.protect_unwanted = False
            desired = self.desired_value
            self._dirty_rm.update(k for k, v in self.installed.drift.items()
                                  if v != ABSENT and desired(k) is None)

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
        changed: dict[int, int | None] = {}
        for nh, old in self._gateway.items():
            gw = self._kernel.resolve_next_hop(self._rib.next_hops[nh])
            new = None if gw is None else self._rib.next_hops.add(gw)
            if new != old:
                changed[nh] = new
        if not changed:
            return 0
        sets = self._rib.ecmp_sets
        stale = {s for s in self._set_cache if not changed.keys().isdisjoint(sets[s])}
        keys = [key for key, bgp_set in self._rib.iter_selected() if bgp_set in stale]
        drift = self.installed.drift
        for key in keys:  # pin what is installed, resolved the old way
            if key not in drift:
                was = self.desired_value(key)
                drift[key] = ABSENT if was is None else was
        for nh, new in changed.items():
            self._gateway[nh] = new
            if new is None:
                self.unresolved.add(nh)
            else:
                self.unresolved.discard(nh)
        for s in stale:
            del self._set_cache[s]
        for key in keys:
            self._retry.pop(key, None)
            self._settle(key, self.desired_value(key))
        return len(keys)

    # ---- IO ------------------------------------------------------------------------------------

    async def apply(self, phase: Phase, now: float) -> int:
        """The ADD phase, specialised: the generic one costs ~3 us per route in views and
        double lookups, the most of a 100k-route load's Python time. Same decisions: a
        dirty key is written when it is desired and not installed as desired; after the
        write, a key whose wish is still what was written is installed as desired -- its
        drift entry goes; one whose wish moved during the write (the RIB changed, next
        hops were resolved again) takes the generic way."""
        if phase is Phase.REMOVE:
            return await super().apply(phase, now)
        dirty = self._dirty_add
        retry = self._retry
        drift = self.installed.drift
        desired_value = self.desired_value
        budget = self.max_batch
        adds: list[tuple[int, int]] = []
        clean: list[int] = []
        for key in dirty:
            if retry and key in retry and retry[key].not_before > now:
                continue
            want = desired_value(key)
            if want is None:
                clean.append(key)  # not desired (any delete is the REMOVE phase's)
                continue
            have = drift.get(key)
            if have is None or have == want:
                clean.append(key)  # installed as desired
                continue
            adds.append((key, want))
            if len(adds) >= budget:
                break
        for key in clean:
            dirty.discard(key)
            retry.pop(key, None)
        self._shrink()
        if not adds:
            return 0
        self.stats.applies += 1
        t0 = time.monotonic()
        errnos = await self._write((), adds)
        self.stats.observe_apply(time.monotonic() - t0)
        self.stats.writes += len(errnos)
        failed: dict[int, int] = {}
        track = self.track_changes
        for (key, value), err in zip(adds, errnos, strict=True):
            if err:
                failed[key] = err
                self._fail(key, err, now)
                continue
            if track:
                self._changed(key)
            if desired_value(key) != value:  # the wish moved during the write: the generic way
                self.installed[key] = value
                if self._converged(key):
                    dirty.discard(key)
                    retry.pop(key, None)
                else:
                    self._mark(key)
            else:
                drift.pop(key, None)
                dirty.discard(key)
                if retry:
                    retry.pop(key, None)
        if failed:
            self._log_failures(failed, len(adds))
        self._shrink()
        return len(errnos)

    async def resync(self) -> None:
        """Read what is installed as a stream; keep only where it differs from desired."""
        drift: dict[int, int] = {}
        matched = 0
        sets: dict[tuple[bytes, ...], int] = {}
        gateway_set = self._gateway_set
        desired = self.desired_value

        def restart() -> None:
            nonlocal matched
            drift.clear()
            matched = 0

        def compare(key: int, gateways: tuple[bytes, ...]) -> None:
            nonlocal matched
            value = sets.get(gateways)
            if value is None:
                value = sets[gateways] = gateway_set(gateways)
            if desired(key) == value:
                matched += 1
            else:
                drift[key] = value

        await self._kernel.fold_learned(self.protocol, self.table, compare, restart)
        differing = sum(1 for key in drift if desired(key) is not None)
        if matched + differing < len(self.desired):
            # some desired routes are not in the kernel: which? (only now are the keys
            # present needed)
            present: set[int] = set()
            await self._kernel.fold_learned(
                self.protocol, self.table, lambda key, _gw: present.add(key), present.clear)
            for key in self.desired:
                if key not in present:
                    drift[key] = ABSENT
            del present
        self.installed.drift = drift
        self._dirty_add = set()
        self._dirty_rm = set()
        for key, value in drift.items():
            if desired(key) is not None:
                self._dirty_add.add(key)
            elif value != ABSENT:
                self._dirty_rm.add(key)
        self._resync_pending = False
        self._resync_failures = 0
        self.in_sync = True
        self.stats.resyncs += 1

    def _gateway_set(self, gateways: tuple[bytes, ...]) -> int:
        """The interned ECMP set of packed gateway addresses (as read from the kernel)."""
        nh_add = self._rib.next_hops.add
        return self._rib.ecmp_sets.add(tuple(sorted({nh_add(ip_address(g)) for g in gateways})))

    async def _dump(self) -> dict[int, int]:
        """Everything installed, as a dict (tools and tests; resync does not use it)."""
        out: dict[int, int] = {}

        def put(key: int, gateways: tuple[bytes, ...]) -> None:
            out[key] = self._gateway_set(gateways)

        await self._kernel.fold_learned(self.protocol, self.table, put, out.clear)
        return out

    async def _write(
        self, deletes: Sequence[tuple[int, int]], adds: Sequence[tuple[int, int]]
    ) -> list[int]:
        return await self._kernel.write_learned(
            [k for k, _ in deletes],
            adds,
            self._rib.ecmp_next_hops,
            self.table,
            self.metric,
            self.protocol,
        )
