"""The firewall goes first: routes wait for an endpoint's elements and chains; failure
fails closed.

nft is replaced by a recording fake (scripts applied in order; a switch makes it fail),
the netlink element writer by another (operations applied in order, same switch), the
kernel by the in-memory FakeKernel; the real nft and netlink are exercised by the
integration tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from ipaddress import ip_address
from typing import Any

import pytest

from l3hostd.calc import DataplaneSettings
from l3hostd.dataplane import Dataplane
from l3hostd.firewall import nfnl, nft
from l3hostd.firewall.compile import FirewallSettings, compile_profile
from l3hostd.firewall.nfsock import NfnlError
from l3hostd.firewall.reconciler import FirewallInputs, FirewallReconciler
from l3hostd.model import Direction, Endpoint, EtherType, SecurityGroup, SecurityGroupRule
from l3hostd.netlink.fake import FakeKernel

SSH = SecurityGroup("ssh", (SecurityGroupRule(Direction.INGRESS, EtherType.IPV4, "tcp", 22, 22),))
NONE = SecurityGroup("none", ())


def text(op: nfnl.SetOp) -> str:
    """One element operation, readable: ``add inet to_vm tapa:prof-x-in``."""
    family = {nfnl.NFPROTO_INET: "inet", nfnl.NFPROTO_ARP: "arp"}[op.family]
    items = []
    for e in op.elements:
        key = e.key.rstrip(b"\0")
        label = key.split(b"\0")[0].decode(errors="replace") if key[:1].isalpha() else key.hex()
        items.append(f"{label}:{e.jump}" if e.jump else label)
    return f"{op.op} {family} {op.set} {','.join(items)}" + (" flush" if op.flush else "")


class FakeNft:
    """nft and the netlink element writer, recorded in one log."""

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.batches: list[list[str]] = []  # element batches, each a list of text(op)
        self.failing = False
        self.log: list[str] = []  # what happened, in order, with the kernel's writes

    async def apply(self, script: str, timeout: float = 10.0, **_: Any) -> None:
        if self.failing:
            raise nft.NftError("Error: simulated failure")
        self.scripts.append(script)
        self.log.append("nft")

    async def read_table(self, table: str = "l3hostd", **_: Any) -> nft.TableState:
        return nft.TableState()

    def send(self, ops: Sequence[nfnl.SetOp]) -> None:
        if self.failing:
            raise NfnlError(1, "nfnetlink: simulated failure")
        self.batches.append([text(op) for op in ops])
        self.log.append("elements")


@pytest.fixture
def fake_nft(monkeypatch: pytest.MonkeyPatch) -> FakeNft:
    fake = FakeNft()
    monkeypatch.setattr(nft, "apply", fake.apply)
    monkeypatch.setattr(nft, "read_table", fake.read_table)
    monkeypatch.setenv("NFT", "/nonexistent/nft")  # no libnftables: every write via apply()
    return fake


def record_route_writes(kernel: FakeKernel, fake: FakeNft) -> None:
    """Log route writes into the fake nft's log, to see the order of the two."""
    original = kernel.write_routes

    async def write_routes(deletes: Any, adds: Any) -> list[int]:
        fake.log.append("routes")
        return await original(deletes, adds)

    kernel.write_routes = write_routes  # type: ignore[method-assign]


def ep(groups: tuple[str, ...] = ("none",)) -> Endpoint:
    return Endpoint("e1", "tapa", "fa:16:3e:00:00:01", (ip_address("10.0.0.1"),), (), groups)


def make(kernel: FakeKernel, fake: FakeNft) -> tuple[Dataplane, FirewallReconciler]:
    fw = FirewallReconciler(FirewallInputs(FirewallSettings()), elements=fake)
    dp = Dataplane(kernel, DataplaneSettings(), firewall=fw)
    dp.on_groups({"ssh": SSH, "none": NONE}, {})
    return dp, fw


