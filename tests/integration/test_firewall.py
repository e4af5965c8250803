"""Acceptance: the nftables firewall enforces security groups on real traffic.

Topology (``fwlab.topology``): a ``client`` namespace stands for the outside world on the
hypervisor's uplink (100.64.1.254, fd00:64:1::254); one hypervisor runs ``l3hostd run``
with ``firewall: {enabled: true}``; VMs sit behind TAP-named veths in 10.10.0.0/24 and
2001:db8:10::/64. Each test builds its own lab and writes its own security groups (never
Neutron's "default", whose all-egress rules would hide what is being tested).

Negative checks always run against a live listener, so "blocked" means dropped (a closed
port would answer with a RST, which is itself traffic getting through), and each one is
paired with a positive control on the same path so a broken lab cannot pass as a firewall.
"""

from __future__ import annotations

import signal
import time

import pytest
from fwlab import (
    CLIENT4,
    CLIENT6,
    blocked_within,
    connects_within,
    nft_table,
    no_ping,
    pings,
    raw_dhcp_discover,
    rule,
    start,
    tcp_connect,
    tcp_listen,
    topology,
    udp_arrives,
    udp_listen,
    udp_send,
    wait_active,
    write_endpoint,
    write_group,
    write_members,
)

from l3hostd.lab import Lab

ANY4, ANY6 = "0.0.0.0/0", "::/0"
EGRESS_ANY = [rule("egress"), rule("egress", ethertype="IPv6")]
SSH_AND_PING = [
    rule("ingress", "tcp", 22, prefix=ANY4),
    rule("ingress", "icmp", prefix=ANY4),
    rule("ingress", "tcp", 22, "IPv6", prefix=ANY6),
    rule("ingress", "icmpv6", ethertype="IPv6", prefix=ANY6),
]


def blocked(outcome: str) -> bool:
    return outcome != "ok"


# ---- 1. ingress and egress rules ------------------------------------------------------------


def test_ingress_admits_only_the_listed_port_and_icmp(lab: Lab) -> None:
    hv, client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "ssh", SSH_AND_PING)
    start(hv)
    write_endpoint(hv, vm, ["ssh"])
    wait_active(hv, vm)
    assert hv.proc is not None and hv.proc.poll() is None
    assert nft_table(hv).returncode == 0, "table inet l3hostd must exist while l3hostd runs"
    tcp_listen(lab, vm.ns, ["0.0.0.0,22", "0.0.0.0,80", "::,22", "::,80"])

    out = connects_within(client, vm.ipv4, 22)
    assert out == "ok", f"client -> VM tcp/22 (allowed by group ssh) over IPv4: {out}"
    out = connects_within(client, vm.ipv6, 22)
    assert out == "ok", f"client -> VM tcp/22 (allowed by group ssh) over IPv6: {out}"
    assert pings(client, vm.ipv4), "client -> VM ping over IPv4 (icmp allowed)"
    assert pings(client, vm.ipv6), "client -> VM ping over IPv6 (icmpv6 allowed)"

    out = tcp_connect(client, vm.ipv4, 80)
    assert blocked(out), f"client -> VM tcp/80 must be dropped (no rule), got {out}"
    out = tcp_connect(client, vm.ipv6, 80)
    assert blocked(out), f"client -> VM tcp/80 over IPv6 must be dropped (no rule), got {out}"
    # No egress rule at all: the VM can answer (conntrack) but not open anything.
    assert no_ping(vm.ns, CLIENT4), "VM -> client ping must fail: no egress rule"


def test_egress_allows_only_the_listed_port(lab: Lab) -> None:
    hv, client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "http-out", [rule("egress", "tcp", 80, prefix=ANY4)])
    start(hv)
    write_endpoint(hv, vm, ["http-out"])
    wait_active(hv, vm)
    servers = tcp_listen(lab, client, ["0.0.0.0,80", "0.0.0.0,81", "::,80"])

    out = connects_within(vm.ns, CLIENT4, 80)
    assert out == "ok", f"VM -> client tcp/80 (egress rule) must succeed: {out}"
    assert f"accept 80 {vm.ipv4}" in servers.text(), "the client saw the VM's own address"
    out = tcp_connect(vm.ns, CLIENT4, 81)
    assert blocked(out), f"VM -> client tcp/81 must be dropped (egress only tcp/80): {out}"
    out = tcp_connect(vm.ns, CLIENT6, 80)
    assert blocked(out), f"VM -> client tcp/80 over IPv6 must be dropped (IPv4 rule): {out}"
    assert no_ping(vm.ns, CLIENT4), "VM -> client ping must fail (no icmp egress)"
    assert no_ping(client, vm.ipv4), "client -> VM ping must fail (no ingress)"


