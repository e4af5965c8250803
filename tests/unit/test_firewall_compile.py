"""The nft compiler: golden files for representative security groups, properties for the rest.

Golden files live in ``tests/unit/firewall_golden/<case>.nft``; regenerate them with
``L3HOSTD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_firewall_compile.py``
and review the diff. That the text is accepted by nft itself, and that the netlink
element batches give the same table as the text, is checked by
tests/integration/test_firewall_nft.py.
"""

from __future__ import annotations

import os
import random
import re
from dataclasses import replace
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l3hostd.firewall.compile import (
    FirewallSettings,
    base_script,
    compile_group,
    compile_profile,
    elements_script,
    endpoint_elements,
    full_script,
    gc_script,
    group_chains,
    group_members,
    group_script,
    group_sets,
    profile_chains,
    profile_script,
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

GOLDEN = Path(__file__).parent / "firewall_golden"
UPDATE = os.environ.get("L3HOSTD_UPDATE_GOLDEN") == "1"
S = FirewallSettings()

R = SecurityGroupRule
ING, EG = Direction.INGRESS, Direction.EGRESS
V4, V6 = EtherType.IPV4, EtherType.IPV6

GROUPS: dict[str, SecurityGroup] = {
    "ssh-icmp": SecurityGroup("ssh-icmp", (R(ING, V4, "tcp", 22, 22), R(ING, V4, "icmp"))),
    "web": SecurityGroup(
        "web",
        (
            R(ING, V4, "tcp", 80, 80),
            R(ING, V4, "tcp", 443, 443),
            R(ING, V4, "tcp", 5432, 5432, remote_group="app"),
            R(ING, V6, "tcp", 5432, 5432, remote_group="app"),
        ),
    ),
    "egress-only": SecurityGroup(
        "egress-only",
        (
            R(EG, V4, "udp", 53, 53, remote_ip_prefix=ip_network("10.0.0.53/32")),
            R(EG, V4, "tcp", 443, 443, remote_ip_prefix=ip_network("192.0.2.0/24")),
            R(EG, V6, "tcp", 443, 443),
        ),
    ),
    "ipv6": SecurityGroup(
        "ipv6",
        (
            R(ING, V6, "icmpv6", icmp_type=128, icmp_code=0),
            R(ING, V6, "icmp"),  # Neutron: "icmp" in an IPv6 rule is ICMPv6
            R(ING, V6, "tcp", 22, 22, remote_ip_prefix=ip_network("2001:db8::/32")),
            R(EG, V6),
        ),
    ),
    "ranges": SecurityGroup(
        "ranges",
        (
            R(ING, V4, "udp", 10000, 20000),
            R(ING, V4, "tcp", 1, 65535),  # the whole range: protocol only
            R(ING, V4, "tcp", 8080, None),
            R(ING, V4, "icmp", icmp_type=3, icmp_code=4),
        ),
    ),
    "numbers": SecurityGroup(
        "numbers",
        (
            R(ING, V4, 47),  # GRE
            R(ING, V4, 112, remote_ip_prefix=ip_network("10.1.0.0/16")),  # VRRP
            R(EG, V4, 50),
            R(ING, V6, 132),
            R(ING, V4, "icmpv6"),  # cannot match: left out
            R(ING, V4, remote_ip_prefix=ip_network("2001:db8::/32")),  # cannot match
        ),
    ),
    "default": SecurityGroup(
        "default",
        (
            R(EG, V4),
            R(EG, V6),
            R(ING, V4, remote_group="default"),
            R(ING, V6, remote_group="default"),
        ),
    ),
}


def endpoint(n: int, groups: tuple[str, ...], **kw: object) -> Endpoint:
    return Endpoint(
        id=f"8a3f1c2d-4e5b-4c8e-9a61-2f0b7c3d9e{n:02d}",
        interface=f"tap8a3f1c{n:02d}-4e",
        mac=f"fa:16:3e:12:34:{n:02x}",
        ips=(IPv4Address(f"158.39.77.{n}"), IPv6Address(f"2001:700:2:8201::{n}")),
        security_groups=groups,
        **kw,  # type: ignore[arg-type]
    )


CASES: dict[str, Endpoint] = {
    "ssh_icmp": endpoint(1, ("ssh-icmp",)),
    "web_remote_group": endpoint(2, ("web", "default")),
    "egress_only": endpoint(3, ("egress-only",)),
    "ipv6": endpoint(4, ("ipv6",)),
    "port_ranges": endpoint(5, ("ranges",)),
    "protocol_numbers": endpoint(6, ("numbers",)),
    "allowed_address_pairs": endpoint(
        7,
        ("ssh-icmp",),
        allowed_address_pairs=(
            ip_network("158.39.77.200/32"),
            ip_network("10.20.0.0/24"),
            ip_network("10.20.0.5/32"),  # covered by the /24: dropped
            ip_network("2001:700:2:8201::/64"),
        ),
    ),
    "no_groups": endpoint(8, ()),
    "unknown_group": endpoint(9, ("nonexistent",)),
}
MEMBERS: dict[str, frozenset[IPAddress | IPNetwork]] = {
    "app": frozenset({ip_address("10.9.0.1"), ip_network("10.9.1.0/24"), ip_address("fd00::1")})
}


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / f"{name}.nft"
    if UPDATE:
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with L3HOSTD_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{name} differs from its golden file"


def endpoint_text(ep: Endpoint) -> str:
    """Everything one endpoint needs, as nft text: its groups' chains, its profile's
    chains, then its elements (which the daemon writes over netlink)."""
    profile = compile_profile(ep.security_groups)
    parts = ["# groups\n"]
    parts += [group_script(compile_group(g, GROUPS.get(g)), S) for g in profile.groups]
    parts += ["# profile\n", profile_script(profile, S)]
    parts += ["# elements\n", elements_script(ep.interface, endpoint_elements(ep, profile), S)]
    return "".join(parts)


@pytest.mark.parametrize("case", sorted(CASES))
def test_endpoint_golden(case: str) -> None:
    check_golden(case, endpoint_text(CASES[case]))


def test_base_golden() -> None:
    check_golden("base", base_script(S))


def test_base_without_services_golden() -> None:
    s = FirewallSettings(
        interface_patterns=("tap*", "atap*"), dhcp=False, dns=False, metadata=False
    )
    check_golden("base_no_services", base_script(s))


def test_full_golden() -> None:
    eps = [CASES["ssh_icmp"], CASES["web_remote_group"], CASES["allowed_address_pairs"]]
    check_golden("full", full_script(eps, GROUPS, group_members(eps, MEMBERS), S))


def test_gc_golden() -> None:
    p = compile_profile(["web", "default"])
    check_golden("gc", gc_script([*p.chains, *group_chains("web")], ["app"], S))


def test_names() -> None:
    assert group_chains("web") == ("sg-web-in", "sg-web-out")
    assert group_sets("web") == ("g4-web", "g6-web", "g4n-web", "g6n-web")
    odd = group_sets("Web Servers!")
    assert re.fullmatch(r"g4-[a-z0-9-]+_[0-9a-f]{8}", odd[0])
    assert group_sets("a_b") != group_sets("a-b")
    p = compile_profile(["web", "default", "web"])
    assert p.groups == ("default", "web")
    assert p.chains == profile_chains(p.pid)
    assert compile_profile(["default", "web"]) == p
    assert compile_profile(["web"]).pid != p.pid
    assert compile_profile([]).ingress == (f'drop comment "l3hostd:{compile_profile([]).digest}"',)


def test_profile_tries_each_group_then_drops() -> None:
    p = compile_profile(["web", "default"])
    assert p.ingress[:-1] == ("jump sg-default-in", "jump sg-web-in")
    assert p.egress[:-1] == ("jump sg-default-out", "jump sg-web-out")
    assert p.ingress[-1].startswith("drop comment") and p.egress[-1].startswith("drop comment")


def test_group_rules_fields() -> None:
    r = compile_group("web", GROUPS["web"])
    assert r.remote == frozenset({"app"})
    assert r.chains == ("sg-web-in", "sg-web-out")
    assert r.ingress[-1] == r.egress[-1] == f'return comment "l3hostd:{r.digest}"'
    # a remote group: its host set or its prefix set
    assert "ip saddr @g4-app tcp dport 5432 accept" in r.ingress
    assert "meta nfproto . ip saddr @g4n-app tcp dport 5432 accept" in r.ingress
    unknown = compile_group("nonexistent", None)
    assert unknown.ingress == (f'return comment "l3hostd:{unknown.digest}"',)
    assert unknown.egress == (f'return comment "l3hostd:{unknown.digest}"',)


def test_egress_goes_to_egress_ok_ingress_accepts() -> None:
    """Egress never ends in accept (the destination VM's ingress must still run) and never
    in a plain return (that would only return to the profile chain)."""
    r = compile_group("egress-only", GROUPS["egress-only"])
    assert all(x.endswith(" goto vm-egress-ok") for x in r.egress[:-1])
    assert "ip daddr 10.0.0.53 udp dport 53 goto vm-egress-ok" in r.egress
    assert not any(x.endswith(" accept") for x in r.egress)
    ingress = compile_group("ssh-icmp", GROUPS["ssh-icmp"]).ingress
    assert all(x.endswith(" accept") for x in ingress[:-1])


def test_families_never_mix() -> None:
    """Every rule names its family: an IPv4 rule never matches IPv6 and vice versa."""
    for name, group in GROUPS.items():
        r = compile_group(name, group)
        for line in (*r.ingress[:-1], *r.egress[:-1]):
            assert re.search(r"meta nfproto ipv[46]|\bip6? [sd]addr|icmpv6 |icmp ", line), line


def test_digest_changes_with_rules() -> None:
    before = compile_group("ssh-icmp", GROUPS["ssh-icmp"])
    after = compile_group("ssh-icmp", SecurityGroup("ssh-icmp", (R(ING, V4, "tcp", 2222, 2222),)))
    assert before.digest != after.digest
    assert compile_group("ssh-icmp", GROUPS["ssh-icmp"]).digest == before.digest
    # the same rules under another name are another chain
    assert compile_group("other", GROUPS["ssh-icmp"]).digest != before.digest


def test_endpoint_elements() -> None:
    ep = CASES["allowed_address_pairs"]
    el = endpoint_elements(ep)
    p = compile_profile(ep.security_groups)
    assert (el.to_vm, el.from_vm) == p.chains
    assert el.tap and el.arp_tap
    assert el.macs == frozenset({"fa:16:3e:12:34:07"})
    # the /32 pair is a plain address (hash set), the /24 (interval set) swallows 10.20.0.5
    assert el.src4 == frozenset({"158.39.77.7", "158.39.77.200", "10.20.0.0/24"})
    assert el.src6 == frozenset({"2001:700:2:8201::/64"})  # covers the VM's own address
    assert el.arp_src4 == el.src4
    none = endpoint_elements(CASES["no_groups"])
    assert (none.to_vm, none.from_vm) == compile_profile([]).chains


def test_group_members() -> None:
    eps = [CASES["web_remote_group"], CASES["ssh_icmp"]]
    m = group_members(eps, MEMBERS)
    assert m["default"] == frozenset(CASES["web_remote_group"].ips)
    assert m["app"] == MEMBERS["app"]
    assert m["ssh-icmp"] == frozenset(CASES["ssh_icmp"].ips)


def test_rejects_unsafe_values() -> None:
    with pytest.raises(ValueError):
        endpoint_elements(replace(endpoint(1, ()), mac='fa:16:3e:00:00:01" drop'))
    bad_if = Endpoint("x", 'tap"; flush ruleset', "fa:16:3e:00:00:01", ())
    with pytest.raises(ValueError):
        endpoint_elements(bad_if)
    with pytest.raises(ValueError):
        base_script(FirewallSettings(interface_patterns=("t?p*",)))
    with pytest.raises(ValueError):
        base_script(FirewallSettings(metadata_address=("::1", 8775)))
    with pytest.raises(ValueError):
        base_script(FirewallSettings(table="bad table"))
    with pytest.raises(ValueError):
        full_script([CASES["ssh_icmp"], CASES["ssh_icmp"]], GROUPS, {}, S)


# ----------------------------------------------------------------------------- properties

rules_st = st.builds(
    SecurityGroupRule,
    direction=st.sampled_from(Direction),
    ethertype=st.sampled_from(EtherType),
    protocol=st.one_of(
        st.none(), st.sampled_from(["tcp", "udp", "icmp", "icmpv6"]), st.integers(0, 255)
    ),
    port_range_min=st.none() | st.integers(1, 65535),
    port_range_max=st.none() | st.integers(1, 65535),
    icmp_type=st.none() | st.integers(0, 255),
    icmp_code=st.none() | st.integers(0, 255),
    remote_ip_prefix=st.none()
    | st.sampled_from([ip_network("10.0.0.0/8"), ip_network("2001:db8::/32")]),
    remote_group=st.none() | st.sampled_from(["g1", "g2"]),
)
groups_st = st.dictionaries(
    st.sampled_from(["g1", "g2", "g3"]), st.lists(rules_st, max_size=6), max_size=3
).map(lambda d: {k: SecurityGroup(k, tuple(v)) for k, v in d.items()})


@st.composite
def endpoints_st(draw: st.DrawFn) -> list[Endpoint]:
    n = draw(st.integers(0, 6))
    out = []
    for i in range(n):
        ips: tuple[IPAddress, ...] = (IPv4Address(f"10.0.0.{i + 1}"), IPv6Address(f"fd00::{i + 1}"))
        pairs = tuple(draw(st.lists(st.sampled_from(
            [ip_network("10.9.0.0/24"), ip_network(f"10.0.0.{i + 1}/32"),
             ip_network("10.9.0.8/29"), ip_network("fd00:9::/64")]), max_size=3)))
        sgs = tuple(draw(st.lists(st.sampled_from(["g1", "g2", "g3"]), max_size=3)))
        out.append(Endpoint(f"ep{i}", f"tap{i}", f"fa:16:3e:00:00:{i:02x}", ips, pairs, sgs))
    return out


def shuffled_groups(
    groups: dict[str, SecurityGroup], rnd: random.Random
) -> dict[str, SecurityGroup]:
    items = list(groups.items())
    rnd.shuffle(items)
    out = {}
    for k, g in items:
        rules = list(g.rules)
        rnd.shuffle(rules)
        out[k] = SecurityGroup(k, tuple(rules))
    return out


@settings(max_examples=60, deadline=None)
@given(endpoints_st(), groups_st, st.randoms(use_true_random=False))
def test_stable_under_reordering(
    eps: list[Endpoint], groups: dict[str, SecurityGroup], rnd: random.Random
) -> None:
    members = group_members(eps, {})
    text = full_script(eps, groups, members, S)
    eps2 = list(eps)
    rnd.shuffle(eps2)
    groups2 = shuffled_groups(groups, rnd)
    eps2 = [
        Endpoint(
            e.id,
            e.interface,
            e.mac,
            tuple(rnd.sample(e.ips, len(e.ips))),
            tuple(rnd.sample(e.allowed_address_pairs, len(e.allowed_address_pairs))),
            tuple(rnd.sample(e.security_groups, len(e.security_groups))),
        )
        for e in eps2
    ]
    assert full_script(eps2, groups2, group_members(eps2, {}), S) == text
    for a in eps:
        b = next(e for e in eps2 if e.id == a.id)
        assert endpoint_elements(a) == endpoint_elements(b)
        assert compile_profile(a.security_groups) == compile_profile(b.security_groups)
    for name in groups:
        assert compile_group(name, groups[name]) == compile_group(name, groups2[name])


def _block(text: str, table: str) -> str:
    return text.split(f"table {table} l3hostd {{")[1].split("\n}\n")[0]


def _decl(block: str, kind: str, name: str) -> str:
    return next(ln for ln in block.splitlines() if ln.strip().startswith(f"{kind} {name} "))


@settings(max_examples=60, deadline=None)
@given(endpoints_st(), groups_st)
def test_every_tap_dispatched_exactly_once(
    eps: list[Endpoint], groups: dict[str, SecurityGroup]
) -> None:
    """Each managed TAP is in both dispatch maps exactly once (to its own profile's
    chains, which exist), in both TAP sets, and has its source MAC; nothing else is."""
    text = full_script(eps, groups, group_members(eps, {}), S)
    inet, arp = _block(text, "inet"), _block(text, "arp")
    chains = set(re.findall(r"^\tchain (\S+) \{", inet, re.M))
    for m, side in (("from_vm", 1), ("to_vm", 0)):
        line = _decl(inet, "map", m)
        for ep in eps:
            assert line.count(f'"{ep.interface}" : jump ') == 1
            target = compile_profile(ep.security_groups).chains[side]
            assert f'"{ep.interface}" : jump {target}' in line
            assert target in chains
        assert line.count(" : jump ") == len(eps)
    for block, name in ((inet, "taps"), (arp, "taps")):
        line = _decl(block, "set", name)
        assert all(line.count(f'"{ep.interface}"') == 1 for ep in eps)
        assert line.count('"') == 2 * len(eps)
    line = _decl(inet, "set", "src_mac")
    assert all(line.count(f'"{ep.interface}" . ') == 1 for ep in eps)


@settings(max_examples=80, deadline=None)
@given(endpoints_st(), groups_st)
def test_no_anonymous_sets_in_rules(
    eps: list[Endpoint], groups: dict[str, SecurityGroup]
) -> None:
    for name, group in groups.items():
        r = compile_group(name, group)
        for rule in (*r.ingress, *r.egress):
            assert "{" not in rule, rule
        assert r.remote <= frozenset({"g1", "g2"})
    text = full_script(eps, groups, group_members(eps, {}), S)
    in_chain = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("chain "):
            in_chain = True
        elif s == "}":
            in_chain = False
        elif in_chain:
            assert "{" not in s, s


@settings(max_examples=60, deadline=None)
@given(endpoints_st())
def test_source_elements_never_overlap(eps: list[Endpoint]) -> None:
    """Interval sets refuse overlapping elements: per TAP, no source prefix covers
    another."""
    for ep in eps:
        el = endpoint_elements(ep)
        for values in (el.src4, el.src6):
            nets = [ip_network(v) for v in values]
            for a in nets:
                for b in nets:
                    assert a == b or not a.overlaps(b), (a, b)  # type: ignore[arg-type]
