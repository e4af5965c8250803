"""Learned routes: RIB selection -> kernel, next-hop resolution, graceful-restart hold."""

from __future__ import annotations

import asyncio
from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from l3hostd.bgp.messages import PathAttributes, Route, Update
from l3hostd.bgp.rib import AdjRibIn
from l3hostd.netlink.fake import FakeKernel
from l3hostd.netlink.learned import ABSENT, LEARNED_METRIC, LearnedRouteReconciler
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


def test_installed_state_is_kept_as_the_difference_from_desired() -> None:
    """Converged: no drift. A resync finds a route missing, one changed behind our back and
    one foreign to the RIB (ours by protocol): exactly those are rewritten or removed."""
    k = FakeKernel()
    rib = AdjRibIn()
    rib.add_peer("rr1")
    r = LearnedRouteReconciler(k, rib)

    async def go() -> None:
        delta = rib.apply_update("rr1", upd(("10.9.0.1/32", "100.64.0.12", 1),
                                            ("10.9.0.2/32", "100.64.0.12", 1),
                                            ("10.9.0.3/32", "100.64.0.12", 1),
                                            ("2001:db8::1/128", "100.64.0.12", 1)))
        for key, (old, new) in delta.items():
            r.select(key, old, new)
        await apply(r)
        assert len(k.learned) == 4 and r.installed.drift == {}
        assert len(r.observed) == 4 and r.installed.by_family() == (3, 1)
        # behind our back: one deleted, one re-pointed, one foreign route of our protocol
        del k.learned[(254, ip_network("10.9.0.1/32"))]
        k.learned[(254, ip_network("10.9.0.2/32"))] = (LEARNED_METRIC, 45,
                                                       (ip_address("100.64.0.99"),))
        k.learned[(254, ip_network("10.9.0.8/32"))] = (LEARNED_METRIC, 45,
                                                       (ip_address("100.64.0.12"),))
        r.queue_resync()
        await r.resync()
        assert len(r.installed.drift) == 3 and r.dirty_count == 3
        assert r.installed.by_family() == (3, 1)  # .1 missing, .8 extra
        k.clear_writes()
        await r.apply(Phase.REMOVE, 0.0)
        await r.apply(Phase.ADD, 0.0)
        assert sorted((w.op, str(w.obj[0] if w.op == "learned-add" else w.obj))  # type: ignore[index]
                      for w in k.writes) == [("learned-add", "10.9.0.1/32"),
                                             ("learned-add", "10.9.0.2/32"),
                                             ("learned-del", "10.9.0.8/32")]
        assert r.installed.drift == {} and r.dirty_count == 0
        assert {str(d): [str(h) for h in v[2]] for (_, d), v in k.learned.items()} == {
            "10.9.0.1/32": ["100.64.0.12"], "10.9.0.2/32": ["100.64.0.12"],
            "10.9.0.3/32": ["100.64.0.12"], "2001:db8::1/128": ["100.64.0.12"]}
        # a change of selection pins what is installed until the write
        delta = rib.apply_update("rr1", upd(("10.9.0.3/32", "100.64.0.13", 1)))
        for key, (old, new) in delta.items():
            r.select(key, old, new)
        (key,) = delta
        assert r.observed.get(key) == delta[key][0] and r.desired.get(key) == delta[key][1]
        await apply(r)
        assert r.installed.drift == {} and r.observed.get(key) == delta[key][1]

    asyncio.run(go())


