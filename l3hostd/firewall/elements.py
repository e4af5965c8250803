"""Per-TAP and per-group *element* state, and the set operations between two states. Pure.

Everything that changes when one endpoint comes, goes or changes is an element of a set
or map of ``table inet l3hostd`` / ``table arp l3hostd``, keyed by the TAP's name (see
:mod:`l3hostd.firewall.compile` for the table)::

    inet taps      "tap1"                              a managed TAP
    inet from_vm   "tap1" : jump prof-<p>-out          its profile's egress chain
    inet to_vm     "tap1" : jump prof-<p>-in           its profile's ingress chain
    inet src_mac   "tap1" . fa:16:3e:00:00:01          the one source MAC it may use
    inet src4/6    "tap1" . 10.0.0.1                   its IPs + allowed pairs (hash)
    inet src4net/6net  "tap1" . 10.9.0.0/24            pairs that are prefixes (interval)
    arp  taps      "tap1"
    arp  src4(net) "tap1" . 10.0.0.1                   the IPv4s it may claim in ARP
    inet g4-<g>/g6-<g>     10.0.0.1                    a remote group's members (hash)
    inet g4n-<g>/g6n-<g>   ipv4 . 10.9.0.0/24          its members that are prefixes

Host addresses go in hash sets and only real prefixes in (concatenated, "pipapo")
interval sets: on kernel 6.18 any deletion from a pipapo set costs 11-20 ms whatever its
size (measured: bench/README.md), a hash set 0.01 ms. So the common change -- a TAP with
host addresses, a member that is an address -- never touches an interval set.

:class:`InterfaceElements` is what the table holds (or should hold) for one TAP, in
nft's own spelling (addresses as ``10.0.0.1`` / ``10.9.0.0/24``), so that a state read
back with ``nft -j`` and a state computed from an endpoint compare (and digest) equal
exactly when the kernel is right. :func:`interface_ops` / :func:`member_ops` turn a pair
(old, new) into :class:`~l3hostd.firewall.nfnl.SetOp` deltas: removals first, then
additions (a map entry whose verdict changes is deleted and re-added: the kernel refuses
to overwrite an element's data), all meant for ONE batch, which the kernel applies
atomically -- a packet sees the old elements or the new ones, never a mix.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from typing import Final

from l3hostd.firewall import nfnl
from l3hostd.model import IPAddress, IPNetwork

TAPS_SET: Final = "taps"
FROM_VM_MAP: Final = "from_vm"
TO_VM_MAP: Final = "to_vm"
SRC_MAC_SET: Final = "src_mac"
SRC4_SET: Final = "src4"
SRC6_SET: Final = "src6"
SRC4_NET_SET: Final = "src4net"
SRC6_NET_SET: Final = "src6net"
ARP_TAPS_SET: Final = "taps"
ARP_SRC4_SET: Final = "src4"
ARP_SRC4_NET_SET: Final = "src4net"

INET, ARP = nfnl.NFPROTO_INET, nfnl.NFPROTO_ARP


def _net_key(n: IPv4Network | IPv6Network) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def collapse(items: Iterable[IPAddress | IPNetwork], version: int) -> list[str]:
    """Addresses/prefixes of one family, sorted, in nft's spelling (a host address
    without ``/32``), without the ones another element covers (interval sets refuse
    overlapping elements). Adjacent ones are *not* merged, so that a member maps to one
    element and can be deleted on its own."""
    nets = sorted({ip_network(x) for x in items if x.version == version}, key=_net_key)
    out: list[str] = []
    cover: IPv4Network | IPv6Network | None = None
    for n in nets:  # sorted by start address, then prefix length: a cover comes first
        if cover is not None and n.subnet_of(cover):  # type: ignore[arg-type]
            continue
        cover = n
        out.append(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n))
    return out


def canonical(text: str) -> str:
    """nft's spelling of an address, prefix or range -> ours (Python's), so that what is
    read back compares equal to what :func:`collapse` produces."""
    text = text.strip()
    if "-" in text:
        low, high = text.split("-", 1)
        return f"{ip_address(low.strip())}-{ip_address(high.strip())}"
    n = ip_network(text, strict=False)
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def network(spelling: str) -> IPv4Network | IPv6Network:
    """An address or prefix in our spelling as a network (an address: /32 or /128)."""
    return ip_network(spelling)


def element_hash(spelling: str) -> int:
    """64-bit hash of one element: a set's digest is the sum of its elements' hashes, so
    that it can be kept up to date element by element (see :func:`members_digest`)."""
    return int.from_bytes(hashlib.blake2b(spelling.encode(), digest_size=8).digest(), "big")


def members_digest(n4: int, sum4: int, n6: int, sum6: int) -> str:
    """Order-independent digest of a group's members from their counts and hash sums."""
    mask = (1 << 64) - 1
    return f"{n4}.{sum4 & mask:016x}.{n6}.{sum6 & mask:016x}"


