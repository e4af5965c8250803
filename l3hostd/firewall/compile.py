"""Security groups -> nftables. Pure: no IO; the same input always gives the same bytes.

How it works
------------
Rules live in chains per *security group* and per *profile* (a distinct combination of
groups); an endpoint is only set/map elements keyed by its TAP name. So the number of
chains is O(groups + combinations), not O(endpoints), and one endpoint coming, going or
changing is a handful of elements (:mod:`l3hostd.firewall.elements`), which the daemon
writes over netlink without nft. Everything lives in ``table inet <table>`` plus a small
``table arp <table>`` (nothing else is ever touched)::

    table inet l3hostd
      set taps                 ifname              managed TAPs
      set src_mac              ifname . ether_addr the source MAC each TAP may use
      set src4 / src6          ifname . ipvX_addr  its IPs + allowed address pairs (hash)
      set src4net / src6net    ifname . ipvX_addr  pairs that are prefixes (interval)
      map from_vm / to_vm      ifname : verdict    TAP -> jump prof-<p>-out / prof-<p>-in
      set g4-<g> / g6-<g>      ipvX_addr           a remote group's members (hash)
      set g4n-<g> / g6n-<g>    nf_proto . addr     its members that are prefixes (interval)
      chain sg-<g>-in          one group's ingress rules: ``<match> accept``
      chain sg-<g>-out         its egress rules: ``<match> goto vm-egress-ok``
      chain prof-<p>-in/-out   ``jump sg-<g>-in`` for each group of the profile, then drop
      chain vm-source          anti-spoofing: (iifname . ether saddr) must be in src_mac,
                               (iifname . ip saddr) in src4 or src4net, same for IPv6
      chain vm-egress          from a managed TAP: ct established/related -> egress ok,
                               invalid drop, ``iifname vmap @from_vm``, drop
      chain vm-egress-ok       egress allowed: to a managed TAP -> ``goto vm-ingress`` (the
                               destination VM's ingress still runs), else accept
      chain vm-ingress         to a managed TAP: ct established/related accept, invalid
                               drop, ``oifname vmap @to_vm``, drop
      chain filter-forward     hook forward: a TAP-pattern interface not in @taps is
                               dropped both ways; from a TAP: vm-source, then vm-egress;
                               to a TAP: vm-ingress
      chain filter-input       hook input: traffic from TAPs -> ``vm-to-host``
      chain vm-to-host         established/related, DHCP, then (sender checked by
                               vm-source) DNS, metadata (after DNAT), IPv6 ND; else drop
      chain nat-prerouting     hook prerouting (dstnat): 169.254.169.254:80 -> metadata_address
    table arp l3hostd
      set taps, src4, src4net  as above: the IPv4s a TAP may claim
      chain input              hook input: sender 0.0.0.0 (probe) allowed from TAP
                               patterns, (iifname . sender) in @src4 accepted, any other
                               ARP from a TAP pattern or a managed TAP dropped

Neutron semantics: a packet is allowed if ANY rule of ANY of the endpoint's groups allows
it. Ingress: a group chain's ``accept`` is final; a group chain that matches nothing
returns to the profile chain, which tries the next group and drops at the end. Egress must
not end in ``accept`` (the destination VM's ingress has to run when both are local), and a
``return`` from a group chain would only return to the profile chain; so an allowing egress
rule does ``goto vm-egress-ok``, which continues with the destination's ingress or
accepts (what the forward chain's policy would do). Stateful (conntrack), default drop,
closed by default: a TAP-pattern interface with no elements passes nothing; a managed TAP
whose dispatch entry is missing is dropped by vm-egress / vm-ingress.

DHCP from 0.0.0.0 reaches the host through the input hook before the anti-spoofing (only
the service allow-list applies to it). DNAT to 127.0.0.1 from a TAP needs
``net.ipv4.conf.<tap>.route_localnet=1``.

Why this shape (measured with nft 1.0.6, see bench/firewall.py and DESIGN.md): nft
re-fetches its cache -- every chain and rule, for element commands every set's elements --
before each command, so with per-endpoint chains any change cost 7-14 ms at 5,000
endpoints. With chains per group and profile the table has few chains, and endpoint
changes bypass nft entirely. No rule contains an anonymous set (``{a, b}``: nft's
evaluation explodes with many of them). Host addresses are in hash sets, prefixes in
separate interval sets: a deletion from an interval set (pipapo) costs 11-20 ms on this
kernel, from a hash set 0.01 ms. Every interval set is a concatenation (pipapo), which nft
1.0.6 does not dump before an ``add element`` either (it does dump plain interval sets).

Digests: each group or profile chain ends with a rule carrying ``comment
"l3hostd:<digest>"`` (nft 1.0.6 shows no chain comments in ``nft -j``), read back by
:func:`l3hostd.firewall.nft.read_table`, so that a restart adopts chains that are right.
Scripts are idempotent: ``add`` of an existing object is not an error, and a chain is
``flush``-ed and refilled in the same transaction.

Rules are sorted and de-duplicated (all are "allow": order does not matter), addresses are
sorted and those covered by another element dropped (interval sets refuse overlaps), so
the output is stable under any reordering of the input. A rule that cannot match (IPv6
prefix in an IPv4 rule, ICMPv6 in an IPv4 rule, unknown protocol name) is left out, and a
group an endpoint names but that is unknown gets empty chains: it allows nothing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import IPv4Address, ip_address
from typing import Final

from l3hostd.firewall import elements as fwe
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
    "FirewallSettings",
    "GroupRules",
    "Profile",
    "base_script",
    "compile_group",
    "compile_profile",
    "elements_script",
    "endpoint_elements",
    "full_script",
    "gc_script",
    "group_chains",
    "group_members",
    "group_script",
    "group_sets",
    "ident",
    "profile_chains",
    "profile_script",
]

DIGEST_PREFIX: Final = "l3hostd:"
METADATA_IP: Final = IPv4Address("169.254.169.254")

# Objects of the inet table (element-holding sets: see l3hostd.firewall.elements).
TAPS_SET: Final = fwe.TAPS_SET
FROM_VM_MAP: Final = fwe.FROM_VM_MAP
TO_VM_MAP: Final = fwe.TO_VM_MAP
SRC_MAC_SET: Final = fwe.SRC_MAC_SET
SRC4_SET: Final = fwe.SRC4_SET
SRC6_SET: Final = fwe.SRC6_SET
SRC4_NET_SET: Final = fwe.SRC4_NET_SET
SRC6_NET_SET: Final = fwe.SRC6_NET_SET
FORWARD_CHAIN: Final = "filter-forward"
INPUT_CHAIN: Final = "filter-input"
VM_TO_HOST_CHAIN: Final = "vm-to-host"
NAT_CHAIN: Final = "nat-prerouting"
SOURCE_CHAIN: Final = "vm-source"
EGRESS_CHAIN: Final = "vm-egress"
EGRESS_OK_CHAIN: Final = "vm-egress-ok"
INGRESS_CHAIN: Final = "vm-ingress"
# Objects of the arp table.
ARP_TAPS_SET: Final = fwe.ARP_TAPS_SET
ARP_SRC4_SET: Final = fwe.ARP_SRC4_SET
ARP_SRC4_NET_SET: Final = fwe.ARP_SRC4_NET_SET
ARP_INPUT_CHAIN: Final = "input"

#: Every fixed (non-group, non-profile) chain of the inet table.
FIXED_CHAINS: Final = frozenset({
    FORWARD_CHAIN, INPUT_CHAIN, VM_TO_HOST_CHAIN, NAT_CHAIN,
    SOURCE_CHAIN, EGRESS_CHAIN, EGRESS_OK_CHAIN, INGRESS_CHAIN,
})

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


# ----------------------------------------------------------------------------- names


def ident(name: str) -> str:
    """A stable, injective nft identifier fragment for a group name: the name itself
    when it is short lower-case alphanumerics/hyphens, else a sanitized prefix and a hash
    (with ``_``, which the plain form never contains, so the two cannot collide)."""
    if _SIMPLE_NAME.fullmatch(name):
        return name
    clean = re.sub(r"[^a-z0-9-]", "", name.lower())[:24]
    return f"{clean}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def group_chains(group: str) -> tuple[str, str]:
    """(ingress chain, egress chain) of a security group."""
    return group_chains_of_ident(ident(group))


def group_chains_of_ident(i: str) -> tuple[str, str]:
    return f"sg-{i}-in", f"sg-{i}-out"


def group_sets(group: str) -> tuple[str, str, str, str]:
    """The sets of a remote group: IPv4 and IPv6 host addresses, IPv4 and IPv6 prefixes."""
    return sets_of_ident(ident(group))


def sets_of_ident(i: str) -> tuple[str, str, str, str]:
    return f"g4-{i}", f"g6-{i}", f"g4n-{i}", f"g6n-{i}"


def profile_chains(pid: str) -> tuple[str, str]:
    """(ingress chain, egress chain) of a profile."""
    return f"prof-{pid}-in", f"prof-{pid}-out"


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


def _elements(items: Iterable[str]) -> str:
    return "{ " + ", ".join(items) + " }"


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _tag(digest: str) -> str:
    return f'comment "{DIGEST_PREFIX}{digest}"'


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


def _rule_texts(rule: SecurityGroupRule) -> list[str]:
    """One security-group rule as nft match expressions (without verdict): one text, or
    two for a remote group (its host set, its prefix set: either may match); none when
    the rule can never match."""
    v6 = rule.ethertype is EtherType.IPV6
    fam = "ip6" if v6 else "ip"
    side = "saddr" if rule.direction is Direction.INGRESS else "daddr"
    if rule.remote_group is not None:
        sets = group_sets(rule.remote_group)
        proto = _protocol_match(rule, v6)
        if proto is None:
            return []
        hosts, nets = (sets[1], sets[3]) if v6 else (sets[0], sets[2])
        return [
            " ".join(x for x in (f"{fam} {side} @{hosts}", proto) if x),
            " ".join(x for x in (f"meta nfproto . {fam} {side} @{nets}", proto) if x),
        ]
    text = _rule_text(rule)
    return [text] if text is not None else []


def _rule_text(rule: SecurityGroupRule) -> str | None:
    """A rule without remote group as nft match expressions; None when it cannot match."""
    v6 = rule.ethertype is EtherType.IPV6
    fam = "ip6" if v6 else "ip"
    side = "saddr" if rule.direction is Direction.INGRESS else "daddr"
    parts: list[str] = []
    if rule.remote_ip_prefix is not None:
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


# ----------------------------------------------------------------------------- groups


@dataclass(frozen=True, slots=True)
class GroupRules:
    """One security group compiled: its two chains' rules (the last one of each carries
    the digest) and the remote groups they reference."""

    name: str
    digest: str  # equal digest == identical chains
    ingress: tuple[str, ...]
    egress: tuple[str, ...]
    remote: frozenset[str]  # remote group names (their sets must exist)

    @property
    def chains(self) -> tuple[str, str]:
        return group_chains(self.name)


def compile_group(name: str, group: SecurityGroup | None) -> GroupRules:
    """A group's chains. An unknown group (None) gets chains that allow nothing."""
    ingress: set[str] = set()
    egress: set[str] = set()
    remote: set[str] = set()
    for rule in group.rules if group is not None else ():
        texts = _rule_texts(rule)
        if not texts:
            continue
        if rule.remote_group is not None:
            remote.add(rule.remote_group)
        (ingress if rule.direction is Direction.INGRESS else egress).update(texts)
    ing, eg = sorted(ingress), sorted(egress)
    digest = _digest("group", name, *ing, "|", *eg, "|", *sorted(remote))
    return GroupRules(
        name=name,
        digest=digest,
        ingress=(*(f"{r} accept" for r in ing), f"return {_tag(digest)}"),
        egress=(*(f"{r} goto {EGRESS_OK_CHAIN}" for r in eg), f"return {_tag(digest)}"),
        remote=frozenset(remote),
    )