def test_changing_an_endpoints_groups_takes_effect(lab: Lab) -> None:
    """Rewriting only ``security_groups`` in an endpoint file (same TAP, IPs and MAC)
    re-applies its rules within a few seconds, both ways."""
    hv, client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "ssh", SSH_AND_PING)
    write_group(hv, "none", [])
    start(hv)
    write_endpoint(hv, vm, ["none"])
    wait_active(hv, vm)
    tcp_listen(lab, vm.ns, ["0.0.0.0,22"])
    out = tcp_connect(client, vm.ipv4, 22)
    assert blocked(out), f"client -> VM tcp/22 with no rules must be dropped: {out}"

    write_endpoint(hv, vm, ["ssh"])
    out = connects_within(client, vm.ipv4, 22, within=5)
    assert out == "ok", f"client -> VM tcp/22 after the VM joined group ssh: {out}"

    write_endpoint(hv, vm, ["none"])
    out = blocked_within(client, vm.ipv4, 22, within=5)
    assert blocked(out), f"client -> VM tcp/22 after the VM left group ssh: {out}"


def test_editing_a_group_takes_effect(lab: Lab) -> None:
    """Rewriting a security-group file re-applies it to its members (new connections)."""
    hv, client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "svc", [rule("ingress", "tcp", 22)])
    start(hv)
    write_endpoint(hv, vm, ["svc"])
    wait_active(hv, vm)
    tcp_listen(lab, vm.ns, ["0.0.0.0,22", "0.0.0.0,80"])
    out = connects_within(client, vm.ipv4, 22)
    assert out == "ok", f"client -> VM tcp/22 (group svc allows 22): {out}"

    write_group(hv, "svc", [rule("ingress", "tcp", 80)])
    out = connects_within(client, vm.ipv4, 80, within=5)
    assert out == "ok", f"client -> VM tcp/80 after svc was changed to allow 80: {out}"
    out = tcp_connect(client, vm.ipv4, 22)
    assert blocked(out), f"client -> VM tcp/22 after svc no longer allows it: {out}"


# ---- 2. anti-spoofing -----------------------------------------------------------------------


def test_spoofed_source_ip_reaches_nobody(lab: Lab) -> None:
    hv, client, (vm1, vm2) = topology(lab, [("vm1", 11), ("vm2", 12)])
    write_group(hv, "udp", [*EGRESS_ANY, rule("ingress", "udp", 5000),
                            rule("ingress", "udp", 5000, "IPv6")])
    start(hv)
    pair = "10.10.0.98"
    write_endpoint(hv, vm1, ["udp"], pairs=[pair])
    write_endpoint(hv, vm2, ["udp"])
    wait_active(hv, vm1, vm2)
    spoof4, spoof6 = "10.10.0.99", "2001:db8:10::99"
    vm1.ns.ip("addr", "add", f"{spoof4}/32", "dev", "eth0")
    vm1.ns.ip("addr", "add", f"{pair}/32", "dev", "eth0")
    vm1.ns.ip("-6", "addr", "add", f"{spoof6}/128", "dev", "eth0", "nodad")
    at_client = udp_listen(lab, client, ["0.0.0.0,5000", "::,5000"])
    at_vm2 = udp_listen(lab, vm2.ns, ["0.0.0.0,5000"])

    def send(dst: str, marker: str, src: str) -> None:
        udp_send(vm1.ns, dst, 5000, marker, source=src)

    # Controls: the VM's own addresses and its allowed address pair get through.
    assert udp_arrives(at_client, lambda: send(CLIENT4, "own4", vm1.ipv4), "own4"), \
        "VM -> client UDP from the VM's own IPv4 must arrive"
    assert udp_arrives(at_vm2, lambda: send(vm2.ipv4, "own-vm2", vm1.ipv4), "own-vm2"), \
        "vm1 -> vm2 UDP from vm1's own IPv4 must arrive"
    assert udp_arrives(at_client, lambda: send(CLIENT6, "own6", vm1.ipv6), "own6"), \
        "VM -> client UDP from the VM's own IPv6 must arrive"
    assert udp_arrives(at_client, lambda: send(CLIENT4, "pair4", pair), "pair4"), \
        "VM -> client UDP from an allowed_address_pairs address must arrive"

    send(CLIENT4, "spoof4-client", spoof4)
    send(vm2.ipv4, "spoof4-vm2", spoof4)
    send(CLIENT6, "spoof6-client", spoof6)
    # Impersonate vm2 (only now: with vm2's address local, vm1 could no longer reach vm2).
    vm1.ns.ip("addr", "add", f"{vm2.ipv4}/32", "dev", "eth0")
    send(CLIENT4, "as-vm2", vm2.ipv4)
    time.sleep(0.6)
    leaks: list[str] = []
    for listener, marker, what in [
        (at_client, "spoof4-client", f"VM -> client from foreign IPv4 {spoof4}"),
        (at_vm2, "spoof4-vm2", f"vm1 -> vm2 from foreign IPv4 {spoof4}"),
        (at_client, "as-vm2", f"vm1 -> client from vm2's address {vm2.ipv4}"),
        (at_client, "spoof6-client", f"VM -> client from foreign IPv6 {spoof6}"),
    ]:
        if seen := listener.received(marker):
            leaks.append(f"{what}: {seen[0]}")
    assert not leaks, "spoofed packets got through:\n" + "\n".join(leaks)