# ----------------------------------------------------------------------------- one TAP


@dataclass(frozen=True, slots=True)
class InterfaceElements:
    """Every element of one TAP (see the module docstring)."""

    tap: bool = False
    from_vm: str | None = None  # chain the inet from_vm map jumps to
    to_vm: str | None = None
    macs: frozenset[str] = frozenset()
    src4: frozenset[str] = frozenset()
    src6: frozenset[str] = frozenset()
    arp_tap: bool = False
    arp_src4: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return self == _EMPTY

    def digest(self) -> str:
        """Equal digests <=> equal elements (order-independent)."""
        parts = [
            f"tap={self.tap}",
            f"from={self.from_vm}",
            f"to={self.to_vm}",
            "mac=" + ",".join(sorted(self.macs)),
            "v4=" + ",".join(sorted(self.src4)),
            "v6=" + ",".join(sorted(self.src6)),
            f"arptap={self.arp_tap}",
            "arp4=" + ",".join(sorted(self.arp_src4)),
        ]
        return _digest("\n".join(parts))

    def chains(self) -> frozenset[str]:
        """The chains its map entries jump to."""
        return frozenset(c for c in (self.from_vm, self.to_vm) if c is not None)


_EMPTY = InterfaceElements()


def wanted(
    mac: str,
    sources: Iterable[IPAddress | IPNetwork],
    egress_chain: str,
    ingress_chain: str,
) -> InterfaceElements:
    """What a managed TAP needs: its dispatch to its profile's chains, its source MAC,
    its own addresses and allowed address pairs as sources (IPv4 also in ARP)."""
    items = list(sources)
    v4 = frozenset(collapse(items, 4))
    return InterfaceElements(
        tap=True,
        from_vm=egress_chain,
        to_vm=ingress_chain,
        macs=frozenset({mac.lower()}),
        src4=v4,
        src6=frozenset(collapse(items, 6)),
        arp_tap=True,
        arp_src4=v4,
    )


def _element(prefix: bytes, spelling: str) -> nfnl.Element:
    """``prefix . address`` (hash set) or ``prefix . range`` (interval set: a prefix)."""
    low, high = nfnl.parse_range(spelling)
    if low == high and "/" not in spelling and "-" not in spelling:
        return nfnl.Element(nfnl.concat(prefix, low) if prefix else low)
    return nfnl.Element(nfnl.concat(prefix, low), nfnl.concat(prefix, high))


def _is_net(spelling: str) -> bool:
    return "/" in spelling or "-" in spelling