_GROUP_SET_TYPES: Final = (
    "type ipv4_addr;",
    "type ipv6_addr;",
    "type nf_proto . ipv4_addr; flags interval;",
    "type nf_proto . ipv6_addr; flags interval;",
)


def _group_set_decls(i: str) -> list[tuple[str, str]]:
    return list(zip(sets_of_ident(i), _GROUP_SET_TYPES, strict=True))


def group_script(rules: GroupRules, settings: FirewallSettings) -> str:
    """Create (if missing) the remote-group sets the chains reference, and create or
    replace the group's two chains. Set *content* is written as elements."""
    inet = f"inet {_check_table(settings)}"
    out: list[str] = []
    for g in sorted(rules.remote):
        for name, decl in _group_set_decls(ident(g)):
            out.append(f"add set {inet} {name} {{ {decl} }}")
    for chain, body in zip(rules.chains, (rules.ingress, rules.egress), strict=True):
        out.append(f"add chain {inet} {chain}")
        out.append(f"flush chain {inet} {chain}")
        out.extend(f"add rule {inet} {chain} {r}" for r in body)
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- profiles


@dataclass(frozen=True, slots=True)
class Profile:
    """A distinct combination of groups: two chains trying each group's chain in turn."""

    pid: str
    groups: tuple[str, ...]  # sorted, unique
    digest: str
    ingress: tuple[str, ...]
    egress: tuple[str, ...]

    @property
    def chains(self) -> tuple[str, str]:
        return profile_chains(self.pid)


