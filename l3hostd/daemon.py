"""The composition root: wires config, endpoint source, link monitor, dataplane, control.

Start-up order (nothing is written to the kernel before step 4):

1. open the netlink driver and subscribe the link monitor (before the dump, so no change
   between dump and subscription is missed);
2. read the endpoint directory once, completely;
3. dump the links;
4. mark the dataplane ready: the first pass adopts what the kernel holds (mark-and-sweep),
   then ``READY=1`` goes to systemd.

Then everything is event-driven: inotify for endpoint files, netlink for links, plus a
jittered periodic resync (``dataplane.resync_interval``, 2/3..1 of it) and the endpoint
directory's own periodic rescan as safety nets.

SIGTERM/SIGINT stop the loop and leave every kernel object in place (routes, neighbour
entries, sysctls): VMs keep working while the daemon restarts, and the next start adopts
the state without rewriting it.

SIGHUP and ``l3hostctl reload`` re-read the config file (:meth:`Daemon.reload`): it is
validated in a child process (:mod:`l3hostd.config_isolated`), diffed against the running
settings (:mod:`l3hostd.reload`) and either applied -- BGP peers, filters and exports by
the BGP manager without resetting unchanged sessions, log settings and intervals here --
or, if it has errors or changes a setting that needs a restart, rejected as a whole with
one log line per problem while the running configuration stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import signal
import time

from l3hostd import control, logs, metrics
from l3hostd.bgp.manager import BgpManager
from l3hostd.calc import DataplaneSettings
from l3hostd.config_isolated import load_config_async
from l3hostd.dataplane import Dataplane
from l3hostd.endpoints.directory import DirectorySource, SourceChange
from l3hostd.firewall.compile import FirewallSettings
from l3hostd.firewall.reconciler import FirewallInputs, FirewallReconciler
from l3hostd.model import RTPROT_L3HOSTD, IPAddress, Link
from l3hostd.netlink import sysctl
from l3hostd.netlink.driver import NetlinkDriver
from l3hostd.netlink.monitor import LinkMonitor
from l3hostd.reload import ReloadPlan
from l3hostd.reload import plan as plan_reload
from l3hostd.settings import Config, ConfigError
from l3hostd.systemd import Notifier

log = logging.getLogger("l3hostd")


def dataplane_settings(config: Config) -> DataplaneSettings:
    fw = config.firewall
    return DataplaneSettings(
        interface_patterns=tuple(config.endpoints.interface_patterns),
        table=config.dataplane.table_id,
        ipv6_gateway=config.dataplane.ipv6_gateway,
        route_localnet=fw.enabled and fw.host_allow.metadata
        and fw.metadata_address.host.is_loopback,
    )


def firewall_reconciler(config: Config) -> FirewallReconciler | None:
    fw = config.firewall
    if not fw.enabled:
        return None
    settings = FirewallSettings(
        interface_patterns=tuple(config.endpoints.interface_patterns),
        dhcp=fw.host_allow.dhcp,
        dns=fw.host_allow.dns,
        metadata=fw.host_allow.metadata,
        metadata_address=(str(fw.metadata_address.host), fw.metadata_address.port),
    )
    return FirewallReconciler(FirewallInputs(settings))


def read_passwords(config: Config) -> dict[IPAddress, bytes | None]:
    """Every peer's TCP-MD5 key (None: no password file); raise ConfigError."""
    out: dict[IPAddress, bytes | None] = {}
    errors: list[str] = []
    for peer in config.bgp.peers:
        try:
            out[peer.address] = peer.read_password()
        except ConfigError as exc:
            errors += exc.errors
    if errors:
        raise ConfigError(errors)
    return out