def interface_ops(
    interface: str, old: InterfaceElements | None, new: InterfaceElements | None, table: str
) -> list[nfnl.SetOp]:
    """The element changes that turn ``old`` into ``new`` for ``interface`` (None: no
    elements): deletions first, then additions."""
    o = old or _EMPTY
    n = new or _EMPTY
    key = nfnl.ifname(interface)
    dels: list[nfnl.SetOp] = []
    adds: list[nfnl.SetOp] = []

    def flag(family: int, name: str, before: bool, after: bool) -> None:
        if before and not after:
            dels.append(nfnl.SetOp(nfnl.DELETE, family, table, name, (nfnl.Element(key),)))
        elif after and not before:
            adds.append(nfnl.SetOp(nfnl.ADD, family, table, name, (nfnl.Element(key),)))

    def verdict(name: str, before: str | None, after: str | None) -> None:
        if before == after:
            return
        if before is not None:
            dels.append(nfnl.SetOp(nfnl.DELETE, INET, table, name, (nfnl.Element(key),)))
        if after is not None:
            adds.append(
                nfnl.SetOp(nfnl.ADD, INET, table, name, (nfnl.Element(key, jump=after),))
            )

    def members(family: int, names: tuple[str, str], before: frozenset[str],
                after: frozenset[str], mac: bool = False) -> None:
        def elem(s: str) -> nfnl.Element:
            if mac:
                return nfnl.Element(nfnl.concat(key, nfnl.ether(s)))
            return _element(key, s)

        for out, items in ((dels, sorted(before - after)), (adds, sorted(after - before))):
            kind = nfnl.DELETE if out is dels else nfnl.ADD
            for name, net in ((names[0], False), (names[1], True)):
                if mac and net:
                    continue  # a MAC set has no prefix twin
                picked = tuple(elem(s) for s in items if mac or _is_net(s) == net)
                if picked:
                    out.append(nfnl.SetOp(kind, family, table, name, picked))

    # dispatch first among the deletions (the TAP stops reaching its chains first) and
    # last among the additions (it reaches them once its source checks are in)
    verdict(FROM_VM_MAP, o.from_vm, n.from_vm)
    verdict(TO_VM_MAP, o.to_vm, n.to_vm)
    members(INET, (SRC_MAC_SET, SRC_MAC_SET), o.macs, n.macs, mac=True)
    members(INET, (SRC4_SET, SRC4_NET_SET), o.src4, n.src4)
    members(INET, (SRC6_SET, SRC6_NET_SET), o.src6, n.src6)
    members(ARP, (ARP_SRC4_SET, ARP_SRC4_NET_SET), o.arp_src4, n.arp_src4)
    flag(INET, TAPS_SET, o.tap, n.tap)
    flag(ARP, ARP_TAPS_SET, o.arp_tap, n.arp_tap)
    # (within one batch the order does not matter to packets: the kernel commits all of
    # it at once; it matters to the kernel: a map entry must be deleted before it is
    # re-added with another verdict)
    return dels + adds


def interfaces_from_table(
    inet_sets: Mapping[str, frozenset[str]],
    inet_maps: Mapping[str, Mapping[str, str]],
    arp_sets: Mapping[str, frozenset[str]],
) -> dict[str, InterfaceElements]:
    """Group what ``nft -j list table`` read (element spellings as
    :func:`l3hostd.firewall.nft.parse_table` renders them: ``tap1``,
    ``tap1 . 10.0.0.0/24``) by TAP."""
    acc: dict[str, dict[str, object]] = {}

    def put(iface: str, attr: str, value: str | None = None) -> None:
        d = acc.setdefault(iface, {})
        if value is None:
            d[attr] = True
        elif attr in ("from_vm", "to_vm"):
            d[attr] = value
        else:
            cur = d.setdefault(attr, set())
            assert isinstance(cur, set)
            cur.add(value)

    for e in inet_sets.get(TAPS_SET, ()):
        put(e, "tap")
    for e in arp_sets.get(ARP_TAPS_SET, ()):
        put(e, "arp_tap")
    for iface, chain in inet_maps.get(FROM_VM_MAP, {}).items():
        put(iface, "from_vm", chain)
    for iface, chain in inet_maps.get(TO_VM_MAP, {}).items():
        put(iface, "to_vm", chain)
    for attr, sets, name in (
        ("macs", inet_sets, SRC_MAC_SET),
        ("src4", inet_sets, SRC4_SET),
        ("src4", inet_sets, SRC4_NET_SET),
        ("src6", inet_sets, SRC6_SET),
        ("src6", inet_sets, SRC6_NET_SET),
        ("arp_src4", arp_sets, ARP_SRC4_SET),
        ("arp_src4", arp_sets, ARP_SRC4_NET_SET),
    ):
        for e in sets.get(name, ()):
            iface, sep, value = e.partition(" . ")
            if not sep:
                continue
            put(iface, attr, value.lower() if attr == "macs" else canonical(value))
    out: dict[str, InterfaceElements] = {}
    for iface, d in acc.items():
        out[iface] = InterfaceElements(
            tap=bool(d.get("tap", False)),
            from_vm=_opt_str(d.get("from_vm")),
            to_vm=_opt_str(d.get("to_vm")),
            macs=frozenset(_strs(d.get("macs"))),
            src4=frozenset(_strs(d.get("src4"))),
            src6=frozenset(_strs(d.get("src6"))),
            arp_tap=bool(d.get("arp_tap", False)),
            arp_src4=frozenset(_strs(d.get("arp_src4"))),
        )
    return out