def profile_id(groups: Iterable[str]) -> str:
    return _digest("profile", *sorted(set(groups)))[:12]


def compile_profile(groups: Iterable[str]) -> Profile:
    names = tuple(sorted(set(groups)))
    pid = profile_id(names)
    digest = _digest("profile-chains", pid, *names)
    return Profile(
        pid=pid,
        groups=names,
        digest=digest,
        ingress=(*(f"jump {group_chains(g)[0]}" for g in names), f"drop {_tag(digest)}"),
        egress=(*(f"jump {group_chains(g)[1]}" for g in names), f"drop {_tag(digest)}"),
    )


def profile_script(profile: Profile, settings: FirewallSettings) -> str:
    """Create or replace a profile's two chains (its groups' chains must exist)."""
    inet = f"inet {_check_table(settings)}"
    out: list[str] = []
    for chain, body in zip(profile.chains, (profile.ingress, profile.egress), strict=True):
        out.append(f"add chain {inet} {chain}")
        out.append(f"flush chain {inet} {chain}")
        out.extend(f"add rule {inet} {chain} {r}" for r in body)
    return "\n".join(out) + "\n"


def gc_script(chains: Iterable[str], set_idents: Iterable[str], settings: FirewallSettings) -> str:
    """Delete group/profile chains and remote-group sets nothing references any more. Each
    is first *added* (nft 1.0.6 has no ``destroy``), so that deleting what is already gone
    is not an error; all chains are flushed before any is deleted (a chain's rules may
    reference another of them, or a set)."""
    inet = f"inet {_check_table(settings)}"
    names = sorted(set(chains))
    idents = sorted(set(set_idents))
    out = [f"add chain {inet} {c}" for c in names]
    out += [f"flush chain {inet} {c}" for c in names]
    out += [f"delete chain {inet} {c}" for c in names]
    for i in idents:
        for name, decl in _group_set_decls(i):
            out.append(f"add set {inet} {name} {{ {decl} }}")
            out.append(f"delete set {inet} {name}")
    return "\n".join(out) + "\n" if out else ""


