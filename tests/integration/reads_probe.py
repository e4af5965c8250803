"""Run inside a test namespace by test_event_reads.py (on uvloop): one event at a time
through the link monitor, the kernel-learn watcher and a request batch, counting the
recv() calls that would have blocked (raised BlockingIOError). Prints one JSON object."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from ipaddress import ip_network
from typing import Any

import uvloop

from l3hostd.model import RTPROT_L3HOSTD, Link
from l3hostd.netlink import wire
from l3hostd.netlink.batch import RtnlBatchSocket
from l3hostd.netlink.monitor import LinkMonitor
from l3hostd.netlink.routewatch import KernelRouteWatch


class Counting:
    """A socket that counts its reads, and those that would have blocked."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self.reads = 0
        self.would_block = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)

    def _count(self, fn: Any, *args: Any) -> Any:
        self.reads += 1
        try:
            return fn(*args)
        except BlockingIOError:
            self.would_block += 1
            raise

    def recv(self, *args: Any) -> Any:
        return self._count(self._sock.recv, *args)

    def recv_into(self, *args: Any) -> Any:
        return self._count(self._sock.recv_into, *args)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


async def settle(seen: list[Any], n: int) -> None:
    for _ in range(400):
        if len(seen) >= n:
            return
        await asyncio.sleep(0.005)
    raise TimeoutError(f"{len(seen)} of {n} events seen")


async def main() -> dict[str, object]:
    out: dict[str, object] = {}
    ip("link", "add", "tapr0", "type", "veth", "peer", "name", "peer0")
    ip("link", "set", "peer0", "up")

    # 1. the link monitor: one event per wake-up (the command returns before the next)
    links: list[Link] = []
    monitor = LinkMonitor(links.append, lambda i: None, lambda: None)
    monitor.start()
    counted = Counting(monitor._sock)  # type: ignore[arg-type]
    monitor._sock = counted  # type: ignore[assignment]
    for i, state in enumerate(("up", "down", "up")):
        ip("link", "set", "tapr0", state)
        await settle(links, i + 1)
        await asyncio.sleep(0.05)  # anything else the change caused is in
    tap = [link for link in links if link.ifname == "tapr0"][-1]
    assert tap.admin_up
    out["monitor"] = {"events": len(links), "reads": counted.reads,
                      "would_block": counted.would_block}

    # 2. the kernel-learn watcher: a route added and deleted on a matching link
    changes: list[tuple[str, int | None]] = []
    watch = KernelRouteWatch(["tapr*"], 254, lambda p, m: changes.append((str(p), m)))
    watch.start()
    counted = Counting(watch._sock)  # type: ignore[arg-type]
    watch._sock = counted  # type: ignore[assignment]
    watch.on_link(tap)
    for i, verb in enumerate(("add", "del")):
        ip("route", verb, "10.77.0.1/32", "dev", "tapr0", "proto", "static")
        await settle(changes, i + 1)
        await asyncio.sleep(0.05)
    out["watch"] = {"changes": changes, "reads": counted.reads,
                    "would_block": counted.would_block}
    watch.stop()
    monitor.stop()

    # 3. a request batch: small ones, then a bulk that takes several datagrams
    async with RtnlBatchSocket() as batch:
        counted = Counting(batch._sock)  # type: ignore[arg-type]
        batch._sock = counted  # type: ignore[assignment]
        small = []
        for i in range(5):
            route = wire.route_add(ip_network(f"10.88.0.{i + 1}/32"), protocol=RTPROT_L3HOSTD,
                                   oif=tap.ifindex)
            small.append(await batch.execute([route]))
        out["small"] = {"results": small, "reads": counted.reads,
                        "would_block": counted.would_block}
        bulk = await batch.execute([
            wire.route_add(ip_network(f"10.89.{i // 250}.{i % 250 + 1}/32"),
                           protocol=RTPROT_L3HOSTD, oif=tap.ifindex)
            for i in range(3000)
        ])
        dumped = await batch.dump_routes(socket.AF_INET, RTPROT_L3HOSTD)
        out["bulk"] = {"ok": bulk == [0] * 3000, "dumped": len(dumped)}
    return out


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main())))
    sys.exit(0)