class Daemon:
    def __init__(self, config: Config, config_path: str | None = None) -> None:
        self.config = config
        self.config_path = config_path  # re-read by a reload
        self.started = time.time()
        self.driver = NetlinkDriver()
        self.dataplane = Dataplane(
            self.driver, dataplane_settings(config), firewall=firewall_reconciler(config)
        )
        self.bgp: BgpManager | None = (
            BgpManager(config, self.dataplane, self.driver) if config.bgp.peers else None
        )
        self.monitor = LinkMonitor(self._on_link, self._on_link_removed, self._on_overflow,
                                   on_drained=self._after_link_events)
        self.source = DirectorySource(
            config.endpoints.directory,
            self._on_endpoints,
            rescan_interval=config.endpoints.rescan_interval,
            allowed_networks=config.endpoints.allowed_networks,
        )
        self.notifier = Notifier()
        self._stop = asyncio.Event()
        self._link_resync = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()
        self._started = False
        self._hup_pending = False
        self._reloads: set[asyncio.Task[None]] = set()
        self.metrics: metrics.MetricsServer | None = None

    def _on_link(self, link: Link) -> None:
        self.dataplane.on_link(link)
        if self.bgp is not None:
            self.bgp.watch.on_link(link)

    def _after_link_events(self) -> None:
        self.dataplane.kick()  # a TAP came up: its routes are written from here

    def _on_link_removed(self, ifindex: int) -> None:
        self.dataplane.on_link_removed(ifindex)
        if self.bgp is not None:
            self.bgp.watch.on_link_removed(ifindex)

    def _on_links(self, links: list[Link]) -> None:
        self.dataplane.on_links(links)
        if self.bgp is not None:
            present = {link.ifindex for link in links}
            for ifindex in list(self.bgp.watch._ifindexes):
                if ifindex not in present:
                    self.bgp.watch.on_link_removed(ifindex)
            for link in links:
                self.bgp.watch.on_link(link)
            self.bgp.watch.resync_needed.set()

    def _on_endpoints(self, change: SourceChange) -> None:
        if change.groups_changed or change.members_changed:
            self.dataplane.on_groups(self.source.security_groups(), self.source.group_members())
        self.dataplane.on_endpoints(change.endpoints_upserted, change.endpoints_removed)
        self.dataplane.kick()

    def _on_overflow(self) -> None:
        self._link_resync.set()

    async def _resync_links(self) -> None:
        """Re-dump the links and resync every reconciler (overflow or periodic)."""
        self._on_links(await self.driver.dump_links())
        self.dataplane.request_resync()
        if self.bgp is not None:
            self.bgp.resync()

    async def _link_resync_loop(self) -> None:
        while True:
            await self._link_resync.wait()
            self._link_resync.clear()
            try:
                await self._resync_links()
            except Exception:
                log.exception("link resync failed; retrying in 1 s")
                await asyncio.sleep(1)
                self._link_resync.set()

    async def _periodic_resync(self) -> None:
        while True:  # the interval is read each time: a reload may change it
            interval = self.config.dataplane.resync_interval
            await asyncio.sleep(interval * random.uniform(2 / 3, 1.0))
            log.debug("periodic resync")
            self._link_resync.set()

    async def _ready_when_synced(self) -> None:
        await self.dataplane.synced.wait()
        # the state of the first sync lives on too (young objects only: cheap)
        gc.collect(1)
        gc.freeze()
        counts = self.dataplane.count_states()
        status = (
            f"in sync: {sum(counts.values())} endpoints, "
            f"{len(self.dataplane.routes.observed)} host routes"
        )
        self.notifier.ready(status)

    def request_stop(self) -> None:
        self._stop.set()

    # ---- reload -----------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        if not self._started:  # run() reloads once it has started everything
            log.info("SIGHUP while starting: reloading once started")
            self._hup_pending = True
            return
        task = asyncio.create_task(self._reload_logged(), name="reload")
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    async def _reload_logged(self) -> None:
        try:
            await self.reload()
        except ConfigError:
            pass  # logged by reload()
        except Exception:
            log.exception("reload failed")

    async def reload(self) -> list[str]:
        """Re-read the config file and apply what changed; return one line per change.

        Raises :class:`ConfigError` -- after logging each line -- when the file has errors
        or changes a setting that needs a restart; nothing is changed then."""
        async with self._reload_lock:
            ready = self.dataplane.synced.is_set()
            if ready:  # systemd: reloading until READY=1 again (sd_notify(3))
                self.notifier.notify("RELOADING=1",
                                     f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
            try:
                try:
                    if self.config_path is None:
                        raise ConfigError(["no config file to reload (started without one)"])
                    new = await load_config_async(self.config_path)
                    passwords = read_passwords(new)
                    plan = plan_reload(
                        self.config, new, bgp_running=self.bgp is not None,
                        old_passwords=self.bgp.passwords() if self.bgp is not None else {},
                        new_passwords=passwords,
                    )
                    if plan.rejected:
                        raise ConfigError(plan.rejected)
                except ConfigError as exc:
                    for line in exc.errors:
                        log.error("reload rejected: %s", line)
                    log.error("reload rejected: the running configuration stays")
                    raise
                lines = list(plan.changes) + self._apply_reload(new, plan, passwords)
                for line in lines:
                    log.info("reload: %s", line)
                if not lines:
                    log.info("reload: no changes")
                return lines
            finally:
                if ready:
                    self.notifier.notify("READY=1")

    def _apply_reload(
        self, new: Config, plan: ReloadPlan, passwords: dict[IPAddress, bytes | None]
    ) -> list[str]:
        """Carry out an accepted plan (see :data:`l3hostd.reload.LIVE` for what can change)."""
        self.config = new
        notes: list[str] = []
        if plan.changed("logging.level", "logging.format"):
            logs.setup(new.logging.level, new.logging.format)
        if plan.changed("endpoints.rescan_interval"):
            self.source.rescan_interval = float(new.endpoints.rescan_interval)
        # dataplane.resync_interval: _periodic_resync reads it for its next period
        if self.bgp is not None:
            notes += self.bgp.reconfigure(new, plan, passwords)
            if plan.changed("bgp.export.interfaces"):
                self._link_resync.set()  # re-match every link against the new patterns
        return notes

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
        for warning in sysctl.global_forwarding_warnings():
            log.warning("%s", warning)
        await self.driver.open()
        self.monitor.start()
        self.source.load_initial()
        self.dataplane.on_groups(self.source.security_groups(), self.source.group_members())
        self.dataplane.on_endpoints(self.source.endpoints(), ())
        self._on_links(await self.driver.dump_links())
        if self.bgp is not None:
            # Routes of ours in the kernel: we restart (RFC 4724 R bit; adopt, don't sweep).
            # The learned ones are read here, once: this is the learned-route reconciler's
            # first resync (the first pass does not read them again; if it fails, the pass
            # retries it with backoff).
            learned = self.bgp.learned
            try:
                await learned.resync()
            except Exception as err:  # the dataplane's clock is time.monotonic
                learned.resync_failed(time.monotonic(), err)
            self.bgp.restarting = bool(
                len(learned.observed) or await self.driver.dump_routes(RTPROT_L3HOSTD)
            )
        self.dataplane.set_ready()
        if self.bgp is not None:
            self.bgp.start()
        # What exists now (modules, config, the inputs) lives as long as the daemon: out of
        # the collector's sight, a full collection no longer walks ~35k objects (6.7 ms
        # warm, several times that on a cold CPU) in the middle of an event. Done here,
        # while the first connection waits for its start delay, not when the first routes
        # arrive.
        gc.collect()
        gc.freeze()
        server = control.ControlServer(self.config.control.socket, self)
        await server.start()
        self.metrics = metrics.server_for(self)  # None when metrics.enabled is false
        if self.metrics is not None:
            await self.metrics.start()
        self._tasks = [
            asyncio.create_task(coro, name=name)
            for name, coro in (
                ("dataplane", self.dataplane.run()),
                ("endpoints", self.source.run()),
                ("link-resync", self._link_resync_loop()),
                ("periodic-resync", self._periodic_resync()),
                ("ready", self._ready_when_synced()),
                ("watchdog", self.notifier.run_watchdog()),
            )
        ]
        if self.bgp is not None:
            self._tasks.append(asyncio.create_task(self.bgp.run_watch(), name="kernel-learn"))
        self._started = True
        if self._hup_pending:
            self._on_sighup()
        stop = asyncio.create_task(self._stop.wait())
        pending: set[asyncio.Task[object]] = {stop, *self._tasks}
        try:
            while not stop.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stop and not task.cancelled():
                        exc = task.exception()
                        if exc is not None:
                            log.error("task %s failed: %r", task.get_name(), exc)
                            raise exc
        finally:
            log.info("stopping; kernel state is left in place")
            self.notifier.stopping()
            if self.bgp is not None:
                self.bgp.stop(graceful=self.config.bgp.graceful_restart.enabled)
            stop.cancel()
            for task in (*self._tasks, *self._reloads):
                task.cancel()
            for task in self._tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            await server.close()
            if self.metrics is not None:
                await self.metrics.close()
            if self.bgp is not None:
                await self.bgp.close()
            self.monitor.stop()
            self.driver.close()
            self.notifier.close()
