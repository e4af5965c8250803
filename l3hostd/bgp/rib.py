"""Adj-RIB-In of every peer and path, best-path selection and the ECMP set per prefix.

Pure (no IO). Built to hold every /32 and /128 of a cloud (100k+ prefixes) in little
memory: a prefix is one int (:func:`prefix_key`), a path is one int packing
``(peer, path id, next hop, attributes)`` where the next hop and the attribute set are
indexes into interning tables, and a prefix with one path (the common case) stores that
int directly instead of a container. ~110 bytes per prefix instead of the ~1 KiB that
ipaddress objects, dataclasses and dicts per path would cost.

Import policy is applied on receipt (like BIRD without ``import keep filtered``): a
rejected path is not stored; a policy change is applied by asking the peer for a route
refresh. Rejected: prefixes outside ``accept`` (when given) or inside ``reject``, the
default route unless allowed, paths whose ORIGINATOR_ID is our router id or whose next
hop is one of our addresses (our own announcements reflected back, RFC 4456 §8).

Selection among the stored paths of a prefix (RFC 4271 §9.1.2.2 as it applies to iBGP
with one AS): highest LOCAL_PREF (100 when absent), shortest AS_PATH, lowest ORIGIN,
lowest MED; all paths tied on those form the ECMP set (BIRD's ``merge paths``), whose
distinct next hops are installed as one multipath route. The displayed "best" path within
the set is the one with the lowest ORIGINATOR_ID / peer then path id.

Graceful restart (RFC 4724 §4.2): when a session drops and the peer had advertised GR,
its paths are moved to a *stale alias* of the peer (:meth:`AdjRibIn.mark_stale`). Fresh
paths from the re-established session live beside them (same next hops: the ECMP set and
so the kernel route do not change); End-of-RIB or the restart timer drops the alias.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address
from typing import Generic, TypeVar

from l3hostd.bgp.messages import PathAttributes, Route, Update
from l3hostd.bgp.messages import key_is_v6 as key_is_v6  # re-exported: the RIB's keys
from l3hostd.bgp.messages import key_prefix as key_prefix
from l3hostd.bgp.messages import prefix_key as prefix_key
from l3hostd.model import IPAddress, IPNetwork

T = TypeVar("T", bound=Hashable)

# ---- compact keys ------------------------------------------------------------------------


class Interner(Generic[T]):
    """Value <-> small int, for next hops, attribute sets and ECMP next-hop sets."""

    __slots__ = ("_index", "values")

    def __init__(self) -> None:
        self.values: list[T] = []
        self._index: dict[T, int] = {}

    def add(self, value: T) -> int:
        idx = self._index.get(value)
        if idx is None:
            idx = len(self.values)
            self.values.append(value)
            self._index[value] = idx
        return idx

    def __getitem__(self, idx: int) -> T:
        return self.values[idx]

    def __len__(self) -> int:
        return len(self.values)


# packed path: | peer (12 bits) | path id (32) | next hop idx (24) | attributes idx (24) |
_ATTR_BITS = 24
_NH_BITS = 24
_PID_BITS = 32
_ATTR_MASK = (1 << _ATTR_BITS) - 1
_NH_MASK = (1 << _NH_BITS) - 1
_PID_MASK = (1 << _PID_BITS) - 1
_NH_SHIFT = _ATTR_BITS
_PID_SHIFT = _NH_SHIFT + _NH_BITS
_PEER_SHIFT = _PID_SHIFT + _PID_BITS
MAX_PEERS = 1 << 12
_SHARED_MAX = 1 << 16


def pack_path(peer: int, path_id: int, nh: int, attrs: int) -> int:
    return (peer << _PEER_SHIFT) | (path_id << _PID_SHIFT) | (nh << _NH_SHIFT) | attrs


def path_peer(path: int) -> int:
    return path >> _PEER_SHIFT


def path_ident(path: int) -> int:
    """(peer, path id) packed: identifies a path within a prefix (RFC 7911)."""
    return path >> _PID_SHIFT


def path_id(path: int) -> int:
    return (path >> _PID_SHIFT) & _PID_MASK


def path_nh(path: int) -> int:
    return (path >> _NH_SHIFT) & _NH_MASK


def path_attrs(path: int) -> int:
    return path & _ATTR_MASK


# ---- policy --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ImportPolicy:
    accept: tuple[IPNetwork, ...] = ()  # empty: everything not rejected
    reject: tuple[IPNetwork, ...] = ()
    allow_default: bool = False
    router_id: IPv4Address | None = None
    own_addresses: frozenset[IPAddress] = frozenset()

    def admits(self, route: Route) -> str:
        """"" when the path is accepted, else why not."""
        return self.admits_prefix(route.prefix) or self.admits_path(
            route.next_hop, route.attributes
        )

    def admits_prefix(self, prefix: IPNetwork) -> str:
        if prefix.prefixlen == 0 and not self.allow_default:
            return "default route"
        if self.accept and not any(_within(prefix, net) for net in self.accept):
            return "not in accept list"
        if self.reject and any(_within(prefix, net) for net in self.reject):
            return "in reject list"
        return ""

    def admits_path(self, next_hop: IPAddress, attributes: PathAttributes) -> str:
        """The checks that depend on the path, not the prefix (once per attribute set)."""
        if self.router_id is not None and attributes.originator_id == self.router_id:
            return "our own route (ORIGINATOR_ID)"
        if next_hop in self.own_addresses:
            return "next hop is this host"
        return ""


def _within(prefix: IPNetwork, net: IPNetwork) -> bool:
    return prefix.version == net.version and prefix.subnet_of(net)  # type: ignore[arg-type]


class MaxPrefixExceeded(Exception):
    def __init__(self, peer: str, limit: int) -> None:
        super().__init__(f"peer {peer}: more than {limit} prefixes received (max_prefixes)")
        self.peer = peer
        self.limit = limit


# ---- the RIB -------------------------------------------------------------------------------


@dataclass(slots=True)
class PeerState:
    name: str
    index: int
    max_prefixes: int
    count: int = 0  # stored (accepted) paths
    filtered: int = 0  # paths rejected by policy since the session came up
    stale_alias: int | None = None  # index of the alias holding its stale paths


@dataclass(slots=True)
class RibStats:
    updates: int = 0
    announced: int = 0
    withdrawn: int = 0
    filtered: int = 0
    treat_as_withdraw: int = 0


@dataclass(frozen=True, slots=True)
class Selected:
    next_hops: tuple[IPAddress, ...]
    local_pref: int
    best_peer: str
    paths: int


#: Per prefix key whose selection changed: (old, new) interned ECMP next-hop set indexes,
#: None for no route. The old one is what the kernel has, for the learned-route reconciler
#: that keeps only differences (:mod:`l3hostd.netlink.learned`).
SelectionDelta = dict[int, tuple[int | None, int | None]]


@dataclass(slots=True)
class AdjRibIn:
    policy: ImportPolicy = field(default_factory=ImportPolicy)
    paths: dict[int, int | tuple[int, ...]] = field(default_factory=dict)
    next_hops: Interner[IPAddress] = field(default_factory=Interner)
    attributes: Interner[PathAttributes] = field(default_factory=Interner)
    ecmp_sets: Interner[tuple[int, ...]] = field(default_factory=Interner)
    _single: dict[int, int] = field(default_factory=dict)  # next hop idx -> its ECMP set
    _shared: dict[int, int] = field(default_factory=dict)  # packed path -> one int object
    peers: dict[str, PeerState] = field(default_factory=dict)
    _by_index: dict[int, PeerState] = field(default_factory=dict)
    _next_index: int = 0
    stats: RibStats = field(default_factory=RibStats)
    _last_via: tuple[IPAddress, PathAttributes, ImportPolicy, str, int] | None = None

    # ---- peers -------------------------------------------------------------------------

    def add_peer(self, name: str, max_prefixes: int = 500_000) -> PeerState:
        peer = self.peers.get(name)
        if peer is None:
            peer = PeerState(name, self._alloc_index(), max_prefixes)
            self.peers[name] = peer
            self._by_index[peer.index] = peer
        peer.max_prefixes = max_prefixes
        return peer

    def _alloc_index(self) -> int:
        used = set(self._by_index)
        while self._next_index in used:
            self._next_index = (self._next_index + 1) % MAX_PEERS
        idx = self._next_index
        self._next_index = (idx + 1) % MAX_PEERS
        return idx

    def peer_name(self, index: int) -> str:
        peer = self._by_index.get(index)
        return peer.name if peer is not None else f"#{index}"

    # ---- input ---------------------------------------------------------------------------

    def apply_update(self, peer_name: str, update: Update) -> SelectionDelta:
        """Store an UPDATE's paths; return the prefixes whose selection changed. Raises
        :class:`MaxPrefixExceeded` (after storing) when the peer went over its limit."""
        peer = self.peers[peer_name]
        self.stats.updates += 1
        if update.treat_as_withdraw:
            self.stats.treat_as_withdraw += 1
        touched: dict[int, int | None] = {}  # key -> its selection before this UPDATE
        paths = self.paths
        select = self._select
        for prefix, pid in update.withdrawn:
            key = prefix_key(prefix)
            have = paths.get(key)
            if have is not None and key not in touched:
                touched[key] = select(have)
            if self._remove(key, (peer.index << _PID_BITS) | pid):
                peer.count -= 1
            self.stats.withdrawn += 1
        policy = self.policy
        prefix_checks = policy.accept or policy.reject
        peer_bits = peer.index << _PID_BITS
        # Paths are shared int objects: the routes a hypervisor originates carry the same
        # path id, next hop and attributes, so 100k prefixes hold a handful of path
        # objects instead of 100k 40-byte ints. Bounded, for a peer that numbers every
        # path differently.
        shared = self._shared
        if len(shared) > _SHARED_MAX:
            shared.clear()
        # The routes of an UPDATE share their next hop and attribute objects (the codec
        # makes them so): resolve (verdict, packed via) once per distinct pair, by identity.
        last_nh: object = None
        last_attrs: object = None
        verdict = ""
        via_bits = 0
        announced = len(update.announced)
        store = self._store
        for route in update.announced:
            if route.next_hop is not last_nh or route.attributes is not last_attrs:
                last_nh, last_attrs = route.next_hop, route.attributes
                verdict, via_bits = self._via(route.next_hop, route.attributes)
            store(peer, prefix_key(route.prefix), peer_bits | route.path_id, via_bits, verdict,
                  touched, shared, prefix_checks)
        packed = update.packed
        fresh: Sequence[int] = ()  # prefixes new to the RIB, all with the same one path
        fresh_selection = 0
        if packed is not None:
            announced += len(packed.keys)
            verdict, via_bits = self._via(packed.next_hop, packed.attributes)
            pids = packed.path_ids
            keys: Sequence[int] = packed.keys
            # one path id for all (none, or ADD-PATH from a reflector that numbers the only
            # path of each prefix alike)
            pid0 = 0 if not pids else pids[0]
            uniform = pids is None or pids.count(pid0) == len(pids)
            if uniform and not verdict and not prefix_checks and not touched:
                # A bulk load: prefixes nobody announced yet, one accepted path for all,
                # nothing the policy looks at per prefix -- stored in C, and each one's
                # selection is that path's. The others (known prefixes, default routes)
                # go the way of every path.
                others = [k for k in keys if k in paths or not k & 0x1FE]
                if others:
                    known = set(others)
                    fresh = [k for k in keys if k not in known]
                else:
                    fresh = keys
                if fresh:
                    path = ((peer_bits | pid0) << _PID_SHIFT) | via_bits
                    path = shared.setdefault(path, path)
                    n = len(paths)
                    paths.update(dict.fromkeys(fresh, path))
                    if len(paths) - n != len(fresh):  # a prefix twice in the UPDATE
                        fresh = list(dict.fromkeys(fresh))
                    peer.count += len(fresh)
                    fresh_selection = select(path)
                keys = others
                if pids is not None:
                    pids = (pid0,) * len(keys)
            if pids is None:
                for key in keys:
                    store(peer, key, peer_bits, via_bits, verdict, touched, shared,
                          prefix_checks)
            else:
                for key, pid in zip(keys, pids, strict=True):
                    store(peer, key, peer_bits | pid, via_bits, verdict, touched, shared,
                          prefix_checks)
        self.stats.announced += announced
        delta = self._reselect(touched)
        if fresh:
            delta.update(dict.fromkeys(fresh, (None, fresh_selection)))
        if peer.count > peer.max_prefixes:
            raise MaxPrefixExceeded(peer.name, peer.max_prefixes)
        return delta

    def _via(self, next_hop: IPAddress, attributes: PathAttributes) -> tuple[str, int]:
        """The policy verdict on a next hop + attribute set, and their packed indexes.
        The codec hands out the very same objects for UPDATEs that repeat an attribute
        block: the last answer is kept for them (no hashing of the attribute set)."""
        last = self._last_via
        if (last is not None and last[0] is next_hop and last[1] is attributes
                and last[2] is self.policy):
            return last[3], last[4]
        verdict = self.policy.admits_path(next_hop, attributes)
        bits = (self.next_hops.add(next_hop) << _NH_SHIFT) | self.attributes.add(attributes)
        self._last_via = (next_hop, attributes, self.policy, verdict, bits)
        return verdict, bits

    def _store(
        self,
        peer: PeerState,
        key: int,
        ident: int,
        via_bits: int,
        refused: str,
        touched: dict[int, int | None],
        shared: dict[int, int],
        prefix_checks: object,
    ) -> None:
        """One announced path: filtered, or stored (new, replacing, or the same again)."""
        if not refused and (prefix_checks or not (key >> 1) & 0xFF):
            refused = self.policy.admits_prefix(key_prefix(key))
        paths = self.paths
        have = paths.get(key)
        if key not in touched:
            touched[key] = None if have is None else self._select(have)
        if refused:
            peer.filtered += 1
            self.stats.filtered += 1
            if self._remove(key, ident):  # an implicit withdraw of the earlier path
                peer.count -= 1
            return
        path = (ident << _PID_SHIFT) | via_bits
        path = shared.setdefault(path, path)
        if have is None:  # the common case of a bulk load: a new prefix
            paths[key] = path
            peer.count += 1
        elif self._put(key, ident, path):
            peer.count += 1

    def _put(self, key: int, ident: int, path: int) -> bool | None:
        """True: new path; False: replaced one; None: the same path was already there."""
        have = self.paths.get(key)
        if have is None:
            self.paths[key] = path
            return True
        if isinstance(have, int):
            if have >> _PID_SHIFT == ident:
                if have == path:
                    return None
                self.paths[key] = path
                return False
            self.paths[key] = (have, path)
            return True
        for i, p in enumerate(have):
            if p >> _PID_SHIFT == ident:
                if p == path:
                    return None
                self.paths[key] = (*have[:i], path, *have[i + 1 :])
                return False
        self.paths[key] = (*have, path)
        return True

    def _remove(self, key: int, ident: int) -> bool:
        have = self.paths.get(key)
        if have is None:
            return False
        if isinstance(have, int):
            if have >> _PID_SHIFT == ident:
                del self.paths[key]
                return True
            return False
        rest = tuple(p for p in have if p >> _PID_SHIFT != ident)
        if len(rest) == len(have):
            return False
        self.paths[key] = rest[0] if len(rest) == 1 else rest
        return True

    def remove_peer_paths(self, index: int) -> SelectionDelta:
        """Drop every path of a peer (or of a stale alias). O(prefixes)."""
        touched: dict[int, int | None] = {}
        select = self._select
        for key, have in list(self.paths.items()):
            if isinstance(have, int):
                if have >> _PEER_SHIFT == index:
                    touched[key] = select(have)
                    del self.paths[key]
            elif any(p >> _PEER_SHIFT == index for p in have):
                touched[key] = select(have)
                rest = tuple(p for p in have if p >> _PEER_SHIFT != index)
                if not rest:
                    del self.paths[key]
                else:
                    self.paths[key] = rest[0] if len(rest) == 1 else rest
        return self._reselect(touched)

    def peer_down(self, peer_name: str) -> SelectionDelta:
        """The session ended without graceful restart: its paths go now."""
        peer = self.peers[peer_name]
        peer.count = 0
        peer.filtered = 0
        return self.remove_peer_paths(peer.index)

    def mark_stale(self, peer_name: str) -> None:
        """The session ended and the peer restarts gracefully: keep its paths, as stale.

        The paths move to an alias index, so the re-established session's fresh paths
        sit beside them; an older stale generation (a second drop before End-of-RIB) is
        merged into the same alias."""
        peer = self.peers[peer_name]
        if peer.stale_alias is None:
            alias = PeerState(f"{peer.name} (stale)", self._alloc_index(), 0)
            self._by_index[alias.index] = alias
            peer.stale_alias = alias.index
        alias_index = peer.stale_alias
        shift = _PEER_SHIFT
        for key, have in self.paths.items():
            if isinstance(have, int):
                if have >> shift == peer.index:
                    self.paths[key] = (have & ((1 << shift) - 1)) | (alias_index << shift)
            elif any(p >> shift == peer.index for p in have):
                self.paths[key] = tuple(
                    (p & ((1 << shift) - 1)) | (alias_index << shift)
                    if p >> shift == peer.index else p
                    for p in have
                )
        peer.count = 0
        peer.filtered = 0

    def sweep_stale(self, peer_name: str) -> SelectionDelta:
        """End-of-RIB received or restart time over: the stale paths go."""
        peer = self.peers[peer_name]
        if peer.stale_alias is None:
            return {}
        alias = peer.stale_alias
        peer.stale_alias = None
        delta = self.remove_peer_paths(alias)
        del self._by_index[alias]
        return delta

    def has_stale(self, peer_name: str) -> bool:
        return self.peers[peer_name].stale_alias is not None

    # ---- selection -----------------------------------------------------------------------

    def _rank(self, path: int) -> tuple[int, int, int, int]:
        a = self.attributes.values[path & _ATTR_MASK]
        lp = 100 if a.local_pref is None else a.local_pref
        return (lp, -len(a.as_path), -a.origin, -(a.med or 0))

    def _select(self, have: int | tuple[int, ...]) -> int:
        """The interned ECMP next-hop set of a prefix's stored paths."""
        if isinstance(have, int):
            nh = have >> _NH_SHIFT & _NH_MASK
            found = self._single.get(nh)
            if found is None:
                found = self._single[nh] = self.ecmp_sets.add((nh,))
            return found
        ranks = [self._rank(p) for p in have]
        top = max(ranks)
        hops = sorted({p >> _NH_SHIFT & _NH_MASK for p, r in zip(have, ranks, strict=True)
                       if r == top})
        return self.ecmp_sets.add(tuple(hops))

    def _reselect(self, before: dict[int, int | None]) -> SelectionDelta:
        """The keys whose selection differs from ``before`` (key -> old selection)."""
        delta: SelectionDelta = {}
        paths = self.paths
        select = self._select
        for key, old in before.items():
            have = paths.get(key)
            new = None if have is None else select(have)
            if new != old:
                delta[key] = (old, new)
        return delta

    def selection(self, key: int) -> int | None:
        """The interned ECMP next-hop set selected for a prefix key (None: no path).

        Computed from the stored paths (not kept beside them: at 100k prefixes a second
        dict would cost ~5 MiB); for the common one-path prefix it is one dict lookup."""
        have = self.paths.get(key)
        return None if have is None else self._select(have)

    # ---- views ---------------------------------------------------------------------------

    def ecmp_next_hops(self, set_index: int) -> tuple[IPAddress, ...]:
        return tuple(self.next_hops.values[i] for i in self.ecmp_sets.values[set_index])

    def lookup(self, prefix: IPNetwork) -> tuple[Selected | None, list[dict[str, object]]]:
        """The selection and every stored path of one prefix (for l3hostctl)."""
        key = prefix_key(prefix)
        have = self.paths.get(key)
        if have is None:
            return None, []
        paths = (have,) if isinstance(have, int) else have
        rows = []
        for p in paths:
            a = self.attributes.values[path_attrs(p)]
            rows.append({
                "peer": self.peer_name(path_peer(p)),
                "path_id": path_id(p),
                "next_hop": str(self.next_hops.values[path_nh(p)]),
                "local_pref": a.local_pref,
                "as_path": list(a.as_path),
                "communities": [f"{c >> 16}:{c & 0xFFFF}" for c in a.communities],
                "originator_id": str(a.originator_id) if a.originator_id else None,
            })
        ranks = [self._rank(p) for p in paths]
        best = max(range(len(paths)), key=lambda i: (ranks[i], -path_peer(paths[i])))
        sel = Selected(self.ecmp_next_hops(self._select(have)), ranks[best][0],
                       self.peer_name(path_peer(paths[best])), len(paths))
        return sel, rows

    def iter_selected(self) -> Iterator[tuple[int, int]]:
        """(prefix key, ECMP set) of every prefix with a path."""
        select = self._select
        for key, have in self.paths.items():
            yield key, select(have)

    @property
    def selected(self) -> dict[int, int]:
        """A snapshot of every selection (O(prefixes): for tests and tools)."""
        return dict(self.iter_selected())

    def prefix_count(self) -> int:
        return len(self.paths)


