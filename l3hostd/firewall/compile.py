"""Security groups -> nftables text. Pure: no IO; the same input always gives the same bytes.

How it works
------------
Everything lives in ``table inet <table>`` plus a small ``table arp <table>`` (nothing else is
ever touched)::

    table inet l3hostd
      set taps            type ifname           managed TAP names
      map from_vm/to_vm   ifname : verdict      TAP -> its per-endpoint chain
      set g4-<group>/g6-<group>                 a remote group's members (local + other
                                                hosts), type ``nf_proto . addr``, interval
      chain from-<id>     VM -> anywhere: source MAC, source IP (one rule AND-ing
                          ``ip saddr != a`` over the endpoint's IPs and allowed address
                          pairs), conntrack, egress rules ending in ``return`` (so the
                          destination VM's ingress chain still runs), drop
      chain to-<id>       anywhere -> VM: conntrack, ingress rules ``accept``, drop
      chain filter-forward   hook forward: an unknown TAP (matches a pattern, not in @taps)
                             is dropped both ways; ``iifname vmap @from_vm``;
                             ``oifname vmap @to_vm``
      chain filter-input     hook input: traffic from TAPs -> ``vm-to-host``
      chain vm-to-host       established/related, DHCP, DNS, metadata (after DNAT),
                             IPv6 ND; everything else dropped
      chain nat-prerouting   hook prerouting (dstnat): 169.254.169.254:80 -> metadata_address
    table arp l3hostd
      map from_vm, chain from-<id>   a VM may only claim its own IPv4s / allowed pairs
      chain input                    hook input: sender 0.0.0.0 (probe) allowed, dispatch,
                                     any other ARP from a TAP pattern dropped

DHCP from 0.0.0.0 reaches the host through the input hook, which has no anti-spoofing
(only the service allow-list), so it is not blocked. DNAT to 127.0.0.1 from a TAP needs
``net.ipv4.conf.<tap>.route_localnet=1``.

Why this shape (measured with nft 1.0.6, see bench/firewall.py and DESIGN.md):

* verdict maps + per-endpoint chains keep loading linear; anonymous sets (``{a, b}``) in
  per-endpoint rules make nft's evaluation explode, so no rule contains one (set
  *declarations* carry ``elements = { .. }``, a different thing);
* before any ``add element``, nft 1.0.6 dumps the elements of every *non-concatenated
  interval* set in the ruleset (cache flag SETELEM_MAYBE, one netlink dump per set): with
  two such sets per endpoint one change cost ~140 ms at 1,000 endpoints. So endpoints have
  no sets at all (the anti-spoofing rule lists the few allowed sources), and group sets,
  which need prefixes, are concatenated (``nf_proto . ipv4_addr``), which that dump skips.

Idempotency: an endpoint's ``add_script`` creates what is missing (``add`` of an existing
object is not an error), ``flush``-es its own chains and refills them, then adds its map
elements: on the current kernel state it changes nothing, on an older version it is a
replace, in one transaction. ``delete_script`` first *adds* everything it deletes (nft
1.0.6 has no ``destroy``), so deleting what is already gone is not an error; then it deletes
map elements, then chains. Group sets are shared: ``add_script`` creates the ones it
references (empty, if missing); :func:`group_set_script` fills them.

Digest: nft 1.0.6 ignores the comment of ``add chain`` on an existing chain and does not
show chain comments in ``nft -j`` output, so the digest is the comment of the *first rule*
of each per-endpoint chain (``comment "l3hostd:<digest>"``): it is rewritten with the rules
and read back by :func:`l3hostd.firewall.nft.read_table`.

Rules are sorted and de-duplicated (all are "allow": order does not matter), addresses are
sorted and those covered by another element dropped (interval sets refuse overlaps), so
the output is stable under any reordering of the input. A rule that cannot match (IPv6
prefix in an IPv4 rule, ICMPv6 in an IPv4 rule, unknown protocol name) is left out, and a
group an endpoint names but that is unknown contributes nothing: fail closed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import Final

from l3hostd.model import (
    Direction,
    Endpoint,
    EtherType,
    IPAddress,
    IPNetwork,
    SecurityGroup,
    SecurityGroupRule,
)

__all__ = [
    "EndpointRules",
    "FirewallSettings",
    "arp_chain",
    "base_script",
    "chain_names",
    "compile_endpoint",
    "full_script",
    "group_delta_script",
    "group_members",
    "group_set_script",
    "group_sets",
]

DIGEST_PREFIX: Final = "l3hostd:"
METADATA_IP: Final = IPv4Address("169.254.169.254")

# Base objects of the inet table.
TAPS_SET: Final = "taps"
FROM_VM_MAP: Final = "from_vm"
TO_VM_MAP: Final = "to_vm"
FORWARD_CHAIN: Final = "filter-forward"
INPUT_CHAIN: Final = "filter-input"
VM_TO_HOST_CHAIN: Final = "vm-to-host"
NAT_CHAIN: Final = "nat-prerouting"
# Base objects of the arp table.
ARP_MAP: Final = "from_vm"
#: inet map: TAP -> its source check chain, used on the way to the host (input hook)
SRC_VM_MAP: Final = "src_vm"
ARP_INPUT_CHAIN: Final = "input"

_SIMPLE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_IFNAME = re.compile(r"[A-Za-z0-9_.@+-]{1,15}")
_PATTERN = re.compile(r"[A-Za-z0-9_.@+-]{1,15}\*?")

# Protocol names nft knows for ``meta l4proto`` (the parser only produces tcp/udp/icmp/
# icmpv6 or a number; anything else that would reach us is mapped or left out).
_PROTO_NUMBERS: Final[dict[str, int]] = {
    "icmp": 1,
    "igmp": 2,
    "tcp": 6,
    "udp": 17,
    "dccp": 33,
    "gre": 47,
    "esp": 50,
    "ah": 51,
    "icmpv6": 58,
    "ipv6-icmp": 58,
    "ospf": 89,
    "pim": 103,
    "vrrp": 112,
    "sctp": 132,
    "udplite": 136,
}
_PORT_PROTOCOLS: Final[dict[int, str]] = {6: "tcp", 17: "udp", 33: "dccp", 132: "sctp"}


@dataclass(frozen=True, slots=True)
class FirewallSettings:
    interface_patterns: tuple[str, ...] = ("tap*",)  # fnmatch style; "tap*" -> nft "tap*"
    dhcp: bool = True
    dns: bool = True
    metadata: bool = True
    metadata_address: tuple[str, int] = ("127.0.0.1", 8775)  # DNAT target of 169.254.169.254:80
    table: str = "l3hostd"


@dataclass(frozen=True, slots=True)
class EndpointRules:
    endpoint_id: str
    interface: str
    digest: str  # short hash of everything below: equal digest == identical rules
    add_script: str  # creates/replaces this endpoint's chains, sets and map elements
    delete_script: str  # removes all of it (map elements first, then chains and sets)
    groups: frozenset[str]  # remote groups its rules reference


# ----------------------------------------------------------------------------- names


def _ident(name: str) -> str:
    """A stable, injective nft identifier fragment for an id or a group name: the name
    itself when it is short lower-case alphanumerics/hyphens, else a sanitized prefix and a
    hash (with ``_``, which the plain form never contains, so the two cannot collide)."""
    if _SIMPLE_NAME.fullmatch(name):
        return name
    clean = re.sub(r"[^a-z0-9-]", "", name.lower())[:24]
    return f"{clean}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


@dataclass(frozen=True, slots=True)
class ChainNames:
    """The per-endpoint object names (stable across runs, unique per endpoint id)."""

    egress: str  # inet chain: from the VM
    ingress: str  # inet chain: to the VM
    source: str  # inet chain: anti-spoofing only (VM -> host traffic)
    arp: str  # arp chain


def chain_names(endpoint_id: str) -> ChainNames:
    i = _ident(endpoint_id)
    return ChainNames(f"from-{i}", f"to-{i}", f"src-{i}", f"from-{i}")


def arp_chain(endpoint_id: str) -> str:
    return chain_names(endpoint_id).arp


def group_sets(group: str) -> tuple[str, str]:
    """(IPv4 set name, IPv6 set name) of a remote group."""
    i = _ident(group)
    return f"g4-{i}", f"g6-{i}"


# ----------------------------------------------------------------------------- values


def _check_table(settings: FirewallSettings) -> str:
    if not _SIMPLE_NAME.fullmatch(settings.table) or not settings.table[0].isalpha():
        raise ValueError(f"invalid nft table name {settings.table!r}")
    return settings.table


def _ifname(name: str) -> str:
    if not _IFNAME.fullmatch(name):
        raise ValueError(f"invalid interface name {name!r}")
    return f'"{name}"'


def _patterns(settings: FirewallSettings) -> list[str]:
    """fnmatch patterns -> quoted nft interface wildcards. nft only knows a trailing ``*``."""
    out = []
    for p in sorted(set(settings.interface_patterns)):
        if not _PATTERN.fullmatch(p):
            raise ValueError(f"interface pattern {p!r}: nft supports only a trailing '*'")
        out.append(f'"{p}"')
    return out


def _mac(mac: str) -> str:
    if not _MAC.fullmatch(mac):
        raise ValueError(f"invalid MAC {mac!r}")
    return mac


def _net_key(n: IPv4Network | IPv6Network) -> tuple[int, int, int]:
    return (n.version, int(n.network_address), n.prefixlen)


def _collapse(items: Iterable[IPAddress | IPNetwork], version: int) -> list[str]:
    """Addresses/prefixes of one family, sorted, rendered for nft, without the ones another
    element covers (interval sets refuse overlapping elements). Adjacent ones are *not*
    merged, so that a member maps to one element and can be deleted on its own."""
    nets = sorted({ip_network(x) for x in items if x.version == version}, key=_net_key)
    out: list[str] = []
    cover: IPv4Network | IPv6Network | None = None
    for n in nets:  # sorted by start address, then prefix length: a cover comes first
        if cover is not None and n.subnet_of(cover):  # type: ignore[arg-type]
            continue
        cover = n
        out.append(str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n))
    return out


def _elements(items: list[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- rules


def _port_match(proto: str, lo: int | None, hi: int | None) -> str:
    low = lo if lo is not None else hi
    high = hi if hi is not None else lo
    if low is None or high is None:
        return f"meta l4proto {proto}"
    low, high = min(low, high), max(low, high)
    if low <= 1 and high >= 65535:
        return f"meta l4proto {proto}"
    if low == high:
        return f"{proto} dport {low}"
    return f"{proto} dport {low}-{high}"


def _protocol_match(rule: SecurityGroupRule, v6: bool) -> str | None:
    """The protocol part of a rule ("" for any), or None when the rule cannot match."""
    proto = rule.protocol
    if proto is None or proto == "any" or proto == 0:
        return ""
    if isinstance(proto, str):
        number = _PROTO_NUMBERS.get(proto.lower())
        if number is None:
            return None  # unknown name: fail closed
    else:
        number = proto
        if not 0 <= number <= 255:
            return None
    if number in _PORT_PROTOCOLS:
        return _port_match(_PORT_PROTOCOLS[number], rule.port_range_min, rule.port_range_max)
    if number == 1 and v6:
        number = 58  # Neutron: "icmp" in an IPv6 rule means ICMPv6
    if number in (1, 58):
        if (number == 58) != v6:
            return None  # ICMPv6 in an IPv4 rule
        # Neutron encodes type/code in the port fields; the model also has explicit ones.
        icmp_type = rule.icmp_type if rule.icmp_type is not None else rule.port_range_min
        icmp_code = rule.icmp_code if rule.icmp_code is not None else rule.port_range_max
        name = "icmpv6" if v6 else "icmp"
        parts = []
        if icmp_type is not None:
            parts.append(f"{name} type {icmp_type}")
        if icmp_code is not None:
            parts.append(f"{name} code {icmp_code}")
        return " ".join(parts) if parts else f"meta l4proto {'ipv6-icmp' if v6 else 'icmp'}"
    return f"meta l4proto {number}"


def _rule_text(rule: SecurityGroupRule) -> str | None:
    """One security-group rule as nft match expressions (without verdict); None when it
    can never match."""
    v6 = rule.ethertype is EtherType.IPV6
    fam = "ip6" if v6 else "ip"
    side = "saddr" if rule.direction is Direction.INGRESS else "daddr"
    parts: list[str] = []
    if rule.remote_group is not None:
        group_set = group_sets(rule.remote_group)[1 if v6 else 0]
        parts.append(f"meta nfproto . {fam} {side} @{group_set}")
    elif rule.remote_ip_prefix is not None:
        prefix = rule.remote_ip_prefix
        if prefix.version != (6 if v6 else 4):
            return None
        if prefix.prefixlen:
            full = prefix.prefixlen == prefix.max_prefixlen
            parts.append(f"{fam} {side} {prefix.network_address if full else prefix}")
    proto = _protocol_match(rule, v6)
    if proto is None:
        return None
    if not parts:
        parts.append(f"meta nfproto {'ipv6' if v6 else 'ipv4'}")
    if proto:
        parts.append(proto)
    return " ".join(parts)


def _endpoint_rules(
    ep: Endpoint, groups: Mapping[str, SecurityGroup]
) -> tuple[list[str], list[str], frozenset[str]]:
    """(egress match texts, ingress match texts, remote groups), sorted and de-duplicated.
    A group the endpoint names but that is not known contributes nothing (fail closed)."""
    egress: set[str] = set()
    ingress: set[str] = set()
    remote: set[str] = set()
    for name in set(ep.security_groups):
        group = groups.get(name)
        if group is None:
            continue
        for rule in group.rules:
            text = _rule_text(rule)
            if text is None:
                continue
            if rule.remote_group is not None:
                remote.add(rule.remote_group)
            (ingress if rule.direction is Direction.INGRESS else egress).add(text)
    return sorted(egress), sorted(ingress), frozenset(remote)


def _antispoof(fam: str, allowed: list[str]) -> str:
    """Drop a source outside ``allowed``: one rule AND-ing ``saddr != x`` for each allowed
    address or prefix (no set, named or anonymous: nothing to fetch, flush or load)."""
    if not allowed:
        return f"meta nfproto {'ipv4' if fam == 'ip' else 'ipv6'} drop"
    return " ".join([*(f"{fam} saddr != {a}" for a in allowed), "drop"])


@dataclass(frozen=True, slots=True)
class _Compiled:
    """One endpoint, compiled: the parts both the incremental and the full script use."""

    ep: Endpoint
    names: ChainNames
    digest: str
    egress: list[str]  # full rules, first one carries the digest comment
    ingress: list[str]
    source: list[str]  # anti-spoofing, then return (for traffic to the host)
    arp: list[str]
    groups: frozenset[str]


def _compile(ep: Endpoint, groups: Mapping[str, SecurityGroup]) -> _Compiled:
    names = chain_names(ep.id)
    iface = _ifname(ep.interface)
    mac = _mac(ep.mac)
    sources: list[IPAddress | IPNetwork] = [*ep.ips, *ep.allowed_address_pairs]
    addr4 = _collapse(sources, 4)
    addr6 = _collapse(sources, 6)
    eg, ing, remote = _endpoint_rules(ep, groups)
    source = [
        f"ether saddr != {mac} drop",
        _antispoof("ip", addr4),
        _antispoof("ip6", addr6),
    ]
    egress = [
        *source,
        "ct state established,related return",
        "ct state invalid drop",
        *(f"{r} return" for r in eg),
        "drop",
    ]
    ingress = [
        "ct state established,related accept",
        "ct state invalid drop",
        *(f"{r} accept" for r in ing),
        "drop",
    ]
    arp = [*(f"arp saddr ip {a} accept" for a in addr4), "drop"]
    digest = _digest(ep.id, iface, *egress, "|", *ingress, "|", *arp, "|", *sorted(remote))
    tag = f' comment "{DIGEST_PREFIX}{digest}"'
    egress[0] += tag
    ingress[0] += tag
    arp[0] += tag
    return _Compiled(ep, names, digest, egress, ingress, [*source, "return"], arp, remote)


# Group sets need prefixes, hence intervals; nft 1.0.6 dumps the elements of *every*
# non-concatenated interval set before any "add element" (cache flag SETELEM_MAYBE: one
# change cost ~140 ms at 1,000 endpoints with per-endpoint interval sets). Concatenated
# interval sets are skipped by that dump, so groups are "nf_proto . addr" sets.


def _group_set_decls(group: str) -> list[tuple[str, str]]:
    g4, g6 = group_sets(group)
    return [
        (g4, "type nf_proto . ipv4_addr; flags interval;"),
        (g6, "type nf_proto . ipv6_addr; flags interval;"),
    ]


def _group_elements(members: Iterable[IPAddress | IPNetwork], version: int) -> list[str]:
    family = "ipv4" if version == 4 else "ipv6"
    return [f"{family} . {a}" for a in _collapse(members, version)]


def compile_endpoint(
    ep: Endpoint, groups: Mapping[str, SecurityGroup], settings: FirewallSettings
) -> EndpointRules:
    """The incremental scripts of one endpoint (see the module docstring)."""
    t = _check_table(settings)
    c = _compile(ep, groups)
    n = c.names
    iface = _ifname(ep.interface)
    inet = f"inet {t}"
    add: list[str] = []
    for g in sorted(c.groups):
        for name, decl in _group_set_decls(g):
            add.append(f"add set {inet} {name} {{ {decl} }}")
    for chain, rules in ((n.egress, c.egress), (n.ingress, c.ingress), (n.source, c.source)):
        add.append(f"add chain {inet} {chain}")
        add.append(f"flush chain {inet} {chain}")
        add.extend(f"add rule {inet} {chain} {r}" for r in rules)
    add.append(f"add chain arp {t} {n.arp}")
    add.append(f"flush chain arp {t} {n.arp}")
    add.extend(f"add rule arp {t} {n.arp} {r}" for r in c.arp)
    add.append(f"add element {inet} {TAPS_SET} {{ {iface} }}")
    add.append(f"add element {inet} {FROM_VM_MAP} {{ {iface} : jump {n.egress} }}")
    add.append(f"add element {inet} {TO_VM_MAP} {{ {iface} : jump {n.ingress} }}")
    add.append(f"add element {inet} {SRC_VM_MAP} {{ {iface} : jump {n.source} }}")
    add.append(f"add element arp {t} {ARP_MAP} {{ {iface} : jump {n.arp} }}")

    delete = [
        # make sure everything exists, so that the deletes below cannot fail
        f"add chain {inet} {n.egress}",
        f"add chain {inet} {n.ingress}",
        f"add chain {inet} {n.source}",
        f"add chain arp {t} {n.arp}",
        f"add element {inet} {SRC_VM_MAP} {{ {iface} : jump {n.source} }}",
        f"add element {inet} {TAPS_SET} {{ {iface} }}",
        f"add element {inet} {FROM_VM_MAP} {{ {iface} : jump {n.egress} }}",
        f"add element {inet} {TO_VM_MAP} {{ {iface} : jump {n.ingress} }}",
        f"add element arp {t} {ARP_MAP} {{ {iface} : jump {n.arp} }}",
        # map elements first, then the chains, then the sets the chains referenced
        f"delete element arp {t} {ARP_MAP} {{ {iface} }}",
        f"delete element {inet} {SRC_VM_MAP} {{ {iface} }}",
        f"delete element {inet} {TO_VM_MAP} {{ {iface} }}",
        f"delete element {inet} {FROM_VM_MAP} {{ {iface} }}",
        f"delete element {inet} {TAPS_SET} {{ {iface} }}",
        f"flush chain arp {t} {n.arp}",
        f"delete chain arp {t} {n.arp}",
        f"flush chain {inet} {n.egress}",
        f"delete chain {inet} {n.egress}",
        f"flush chain {inet} {n.ingress}",
        f"delete chain {inet} {n.ingress}",
        f"flush chain {inet} {n.source}",
        f"delete chain {inet} {n.source}",
    ]
    return EndpointRules(
        endpoint_id=ep.id,
        interface=ep.interface,
        digest=c.digest,
        add_script="\n".join(add) + "\n",
        delete_script="\n".join(delete) + "\n",
        groups=c.groups,
    )


# ----------------------------------------------------------------------------- base


def _metadata_target(settings: FirewallSettings) -> tuple[IPv4Address, int]:
    addr = ip_address(settings.metadata_address[0])
    port = settings.metadata_address[1]
    if not isinstance(addr, IPv4Address):
        raise ValueError("metadata_address must be IPv4 (DNAT target of 169.254.169.254)")
    if not 0 < port < 65536:
        raise ValueError(f"invalid metadata port {port}")
    return addr, port


def _base_chains(settings: FirewallSettings) -> list[tuple[str, str, list[str]]]:
    """(name, hook definition or "", rules) of the inet table's fixed chains."""
    pats = _patterns(settings)
    forward = [f"iifname {p} iifname != @{TAPS_SET} drop" for p in pats]
    forward += [f"oifname {p} oifname != @{TAPS_SET} drop" for p in pats]
    forward += [f"iifname vmap @{FROM_VM_MAP}", f"oifname vmap @{TO_VM_MAP}"]
    # a managed TAP is never left without its chains: drop if the dispatch fell through
    forward += [f"oifname @{TAPS_SET} drop"]
    inp = [f"iifname {p} jump {VM_TO_HOST_CHAIN}" for p in pats]
    inp += [f"iifname @{TAPS_SET} jump {VM_TO_HOST_CHAIN}"]
    host = ["ct state established,related accept", "ct state invalid drop"]
    if settings.dhcp:
        host.append("meta nfproto ipv4 udp sport 68 udp dport 67 accept")
        host.append("meta nfproto ipv6 udp sport 546 udp dport 547 accept")
    # past DHCP (which may come from 0.0.0.0), the sender must be who its TAP says:
    # unknown TAPs are dropped, known ones go through their anti-spoofing chain
    host.append(f"iifname != @{TAPS_SET} drop")
    host.append(f"iifname vmap @{SRC_VM_MAP}")
    if settings.dns:
        host.append("udp dport 53 accept")
        host.append("tcp dport 53 accept")
    nat: list[str] = []
    if settings.metadata:
        addr, port = _metadata_target(settings)
        host.append(f"ct status dnat ip daddr {addr} tcp dport {port} accept")
        nat = [
            f"iifname {p} ip daddr {METADATA_IP} tcp dport 80 dnat ip to {addr}:{port}"
            for p in pats
        ]
        nat += [f"iifname @{TAPS_SET} ip daddr {METADATA_IP} tcp dport 80 dnat ip to {addr}:{port}"]
    # IPv6 neighbour discovery with the host (fe80::1): needed for IPv6 to work at all
    host += [
        "icmpv6 type nd-neighbor-solicit accept",
        "icmpv6 type nd-neighbor-advert accept",
        "icmpv6 type nd-router-solicit accept",
        "drop",
    ]
    return [
        (VM_TO_HOST_CHAIN, "", host),
        (FORWARD_CHAIN, "type filter hook forward priority filter; policy accept;", forward),
        (INPUT_CHAIN, "type filter hook input priority filter; policy accept;", inp),
        (NAT_CHAIN, "type nat hook prerouting priority dstnat; policy accept;", nat),
    ]


