"""The BGP side of the daemon: peers, RIB-in -> kernel, exports -> Adj-RIB-Out.

Import: each UPDATE goes into the :class:`~l3hostd.bgp.rib.AdjRibIn`; the prefixes whose
ECMP selection changed are handed to the learned-route reconciler (``set_desired``, no
IO) and the dataplane's apply loop installs them in its next pass -- batched with whatever
else arrived meanwhile, written through the batched netlink socket.

Export: the dataplane reports the host routes it has *observed installed* (never before),
the kernel-learn watcher reports other daemons' routes on export interfaces; the export
table merges both (an endpoint route wins over a kernel route of the same prefix; never a
default route). Each peer's :class:`~l3hostd.bgp.adj_rib_out.AdjRibOut` is drained by a
sender task in slices of :data:`SLICE` prefixes, so encoding never holds the event loop
for long, and waits while the peer's socket is backed up.

Graceful restart (RFC 4724), both roles:

* restarting speaker -- the learned routes found in the kernel at start are adopted and
  protected from the sweep until every peer sent End-of-RIB (or ``restart_time`` passed);
  our table goes out only after the dataplane's first full sync, followed by our own
  End-of-RIB (never an empty one first); a SIGTERM stop closes the sessions without a
  NOTIFICATION so the reflectors keep our routes as stale while we restart;
* receiving speaker -- a peer whose session drops without NOTIFICATION and who advertised
  GR keeps its paths as stale; they go on its End-of-RIB, or when its restart time ends
  before the session is back, or :data:`STALE_PATH_TIME` after it is back without one.

Max-prefix: a peer that sends more than ``max_prefixes`` accepted paths gets a
NOTIFICATION Cease / Maximum Number of Prefixes Reached (RFC 4486) and its paths go.

Reload (:meth:`BgpManager.reconfigure`, planned by :mod:`l3hostd.reload`): a peer whose
session settings did not change is not touched; a removed peer gets Cease / Peer
De-configured, a changed one Cease / Other Configuration Change and a new session (RFC
4486); an added one is started. An import filter change is applied to the Adj-RIB-In at
once (paths the new filter refuses go, without a session reset); since only accepted paths
are stored, a filter that may now admit more sends ROUTE-REFRESH (RFC 2918) to each
Established peer -- or, for a peer that did not negotiate it, resets its session, as BIRD
does. Export changes (communities, kernel-learn interfaces) re-announce what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address

from l3hostd.bgp import fsm
from l3hostd.bgp.adj_rib_out import AdjRibOut, Export, ExportPolicy
from l3hostd.bgp.codec import Codec
from l3hostd.bgp.flow import Backpressure
from l3hostd.bgp.messages import (
    CEASE_ADMIN_SHUTDOWN,
    CEASE_MAX_PREFIXES,
    CEASE_OTHER_CONFIGURATION_CHANGE,
    CEASE_PEER_DECONFIGURED,
    FAMILY_NAMES,
    IPV4_UNICAST,
    IPV6_UNICAST,
    ErrorCode,
    Family,
    Negotiated,
    Notification,
)
from l3hostd.bgp.rib import AdjRibIn, MaxPrefixExceeded, SelectionDelta, prefix_key, refilter
from l3hostd.bgp.speaker import LOW_WATER
from l3hostd.dataplane import Dataplane
from l3hostd.metrics_hist import Histogram
from l3hostd.model import HostRoute, IPAddress, IPNetwork, RouteKey
from l3hostd.netlink.kernel import Kernel
from l3hostd.netlink.learned import LearnedRouteReconciler
from l3hostd.netlink.routewatch import KernelRouteWatch
from l3hostd.reload import ReloadPlan, import_policy, policy_widens
from l3hostd.settings import Config, PeerConfig

log = logging.getLogger("l3hostd.bgp")

SLICE = 2000  # prefixes encoded per step (~10 ms)
#: Wait before a new session's first connect (its later reconnects are damped by the FSM):
#: a restarted daemon is back Established in well under a second, not after 2 s.
START_DELAY = 0.05
#: How long a gracefully restarted peer's stale routes wait for its End-of-RIB once its
#: session is back (FRR's ``stalepath-time`` default; BIRD waits without a limit).
STALE_PATH_TIME = 360
FAMILIES = {"ipv4": IPV4_UNICAST, "ipv6": IPV6_UNICAST}


@dataclass(slots=True)
class PeerRuntime:
    config: PeerConfig
    speaker: object  # PeerSpeaker (typed loosely: created inside the running loop)
    adj_out: AdjRibOut
    codec: Codec
    password: bytes | None = None  # the TCP-MD5 key in force (a reload compares it)
    negotiated: Negotiated | None = None
    eor_received: set[Family] = field(default_factory=set)
    eor_sent: bool = False
    established_at: float | None = None
    flaps: int = 0
    last_down: str = ""
    updates_received: int = 0
    updates_sent: int = 0
    # prefix-level counters for the metrics (BIRD's "Route change stats"), per message
    announced_rx: int = 0
    withdrawn_rx: int = 0
    announced_tx: int = 0
    withdrawn_tx: int = 0
    max_prefix_hits: int = 0
    pending_since: float | None = None  # first unsent export change (event-to-announce)
    stale_timer: asyncio.TimerHandle | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    sender: asyncio.Task[None] | None = None


class BgpManager:
    def __init__(self, config: Config, dataplane: Dataplane, kernel: Kernel) -> None:
        self.config = config
        self.dataplane = dataplane
        self.kernel = kernel
        bgp = config.bgp
        imp = bgp.import_
        self.rib = AdjRibIn(policy=import_policy(config))
        self.learned = LearnedRouteReconciler(kernel, self.rib, table=imp.table_id)
        gr = bgp.graceful_restart
        self.learned.protect_unwanted = gr.enabled  # adopt until the peers' End-of-RIB
        dataplane.add_reconciler(self.learned)
        dataplane.route_listeners.append(self._on_local_routes)
        dataplane.link_down_listeners.append(self._on_link_down)
        self.export_policy = _export_policy(config)
        self.watch = KernelRouteWatch(bgp.export.interfaces, imp.table_id, self._on_kernel_route)
        self._endpoint_exports: dict[int, Export] = {}
        self._kernel_exports: dict[int, Export] = {}
        self.exports: dict[int, Export] = {}
        self.peers: dict[str, PeerRuntime] = {}
        self.restarting = False  # set by the daemon when it adopted routes at start
        self._protection_timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self.draining = False
        self.drained = False
        self._drain_timer: asyncio.TimerHandle | None = None
        self.max_prefix_events = 0
        # Latencies (see l3hostd.metrics): an input (TAP, endpoint file, kernel route) to
        # its UPDATE written to the peer; an UPDATE received to the routes it changed in
        # the kernel. Observed once per burst, never per route.
        self.announce_latency = Histogram()
        self.install_latency = Histogram()
        self._received_at: float | None = None
        dataplane.pass_listeners.append(self._after_pass)
        self.backpressure = Backpressure(
            lambda: self.learned.dirty_count,
            lambda: [peer.speaker for peer in self.peers.values()],  # type: ignore[misc]
        )
        dataplane.pass_listeners.append(self.backpressure.after_pass)

    # ---- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.watch.start()
        loop = asyncio.get_running_loop()
        gr = self.config.bgp.graceful_restart
        if self.learned.protect_unwanted:
            self._protection_timer = loop.call_later(gr.restart_time, self._release_protection,
                                                     "restart time over")
        for peer in self.config.bgp.peers:
            self._start_peer(peer, peer.read_password(), self.restarting)
        if not self.peers:
            self._release_protection("no peers")

    def _start_peer(self, peer: PeerConfig, password: bytes | None, restarting: bool) -> None:
        from l3hostd.bgp.speaker import PeerSpeaker

        bgp = self.config.bgp
        gr = bgp.graceful_restart
        self.rib.add_peer(peer.name, bgp.import_.max_prefixes)
        families = frozenset(FAMILIES[f] for f in peer.families)
        session_config = fsm.SessionConfig(
            local_asn=self.config.node.asn,
            peer_asn=peer.asn,
            router_id=IPv4Address(self.config.node.router_id),
            hold_time=bgp.hold_time_for(peer),
            keepalive_time=bgp.keepalive_time_for(peer),
            connect_retry_time=bgp.connect_retry_time,
            families=families,
            add_path_receive=peer.add_path_receive,
            graceful_restart=gr.enabled,
            restart_time=gr.restart_time,
            restarting=restarting,
            start_delay=START_DELAY,
        )
        codec = Codec(self.config.node.asn, peer.asn)
        session = fsm.Session(session_config, codec, random.Random())
        speaker = PeerSpeaker(
            peer.name, peer.address, peer.port, peer.source_address, peer.multihop,
            password, session, self._on_event, self.config.bgp.send_hold_time,
        )
        policy = ExportPolicy(self.export_policy.communities,
                              self.export_policy.large_communities, self.draining, self.drained)
        runtime = PeerRuntime(peer, speaker, AdjRibOut(families, policy), codec, password)
        self.peers[peer.name] = runtime
        runtime.sender = asyncio.create_task(self._sender(runtime), name=f"bgp-tx-{peer.name}")
        speaker.start()

    def _stop_peer(self, name: str, cease_subcode: int) -> PeerRuntime:
        """Take a peer out (reload): NOTIFICATION Cease with ``cease_subcode``, its routes
        go now (a Cease ends graceful restart, RFC 4724 §4.2), its tasks and timers end."""
        peer = self.peers.pop(name)  # first: the speaker's last events are ignored
        peer.speaker.stop(Notification(ErrorCode.CEASE, cease_subcode))  # type: ignore[attr-defined]
        peer.speaker.close()  # type: ignore[attr-defined]  # the NOTIFICATION is already queued
        if peer.sender is not None:
            peer.sender.cancel()
        if peer.stale_timer is not None:
            peer.stale_timer.cancel()
            peer.stale_timer = None
        peer.negotiated = None
        peer.adj_out.session_down()
        self._apply(self.rib.peer_down(name))
        self._apply(self.rib.sweep_stale(name))
        return peer

    async def run_watch(self) -> None:
        """Keep the kernel-learn watcher in sync (its overflow / new devices)."""
        while True:
            await self.watch.resync_needed.wait()
            try:
                await self.watch.resync(self.kernel.batch)  # type: ignore[attr-defined]
            except Exception:
                log.exception("kernel route resync failed")
                await asyncio.sleep(1)

    def stop(self, graceful: bool) -> None:
        """Daemon stop. With graceful restart: close without NOTIFICATION (the peers keep
        our routes as stale); otherwise Cease / Administrative Shutdown."""
        self._stopping = True
        note = None if graceful else Notification(ErrorCode.CEASE, CEASE_ADMIN_SHUTDOWN)
        for peer in self.peers.values():
            speaker = peer.speaker
            speaker.stop(note)  # type: ignore[attr-defined]
            if peer.sender is not None:
                peer.sender.cancel()
        self.watch.stop()

    async def close(self) -> None:
        for peer in self.peers.values():
            if peer.sender is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await peer.sender
            peer.speaker.close()  # type: ignore[attr-defined]

    def _on_link_down(self, _ifindex: int) -> None:
        """A non-TAP device went down: gateway routes through it were flushed silently and
        next hops may now resolve another way."""
        self.learned.re_resolve()
        self.learned.queue_resync()
        self.dataplane.wake()

    def resync(self) -> None:
        """Periodic: next hops may resolve differently now (the fabric's routes changed);
        the kernel-learn watcher re-reads every matching link (a safety net)."""
        self.watch.full_resync()
        if self.learned.re_resolve():
            self.dataplane.wake()

    # ---- exports -------------------------------------------------------------------------------

    def _on_local_routes(
        self, added: Mapping[RouteKey, HostRoute], removed: Iterable[RouteKey]
    ) -> None:
        for rk in removed:
            key = prefix_key(rk.dst)
            if self._endpoint_exports.pop(key, None) is not None:
                self._export_changed(key)
        for rk, route in added.items():
            if route.dst.prefixlen == 0:
                continue
            key = prefix_key(rk.dst)
            self._endpoint_exports[key] = Export(route.dst, 0, "endpoint")
            self._export_changed(key)
        self._stamp_pending(self.dataplane.routes_event_at)
        self._kick_senders()

    def _on_kernel_route(self, prefix: IPNetwork, metric: int | None) -> None:
        key = prefix_key(prefix)
        if metric is None:
            self._kernel_exports.pop(key, None)
        else:
            self._kernel_exports[key] = Export(prefix, metric, "kernel")
        self._export_changed(key)
        self._stamp_pending(time.monotonic())
        self._kick_senders()

    def _stamp_pending(self, event_at: float | None) -> None:
        """Start the event-to-announce clock of peers that now have something to send
        (only in the steady state: the initial table is not an event's latency)."""
        if event_at is None:
            return
        for peer in self.peers.values():
            if peer.pending_since is None and peer.eor_sent and peer.adj_out.pending:
                peer.pending_since = event_at

    def _announced(self, peer: PeerRuntime) -> None:
        """The peer's Adj-RIB-Out is drained: stop its event-to-announce clock."""
        if peer.pending_since is not None and not peer.adj_out.pending:
            self.announce_latency.observe(time.monotonic() - peer.pending_since)
            peer.pending_since = None

    def _export_changed(self, key: int) -> None:
        export = self._endpoint_exports.get(key) or self._kernel_exports.get(key)
        if self.exports.get(key) == export:
            return
        if export is None:
            del self.exports[key]
        else:
            self.exports[key] = export
        for peer in self.peers.values():
            peer.adj_out.update(key, export)

    def _kick_senders(self) -> None:
        """Send what is pending. In the steady state (initial table and End-of-RIB sent,
        a few changes, socket not backed up) the UPDATE goes out right here, without a
        task switch: this is the path of a TAP event to the fabric. Anything bigger goes
        to the peer's sender task, which slices it."""
        for peer in self.peers.values():
            adj = peer.adj_out
            if not adj.pending:
                continue
            speaker = peer.speaker
            if (
                peer.eor_sent
                and adj.active
                and len(adj.pending) <= 256
                and speaker.write_buffer < LOW_WATER  # type: ignore[attr-defined]
            ):
                announce, withdraw = adj.take(256)
                messages = peer.codec.encode_updates(announce, withdraw)
                peer.updates_sent += len(messages)
                peer.announced_tx += len(announce)
                peer.withdrawn_tx += len(withdraw)
                speaker.send(messages)  # type: ignore[attr-defined]
                self._announced(peer)
            else:
                peer.wake.set()

    def set_drain(self, draining: bool, withdrawn: bool = False) -> None:
        """Maintenance: announce everything with GRACEFUL_SHUTDOWN (RFC 8326) -- the
        reflectors' other paths win at once -- and, with ``withdrawn``, nothing at all."""
        self.draining = draining
        self.drained = withdrawn
        policy = ExportPolicy(self.export_policy.communities,
                              self.export_policy.large_communities, draining, withdrawn)
        for peer in self.peers.values():
            peer.adj_out.repolicy(policy, self.exports)
        self._kick_senders()

    def drain(self, wait: float) -> None:
        """``l3hostctl drain``: GRACEFUL_SHUTDOWN now, withdraw everything after ``wait``
        seconds (time for the fabric to move traffic to other paths)."""
        if self._drain_timer is not None:
            self._drain_timer.cancel()
        log.warning("draining: announcing with GRACEFUL_SHUTDOWN, withdrawing in %.0fs", wait)
        self.set_drain(True)
        self._drain_timer = asyncio.get_running_loop().call_later(
            wait, self._drain_withdraw
        )

    def _drain_withdraw(self) -> None:
        self._drain_timer = None
        log.warning("drained: every route withdrawn")
        self.set_drain(True, withdrawn=True)

    def undrain(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None
        log.warning("undrained: announcing again")
        self.set_drain(False)

    async def _sender(self, peer: PeerRuntime) -> None:
        """Drain the peer's Adj-RIB-Out in slices; End-of-RIB after the first full table."""
        speaker = peer.speaker
        while True:
            await peer.wake.wait()
            peer.wake.clear()
            if peer.negotiated is None or not peer.adj_out.active:
                continue
            if not self.dataplane.synced.is_set():
                # a restarting speaker announces its table only after the first full sync
                await self.dataplane.synced.wait()
                peer.wake.set()
                continue
            while peer.adj_out.pending and peer.adj_out.active:
                announce, withdraw = peer.adj_out.take(SLICE)
                messages = peer.codec.encode_updates(announce, withdraw)
                peer.updates_sent += len(messages)
                peer.announced_tx += len(announce)
                peer.withdrawn_tx += len(withdraw)
                speaker.send(messages)  # type: ignore[attr-defined]
                self._announced(peer)
                await speaker.writable()  # type: ignore[attr-defined]
                await asyncio.sleep(0)
            if not peer.eor_sent and peer.adj_out.active and peer.negotiated is not None:
                peer.eor_sent = True
                speaker.send(  # type: ignore[attr-defined]
                    [peer.codec.encode_end_of_rib(f) for f in sorted(peer.negotiated.families)]
                )

    # ---- session events -----------------------------------------------------------------------

    def _on_event(self, speaker: object, event: object) -> None:
        peer = self.peers.get(speaker.name)  # type: ignore[attr-defined]
        if peer is None or peer.speaker is not speaker:
            return  # a speaker a reload stopped (its name may be reused already)
        if isinstance(event, fsm.Established):
            self._established(peer, event.negotiated)
        elif isinstance(event, fsm.UpdateReceived):
            self._update(peer, event)
        elif isinstance(event, fsm.SessionDown):
            self._down(peer, event)
        elif isinstance(event, fsm.RouteRefreshReceived):
            peer.adj_out.session_up(peer.adj_out.next_hop, self.exports)
            peer.wake.set()

    def _established(self, peer: PeerRuntime, negotiated: Negotiated) -> None:
        peer.negotiated = negotiated
        peer.established_at = time.time()
        peer.eor_received = set()
        peer.eor_sent = False
        local = peer.speaker.local_address  # type: ignore[attr-defined]
        next_hops: dict[Family, IPAddress] = {}
        if local is not None:
            next_hops[IPV4_UNICAST if local.version == 4 else IPV6_UNICAST] = local
        peer.adj_out.session_up(next_hops, self.exports)
        log.info("peer %s: Established (hold %ds, families %s%s)", peer.config.name,
                 negotiated.hold_time,
                 ",".join(FAMILY_NAMES.get(f, str(f)) for f in sorted(negotiated.families)),
                 ", add-path rx" if negotiated.add_path_receive else "")
        gr = negotiated.peer_graceful_restart
        if self.rib.has_stale(peer.config.name):
            kept = {f for f, preserved in (gr.families if gr else ()) if preserved}
            if gr is None or not kept:
                # RFC 4724 §4.2: no GR (or forwarding not preserved) in the new OPEN
                self._apply(self.rib.sweep_stale(peer.config.name))
            elif peer.stale_timer is not None:
                # RFC 4724 §4.2: the restart time bounds the re-establishment only (BIRD
                # stops its gr_timer here too); the stale routes now wait for End-of-RIB,
                # which a restarted reflector may send many seconds after the session is up
                peer.stale_timer.cancel()
                peer.stale_timer = asyncio.get_running_loop().call_later(
                    STALE_PATH_TIME, self._stale_timeout, peer, "no End-of-RIB in time")
        peer.wake.set()

    def _update(self, peer: PeerRuntime, event: fsm.UpdateReceived) -> None:
        update = event.update
        received_at = time.monotonic()
        peer.updates_received += 1
        peer.announced_rx += update.announced_count
        peer.withdrawn_rx += len(update.withdrawn)
        if update.end_of_rib is not None:
            self._end_of_rib(peer, update.end_of_rib)
            return
        if update.treat_as_withdraw:
            log.warning("peer %s: UPDATE treated as withdraw: %s", peer.config.name,
                        update.treat_as_withdraw)
        try:
            delta = self.rib.apply_update(peer.config.name, update)
        except MaxPrefixExceeded as exc:
            self._max_prefixes_exceeded(peer, str(exc))
            return
        self._apply(delta)
        self.backpressure.after_input()
        if self._received_at is None and self.learned.dirty_count:
            self._received_at = received_at  # kernel work to do: time it (_after_pass)
        self.dataplane.kick()  # the pass starts here, if the dataplane is idle

    def _max_prefixes_exceeded(self, peer: PeerRuntime, why: str) -> None:
        self.max_prefix_events += 1
        peer.max_prefix_hits += 1
        log.error("peer %s: %s; sending Cease/Maximum Number of Prefixes Reached and "
                  "dropping its routes", peer.config.name, why)
        peer.speaker.stop(  # type: ignore[attr-defined]
            Notification(ErrorCode.CEASE, CEASE_MAX_PREFIXES)
        )
        peer.speaker.start()  # type: ignore[attr-defined]  # reconnect after idle hold

    def _end_of_rib(self, peer: PeerRuntime, family: Family) -> None:
        peer.eor_received.add(family)
        log.info("peer %s: End-of-RIB %s", peer.config.name, FAMILY_NAMES.get(family, family))
        negotiated = peer.negotiated.families if peer.negotiated else frozenset()
        if negotiated <= peer.eor_received:
            if peer.stale_timer is not None:
                peer.stale_timer.cancel()
                peer.stale_timer = None
            self._apply(self.rib.sweep_stale(peer.config.name))
            self._maybe_release_protection()

    def _down(self, peer: PeerRuntime, event: fsm.SessionDown) -> None:
        was_up = peer.negotiated is not None
        gr = peer.negotiated.peer_graceful_restart if peer.negotiated else None
        peer.negotiated = None
        peer.adj_out.session_down()
        peer.pending_since = None
        if not was_up:
            return
        peer.flaps += 1
        peer.established_at = None
        peer.last_down = event.reason
        log.warning("peer %s: session down: %s", peer.config.name, event.reason)
        if event.graceful and gr is not None and self.config.bgp.graceful_restart.enabled:
            self.rib.mark_stale(peer.config.name)
            restart = max(1, gr.restart_time)
            if peer.stale_timer is not None:
                peer.stale_timer.cancel()
            peer.stale_timer = asyncio.get_running_loop().call_later(
                restart, self._stale_timeout, peer)
            log.info("peer %s: keeping its routes as stale for up to %ds (graceful restart)",
                     peer.config.name, restart)
        else:
            self._apply(self.rib.peer_down(peer.config.name))

    def _stale_timeout(self, peer: PeerRuntime, why: str = "restart time over") -> None:
        peer.stale_timer = None
        log.warning("peer %s: %s, removing its stale routes", peer.config.name, why)
        self._apply(self.rib.sweep_stale(peer.config.name))

    def _apply(self, delta: SelectionDelta) -> None:
        if not delta:
            return
        self.learned.select_many(delta)
        self.dataplane.wake()

    def _after_pass(self) -> None:
        """After a dataplane pass: if the learned routes have nothing left to write now,
        the UPDATEs received since ``_received_at`` are in the kernel."""
        if self._received_at is None or not self.learned.in_sync:
            return
        now = time.monotonic()
        if not self.learned.pending(now):
            self.install_latency.observe(now - self._received_at)
            self._received_at = None

    def _maybe_release_protection(self) -> None:
        if not self.learned.protect_unwanted:
            return
        for peer in self.peers.values():
            if peer.negotiated is None or not peer.negotiated.families <= peer.eor_received:
                return
        self._release_protection("End-of-RIB from every peer")

    def _release_protection(self, why: str) -> None:
        if self._protection_timer is not None:
            self._protection_timer.cancel()
            self._protection_timer = None
        if self.learned.protect_unwanted:
            log.info("learned routes converged (%s): sweeping stale ones", why)
            self.learned.release_protection()
            self.dataplane.wake()

    # ---- reload -------------------------------------------------------------------------------

    def passwords(self) -> dict[IPAddress, bytes | None]:
        """The TCP-MD5 key in force per peer address (a reload compares the new ones)."""
        return {peer.config.address: peer.password for peer in self.peers.values()}

    def reconfigure(
        self, config: Config, plan: ReloadPlan, passwords: Mapping[IPAddress, bytes | None]
    ) -> list[str]:
        """Apply a reload planned by :func:`l3hostd.reload.plan` (``passwords``: the keys
        just read, per peer address). Returns a line for each action beyond the plan's own
        lines (paths filtered, route refresh sent, sessions reset)."""
        notes: list[str] = []
        self.config = config
        for peer_config in plan.removed:
            self._stop_peer(peer_config.name, CEASE_PEER_DECONFIGURED)
        for restart in plan.restarted:
            self._stop_peer(restart.old.name, CEASE_OTHER_CONFIGURATION_CHANGE)
        # import: filter what is stored now; ask again for what the old filter refused
        policy = import_policy(config)
        widens = policy_widens(self.rib.policy, policy)
        if policy != self.rib.policy:
            before = sum(p.count for p in self.rib.peers.values())
            self._apply(refilter(self.rib, policy))
            dropped = before - sum(p.count for p in self.rib.peers.values())
            if dropped or plan.changed(
                "bgp.import.accept", "bgp.import.reject", "bgp.import.allow_default"
            ):
                notes.append(f"import filter applied to the Adj-RIB-In: {dropped} paths "
                             "removed")
        limit = config.bgp.import_.max_prefixes
        for peer in list(self.peers.values()):
            if self.rib.add_peer(peer.config.name, limit).count > limit:
                self._max_prefixes_exceeded(peer, f"more than {limit} prefixes (reload)")
        # export: communities (the drain state stays) and kernel-learn interfaces
        export_policy = _export_policy(config)
        if export_policy != self.export_policy:
            self.export_policy = export_policy
            self.set_drain(self.draining, self.drained)  # re-announces what changed
        self.watch.patterns = tuple(config.bgp.export.interfaces)  # the daemon re-reads links
        established = [peer for peer in self.peers.values() if peer.negotiated is not None]
        for restart in plan.restarted:
            self._start_peer(restart.new, passwords.get(restart.new.address), False)
        for peer_config in plan.added:
            self._start_peer(peer_config, passwords.get(peer_config.address), False)
        if widens:
            notes += [self._refresh(peer) for peer in established]
        self._maybe_release_protection()
        self._kick_senders()
        return notes

    def _refresh(self, peer: PeerRuntime) -> str:
        """Have the peer send its routes again: ROUTE-REFRESH (RFC 2918) per family, or a
        session reset if it did not negotiate it."""
        name = peer.config.name
        negotiated = peer.negotiated
        if negotiated is not None and negotiated.route_refresh:
            for family in sorted(negotiated.families):
                peer.speaker.request_route_refresh(family)  # type: ignore[attr-defined]
            return f"peer {name}: ROUTE-REFRESH sent (the import filter may admit more)"
        self._stop_peer(name, CEASE_OTHER_CONFIGURATION_CHANGE)
        self._start_peer(peer.config, peer.password, False)
        return (f"peer {name}: restarting the session: the import filter may admit more and "
                "the peer does not support ROUTE-REFRESH")

    # ---- views --------------------------------------------------------------------------------

    def peer_rows(self) -> list[dict[str, object]]:
        rows = []
        now = time.time()
        for name, peer in self.peers.items():
            session = peer.speaker.session  # type: ignore[attr-defined]
            rows.append({
                "name": name,
                "address": str(peer.config.address),
                "asn": peer.config.asn,
                "state": session.state.name.capitalize(),
                "since": round(now - peer.established_at, 1) if peer.established_at else None,
                "prefixes_received": self.rib.peers[name].count,
                "prefixes_filtered": self.rib.peers[name].filtered,
                "prefixes_sent": len(peer.adj_out.sent),
                "updates_received": peer.updates_received,
                "updates_sent": peer.updates_sent,
                "flaps": peer.flaps,
                "stale": self.rib.has_stale(name),
                "last_error": peer.last_down or getattr(peer.speaker, "last_error", ""),
            })
        return rows


def _export_policy(config: Config) -> ExportPolicy:
    export = config.bgp.export
    return ExportPolicy(
        communities=tuple((a << 16) | b for a, b in export.standard_communities),
        large_communities=export.large_communities,
    )
