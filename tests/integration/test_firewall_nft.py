"""The compiled nft text against real nftables, in a throw-away network namespace.

Root only (skipped otherwise, or when nft is missing). Every nft call runs inside the
namespace ``l3fw-<random>`` (``ip netns exec``), which is deleted afterwards: the root
namespace's ruleset is never touched.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import pytest

from l3hostd.firewall import nft
from l3hostd.firewall.compile import (
    EndpointRules,
    FirewallSettings,
    chain_names,
    compile_endpoint,
    full_script,
    group_delta_script,
    group_members,
    group_set_script,
)
from l3hostd.model import Direction, Endpoint, EtherType, SecurityGroup, SecurityGroupRule

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("nft") is None, reason="needs root and nft"
)

S = FirewallSettings()
R = SecurityGroupRule
ING, EG = Direction.INGRESS, Direction.EGRESS
V4, V6 = EtherType.IPV4, EtherType.IPV6
GROUPS = {
    "web": SecurityGroup(
        "web",
        (
            R(ING, V4, "tcp", 80, 80),
            R(ING, V4, "tcp", 8000, 8080, remote_group="app"),
            R(ING, V6, "icmpv6", icmp_type=128),
            R(EG, V4, "udp", 53, 53, remote_ip_prefix=ip_network("10.0.0.0/8")),
        ),
    ),
    "app": SecurityGroup("app", (R(ING, V4, remote_group="web"), R(EG, V6), R(EG, V4, 47))),
}


def ep(n: int, groups: tuple[str, ...] = ("web",)) -> Endpoint:
    return Endpoint(
        id=f"00000000-0000-4000-8000-0000000000{n:02d}",
        interface=f"tap0000000{n:02d}-00",
        mac=f"fa:16:3e:00:00:{n:02x}",
        ips=(IPv4Address(f"10.1.0.{n}"), IPv6Address(f"2001:db8::{n}")),
        allowed_address_pairs=(ip_network("10.9.0.0/24"),) if n == 2 else (),
        security_groups=groups,
    )


EPS = [ep(1), ep(2), ep(3, ("app",))]
REMOTE = {"app": frozenset({ip_address("10.2.0.1"), ip_network("10.3.0.0/16")})}


@pytest.fixture
def ns() -> Iterator[str]:
    name = f"l3fw-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def apply(script: str, ns: str) -> None:
    asyncio.run(nft.apply(script, netns=ns))


def read(ns: str) -> nft.TableState:
    return asyncio.run(nft.read_table(S.table, netns=ns))


def listing(ns: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "ruleset"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def load(ns: str) -> None:
    apply(full_script(EPS, GROUPS, group_members(EPS, REMOTE), S), ns)


def test_missing_table_reads_empty(ns: str) -> None:
    state = read(ns)
    assert not state.exists and not state.inet.chains and not state.arp.chains


def test_full_script_loads_and_reads_back(ns: str) -> None:
    load(ns)
    load(ns)  # replaces itself atomically (add table; delete table; table {...})
    state = read(ns)
    assert state.exists and state.arp.exists
    for e in EPS:
        r = compile_endpoint(e, GROUPS, S)
        n = chain_names(e.id)
        assert state.inet.chains[n.egress] == r.digest
        assert state.inet.chains[n.ingress] == r.digest
        assert state.arp.chains[n.arp] == r.digest
        assert state.inet.maps["from_vm"][e.interface] == n.egress
        assert state.inet.maps["to_vm"][e.interface] == n.ingress
        assert state.arp.maps["from_vm"][e.interface] == n.arp
    assert state.inet.sets["taps"] == frozenset(e.interface for e in EPS)
    assert state.inet.sets["g4-app"] == frozenset(
        {"ipv4 . 10.1.0.3", "ipv4 . 10.2.0.1", "ipv4 . 10.3.0.0/16"}
    )
    assert state.inet.chains["filter-forward"] is None


def test_endpoint_add_delete_idempotent(ns: str) -> None:
    load(ns)
    new = ep(4, ("web", "app"))
    r = compile_endpoint(new, GROUPS, S)
    n = chain_names(new.id)
    apply(r.add_script, ns)
    apply(r.add_script, ns)
    state = read(ns)
    assert state.inet.chains[n.egress] == r.digest
    assert state.inet.maps["to_vm"][new.interface] == n.ingress
    assert new.interface in state.inet.sets["taps"]
    # a changed endpoint: same script shape, new digest, rules replaced
    changed = compile_endpoint(new, {**GROUPS, "web": SecurityGroup("web")}, S)
    assert changed.digest != r.digest
    apply(changed.add_script, ns)
    state = read(ns)
    assert state.inet.chains[n.ingress] == changed.digest
    assert state.inet.rules[n.ingress] < read_rules_before(r)
    apply(r.delete_script, ns)
    apply(r.delete_script, ns)
    state = read(ns)
    assert n.egress not in state.inet.chains and n.ingress not in state.inet.chains
    assert n.arp not in state.arp.chains
    assert new.interface not in state.inet.maps["from_vm"]
    assert new.interface not in state.inet.sets["taps"]
    # the others are untouched
    assert set(state.inet.maps["from_vm"]) == {e.interface for e in EPS}


def read_rules_before(r: EndpointRules) -> int:
    return sum(1 for ln in r.add_script.splitlines() if " rule inet " in ln)


def test_group_set_script_replaces_members(ns: str) -> None:
    load(ns)
    members = frozenset({ip_address("192.0.2.1"), ip_address("2001:db8:ff::1")})
    apply(group_set_script("app", members, S), ns)
    apply(group_set_script("app", members, S), ns)
    state = read(ns)
    assert state.inet.sets["g4-app"] == frozenset({"ipv4 . 192.0.2.1"})
    assert state.inet.sets["g6-app"] == frozenset({"ipv6 . 2001:db8:ff::1"})
    apply(group_delta_script("app", [ip_address("192.0.2.2")], [ip_address("192.0.2.1")], S), ns)
    assert read(ns).inet.sets["g4-app"] == frozenset({"ipv4 . 192.0.2.2"})
    apply(group_set_script("new-group", frozenset(), S), ns)  # creates the sets
    assert read(ns).inet.sets["g4-new-group"] == frozenset()


def test_bad_script_raises_and_changes_nothing(ns: str) -> None:
    load(ns)
    before = listing(ns)
    good = compile_endpoint(ep(5), GROUPS, S).add_script
    with pytest.raises(nft.NftError, match="Error"):
        apply(good + "add rule inet l3hostd filter-forward bogus stuff\n", ns)
    with pytest.raises(nft.NftError):  # deleting what is not there
        apply(good + "delete chain inet l3hostd no-such-chain\n", ns)
    assert listing(ns) == before


def test_nft_stub_failure(ns: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stub = tmp_path / "nft"
    stub.write_text("#!/bin/sh\necho 'Error: simulated failure' >&2\nexit 1\n")
    stub.chmod(0o755)
    monkeypatch.setenv("NFT", str(stub))
    with pytest.raises(nft.NftError, match="simulated failure"):
        apply("add table inet l3hostd\n", ns)
    with pytest.raises(nft.NftError, match="simulated failure"):
        read(ns)
    monkeypatch.setenv("NFT", str(tmp_path / "missing"))
    with pytest.raises(nft.NftError, match="missing"):
        apply("add table inet l3hostd\n", ns)  # via ip netns exec: exec of ... failed
    with pytest.raises(nft.NftError, match="cannot run"):
        asyncio.run(nft.apply("add table inet l3hostd\n"))  # no namespace: spawn fails


def test_delete_table(ns: str) -> None:
    load(ns)
    asyncio.run(nft.delete_table(S.table, netns=ns))
    asyncio.run(nft.delete_table(S.table, netns=ns))
    assert not read(ns).exists
    assert "l3hostd" not in listing(ns)


def test_libnftables_in_namespace(ns: str) -> None:
    """The in-process path: libnftables through ctypes, in a child inside the namespace."""
    code = (
        "from l3hostd.firewall import nft\n"
        "lib = nft.LibNftables()\n"
        "lib.run_sync('add table inet l3hostd\\nadd chain inet l3hostd c\\n')\n"
        "try:\n"
        "    lib.run_sync('add rule inet l3hostd c bogus\\n')\n"
        "except nft.NftError as e:\n"
        "    print('ERR', 'syntax error' in str(e))\n"
        "lib.close()\n"
    )
    out = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert out.strip() == "ERR True"
    assert "chain c" in listing(ns)
