"""Benchmark the nftables firewall: full load and single changes at 100 / 1000 / 5000 endpoints.

Runs in a throw-away network namespace (``l3fw-bench-<random>``, deleted afterwards): the
script re-executes itself inside it (``ip netns exec``), so libnftables and the netlink
socket, both in process, see only that namespace's ruleset.

What is timed is the daemon's own path: :class:`FirewallReconciler` (inputs -> desired
keys -> one nft transaction for chains, if any, and one netlink batch for elements), as
the dataplane drives it (``set_endpoint`` + ``refresh`` + ``apply``).

Per size: endpoints x 10 rules (ten groups of ten rules, with remote groups, IPv6, ranges;
endpoint ``i`` is in group ``i % 10``), each group with 100 remote members. Measured:

* full load: an empty table -> every endpoint enforced (skeleton + 20 group chains + 10
  profiles via nft, then every element in one netlink batch); also, for comparison, the
  same table as one ``nft -f`` transaction (``full_script``);
* median of ``--runs`` (50) for: add one endpoint to an existing profile (its elements
  and its group's member set: netlink only); add one endpoint with a combination of
  groups not seen before (+ its profile's two chains via nft); change one rule of one
  group (one group's two chains via nft); add one member to a remote group (netlink);
  each change undone (untimed) before the next, so the table stays at its size;
* ``read_table``: the ``nft -j`` read of a resync (O(table), not on the change path);
* worst case: every endpoint has its own group (so chains are O(endpoints)): full load,
  add one endpoint (new group + new profile: 4 chains via nft), change one rule.

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
from collections.abc import Callable, Iterable
from ipaddress import IPv4Address, IPv6Address, IPv6Network, ip_network

from l3hostd.firewall import nft
from l3hostd.firewall.compile import FirewallSettings, full_script, group_members
from l3hostd.firewall.reconciler import FirewallInputs, FirewallReconciler
from l3hostd.model import (
    Direction,
    Endpoint,
    EtherType,
    IPAddress,
    IPNetwork,
    SecurityGroup,
    SecurityGroupRule,
)
from l3hostd.reconcile import Phase

SETTINGS = FirewallSettings()
NGROUPS = 10


def group(name: str, other: str, g: int, port_shift: int = 0) -> SecurityGroup:
    r = SecurityGroupRule
    ing, eg = Direction.INGRESS, Direction.EGRESS
    v4, v6 = EtherType.IPV4, EtherType.IPV6
    return SecurityGroup(
        name,
        (
            r(ing, v4, "tcp", 22, 22),
            r(ing, v4, "icmp"),
            r(ing, v6, "icmpv6", icmp_type=128),
            r(ing, v4, "tcp", 8000 + g % 100 + port_shift, 8100 + g % 100 + port_shift),
            r(
                ing,
                v4,
                "udp",
                5000 + g % 1000,
                5000 + g % 1000,
                remote_ip_prefix=ip_network("10.0.0.0/8"),
            ),
            r(ing, v4, remote_group=name),
            r(ing, v6, remote_group=name),
            r(ing, v4, "tcp", 443, 443, remote_group=other),
            r(eg, v4, 47),
            r(eg, v6, "tcp", 443, 443, remote_ip_prefix=IPv6Network("2001:db8::/32")),
        ),
    )


def make_groups(n: int = NGROUPS, prefix: str = "grp") -> dict[str, SecurityGroup]:
    return {f"{prefix}{g}": group(f"{prefix}{g}", f"{prefix}{(g + 1) % n}", g) for g in range(n)}


def make_endpoint(i: int, groups: tuple[str, ...] | None = None) -> Endpoint:
    return Endpoint(
        id=f"{i:08x}-4e5b-4c8e-9a61-2f0b7c3d9e10",
        interface=f"tap{i:08x}",
        mac=f"fa:16:3e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
        ips=(IPv4Address(0x0A000000 + i + 1), IPv6Address(0x20010DB8_0001 << 80 | (i + 1))),
        allowed_address_pairs=(ip_network(f"172.16.{i % 256}.0/28"),) if i % 7 == 0 else (),
        security_groups=groups if groups is not None else (f"grp{i % NGROUPS}",),
    )


def remote_members(names: Iterable[str]) -> dict[str, frozenset[IPAddress | IPNetwork]]:
    return {
        name: frozenset(IPv4Address(0x0B000000 + g * 65536 + k) for k in range(100))
        for g, name in enumerate(sorted(names))
    }


class Bench:
    """One reconciler on this namespace's table, driven like the dataplane drives it."""

    def __init__(self) -> None:
        self.fw = FirewallReconciler(FirewallInputs(SETTINGS))
        self.loop = asyncio.new_event_loop()

    def run(self) -> None:
        async def go() -> None:
            fw = self.fw
            if fw.resync_pending:
                await fw.resync()
            now = time.monotonic()
            await fw.apply(Phase.REMOVE, now)
            await fw.apply(Phase.ADD, now)
            if fw.dirty_count or fw.nft_error:
                raise RuntimeError(f"not in sync: {fw.dirty_count} dirty, {fw.nft_error}")

        self.loop.run_until_complete(go())

    def endpoint(self, ep: Endpoint | None, eid: str) -> None:
        self.fw.refresh(self.fw.inputs.set_endpoint(ep, eid, ep is not None))
        self.run()

    def groups(self, groups: dict[str, SecurityGroup]) -> None:
        self.fw.refresh(self.fw.inputs.set_groups(groups))
        self.run()

    def remote(self, remote: dict[str, frozenset[IPAddress | IPNetwork]]) -> None:
        self.fw.refresh(self.fw.inputs.set_remote(remote))
        self.run()

    def load(
        self,
        eps: list[Endpoint],
        groups: dict[str, SecurityGroup],
        remote: dict[str, frozenset[IPAddress | IPNetwork]],
    ) -> float:
        fw = self.fw
        t0 = time.perf_counter()
        keys = fw.inputs.set_groups(groups) | fw.inputs.set_remote(remote)
        for e in eps:
            keys |= fw.inputs.set_endpoint(e, e.id, True)
        fw.refresh(keys)
        self.run()
        return (time.perf_counter() - t0) * 1000

    def close(self) -> None:
        self.fw.close()
        self.loop.close()


