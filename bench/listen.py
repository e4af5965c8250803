"""Netlink event timestamper, run inside a namespace by the benchmarks.

Prints one line per event: ``up <ifname> <t>`` (first RTM_NEWLINK with IFF_UP and
IFF_LOWER_UP), ``down <ifname> <t>`` (first RTM_NEWLINK without them after an ``up``),
``gone <ifname> <t>`` (RTM_DELLINK), ``add <dst> <proto> <t>`` / ``del <dst> <proto> <t>``
for routes, with ``t = time.monotonic()`` at receipt. A process of its own (not a thread
of the bench) so that its timestamps never wait for another thread's GIL; CLOCK_MONOTONIC
is shared by all processes, so the bench can compare them with its own. A socket filter
(:func:`event_filter`) has the kernel drop every notification it would not print: it
wakes up only for what it reports.

Usage: ``ip netns exec NS python -m bench.listen [--protocols 44,45]``.
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from l3hostd.netlink import bpf, wire

SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE = 1, 7, 11
IFF_UP, IFF_LOWER_UP = 0x1, 0x10000
IFLA_IFNAME = 3
RTM_NEWLINK, RTM_DELLINK, RTM_NEWROUTE, RTM_DELROUTE = 16, 17, 24, 25
#: SCHED_FIFO priority of a ``realtime`` listener: above every normal task, low among
#: real-time ones (the kernel's own threads are 50 and up)
RT_PRIORITY = 10


@dataclass
class Listener:
    """Reads the lines of a :mod:`bench.listen` process running in a namespace.

    ``record=True`` also keeps every route event in order in ``history`` as
    ``(kind, dst, t)`` (the dicts hold only the last time per prefix). ``realtime=True``
    runs the process SCHED_FIFO (``chrt -f``): it reads an event when the kernel sends it
    instead of waiting for a CPU the speakers hold (see :mod:`bench.scenarios.p1_latency`);
    only for a few events at a time, never for a bulk of them."""

    netns: str
    protocols: str = "44,45"
    record: bool = False
    realtime: bool = False
    link_up: dict[str, float] = field(default_factory=dict)  # ifname -> last up with carrier
    link_down: dict[str, float] = field(default_factory=dict)  # ifname -> last lost up/carrier
    link_gone: dict[str, float] = field(default_factory=dict)  # ifname -> last RTM_DELLINK
    history: list[tuple[str, str, float]] = field(default_factory=list)
    route_added: dict[str, float] = field(default_factory=dict)  # dst -> last add
    route_deleted: dict[str, float] = field(default_factory=dict)  # dst -> last delete
    routes_now: set[str] = field(default_factory=set)
    last_add: float = 0.0
    first_add: float = 0.0
    overflows: int = 0
    #: held while a line is applied to the tables, notified after each (see :meth:`wait`)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                *(["chrt", "-f", str(RT_PRIORITY)] if self.realtime else []),
                "ip",
                "netns",
                "exec",
                self.netns,
                sys.executable,
                "-m",
                "bench.listen",
                "--protocols",
                self.protocols,
            ],
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("listener did not start")
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)

    def wait(
        self, table: dict[str, float], key: str, after: float = 0.0, timeout: float = 10.0
    ) -> float | None:
        """Until ``table[key]`` (one of this listener's tables) holds a time later than
        ``after``; return it, or None after ``timeout`` seconds. The reader thread wakes
        the waiter when a line arrives: waiting costs no CPU. (It used to poll every
        0.5 ms: ~2 wake-ups of the bench on the speakers' CPUs during each event. Their
        effect on P1 was below the run-to-run noise in an A/B run, but a harness should
        not run during what it measures.)"""
        deadline = time.monotonic() + timeout
        with self.changed:
            while (t := table.get(key, 0.0)) <= after:
                left = deadline - time.monotonic()
                if left <= 0 or not self.thread.is_alive():
                    return None
                self.changed.wait(left)
        return t

    def _run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self.changed:
                self._apply(line)
                self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()  # the listener is gone: no waiter waits for it

    def _apply(self, line: str) -> None:
        kind, what, *rest = line.split()
        t = float(rest[-1])
        if kind == "up":
            self.link_up[what] = t
        elif kind == "down":
            self.link_down[what] = t
        elif kind == "gone":
            self.link_gone[what] = t
        elif kind == "add":
            self.route_added[what] = t
            self.routes_now.add(what)
            self.last_add = t
            self.first_add = self.first_add or t
            if self.record:
                self.history.append((kind, what, t))
        elif kind == "del":
            self.route_deleted[what] = t
            self.routes_now.discard(what)
            if self.record:
                self.history.append((kind, what, t))
        elif kind == "overflow":
            self.overflows += 1


def event_filter(protocols: Iterable[int]) -> list[bpf.Insn]:
    """A classic BPF program for the socket: link messages and the route messages of
    ``protocols`` pass, the kernel drops the rest before they are queued. A real-time
    listener must not wake up (and take a CPU from the speakers) for the speakers' own
    routes or the kernel's: each notification is one message, its type at byte 4 of the
    header (low byte first on this host), a route's protocol at byte 21 (rtmsg)."""
    wanted = sorted(set(protocols))
    type_at = 4 if sys.byteorder == "little" else 5
    accept = 8 + len(wanted)
    return [
        (bpf.LDB_ABS, 0, 0, type_at),
        (bpf.JEQ_K, accept - 2, 0, RTM_NEWLINK),
        (bpf.JEQ_K, accept - 3, 0, RTM_DELLINK),
        (bpf.JEQ_K, 2, 0, RTM_NEWROUTE),  # -> 6
        (bpf.JEQ_K, 1, 0, RTM_DELROUTE),  # -> 6
        (bpf.RET_K, 0, 0, 0),
        (bpf.LDB_ABS, 0, 0, 16 + 5),  # 6: rtm_protocol
        *((bpf.JEQ_K, accept - (8 + i), 0, proto) for i, proto in enumerate(wanted)),
        (bpf.RET_K, 0, 0, 0),
        (bpf.RET_K, 0, 0, bpf.ACCEPT),  # accept
    ]


def ifname(payload: bytes) -> str | None:
    off = 16
    while off + 4 <= len(payload):
        length, kind = struct.unpack_from("=HH", payload, off)
        if length < 4:
            return None
        if kind == IFLA_IFNAME:
            return payload[off + 4 : off + length].split(b"\0")[0].decode()
        off += (length + 3) & ~3
    return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocols", default="44,45")
    args = parser.parse_args()
    protocols = {int(p) for p in args.protocols.split(",")}
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    sock.setsockopt(socket.SOL_SOCKET, 33, 64 << 20)  # SO_RCVBUFFORCE
    bpf.attach(sock, event_filter(protocols))
    sock.bind((0, 0))
    for group in (RTNLGRP_LINK, RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE):
        sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, group)
    seen_up: set[str] = set()
    out = sys.stdout
    print("ready", flush=True)
    while True:
        try:
            data = sock.recv(1 << 20)
        except OSError as exc:
            print(f"overflow {exc.errno} {time.monotonic()}", file=out, flush=True)
            continue
        now = time.monotonic()
        lines = []
        for msg in wire.split_messages(data):
            if msg.type == RTM_NEWLINK:
                flags = struct.unpack_from("=BxHiII", msg.payload)[3]
                name = ifname(msg.payload)
                if name and flags & IFF_UP and flags & IFF_LOWER_UP:
                    if name not in seen_up:
                        seen_up.add(name)
                        lines.append(f"up {name} {now}")
                elif name and name in seen_up:
                    seen_up.discard(name)
                    lines.append(f"down {name} {now}")
            elif msg.type == RTM_DELLINK:
                name = ifname(msg.payload)
                if name:
                    seen_up.discard(name)
                    lines.append(f"gone {name} {now}")
            elif msg.type in (RTM_NEWROUTE, RTM_DELROUTE):
                full = struct.pack("=IHHII", 16 + len(msg.payload), msg.type, 0, 0, 0)
                rec = wire.parse_route(full + msg.payload, 16)
                if rec.protocol in protocols:
                    kind = "add" if msg.type == RTM_NEWROUTE else "del"
                    lines.append(f"{kind} {rec.dst} {rec.protocol} {now}")
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
