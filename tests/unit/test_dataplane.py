"""Reconcilers and the apply pass against the in-memory kernel (no root)."""

from __future__ import annotations

import asyncio
import errno
from ipaddress import ip_address, ip_network

from l3hostd.calc import DataplaneSettings
from l3hostd.dataplane import Dataplane
from l3hostd.model import RTPROT_L3HOSTD, Endpoint, HostRoute, RouteKey
from l3hostd.netlink.fake import FakeKernel


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ep(eid: str, iface: str, *ips: str) -> Endpoint:
    return Endpoint(eid, iface, "fa:16:3e:00:00:01", tuple(ip_address(i) for i in ips))


def run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def make(kernel: FakeKernel, clock: Clock | None = None) -> Dataplane:
    return Dataplane(kernel, DataplaneSettings(), clock or Clock())


async def start(dp: Dataplane, kernel: FakeKernel, *endpoints: Endpoint) -> None:
    dp.on_endpoints({e.id: e for e in endpoints}, ())
    dp.on_links(await kernel.dump_links())
    dp.set_ready()
    await dp.apply_once()


def test_first_pass_installs_and_second_pass_writes_nothing() -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp = make(k)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1", "2001:db8::1"))
        assert {str(r.dst) for r in k.routes.values()} == {"10.0.0.1/32", "2001:db8::1/128"}
        assert len(k.neighbours) == 2 and len(k.tap_configured) == 1
        assert dp.synced.is_set()
        k.clear_writes()
        assert await dp.apply_once() == 0
        dp.request_resync()
        assert await dp.apply_once() == 0
        assert k.writes == []

    run(go())


def test_nothing_is_written_before_ready() -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp = make(k)

    async def go() -> None:
        dp.on_endpoints({"a": ep("a", "tapa", "10.0.0.1")}, ())
        dp.on_links(await k.dump_links())
        task = asyncio.create_task(dp.run())
        await asyncio.sleep(0.01)
        assert k.writes == []
        dp.set_ready()
        await asyncio.wait_for(dp.synced.wait(), 1)
        assert len(k.routes) == 1
        task.cancel()

    run(go())


def test_foreign_route_to_same_prefix_is_left_alone() -> None:
    k = FakeKernel()
    tap = k.add_link("tapa")
    foreign = HostRoute(ip_network("10.0.0.1/32"), tap.ifindex, protocol=4)  # proto static
    k.routes[foreign.key] = foreign
    dp = make(k)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1"))
        assert k.routes[foreign.key] == foreign  # untouched
        assert not [w for w in k.writes if w.op == "route-del"]
        assert dp.routes.stats.errors == 1  # the exclusive add failed: EEXIST, noted
        # and the stale-sweep of a resync never deletes it either
        dp.on_endpoints({}, ["a"])
        dp.request_resync()
        await dp.apply_once()
        assert k.routes[foreign.key] == foreign

    run(go())


def test_stale_route_of_ours_is_deleted_after_resync_and_right_ones_kept() -> None:
    k = FakeKernel()
    tap = k.add_link("tapa")
    right = HostRoute(ip_network("10.0.0.1/32"), tap.ifindex)
    stale = HostRoute(ip_network("10.0.0.99/32"), tap.ifindex)
    k.routes = {right.key: right, stale.key: stale}
    dp = make(k)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1"))
        assert set(k.routes) == {right.key}
        routes_written = [w for w in k.writes if w.op.startswith("route")]
        assert [(w.op, w.obj) for w in routes_written] == [("route-del", stale)]

    run(go())


def test_wrong_route_of_ours_is_replaced() -> None:
    k = FakeKernel()
    tap = k.add_link("tapa")
    other = k.add_link("tapb")
    wrong = HostRoute(ip_network("10.0.0.1/32"), other.ifindex)
    k.routes = {wrong.key: wrong}
    dp = make(k)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1"))
        assert k.routes[wrong.key].ifindex == tap.ifindex

    run(go())


