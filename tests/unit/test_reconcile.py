"""The generic reconciler (l3hostd.reconcile) with the real subclasses and the fake kernel.

- Its index of observed objects by device (``observed_in``). A device that goes down loses
  its routes and neighbour entries in the kernel without a word, and the dataplane forgets
  them by device. The index must say exactly what a scan of every observed object would,
  after any mix of writes, failed writes, device losses and resyncs.
- A write to a device that was just removed: quiet once.
"""

from __future__ import annotations

import asyncio
import errno
from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from l3hostd.model import HostRoute, Neighbour
from l3hostd.netlink.fake import FakeKernel
from l3hostd.netlink.neighbors import NeighbourReconciler
from l3hostd.netlink.routes import RouteReconciler
from l3hostd.reconcile import Phase, Reconciler

OPS = st.lists(
    st.tuples(
        st.sampled_from(["want", "unwant", "apply", "fail", "down", "resync"]),
        st.integers(0, 7),  # which object
        st.integers(0, 2),  # which device
    ),
    max_size=40,
)


def _scan(r: Reconciler, group: int) -> set[object]:  # type: ignore[type-arg]
    return {k for k, v in r.observed.items() if r._group(k, v) == group}


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_the_index_is_what_a_scan_would_find(ops: list[tuple[str, int, int]]) -> None:
    async def go() -> None:
        k = FakeKernel()
        links = [k.add_link(f"tap{i}") for i in range(3)]
        routes = RouteReconciler(k)
        neighbours = NeighbourReconciler(k, lambda: list(k.links))
        await routes.resync()
        await neighbours.resync()
        for op, obj, dev in ops:
            ifindex = links[dev].ifindex
            route = HostRoute(ip_network(f"10.0.0.{obj}/32"), ifindex)
            neigh = Neighbour(ifindex, ip_address(f"10.0.0.{obj}"), "fa:16:3e:00:00:01")
            if op == "want":
                routes.set_desired(route.key, route)
                neighbours.set_desired(neigh.key, neigh)
            elif op == "unwant":
                routes.set_desired(route.key, None)
                neighbours.set_desired(neigh.key, None)
            elif op in ("apply", "fail"):
                if op == "fail":
                    k.fail_next["route-add"] = errno.ENOMEM
                for r in (routes, neighbours):
                    for phase in (Phase.REMOVE, Phase.ADD):
                        await r.apply(phase, 1e9)
            elif op == "down":  # the kernel flushes the device; we forget by device
                k.set_link_up(ifindex, False)
                routes.forget_ifindex(ifindex)
                neighbours.forget_ifindex(ifindex)
                assert not _scan(routes, ifindex) and not _scan(neighbours, ifindex)
                k.set_link_up(ifindex, True)
            else:
                await routes.resync()
                await neighbours.resync()
            for r in (routes, neighbours):
                for link in links:
                    assert set(r.observed_in(link.ifindex)) == _scan(r, link.ifindex)
                assert r._by_group is not None
                assert all(r._by_group.values())  # no empty groups left behind

    asyncio.run(go())


def test_a_route_moved_to_another_device_is_indexed_there_only() -> None:
    """One key, a new value on another device (a VM's TAP replaced): written in place."""

    async def go() -> None:
        k = FakeKernel()
        a, b = k.add_link("tapa"), k.add_link("tapb")
        routes = RouteReconciler(k)
        await routes.resync()
        first = HostRoute(ip_network("10.0.0.1/32"), a.ifindex)
        routes.set_desired(first.key, first)
        await routes.apply(Phase.ADD, 0)
        moved = HostRoute(ip_network("10.0.0.1/32"), b.ifindex)
        routes.set_desired(moved.key, moved)
        await routes.apply(Phase.ADD, 0)
        assert routes.observed_in(a.ifindex) == []
        assert routes.observed_in(b.ifindex) == [moved.key]

    asyncio.run(go())


class _Grouped(Reconciler[str, int]):
    """Objects whose value is their group, changed in place (one "replace" write)."""

    def __init__(self) -> None:
        super().__init__()
        self.replace_in_place = True
        self._by_group = {}

    def _group(self, key: str, value: int) -> int:
        return value

    async def _dump(self) -> dict[str, int]:
        return {}

    async def _write(self, deletes, adds):  # type: ignore[no-untyped-def]
        return [0] * (len(deletes) + len(adds))


def test_a_value_replaced_in_place_leaves_its_old_group() -> None:
    async def go() -> None:
        r = _Grouped()
        await r.resync()
        r.set_desired("x", 1)
        await r.apply(Phase.ADD, 0)
        r.set_desired("x", 2)
        await r.apply(Phase.ADD, 0)
        assert r.observed_in(1) == [] and r.observed_in(2) == ["x"]
        assert r._by_group == {2: {"x"}}

    asyncio.run(go())


def test_a_write_to_a_device_just_gone_is_quiet_once(caplog) -> None:  # type: ignore[no-untyped-def]
    """A TAP being deleted goes down first; its neighbour entries, written again at that
    event, fail with ENODEV when the kernel has removed the device meanwhile: routine, not
    a warning nor an error -- unless it lasts (then counted, and warned at the fifth try)."""

    async def go() -> NeighbourReconciler:
        k = FakeKernel()
        neighbours = NeighbourReconciler(k, lambda: list(k.links))
        await neighbours.resync()
        gone = Neighbour(99, ip_address("10.0.0.1"), "fa:16:3e:00:00:01")  # no device 99
        neighbours.set_desired(gone.key, gone)
        await neighbours.apply(Phase.ADD, 0.0)
        assert neighbours.stats.errors == 0 and not neighbours.stats.last_error
        assert not [r for r in caplog.records if r.levelname == "WARNING"]
        for attempt in range(2, 6):
            await neighbours.apply(Phase.ADD, 100.0 * attempt)
        assert neighbours.stats.errors == 4 and "ENODEV" in neighbours.stats.last_error
        assert [r for r in caplog.records if r.levelname == "WARNING"]  # the fifth try
        return neighbours

    asyncio.run(go())


def test_a_sysctl_of_a_device_that_is_gone_is_enodev(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from l3hostd.netlink import sysctl

    (tmp_path / "ipv4" / "conf" / "tapa").mkdir(parents=True)
    assert sysctl.configure_tap("tapb", False, root=tmp_path) == errno.ENODEV
