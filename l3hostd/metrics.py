"""Prometheus metrics: pull-style collectors over the daemon's own state, and /metrics.

How it works
    :func:`build_registry` makes a :class:`~l3hostd.promtext.CollectorRegistry` holding
    custom collectors. A collector holds no metric objects and counts nothing itself: at
    scrape time it reads what the daemon keeps anyway -- the peers of the BGP manager and
    their FSM counters, the RIB's per-peer counts, the Adj-RIB-Out, every reconciler's
    ``stats`` and ``observed`` state, the dataplane's endpoint plans -- and yields
    ``GaugeMetricFamily``/``CounterMetricFamily``/``HistogramMetricFamily`` values
    (:mod:`l3hostd.promtext`). Nothing is paid per route or per event on the hot path; the
    few things that must be counted when they happen are plain ints on existing objects
    (``PeerRuntime``, ``SessionCounters``, ``ReconcilerStats``) and the timings are
    :class:`~l3hostd.metrics_hist.Histogram` buckets observed once per batch. Collectors
    look objects up through the daemon at every scrape, so peers and reconcilers added or
    removed by a reload appear and disappear by themselves, and a peer's series go with it.

    :class:`MetricsServer` answers ``GET /metrics`` (and ``HEAD``) on the daemon's event
    loop (``asyncio.start_server``, no thread), in the format the ``Accept`` header asks
    for (``choose_encoder``: OpenMetrics, else text 0.0.4): HTTP/1.0 and 1.1, one request per
    connection, request head at most :data:`MAX_REQUEST` bytes read within
    :data:`REQUEST_TIMEOUT`, at most :data:`MAX_CLIENTS` connections at once, 404 for any
    other path, 405 for any other method, 500 if a collector fails. It listens on
    ``metrics.listen`` (127.0.0.1:9469 by default: loopback only); if the address cannot
    be bound it logs and retries, so a port still held by the previous instance never
    stops the dataplane.

Why it is built this way
    The collectors must not cost anything between scrapes (100k learned routes arrive in
    about a second and must not get slower), the daemon is one event loop (no locks, no
    thread for the HTTP side), and the objects change under reloads. The metric names
    (``l3hostd_`` prefix) and their mapping to ``bird_exporter``'s are in the README.
    The families and both text formats come from :mod:`l3hostd.promtext`, which writes
    what prometheus_client would, byte for byte, without its 3.3 MiB of imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from l3hostd import __version__
from l3hostd.bgp.fsm import State
from l3hostd.bgp.messages import MessageType
from l3hostd.metrics_hist import Histogram
from l3hostd.metrics_nft import NftTableSize, table_size
from l3hostd.model import EndpointState
from l3hostd.promtext import (
    Collector,
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    ProcessCollector,
    SummaryMetricFamily,
    choose_encoder,
)

if TYPE_CHECKING:
    from l3hostd.bgp.manager import BgpManager
    from l3hostd.daemon import Daemon
    from l3hostd.dataplane import Dataplane

log = logging.getLogger("l3hostd.metrics")

__all__ = [
    "MAX_CLIENTS",
    "MAX_REQUEST",
    "NFT_REFRESH_INTERVAL",
    "BgpCollector",
    "DaemonCollector",
    "DataplaneCollector",
    "MetricsServer",
    "Refresher",
    "add_histogram",
    "build_registry",
    "histogram_family",
    "server_for",
]

MAX_REQUEST = 8192  # bytes of request line + headers
REQUEST_TIMEOUT = 5.0
MAX_CLIENTS = 16
NFT_REFRESH_INTERVAL = 5.0  # seconds: the nft table is read at most this often
ERROR_LABEL_MAX = 200  # characters of an error message kept as a label value

FIREWALL_PENDING = "firewall-pending"
#: Awaited before each scrape (reads that should not run inside a collector).
Refresher = Callable[[], Awaitable[None]]


def histogram_family(
    name: str, documentation: str, labels: Iterable[str] = ()
) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, documentation, labels=list(labels))


def add_histogram(family: HistogramMetricFamily, labels: list[str], hist: Histogram) -> None:
    buckets = [
        ("+Inf" if bound == float("inf") else repr(float(bound)), float(n))
        for bound, n in hist.cumulative()
    ]
    family.add_metric(labels, buckets, hist.sum)


def _error_label(text: str) -> str:
    return " ".join(text.split())[:ERROR_LABEL_MAX]


# ---- BGP ----------------------------------------------------------------------------------


class BgpCollector(Collector):
    """Per-peer session and prefix metrics, the RIB and the two latency histograms."""

    def __init__(self, manager: Callable[[], BgpManager | None]) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Metric]:
        bgp = self._manager()
        if bgp is None:
            return
        peer_labels = ["peer"]
        info = GaugeMetricFamily(
            "l3hostd_bgp_peer_info",
            "A configured BGP peer (value 1): its address, AS and configured address families.",
            labels=["peer", "address", "asn", "families"],
        )
        up = GaugeMetricFamily(
            "l3hostd_bgp_session_up",
            "1 when the BGP session is Established (bird_exporter: bird_protocol_up).",
            labels=peer_labels,
        )
        state = GaugeMetricFamily(
            "l3hostd_bgp_session_state",
            "RFC 4271 state of the BGP session: 1 for the current state, 0 for the others.",
            labels=["peer", "state"],
        )
        uptime = GaugeMetricFamily(
            "l3hostd_bgp_session_uptime_seconds",
            "Seconds since the session reached Established; 0 while it is not.",
            labels=peer_labels,
        )
        flaps = CounterMetricFamily(
            "l3hostd_bgp_session_flaps",
            "Established sessions that went down.",
            labels=peer_labels,
        )
        connects = CounterMetricFamily(
            "l3hostd_bgp_connect_attempts",
            "TCP connection attempts to the peer.",
            labels=peer_labels,
        )
        msg_rx = CounterMetricFamily(
            "l3hostd_bgp_messages_received",
            "BGP messages received, by type.",
            labels=["peer", "type"],
        )
        msg_tx = CounterMetricFamily(
            "l3hostd_bgp_messages_sent",
            "BGP messages sent, by type.",
            labels=["peer", "type"],
        )
        accepted = GaugeMetricFamily(
            "l3hostd_bgp_prefixes_accepted",
            "Paths from the peer held in the Adj-RIB-In after import policy (every ADD-PATH "
            "path counts; bird_exporter: bird_protocol_prefix_import_count).",
            labels=peer_labels,
        )
        filtered = GaugeMetricFamily(
            "l3hostd_bgp_prefixes_filtered",
            "Paths the import policy rejected since the session came up "
            "(bird_exporter: bird_protocol_prefix_filter_count).",
            labels=peer_labels,
        )
        sent = GaugeMetricFamily(
            "l3hostd_bgp_prefixes_sent",
            "Prefixes the peer holds from us (Adj-RIB-Out; "
            "bird_exporter: bird_protocol_prefix_export_count).",
            labels=["peer", "afi"],
        )
        pending = GaugeMetricFamily(
            "l3hostd_bgp_prefixes_pending",
            "Export changes not yet sent to the peer.",
            labels=peer_labels,
        )
        upd_rx = CounterMetricFamily(
            "l3hostd_bgp_prefix_updates_received",
            "Prefixes announced by the peer, counted per UPDATE (bird_exporter: "
            "bird_protocol_changes_update_import_receive_count).",
            labels=peer_labels,
        )
        wd_rx = CounterMetricFamily(
            "l3hostd_bgp_prefix_withdraws_received",
            "Prefixes withdrawn by the peer (bird_exporter: "
            "bird_protocol_changes_withdraw_import_receive_count).",
            labels=peer_labels,
        )
        upd_tx = CounterMetricFamily(
            "l3hostd_bgp_prefix_updates_sent",
            "Prefixes announced to the peer (bird_exporter: "
            "bird_protocol_changes_update_export_accept_count).",
            labels=peer_labels,
        )
        wd_tx = CounterMetricFamily(
            "l3hostd_bgp_prefix_withdraws_sent",
            "Prefixes withdrawn from the peer (bird_exporter: "
            "bird_protocol_changes_withdraw_export_accept_count).",
            labels=peer_labels,
        )
        max_prefix = CounterMetricFamily(
            "l3hostd_bgp_max_prefix_exceeded",
            "Times the peer went over import.max_prefixes (session reset with Cease).",
            labels=peer_labels,
        )
        stale = GaugeMetricFamily(
            "l3hostd_bgp_stale",
            "1 while the peer's paths are kept as stale (graceful restart, RFC 4724).",
            labels=peer_labels,
        )
        last_error = GaugeMetricFamily(
            "l3hostd_bgp_last_error_info",
            "The last reason the session went down or could not be set up (value 1; the "
            "series is absent when there was none).",
            labels=["peer", "error"],
        )
        now = time.time()
        for name, peer in list(bgp.peers.items()):
            config = peer.config
            session = peer.speaker.session  # type: ignore[attr-defined]
            counters = session.counters
            info.add_metric([name, str(config.address), str(config.asn),
                             ",".join(config.families)], 1)
            current: State = session.state
            up.add_metric([name], 1 if current is State.ESTABLISHED else 0)
            for s in State:
                state.add_metric([name, s.value], 1 if s is current else 0)
            since = peer.established_at
            uptime.add_metric([name], max(0.0, now - since) if since is not None else 0.0)
            flaps.add_metric([name], peer.flaps)
            connects.add_metric([name], counters.connect_attempts)
            for mtype in MessageType:
                label = mtype.name.lower()
                msg_rx.add_metric([name, label], counters.messages_in.get(mtype, 0))
                msg_tx.add_metric([name, label], counters.messages_out.get(mtype, 0))
            rib_peer = bgp.rib.peers.get(name)
            accepted.add_metric([name], rib_peer.count if rib_peer is not None else 0)
            filtered.add_metric([name], rib_peer.filtered if rib_peer is not None else 0)
            v6 = sum(key & 1 for key in peer.adj_out.sent)
            sent.add_metric([name, "ipv4"], len(peer.adj_out.sent) - v6)
            sent.add_metric([name, "ipv6"], v6)
            pending.add_metric([name], len(peer.adj_out.pending))
            upd_rx.add_metric([name], peer.announced_rx)
            wd_rx.add_metric([name], peer.withdrawn_rx)
            upd_tx.add_metric([name], peer.announced_tx)
            wd_tx.add_metric([name], peer.withdrawn_tx)
            max_prefix.add_metric([name], peer.max_prefix_hits)
            stale.add_metric([name], 1 if rib_peer is not None and rib_peer.stale_alias
                             is not None else 0)
            error = (peer.last_down or getattr(peer.speaker, "last_error", "")
                     or counters.last_error)
            if error:
                last_error.add_metric([name, _error_label(error)], 1)
        yield from (info, up, state, uptime, flaps, connects, msg_rx, msg_tx, accepted,
                    filtered, sent, pending, upd_rx, wd_rx, upd_tx, wd_tx, max_prefix, stale,
                    last_error)

        yield GaugeMetricFamily(
            "l3hostd_bgp_rib_prefixes",
            "Prefixes with at least one path in the Adj-RIB-In (all peers).",
            value=bgp.rib.prefix_count(),
        )
        exported = GaugeMetricFamily(
            "l3hostd_bgp_exported_prefixes",
            "Prefixes we originate: host routes of endpoints, or kernel routes on export "
            "interfaces (kernel-learn mode).",
            labels=["source"],
        )
        by_source = {"endpoint": 0, "kernel": 0}
        for export in bgp.exports.values():
            by_source[export.source] = by_source.get(export.source, 0) + 1
        for source, n in sorted(by_source.items()):
            exported.add_metric([source], n)
        yield exported
        yield GaugeMetricFamily(
            "l3hostd_bgp_unresolved_next_hops",
            "BGP next hops with no usable route in the kernel (their prefixes are not "
            "installed).",
            value=len(bgp.learned.unresolved),
        )
        yield GaugeMetricFamily(
            "l3hostd_bgp_draining",
            "1 while drained for maintenance (l3hostctl drain), else 0.",
            value=1 if bgp.draining else 0,
        )
        announce = histogram_family(
            "l3hostd_bgp_announce_latency_seconds",
            "From an input event (endpoint file, TAP up/down, kernel route) to the UPDATE "
            "carrying its change written to the peer's socket, once per burst and peer; "
            "established sessions only.",
        )
        add_histogram(announce, [], bgp.announce_latency)
        yield announce
        install = histogram_family(
            "l3hostd_bgp_install_latency_seconds",
            "From an UPDATE received to every route it changed written to the kernel, once "
            "per burst of UPDATEs.",
        )
        add_histogram(install, [], bgp.install_latency)
        yield install


# ---- dataplane ----------------------------------------------------------------------------


class DataplaneCollector(Collector):
    """Endpoints by state, kernel routes we own, reconcilers, the firewall's nft size.

    The nft size is read from the kernel (:mod:`l3hostd.metrics_nft`) by :meth:`refresh`,
    which the HTTP server awaits before each scrape: in a worker thread (the kernel
    serializes a big table for tens of milliseconds; the event loop goes on meanwhile),
    at most every :data:`NFT_REFRESH_INTERVAL` seconds."""

    def __init__(self, dataplane: Callable[[], Dataplane],
                 bgp: Callable[[], BgpManager | None] = lambda: None,
                 nft_reader: Callable[[], NftTableSize] = table_size) -> None:
        self._dataplane = dataplane
        self._bgp = bgp
        self._nft_reader = nft_reader
        self._nft: NftTableSize | None = None
        self._nft_read_at = float("-inf")
        self._nft_error = ""

    async def refresh(self) -> None:
        if self._dataplane().firewall is None:
            self._nft = None
            return
        now = time.monotonic()
        if now - self._nft_read_at < NFT_REFRESH_INTERVAL:
            return
        self._nft_read_at = now
        try:
            self._nft = await asyncio.to_thread(self._nft_reader)
        except OSError as exc:
            self._nft = None
            if str(exc) != self._nft_error:
                log.warning("metrics: cannot read the nft table size: %s", exc)
            self._nft_error = str(exc)
        else:
            self._nft_error = ""

    def collect(self) -> Iterator[Metric]:
        dp = self._dataplane()
        yield from self._endpoints(dp)
        yield from self._routes(dp, self._bgp())
        yield from self._reconcilers(dp)
        yield CounterMetricFamily(
            "l3hostd_dataplane_passes", "Apply passes of the dataplane loop.",
            value=dp.stats.passes,
        )
        yield SummaryMetricFamily(
            "l3hostd_dataplane_pass_seconds",
            "Duration of the dataplane's apply passes (every reconciler, in order).",
            count_value=dp.stats.passes, sum_value=dp.stats.total_pass_seconds,
        )
        yield GaugeMetricFamily(
            "l3hostd_dataplane_synced",
            "1 once the first full sync with the kernel is done (systemd READY).",
            value=1 if dp.synced.is_set() else 0,
        )
        fw = dp.firewall
        nft = self._nft
        if fw is not None and nft is not None:
            yield GaugeMetricFamily(
                "l3hostd_nft_rules",
                "Rules in our nftables tables (every family's table l3hostd), read from the "
                "kernel at most every 5 s.",
                value=nft.rules,
            )
            yield GaugeMetricFamily(
                "l3hostd_nft_sets",
                "Named sets and maps in our nftables tables.",
                value=nft.sets,
            )
            yield GaugeMetricFamily(
                "l3hostd_nft_set_elements",
                "Elements of the named sets and maps in our nftables tables (a range counts "
                "once, as nft lists it).",
                value=nft.elements,
            )
        if fw is not None:
            yield CounterMetricFamily(
                "l3hostd_nft_transactions",
                "nft transactions committed by the firewall reconciler.",
                value=getattr(fw, "transactions", 0),
            )

    @staticmethod
    def _endpoints(dp: Dataplane) -> Iterator[Metric]:
        counts: dict[str, int] = {s.value: 0 for s in EndpointState}
        for s, n in dp.count_states().items():
            counts[s.value] = n
        counts[FIREWALL_PENDING] = 0
        if dp.firewall is not None:
            waiting = dp.firewall_pending
            counts[FIREWALL_PENDING] = waiting
            counts[EndpointState.ACTIVE.value] -= waiting
        family = GaugeMetricFamily(
            "l3hostd_endpoints",
            "Endpoints by state: active (routes installed), firewall-pending (active, "
            "routes held until its nft chains are in), no-interface, interface-down, "
            "conflict, invalid.",
            labels=["state"],
        )
        for state, n in sorted(counts.items()):
            family.add_metric([state], n)
        yield family

    @staticmethod
    def _routes(dp: Dataplane, bgp: BgpManager | None) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "l3hostd_kernel_routes",
            "Routes of ours in the kernel, as last written and confirmed: kind=local are "
            "endpoint host routes (proto l3hostd, 44), kind=learned are BGP routes (proto "
            "l3hostd-bgp, 45).",
            labels=["kind", "family"],
        )
        local = dp.routes.observed
        v6 = sum(1 for key in local if key.dst.version == 6)
        family.add_metric(["local", "ipv4"], len(local) - v6)
        family.add_metric(["local", "ipv6"], v6)
        if bgp is not None:
            v4, v6 = bgp.learned.installed.by_family()
            family.add_metric(["learned", "ipv4"], v4)
            family.add_metric(["learned", "ipv6"], v6)
        yield family

    @staticmethod
    def _reconcilers(dp: Dataplane) -> Iterator[Metric]:
        labels = ["reconciler"]
        batches = CounterMetricFamily(
            "l3hostd_reconciler_batches",
            "Apply batches that wrote to the kernel (or nft).", labels=labels)
        writes = CounterMetricFamily(
            "l3hostd_reconciler_writes", "Write requests (add, change, delete).",
            labels=labels)
        errors = CounterMetricFamily(
            "l3hostd_reconciler_errors",
            "Failed writes and failed reads of the kernel (retried with backoff).",
            labels=labels)
        resyncs = CounterMetricFamily(
            "l3hostd_reconciler_resyncs", "Full re-reads of the kernel (mark-and-sweep).",
            labels=labels)
        objects = GaugeMetricFamily(
            "l3hostd_reconciler_objects", "Objects of ours in the kernel (observed).",
            labels=labels)
        dirty = GaugeMetricFamily(
            "l3hostd_reconciler_dirty",
            "Objects whose kernel state differs from the wish (work left, incl. retries).",
            labels=labels)
        in_sync = GaugeMetricFamily(
            "l3hostd_reconciler_in_sync",
            "1 once the reconciler has read the kernel at least once.", labels=labels)
        apply = histogram_family(
            "l3hostd_reconciler_apply_seconds",
            "Duration of one apply batch (the kernel or nft writes of one pass).", labels)
        last_error = GaugeMetricFamily(
            "l3hostd_reconciler_last_error_info",
            "The reconciler's last error (value 1; absent when there was none).",
            labels=["reconciler", "error"])
        for r in dp.reconcilers:
            name = [r.name]
            stats = r.stats
            batches.add_metric(name, stats.applies)
            writes.add_metric(name, stats.writes)
            errors.add_metric(name, stats.errors)
            resyncs.add_metric(name, stats.resyncs)
            objects.add_metric(name, len(r.observed))
            dirty.add_metric(name, r.dirty_count)
            in_sync.add_metric(name, 1 if r.in_sync else 0)
            add_histogram(apply, name, stats.apply_seconds)
            if stats.last_error:
                last_error.add_metric([r.name, _error_label(stats.last_error)], 1)
        yield from (batches, writes, errors, resyncs, objects, dirty, in_sync, apply,
                    last_error)


# ---- the daemon ---------------------------------------------------------------------------


class DaemonCollector(Collector):
    """Build, start time, endpoint source and link monitor."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def collect(self) -> Iterator[Metric]:
        d = self._daemon
        info = GaugeMetricFamily("l3hostd_build_info", "l3hostd's version (value 1).",
                                 labels=["version", "node"])
        info.add_metric([__version__, d.config.node.name], 1)
        yield info
        yield GaugeMetricFamily("l3hostd_start_time_seconds",
                                "When the daemon started (Unix time).", value=d.started)
        errors: Mapping[str, str] = d.source.errors
        yield GaugeMetricFamily(
            "l3hostd_endpoint_file_errors",
            "Files in the endpoint directory that cannot be used (see l3hostctl show "
            "status).", value=len(errors))
        yield CounterMetricFamily("l3hostd_link_events",
                                  "Link events received from netlink.", value=d.monitor.events)
        yield CounterMetricFamily(
            "l3hostd_link_event_overflows",
            "Netlink event socket overflows (each one triggers a full resync).",
            value=d.monitor.overflows)