# ----------------------------------------------------------------------------- endpoints


def endpoint_elements(ep: Endpoint, profile: Profile | None = None) -> fwe.InterfaceElements:
    """The elements one endpoint needs (its TAP's dispatch to its profile, source checks).
    Raises ValueError on an interface name or MAC that nft would not take."""
    _ifname(ep.interface)
    _mac(ep.mac)
    prof = profile if profile is not None else compile_profile(ep.security_groups)
    ingress, egress = prof.chains
    return fwe.wanted(ep.mac, [*ep.ips, *ep.allowed_address_pairs], egress, ingress)


def elements_script(
    interface: str, el: fwe.InterfaceElements, settings: FirewallSettings
) -> str:
    """The same elements as nft ``add element`` commands: what the netlink batch of a new
    TAP writes, in nft's language (golden files, and the tests that check that both
    paths give the same table)."""
    t = _check_table(settings)
    q = _ifname(interface)
    inet = f"inet {t}"
    out: list[str] = []
    if el.tap:
        out.append(f"add element {inet} {TAPS_SET} {{ {q} }}")
    for family, name, values in (
        (inet, SRC_MAC_SET, sorted(el.macs)),
        (inet, SRC4_SET, _split(el.src4, False)),
        (inet, SRC4_NET_SET, _split(el.src4, True)),
        (inet, SRC6_SET, _split(el.src6, False)),
        (inet, SRC6_NET_SET, _split(el.src6, True)),
        (f"arp {t}", ARP_SRC4_SET, _split(el.arp_src4, False)),
        (f"arp {t}", ARP_SRC4_NET_SET, _split(el.arp_src4, True)),
    ):
        if values:
            out.append(f"add element {family} {name} {_elements(f'{q} . {v}' for v in values)}")
    if el.arp_tap:
        out.append(f"add element arp {t} {ARP_TAPS_SET} {{ {q} }}")
    if el.to_vm is not None:
        out.append(f"add element {inet} {TO_VM_MAP} {{ {q} : jump {el.to_vm} }}")
    if el.from_vm is not None:
        out.append(f"add element {inet} {FROM_VM_MAP} {{ {q} : jump {el.from_vm} }}")
    return "\n".join(out) + "\n" if out else ""