def test_chains_and_elements_go_in_before_the_route_in_one_pass(fake_nft: FakeNft) -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp, fw = make(k, fake_nft)

    async def go() -> None:
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        record_route_writes(k, fake_nft)
        await dp.apply_once()
        # chains (nft), then the TAP's elements (netlink), then the route
        assert fake_nft.log == ["nft", "elements", "routes"]
        assert len(k.routes) == 1 and fw.ready("e1")
        ingress, egress = compile_profile(["none"]).chains
        assert f"add chain inet l3hostd {ingress}" in fake_nft.scripts[-1]
        (batch,) = fake_nft.batches
        assert f"add inet to_vm tapa:{ingress}" in batch
        assert f"add inet from_vm tapa:{egress}" in batch

    asyncio.run(go())


def test_nft_failure_keeps_the_endpoint_inactive_and_recovers(fake_nft: FakeNft) -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp, fw = make(k, fake_nft)

    async def go() -> None:
        fake_nft.failing = True
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        assert not k.routes, "no route without the endpoint's chains"
        assert not fake_nft.batches, "no map entry may jump to chains that failed"
        assert "simulated failure" in fw.nft_error
        (row,) = dp.endpoint_rows()
        assert row["state"] == "firewall-pending" and "simulated" in str(row["reason"])
        fake_nft.failing = False
        retry = fw.next_retry()
        assert retry is not None
        dp._clock = lambda: retry + 1  # type: ignore[method-assign]
        await dp.apply_once()
        assert len(k.routes) == 1
        assert dp.endpoint_rows()[0]["state"] == "active"

    asyncio.run(go())


def test_element_failure_keeps_the_endpoint_inactive(
    fake_nft: FakeNft, monkeypatch: pytest.MonkeyPatch
) -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp, fw = make(k, fake_nft)

    def refuse(ops: Sequence[nfnl.SetOp]) -> None:
        raise NfnlError(22, "nfnetlink: Invalid argument (add element in inet l3hostd taps)")

    async def go() -> None:
        monkeypatch.setattr(fake_nft, "send", refuse)
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        assert not k.routes and not fw.ready("e1")
        (row,) = dp.endpoint_rows()
        assert row["state"] == "firewall-pending" and "Invalid argument" in str(row["reason"])

    asyncio.run(go())


def test_a_group_change_rewrites_the_endpoint_in_place(fake_nft: FakeNft) -> None:
    """A new set of groups: the new profile's chains are created first, the TAP's map
    entries switch in ONE element batch (delete + add: no moment without them), and the
    old profile's chains go only after that; the route is never touched."""
    k = FakeKernel()
    k.add_link("tapa")
    dp, _fw = make(k, fake_nft)

    async def go() -> None:
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        fake_nft.scripts.clear()
        fake_nft.batches.clear()
        fake_nft.log.clear()
        k.clear_writes()
        dp.on_endpoints({"e1": ep(("ssh",))}, ())  # same TAP, IPs, MAC: only the groups
        await dp.apply_once()
        old_in, old_out = compile_profile(["none"]).chains
        new_in, new_out = compile_profile(["ssh"]).chains
        assert fake_nft.log == ["nft", "elements", "nft"]
        create, collect = fake_nft.scripts
        assert "tcp dport 22 accept" in create and f"add chain inet l3hostd {new_in}" in create
        assert "delete chain" not in create
        (batch,) = fake_nft.batches
        assert batch == [
            "delete inet from_vm tapa", "delete inet to_vm tapa",
            f"add inet from_vm tapa:{new_out}", f"add inet to_vm tapa:{new_in}",
        ]
        assert f"delete chain inet l3hostd {old_in}" in collect
        assert f"delete chain inet l3hostd {old_out}" in collect
        assert k.writes == []  # the route stays as it is

    asyncio.run(go())


