"""Benchmark RtnlBatchSocket: bulk route adds/deletes and kernel-filtered dumps.

In a throw-away network namespace (``l3t-batch-bench-<random>``, deleted afterwards) with a
veth pair, install N /32 host routes (``dev veth0 scope link proto 44``), dump them back
with the kernel-side protocol filter, dump a protocol that has no routes (the kernel walks
the whole FIB and returns nothing: the cost of the filter itself), then delete them all.
Prints adds/s, deletes/s, dump times and the longest event-loop stall seen during the bulk
operations (the kernel applies each 256-message datagram inside ``send()``).

    sudo .venv/bin/python bench/netlink_batch.py [--routes 100000] [--loop uvloop|asyncio]
                                                 [--in-flight 256] [--ip-batch] [--monitor]

``--monitor`` runs ``ip monitor route`` in the namespace meanwhile: a socket subscribed to
route events makes the kernel build a notification for every change.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from typing import TypeVar

import uvloop

from l3hostd.model import RTPROT_L3HOSTD, RTPROT_L3HOSTD_BGP
from l3hostd.netlink import wire
from l3hostd.netlink.batch import RtnlBatchSocket

T = TypeVar("T")


def sh(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


async def with_stall_probe(work: Callable[[], Awaitable[T]]) -> tuple[T, float, float]:
    """Run ``work``; return its result, its duration and the longest loop stall (s)."""
    loop = asyncio.get_running_loop()
    worst = 0.0
    done = False

    async def probe() -> None:
        nonlocal worst
        last = loop.time()
        while not done:
            await asyncio.sleep(0.001)
            now = loop.time()
            worst = max(worst, now - last - 0.001)
            last = now

    task = asyncio.create_task(probe())
    await asyncio.sleep(0)
    t0 = time.perf_counter()
    try:
        result = await work()
    finally:
        elapsed = time.perf_counter() - t0
        done = True
        await task
    return result, elapsed, worst


async def bench(ns: str, ifindex: int, n: int, in_flight: int) -> None:
    base = int(IPv4Address("10.128.0.0"))
    dsts = [IPv4Network((base + i, 32)) for i in range(n)]

    t0 = time.perf_counter()
    adds = [wire.route_add(d, protocol=RTPROT_L3HOSTD, oif=ifindex) for d in dsts]
    pack_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    dels = [wire.route_del(d, protocol=RTPROT_L3HOSTD) for d in dsts]
    pack_del = time.perf_counter() - t0
    print(f"packing:  {n / pack_add:10,.0f} adds/s   {n / pack_del:10,.0f} deletes/s (pure Python)")

    async with RtnlBatchSocket(ns, max_in_flight=in_flight, timeout=10) as sock:
        res, t_add, stall_add = await with_stall_probe(lambda: sock.execute(adds))
        assert res == [0] * n, f"{sum(1 for r in res if r)} adds failed"
        print(
            f"install:  {n / t_add:10,.0f} adds/s     ({n:,} routes in {t_add:.2f} s, "
            f"longest loop stall {stall_add * 1000:.1f} ms)"
        )

        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            routes = await sock.dump_routes(socket.AF_INET, RTPROT_L3HOSTD)
            timings.append(time.perf_counter() - t0)
            assert len(routes) == n, len(routes)
        print(
            f"dump:     {min(timings) * 1000:10.0f} ms      (proto 44 filter, {n:,} routes "
            f"returned and parsed; best of 3)"
        )
        timings = []
        for _ in range(3):
            t0 = time.perf_counter()
            none = await sock.dump_routes(socket.AF_INET, RTPROT_L3HOSTD_BGP)
            timings.append(time.perf_counter() - t0)
            assert none == []
        print(
            f"dump:     {min(timings) * 1000:10.1f} ms      (proto 45 filter: kernel walks "
            f"{n:,} routes, returns none; best of 3)"
        )
        t0 = time.perf_counter()
        everything = await sock.dump_routes(socket.AF_INET, 0)
        t_all = time.perf_counter() - t0
        print(
            f"dump:     {t_all * 1000:10.0f} ms      (no filter: {len(everything):,} routes, "
            f"all tables)"
        )

        res, t_del, stall_del = await with_stall_probe(lambda: sock.execute(dels))
        assert res == [0] * n, f"{sum(1 for r in res if r)} deletes failed"
        print(
            f"delete:   {n / t_del:10,.0f} deletes/s  ({n:,} routes in {t_del:.2f} s, "
            f"longest loop stall {stall_del * 1000:.1f} ms)"
        )
        assert await sock.dump_routes(socket.AF_INET, RTPROT_L3HOSTD) == []


def ip_batch(ns: str, n: int) -> None:
    """The same with ``ip -batch`` for comparison."""
    base = int(IPv4Address("10.128.0.0"))
    with (
        tempfile.NamedTemporaryFile("w", suffix=".ipbatch") as add,
        tempfile.NamedTemporaryFile("w", suffix=".ipbatch") as delete,
    ):
        for i in range(n):
            ip = IPv4Address(base + i)
            add.write(f"route add {ip}/32 dev veth0 scope link proto 44\n")
            delete.write(f"route del {ip}/32 dev veth0 proto 44\n")
        add.flush()
        delete.flush()
        t0 = time.perf_counter()
        sh("ip", "-n", ns, "-batch", add.name)
        t_add = time.perf_counter() - t0
        t0 = time.perf_counter()
        sh("ip", "-n", ns, "-batch", delete.name)
        t_del = time.perf_counter() - t0
    print(f"ip -batch: {n / t_add:9,.0f} adds/s   {n / t_del:10,.0f} deletes/s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--ip-batch", action="store_true", help="also time `ip -batch`")
    parser.add_argument(
        "--monitor", action="store_true", help="run `ip monitor route` in the namespace meanwhile"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (creates a network namespace)", file=sys.stderr)
        return 1

    ns = f"l3t-batch-bench-{secrets.token_hex(3)}"
    monitor: subprocess.Popen[bytes] | None = None
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "add", "veth0", "type", "veth", "peer", "name", "veth1")
        for dev in ("lo", "veth0", "veth1"):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        ifindex = int(sh("ip", "netns", "exec", ns, "cat", "/sys/class/net/veth0/ifindex"))
        if args.monitor:
            monitor = subprocess.Popen(
                ["ip", "-n", ns, "monitor", "route"], stdout=subprocess.DEVNULL
            )
        print(
            f"{args.routes:,} /32 routes, loop={args.loop}, in-flight={args.in_flight}, "
            f"route monitor={'on' if args.monitor else 'off'}, "
            f"kernel {os.uname().release}, Python {sys.version.split()[0]}"
        )
        factory = uvloop.new_event_loop if args.loop == "uvloop" else asyncio.new_event_loop
        with asyncio.Runner(loop_factory=factory) as runner:
            runner.run(bench(ns, ifindex, args.routes, args.in_flight))
        if args.ip_batch:
            ip_batch(ns, args.routes)
    finally:
        if monitor is not None:
            monitor.terminate()
            monitor.wait()
        subprocess.run(["ip", "netns", "del", ns], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
