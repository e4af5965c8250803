"""What l3hostd owns on a hypervisor, read back from the kernel, nftables and BIRD.

Used by the soak (:mod:`bench.soak`) and the fault tests (``tests/integration/faultlab``)
to check "exactly the desired state": the kernel's routes and neighbours (``ip``), the
elements of ``table inet l3hostd`` and ``table arp l3hostd`` (``nft -j``), the
reflector's table (``birdc``) and another hypervisor's learned routes -- never what the
daemon says about itself. :func:`state_diff` compares all of it with a set of endpoints
(IPv4-only :class:`~bench.common.Port` s, as the many-endpoint labs use) and says what
differs, or nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from bench.common import Port
from l3hostd.birdlab import BgpTopology, BirdRouter
from l3hostd.lab import Hypervisor, Netns

LOCAL_PROTO = 44
LEARNED_PROTO = 45
#: The sets of the nft tables that hold elements for each endpoint, keyed by its TAP.
PER_TAP_SETS = ("inet taps", "inet src_mac", "inet src4", "inet from_vm", "inet to_vm",
                "arp taps", "arp src4")


@dataclass
class KernelState:
    """Everything l3hostd owns on one hypervisor, as the kernel and nftables hold it.

    ``routes``: (prefix, dev) of proto 44 routes; ``learned``: prefix -> sorted gateways of
    proto 45 routes; ``neighbours``: (ip, dev) of permanent neighbour entries on TAPs;
    ``nft``: set/map name -> the TAP names its elements are keyed by (tables inet and arp
    l3hostd; sets not keyed by an interface name are left out); ``nft_src4``: (tap,
    address) elements of the inet ``src4`` set.
    """

    routes: set[tuple[str, str]] = field(default_factory=set)
    learned: dict[str, list[str]] = field(default_factory=dict)
    neighbours: set[tuple[str, str]] = field(default_factory=set)
    nft: dict[str, set[str]] = field(default_factory=dict)
    nft_src4: set[tuple[str, str]] = field(default_factory=set)

    def taps_in_nft(self) -> set[str]:
        out: set[str] = set()
        for taps in self.nft.values():
            out |= taps
        return out


def _parse_route(line: str) -> tuple[str, str, list[str]]:
    words = line.split()
    prefix = words[0]
    if "/" not in prefix:
        prefix += "/128" if ":" in prefix else "/32"
    dev = words[words.index("dev") + 1] if "dev" in words else ""
    gateways = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "via"]
    return prefix, dev, gateways


def _routes(ns: Netns, proto: int) -> dict[str, tuple[str, list[str]]]:
    """prefix -> (dev, gateways) of the routes of ``proto`` in every table, both
    families; a multipath route's indented ``nexthop via`` lines join the route above."""
    out: dict[str, tuple[str, list[str]]] = {}
    for family in ("-4", "-6"):
        text = ns.ip(family, "route", "show", "table", "all", "proto", str(proto)).stdout
        current = ""
        for raw in text.splitlines():
            if not raw.strip():
                continue
            if raw[0].isspace() and current:
                _, _, more = _parse_route("x " + raw.strip())
                out[current][1].extend(more)
                continue
            prefix, dev, gateways = _parse_route(raw.strip())
            current = prefix
            out[prefix] = (dev, gateways)
    return out


