"""Learned routes: RIB selection -> kernel, next-hop resolution, graceful-restart hold."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address, ip_network

from l3hostd.bgp.messages import PathAttributes, Route, Update
from l3hostd.bgp.rib import AdjRibIn
from l3hostd.netlink.fake import FakeKernel
from l3hostd.netlink.learned import LEARNED_METRIC, LearnedRouteReconciler
from l3hostd.reconcile import Phase

A = PathAttributes()


def upd(*items: tuple[str, str, int]) -> Update:
    return Update(announced=tuple(Route(ip_network(p), pid, ip_address(nh), A)
                                  for p, nh, pid in items))


async def apply(r: LearnedRouteReconciler) -> None:
    if r.resync_pending:
        await r.resync()
    await r.apply(Phase.REMOVE, 0.0)
    await r.apply(Phase.ADD, 0.0)


def test_ecmp_install_change_and_withdraw() -> None:
    k = FakeKernel()
    rib = AdjRibIn()
    rib.add_peer("rr1")
    r = LearnedRouteReconciler(k, rib)

    async def go() -> None:
        for key, (old, sel) in rib.apply_update("rr1", upd(("10.9.0.1/32", "100.64.0.12", 1),
                                                   ("10.9.0.1/32", "100.64.0.13", 2))).items():
            r.select(key, old, sel)
        await apply(r)
        (metric, proto, hops), = k.learned.values()
        assert (metric, proto) == (LEARNED_METRIC, 45)
        assert set(map(str, hops)) == {"100.64.0.12", "100.64.0.13"}
        k.clear_writes()
        for key, (old, sel) in rib.apply_update(
                "rr1", Update(withdrawn=((ip_network("10.9.0.1/32"), 2),))).items():
            r.select(key, old, sel)
        await apply(r)
        assert [w.op for w in k.writes] == ["learned-add"]  # one replace, no delete + add
        assert [str(h) for h in next(iter(k.learned.values()))[2]] == ["100.64.0.12"]
        for key, (old, sel) in rib.peer_down("rr1").items():
            r.select(key, old, sel)
        await apply(r)
        assert not k.learned

    asyncio.run(go())


def test_next_hops_not_on_link_are_resolved_and_re_resolved() -> None:
    k = FakeKernel()
    k.gateways[ip_address("100.64.2.1")] = ip_address("100.64.1.254")
    k.gateways[ip_address("100.64.3.1")] = None  # unreachable
    rib = AdjRibIn()
    rib.add_peer("rr1")
    r = LearnedRouteReconciler(k, rib)

    async def go() -> None:
        for key, (old, sel) in rib.apply_update("rr1", upd(("10.9.0.2/32", "100.64.2.1", 1),
                                                   ("10.9.0.3/32", "100.64.3.1", 2))).items():
            r.select(key, old, sel)
        await apply(r)
        assert {str(d): [str(h) for h in v[2]] for (_, d), v in k.learned.items()} == {
            "10.9.0.2/32": ["100.64.1.254"]}
        k.gateways[ip_address("100.64.3.1")] = ip_address("100.64.1.253")
        assert r.re_resolve() == 1
        await apply(r)
        assert len(k.learned) == 2
        # a resync reads back the gateways: nothing to rewrite
        k.clear_writes()
        r.queue_resync()
        await apply(r)
        assert k.writes == []

    asyncio.run(go())


def test_adopted_routes_are_kept_until_protection_is_released() -> None:
    k = FakeKernel()
    k.learned[(254, ip_network("10.9.0.7/32"))] = (LEARNED_METRIC, 45, (ip_address("100.64.0.12"),))
    rib = AdjRibIn()
    rib.add_peer("rr1")
    r = LearnedRouteReconciler(k, rib)
    r.protect_unwanted = True

    async def go() -> None:
        await apply(r)
        assert len(k.learned) == 1  # adopted, not swept although nothing selects it
        r.release_protection()
        await apply(r)
        assert not k.learned

    asyncio.run(go())
