"""/metrics of the real daemon, scraped inside its namespace, checked against the kernel.

One topology (``l3hostd.birdlab``: a BIRD 2 route reflector, two hypervisors running
``l3hostd run`` with the default metrics settings, one VM on each) and one scrape per
hypervisor once the routes have converged. Every number that the kernel also knows is
compared with what the kernel says, read with ``ip route`` and ``nft -j``, never with
what the daemon says elsewhere: learned routes with proto 45, local routes with proto 44,
the rules and set elements of our nft tables. The scrape goes through the configured
listener (127.0.0.1:9469 inside the namespace), and the test checks that nothing listens
on any other address.
"""

from __future__ import annotations

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

from l3hostd.birdlab import BgpTopology
from l3hostd.lab import Hypervisor, Lab, Netns, wait_until

PORT = 9469
SCRAPE = (
    "import sys, urllib.request\n"
    "with urllib.request.urlopen(sys.argv[1], timeout=5) as r:\n"
    "    sys.stdout.write(r.headers['Content-Type'] + '\\n' + r.read().decode())\n"
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

#: The families the issue asks for (names as exposed; counters end in _total).
REQUIRED = {
    "l3hostd_bgp_session_up", "l3hostd_bgp_session_state", "l3hostd_bgp_session_uptime_seconds",
    "l3hostd_bgp_session_flaps_total", "l3hostd_bgp_messages_received_total",
    "l3hostd_bgp_messages_sent_total", "l3hostd_bgp_prefixes_accepted",
    "l3hostd_bgp_prefixes_filtered", "l3hostd_bgp_prefixes_sent",
    "l3hostd_bgp_prefix_updates_received_total", "l3hostd_bgp_max_prefix_exceeded_total",
    "l3hostd_endpoints", "l3hostd_kernel_routes", "l3hostd_reconciler_batches_total",
    "l3hostd_reconciler_errors_total", "l3hostd_reconciler_apply_seconds_bucket",
    "l3hostd_nft_rules", "l3hostd_nft_set_elements",
    "l3hostd_bgp_announce_latency_seconds_bucket", "l3hostd_bgp_install_latency_seconds_bucket",
    "process_resident_memory_bytes",
}


def scrape(ns: Netns, url: str = f"http://127.0.0.1:{PORT}/metrics") -> tuple[str, Samples]:
    out = ns.run(sys.executable, "-c", SCRAPE, url).stdout
    content_type, _, text = out.partition("\n")
    got: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            got[(s.name, frozenset(s.labels.items()))] = s.value
    return content_type, got


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def kernel_routes(hv: Hypervisor, proto: int, family: str) -> int:
    out = hv.ns.ip(family, "route", "show", "table", "all", "proto", str(proto)).stdout
    return sum(1 for line in out.splitlines() if line.strip())


def kernel_nft(ns: Netns) -> tuple[int, int]:
    """(rules, elements of named sets and maps) of every table called l3hostd."""
    doc = json.loads(ns.run("nft", "-j", "list", "ruleset").stdout)["nftables"]
    rules = sum(1 for o in doc if "rule" in o and o["rule"]["table"] == "l3hostd")
    elements = 0
    for o in doc:
        s = o.get("set") or o.get("map")
        if s is not None and s["table"] == "l3hostd":
            elements += len(s.get("elem", ()))
    return rules, elements


def listeners(ns: Netns, port: int) -> set[str]:
    out = ns.run("ss", "-Hltn", f"sport = :{port}").stdout
    return {line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()}


def test_metrics_match_the_kernel_and_listen_on_loopback_only(lab: Lab) -> None:
    topo = BgpTopology(lab, hypervisors=2, speaker="l3hostd")
    topo.start(timeout=30)
    vm1 = topo.add_vm(1, "vm1", 11)
    topo.add_vm(2, "vm2", 12)
    hv1, hv2 = topo.hv(1), topo.hv(2)
    # an endpoint whose TAP does not exist (yet): no-interface
    ghost = hv2.add_vm("ghost", 13)
    hv2.ns.ip("link", "del", ghost.tap)
    hv2.write_endpoint(ghost)
    wait_until(lambda: all(len(topo.learned_routes(i, f)) == 1 for i in (1, 2)
                           for f in ("-4", "-6")), 15, what="routes learned on both")

    def converged(hv: Hypervisor) -> bool:
        status = hv.ctl("show", "status")
        assert isinstance(status, dict)
        return all(r["dirty"] == 0 for r in status["reconcilers"].values())

    wait_until(lambda: converged(hv1) and converged(hv2), 10, what="reconcilers idle")

    # -- hv2: the receiving side --------------------------------------------------------------
    content_type, got = scrape(hv2.ns)
    assert content_type.startswith("text/plain; version=0.0.4")
    names = {name for name, _ in got}
    assert names >= REQUIRED, sorted(REQUIRED - names)
    for peer in ("rr", "rr6"):
        assert value(got, "l3hostd_bgp_session_up", peer=peer) == 1
        assert value(got, "l3hostd_bgp_session_state", peer=peer, state="Established") == 1
        assert value(got, "l3hostd_bgp_session_state", peer=peer, state="Idle") == 0
        assert value(got, "l3hostd_bgp_session_uptime_seconds", peer=peer) > 0
        assert value(got, "l3hostd_bgp_session_flaps_total", peer=peer) == 0
        assert value(got, "l3hostd_bgp_messages_received_total", peer=peer, type="update") >= 1
    # vm1's /32 from rr, its /128 from rr6; vm2's went out once on each session
    assert value(got, "l3hostd_bgp_prefixes_accepted", peer="rr") == 1
    assert value(got, "l3hostd_bgp_prefixes_accepted", peer="rr6") == 1
    assert value(got, "l3hostd_bgp_prefixes_sent", peer="rr", afi="ipv4") == 1
    assert value(got, "l3hostd_bgp_prefixes_sent", peer="rr6", afi="ipv6") == 1
    # installed routes: what the kernel holds, not what the daemon believes
    for family, flag in (("ipv4", "-4"), ("ipv6", "-6")):
        learned = kernel_routes(hv2, 45, flag)
        local = kernel_routes(hv2, 44, flag)
        assert (learned, local) == (1, 1), (family, learned, local)
        assert value(got, "l3hostd_kernel_routes", kind="learned", family=family) == learned
        assert value(got, "l3hostd_kernel_routes", kind="local", family=family) == local
    assert value(got, "l3hostd_endpoints", state="active") == 1
    assert value(got, "l3hostd_endpoints", state="no-interface") == 1
    assert value(got, "l3hostd_endpoints", state="firewall-pending") == 0
    # the firewall's nft tables, as the kernel has them
    rules, elements = kernel_nft(hv2.ns)
    assert rules > 0 and elements > 0
    assert value(got, "l3hostd_nft_rules") == rules
    assert value(got, "l3hostd_nft_set_elements") == elements
    for r in ("routes", "learned-routes", "firewall"):
        assert value(got, "l3hostd_reconciler_batches_total", reconciler=r) >= 1
        assert value(got, "l3hostd_reconciler_errors_total", reconciler=r) == 0
        assert value(got, "l3hostd_reconciler_apply_seconds_count", reconciler=r) >= 1
    # UPDATE received -> routes in the kernel: observed, and fast on an idle lab
    assert value(got, "l3hostd_bgp_install_latency_seconds_count") >= 1
    assert value(got, "l3hostd_bgp_install_latency_seconds_bucket", le="+Inf") >= 1

    # -- hv1: the announcing side -------------------------------------------------------------
    # vm1's endpoint file appeared after the sessions were up: endpoint -> UPDATE sent,
    # once per session
    _, got1 = scrape(hv1.ns)
    assert value(got1, "l3hostd_bgp_announce_latency_seconds_count") >= 2
    assert value(got1, "l3hostd_bgp_prefix_updates_sent_total", peer="rr") == 1
    assert value(got1, "l3hostd_kernel_routes", kind="local", family="ipv4") == kernel_routes(
        hv1, 44, "-4")
    assert f"{vm1.ipv4}/32" in topo.rr.routes("master4")

    # -- the listener: loopback only, by default ---------------------------------------------
    assert listeners(hv2.ns, PORT) == {"127.0.0.1"}
    refused = topo.rr_ns.run(sys.executable, "-c", SCRAPE,
                             f"http://{hv2.uplink4}:{PORT}/metrics", check=False)
    assert refused.returncode != 0 and "refused" in refused.stderr.lower(), refused.stderr