def _opt_str(v: object) -> str | None:
    return v if isinstance(v, str) else None


def _strs(v: object) -> Iterable[str]:
    return (x for x in v if isinstance(x, str)) if isinstance(v, set) else ()


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True, slots=True)
class Members:
    """A remote group's two sets, in nft's spelling (without the ``ipv4 .`` part)."""

    v4: frozenset[str] = field(default_factory=frozenset)
    v6: frozenset[str] = field(default_factory=frozenset)

    def digest(self) -> str:
        return members_digest(len(self.v4), sum(map(element_hash, self.v4)),
                              len(self.v6), sum(map(element_hash, self.v6)))


def members_of(items: Iterable[IPAddress | IPNetwork]) -> Members:
    listed = list(items)
    return Members(frozenset(collapse(listed, 4)), frozenset(collapse(listed, 6)))


def members_from_sets(v4: Iterable[str], v6: Iterable[str]) -> Members:
    """Read-back elements (``10.0.0.1`` of a host set, ``ipv4 . 10.9.0.0/24`` of a prefix
    set) -> :class:`Members`."""
    def strip(items: Iterable[str]) -> frozenset[str]:
        return frozenset(canonical(e.rpartition(" . ")[2]) for e in items)

    return Members(strip(v4), strip(v6))


def member_ops(
    sets: tuple[str, str, str, str], old: Members | None, new: Members, table: str
) -> list[nfnl.SetOp]:
    """Turn a group's sets ``(g4, g6, g4n, g6n)`` -- host addresses, then prefixes --
    from ``old`` into ``new``: element deltas, or (``old`` unknown) a flush of all four and
    the full content."""
    dels: list[nfnl.SetOp] = []
    adds: list[nfnl.SetOp] = []
    if old is None:
        dels = [nfnl.SetOp(nfnl.DELETE, INET, table, name, flush=True) for name in sets]
    for version, hosts, nets, before, after in (
        (4, sets[0], sets[2], old.v4 if old else frozenset(), new.v4),
        (6, sets[1], sets[3], old.v6 if old else frozenset(), new.v6),
    ):
        proto = nfnl.nfproto(version)
        for out, kind, items in ((dels, nfnl.DELETE, sorted(before - after)),
                                 (adds, nfnl.ADD, sorted(after - before))):
            host = tuple(_element(b"", s) for s in items if not _is_net(s))
            net = tuple(_element(proto, s) for s in items if _is_net(s))
            if host:
                out.append(nfnl.SetOp(kind, INET, table, hosts, host))
            if net:
                out.append(nfnl.SetOp(kind, INET, table, nets, net))
    return dels + adds