def test_spoofed_source_ip_does_not_reach_the_hypervisor(lab: Lab) -> None:
    """DNS on the host is open to VMs, but only from their own addresses (a spoofed query
    would make the host's resolver reflect answers at a victim)."""
    hv, _client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "out", EGRESS_ANY)
    start(hv)
    write_endpoint(hv, vm, ["out"])
    wait_active(hv, vm)
    spoof4 = "10.10.0.99"
    vm.ns.ip("addr", "add", f"{spoof4}/32", "dev", "eth0")
    at_host = udp_listen(lab, hv.ns, [f"{hv.uplink4},53"])

    def send(marker: str, src: str) -> None:
        udp_send(vm.ns, hv.uplink4, 53, marker, source=src)

    assert udp_arrives(at_host, lambda: send("own", vm.ipv4), "own"), \
        "VM -> hypervisor udp/53 from the VM's own IPv4 must arrive"
    send("spoofed", spoof4)
    time.sleep(0.6)
    seen = at_host.received("spoofed")
    assert not seen, f"VM -> hypervisor udp/53 from foreign IPv4 {spoof4} got through: {seen}"


def test_spoofed_source_mac_reaches_nobody(lab: Lab) -> None:
    hv, client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "out", EGRESS_ANY)
    start(hv)
    write_endpoint(hv, vm, ["out"])
    wait_active(hv, vm)
    at_client = udp_listen(lab, client, ["0.0.0.0,5000"])

    def send(marker: str) -> None:
        udp_send(vm.ns, CLIENT4, 5000, marker)

    assert udp_arrives(at_client, lambda: send("real-mac"), "real-mac"), \
        "VM -> client UDP with the VM's own MAC must arrive"
    vm.ns.ip("link", "set", "eth0", "address", "fa:16:3e:99:99:99")
    send("fake-mac")
    time.sleep(0.6)
    send("fake-mac")
    time.sleep(0.2)
    seen = at_client.received("fake-mac")
    assert not seen, f"a frame with a source MAC not the endpoint's got through: {seen}"
    # Back to the real MAC: traffic flows again, so the MAC was the only reason.
    vm.ns.ip("link", "set", "eth0", "address", vm.mac)
    assert udp_arrives(at_client, lambda: send("mac-restored"), "mac-restored"), \
        "VM -> client UDP must arrive again once the MAC is restored"


# ---- 3. VM -> hypervisor ---------------------------------------------------------------------


def test_vm_reaches_only_dhcp_and_dns_on_the_hypervisor(lab: Lab) -> None:
    hv, client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "out", EGRESS_ANY)
    start(hv)
    write_endpoint(hv, vm, ["out"])
    wait_active(hv, vm)
    tcp_listen(lab, hv.ns, [f"{hv.uplink4},179", f"{hv.uplink4},22",
                            f"{hv.uplink6},179", f"{hv.uplink6},22"])
    host_udp = udp_listen(lab, hv.ns, ["0.0.0.0,67", f"{hv.uplink4},53"])

    # Controls: the listeners answer the fabric side (the firewall filters VMs only).
    for port in (22, 179):
        out = connects_within(client, hv.uplink4, port)
        assert out == "ok", f"client -> hypervisor tcp/{port} must work (not a VM): {out}"

    # DHCP as a client really sends it: 0.0.0.0:68 -> 255.255.255.255:67, L2 broadcast.
    seen = udp_arrives(host_udp, lambda: raw_dhcp_discover(vm.ns, "eth0", vm.mac, "discover"),
                       "discover")
    assert seen, "a DHCPDISCOVER (from 0.0.0.0) from the VM must reach the host's udp/67"
    assert seen[0].split()[1:4] == ["67", "0.0.0.0", "68"], seen
    # ... and a broadcast renewal from the VM's own address.
    seen = udp_arrives(host_udp, lambda: udp_send(vm.ns, "255.255.255.255", 67, "request",
                                                  sport=68, device="eth0"), "request")
    assert seen, "a DHCP broadcast from the VM's address must reach the host's udp/67"
    seen = udp_arrives(host_udp, lambda: udp_send(vm.ns, hv.uplink4, 53, "dns-query"),
                       "dns-query")
    assert seen, "a DNS query (udp/53) from the VM must reach the host"

    for addr in (hv.uplink4, hv.uplink6):
        for port in (179, 22):
            out = tcp_connect(vm.ns, addr, port)
            assert blocked(out), f"VM -> hypervisor {addr} tcp/{port} must be dropped: {out}"
    assert no_ping(vm.ns, hv.uplink4), "VM -> hypervisor ping must be dropped (not in the list)"


