"""FirewallInputs (pure bookkeeping) and FirewallReconciler's decisions, with fakes: what
is desired when, adoption of a table that is right (nothing rewritten), replacement of a
table in another layout, garbage collection only once unreferenced, failure isolation.

The fakes record nft scripts and element batches; tests/unit/test_firewall_gating.py
covers the ordering against routes, tests/integration/test_firewall_nft.py the real thing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from ipaddress import IPv4Address, ip_address, ip_network
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from l3hostd.firewall import elements as fwe
from l3hostd.firewall import nfnl, nft
from l3hostd.firewall.compile import (
    FirewallSettings,
    compile_group,
    compile_profile,
    endpoint_elements,
)
from l3hostd.firewall.reconciler import FirewallInputs, FirewallReconciler, _MemberSet
from l3hostd.model import Direction, Endpoint, EtherType, SecurityGroup, SecurityGroupRule
from l3hostd.reconcile import Phase

R = SecurityGroupRule
WEB = SecurityGroup("web", (R(Direction.INGRESS, EtherType.IPV4, "tcp", 80, 80,
                              remote_group="app"),))
APP = SecurityGroup("app", (R(Direction.EGRESS, EtherType.IPV4),))
GROUPS = {"web": WEB, "app": APP}


def ep(n: int, groups: tuple[str, ...], iface: str | None = None) -> Endpoint:
    return Endpoint(f"e{n}", iface or f"tap{n}", f"fa:16:3e:00:00:{n:02x}",
                    (ip_address(f"10.0.0.{n}"),), (), groups)


def inputs() -> FirewallInputs:
    i = FirewallInputs(FirewallSettings())
    i.set_groups(GROUPS)
    return i


# ----------------------------------------------------------------------------- inputs


def test_profiles_groups_and_sets_exist_while_used() -> None:
    i = inputs()
    p = compile_profile(["web"])
    keys = i.set_endpoint(ep(1, ("web",)), "e1", True)
    assert {"if:tap1", f"prof:{p.pid}", "sg:web", "set:app", "set:web"} <= keys
    i.set_endpoint(ep(2, ("web",)), "e2", True)
    assert i.desired(f"prof:{p.pid}") == p.digest
    assert i.desired("sg:web") == compile_group("web", WEB).digest
    assert i.desired("set:app") is not None  # web's rules reference app
    assert i.desired("set:web") is None  # nobody references web's members
    assert i.desired("sg:app") is None  # nobody is in app
    i.set_endpoint(None, "e1", False)
    assert i.desired(f"prof:{p.pid}") == p.digest  # e2 still uses it
    i.set_endpoint(None, "e2", False)
    for key in (f"prof:{p.pid}", "sg:web", "set:app", "if:tap1", "if:tap2"):
        assert i.desired(key) is None, key


def test_an_endpoint_change_touches_only_its_own_keys() -> None:
    i = inputs()
    for n in range(1, 200):
        i.set_endpoint(ep(n, ("web",)), f"e{n}", True)
    keys = i.set_endpoint(ep(7, ("web", "app")), "e7", True)
    assert not any(k.startswith("if:") and k != "if:tap7" for k in keys)
    assert len(keys) < 10
    assert i.set_endpoint(ep(7, ("web", "app")), "e7", True) == {"if:tap7"}  # no change


def test_a_contested_tap_is_closed() -> None:
    i = inputs()
    i.set_endpoint(ep(1, ("web",), "tapx"), "e1", True)
    assert i.desired("if:tapx") is not None
    i.set_endpoint(ep(2, ("web",), "tapx"), "e2", True)
    assert i.desired("if:tapx") is None
    i.set_endpoint(None, "e1", False)
    assert i.desired("if:tapx") == endpoint_elements(ep(2, ("web",), "tapx")).digest()


def test_an_unenforceable_endpoint_gets_no_elements() -> None:
    i = inputs()
    bad = Endpoint("e1", "tap1", "not-a-mac", (ip_address("10.0.0.1"),), (), ("web",))
    i.set_endpoint(bad, "e1", True)
    assert i.desired("if:tap1") is None


def test_group_edits_touch_only_that_group() -> None:
    i = inputs()
    i.set_endpoint(ep(1, ("web",)), "e1", True)
    i.set_endpoint(ep(2, ("app",)), "e2", True)
    changed = SecurityGroup("web", (R(Direction.INGRESS, EtherType.IPV4, "tcp", 81, 81),))
    keys = i.set_groups({"web": changed, "app": APP})
    assert keys == {"sg:web", "set:app"}  # its rules and the set it stopped referencing
    assert i.desired("set:app") is None
    assert i.desired("sg:web") == compile_group("web", changed).digest


def test_members_are_local_active_endpoints_and_remote() -> None:
    i = inputs()
    i.set_endpoint(ep(1, ("web",)), "e1", True)
    i.set_endpoint(ep(2, ("app",)), "e2", True)
    i.set_endpoint(ep(3, ("app",)), "e3", False)  # not active: not a member
    assert i.members("app") == fwe.members_of([ip_address("10.0.0.2")])
    keys = i.set_remote({"app": frozenset({ip_network("10.5.0.0/16")})})
    assert keys == {"set:app"}
    assert i.members("app") == fwe.members_of([ip_address("10.0.0.2"), ip_network("10.5.0.0/16")])
    assert i.desired("set:app") == i.members("app").digest()


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.sampled_from(
    ["10.0.0.1", "10.0.0.2", "10.0.0.0/24", "10.0.0.8/29", "fd00::1", "fd00::/64"])),
    max_size=30))
def test_member_digest_is_kept_up_to_date(changes: list[tuple[bool, str]]) -> None:
    """The incrementally kept digest equals the digest of the content read back."""
    ms = _MemberSet()
    counts: dict[str, int] = {}
    for add, s in changes:
        if add:
            ms.add(s)
            counts[s] = counts.get(s, 0) + 1
        elif counts.get(s):
            ms.remove(s)
            counts[s] -= 1
    present = [ip_network(s) for s, c in counts.items() if c]
    want = fwe.members_of(present)
    assert ms.members() == want
    assert ms.digest() == want.digest()
    spelled = fwe.members_from_sets([f"ipv4 . {v}" for v in want.v4],
                                    [f"ipv6 . {v}" for v in want.v6])
    assert spelled.digest() == ms.digest()


# ----------------------------------------------------------------------------- reconciler


class Fake:
    def __init__(self, state: nft.TableState | None = None) -> None:
        self.state = state or nft.TableState()
        self.scripts: list[str] = []
        self.batches: list[list[nfnl.SetOp]] = []
        self.fail_if: str | None = None  # a script containing this fails

    async def apply(self, script: str, timeout: float = 10.0, **_: Any) -> None:
        if self.fail_if is not None and self.fail_if in script:
            raise nft.NftError("Error: refused")
        self.scripts.append(script)

    async def read_table(self, table: str = "l3hostd", **_: Any) -> nft.TableState:
        return self.state

    def send(self, ops: Sequence[nfnl.SetOp]) -> None:
        self.batches.append(list(ops))


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Fake:
    f = Fake()
    monkeypatch.setattr(nft, "apply", f.apply)
    monkeypatch.setattr(nft, "read_table", f.read_table)
    monkeypatch.setenv("NFT", "/nonexistent/nft")
    return f


async def run(fw: FirewallReconciler) -> None:
    if fw.resync_pending:
        await fw.resync()
    await fw.apply(Phase.REMOVE, time.monotonic())
    await fw.apply(Phase.ADD, time.monotonic())


def reconciler(fake: Fake, *eps: Endpoint) -> FirewallReconciler:
    fw = FirewallReconciler(inputs(), elements=fake)
    for e in eps:
        fw.refresh(fw.inputs.set_endpoint(e, e.id, True))
    return fw


def kernel_state(*eps: Endpoint) -> nft.TableState:
    """What nft -j would show after l3hostd wrote ``eps`` (spelled as parse_table does)."""
    i = inputs()
    for e in eps:
        i.set_endpoint(e, e.id, True)
    chains: dict[str, str | None] = {c: None for c in (
        "filter-forward", "filter-input", "vm-to-host", "nat-prerouting",
        "vm-source", "vm-egress", "vm-egress-ok", "vm-ingress")}
    refs: dict[str, frozenset[str]] = {}
    for rules in i.group_rules.values():
        cin, cout = rules.chains
        chains[cin] = chains[cout] = rules.digest
        sets = frozenset(f"@g{v}-{r}" for r in rules.remote for v in ("4", "6", "4n", "6n"))
        refs[cin], refs[cout] = sets, sets | {"vm-egress-ok"}
    for p in i.profiles.values():
        chains[p.chains[0]] = chains[p.chains[1]] = p.digest
        refs[p.chains[0]] = frozenset(f"sg-{g}-in" for g in p.groups)
        refs[p.chains[1]] = frozenset(f"sg-{g}-out" for g in p.groups)
    sets: dict[str, frozenset[str]] = {name: frozenset() for name in (
        "taps", "src_mac", "src4", "src6", "src4net", "src6net")}
    maps: dict[str, dict[str, str]] = {"from_vm": {}, "to_vm": {}}
    arp: dict[str, frozenset[str]] = {"taps": frozenset(), "src4": frozenset(),
                                      "src4net": frozenset()}
    for e in eps:
        el = i.elements[e.id]
        sets["taps"] |= {e.interface}
        sets["src_mac"] |= {f"{e.interface} . {m}" for m in el.macs}
        sets["src4"] |= {f"{e.interface} . {a}" for a in el.src4}  # (hosts only here)
        arp["taps"] |= {e.interface}
        arp["src4"] |= {f"{e.interface} . {a}" for a in el.arp_src4}
        assert el.from_vm is not None and el.to_vm is not None
        maps["from_vm"][e.interface] = el.from_vm
        maps["to_vm"][e.interface] = el.to_vm
    for g in {r for rules in i.group_rules.values() for r in rules.remote}:
        m = i.members(g)
        sets[f"g4-{g}"], sets[f"g6-{g}"] = m.v4, m.v6  # (hosts only here)
        sets[f"g4n-{g}"] = sets[f"g6n-{g}"] = frozenset()
    return nft.TableState(
        inet=nft.FamilyState(True, chains, maps, sets, {}, refs),
        arp=nft.FamilyState(True, {"input": None}, {}, arp, {}, {}),
    )


def test_a_table_that_is_right_is_adopted_without_rewrites(fake: Fake) -> None:
    eps = (ep(1, ("web",)), ep(2, ("app",)))
    fake.state = kernel_state(*eps)
    fw = reconciler(fake, *eps)
    asyncio.run(run(fw))
    assert fake.batches == [], "elements that are right are not rewritten"
    assert len(fake.scripts) == 1 and "delete" not in fake.scripts[0]  # only the skeleton
    assert all(fw.ready(e.id) for e in eps)
    assert fw.full_replacements == 0


def test_what_differs_is_fixed_by_delta(fake: Fake) -> None:
    fake.state = kernel_state(ep(1, ("web",)), ep(2, ("app",)), ep(3, ("app",)))
    fw = reconciler(fake, ep(1, ("web",)), ep(2, ("web",)))  # e2 moved; e3 is gone
    asyncio.run(run(fw))
    removal, change = fake.batches  # the REMOVE phase, then the ADD phase
    assert {op.set for op in removal} >= {"taps", "from_vm", "src4"}
    assert all(op.op == "delete" for op in removal)  # tap3's elements
    sets = {(op.op, op.set) for op in change}
    assert ("add", "from_vm") in sets  # tap2 to web's profile
    assert ("add", "g4-app") not in sets and ("delete", "g4-app") in sets  # members left
    # app's profile and group chains are unused now: collected after the batch
    gc = fake.scripts[-1]
    app = compile_profile(["app"])
    assert f"delete chain inet l3hostd {app.chains[0]}" in gc
    assert "delete chain inet l3hostd sg-app-in" in gc
    assert "delete set" not in gc  # g4-app is still referenced by web's chains
    assert fw.ready("e1") and fw.ready("e2")


def test_a_table_in_another_layout_is_replaced_atomically(fake: Fake) -> None:
    legacy = nft.FamilyState(True, {"filter-forward": None, "from-e1": "abc"},
                             {"from_vm": {"tap1": "from-e1"}, "to_vm": {}, "src_vm": {}},
                             {"taps": frozenset({"tap1"})}, {}, {})
    fake.state = nft.TableState(inet=legacy, arp=nft.FamilyState(True))
    fw = reconciler(fake, ep(1, ("web",)), ep(2, ("app",)))
    asyncio.run(run(fw))
    (script,) = fake.scripts
    assert script.startswith("add table inet l3hostd\ndelete table inet l3hostd\n")
    assert '"tap1" : jump ' in script and '"tap2" : jump ' in script
    assert fake.batches == []
    assert fw.full_replacements == 1
    assert fw.ready("e1") and fw.ready("e2")
    fake.scripts.clear()
    asyncio.run(run(fw))  # nothing left to do
    assert fake.scripts == [] and fake.batches == []


def test_a_moved_endpoint_switches_before_its_old_chains_go(fake: Fake) -> None:
    fw = reconciler(fake, ep(1, ("web",)))
    asyncio.run(run(fw))
    fake.scripts.clear()
    fake.batches.clear()
    fw.refresh(fw.inputs.set_endpoint(ep(1, ("app",)), "e1", True))
    asyncio.run(run(fw))
    create, collect = fake.scripts
    assert "sg-app-in" in create and "delete" not in create
    (batch,) = fake.batches
    assert [op.set for op in batch if op.set in ("from_vm", "to_vm")] == [
        "from_vm", "to_vm", "from_vm", "to_vm"]
    assert "delete chain inet l3hostd sg-web-in" in collect
    assert "delete set inet l3hostd g4-app" in collect  # web's chains referenced it


def test_one_bad_group_does_not_hold_back_the_others(fake: Fake) -> None:
    fw = reconciler(fake, ep(1, ("web",)), ep(2, ("app",)))
    fake.fail_if = "sg-web-in"
    asyncio.run(run(fw))
    assert fw.ready("e2") and not fw.ready("e1")
    assert "refused" in fw.nft_error
    jumps = [e.jump for b in fake.batches for op in b for e in op.elements if e.jump]
    web = compile_profile(["web"])
    assert not any(j in web.chains for j in jumps), "nothing may jump to missing chains"


def test_members_change_as_element_deltas(fake: Fake) -> None:
    fw = reconciler(fake, ep(1, ("web",)))
    asyncio.run(run(fw))
    fake.batches.clear()
    fw.refresh(fw.inputs.set_remote({"app": frozenset({IPv4Address("10.7.0.1")})}))
    asyncio.run(run(fw))
    (batch,) = fake.batches
    assert [(op.op, op.set, len(op.elements)) for op in batch] == [("add", "g4-app", 1)]
    n = len(fake.scripts)
    fw.refresh(fw.inputs.set_remote({}))
    asyncio.run(run(fw))
    assert [(op.op, op.set) for op in fake.batches[-1]] == [("delete", "g4-app")]
    assert len(fake.scripts) == n, "a membership change needs no nft transaction"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 3), st.sampled_from([(), ("web",), ("app",),
                                                             ("web", "app")]),
                          st.booleans(), st.booleans()), max_size=12))
@example([(1, ("web",), True, False), (2, ("app",), False, False), (2, ("app",), True, False),
          (2, ("app",), False, False)])
def test_a_tap_going_up_or_down_alone_gives_what_a_fresh_start_gives(
        steps: list[tuple[int, tuple[str, ...], bool, bool]]) -> None:
    """Only the link state of an endpoint changing takes a short path (its elements and
    profile kept, its group memberships moved): whatever the sequence, every key's desired
    value and the keys reported are those of inputs built from scratch."""
    i = inputs()
    last: dict[str, tuple[Endpoint | None, bool]] = {}
    for n, groups, active, gone in steps:
        e = None if gone else ep(n, groups)
        before = {k: i.desired(k) for k in all_keys(i)}
        keys = i.set_endpoint(e, f"e{n}", active and e is not None)
        last[f"e{n}"] = (e, active and e is not None)
        after = {k: i.desired(k) for k in all_keys(i)}
        changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
        assert changed <= keys, "a key whose desired value changed was not reported"
        fresh = inputs()
        for eid, (fe, fa) in last.items():
            fresh.set_endpoint(fe, eid, fa)
        assert {k: fresh.desired(k) for k in all_keys(fresh) | all_keys(i)} == {
            k: i.desired(k) for k in all_keys(fresh) | all_keys(i)}


def all_keys(i: FirewallInputs) -> set[str]:
    keys = {f"if:tap{n}" for n in range(1, 4)} | {"base"}
    keys |= {f"prof:{compile_profile(list(g)).pid}" for g in ((), ("web",), ("app",),
                                                               ("web", "app"))}
    keys |= {f"{kind}:{g}" for kind in ("sg", "set") for g in ("web", "app")}
    return keys