def median_ms(fn: Callable[[int], None], runs: int, undo: Callable[[int], None]) -> float:
    times = []
    for k in range(runs):
        t0 = time.perf_counter()
        fn(k)
        times.append((time.perf_counter() - t0) * 1000)
        undo(k)
    return statistics.median(times)


def delete_table() -> None:
    asyncio.run(nft.delete_table())


def combination(k: int) -> tuple[str, ...]:
    """The k-th combination of two or more groups (distinct for k < 1000)."""
    bits = k + 3
    while bin(bits).count("1") < 2:
        bits += 1
    picked = [f"grp{j}" for j in range(NGROUPS) if bits >> j & 1]
    return tuple(picked) if len(picked) >= 2 else ("grp0", "grp1")


def run_size(n: int, runs: int) -> dict[str, float]:
    res: dict[str, float] = {}
    groups = make_groups()
    changed = dict(groups)
    changed["grp3"] = group("grp3", "grp4", 3, port_shift=1)
    remote = remote_members(groups)
    eps = [make_endpoint(i) for i in range(n)]

    # the same table through nft -f, for comparison (one transaction, text)
    delete_table()
    script = full_script(eps, groups, group_members(eps, remote), SETTINGS)
    t0 = time.perf_counter()
    asyncio.run(nft.apply(script, timeout=600))
    res["full load, one nft -f transaction"] = (time.perf_counter() - t0) * 1000
    delete_table()

    b = Bench()
    res["full load (daemon: nft chains + netlink)"] = b.load(eps, groups, remote)
    state = asyncio.run(nft.read_table())
    assert len(state.inet.maps["from_vm"]) == n, "full load incomplete"

    base = 1_000_000
    res["add endpoint, known profile"] = median_ms(
        lambda k: b.endpoint(make_endpoint(base + k), f"x{k}"),
        runs,
        lambda k: b.endpoint(None, f"x{k}"),
    )
    res["add endpoint, new profile"] = median_ms(
        lambda k: b.endpoint(make_endpoint(base + k, combination(k)), f"y{k}"),
        runs,
        lambda k: b.endpoint(None, f"y{k}"),
    )
    res["change one rule"] = median_ms(
        lambda k: b.groups(changed), runs, lambda k: b.groups(groups)
    )
    res["add remote-group member"] = median_ms(
        lambda k: b.remote({**remote, "grp3": remote["grp3"] | {IPv4Address(0x0D000000 + k)}}),
        runs,
        lambda k: b.remote(remote),
    )

    t0 = time.perf_counter()
    asyncio.run(nft.read_table())
    res["read_table (resync)"] = (time.perf_counter() - t0) * 1000
    b.close()
    delete_table()
    return res


def run_worst(n: int, runs: int) -> dict[str, float]:
    """Every endpoint in its own group (chains are O(endpoints))."""
    res: dict[str, float] = {}
    total = n + runs
    groups = {f"u{g}": group(f"u{g}", f"u{(g + 1) % total}", g) for g in range(total)}
    eps = [make_endpoint(i, (f"u{i}",)) for i in range(n)]
    b = Bench()
    delete_table()
    res["worst: full load"] = b.load(eps, groups, {})
    res["worst: add endpoint, new group"] = median_ms(
        lambda k: b.endpoint(make_endpoint(2_000_000 + k, (f"u{n + k}",)), f"w{k}"),
        runs,
        lambda k: b.endpoint(None, f"w{k}"),
    )
    changed = dict(groups)
    changed["u3"] = group("u3", "u4", 3, port_shift=1)
    res["worst: change one rule"] = median_ms(
        lambda k: b.groups(changed), runs, lambda k: b.groups(groups)
    )
    state = asyncio.run(nft.read_table())
    res["worst: chains in the table"] = float(len(state.inet.chains))
    b.close()
    delete_table()
    return res


def table(results: dict[int, dict[str, float]]) -> None:
    sizes = list(results)
    keys = list(next(iter(results.values())))
    width = max(len(k) for k in keys)
    print(f"{'ms':<{width}} " + " ".join(f"{n:>10}" for n in sizes))
    for k in keys:
        if "chains in" in k:
            print(f"{k:<{width}} " + " ".join(f"{results[n][k]:>10.0f}" for n in sizes))
        else:
            print(f"{k:<{width}} " + " ".join(f"{results[n][k]:>10.1f}" for n in sizes))


def inner(sizes: list[int], worst: list[int], runs: int) -> None:
    table({n: run_size(n, runs) for n in sizes})
    if worst:
        print()
        table({n: run_worst(n, runs) for n in worst})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="100,1000,5000")
    p.add_argument("--worst-sizes", default="100,1000,5000")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    sizes = [int(s) for s in a.sizes.split(",") if s]
    worst = [int(s) for s in a.worst_sizes.split(",") if s]
    if a.inner:
        inner(sizes, worst, a.runs)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (network namespaces)")
    ns = f"l3fw-bench-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        cmd = [
            sys.executable,
            "-m",
            "bench.firewall",
            "--inner",
            "--sizes",
            a.sizes,
            "--worst-sizes",
            a.worst_sizes,
            "--runs",
            str(a.runs),
        ]
        subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


if __name__ == "__main__":
    main()