def _arp_input(settings: FirewallSettings) -> tuple[str, list[str]]:
    pats = _patterns(settings)
    rules = [f"iifname {p} arp saddr ip 0.0.0.0 accept" for p in pats]
    rules += [f"iifname vmap @{ARP_MAP}"]
    rules += [f"iifname {p} drop" for p in pats]
    return "type filter hook input priority filter; policy accept;", rules


def base_script(settings: FirewallSettings) -> str:
    """The idempotent table skeleton (no endpoint content): running it again resets the
    fixed chains' rules and keeps every endpoint object and element."""
    t = _check_table(settings)
    inet = f"inet {t}"
    out = [
        f"add table {inet}",
        f"add set {inet} {TAPS_SET} {{ type ifname; }}",
        f"add map {inet} {FROM_VM_MAP} {{ type ifname : verdict; }}",
        f"add map {inet} {TO_VM_MAP} {{ type ifname : verdict; }}",
        f"add map {inet} {SRC_VM_MAP} {{ type ifname : verdict; }}",
    ]
    for name, hook, rules in _base_chains(settings):
        out.append(f"add chain {inet} {name} {{ {hook} }}" if hook else f"add chain {inet} {name}")
        out.append(f"flush chain {inet} {name}")
        out.extend(f"add rule {inet} {name} {r}" for r in rules)
    hook, rules = _arp_input(settings)
    out += [
        f"add table arp {t}",
        f"add map arp {t} {ARP_MAP} {{ type ifname : verdict; }}",
        f"add chain arp {t} {ARP_INPUT_CHAIN} {{ {hook} }}",
        f"flush chain arp {t} {ARP_INPUT_CHAIN}",
        *(f"add rule arp {t} {ARP_INPUT_CHAIN} {r}" for r in rules),
    ]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- groups


