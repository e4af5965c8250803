"""Desired-state calculation: endpoints + links -> the kernel objects that should exist.

Pure (no IO, no asyncio). The rule for one endpoint is :func:`plan_endpoint`: an endpoint
is ACTIVE when its file is valid, no other endpoint claims its interface or one of its IPs,
and its TAP exists and is up; an ACTIVE endpoint wants

* a host route ``<ip>/32|/128 dev <tap> scope link proto l3hostd`` per IP,
* a permanent neighbour entry ``<ip> lladdr <mac>`` per IP on the TAP,
* the TAP's own configuration (proxy-ARP sysctls, IPv6 gateway address).

The neighbour entries and the TAP's configuration are wanted as soon as the TAP exists,
up or not (an endpoint whose TAP is down wants them too): they are then in place before
the TAP comes up, and only the routes are written between the TAP coming up and its
announcement. The kernel keeps a permanent neighbour entry added to a device that is
down, and flushes it when the device goes down (the dataplane then writes it again). The
host route cannot wait: the kernel refuses a route via a device that is down.

Routes are installed for the endpoint's ``ips`` only; ``allowed_address_pairs`` widen what
the firewall lets the VM send, they are not routed to it (as with Neutron's port security).

:class:`DesiredState` applies that rule incrementally: an endpoint or link change re-plans
only the endpoints it can affect (the endpoint itself, the endpoints claiming the same
interface or IPs) and returns the changed keys, so a small change costs O(1) whatever the
number of endpoints. :func:`calculate` is the same rule over the whole input at once (used
by tests to check the incremental path and for reasoning about the full state).

Conflicts are resolved deterministically: of several endpoints claiming one IP or one
interface, the one with the smallest id wins, the others are in state CONFLICT.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from l3hostd.model import (
    RT_SCOPE_LINK,
    RT_TABLE_MAIN,
    Endpoint,
    EndpointState,
    HostRoute,
    IPAddress,
    Link,
    Neighbour,
    NeighbourKey,
    RouteKey,
    TapConfig,
)


@dataclass(frozen=True, slots=True)
class DataplaneSettings:
    interface_patterns: tuple[str, ...] = ("tap*",)
    table: int = RT_TABLE_MAIN
    ipv6_gateway: bool = True
    route_localnet: bool = False


def matches(ifname: str, patterns: tuple[str, ...]) -> bool:
    """Whether ``ifname`` matches one of the shell-style ``patterns`` (case-sensitive).

    Patterns that are all a prefix and a ``*`` (the usual ``tap*``) are matched with
    ``str.startswith``: this runs for every link event, and fnmatch's compiled-regex path
    cost ~50 us there on a CPU back from idle."""
    try:
        prefixes = _PREFIXES[patterns]
    except KeyError:
        if len(_PREFIXES) >= 64:  # new pattern sets come only from config reloads
            _PREFIXES.clear()
        prefixes = _PREFIXES[patterns] = _as_prefixes(patterns)
    if prefixes is not None:
        return ifname.startswith(prefixes)
    return any(fnmatch.fnmatchcase(ifname, p) for p in patterns)


#: patterns -> their prefixes (see :func:`matches`), or None: fnmatch them
_PREFIXES: dict[tuple[str, ...], tuple[str, ...] | None] = {}


def _as_prefixes(patterns: tuple[str, ...]) -> tuple[str, ...] | None:
    """``("tap*", "vhu*")`` -> ``("tap", "vhu")``; None unless every pattern is a plain
    prefix followed by one ``*``."""
    out = []
    for pattern in patterns:
        head = pattern[:-1]
        if not pattern.endswith("*") or any(c in "*?[" for c in head):
            return None
        out.append(head)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class EndpointPlan:
    state: EndpointState
    reason: str = ""
    routes: tuple[HostRoute, ...] = ()
    neighbours: tuple[Neighbour, ...] = ()
    tap: TapConfig | None = None
    ifindex: int | None = None


def plan_endpoint(
    ep: Endpoint, link: Link | None, settings: DataplaneSettings, conflict: str = ""
) -> EndpointPlan:
    """The rule for one endpoint (see the module docstring)."""
    if conflict:
        return EndpointPlan(EndpointState.CONFLICT, conflict)
    if link is None:
        return EndpointPlan(EndpointState.NO_INTERFACE, f"no interface {ep.interface}")
    tap = TapConfig(link.ifindex, link.ifname, settings.ipv6_gateway, settings.route_localnet)
    neighbours = tuple(Neighbour(link.ifindex, ip, ep.mac) for ip in ep.ips)
    if not link.up:
        # The TAP's own configuration and neighbour entries do not wait for it to come
        # up: written while it is down, the sysctl writes (~0.3 ms) and the neighbour
        # batch (~0.05 ms) are off the path from link up to announcement.
        why = "admin-down" if not link.admin_up else "no carrier"
        return EndpointPlan(
            EndpointState.INTERFACE_DOWN, f"{ep.interface} is {why}", neighbours=neighbours,
            tap=tap, ifindex=link.ifindex,
        )
    routes = tuple(
        HostRoute(
            dst=prefix,
            ifindex=link.ifindex,
            table=settings.table,
            scope=RT_SCOPE_LINK if prefix.version == 4 else 0,
        )
        for prefix in ep.host_prefixes
    )
    return EndpointPlan(EndpointState.ACTIVE, "", routes, neighbours, tap, link.ifindex)


@dataclass(slots=True)
class PlanDelta:
    """Keys whose desired value changed; ``None`` means "no longer desired"."""

    routes: dict[RouteKey, HostRoute | None] = field(default_factory=dict)
    neighbours: dict[NeighbourKey, Neighbour | None] = field(default_factory=dict)
    taps: dict[int, TapConfig | None] = field(default_factory=dict)
    states: dict[str, EndpointState | None] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.routes or self.neighbours or self.taps or self.states)


class DesiredState:
    """Incremental form of the rule; every mutator returns the resulting :class:`PlanDelta`."""

    def __init__(self, settings: DataplaneSettings) -> None:
        self.settings = settings
        self.endpoints: dict[str, Endpoint] = {}
        self.links: dict[int, Link] = {}  # only links matching the interface patterns
        self._by_name: dict[str, int] = {}
        self.plans: dict[str, EndpointPlan] = {}
        self._ip_claims: dict[IPAddress, set[str]] = {}
        self._if_claims: dict[str, set[str]] = {}

    # ---- inputs --------------------------------------------------------------------------

    def upsert_endpoint(self, ep: Endpoint) -> PlanDelta:
        affected = {ep.id}
        old = self.endpoints.get(ep.id)
        if old is not None:
            affected |= self._unclaim(old)
        self.endpoints[ep.id] = ep
        affected |= self._claim(ep)
        return self._replan(affected)

    def remove_endpoint(self, endpoint_id: str) -> PlanDelta:
        old = self.endpoints.pop(endpoint_id, None)
        if old is None:
            return PlanDelta()
        affected = self._unclaim(old) | {endpoint_id}
        return self._replan(affected)

    def upsert_link(self, link: Link) -> PlanDelta:
        if not matches(link.ifname, self.settings.interface_patterns):
            return self.remove_link(link.ifindex)
        old = self.links.get(link.ifindex)
        if old == link:
            return PlanDelta()
        names = {link.ifname}
        if old is not None:
            names.add(old.ifname)
            if self._by_name.get(old.ifname) == old.ifindex:
                del self._by_name[old.ifname]
        self.links[link.ifindex] = link
        self._by_name[link.ifname] = link.ifindex
        return self._replan(self._claimants_of_names(names))

    def remove_link(self, ifindex: int) -> PlanDelta:
        old = self.links.pop(ifindex, None)
        if old is None:
            return PlanDelta()
        if self._by_name.get(old.ifname) == ifindex:
            del self._by_name[old.ifname]
        return self._replan(self._claimants_of_names({old.ifname}))

    def replace_links(self, links: Iterable[Link]) -> PlanDelta:
        """A full link dump (start, overflow, periodic resync): diff against what we hold."""
        delta = PlanDelta()
        fresh = {link.ifindex: link for link in links}
        for ifindex in list(self.links):
            if ifindex not in fresh:
                _merge(delta, self.remove_link(ifindex))
        for link in fresh.values():
            _merge(delta, self.upsert_link(link))
        return delta

    def link_for(self, ifname: str) -> Link | None:
        ifindex = self._by_name.get(ifname)
        return None if ifindex is None else self.links.get(ifindex)

    # ---- views ---------------------------------------------------------------------------

    def desired_routes(self) -> dict[RouteKey, HostRoute]:
        return {r.key: r for p in self.plans.values() for r in p.routes}

    def desired_neighbours(self) -> dict[NeighbourKey, Neighbour]:
        return {n.key: n for p in self.plans.values() for n in p.neighbours}

    def desired_taps(self) -> dict[int, TapConfig]:
        return {p.tap.ifindex: p.tap for p in self.plans.values() if p.tap is not None}

    def states(self) -> dict[str, EndpointState]:
        return {eid: p.state for eid, p in self.plans.items()}

    # ---- internals -----------------------------------------------------------------------

    def _claim(self, ep: Endpoint) -> set[str]:
        affected: set[str] = set()
        for ip in ep.ips:
            claim = self._ip_claims.setdefault(ip, set())
            claim.add(ep.id)
            affected |= claim
        claim = self._if_claims.setdefault(ep.interface, set())
        claim.add(ep.id)
        affected |= claim
        return affected

    def _unclaim(self, ep: Endpoint) -> set[str]:
        affected: set[str] = set()
        for ip in ep.ips:
            claim = self._ip_claims.get(ip)
            if claim is not None:
                claim.discard(ep.id)
                affected |= claim
                if not claim:
                    del self._ip_claims[ip]
        claim = self._if_claims.get(ep.interface)
        if claim is not None:
            claim.discard(ep.id)
            affected |= claim
            if not claim:
                del self._if_claims[ep.interface]
        return affected

    def _claimants_of_names(self, names: Iterable[str]) -> set[str]:
        out: set[str] = set()
        for name in names:
            out |= self._if_claims.get(name, set())
        return out

    def _conflict(self, ep: Endpoint) -> str:
        owner = min(self._if_claims.get(ep.interface, {ep.id}))
        if owner != ep.id:
            return f"interface {ep.interface} is claimed by endpoint {owner}"
        for ip in ep.ips:
            owner = min(self._ip_claims.get(ip, {ep.id}))
            if owner != ep.id:
                return f"IP {ip} is claimed by endpoint {owner}"
        return ""

    def _replan(self, ids: Iterable[str]) -> PlanDelta:
        delta = PlanDelta()
        new_plans: dict[str, EndpointPlan | None] = {}
        for eid in ids:
            ep = self.endpoints.get(eid)
            if ep is None:
                new_plans[eid] = None
            else:
                link = self.link_for(ep.interface)
                new_plans[eid] = plan_endpoint(ep, link, self.settings, self._conflict(ep))
        # Removals first, then additions: a key moving between two re-planned endpoints
        # ends with its new value.
        for eid, new in new_plans.items():
            old = self.plans.get(eid)
            if old is None or old == new:
                continue
            for r in old.routes:
                delta.routes[r.key] = None
            for n in old.neighbours:
                delta.neighbours[n.key] = None
            if old.tap is not None:
                delta.taps[old.tap.ifindex] = None
        for eid, new in new_plans.items():
            old = self.plans.get(eid)
            if old == new:
                continue
            if new is None:
                del self.plans[eid]
                delta.states[eid] = None
                continue
            self.plans[eid] = new
            delta.states[eid] = new.state
            for r in new.routes:
                delta.routes[r.key] = r
            for n in new.neighbours:
                delta.neighbours[n.key] = n
            if new.tap is not None:
                delta.taps[new.tap.ifindex] = new.tap
        return delta


def _merge(into: PlanDelta, other: PlanDelta) -> None:
    into.routes.update(other.routes)
    into.neighbours.update(other.neighbours)
    into.taps.update(other.taps)
    into.states.update(other.states)


@dataclass(frozen=True, slots=True)
class Desired:
    routes: Mapping[RouteKey, HostRoute]
    neighbours: Mapping[NeighbourKey, Neighbour]
    taps: Mapping[int, TapConfig]
    states: Mapping[str, EndpointState]


def calculate(
    endpoints: Iterable[Endpoint], links: Iterable[Link], settings: DataplaneSettings
) -> Desired:
    """The whole desired state from the whole input (the reference for the incremental path)."""
    state = DesiredState(settings)
    state.replace_links(links)
    for ep in endpoints:
        state.upsert_endpoint(ep)
    return Desired(
        state.desired_routes(), state.desired_neighbours(), state.desired_taps(), state.states()
    )