# ----------------------------------------------------------------------------- base


def _metadata_target(settings: FirewallSettings) -> tuple[IPv4Address, int]:
    addr = ip_address(settings.metadata_address[0])
    port = settings.metadata_address[1]
    if not isinstance(addr, IPv4Address):
        raise ValueError("metadata_address must be IPv4 (DNAT target of 169.254.169.254)")
    if not 0 < port < 65536:
        raise ValueError(f"invalid metadata port {port}")
    return addr, port


_SETS: Final = (
    (TAPS_SET, "set", "type ifname;"),
    (SRC_MAC_SET, "set", "type ifname . ether_addr;"),
    (SRC4_SET, "set", "type ifname . ipv4_addr;"),
    (SRC6_SET, "set", "type ifname . ipv6_addr;"),
    (SRC4_NET_SET, "set", "type ifname . ipv4_addr; flags interval;"),
    (SRC6_NET_SET, "set", "type ifname . ipv6_addr; flags interval;"),
    (TO_VM_MAP, "map", "type ifname : verdict;"),
    (FROM_VM_MAP, "map", "type ifname : verdict;"),
)
_ARP_SETS: Final = (
    (ARP_TAPS_SET, "set", "type ifname;"),
    (ARP_SRC4_SET, "set", "type ifname . ipv4_addr;"),
    (ARP_SRC4_NET_SET, "set", "type ifname . ipv4_addr; flags interval;"),
)


def _source_and_dispatch() -> list[tuple[str, str, list[str]]]:
    source = [
        f"iifname . ether saddr != @{SRC_MAC_SET} drop",
        f"iifname . ip saddr != @{SRC4_SET} iifname . ip saddr != @{SRC4_NET_SET} drop",
        f"iifname . ip6 saddr != @{SRC6_SET} iifname . ip6 saddr != @{SRC6_NET_SET} drop",
    ]
    ingress = [
        "ct state established,related accept",
        "ct state invalid drop",
        f"oifname vmap @{TO_VM_MAP}",
        "drop",  # a managed TAP whose dispatch entry is missing
    ]
    egress_ok = [f"oifname @{TAPS_SET} goto {INGRESS_CHAIN}", "accept"]
    egress = [
        f"ct state established,related goto {EGRESS_OK_CHAIN}",
        "ct state invalid drop",
        f"iifname vmap @{FROM_VM_MAP}",
        "drop",
    ]
    return [
        (INGRESS_CHAIN, "", ingress),
        (EGRESS_OK_CHAIN, "", egress_ok),
        (EGRESS_CHAIN, "", egress),
        (SOURCE_CHAIN, "", source),
    ]