def group_set_script(
    group: str, members: frozenset[IPAddress | IPNetwork], settings: FirewallSettings
) -> str:
    """Create the group's two sets if missing and make their content exactly ``members``."""
    inet = f"inet {_check_table(settings)}"
    out: list[str] = []
    for (name, decl), version in zip(_group_set_decls(group), (4, 6), strict=True):
        out.append(f"add set {inet} {name} {{ {decl} }}")
        out.append(f"flush set {inet} {name}")
        elems = _group_elements(members, version)
        if elems:
            out.append(f"add element {inet} {name} {_elements(elems)}")
    return "\n".join(out) + "\n"


def group_delta_script(
    group: str,
    added: Iterable[IPAddress | IPNetwork],
    removed: Iterable[IPAddress | IPNetwork],
    settings: FirewallSettings,
) -> str:
    """The cheap form of a membership change: ``delete``/``add element`` of the changed
    members only (no flush). Exact when no added or removed member overlaps another member
    (host addresses: the usual case); otherwise use :func:`group_set_script`. ``removed``
    members must be present (nft fails the transaction otherwise: nothing changes)."""
    inet = f"inet {_check_table(settings)}"
    add_list, rm_list = list(added), list(removed)
    out: list[str] = []
    sets = list(zip(_group_set_decls(group), (4, 6), strict=True))
    for (name, _), version in sets:
        gone = _group_elements(rm_list, version)
        if gone:
            out.append(f"delete element {inet} {name} {_elements(gone)}")
    for (name, _), version in sets:
        new = _group_elements(add_list, version)
        if new:
            out.append(f"add element {inet} {name} {_elements(new)}")
    return "\n".join(out) + "\n" if out else ""