def test_vm_reaches_metadata_through_dnat(lab: Lab) -> None:
    """169.254.169.254:80 is DNAT'ed to the configured metadata_address (default
    127.0.0.1:8775) on the hypervisor."""
    hv, _client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "out", EGRESS_ANY)
    start(hv)
    write_endpoint(hv, vm, ["out"])
    wait_active(hv, vm)
    metadata = tcp_listen(lab, hv.ns, ["127.0.0.1,8775"])
    out = connects_within(vm.ns, "169.254.169.254", 80)
    assert out == "ok", f"VM -> 169.254.169.254:80 (metadata, DNAT to 127.0.0.1:8775): {out}"
    assert "accept 8775" in metadata.text()


# ---- 4. remote groups -----------------------------------------------------------------------


def test_remote_group_admits_exactly_its_members(lab: Lab) -> None:
    hv, client, (web, app, other) = topology(lab, [("vm1", 11), ("vm2", 12), ("vm3", 13)])
    write_group(hv, "web", [rule("ingress", "tcp", 8080, group="app")])
    write_group(hv, "app", EGRESS_ANY)
    write_group(hv, "out", EGRESS_ANY)
    write_members(hv, "app", [])
    start(hv)
    write_endpoint(hv, web, ["web"])
    write_endpoint(hv, app, ["app"])
    write_endpoint(hv, other, ["out"])
    wait_active(hv, web, app, other)
    tcp_listen(lab, web.ns, ["0.0.0.0,8080", "0.0.0.0,8081"])

    out = connects_within(app.ns, web.ipv4, 8080)
    assert out == "ok", f"vm2 (in app) -> vm1:8080 (ingress from group app) must work: {out}"
    out = tcp_connect(app.ns, web.ipv4, 8081)
    assert blocked(out), f"vm2 (in app) -> vm1:8081 must be dropped (rule is 8080): {out}"
    out = tcp_connect(other.ns, web.ipv4, 8080)
    assert blocked(out), f"vm3 (not in app) -> vm1:8080 must be dropped: {out}"
    out = tcp_connect(client, web.ipv4, 8080)
    assert blocked(out), f"client (not in app) -> vm1:8080 must be dropped: {out}"

    # A new local member: admitted as soon as its endpoint says so.
    write_endpoint(hv, other, ["out", "app"])
    out = connects_within(other.ns, web.ipv4, 8080, within=5)
    assert out == "ok", f"vm3 after joining app -> vm1:8080 must work within 5 s: {out}"

    # A member on another hypervisor (group-members/app.yaml): the client's address.
    write_members(hv, "app", [CLIENT4])
    out = connects_within(client, web.ipv4, 8080, within=5)
    assert out == "ok", f"client listed in group-members/app.yaml -> vm1:8080: {out}"

    # Leaving the group closes the door again for new connections.
    write_endpoint(hv, other, ["out"])
    out = blocked_within(other.ns, web.ipv4, 8080, within=5)
    assert blocked(out), f"vm3 after leaving app -> vm1:8080 must be dropped again: {out}"
    write_members(hv, "app", [])
    out = blocked_within(client, web.ipv4, 8080, within=5)
    assert blocked(out), f"client removed from group-members/app.yaml -> vm1:8080: {out}"
    out = tcp_connect(app.ns, web.ipv4, 8080, timeout=2)
    assert out == "ok", f"vm2 (still in app) -> vm1:8080 must still work: {out}"


# ---- 5. closed by default -------------------------------------------------------------------


