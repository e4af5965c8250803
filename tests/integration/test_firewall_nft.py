"""The compiled nft text and the netlink element batches against the real kernel, in a
throw-away network namespace.

Root only (skipped otherwise, or when nft is missing). Every nft call runs inside the
namespace ``l3fw-<random>`` (``ip netns exec``), the netlink socket is opened in it, and
it is deleted afterwards: the root namespace's ruleset is never touched.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv6Address, ip_address, ip_network
from pathlib import Path

import pytest
from fwlab import RECONCILER_PROGRAM

from l3hostd.firewall import elements as fwe
from l3hostd.firewall import nfnl, nft
from l3hostd.firewall.compile import (
    FirewallSettings,
    base_script,
    compile_group,
    compile_profile,
    elements_script,
    endpoint_elements,
    full_script,
    group_members,
    group_script,
    profile_script,
)
from l3hostd.firewall.nfsock import NfnlError, NfnlSocket
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


def _netns() -> Iterator[str]:
    name = f"l3fw-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


ns = pytest.fixture(_netns)
ns2 = pytest.fixture(_netns)


def apply(script: str, ns: str) -> None:
    asyncio.run(nft.apply(script, netns=ns))


def read(ns: str) -> nft.TableState:
    return asyncio.run(nft.read_table(S.table, netns=ns))


def run_nft(ns: str, *args: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "nft", *args], check=True,
                          capture_output=True, text=True).stdout


def listing(ns: str) -> str:
    return run_nft(ns, "list", "ruleset")


def load(ns: str) -> None:
    apply(full_script(EPS, GROUPS, group_members(EPS, REMOTE), S), ns)


def chains_for(e: Endpoint) -> str:
    """The group and profile chains one endpoint needs, as one script."""
    profile = compile_profile(e.security_groups)
    return "".join([*(group_script(compile_group(g, GROUPS.get(g)), S) for g in profile.groups),
                    profile_script(profile, S)])


def test_missing_table_reads_empty(ns: str) -> None:
    state = read(ns)
    assert not state.exists and not state.inet.chains and not state.arp.chains


def test_full_script_loads_and_reads_back(ns: str) -> None:
    load(ns)
    load(ns)  # replaces itself atomically (add table; delete table; table {...})
    state = read(ns)
    assert state.exists and state.arp.exists
    got = fwe.interfaces_from_table(state.inet.sets, state.inet.maps, state.arp.sets)
    for e in EPS:
        assert got[e.interface] == endpoint_elements(e)
        p = compile_profile(e.security_groups)
        assert state.inet.chains[p.chains[0]] == p.digest
        assert state.inet.refs[p.chains[0]] == {f"sg-{g}-in" for g in p.groups}
    for name in ("web", "app"):
        r = compile_group(name, GROUPS[name])
        assert state.inet.chains[f"sg-{name}-in"] == state.inet.chains[f"sg-{name}-out"] == r.digest
    assert {"@g4-app", "@g4n-app"} <= state.inet.refs["sg-web-in"]
    assert state.inet.sets["g4-app"] == frozenset({"10.1.0.3", "10.2.0.1"})
    assert state.inet.sets["g4n-app"] == frozenset({"ipv4 . 10.3.0.0/16"})
    assert state.inet.chains["filter-forward"] is None
    assert len(state.inet.chains) == 8 + 4 + 4  # fixed + 2 groups + 2 profiles


def test_base_script_is_idempotent_and_keeps_content(ns: str) -> None:
    load(ns)
    before = read(ns)
    apply(base_script(S), ns)
    apply(base_script(S), ns)
    after = read(ns)
    assert after.inet.maps == before.inet.maps and after.inet.sets == before.inet.sets
    assert after.arp.sets == before.arp.sets and after.inet.chains == before.inet.chains


def test_netlink_elements_read_back_like_nft_text(ns: str, ns2: str) -> None:
    """The same endpoints, elements written by our packer in one namespace and as nft
    text in the other: nft lists the same table."""
    for name in (ns, ns2):
        apply(base_script(S) + "".join(chains_for(e) for e in EPS), name)
    with NfnlSocket(ns) as sock:
        for e in EPS:
            sock.send(fwe.interface_ops(e.interface, None, endpoint_elements(e), S.table))
        members = fwe.members_of([ip_address("10.2.0.1"), ip_network("10.3.0.0/16"),
                                  ip_address("fd00::7")])
        sock.send(fwe.member_ops(("g4-app", "g6-app", "g4n-app", "g6n-app"), None, members,
                                 S.table))
    text = "".join(elements_script(e.interface, endpoint_elements(e), S) for e in EPS)
    text += ("add element inet l3hostd g4-app { 10.2.0.1 }\n"
             "add element inet l3hostd g4n-app { ipv4 . 10.3.0.0/16 }\n"
             "add element inet l3hostd g6-app { fd00::7 }\n")
    apply(text, ns2)
    for family, what in (("inet", "set"), ("inet", "map"), ("arp", "set")):
        names = {"inet": ["taps", "src_mac", "src4", "src6", "src4net", "src6net",
                          "g4-app", "g6-app", "g4n-app", "g6n-app"],
                 "arp": ["taps", "src4", "src4net"]}[family] if what == "set" \
            else ["from_vm", "to_vm"]
        for name in names:
            a = json.loads(run_nft(ns, "-j", "list", what, family, S.table, name))
            b = json.loads(run_nft(ns2, "-j", "list", what, family, S.table, name))
            strip = [o for o in a["nftables"] if "metainfo" not in o]
            assert strip == [o for o in b["nftables"] if "metainfo" not in o], (family, name)
    state = read(ns)
    got = fwe.interfaces_from_table(state.inet.sets, state.inet.maps, state.arp.sets)
    assert got == {e.interface: endpoint_elements(e) for e in EPS}
    sets = state.inet.sets
    assert fwe.members_from_sets(sets["g4-app"] | sets["g4n-app"],
                                 sets["g6-app"] | sets["g6n-app"]) == members


def test_netlink_batches_are_atomic_and_deltas_apply(ns: str) -> None:
    apply(base_script(S) + chains_for(EPS[0]) + chains_for(EPS[2]), ns)
    a, c = endpoint_elements(EPS[0]), endpoint_elements(EPS[2])
    with NfnlSocket(ns) as sock:
        good = fwe.interface_ops(EPS[0].interface, None, a, S.table)
        bad = nfnl.SetOp(nfnl.ADD, nfnl.NFPROTO_INET, S.table, "from_vm",
                         (nfnl.Element(nfnl.ifname("tapx"), jump="no-such-chain"),))
        for batch in ([*good, bad], [bad, *good]):  # failing last, failing first
            with pytest.raises(NfnlError) as err:
                sock.send(batch)
            assert err.value.errno == 2 and "from_vm" in str(err.value)
            assert not read(ns).inet.sets["taps"], "a refused batch changes nothing"
        sock.send(good)
        # the endpoint moves to another profile and gets a pair covering its address:
        # map entries deleted and re-added, overlapping source swapped, in one batch
        moved = endpoint_elements(Endpoint(EPS[0].id, EPS[0].interface, EPS[0].mac,
                                           EPS[0].ips, (ip_network("10.1.0.0/24"),), ("app",)))
        assert moved.to_vm == c.to_vm and moved.src4 == frozenset({"10.1.0.0/24"})
        sock.send(fwe.interface_ops(EPS[0].interface, a, moved, S.table))
        state = read(ns)
        assert fwe.interfaces_from_table(state.inet.sets, state.inet.maps,
                                         state.arp.sets)[EPS[0].interface] == moved
        with pytest.raises(NfnlError) as err:  # deleting what is not there
            sock.send(fwe.interface_ops("tapnone", a, None, S.table))
        assert err.value.errno == 2
        sock.send(fwe.interface_ops(EPS[0].interface, moved, None, S.table))
        assert sock.batches == 3
    state = read(ns)
    assert not state.inet.sets["taps"] and not state.inet.maps["from_vm"]
    assert not state.arp.sets["src4"]


def test_bad_script_raises_and_changes_nothing(ns: str) -> None:
    load(ns)
    before = listing(ns)
    good = chains_for(ep(5, ("web", "app")))
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


@pytest.mark.parametrize("start", ["empty", "legacy"])
def test_reconciler_adopts_collects_and_replaces(ns: str, start: str) -> None:
    """The reconciler itself (libnftables + netlink, in process, in a child inside the
    namespace): loads from an empty table or replaces an old-layout one atomically; a
    restart adopts without rewriting (rule handles unchanged, no element batch); a moved
    endpoint's unused chains are collected; a resync afterwards finds nothing to do."""
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", RECONCILER_PROGRAM, start],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["ready"] == [True, True, True], out["error"]
    assert out["replaced"] == (1 if start == "legacy" else 0)
    assert out["adopted_ready"] == [True, True, True]
    assert out["handles"] and out["handles_after_restart"] == out["handles"]
    assert out["batches_after_restart"] == 0
    app = compile_profile(["app"])
    fixed = ["filter-forward", "filter-input", "nat-prerouting", "vm-egress", "vm-egress-ok",
             "vm-ingress", "vm-source", "vm-to-host"]
    assert out["chains_after_gc"] == sorted([*fixed, *app.chains, "sg-app-in", "sg-app-out"])
    assert out["ready_after_move"]
    assert out["dirty_after_resync"] == 0
