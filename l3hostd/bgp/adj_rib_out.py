"""Adj-RIB-Out of one peer: what it has from us, and what is still to be sent.

Pure (no IO). The export table (``prefix key -> Export``) is shared by all peers; each
peer's :class:`AdjRibOut` turns an export into the :class:`Announcement` that peer gets
(its family only, next hop self = the local address of that session, the configured
communities) and keeps ``sent`` (what the peer holds) and ``pending`` (keys whose sent
state differs from the wish). A change made and undone before it was sent costs nothing;
a burst of changes is drained in slices so that encoding never blocks the event loop
for long (see :meth:`take`).

When the session goes down ``sent`` is forgotten; when it comes up every export is
pending again (a full table, then End-of-RIB).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from l3hostd.bgp.messages import IPV4_UNICAST, IPV6_UNICAST, Announcement, Family
from l3hostd.model import IPAddress, IPNetwork

#: RFC 8326 GRACEFUL_SHUTDOWN well-known community 65535:0
GRACEFUL_SHUTDOWN = 0xFFFF0000
LOCAL_PREF_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Export:
    """A route this host originates: an endpoint host route or a kernel-learned route."""

    prefix: IPNetwork
    metric: int = 0  # the kernel route's metric: LOCAL_PREF = 2^31-1 - metric (Calico)
    source: str = "endpoint"  # "endpoint" or "kernel"

    @property
    def local_pref(self) -> int:
        return max(0, LOCAL_PREF_MAX - self.metric)


@dataclass(frozen=True, slots=True)
class ExportPolicy:
    communities: tuple[int, ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    graceful_shutdown: bool = False  # drain: add GRACEFUL_SHUTDOWN (RFC 8326)
    withdrawn: bool = False  # drain, second step: announce nothing


class AdjRibOut:
    def __init__(self, families: frozenset[Family], policy: ExportPolicy) -> None:
        self.families = families
        self.policy = policy
        self.next_hop: dict[Family, IPAddress] = {}
        self.sent: dict[int, Announcement] = {}
        self.pending: dict[int, Announcement | None] = {}
        self.active = False

    def _announcement(self, export: Export) -> Announcement | None:
        family = IPV4_UNICAST if export.prefix.version == 4 else IPV6_UNICAST
        next_hop = self.next_hop.get(family)
        if family not in self.families or next_hop is None or self.policy.withdrawn:
            return None
        communities = self.policy.communities
        if self.policy.graceful_shutdown:
            communities = (*communities, GRACEFUL_SHUTDOWN)
        return Announcement(
            export.prefix,
            next_hop,
            export.local_pref,
            communities,
            self.policy.large_communities,
        )

    def update(self, key: int, export: Export | None) -> None:
        """The export for ``key`` changed (None: no longer exported)."""
        if not self.active:
            return
        want = None if export is None else self._announcement(export)
        if self.sent.get(key) == want:
            self.pending.pop(key, None)
        else:
            self.pending[key] = want

    def session_up(
        self, next_hops: Mapping[Family, IPAddress], exports: Mapping[int, Export]
    ) -> None:
        """Established: the peer has nothing from us; everything is pending."""
        self.next_hop = dict(next_hops)
        self.sent = {}
        self.pending = {}
        self.active = True
        for key, export in exports.items():
            ann = self._announcement(export)
            if ann is not None:
                self.pending[key] = ann

    def session_down(self) -> None:
        self.active = False
        self.sent = {}
        self.pending = {}

    def repolicy(self, policy: ExportPolicy, exports: Mapping[int, Export]) -> None:
        """New communities / drain: re-announce what changed."""
        self.policy = policy
        for key, export in exports.items():
            self.update(key, export)

    def take(self, limit: int) -> tuple[list[Announcement], list[IPNetwork]]:
        """Pop up to ``limit`` pending changes: (announce, withdraw). They count as sent."""
        announce: list[Announcement] = []
        withdraw: list[IPNetwork] = []
        for key in list(self._first(limit)):
            want = self.pending.pop(key)
            if want is None:
                old = self.sent.pop(key, None)
                if old is not None:
                    withdraw.append(old.prefix)
            else:
                self.sent[key] = want
                announce.append(want)
        return announce, withdraw

    def _first(self, limit: int) -> Iterable[int]:
        for i, key in enumerate(self.pending):
            if i >= limit:
                return
            yield key