def test_link_down_up_reinstalls_routes_the_kernel_flushed_silently() -> None:
    k = FakeKernel()
    tap = k.add_link("tapa")
    dp = make(k)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1"))
        dp.on_link(k.set_link_up(tap.ifindex, False))
        await dp.apply_once()
        assert not k.routes
        dp.on_link(k.set_link_up(tap.ifindex, True))
        await dp.apply_once()
        assert len(k.routes) == 1 and len(k.neighbours) == 1
        assert tap.ifindex in k.tap_configured

    run(go())


def test_a_tap_that_is_down_gets_its_neighbours_and_coming_up_writes_only_routes() -> None:
    """The VM's permanent neighbour entries (and the TAP's sysctls) are written while its
    TAP is down, and again after it went down (the kernel flushed them): between the TAP
    coming up and its announcement only the routes are written."""
    k = FakeKernel()
    tap = k.add_link("tapa", up=False)
    dp = make(k)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1", "2001:db8::1"))
        assert not k.routes and len(k.neighbours) == 2 and tap.ifindex in k.tap_configured
        k.clear_writes()
        dp.on_link(k.set_link_up(tap.ifindex, True))
        await dp.apply_once()
        assert sorted(w.op for w in k.writes) == ["route-add", "route-add"]
        assert len(k.routes) == 2
        dp.on_link(k.set_link_up(tap.ifindex, False))  # flushes routes and neighbours
        assert not k.neighbours
        k.clear_writes()
        await dp.apply_once()
        assert not k.routes and len(k.neighbours) == 2
        # (and the IPv6 gateway address the kernel flushed with them)
        assert sorted(w.op for w in k.writes) == ["neigh-add", "neigh-add", "tap-config"]

    run(go())


def test_removed_tap_and_removed_endpoint() -> None:
    k = FakeKernel()
    a = k.add_link("tapa")
    k.add_link("tapb")
    dp = make(k)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1"), ep("b", "tapb", "10.0.0.2"))
        k.del_link(a.ifindex)
        dp.on_link_removed(a.ifindex)
        k.clear_writes()
        await dp.apply_once()
        assert k.writes == []  # the kernel already dropped them; nothing to write
        assert [str(r.dst) for r in dp.routes.observed.values()] == ["10.0.0.2/32"]
        dp.on_endpoints({}, ["b"])
        await dp.apply_once()
        assert not k.routes and not k.neighbours

    run(go())


def test_failed_write_is_retried_with_backoff() -> None:
    k = FakeKernel()
    k.add_link("tapa")
    clock = Clock()
    dp = make(k, clock)

    async def go() -> None:
        k.fail_next["route-add"] = errno.ENOMEM
        await start(dp, k, ep("a", "tapa", "10.0.0.1"))
        assert not k.routes
        assert not dp.routes.pending(clock.now)  # waiting for its backoff
        retry_at = dp.routes.next_retry()
        assert retry_at is not None and retry_at > clock.now
        clock.now = retry_at
        assert dp.routes.pending(clock.now)
        await dp.apply_once()
        assert len(k.routes) == 1

    run(go())


def test_route_listener_sees_only_installed_routes() -> None:
    k = FakeKernel()
    k.add_link("tapa")
    dp = make(k)
    seen: list[tuple[set[str], set[str]]] = []
    dp.route_listeners.append(
        lambda added, removed: seen.append(
            ({str(r.dst) for r in added.values()}, {str(key.dst) for key in removed})
        )
    )

    async def go() -> None:
        k.fail_next["route-add"] = errno.ENOMEM
        await start(dp, k, ep("a", "tapa", "10.0.0.1"))
        assert seen == []
        dp.on_endpoints({}, ["a"])
        await dp.apply_once()
        assert seen == []

    run(go())