def _hook_chains(settings: FirewallSettings) -> list[tuple[str, str, list[str]]]:
    """(name, hook definition or "", rules) of the chains after the dispatch chains."""
    pats = _patterns(settings)
    forward = [f"iifname {p} iifname != @{TAPS_SET} drop" for p in pats]
    forward += [f"oifname {p} oifname != @{TAPS_SET} drop" for p in pats]
    forward += [
        f"iifname @{TAPS_SET} jump {SOURCE_CHAIN}",
        f"iifname @{TAPS_SET} goto {EGRESS_CHAIN}",
        f"oifname @{TAPS_SET} goto {INGRESS_CHAIN}",
    ]
    inp = [f"iifname {p} jump {VM_TO_HOST_CHAIN}" for p in pats]
    inp += [f"iifname @{TAPS_SET} jump {VM_TO_HOST_CHAIN}"]
    host = ["ct state established,related accept", "ct state invalid drop"]
    if settings.dhcp:
        host.append("meta nfproto ipv4 udp sport 68 udp dport 67 accept")
        host.append("meta nfproto ipv6 udp sport 546 udp dport 547 accept")
    # past DHCP (which may come from 0.0.0.0), the sender must be who its TAP says:
    # unknown TAPs are dropped, known ones go through the anti-spoofing chain
    host.append(f"iifname != @{TAPS_SET} drop")
    host.append(f"jump {SOURCE_CHAIN}")
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
    rules += [f"iifname . arp saddr ip @{ARP_SRC4_SET} accept"]
    rules += [f"iifname . arp saddr ip @{ARP_SRC4_NET_SET} accept"]
    rules += [f"iifname {p} drop" for p in pats]
    rules += [f"iifname @{ARP_TAPS_SET} drop"]
    return "type filter hook input priority filter; policy accept;", rules