def nft_elements(ns: Netns) -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(set name -> TAP names of its elements, (tap, address) of inet src4)."""
    proc = ns.run("nft", "-j", "list", "ruleset")
    keyed: dict[str, set[str]] = {}
    src4: set[tuple[str, str]] = set()
    for obj in json.loads(proc.stdout)["nftables"]:
        s = obj.get("set") or obj.get("map")
        if s is None or s.get("table") != "l3hostd":
            continue
        if "ifname" not in json.dumps(s.get("type")):
            continue
        name = f"{s['family']} {s['name']}"
        taps = keyed.setdefault(name, set())
        for elem in s.get("elem", ()):
            key = elem[0] if isinstance(elem, list) else elem  # a map element: [key, value]
            if isinstance(key, dict) and "elem" in key:
                key = key["elem"]["val"]
            if isinstance(key, dict) and "concat" in key:
                parts = key["concat"]
                taps.add(str(parts[0]))
                if name == "inet src4":
                    src4.add((str(parts[0]), str(parts[1])))
            else:
                taps.add(str(key))
    return keyed, src4


def nft_chains(ns: Netns) -> set[str]:
    """The chains of ``table inet l3hostd`` (group, profile and fixed ones)."""
    proc = ns.run("nft", "-j", "list", "table", "inet", "l3hostd")
    return {o["chain"]["name"] for o in json.loads(proc.stdout)["nftables"] if "chain" in o}


def kernel_state(hv: Hypervisor) -> KernelState:
    state = KernelState()
    state.routes = {(prefix, dev) for prefix, (dev, _) in _routes(hv.ns, LOCAL_PROTO).items()}
    state.learned = {p: sorted(g) for p, (_, g) in _routes(hv.ns, LEARNED_PROTO).items()}
    for family in ("-4", "-6"):
        out = hv.ns.ip(family, "neigh", "show", "nud", "permanent").stdout
        for line in out.splitlines():
            words = line.split()
            if "dev" in words and words[words.index("dev") + 1].startswith("tap"):
                state.neighbours.add((words[0], words[words.index("dev") + 1]))
    state.nft, state.nft_src4 = nft_elements(hv.ns)
    return state


def expected_state(items: Iterable[Port]) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(routes, src4 elements) that exactly ``items`` (IPv4-only ports) should give."""
    items = list(items)
    return ({(f"{p.ip}/32", p.tap) for p in items}, {(p.tap, p.ip) for p in items})


def rr_prefixes(rr: BirdRouter, table: str = "master4") -> dict[str, list[str]]:
    """The reflector's routes, prefix -> sorted next hops."""
    return {p: sorted(h) for p, h in rr.routes(table).items()}


def state_diff(topo: BgpTopology, live: list[Port], filed: list[Port] | None = None,
               index: int = 1, others: Iterable[int] = (2,)) -> str:
    """'' when hypervisor ``index``'s kernel, the reflector and the ``others``'
    learned routes hold exactly ``live``'s endpoints (file and TAP), and its nft holds
    exactly the elements of ``filed`` (endpoints with a file, default ``live``: elements
    are written from the file before the TAP exists, so that a TAP is enforced the moment
    it appears); else a line saying what differs."""
    hv = topo.hv(index)
    filed = live if filed is None else filed
    want_routes, _ = expected_state(live)
    _, want_src4 = expected_state(filed)
    taps = {p.tap for p in filed}
    state = kernel_state(hv)
    problems = []
    if state.routes != want_routes:
        problems.append(f"routes: missing {len(want_routes - state.routes)}, "
                        f"stale {sorted(state.routes - want_routes)[:5]}")
    if state.neighbours != {(p.ip, p.tap) for p in live}:
        problems.append(f"neighbours: {len(state.neighbours)} for {len(live)} endpoints, "
                        f"stale {sorted(state.neighbours - {(p.ip, p.tap) for p in live})[:5]}")
    for name in PER_TAP_SETS:
        got = state.nft.get(name, set())
        if got != taps:
            problems.append(f"nft {name}: missing {len(taps - got)}, "
                            f"stale {sorted(got - taps)[:5]}")
    if state.taps_in_nft() - taps:
        problems.append(f"nft: stale TAPs {sorted(state.taps_in_nft() - taps)[:5]}")
    if state.nft_src4 != want_src4:
        problems.append("nft src4 elements differ")
    prefixes = {f"{p.ip}/32" for p in live}
    at_rr = rr_prefixes(topo.rr)
    if at_rr != {prefix: [hv.uplink4] for prefix in prefixes}:
        problems.append(f"reflector: missing {len(prefixes - set(at_rr))}, "
                        f"stale {sorted(set(at_rr) - prefixes)[:5]}")
    for other in others:
        learned = set(kernel_state_learned(topo.hv(other)))
        if learned != prefixes:
            problems.append(f"hv{other} learned: missing {len(prefixes - learned)}, "
                            f"stale {sorted(learned - prefixes)[:5]}")
    return "; ".join(problems)


def kernel_state_learned(hv: Hypervisor) -> list[str]:
    """The IPv4 prefixes of ``hv``'s learned routes (proto 45)."""
    return [p for p in _routes(hv.ns, LEARNED_PROTO) if ":" not in p]