def _logged(k: FakeKernel, dp: Dataplane) -> list[str]:
    """One log of the route listener's calls and the kernel's writes, in order."""
    log: list[str] = []
    dp.route_listeners.append(lambda added, removed: log.extend(
        [*(f"announce {r.dst}" for r in added.values()),
         *(f"withdraw {key.dst}" for key in removed)]))
    for name in ("write_routes", "write_neighbours"):
        real = getattr(k, name)

        async def write(deletes, adds, real=real):  # type: ignore[no-untyped-def]
            result = await real(deletes, adds)
            log.extend(f"{w.op} {getattr(w.obj, 'dst', getattr(w.obj, 'ip', ''))}"
                       for w in k.writes[len(k.writes) - len(result):])
            return result

        setattr(k, name, write)
    return log


def test_removal_withdraws_first() -> None:
    """DESIGN.md: removal is addition in reverse, so the withdrawal comes first -- before
    a removed endpoint's route is deleted, and at once when a TAP went down (the kernel
    flushed its route). A route whose delete failed is not
    announced again while unwanted; wanted again, it is (still installed)."""
    k = FakeKernel()
    tap = k.add_link("tapa")
    k.add_link("tapb")
    dp = make(k)
    log = _logged(k, dp)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1"), ep("b", "tapb", "10.0.0.2"))
        assert sorted(log) == ["announce 10.0.0.1/32", "announce 10.0.0.2/32",
                               "neigh-add 10.0.0.1", "neigh-add 10.0.0.2",
                               "route-add 10.0.0.1/32", "route-add 10.0.0.2/32"]
        log.clear()
        dp.on_endpoints({}, ["b"])
        await dp.apply_once()
        assert log == ["withdraw 10.0.0.2/32", "neigh-del 10.0.0.2", "route-del 10.0.0.2/32"]
        log.clear()
        dp.on_link(k.set_link_up(tap.ifindex, False))  # flushed: re-added while down
        assert log == ["withdraw 10.0.0.1/32"], log  # from the event itself, before a pass
        await dp.apply_once()
        assert log == ["withdraw 10.0.0.1/32", "neigh-add 10.0.0.1"], log
        dp.on_link(k.set_link_up(tap.ifindex, True))
        await dp.apply_once()
        log.clear()
        k.fail_next["route-del"] = errno.EBUSY
        dp.on_endpoints({}, ["a"])
        await dp.apply_once()
        assert log == ["withdraw 10.0.0.1/32", "neigh-del 10.0.0.1", "route-del 10.0.0.1/32"]
        assert len(k.routes) == 1  # the delete failed: still installed, not announced
        log.clear()
        dp.on_endpoints({"a": ep("a", "tapa", "10.0.0.1")}, ())
        await dp.apply_once()
        # wanted again, and installed: announced again (its neighbour entry back first)
        assert log == ["neigh-add 10.0.0.1", "announce 10.0.0.1/32"], log

    run(go())


def test_a_link_dump_without_two_taps_withdraws_each_route_once_at_once() -> None:
    """A full link dump (overflow, resync) in which TAPs are gone: each one's routes are
    withdrawn from the dump itself, once, and only those (each device's own keys, not
    every key changed since the last pass)."""
    k = FakeKernel()
    a, b = k.add_link("tapa"), k.add_link("tapb")
    k.add_link("tapc")
    dp = make(k)
    log = _logged(k, dp)

    async def go() -> None:
        await start(dp, k, ep("a", "tapa", "10.0.0.1"), ep("b", "tapb", "10.0.0.2"),
                    ep("c", "tapc", "10.0.0.3"))
        log.clear()
        k.del_link(a.ifindex)
        k.del_link(b.ifindex)
        dp.on_links(await k.dump_links())
        assert sorted(log) == ["withdraw 10.0.0.1/32", "withdraw 10.0.0.2/32"], log
        await dp.apply_once()
        assert sorted(log) == ["withdraw 10.0.0.1/32", "withdraw 10.0.0.2/32"], log

    run(go())


