"""The firewall goes first: routes wait for an endpoint's chains; nft failure fails closed.

nft is replaced by a recording fake (scripts applied in order; a switch makes it fail),
the kernel by the in-memory FakeKernel; the real nft is exercised by the integration tests.
"""

from __future__ import annotations

import asyncio
from ipaddress import ip_address
from typing import Any

import pytest

from l3hostd.calc import DataplaneSettings
from l3hostd.dataplane import Dataplane
from l3hostd.firewall import nft
from l3hostd.firewall.compile import FirewallSettings
from l3hostd.firewall.reconciler import FirewallInputs, FirewallReconciler
from l3hostd.model import Direction, Endpoint, EtherType, SecurityGroup, SecurityGroupRule
from l3hostd.netlink.fake import FakeKernel

SSH = SecurityGroup("ssh", (SecurityGroupRule(Direction.INGRESS, EtherType.IPV4, "tcp", 22, 22),))
NONE = SecurityGroup("none", ())


class FakeNft:
    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.failing = False
        self.log: list[str] = []  # what happened, in order, with the kernel's writes

    async def apply(self, script: str, timeout: float = 10.0, **_: Any) -> None:
        if self.failing:
            raise nft.NftError("Error: simulated failure")
        self.scripts.append(script)
        self.log.append("nft")

    async def read_table(self, table: str = "l3hostd", **_: Any) -> nft.TableState:
        return nft.TableState()


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


def make(kernel: FakeKernel) -> tuple[Dataplane, FirewallReconciler]:
    fw = FirewallReconciler(FirewallInputs(FirewallSettings()))
    dp = Dataplane(kernel, DataplaneSettings(), firewall=fw)
    dp.on_groups({"ssh": SSH, "none": NONE}, {})
    return dp, fw


def test_chains_go_in_before_the_route_in_one_pass(fake_nft: FakeNft) -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp, fw = make(k)

    async def go() -> None:
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        record_route_writes(k, fake_nft)
        await dp.apply_once()
        assert fake_nft.log == ["nft", "routes"]  # chains first, then the route
        assert len(k.routes) == 1 and fw.ready("e1")
        assert "to-e1" in fake_nft.scripts[-1]

    asyncio.run(go())


def test_nft_failure_keeps_the_endpoint_inactive_and_recovers(fake_nft: FakeNft) -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp, fw = make(k)

    async def go() -> None:
        fake_nft.failing = True
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        assert not k.routes, "no route without the endpoint's chains"
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


def test_a_group_change_rewrites_the_endpoint_in_place(fake_nft: FakeNft) -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp, _fw = make(k)

    async def go() -> None:
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        fake_nft.scripts.clear()
        k.clear_writes()
        dp.on_endpoints({"e1": ep(("ssh",))}, ())  # same TAP, IPs, MAC: only the groups
        await dp.apply_once()
        (script,) = fake_nft.scripts
        assert "tcp dport 22 accept" in script
        assert "delete chain" not in script  # flushed and refilled, never removed
        assert k.writes == []  # the route stays as it is

    asyncio.run(go())


def test_removal_takes_the_route_before_the_chains(fake_nft: FakeNft) -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp, _fw = make(k)

    async def go() -> None:
        dp.on_endpoints({"e1": ep()}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        record_route_writes(k, fake_nft)
        fake_nft.log.clear()
        dp.on_endpoints({}, ["e1"])
        await dp.apply_once()
        assert fake_nft.log == ["routes", "nft"]
        assert "delete chain inet l3hostd to-e1" in fake_nft.scripts[-1]

    asyncio.run(go())


def test_activation_during_a_pass_after_the_release_is_not_forgotten(fake_nft: FakeNft) -> None:
    """E's chains are already in place; E's TAP comes up while a pass is writing another
    endpoint's route -- after that pass released the held routes, before it wrote E's
    neighbours and TAP config. Nothing of E is left dirty at the end of the pass, yet E's
    route must still be installed (it once waited forever)."""
    k = FakeKernel()
    k.add_link("tapa")
    tap_b = k.add_link("tapb", up=False)
    dp, fw = make(k)
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
    fw = FirewallReconciler(FirewallInputs(FirewallSettings()))
    dp = Dataplane(k, DataplaneSettings(), firewall=fw)
    dp.on_groups({"web": web, "app": app}, {})
    e2 = Endpoint("e2", "tap2", "fa:16:3e:00:00:02", (ip_address("10.0.0.2"),), (), ("app",))
    e1 = Endpoint("e1", "tap1", "fa:16:3e:00:00:01", (ip_address("10.0.0.1"),), (), ("web",))

    async def go() -> None:
        dp.on_endpoints({"e2": e2}, ())
        dp.on_links(await k.dump_links())
        dp.set_ready()
        await dp.apply_once()
        assert not any("10.0.0.2" in s and "g4-app" in s for s in fake_nft.scripts)
        dp.on_endpoints({"e1": e1}, ())
        await dp.apply_once()
        assert any("g4-app" in s and "10.0.0.2" in s for s in fake_nft.scripts), fake_nft.scripts
        assert fw.ready("e1")

    asyncio.run(go())