class GatedKernel(FakeKernel):
    """A kernel whose learned-route writes wait for a gate: what arrives from the RIB
    while a batch is being written is applied in between."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def write_learned(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        if self.gate is not None:
            self.entered.set()
            await self.gate.wait()
        return await super().write_learned(*args, **kwargs)


def test_changes_during_a_write_are_not_lost() -> None:
    """The ADD phase marks a written key installed-as-desired without recomputing its
    selection unless that selection changed during the write: keys re-pointed, withdrawn
    or added while a batch is in flight, and a re-resolution of next hops, all end up in
    the kernel as the RIB now says, and only the affected keys are written again."""
    k = GatedKernel()
    rib = AdjRibIn()
    rib.add_peer("rr1")
    r = LearnedRouteReconciler(k, rib)

    def feed(update: Update) -> None:
        for key, (old, new) in rib.apply_update("rr1", update).items():
            r.select(key, old, new)

    def kernel_view() -> dict[str, list[str]]:
        return {str(d): sorted(str(h) for h in v[2]) for (_, d), v in k.learned.items()}

    async def go() -> None:
        await r.resync()
        feed(upd(*((f"10.9.0.{i}/32", "100.64.0.12", 1) for i in range(1, 7))))
        k.gate = asyncio.Event()
        write = asyncio.create_task(r.apply(Phase.ADD, 0.0))
        await k.entered.wait()  # six routes in flight
        feed(upd(("10.9.0.1/32", "100.64.0.13", 1)))  # re-pointed
        feed(Update(withdrawn=((ip_network("10.9.0.2/32"), 1),)))  # withdrawn
        feed(upd(("10.9.0.7/32", "100.64.0.12", 1)))  # new, not in the batch
        k.gate.set()
        assert await write == 6
        k.gate = None
        assert kernel_view()["10.9.0.1/32"] == ["100.64.0.12"]  # as written, pinned
        assert r.installed.drift == {
            key: v for key, v in r.installed.drift.items()
        } and len(r.installed.drift) == 3  # .1 (old hop), .2 (not desired), .7 (absent)
        k.clear_writes()
        await apply(r)
        assert sorted(w.op for w in k.writes) == ["learned-add", "learned-add", "learned-del"]
        assert kernel_view() == {
            **{f"10.9.0.{i}/32": ["100.64.0.12"] for i in (3, 4, 5, 6, 7)},
            "10.9.0.1/32": ["100.64.0.13"],
        }
        assert r.installed.drift == {} and r.dirty_count == 0

        # a next hop re-resolved during a write: every key of the batch is checked again
        k.gateways[ip_address("100.64.0.14")] = ip_address("100.64.1.254")
        feed(upd(("10.9.1.1/32", "100.64.0.14", 1), ("10.9.1.2/32", "100.64.0.14", 1)))
        k.gate, k.entered = asyncio.Event(), asyncio.Event()
        write = asyncio.create_task(r.apply(Phase.ADD, 0.0))
        await k.entered.wait()
        k.gateways[ip_address("100.64.0.14")] = ip_address("100.64.1.253")
        assert r.re_resolve() == 2
        k.gate.set()
        await write
        k.gate = None
        assert r.dirty_count == 2 and len(r.installed.drift) == 2
        await apply(r)
        assert kernel_view()["10.9.1.1/32"] == ["100.64.1.253"]
        assert kernel_view()["10.9.1.2/32"] == ["100.64.1.253"]
        assert r.installed.drift == {} and r.dirty_count == 0

        # withdrawn, then announced again as it was while its delete is in flight: the
        # kernel lost it, so it is written again
        feed(Update(withdrawn=((ip_network("10.9.0.3/32"), 1),)))
        k.gate, k.entered = asyncio.Event(), asyncio.Event()
        write = asyncio.create_task(r.apply(Phase.REMOVE, 0.0))
        await k.entered.wait()
        feed(upd(("10.9.0.3/32", "100.64.0.12", 1)))
        k.gate.set()
        assert await write == 1
        k.gate = None
        assert "10.9.0.3/32" not in kernel_view() and r.dirty_count == 1
        await apply(r)
        assert kernel_view()["10.9.0.3/32"] == ["100.64.0.12"]
        assert r.installed.drift == {} and r.dirty_count == 0

    asyncio.run(go())


def reference_select(r: LearnedRouteReconciler, key: int, old: int | None,
                     new: int | None) -> None:
    """select() for one key written out step by step (what select_many inlines)."""
    r._retry.pop(key, None)
    drift = r.installed.drift
    want = None if new is None else r._resolved_set(new)
    if key not in drift:
        was = None if old is None else r._resolved_set(old)
        if was == want:
            return
        drift[key] = ABSENT if was is None else was
    r._settle(key, want)


@settings(max_examples=150, deadline=None)
@given(st.lists(
    st.tuples(
        st.lists(st.tuples(st.sampled_from(["10.9.0.1/32", "10.9.0.2/32", "10.9.0.3/32"]),
                           st.sampled_from(["100.64.0.12", "100.64.0.13", "100.64.9.9"]),
                           st.integers(1, 2)), max_size=4),
        st.lists(st.tuples(st.sampled_from(["10.9.0.1/32", "10.9.0.2/32"]),
                           st.integers(1, 2)), max_size=2),
        st.booleans(),  # a pass after this UPDATE
    ),
    max_size=8,
))
def test_select_many_is_select_key_by_key(
        steps: list[tuple[list[tuple[str, str, int]], list[tuple[str, int]], bool]]) -> None:
    """The inlined select_many leaves drift, dirty keys and the kernel exactly as the step
    by step select of each key of the delta (unreachable next hops, passes in between)."""
    rib = AdjRibIn()
    rib.add_peer("rr1")
    kernels = (FakeKernel(), FakeKernel())
    for k in kernels:
        k.gateways[ip_address("100.64.9.9")] = None  # unreachable
    one, two = (LearnedRouteReconciler(k, rib) for k in kernels)

    async def go() -> None:
        for r in (one, two):
            await r.resync()
        for announce, withdraw, apply_now in steps:
            delta = rib.apply_update("rr1", Update(
                withdrawn=tuple((ip_network(p), pid) for p, pid in withdraw),
                announced=tuple(Route(ip_network(p), pid, ip_address(nh), A)
                                for p, nh, pid in announce)))
            for key, (old, new) in delta.items():
                reference_select(one, key, old, new)
            two.select_many(delta)
            assert one.installed.drift == two.installed.drift
            assert (one._dirty_add, one._dirty_rm) == (two._dirty_add, two._dirty_rm)
            if apply_now:
                for r in (one, two):
                    await apply(r)
                assert kernels[0].learned == kernels[1].learned

    asyncio.run(go())