def build_registry(daemon: Daemon) -> tuple[CollectorRegistry, list[Refresher]]:
    """Our registry -- the daemon's collectors plus the process collector (CPU, RSS,
    fds) -- and what to await before each scrape."""
    registry = CollectorRegistry()
    dataplane = DataplaneCollector(lambda: daemon.dataplane, lambda: daemon.bgp)
    registry.register(DaemonCollector(daemon))
    registry.register(dataplane)
    registry.register(BgpCollector(lambda: daemon.bgp))
    ProcessCollector(registry=registry)
    return registry, [dataplane.refresh]


# ---- HTTP -----------------------------------------------------------------------------------


class MetricsServer:
    """``GET /metrics`` over HTTP on the running event loop; see the module docstring."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int,
                 retry_interval: float = 5.0, refreshers: Iterable[Refresher] = ()) -> None:
        self.registry = registry
        self.refreshers = list(refreshers)
        self.host = host
        self.port = port
        self.retry_interval = retry_interval
        self._server: asyncio.Server | None = None
        self._binder: asyncio.Task[None] | None = None
        self._clients = 0
        self.scrapes = 0

    @property
    def address(self) -> tuple[str, int] | None:
        """The bound (host, port), e.g. to learn the port picked for port 0."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def start(self) -> None:
        """Bind now; if that fails, log and keep retrying in the background."""
        if not await self._bind(log.error):
            self._binder = asyncio.create_task(self._bind_later(), name="metrics-bind")

    async def _bind(self, report: Callable[..., None]) -> bool:
        try:
            self._server = await asyncio.start_server(
                self._handle, self.host, self.port, limit=MAX_REQUEST, reuse_address=True
            )
        except OSError as exc:
            report("metrics: cannot listen on %s port %d: %s; retrying every %.0fs",
                   self.host, self.port, exc, self.retry_interval)
            return False
        log.info("metrics: serving /metrics on %s port %d", *(self.address or ("?", 0)))
        return True

    async def _bind_later(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval)
            if await self._bind(log.debug):
                return

    async def close(self) -> None:
        if self._binder is not None:
            self._binder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._binder
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            status, body, content_type, head_only = await self._respond(reader)
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode("latin-1")
            )
            if not head_only:
                writer.write(body)
            await asyncio.wait_for(writer.drain(), REQUEST_TIMEOUT)
        except (OSError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients -= 1
            writer.close()

    async def _respond(self, reader: asyncio.StreamReader) -> tuple[str, bytes, str, bool]:
        text = "text/plain; charset=utf-8"
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT)
        except (asyncio.LimitOverrunError, ValueError):
            return "431 Request Header Fields Too Large", b"request too large\n", text, False
        parts = head.split(b"\r\n", 1)[0].split()
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            return "400 Bad Request", b"bad request\n", text, False
        method, target = parts[0], parts[1]
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", b"only GET\n", text, False
        if target.split(b"?", 1)[0] != b"/metrics":
            return "404 Not Found", b"see /metrics\n", text, method == b"HEAD"
        self.scrapes += 1
        for refresh in self.refreshers:
            await refresh()
        accept = ""
        for line in head.split(b"\r\n")[1:]:
            name, _, content = line.partition(b":")
            if name.strip().lower() == b"accept":
                accept = content.strip().decode("latin-1")
        # as prometheus_client's handler: OpenMetrics when asked, else text 0.0.4
        encode, content_type = choose_encoder(accept)
        try:
            body = encode(self.registry)
        except Exception:  # a collector's bug: say so, keep serving
            log.exception("metrics: a collector failed")
            return "500 Internal Server Error", b"collector failed\n", text, False
        return "200 OK", body, content_type, method == b"HEAD"


def server_for(daemon: Daemon) -> MetricsServer | None:
    """The daemon's metrics server on ``metrics.listen``, or None if disabled. The address
    is read once: a reload that changes it needs a restart."""
    config = daemon.config.metrics
    if not config.enabled:
        return None
    registry, refreshers = build_registry(daemon)
    return MetricsServer(registry, str(config.listen.host), config.listen.port,
                         refreshers=refreshers)