def group_members(
    endpoints: Iterable[Endpoint], remote: Mapping[str, frozenset[IPAddress | IPNetwork]]
) -> dict[str, frozenset[IPAddress | IPNetwork]]:
    """group -> the ``ips`` of the local endpoints in it plus its members on other hosts."""
    acc: dict[str, set[IPAddress | IPNetwork]] = {g: set(m) for g, m in remote.items()}
    for ep in endpoints:
        for g in ep.security_groups:
            acc.setdefault(g, set()).update(ep.ips)
    return {g: frozenset(m) for g, m in sorted(acc.items())}


# ----------------------------------------------------------------------------- full load


def full_script(
    endpoints: Iterable[Endpoint],
    groups: Mapping[str, SecurityGroup],
    members: Mapping[str, frozenset[IPAddress | IPNetwork]],
    settings: FirewallSettings,
) -> str:
    """Everything, as one transaction that replaces both tables atomically: ``add table``
    (so that the ``delete`` cannot fail), ``delete table``, then the new table in block
    form. The kernel commits the batch as one generation: packets see either the old
    table or the new one, never no table. Objects are declared before they are referenced
    (sets, endpoint chains, maps, base chains)."""
    t = _check_table(settings)
    compiled = sorted(
        (_compile(ep, groups) for ep in endpoints), key=lambda c: (c.ep.interface, c.ep.id)
    )
    seen: set[str] = set()
    for c in compiled:
        if c.ep.interface in seen:
            raise ValueError(f"interface {c.ep.interface} claimed by two endpoints")
        seen.add(c.ep.interface)
    all_groups = set(members)
    for c in compiled:
        all_groups |= c.groups

    out = [f"add table inet {t}", f"delete table inet {t}", f"table inet {t} {{"]
    for g in sorted(all_groups):
        mem = members.get(g, frozenset())
        for (name, decl), version in zip(_group_set_decls(g), (4, 6), strict=True):
            elems = _group_elements(mem, version)
            out.append(f"\tset {name} {{ {decl}{_decl_elements(elems)} }}")
    for c in compiled:
        for chain, rules in (
            (c.names.egress, c.egress), (c.names.ingress, c.ingress), (c.names.source, c.source)
        ):
            out.append(f"\tchain {chain} {{")
            out.extend(f"\t\t{r}" for r in rules)
            out.append("\t}")
    taps = [_ifname(c.ep.interface) for c in compiled]
    out.append(f"\tset {TAPS_SET} {{ type ifname;" + _decl_elements(taps) + " }")
    for m, attr in ((FROM_VM_MAP, "egress"), (TO_VM_MAP, "ingress"), (SRC_VM_MAP, "source")):
        elems = [f"{_ifname(c.ep.interface)} : jump {getattr(c.names, attr)}" for c in compiled]
        out.append(f"\tmap {m} {{ type ifname : verdict;" + _decl_elements(elems) + " }")
    for name, hook, rules in _base_chains(settings):
        out.append(f"\tchain {name} {{")
        if hook:
            out.append(f"\t\t{hook}")
        out.extend(f"\t\t{r}" for r in rules)
        out.append("\t}")
    out.append("}")

    out += [f"add table arp {t}", f"delete table arp {t}", f"table arp {t} {{"]
    for c in compiled:
        out.append(f"\tchain {c.names.arp} {{")
        out.extend(f"\t\t{r}" for r in c.arp)
        out.append("\t}")
    elems = [f"{_ifname(c.ep.interface)} : jump {c.names.arp}" for c in compiled]
    out.append(f"\tmap {ARP_MAP} {{ type ifname : verdict;" + _decl_elements(elems) + " }")
    hook, rules = _arp_input(settings)
    out += [f"\tchain {ARP_INPUT_CHAIN} {{", f"\t\t{hook}", *(f"\t\t{r}" for r in rules), "\t}"]
    out.append("}")
    return "\n".join(out) + "\n"


def _decl_elements(elems: list[str]) -> str:
    return f" elements = {_elements(elems)};" if elems else ""
