"""The nft compiler: golden files for representative security groups, properties for the rest.

Golden files live in ``tests/unit/firewall_golden/<case>.nft``; regenerate them with
``L3HOSTD_UPDATE_GOLDEN=1 .venv/bin/python -m pytest tests/unit/test_firewall_compile.py``
and review the diff. That the text is accepted by nft itself is checked by
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
    chain_names,
    compile_endpoint,
    full_script,
    group_delta_script,
    group_members,
    group_set_script,
    group_sets,
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


@pytest.mark.parametrize("case", sorted(CASES))
def test_endpoint_golden(case: str) -> None:
    r = compile_endpoint(CASES[case], GROUPS, S)
    check_golden(case, f"# add\n{r.add_script}# delete\n{r.delete_script}")


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


def test_group_set_golden() -> None:
    members = MEMBERS["app"] | {ip_address("10.9.1.7"), ip_address("10.9.0.2")}
    check_golden("group_set", group_set_script("app", members, S))


def test_rules_fields() -> None:
    r = compile_endpoint(CASES["web_remote_group"], GROUPS, S)
    assert r.groups == frozenset({"app", "default"})
    assert r.endpoint_id == CASES["web_remote_group"].id
    assert r.interface == "tap8a3f1c02-4e"
    assert f'comment "l3hostd:{r.digest}"' in r.add_script
    names = chain_names(r.endpoint_id)
    assert names.egress == "from-8a3f1c2d-4e5b-4c8e-9a61-2f0b7c3d9e02"
    assert names.ingress == "to-8a3f1c2d-4e5b-4c8e-9a61-2f0b7c3d9e02"


def test_egress_returns_ingress_accepts() -> None:
    r = compile_endpoint(CASES["egress_only"], GROUPS, S)
    egress = [ln for ln in r.add_script.splitlines() if " rule inet l3hostd from-" in ln]
    ingress = [ln for ln in r.add_script.splitlines() if " rule inet l3hostd to-" in ln]
    assert not any(ln.endswith(" accept") for ln in egress)
    assert egress[-1].endswith(" drop") and ingress[-1].endswith(" drop")
    assert "udp dport 53 return" in r.add_script


def test_families_never_mix() -> None:
    """Every rule names its family: an IPv4 rule never matches IPv6 and vice versa."""
    for ep in CASES.values():
        r = compile_endpoint(ep, GROUPS, S)
        for line in r.add_script.splitlines():
            m = re.match(r"add rule inet l3hostd (to|from)-\S+ (.*) (accept|return)$", line)
            if m is None or m.group(2).startswith("ct state"):
                continue
            body = m.group(2)
            assert re.search(r"meta nfproto ipv[46]|\bip6? [sd]addr|icmpv6 |icmp ", body), line


def test_group_names_are_safe_and_distinct() -> None:
    assert group_sets("web") == ("g4-web", "g6-web")
    odd = group_sets("Web Servers!")
    assert re.fullmatch(r"g4-[a-z0-9-]+_[0-9a-f]{8}", odd[0])
    assert group_sets("a_b") != group_sets("a-b")


def test_digest_changes_with_rules() -> None:
    ep = CASES["ssh_icmp"]
    before = compile_endpoint(ep, GROUPS, S)
    groups = dict(GROUPS)
    groups["ssh-icmp"] = SecurityGroup("ssh-icmp", (R(ING, V4, "tcp", 2222, 2222),))
    after = compile_endpoint(ep, groups, S)
    assert before.digest != after.digest
    assert compile_endpoint(ep, GROUPS, S).digest == before.digest


def test_group_members_and_delta() -> None:
    eps = [CASES["web_remote_group"], CASES["ssh_icmp"]]
    m = group_members(eps, MEMBERS)
    assert m["default"] == frozenset(CASES["web_remote_group"].ips)
    assert m["app"] == MEMBERS["app"]
    assert m["ssh-icmp"] == frozenset(CASES["ssh_icmp"].ips)
    d = group_delta_script("app", [ip_address("10.9.0.7")], [ip_address("fd00::1")], S)
    assert d == (
        "delete element inet l3hostd g6-app { ipv6 . fd00::1 }\n"
        "add element inet l3hostd g4-app { ipv4 . 10.9.0.7 }\n"
    )
    assert group_delta_script("app", [], [], S) == ""


def test_rejects_unsafe_values() -> None:
    with pytest.raises(ValueError):
        compile_endpoint(replace(endpoint(1, ()), mac='fa:16:3e:00:00:01" drop'), GROUPS, S)
    bad_if = Endpoint("x", 'tap"; flush ruleset', "fa:16:3e:00:00:01", ())
    with pytest.raises(ValueError):
        compile_endpoint(bad_if, GROUPS, S)
    with pytest.raises(ValueError):
        base_script(FirewallSettings(interface_patterns=("t?p*",)))
    with pytest.raises(ValueError):
        base_script(FirewallSettings(metadata_address=("::1", 8775)))
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
        sgs = tuple(draw(st.lists(st.sampled_from(["g1", "g2", "g3"]), max_size=3)))
        out.append(Endpoint(f"ep{i}", f"tap{i}", f"fa:16:3e:00:00:{i:02x}", ips, (), sgs))
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
            e.ips,
            (),
            tuple(rnd.sample(e.security_groups, len(e.security_groups))),
        )
        for e in eps2
    ]
    assert full_script(eps2, groups2, group_members(eps2, {}), S) == text
    for a in eps:
        b = next(e for e in eps2 if e.id == a.id)
        assert compile_endpoint(a, groups, S) == compile_endpoint(b, groups2, S)


@settings(max_examples=60, deadline=None)
@given(endpoints_st(), groups_st)
def test_every_tap_dispatched_exactly_once(
    eps: list[Endpoint], groups: dict[str, SecurityGroup]
) -> None:
    text = full_script(eps, groups, group_members(eps, {}), S)
    for table, m in (("inet", "from_vm"), ("inet", "to_vm"), ("arp", "from_vm")):
        block = text.split(f"table {table} l3hostd {{")[1]
        line = next(ln for ln in block.splitlines() if ln.strip().startswith(f"map {m} "))
        for ep in eps:
            assert line.count(f'"{ep.interface}" : jump ') == 1
        assert line.count(" : jump ") == len(eps)
    taps = next(ln for ln in text.splitlines() if ln.strip().startswith("set taps "))
    assert all(taps.count(f'"{ep.interface}"') == 1 for ep in eps)


@settings(max_examples=80, deadline=None)
@given(endpoints_st(), groups_st)
def test_no_anonymous_sets_in_endpoint_rules(
    eps: list[Endpoint], groups: dict[str, SecurityGroup]
) -> None:
    for ep in eps:
        r = compile_endpoint(ep, groups, S)
        for line in r.add_script.splitlines():
            if line.startswith("add rule "):
                assert "{" not in line, line
        assert r.groups <= frozenset({"g1", "g2"})
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
