"""The local dataplane: inputs -> desired state -> reconcilers, and the apply loop.

Inputs arrive as method calls from the event loop (endpoint source, link monitor); each
one updates :class:`~l3hostd.calc.DesiredState` (pure, O(affected endpoints)) and copies
the changed keys into the reconcilers with ``set_desired`` (no IO), then wakes the apply
loop. The loop runs one *pass* at once when woken; whatever arrives while a pass is
writing is picked up by the next pass, so bursts coalesce by themselves and an isolated
change is applied without any timer delay.

A pass: resync the reconcilers that asked for it; additions in the order routes,
neighbours, TAP config (proxy-ARP sysctls, IPv6 gateway) -- DESIGN.md's "route, neighbour
and proxy-ARP"; removals in the reverse order. The firewall reconciler goes first in that
order, and the BGP announcement follows the whole pass: listeners are told which routes
are *observed installed* (and still wanted) after each pass, never before the kernel
confirmed them. Removal is addition in reverse, so the withdrawal comes first: a route
that the kernel flushed with its device is withdrawn from the link event itself, and a
route that is no longer wanted at the start of the pass, before it is deleted (the
fabric stops sending before the host stops delivering).

Nothing is written before :meth:`Dataplane.set_ready` (the endpoint directory has been
read and the links dumped) and every reconciler starts with a resync pending, so the first
pass adopts what a previous run left in the kernel: right objects are kept untouched,
wrong ones fixed, stale ones of ours swept.

Devices that go admin-down or away lose their routes, neighbour entries and IPv6 addresses
in the kernel without any route/neighbour event; the reconcilers are told to forget them
so they are re-created when the device is up again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from l3hostd import eager, memory
from l3hostd.calc import DataplaneSettings, DesiredState, PlanDelta
from l3hostd.model import (
    Endpoint,
    EndpointState,
    HostRoute,
    IPAddress,
    IPNetwork,
    Link,
    RouteKey,
    SecurityGroup,
)
from l3hostd.netlink.kernel import Kernel

if TYPE_CHECKING:
    from l3hostd.firewall.reconciler import FirewallReconciler
from l3hostd.netlink.neighbors import NeighbourReconciler
from l3hostd.netlink.routes import RouteReconciler
from l3hostd.netlink.tapconfig import TapConfigReconciler
from l3hostd.reconcile import Phase, Reconciler

log = logging.getLogger("l3hostd.dataplane")

#: Objects written or read back (resync) after which an idle dataplane returns free heap
#: memory to the kernel (:func:`l3hostd.memory.trim`): a bulk load, a big resync.
TRIM_AFTER_WORK = 10_000

#: Called after each pass with the installed host routes that appeared and disappeared.
RouteListener = Callable[[Mapping[RouteKey, HostRoute], Iterable[RouteKey]], None]


@dataclass(slots=True)
class PassStats:
    passes: int = 0
    last_pass_seconds: float = 0.0
    total_pass_seconds: float = 0.0


class Dataplane:
    def __init__(
        self,
        kernel: Kernel,
        settings: DataplaneSettings,
        clock: Callable[[], float] = time.monotonic,
        firewall: FirewallReconciler | None = None,
    ) -> None:
        self.state = DesiredState(settings)
        self.tapconfig = TapConfigReconciler(kernel, lambda: list(self.tapconfig.desired.values()))
        self.neighbours = NeighbourReconciler(kernel, lambda: set(self.state.links))
        self.routes = RouteReconciler(kernel)
        self.routes.track_changes = True  # installed host routes are what BGP announces
        # Addition order (removal is the reverse). The host route goes first: it is what makes
        # the VM reachable, so it is on the shortest path from a TAP event; the firewall
        # (a later issue) will go before it, the BGP announcement after the whole pass.
        self.reconcilers: tuple[Reconciler, ...] = (self.routes, self.neighbours, self.tapconfig)  # type: ignore[type-arg]
        # The firewall goes first: an endpoint's routes are desired only once its chains
        # are observed in the kernel ("released"), and they are removed before its chains.
        self.firewall = firewall
        self._released: set[str] = set()  # endpoints whose firewall was ready once
        self._waiting: set[str] = set()  # active endpoints whose routes wait for it
        if firewall is not None:
            self.reconcilers = (firewall, *self.reconcilers)
        self._clock = clock
        #: called with a link that went admin-down or away (learned routes via it are gone)
        self.link_down_listeners: list[Callable[[int], None]] = []
        self._other_up: dict[int, bool] = {}  # admin state of every link, by ifindex
        self._wake = asyncio.Event()
        self._idle = False  # run() waits for work (a kick may start a pass itself)
        self._kicked: asyncio.Future[None] | None = None  # a pass kick() started
        self._ready = False
        self.synced = asyncio.Event()  # set after the first complete pass
        self.stats = PassStats()
        self.route_listeners: list[RouteListener] = []
        self._told: set[RouteKey] = set()  # the route listeners' announced keys
        self._work_since_trim = 0  # objects written or read back since the last trim
        #: called after every pass (the BGP manager times UPDATE-to-installed with it)
        self.pass_listeners: list[Callable[[], None]] = []
        # Latency stamps (time.monotonic) for the metrics, one per pass, never per route:
        # the first input since the last pass that changed a desired route, and that of the
        # running pass (what the route listeners' changes were caused by, at the earliest).
        self.input_at: float | None = None
        self.pass_input_at: float | None = None
        #: the input the route listeners' current call answers (read during the call)
        self.routes_event_at: float | None = None

    # ---- inputs (cheap, no IO) --------------------------------------------------------------

    def on_endpoints(self, upserted: Mapping[str, Endpoint], removed: Iterable[str]) -> None:
        for eid in removed:
            self._absorb(self.state.remove_endpoint(eid), {eid})
        for ep in upserted.values():
            # (the firewall sees every change: one of security groups or allowed address
            # pairs leaves the routing plan as it was)
            self._absorb(self.state.upsert_endpoint(ep), {ep.id})

    def on_link(self, link: Link) -> None:
        log.debug("link %d %s up=%s carrier=%s", link.ifindex, link.ifname, link.admin_up,
                  link.lower_up)
        old = self.state.links.get(link.ifindex)
        if old is not None and old.admin_up and not link.admin_up:
            self._forget(link.ifindex)
        was_up = self._other_up.get(link.ifindex)
        self._other_up[link.ifindex] = link.admin_up
        if was_up and not link.admin_up:
            self._link_down(link.ifindex)  # e.g. the uplink: gateway routes via it are gone
        self._absorb(self.state.upsert_link(link))

    def on_link_removed(self, ifindex: int) -> None:
        self._forget(ifindex)
        if self._other_up.pop(ifindex, None):
            self._link_down(ifindex)
        self._absorb(self.state.remove_link(ifindex))

    def add_reconciler(self, reconciler: Reconciler) -> None:  # type: ignore[type-arg]
        """Append a reconciler to the pass (after the local ones; removed before them)."""
        self.reconcilers = (*self.reconcilers, reconciler)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def kick(self) -> None:
        """After a callback's input (an UPDATE, a batch of link events): :meth:`wake`, and
        if the dataplane is idle, start the pass right here, up to its first kernel write
        (:mod:`l3hostd.eager`), instead of at the dataplane task's next turn. The inputs
        of the whole callback are in by then, so what one read brings is still one pass.
        The pass goes on as a task; :meth:`run` waits for it before anything else."""
        self._wake.set()
        if not self._idle or not self._ready or self._kicked is not None:
            return
        self._idle = False
        self._kicked = eager.start(self._kicked_pass(), name="dataplane-pass")

    async def _kicked_pass(self) -> None:
        if self._work_now(self._clock()):
            await self.apply_once()

    def _work_now(self, now: float) -> bool:
        """Is there work a pass may do now? First the routes of endpoints whose chains
        are in place go: an endpoint may have become active after its chains were
        already there (nothing of its own left to write)."""
        if self.firewall is not None and self._waiting:
            self._release()
        return any(r.pending(now) for r in self.reconcilers)

    def _link_down(self, ifindex: int) -> None:
        for listener in self.link_down_listeners:
            listener(ifindex)

    def on_links(self, links: Iterable[Link]) -> None:
        """A full dump of the links (start, overflow, periodic resync)."""
        fresh = {link.ifindex: link for link in links}
        for ifindex, was_up in list(self._other_up.items()):
            new = fresh.get(ifindex)
            if was_up and (new is None or not new.admin_up):
                self._link_down(ifindex)
        self._other_up = {i: link.admin_up for i, link in fresh.items()}
        for ifindex, old in self.state.links.items():
            new = fresh.get(ifindex)
            if new is None or (old.admin_up and not new.admin_up):
                self._forget(ifindex)
        self._absorb(self.state.replace_links(fresh.values()))

    def set_ready(self) -> None:
        """The inputs are complete (first endpoint scan and link dump): writes may start."""
        self._ready = True
        self._wake.set()

    def request_resync(self) -> None:
        for r in self.reconcilers:
            r.queue_resync()
        self._wake.set()

    def on_groups(
        self,
        groups: Mapping[str, SecurityGroup],
        remote: Mapping[str, frozenset[IPAddress | IPNetwork]],
    ) -> None:
        """Security groups and remote group members (the directory source's)."""
        if self.firewall is None:
            return
        inputs = self.firewall.inputs
        self.firewall.refresh(inputs.set_groups(groups) | inputs.set_remote(remote))
        self._wake.set()

    def _gate(self, delta: PlanDelta, endpoints: Iterable[str] = ()) -> set[RouteKey]:
        """Feed the firewall; return the route keys to hold back until it is ready."""
        held: set[RouteKey] = set()
        firewall = self.firewall
        if firewall is None:
            return held
        keys: set[str] = set()
        for eid in set(delta.states).union(endpoints):
            plan = self.state.plans.get(eid)
            ep = self.state.endpoints.get(eid)
            if plan is None or ep is None or plan.state is EndpointState.CONFLICT:
                keys |= firewall.inputs.set_endpoint(None, eid, False)
                self._released.discard(eid)
                self._waiting.discard(eid)
                continue
            active = plan.state is EndpointState.ACTIVE
            keys |= firewall.inputs.set_endpoint(ep, eid, active)
            if not active:
                self._released.discard(eid)
                self._waiting.discard(eid)
            elif eid not in self._released:
                held |= {r.key for r in plan.routes}
                self._waiting.add(eid)
        firewall.refresh(keys)
        return held

    def _release(self) -> None:
        """After the firewall's writes: endpoints whose chains are in place get routes."""
        firewall = self.firewall
        assert firewall is not None
        for eid in [e for e in self._waiting if firewall.ready(e)]:
            self._waiting.discard(eid)
            plan = self.state.plans.get(eid)
            if plan is not None and plan.state is EndpointState.ACTIVE:
                self._released.add(eid)
                for route in plan.routes:
                    self.routes.set_desired(route.key, route)

    def _absorb(self, delta: PlanDelta, endpoints: Iterable[str] = ()) -> None:
        if not delta and not endpoints:
            return
        held = self._gate(delta, endpoints)
        if delta.routes and self.input_at is None:
            self.input_at = time.monotonic()
        for rk, route in delta.routes.items():
            self.routes.set_desired(rk, None if rk in held else route)
        for nk, neigh in delta.neighbours.items():
            self.neighbours.set_desired(nk, neigh)
        for ifindex, tap in delta.taps.items():
            self.tapconfig.set_desired(ifindex, tap)
        self._wake.set()

    def _forget(self, ifindex: int) -> None:
        # The kernel flushed the device's routes: withdrawn now, from the event itself
        # (removal goes first), not after the pass the event causes has been planned.
        self._withdraw(self.routes.forget_ifindex(ifindex), time.monotonic())
        self.neighbours.forget_ifindex(ifindex)
        self.tapconfig.forget_observed([ifindex])
        self._wake.set()

    # ---- the apply loop ------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            if self._kicked is not None:
                try:
                    await self._kicked
                finally:
                    self._kicked = None
            self._wake.clear()
            now = self._clock()
            if self._work_now(now) and self._ready:
                await self.apply_once()
                continue
            self.input_at = None  # its change needed no write: nothing to time
            if self._work_since_trim >= TRIM_AFTER_WORK:
                # idle after a bulk load or a big resync: return the transients' memory
                self._work_since_trim = 0
                memory.trim()
            self._idle = True
            try:
                await self._sleep(self._next_retry(now))
            finally:
                self._idle = False

    def _next_retry(self, now: float) -> float | None:
        deadlines = [d for r in self.reconcilers if (d := r.next_retry()) is not None]
        return max(0.0, min(deadlines) - now) if deadlines else None

    async def _sleep(self, timeout: float | None) -> None:
        """Until woken, or ``timeout`` (a retry deadline) is over. Not ``wait_for``: it runs
        the wait in a task of its own, so a wake-up took two turns of the event loop
        instead of one, on the path of every event."""
        if timeout is None:
            await self._wake.wait()
            return
        deadline = asyncio.get_running_loop().call_later(timeout, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            deadline.cancel()

    async def apply_once(self) -> int:
        """One pass (see the module docstring); returns the number of requests written."""
        started = self._clock()
        self.pass_input_at, self.input_at = self.input_at, None
        for r in self.reconcilers:
            if r.resync_pending and r.resync_due(started):
                self._work_since_trim += len(r.observed)
                try:
                    await r.resync()
                except Exception as exc:  # the kernel or nft could not be read: retry later
                    r.resync_failed(started, exc)
        self._withdraw(self.routes.peek_observed_changes(), self.pass_input_at)
        now = self._clock()
        written = 0
        # (a reconciler with nothing to look at in a phase is not called: for one event
        # that is most of them, and each call is a coroutine to create and run)
        for r in reversed(self.reconcilers):
            if r.has_dirty(Phase.REMOVE):
                written += await self._apply(r, Phase.REMOVE, now)
        for r in self.reconcilers:
            if r.has_dirty(Phase.ADD):
                written += await self._apply(r, Phase.ADD, now)
            if r is self.firewall:
                self._release()
        elapsed = self._clock() - started
        self._work_since_trim += written
        if written and log.isEnabledFor(logging.DEBUG):
            log.debug("pass: %d requests in %.2f ms", written, elapsed * 1000)
        self.stats.passes += 1
        self.stats.last_pass_seconds = elapsed
        self.stats.total_pass_seconds += elapsed
        self._notify_routes()
        for listener in self.pass_listeners:
            listener()
        if not self.synced.is_set() and all(r.in_sync for r in self.reconcilers):
            self.synced.set()
            log.info(
                "first full sync done in %.1f ms: %d routes, %d endpoints active",
                elapsed * 1000,
                len(self.routes.observed),
                self.count_states().get(EndpointState.ACTIVE, 0),
            )
        return written

    async def _apply(self, r: Reconciler, phase: Phase, now: float) -> int:  # type: ignore[type-arg]
        if not r.in_sync:
            return 0  # never written before it has read the kernel once
        try:
            return await r.apply(phase, now)
        except Exception as exc:
            # A bug or an unexpected failure in one reconciler must not stop the others
            # (nor the daemon): its keys stay dirty and it resyncs before trying again.
            log.exception("%s: apply failed; resync and retry", r.name)
            r.resync_failed(now, exc)
            return 0

    def _announced(self, key: RouteKey) -> HostRoute | None:
        """What is announced for ``key``: the installed route, while it is still wanted."""
        route = self.routes.observed.get(key)
        return route if route is not None and key in self.routes.desired else None

    def _withdraw(self, keys: Iterable[RouteKey], event_at: float | None) -> None:
        """Tell listeners (BGP) about those of ``keys`` that are no longer announced -- not
        wanted any more, or flushed by the kernel with their device: the routes a link
        event flushed, from that event; every key changed since the last pass, at the
        start of a pass, before it writes anything. ``event_at``: the input this answers."""
        if not self.route_listeners:
            return
        told = self._told
        gone = [k for k in keys if k in told and self._announced(k) is None]
        if gone:
            told.difference_update(gone)
            self._tell({}, gone, event_at)

    def _tell(
        self, added: Mapping[RouteKey, HostRoute], removed: list[RouteKey], event_at: float | None
    ) -> None:
        """Call the route listeners; ``routes_event_at`` says, during the call, which input
        it answers (the BGP manager times its announcements from it)."""
        self.routes_event_at = event_at
        for listener in self.route_listeners:
            listener(added, removed)

    def _notify_routes(self) -> None:
        """Tell listeners (BGP) which installed, wanted host routes appeared, changed or
        went away."""
        changed = self.routes.take_observed_changes()
        if not changed or not self.route_listeners:
            return
        told = self._told
        added: dict[RouteKey, HostRoute] = {}
        removed: list[RouteKey] = []
        for k in changed:
            route = self._announced(k)
            if route is not None:
                added[k] = route
                told.add(k)
            elif k in told:
                removed.append(k)
                told.discard(k)
        if added or removed:
            self._tell(added, removed, self.pass_input_at)

    # ---- views ---------------------------------------------------------------------------------

    def count_states(self) -> dict[EndpointState, int]:
        out: dict[EndpointState, int] = {}
        for plan in self.state.plans.values():
            out[plan.state] = out.get(plan.state, 0) + 1
        return out

    @property
    def firewall_pending(self) -> int:
        """Active endpoints whose routes wait for their firewall chains."""
        return len(self._waiting)

    def endpoint_rows(self) -> list[dict[str, object]]:
        rows: list[dict[str, object]] = []
        for eid, plan in sorted(self.state.plans.items()):
            ep = self.state.endpoints[eid]
            installed = [
                str(r.dst) for r in plan.routes if self.routes.observed.get(r.key) == r
            ]
            state, reason = plan.state.value, plan.reason
            if self.firewall is not None and plan.state is EndpointState.ACTIVE and (
                eid not in self._released
            ):
                state = "firewall-pending"
                reason = (
                    self.firewall.nft_error
                    or self.firewall.stats.last_error
                    or "chains not installed yet"
                )
            rows.append(
                {
                    "id": eid,
                    "interface": ep.interface,
                    "mac": ep.mac,
                    "ips": [str(ip) for ip in ep.ips],
                    "state": state,
                    "reason": reason,
                    "ifindex": plan.ifindex,
                    "routes_installed": installed,
                }
            )
        return rows