def test_adoption_after_restart_writes_nothing() -> None:
    k = FakeKernel()
    k.add_link("tapa")
    k.add_link("tapb")
    eps = (ep("a", "tapa", "10.0.0.1", "2001:db8::1"), ep("b", "tapb", "10.0.0.2"))

    async def go() -> None:
        await start(make(k), k, *eps)
        k.clear_writes()
        dp2 = Dataplane(k, DataplaneSettings(), Clock())  # "restart": a fresh daemon
        await start(dp2, k, *eps)
        assert k.writes == []
        assert len(dp2.routes.observed) == 3

    run(go())
    assert RouteKey(254, ip_network("10.0.0.1/32")) in k.routes
    assert all(r.protocol == RTPROT_L3HOSTD for r in k.routes.values())


def test_a_wish_changed_while_its_write_was_in_flight_is_written_next() -> None:
    """set_desired() during the await of a batch (an event handled meanwhile): the key must
    stay dirty, not be marked clean with the old value (it once was, until the next
    resync)."""
    k = FakeKernel()
    a = k.add_link("tapa")
    b = k.add_link("tapb")
    dp = make(k)
    route_a = HostRoute(ip_network("10.0.0.9/32"), a.ifindex)
    route_b = HostRoute(ip_network("10.0.0.9/32"), b.ifindex)

    async def go() -> None:
        await start(dp, k)
        original = k.write_routes
        changed = False

        async def write_routes(deletes: object, adds: object) -> list[int]:
            nonlocal changed
            result = await original(deletes, adds)  # type: ignore[arg-type]
            if not changed:
                changed = True
                dp.routes.set_desired(route_b.key, route_b)  # the wish moves meanwhile
            return result

        k.write_routes = write_routes  # type: ignore[method-assign]
        dp.routes.set_desired(route_a.key, route_a)
        await dp.apply_once()
        assert dp.routes.pending(0.0), "the newer wish must still be pending"
        await dp.apply_once()
        assert k.routes[route_b.key].ifindex == b.ifindex

    run(go())


def test_kick_starts_the_pass_in_the_caller_and_run_waits_for_it() -> None:
    """kick() after an input: when the dataplane is idle its pass starts in the caller --
    the route is written before kick() returns -- and goes on as a task; inputs that come
    while it runs are not lost (the run loop waits for it, then passes again); when the
    dataplane is busy a kick is a plain wake."""
    k = FakeKernel()
    k.add_link("tapa")
    k.add_link("tapb")
    k.add_link("tapc")
    dp = make(k)

    class Gate:
        def __init__(self) -> None:
            self.event: asyncio.Event | None = None

    gate = Gate()
    real_write = k.write_routes

    async def gated_write(*args, **kwargs):  # type: ignore[no-untyped-def]
        if gate.event is not None:
            await gate.event.wait()
        return await real_write(*args, **kwargs)

    k.write_routes = gated_write  # type: ignore[method-assign]

    async def go() -> None:
        await start(dp, k)
        runner = asyncio.create_task(dp.run())
        await asyncio.sleep(0.01)  # idle
        dp.on_endpoints({"a": ep("a", "tapa", "10.0.0.1")}, ())
        dp.kick()
        assert {str(r.dst) for r in k.routes.values()} == {"10.0.0.1/32"}  # already
        await asyncio.sleep(0.01)
        # a write that waits: the kicked pass is in flight when more input comes
        gate.event = asyncio.Event()
        dp.on_endpoints({"b": ep("b", "tapb", "10.0.0.2")}, ())
        dp.kick()
        assert len(k.routes) == 1
        dp.on_endpoints({"c": ep("c", "tapc", "10.0.0.3")}, ())
        dp.kick()  # busy: only a wake
        gate.event.set()
        gate.event = None
        for _ in range(100):
            await asyncio.sleep(0.001)
            if len(k.routes) == 3:
                break
        assert {str(r.dst) for r in k.routes.values()} == {
            "10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"}
        runner.cancel()

    run(go())