# ---- import policy change (reload) ---------------------------------------------------------


def refilter(rib: AdjRibIn, policy: ImportPolicy) -> SelectionDelta:
    """Put ``policy`` in force and drop the stored paths it refuses (a reload narrowed the
    import filter); return the prefixes whose selection changed.

    Only accepted paths are stored, so this can only take paths away: paths the new policy
    admits but the old one refused must be asked for again (ROUTE-REFRESH, RFC 2918; see
    :func:`l3hostd.reload.policy_widens`). One pass over the RIB; the prefix checks run
    only if the prefix part of the policy changed, the path checks (once per distinct next
    hop and attribute set) only if the path part did."""
    old, rib.policy = rib.policy, policy
    check_prefix = (old.accept, old.reject, old.allow_default) != (
        policy.accept, policy.reject, policy.allow_default)
    check_path = (old.router_id, old.own_addresses) != (policy.router_id, policy.own_addresses)
    if not check_prefix and not check_path:
        return {}
    via_mask = (1 << _PID_SHIFT) - 1
    path_verdicts: dict[int, str] = {}
    before: dict[int, int | None] = {}
    for key, have in list(rib.paths.items()):
        if check_prefix and policy.admits_prefix(key_prefix(key)):
            refused: tuple[int, ...] = (have,) if isinstance(have, int) else have
        elif check_path:
            refused = ()
            for p in (have,) if isinstance(have, int) else have:
                via = p & via_mask
                verdict = path_verdicts.get(via)
                if verdict is None:
                    verdict = path_verdicts[via] = policy.admits_path(
                        rib.next_hops[path_nh(p)], rib.attributes[path_attrs(p)])
                if verdict:
                    refused += (p,)
        else:
            continue
        if not refused:
            continue
        before[key] = rib.selection(key)
        for p in refused:
            rib._remove(key, path_ident(p))
            state = rib._by_index.get(path_peer(p))
            if state is not None and rib.peers.get(state.name) is state:  # not a stale alias
                state.count -= 1
                state.filtered += 1
                rib.stats.filtered += 1
    return rib._reselect(before)
