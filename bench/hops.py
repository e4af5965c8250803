"""Where P1's latency goes: hv1 -> the reflector -> hv2, split at the reflector's wire.

``python -m bench p1 --hops`` captures the reflector's BGP traffic (``tcpdump`` in its
namespace, kernel timestamps, written to a pcap file; no wake-up per packet) and splits
each route event (and each TAP up) in three:

- **hv1**: hv1's listener reads the kernel's route (or link) event -> the UPDATE (or
  withdrawal) for that prefix arrives at the reflector. hv1's speaker reacts to the same
  kernel notification as the listener, so with a fast speaker this is often negative:
  the listener wakes up later than the speaker's UPDATE is on the wire;
- **rr**: that UPDATE arrives -> the reflector's UPDATE for the prefix leaves for hv2;
- **hv2**: it leaves -> hv2's listener reads the route change in hv2's FIB.

The three add up to the P1 sample. The reflector is BIRD 2 for both speakers, so its
share shows how much of a difference the speakers under test make, and where.

A packet is matched to an event by the prefix's NLRI encoding (``0x20`` + the four
address bytes, in the NLRI or the Withdrawn Routes field) and by its addresses, first
one after the command. pcap timestamps are CLOCK_REALTIME, the listeners'
CLOCK_MONOTONIC: one offset read at the end converts them (drift over a run: microseconds).
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from l3hostd.lab import Lab, LabError, Netns

LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
ETH_P_IP = 0x0800
PCAP_NANO = 0xA1B23C4D
PCAP_MICRO = 0xA1B2C3D4
#: tcpdump's capture timeout (s): the kernel hands a partly filled ring block over after it
RING_TIMEOUT = 1.0
#: how long tcpdump may take to say it is listening (s)
START_TIMEOUT = 10.0


@dataclass(frozen=True)
class Segment:
    """One captured IPv4 TCP segment with payload: (CLOCK_REALTIME seconds, ...)."""

    t: float
    src: str
    dst: str
    payload: bytes


def read_pcap(data: bytes) -> Iterator[Segment]:
    """The IPv4 TCP segments with a payload in a pcap file (``-i any``: Linux cooked
    capture v1 or v2; micro- or nanosecond timestamps, either byte order)."""
    if len(data) < 24:
        return
    for order in "<>":
        magic, _, _, _, _, _, linktype = struct.unpack_from(order + "IHHiIII", data)
        if magic in (PCAP_NANO, PCAP_MICRO):
            break
    else:
        raise ValueError("not a pcap file")
    scale = 1e-9 if magic == PCAP_NANO else 1e-6
    if linktype == LINKTYPE_LINUX_SLL2:
        proto_at, link_len = 0, 20
    elif linktype == LINKTYPE_LINUX_SLL:
        proto_at, link_len = 14, 16
    else:
        raise ValueError(f"pcap link type {linktype}: expected Linux cooked capture (-i any)")
    off = 24
    while off + 16 <= len(data):
        sec, frac, caplen, _ = struct.unpack_from(order + "IIII", data, off)
        off += 16
        frame = data[off : off + caplen]
        off += caplen
        if len(frame) < link_len + 20 or struct.unpack_from("!H", frame, proto_at)[0] != ETH_P_IP:
            continue
        ip = frame[link_len:]
        ihl = (ip[0] & 0x0F) * 4
        total = struct.unpack_from("!H", ip, 2)[0]
        if ip[9] != socket.IPPROTO_TCP or len(ip) < ihl + 20:
            continue
        tcp = ip[ihl:total]
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload:
            yield Segment(sec + frac * scale, socket.inet_ntoa(ip[12:16]),
                          socket.inet_ntoa(ip[16:20]), bytes(payload))


def carries(segment: Segment, prefix: str) -> bool:
    """Whether the segment holds ``prefix`` (an IPv4 /32) as NLRI or withdrawn route."""
    net = ipaddress.IPv4Network(prefix)
    return bytes([net.prefixlen]) + net.network_address.packed in segment.payload


def split(
    segments: list[Segment], prefix: str, t_cmd: float, t_src: float, t_dst: float,
    hv1: str, hv2: str,
) -> tuple[float, float, float] | None:
    """(hv1, rr, hv2) of one event in ms, all times CLOCK_REALTIME seconds; None when
    the capture does not hold both of its UPDATEs."""
    arrive = next((s.t for s in segments
                   if s.src == hv1 and s.t >= t_cmd and carries(s, prefix)), None)
    if arrive is None:
        return None
    leave = next((s.t for s in segments
                  if s.dst == hv2 and s.t >= arrive and carries(s, prefix)), None)
    if leave is None or leave > t_dst:
        return None
    return 1000 * (arrive - t_src), 1000 * (leave - arrive), 1000 * (t_dst - leave)


class Capture:
    """``tcpdump`` of BGP in ``ns`` while the lab runs; :meth:`segments` stops it."""

    def __init__(self, lab: Lab, ns: Netns, name: str = "rr") -> None:
        self.path: Path = lab.workdir / f"{name}.pcap"
        self.proc = ns.popen(
            "tcpdump", "-i", "any", "-nn", "-U", "-s", "512", "--time-stamp-precision=nano",
            "-w", str(self.path), "tcp port 179", stderr=subprocess.PIPE,
        )
        lab.on_close(self._stop)
        assert self.proc.stderr is not None
        # "tcpdump: data link type ...", then "tcpdump: listening on any, ..." once ready
        # (read from the descriptor: a buffered readline() could hold a line select() misses)
        fd, said = self.proc.stderr.fileno(), b""
        deadline = time.monotonic() + START_TIMEOUT
        while b"listening on" not in said:
            left = deadline - time.monotonic()
            chunk = os.read(fd, 4096) if left > 0 and select.select([fd], [], [], left)[0] else b""
            if not chunk:  # exited, or silent for START_TIMEOUT
                self._stop()
                raise LabError(f"tcpdump did not start: {said.decode(errors='replace')!r}")
            said += chunk

    def _stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def segments(self) -> tuple[list[Segment], float]:
        """Everything captured, and CLOCK_REALTIME - CLOCK_MONOTONIC now (seconds)."""
        # tcpdump reads the kernel's capture ring a block at a time; a block that is not
        # full is handed over after the 1 s timeout, and a stop before that loses it
        time.sleep(RING_TIMEOUT + 0.5)
        self._stop()
        offset = time.time() - time.monotonic()
        return list(read_pcap(self.path.read_bytes())), offset