def test_tap_without_endpoint_file_passes_nothing(lab: Lab) -> None:
    hv, client, (vm, ghost) = topology(lab, [("vm1", 11), ("ghost", 20)])
    # Wire the ghost by hand as l3hostd would, so that routing is not the reason it fails.
    tap = ghost.tap
    hv.ns.ip("route", "add", f"{ghost.ipv4}/32", "dev", tap, "scope", "link")
    hv.ns.ip("-6", "route", "add", f"{ghost.ipv6}/128", "dev", tap)
    hv.ns.ip("neigh", "replace", ghost.ipv4, "lladdr", ghost.mac, "dev", tap, "nud", "permanent")
    hv.ns.ip("-6", "neigh", "replace", ghost.ipv6, "lladdr", ghost.mac, "dev", tap,
             "nud", "permanent")
    hv.ns.ip("-6", "addr", "add", "fe80::1/64", "dev", tap, "nodad")
    hv.ns.sysctl(f"net.ipv4.conf.{tap}.proxy_arp", "1")
    hv.ns.sysctl(f"net.ipv4.neigh.{tap}.proxy_delay", "0")
    # Control, before l3hostd (and its table) exists: the hand-made path works both ways.
    assert pings(client, ghost.ipv4), "lab: client -> ghost IPv4 before l3hostd"
    assert pings(ghost.ns, CLIENT4), "lab: ghost -> client IPv4 before l3hostd"
    assert pings(client, ghost.ipv6), "lab: client -> ghost IPv6 before l3hostd"
    assert pings(ghost.ns, CLIENT6), "lab: ghost -> client IPv6 before l3hostd"

    write_group(hv, "ping", [rule("ingress", "icmp"), rule("ingress", "icmpv6",
                                                           ethertype="IPv6"), *EGRESS_ANY])
    start(hv)
    write_endpoint(hv, vm, ["ping"])
    wait_active(hv, vm)
    assert pings(client, vm.ipv4), "client -> vm1 (with an endpoint file) must work"
    routes = hv.ns.ip("route", "show", f"{ghost.ipv4}/32").stdout
    assert f"dev {tap}" in routes, f"l3hostd must leave the hand-made route alone: {routes!r}"

    assert no_ping(client, ghost.ipv4), "client -> ghost IPv4 must be dropped"
    assert no_ping(ghost.ns, CLIENT4), "ghost -> client IPv4 must be dropped"
    assert no_ping(client, ghost.ipv6), "client -> ghost IPv6 must be dropped"
    assert no_ping(ghost.ns, CLIENT6), "ghost -> client IPv6 must be dropped"
    assert no_ping(ghost.ns, vm.ipv4), "ghost -> vm1 IPv4 must be dropped"


# ---- 6. the daemon dies, enforcement stays --------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "term"])
def test_enforcement_survives_the_daemon(lab: Lab, sig: int) -> None:
    hv, client, (vm,) = topology(lab, [("vm1", 11)])
    write_group(hv, "ssh", SSH_AND_PING)
    start(hv)
    write_endpoint(hv, vm, ["ssh"])
    wait_active(hv, vm)
    tcp_listen(lab, vm.ns, ["0.0.0.0,22", "0.0.0.0,80"])
    out = connects_within(client, vm.ipv4, 22)
    assert out == "ok", f"client -> VM tcp/22 with l3hostd running: {out}"
    out = tcp_connect(client, vm.ipv4, 80)
    assert blocked(out), f"client -> VM tcp/80 with l3hostd running must be dropped: {out}"

    hv.stop(sig)
    listed = nft_table(hv)
    assert listed.returncode == 0, (
        f"table inet l3hostd must stay after {signal.Signals(sig).name}: {listed.stderr}")
    out = connects_within(client, vm.ipv4, 22)
    assert out == "ok", f"client -> VM tcp/22 (new connection) with l3hostd dead: {out}"
    out = tcp_connect(client, vm.ipv4, 80)
    assert blocked(out), f"client -> VM tcp/80 with l3hostd dead must still be dropped: {out}"
    assert pings(client, vm.ipv4), "client -> VM ping with l3hostd dead"

    # Started again, it adopts the table and keeps enforcing.
    hv.start()
    hv.wait_ready()
    wait_active(hv, vm)
    out = connects_within(client, vm.ipv4, 22)
    assert out == "ok", f"client -> VM tcp/22 after l3hostd restarted: {out}"
    out = tcp_connect(client, vm.ipv4, 80)
    assert blocked(out), f"client -> VM tcp/80 after l3hostd restarted must be dropped: {out}"
