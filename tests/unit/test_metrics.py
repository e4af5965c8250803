"""Metrics: the collectors against real objects, the histogram exposition, the HTTP side.

The BGP test runs the real :class:`~l3hostd.bgp.manager.BgpManager` (speaker, FSM, codec,
RIB, learned-route reconciler, dataplane) against a real BGP session on loopback -- the
other end is our own FSM in passive mode -- with the in-memory kernel underneath, and
checks every per-peer family and both latency histograms against what the peer and the
kernel saw. No root needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import random
import re
from collections.abc import Iterator
from ipaddress import IPv4Address, ip_address, ip_network
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry as PromRegistry
from prometheus_client import Histogram as PromHistogram
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from l3hostd.bgp import fsm
from l3hostd.bgp.codec import Codec
from l3hostd.bgp.manager import BgpManager
from l3hostd.bgp.messages import (
    CEASE_ADMIN_SHUTDOWN,
    IPV4_UNICAST,
    Announcement,
    ErrorCode,
    Notification,
    Update,
)
from l3hostd.calc import DataplaneSettings
from l3hostd.config import parse_config, to_settings
from l3hostd.daemon import Daemon, firewall_reconciler
from l3hostd.dataplane import Dataplane
from l3hostd.metrics import (
    MAX_REQUEST,
    NFT_REFRESH_INTERVAL,
    BgpCollector,
    DaemonCollector,
    DataplaneCollector,
    MetricsServer,
    add_histogram,
    histogram_family,
)
from l3hostd.metrics_hist import LATENCY_BUCKETS, Histogram
from l3hostd.metrics_nft import NftTableSize
from l3hostd.model import Endpoint
from l3hostd.netlink.fake import FakeKernel
from l3hostd.promtext import CollectorRegistry, generate_text

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(registry: CollectorRegistry | PromRegistry) -> Samples:
    """Parse the exposition exactly as a scraper would (ours as the daemon writes it,
    prometheus_client's reference registry with its own writer)."""
    if isinstance(registry, CollectorRegistry):
        text = generate_text(registry).decode()
    else:
        text = generate_latest(registry).decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def labelled(got: Samples, name: str) -> list[dict[str, str]]:
    return [dict(lbl) for (n, lbl) in got if n == name]


# ---- histogram --------------------------------------------------------------------------


def test_histogram_exposition_equals_prometheus_clients_own() -> None:
    values = [0.0, 0.0005, 0.0007, 0.001, 0.02, 0.1, 3.0, 30.0, 31.0, 1e9]
    ours = Histogram()
    for v in values:
        ours.observe(v)
    ref = PromRegistry()
    prom = PromHistogram("l3hostd_x_seconds", "x", buckets=LATENCY_BUCKETS, registry=ref)
    for v in values:
        prom.observe(v)

    class One:
        def collect(self) -> Iterator[object]:
            family = histogram_family("l3hostd_x_seconds", "x")
            add_histogram(family, [], ours)
            yield family

    mine = CollectorRegistry()
    mine.register(One())  # type: ignore[arg-type]
    want = {k: v for k, v in samples(ref).items() if not k[0].endswith("_created")}
    assert samples(mine) == want
    assert value(want, "l3hostd_x_seconds_bucket", le="0.001") == 4  # le is inclusive
    assert value(want, "l3hostd_x_seconds_count") == len(values) == ours.count


def test_histogram_refuses_unsorted_bounds() -> None:
    with pytest.raises(ValueError):
        Histogram((0.1, 0.01))


# ---- dataplane: endpoints, local routes, reconcilers ----------------------------------------


def ep(eid: str, iface: str, *ips: str) -> Endpoint:
    return Endpoint(eid, iface, "fa:16:3e:00:00:01", tuple(ip_address(i) for i in ips))


def test_dataplane_collector_counts_endpoints_routes_and_reconciler_work() -> None:
    k = FakeKernel()
    k.add_link("tapa")
    k.add_link("tapb", up=False)
    dp = Dataplane(k, DataplaneSettings())
    registry = CollectorRegistry()
    registry.register(DataplaneCollector(lambda: dp))

    async def go() -> None:
        dp.on_endpoints({e.id: e for e in (
            ep("a", "tapa", "10.0.0.1", "2001:db8::1"),
            ep("b", "tapb", "10.0.0.2"),
            ep("c", "tapc", "10.0.0.3"),
            ep("d", "tapd", "10.0.0.1"),  # claims a's address
        )}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()

    asyncio.run(go())
    got = samples(registry)
    states = {lbl["state"]: value(got, "l3hostd_endpoints", **lbl)
              for lbl in labelled(got, "l3hostd_endpoints")}
    assert states == {"active": 1, "no-interface": 1, "interface-down": 1, "conflict": 1,
                      "invalid": 0, "firewall-pending": 0}
    kernel_v4 = sum(1 for key in k.routes if key.dst.version == 4)
    kernel_v6 = sum(1 for key in k.routes if key.dst.version == 6)
    assert (kernel_v4, kernel_v6) == (1, 1)
    assert value(got, "l3hostd_kernel_routes", kind="local", family="ipv4") == kernel_v4
    assert value(got, "l3hostd_kernel_routes", kind="local", family="ipv6") == kernel_v6
    assert {"kind": "learned", "family": "ipv4"} not in labelled(got, "l3hostd_kernel_routes")
    batches = value(got, "l3hostd_reconciler_batches_total", reconciler="routes")
    assert batches >= 1
    # every batch that wrote is timed once
    assert value(got, "l3hostd_reconciler_apply_seconds_count", reconciler="routes") == batches
    assert value(got, "l3hostd_reconciler_objects", reconciler="routes") == 2
    assert value(got, "l3hostd_reconciler_errors_total", reconciler="routes") == 0
    assert value(got, "l3hostd_dataplane_synced") == 1
    assert value(got, "l3hostd_dataplane_passes_total") == dp.stats.passes


def test_reconciler_errors_and_last_error_follow_a_failing_write() -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp = Dataplane(k, DataplaneSettings())
    registry = CollectorRegistry()
    registry.register(DataplaneCollector(lambda: dp))

    async def go() -> None:
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        k.fail_next["route-add"] = errno.ENOMEM
        dp.on_endpoints({"a": ep("a", "tapa", "10.0.0.1")}, ())
        await dp.apply_once()

    asyncio.run(go())
    got = samples(registry)
    assert value(got, "l3hostd_reconciler_errors_total", reconciler="routes") == 1
    (err,) = [lbl for lbl in labelled(got, "l3hostd_reconciler_last_error_info")
              if lbl["reconciler"] == "routes"]
    assert "ENOMEM" in err["error"]
    assert value(got, "l3hostd_reconciler_dirty", reconciler="routes") == 1


# ---- nft size -------------------------------------------------------------------------------


def test_nft_size_is_read_before_a_scrape_at_most_every_few_seconds() -> None:
    cfg = to_settings(parse_config({"node": {"name": "hv1", "router_id": "192.0.2.11",
                                             "asn": 65501}}))
    dp = Dataplane(FakeKernel(), DataplaneSettings(), firewall=firewall_reconciler(cfg))
    reads: list[int] = []

    def reader() -> NftTableSize:
        reads.append(1)
        if len(reads) == 2:
            raise PermissionError(1, "Operation not permitted")
        return NftTableSize(rules=40 + len(reads), sets=6, elements=12)

    collector = DataplaneCollector(lambda: dp, nft_reader=reader)
    registry = CollectorRegistry()
    registry.register(collector)
    assert ("l3hostd_nft_rules", frozenset()) not in samples(registry)  # not read yet

    async def go() -> None:
        await collector.refresh()
        got = samples(registry)
        assert value(got, "l3hostd_nft_rules") == 41
        assert value(got, "l3hostd_nft_sets") == 6
        assert value(got, "l3hostd_nft_set_elements") == 12
        await collector.refresh()  # within NFT_REFRESH_INTERVAL: not read again
        assert len(reads) == 1
        collector._nft_read_at -= NFT_REFRESH_INTERVAL
        await collector.refresh()  # fails: the gauges go rather than lie
        assert ("l3hostd_nft_rules", frozenset()) not in samples(registry)
        collector._nft_read_at -= NFT_REFRESH_INTERVAL
        await collector.refresh()
        assert value(samples(registry), "l3hostd_nft_rules") == 43

    asyncio.run(go())


# ---- BGP: a real session on loopback -------------------------------------------------------------


class PassivePeer(asyncio.Protocol):
    """The far end: our own FSM, passive, on a listening socket (a reflector stand-in)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = fsm.SessionConfig(
            local_asn=65501, peer_asn=65501, router_id=IPv4Address("192.0.2.254"),
            families=frozenset({IPV4_UNICAST}), graceful_restart=False, passive=True,
        )
        self.codec = Codec(65501, 65501)
        self.session = fsm.Session(config, self.codec, random.Random(1))
        self.session.start(self.loop.time())
        self.session.handle_timer(self.loop.time() + 10)  # IdleHold over: now in Active
        assert self.session.state is fsm.State.ACTIVE
        self.transport: asyncio.Transport | None = None
        self.established = asyncio.Event()
        self.updates: list[Update] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.session.connection_made(self.loop.time())
        self.pump()

    def data_received(self, data: bytes) -> None:
        self.session.receive_data(data, self.loop.time())
        self.pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self.session.connection_lost(self.loop.time())
        self.pump()

    def pump(self) -> None:
        for action in self.session.take_actions():
            if isinstance(action, fsm.Send) and self.transport is not None:
                self.transport.write(action.data)
            elif isinstance(action, fsm.Disconnect) and self.transport is not None:
                self.transport.close()
            elif isinstance(action, fsm.Established):
                self.established.set()
            elif isinstance(action, fsm.UpdateReceived):
                self.updates.append(action.update)

    def send(self, announce: list[str], withdraw: list[str] = ()) -> None:  # type: ignore[assignment]
        nh = ip_address("192.0.2.1")
        messages = self.codec.encode_updates(
            [Announcement(ip_network(p), nh) for p in announce], [ip_network(p) for p in withdraw]
        )
        self.session.send_updates(messages, self.loop.time())
        self.pump()

    def received_prefixes(self) -> set[str]:
        """Prefixes announced to us. Our next hop is 127.0.0.1 here, which the codec
        refuses (RFC 7606 treat-as-withdraw): those count as announced too."""
        out = {str(r.prefix) for u in self.updates for r in u.all_announced()}
        out.update(str(p) for u in self.updates if "next hop" in u.treat_as_withdraw
                   for p, _ in u.withdrawn)
        return out


async def wait(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {predicate}")
        await asyncio.sleep(0.005)


def test_bgp_collector_over_a_real_session_matches_the_peer_and_the_kernel() -> None:
    async def go() -> None:
        loop = asyncio.get_running_loop()
        peer = PassivePeer()
        server = await loop.create_server(lambda: peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        cfg = to_settings(parse_config({
            "node": {"name": "hv1", "router_id": "192.0.2.11", "asn": 65501},
            "bgp": {"graceful_restart": {"enabled": False},
                    "peers": [{"name": "rr", "address": "127.0.0.1", "port": port,
                               "asn": 65501, "families": ["ipv4"]}]},
        }))
        kernel = FakeKernel()
        kernel.add_link("tapa")
        dp = Dataplane(kernel, DataplaneSettings())
        bgp = BgpManager(cfg, dp, kernel)
        registry = CollectorRegistry()
        registry.register(DataplaneCollector(lambda: dp, lambda: bgp))
        registry.register(BgpCollector(lambda: bgp))
        dp.on_links(await kernel.dump_links())
        dp.set_ready()
        task = asyncio.create_task(dp.run())
        try:
            bgp.start()
            got = samples(registry)
            assert value(got, "l3hostd_bgp_session_up", peer="rr") == 0
            assert value(got, "l3hostd_bgp_session_state", peer="rr", state="Idle") == 1
            assert value(got, "l3hostd_bgp_peer_info", peer="rr", address="127.0.0.1",
                         asn="65501", families="ipv4") == 1
            # the first connect waits connect_delay (2 s, jittered)
            await asyncio.wait_for(peer.established.wait(), 5)
            runtime = bgp.peers["rr"]
            await wait(lambda: runtime.eor_sent)
            got = samples(registry)
            assert value(got, "l3hostd_bgp_session_up", peer="rr") == 1
            states = {lbl["state"]: value(got, "l3hostd_bgp_session_state", **lbl)
                      for lbl in labelled(got, "l3hostd_bgp_session_state")}
            assert states == {"Idle": 0, "Connect": 0, "Active": 0, "OpenSent": 0,
                              "OpenConfirm": 0, "Established": 1}
            assert value(got, "l3hostd_bgp_messages_received_total", peer="rr",
                         type="open") == 1
            assert value(got, "l3hostd_bgp_messages_sent_total", peer="rr", type="open") == 1
            assert value(got, "l3hostd_bgp_session_uptime_seconds", peer="rr") >= 0
            assert value(got, "l3hostd_bgp_install_latency_seconds_count") == 0
            assert value(got, "l3hostd_bgp_announce_latency_seconds_count") == 0

            # the peer sends routes: accepted, installed, timed once
            peer.send(["10.9.0.1/32", "10.9.0.2/32", "10.9.0.3/32"])
            await wait(lambda: len(kernel.learned) == 3)
            await wait(lambda: bgp.install_latency.count >= 1)
            got = samples(registry)
            assert value(got, "l3hostd_kernel_routes", kind="learned", family="ipv4") == 3
            assert value(got, "l3hostd_kernel_routes", kind="learned", family="ipv6") == 0
            assert value(got, "l3hostd_bgp_prefixes_accepted", peer="rr") == 3
            assert value(got, "l3hostd_bgp_prefix_updates_received_total", peer="rr") == 3
            assert value(got, "l3hostd_bgp_rib_prefixes") == 3
            assert value(got, "l3hostd_bgp_install_latency_seconds_count") == 1
            assert 0 < value(got, "l3hostd_bgp_install_latency_seconds_sum") < 1
            # UPDATE counted by the FSM (and End-of-RIB is an UPDATE too on the sent side)
            assert value(got, "l3hostd_bgp_messages_received_total", peer="rr",
                         type="update") == 1

            # a VM comes: its route is installed, announced, and that is timed
            dp.on_endpoints({"a": ep("a", "tapa", "10.1.0.5")}, ())
            await wait(lambda: "10.1.0.5/32" in peer.received_prefixes())
            got = samples(registry)
            assert value(got, "l3hostd_bgp_announce_latency_seconds_count") == 1
            assert 0 < value(got, "l3hostd_bgp_announce_latency_seconds_sum") < 1
            assert value(got, "l3hostd_bgp_prefixes_sent", peer="rr", afi="ipv4") == 1
            assert value(got, "l3hostd_bgp_prefixes_sent", peer="rr", afi="ipv6") == 0
            assert value(got, "l3hostd_bgp_prefix_updates_sent_total", peer="rr") == 1
            assert value(got, "l3hostd_bgp_exported_prefixes", source="endpoint") == 1
            assert value(got, "l3hostd_kernel_routes", kind="local", family="ipv4") == len(
                kernel.routes) == 1
            assert value(got, "l3hostd_endpoints", state="active") == 1

            # its TAP goes down long after that pass: the withdrawal is timed from the
            # link event, not from the last pass's input
            await asyncio.sleep(0.5)
            before = bgp.announce_latency.sum
            tap = next(iter(kernel.links.values()))
            dp.on_link(kernel.set_link_up(tap.ifindex, False))
            await wait(lambda: bgp.announce_latency.count == 2)  # the withdrawal went out
            assert not kernel.routes
            assert bgp.announce_latency.sum - before < 0.2
            dp.on_link(kernel.set_link_up(tap.ifindex, True))
            await wait(lambda: bgp.announce_latency.count == 3 and len(kernel.routes) == 1)

            # a withdrawal: one route less in the kernel and in the metrics
            peer.send([], ["10.9.0.2/32"])
            await wait(lambda: len(kernel.learned) == 2)
            await wait(lambda: bgp.install_latency.count >= 2)
            got = samples(registry)
            assert value(got, "l3hostd_kernel_routes", kind="learned", family="ipv4") == 2
            assert value(got, "l3hostd_bgp_prefix_withdraws_received_total", peer="rr") == 1
            assert value(got, "l3hostd_bgp_prefixes_accepted", peer="rr") == 2

            # the peer shuts the session down: a flap with its reason
            peer.session.stop(loop.time(), Notification(ErrorCode.CEASE, CEASE_ADMIN_SHUTDOWN))
            peer.pump()
            await wait(lambda: runtime.negotiated is None)
            got = samples(registry)
            assert value(got, "l3hostd_bgp_session_up", peer="rr") == 0
            assert value(got, "l3hostd_bgp_session_flaps_total", peer="rr") == 1
            assert value(got, "l3hostd_bgp_session_uptime_seconds", peer="rr") == 0
            assert value(got, "l3hostd_bgp_messages_received_total", peer="rr",
                         type="notification") == 1
            (err,) = labelled(got, "l3hostd_bgp_last_error_info")
            assert err["peer"] == "rr" and err["error"]
            await wait(lambda: not kernel.learned)  # no graceful restart: routes go
        finally:
            bgp.stop(graceful=False)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await bgp.close()
            server.close()

    asyncio.run(asyncio.wait_for(go(), 30))


def test_a_peer_removed_from_the_manager_disappears_from_the_scrape() -> None:
    """Collectors read the live peer list: a reload that removes a peer removes its series."""

    async def go() -> None:
        cfg = to_settings(parse_config({
            "node": {"name": "hv1", "router_id": "192.0.2.11", "asn": 65501},
            "bgp": {"peers": [{"name": "rr1", "address": "127.0.0.1", "port": 9,
                               "asn": 65501},
                              {"name": "rr2", "address": "127.0.0.2", "port": 9,
                               "asn": 65501}]},
        }))
        kernel = FakeKernel()
        dp = Dataplane(kernel, DataplaneSettings())
        bgp = BgpManager(cfg, dp, kernel)
        registry = CollectorRegistry()
        registry.register(BgpCollector(lambda: bgp))
        bgp.start()
        try:
            got = samples(registry)
            assert {lbl["peer"] for lbl in labelled(got, "l3hostd_bgp_session_up")} == {
                "rr1", "rr2"}
            gone = bgp.peers.pop("rr2")
            gone.speaker.stop(None)  # type: ignore[attr-defined]
            got = samples(registry)
            assert {lbl["peer"] for lbl in labelled(got, "l3hostd_bgp_session_up")} == {"rr1"}
            assert all(lbl.get("peer") != "rr2" for (_, lbls) in got for lbl in [dict(lbls)])
        finally:
            bgp.stop(graceful=False)
            await bgp.close()

    asyncio.run(go())


# ---- HTTP ------------------------------------------------------------------------------------


async def http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return lines[0], headers, body


def test_http_server_serves_metrics_and_nothing_else() -> None:
    registry = CollectorRegistry()
    hist = Histogram()
    hist.observe(0.002)

    class One:
        def collect(self) -> Iterator[object]:
            family = histogram_family("l3hostd_bgp_announce_latency_seconds", "doc")
            add_histogram(family, [], hist)
            yield family

    registry.register(One())  # type: ignore[arg-type]

    async def go() -> None:
        server = MetricsServer(registry, "127.0.0.1", 0)
        await server.start()
        assert server.address is not None
        host, port = server.address
        assert host == "127.0.0.1"
        try:
            status, headers, body = await http(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status == "HTTP/1.1 200 OK"
            assert headers["Content-Type"].startswith("text/plain; version=")
            assert int(headers["Content-Length"]) == len(body)
            names = {f.name for f in text_string_to_metric_families(body.decode())}
            assert names == {"l3hostd_bgp_announce_latency_seconds"}
            status, _, body = await http(port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
            assert status == "HTTP/1.1 200 OK" and b"_bucket" in body
            status, headers, body = await http(
                port, b"GET /metrics HTTP/1.1\r\n"
                b"Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5\r\n\r\n")
            assert headers["Content-Type"].startswith("application/openmetrics-text")
            assert body.endswith(b"# EOF\n")
            status, headers, body = await http(port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
            assert status == "HTTP/1.1 200 OK" and body == b""
            assert int(headers["Content-Length"]) > 0
            status, _, _ = await http(port, b"GET / HTTP/1.1\r\n\r\n")
            assert status == "HTTP/1.1 404 Not Found"
            status, _, _ = await http(port, b"POST /metrics HTTP/1.1\r\n\r\n")
            assert status == "HTTP/1.1 405 Method Not Allowed"
            status, _, _ = await http(port, b"nonsense\r\n\r\n")
            assert status == "HTTP/1.1 400 Bad Request"
            huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (MAX_REQUEST * 2) + b"\r\n\r\n"
            status, _, _ = await http(port, huge)
            assert status.startswith("HTTP/1.1 431")
            assert server.scrapes == 4  # GET, GET, GET, HEAD
        finally:
            await server.close()

    asyncio.run(go())


def test_a_failing_collector_gives_500_and_the_server_keeps_serving() -> None:
    class Broken:
        def collect(self) -> Iterator[object]:
            raise RuntimeError("bug")

    registry = CollectorRegistry()
    registry.register(Broken())  # type: ignore[arg-type]

    async def go() -> None:
        server = MetricsServer(registry, "127.0.0.1", 0)
        await server.start()
        assert server.address is not None
        try:
            for _ in range(2):
                status, _, _ = await http(server.address[1], b"GET /metrics HTTP/1.1\r\n\r\n")
                assert status == "HTTP/1.1 500 Internal Server Error"
        finally:
            await server.close()

    asyncio.run(go())


def test_a_port_in_use_is_retried_not_fatal() -> None:
    async def go() -> None:
        first = MetricsServer(CollectorRegistry(), "127.0.0.1", 0)
        await first.start()
        assert first.address is not None
        port = first.address[1]
        second = MetricsServer(CollectorRegistry(), "127.0.0.1", port, retry_interval=0.05)
        await second.start()  # logs, does not raise
        assert second.address is None
        await first.close()
        await wait(lambda: second.address is not None, 2)
        status, _, _ = await http(port, b"GET /metrics HTTP/1.1\r\n\r\n")
        assert status == "HTTP/1.1 200 OK"
        await second.close()

    asyncio.run(go())


def test_metrics_are_on_and_on_loopback_by_default() -> None:
    cfg = to_settings(parse_config({"node": {"name": "hv1", "router_id": "192.0.2.11",
                                             "asn": 65501}}))
    assert cfg.metrics.enabled is True
    assert str(cfg.metrics.listen) == "127.0.0.1:9469"
    off = parse_config({"node": {"name": "hv1", "router_id": "192.0.2.11", "asn": 65501},
                        "metrics": {"enabled": False}})
    assert off.metrics.enabled is False


# ---- the names: dashboard and README follow the exposition -------------------------------------


ROOT = Path(__file__).resolve().parents[2]


def _exposed_names() -> tuple[set[str], dict[str, str]]:
    """Sample names a daemon's registry exposes (with a peer and the firewall on), and
    each family's HELP text."""
    cfg = to_settings(parse_config({
        "node": {"name": "hv1", "router_id": "192.0.2.11", "asn": 65501},
        "bgp": {"peers": [{"name": "rr", "address": "127.0.0.1", "port": 9, "asn": 65501}]},
        "endpoints": {"directory": str(ROOT / "config" / "endpoints")},
    }))

    async def go() -> str:
        daemon = Daemon(cfg)
        registry = CollectorRegistry()
        dataplane = DataplaneCollector(lambda: daemon.dataplane, lambda: daemon.bgp,
                                       nft_reader=lambda: NftTableSize(1, 1, 1))
        await dataplane.refresh()
        registry.register(DaemonCollector(daemon))
        registry.register(dataplane)
        registry.register(BgpCollector(lambda: daemon.bgp))
        assert daemon.bgp is not None
        daemon.bgp.start()
        try:
            return generate_text(registry).decode()
        finally:
            daemon.bgp.stop(graceful=False)
            await daemon.bgp.close()

    text = asyncio.run(go())
    names: set[str] = set()
    helps: dict[str, str] = {}
    suffixes = {"counter": [""], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"],
                "summary": ["_sum", "_count"]}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names.update(name + s for s in suffixes[kind])
        elif line.startswith("# HELP "):
            _, _, name, *doc = line.split(" ", 3)
            helps[name] = doc[0] if doc else ""
    return names, helps


def _expand(pattern: str) -> set[str]:
    """``a_{b,c}_d`` -> {a_b_d, a_c_d} (nested left to right)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return {pattern}
    out: set[str] = set()
    for choice in match.group(1).split(","):
        out |= _expand(pattern[: match.start()] + choice + pattern[match.end():])
    return out


def test_every_family_is_documented_in_help_and_in_the_readme() -> None:
    names, helps = _exposed_names()
    assert all(len(doc) > 20 for name, doc in helps.items() if name.startswith("l3hostd_"))
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Metrics"):readme.index("## How it works")]
    documented: set[str] = set()
    for pattern in re.findall(r"`(l3hostd_[a-z_{},]+)`", section):
        documented |= _expand(pattern)
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in names if n.startswith("l3hostd_")}
    missing = {f for f in families if f not in documented}
    assert not missing, f"not in the README's metrics table: {sorted(missing)}"


def test_the_grafana_dashboard_queries_only_exposed_metrics() -> None:
    names, _ = _exposed_names()
    dashboard = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    assert {v["name"] for v in dashboard["templating"]["list"]} == {
        "datasource", "instance", "peer"}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", ())]
    exprs += [v["definition"] for v in dashboard["templating"]["list"] if "definition" in v]
    used = {m for e in exprs for m in re.findall(r"\b((?:l3hostd|process)_[a-z_]+)", e)}
    assert used, "no queries?"
    assert used <= names | {"process_resident_memory_bytes"}, sorted(used - names)
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("session", "prefixes", "routes installed", "endpoints", "reconciler errors",
                  "apply duration", "event to update sent", "update received to route",
                  "nftables"):
        assert topic in titles, topic