def base_script(settings: FirewallSettings) -> str:
    """The idempotent table skeleton (no group, profile or endpoint content): running it
    again resets the fixed chains' rules and keeps every other chain and every element."""
    t = _check_table(settings)
    inet = f"inet {t}"
    out = [f"add table {inet}"]
    out += [f"add {kind} {inet} {name} {{ {decl} }}" for name, kind, decl in _SETS]
    chains = [*_source_and_dispatch(), *_hook_chains(settings)]
    # every fixed chain exists before any rule refers to one
    for name, hook, _rules in chains:
        out.append(f"add chain {inet} {name} {{ {hook} }}" if hook else f"add chain {inet} {name}")
    for name, _hook, rules in chains:
        out.append(f"flush chain {inet} {name}")
        out.extend(f"add rule {inet} {name} {r}" for r in rules)
    hook, rules = _arp_input(settings)
    out += [f"add table arp {t}"]
    out += [f"add {kind} arp {t} {name} {{ {decl} }}" for name, kind, decl in _ARP_SETS]
    out += [
        f"add chain arp {t} {ARP_INPUT_CHAIN} {{ {hook} }}",
        f"flush chain arp {t} {ARP_INPUT_CHAIN}",
        *(f"add rule arp {t} {ARP_INPUT_CHAIN} {r}" for r in rules),
    ]
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- members


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
    table or the new one, never no table. Objects are declared before they are referenced.
    Remote-group sets exist for the groups the rules reference."""
    t = _check_table(settings)
    eps = sorted(endpoints, key=lambda e: (e.interface, e.id))
    seen: set[str] = set()
    for ep in eps:
        if ep.interface in seen:
            raise ValueError(f"interface {ep.interface} claimed by two endpoints")
        seen.add(ep.interface)
    profiles = {p.pid: p for p in (compile_profile(ep.security_groups) for ep in eps)}
    used = sorted({g for p in profiles.values() for g in p.groups})
    rules = [compile_group(g, groups.get(g)) for g in used]
    remote_names = sorted({r for g in rules for r in g.remote})
    per_ep = [(ep, endpoint_elements(ep, profiles[profile_id(ep.security_groups)]))
              for ep in eps]

    def chain(name: str, body: Iterable[str], hook: str = "") -> list[str]:
        return [f"\tchain {name} {{", *([f"\t\t{hook}"] if hook else []),
                *(f"\t\t{r}" for r in body), "\t}"]

    def ifelems(attr: str, net: bool = False) -> list[str]:
        out: list[str] = []
        for ep, el in per_ep:
            q = _ifname(ep.interface)
            value: object = getattr(el, attr)
            if attr in ("from_vm", "to_vm"):
                out.append(f"{q} : jump {value}")
            elif attr in ("tap", "arp_tap"):
                out.append(q)
            elif attr == "macs":
                assert isinstance(value, frozenset)
                out.extend(f"{q} . {v}" for v in sorted(value))
            else:
                assert isinstance(value, frozenset)
                out.extend(f"{q} . {v}" for v in _split(value, net))
        return out

    out = [f"add table inet {t}", f"delete table inet {t}", f"table inet {t} {{"]
    for g in remote_names:
        mem = fwe.members_of(members.get(g, frozenset()))
        contents = (
            list(_split(mem.v4, False)), list(_split(mem.v6, False)),
            [f"ipv4 . {a}" for a in _split(mem.v4, True)],
            [f"ipv6 . {a}" for a in _split(mem.v6, True)],
        )
        for (name, decl), elems in zip(_group_set_decls(ident(g)), contents, strict=True):
            out.append(f"\tset {name} {{ {decl}{_decl_elements(elems)} }}")
    sources = {TAPS_SET: ("tap", False), SRC_MAC_SET: ("macs", False),
               SRC4_SET: ("src4", False), SRC6_SET: ("src6", False),
               SRC4_NET_SET: ("src4", True), SRC6_NET_SET: ("src6", True)}
    for name, kind, decl in _SETS:
        if kind == "set":
            elems = ifelems(*sources[name])
            out.append(f"\tset {name} {{ {decl}{_decl_elements(elems)} }}")
    for gr in rules:  # ingress side: group chains, profile chains, to_vm, vm-ingress
        out += chain(gr.chains[0], gr.ingress)
    for p in profiles.values():
        out += chain(p.chains[0], p.ingress)
    out.append(f"\tmap {TO_VM_MAP} {{ type ifname : verdict;"
               f"{_decl_elements(ifelems('to_vm'))} }}")
    dispatch = dict((n, r) for n, _h, r in _source_and_dispatch())
    out += chain(INGRESS_CHAIN, dispatch[INGRESS_CHAIN])
    out += chain(EGRESS_OK_CHAIN, dispatch[EGRESS_OK_CHAIN])
    for gr in rules:  # egress side
        out += chain(gr.chains[1], gr.egress)
    for p in profiles.values():
        out += chain(p.chains[1], p.egress)
    out.append(f"\tmap {FROM_VM_MAP} {{ type ifname : verdict;"
               f"{_decl_elements(ifelems('from_vm'))} }}")
    out += chain(EGRESS_CHAIN, dispatch[EGRESS_CHAIN])
    out += chain(SOURCE_CHAIN, dispatch[SOURCE_CHAIN])
    for name, hook, body in _hook_chains(settings):
        out += chain(name, body, hook)
    out.append("}")

    out += [f"add table arp {t}", f"delete table arp {t}", f"table arp {t} {{"]
    arp_sources = {ARP_TAPS_SET: ("arp_tap", False), ARP_SRC4_SET: ("arp_src4", False),
                   ARP_SRC4_NET_SET: ("arp_src4", True)}
    for name, _kind, decl in _ARP_SETS:
        elems = ifelems(*arp_sources[name])
        out.append(f"\tset {name} {{ {decl}{_decl_elements(elems)} }}")
    hook, body = _arp_input(settings)
    out += chain(ARP_INPUT_CHAIN, body, hook)
    out.append("}")
    return "\n".join(out) + "\n"


def _split(spellings: Iterable[str], nets: bool) -> list[str]:
    """The host addresses (``nets`` False) or the prefixes of a set of spellings, in
    numeric order: they go in the hash set and the interval set respectively."""
    return sorted((s for s in spellings if ("/" in s) == nets), key=_addr_key)


def _addr_key(spelling: str) -> tuple[int, int, int]:
    """Sort key of an address or prefix in nft's spelling (numeric, not textual)."""
    addr, _, length = spelling.partition("/")
    a = ip_address(addr)
    return (a.version, int(a), int(length) if length else a.max_prefixlen)


def _decl_elements(elems: list[str]) -> str:
    return f" elements = {_elements(elems)};" if elems else ""
