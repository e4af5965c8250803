"""Benchmark the nftables firewall: full load and single changes at 100 / 1000 / 5000 endpoints.

Runs in a throw-away network namespace (``l3fw-bench-<random>``, deleted afterwards): the
script re-executes itself inside it (``ip netns exec``), so every nft call, including the
in-process libnftables one, sees only that namespace's ruleset.

Per size: endpoints x 10 rules (ten groups of ten rules, with remote groups, IPv6, ranges),
each group with 100 remote members. Measured:

* full load: ``full_script`` through ``nft -f -`` (one transaction replacing the table);
* median of 50 for: add one new endpoint (its ``add_script``), change one rule of one
  endpoint (its new ``add_script`` over the old one), add one member to a remote group
  (``group_set_script``: flush + refill) and add one member as a single
  ``add element`` (the delta form);

each through the ``nft`` binary (a process per change: nft fetches its cache every time)
and through libnftables in process (``libnftables.so.1`` via ctypes, one context kept).

    sudo .venv/bin/python -m bench.firewall [--sizes 100,1000,5000] [--runs 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_network

from l3hostd.firewall import nft
from l3hostd.firewall.compile import (
    FirewallSettings,
    compile_endpoint,
    full_script,
    group_delta_script,
    group_members,
    group_set_script,
)
from l3hostd.model import (
    Direction,
    Endpoint,
    EtherType,
    IPAddress,
    IPNetwork,
    SecurityGroup,
    SecurityGroupRule,
)

SETTINGS = FirewallSettings()
NGROUPS = 10


def make_groups(port_shift: int = 0) -> dict[str, SecurityGroup]:
    r = SecurityGroupRule
    ing, eg = Direction.INGRESS, Direction.EGRESS
    v4, v6 = EtherType.IPV4, EtherType.IPV6
    out = {}
    for g in range(NGROUPS):
        name = f"grp{g}"
        other = f"grp{(g + 1) % NGROUPS}"
        rules = (
            r(ing, v4, "tcp", 22, 22),
            r(ing, v4, "icmp"),
            r(ing, v6, "icmpv6", icmp_type=128),
            r(ing, v4, "tcp", 8000 + g + port_shift, 8100 + g + port_shift),
            r(ing, v4, "udp", 5000 + g, 5000 + g, remote_ip_prefix=ip_network("10.0.0.0/8")),
            r(ing, v4, remote_group=name),
            r(ing, v6, remote_group=name),
            r(ing, v4, "tcp", 443, 443, remote_group=other),
            r(eg, v4, 47),
            r(eg, v6, "tcp", 443, 443, remote_ip_prefix=IPv6Network("2001:db8::/32")),
        )
        out[name] = SecurityGroup(name, rules)
    return out


def make_endpoint(i: int) -> Endpoint:
    return Endpoint(
        id=f"{i:08x}-4e5b-4c8e-9a61-2f0b7c3d9e10",
        interface=f"tap{i:08x}",
        mac=f"fa:16:3e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
        ips=(IPv4Address(0x0A000000 + i + 1), IPv6Address(0x20010DB8_0001 << 80 | (i + 1))),
        allowed_address_pairs=(ip_network(f"172.16.{i % 256}.0/28"),) if i % 7 == 0 else (),
        security_groups=(f"grp{i % NGROUPS}",),
    )


def remote_members() -> dict[str, frozenset[IPAddress | IPNetwork]]:
    return {
        f"grp{g}": frozenset(IPv4Address(0x0B000000 + g * 65536 + k) for k in range(100))
        for g in range(NGROUPS)
    }


def median_ms(fn: Callable[[int], None], runs: int) -> float:
    times = []
    for k in range(runs):
        t0 = time.perf_counter()
        fn(k)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def single_changes(
    label: str,
    runner: Callable[[str], None],
    groups: dict[str, SecurityGroup],
    changed: dict[str, SecurityGroup],
    ep: Endpoint,
    grp: str,
    members: dict[str, frozenset[IPAddress | IPNetwork]],
    runs: int,
) -> dict[str, float]:
    res: dict[str, float] = {}
    base = 1_000_000 if label == "nft" else 2_000_000

    def add_one(k: int) -> None:
        runner(compile_endpoint(make_endpoint(base + k), groups, SETTINGS).add_script)

    res[f"add endpoint ({label})"] = median_ms(add_one, runs)

    def change(k: int) -> None:
        runner(compile_endpoint(ep, changed if k % 2 == 0 else groups, SETTINGS).add_script)

    res[f"change rule ({label})"] = median_ms(change, runs)

    def member(k: int) -> None:
        extra = IPv4Address(0x0C000000 + base + k)
        runner(group_set_script(grp, members[grp] | {extra}, SETTINGS))

    res[f"group member, replace set ({label})"] = median_ms(member, runs)

    def delta(k: int) -> None:
        extra = IPv4Address(0x0D000000 + base + k)
        runner(group_delta_script(grp, [extra], [], SETTINGS))

    res[f"group member, delta ({label})"] = median_ms(delta, runs)
    return res


def run_size(n: int, runs: int, lib: nft.LibNftables) -> dict[str, float]:
    groups = make_groups()
    eps = [make_endpoint(i) for i in range(n)]
    remote = remote_members()
    members = group_members(eps, remote)
    script = full_script(eps, groups, members, SETTINGS)
    res: dict[str, float] = {}

    def cli(s: str) -> None:
        asyncio.run(nft.apply(s, timeout=600))

    t0 = time.perf_counter()
    cli(script)
    res["full load (nft -f)"] = (time.perf_counter() - t0) * 1000
    state = asyncio.run(nft.read_table())
    assert len(state.inet.maps["from_vm"]) == n, "full load incomplete"

    changed = make_groups(port_shift=1)
    ep = eps[n // 2]
    grp = "grp3"
    for label, runner in (("nft", cli), ("lib", lib.run_sync)):
        res.update(single_changes(label, runner, groups, changed, ep, grp, members, runs))

    t0 = time.perf_counter()
    asyncio.run(nft.read_table())
    res["read_table"] = (time.perf_counter() - t0) * 1000
    asyncio.run(nft.delete_table())
    return res


def inner(sizes: list[int], runs: int) -> None:
    lib = nft.LibNftables()
    results = {n: run_size(n, runs, lib) for n in sizes}
    keys = list(next(iter(results.values())))
    width = max(len(k) for k in keys)
    print(f"{'ms':<{width}} " + " ".join(f"{n:>9}" for n in sizes))
    for k in keys:
        print(f"{k:<{width}} " + " ".join(f"{results[n][k]:>9.1f}" for n in sizes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000,5000")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    if a.inner:
        inner(sizes, a.runs)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    ns = f"l3fw-bench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        cmd = [sys.executable, "-m", "bench.firewall", "--inner", "--sizes", a.sizes]
        subprocess.run(["ip", "netns", "exec", ns, *cmd, "--runs", str(a.runs)], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