def test_removal_takes_the_route_before_the_firewall(fake_nft: FakeNft) -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp, _fw = make(k, fake_nft)

    async def go() -> None:
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        record_route_writes(k, fake_nft)
        fake_nft.log.clear()
        fake_nft.batches.clear()
        dp.on_endpoints({}, ["e1"])
        await dp.apply_once()
        # route first, then the TAP's elements, then (unreferenced now) its chains
        assert fake_nft.log == ["routes", "elements", "nft"]
        assert all(line.startswith("delete ") for line in fake_nft.batches[0])
        ingress, _ = compile_profile(["none"]).chains
        assert f"delete chain inet l3hostd {ingress}" in fake_nft.scripts[-1]

    asyncio.run(go())


def test_activation_during_a_pass_after_the_release_is_not_forgotten(fake_nft: FakeNft) -> None:
    """E's chains are already in place; E's TAP comes up while a pass is writing another
    endpoint's route -- after that pass released the held routes, before it wrote E's
    neighbours and TAP config. Nothing of E is left dirty at the end of the pass, yet E's
    route must still be installed (it once waited forever)."""
    k = FakeKernel()
    k.add_link("tapa")
    tap_b = k.add_link("tapb", up=False)
    dp, fw = make(k, fake_nft)
    a = Endpoint("a", "tapa", "fa:16:3e:00:00:01", (ip_address("10.0.0.1"),), (), ("none",))
    b = Endpoint("b", "tapb", "fa:16:3e:00:00:02", (ip_address("10.0.0.2"),), (), ("none",))

    async def go() -> None:
        dp.on_endpoints({"b": b}, ())  # b: file present, TAP down -> chains go in
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        assert fw.ready("b") and not k.routes
        original = k.write_routes
        fired = False

        async def write_routes(deletes: Any, adds: Any) -> list[int]:
            nonlocal fired
            if not fired:
                fired = True
                dp.on_link(k.set_link_up(tap_b.ifindex, True))  # b comes up right now
            return await original(deletes, adds)

        k.write_routes = write_routes  # type: ignore[method-assign]
        task = asyncio.create_task(dp.run())
        dp.on_endpoints({"a": a}, ())  # a: a pass that writes a's route
        for _ in range(200):
            await asyncio.sleep(0.005)
            if len(k.routes) == 2:
                break
        task.cancel()
        assert fired
        assert {str(r.dst) for r in k.routes.values()} == {"10.0.0.1/32", "10.0.0.2/32"}

    asyncio.run(go())


def test_a_group_referenced_later_gets_its_existing_members(fake_nft: FakeNft) -> None:
    """app's member (e2) is active before anyone references app; when e1 arrives with a
    rule "from remote_group app", the app set must be filled with e2's address."""
    web = SecurityGroup(
        "web",
        (SecurityGroupRule(Direction.INGRESS, EtherType.IPV4, "tcp", 80, 80,
                           remote_group="app"),),
    )
    app = SecurityGroup("app", ())
    k = FakeKernel()
    k.add_link("tap1")
    k.add_link("tap2")
    fw = FirewallReconciler(FirewallInputs(FirewallSettings()), elements=fake_nft)
    dp = Dataplane(k, DataplaneSettings(), firewall=fw)
    dp.on_groups({"web": web, "app": app}, {})
    e2 = Endpoint("e2", "tap2", "fa:16:3e:00:00:02", (ip_address("10.0.0.2"),), (), ("app",))
    e1 = Endpoint("e1", "tap1", "fa:16:3e:00:00:01", (ip_address("10.0.0.1"),), (), ("web",))
    member = "add inet g4-app 0a000002"  # 10.0.0.2

    async def go() -> None:
        dp.on_endpoints({"e2": e2}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        assert not any(member in line for b in fake_nft.batches for line in b)
        dp.on_endpoints({"e1": e1}, ())
        await dp.apply_once()
        assert any("add set inet l3hostd g4-app" in s for s in fake_nft.scripts)
        assert any(member in line for b in fake_nft.batches for line in b), fake_nft.batches
        assert fw.ready("e1")

    asyncio.run(go())
