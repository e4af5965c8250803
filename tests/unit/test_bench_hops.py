"""bench/hops.py: reading tcpdump's pcap and splitting a P1 event at the reflector."""

from __future__ import annotations

import socket
import struct

import pytest

from bench.hops import (
    LINKTYPE_LINUX_SLL,
    LINKTYPE_LINUX_SLL2,
    PCAP_MICRO,
    PCAP_NANO,
    Segment,
    carries,
    read_pcap,
    split,
)
from bench.scenarios import p1_latency

HV1, RR1, RR2, HV2 = "100.64.1.1", "100.64.1.254", "100.64.2.254", "100.64.2.1"
KEEPALIVE = b"\xff" * 16 + b"\x00\x13\x04"


def update(nlri: bytes = b"", withdrawn: bytes = b"") -> bytes:
    attrs = b"\x40\x01\x01\x00"  # ORIGIN IGP: enough for a segment's payload
    body = struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs
    body += nlri
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), 2) + body


def ipv4_tcp(src: str, dst: str, payload: bytes, proto: int = socket.IPPROTO_TCP) -> bytes:
    tcp = struct.pack("!HHIIBBHHH", 179, 40000, 1, 1, 5 << 4, 0x18, 64, 0, 0) + payload
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0, 64, proto, 0,
                       socket.inet_aton(src), socket.inet_aton(dst))
    return head + tcp


def pcap(frames: list[tuple[float, bytes]], linktype: int = LINKTYPE_LINUX_SLL2,
         nano: bool = True, order: str = "<") -> bytes:
    magic = PCAP_NANO if nano else PCAP_MICRO
    out = struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, 512, linktype)
    for t, packet in frames:
        if linktype == LINKTYPE_LINUX_SLL2:
            link = struct.pack("!HHIHBB8s", 0x0800, 0, 3, 1, 0, 6, b"")
        else:
            link = struct.pack("!HHH8sH", 0, 1, 6, b"", 0x0800)
        frame = link + packet
        sec = int(t)
        frac = round((t - sec) * (1e9 if nano else 1e6))
        out += struct.pack(order + "IIII", sec, frac, len(frame), len(frame)) + frame
    return out


def nlri(prefix: str) -> bytes:
    net, length = prefix.split("/")
    return bytes([int(length)]) + socket.inet_aton(net)


@pytest.mark.parametrize(
    ("linktype", "nano", "order"),
    [(LINKTYPE_LINUX_SLL2, True, "<"), (LINKTYPE_LINUX_SLL, False, "<"),
     (LINKTYPE_LINUX_SLL2, True, ">")],
)
def test_read_pcap_keeps_tcp_segments_with_payload(linktype: int, nano: bool, order: str) -> None:
    frames = [
        (100.000100, ipv4_tcp(HV1, RR1, update(nlri("10.30.0.1/32")))),
        (100.000200, ipv4_tcp(RR1, HV1, b"")),  # a bare ACK
        (100.000300, ipv4_tcp(HV1, RR1, b"x", proto=socket.IPPROTO_UDP)),
        (100.000400, ipv4_tcp(RR2, HV2, KEEPALIVE)),
    ]
    segments = list(read_pcap(pcap(frames, linktype, nano, order)))
    assert [(s.src, s.dst, len(s.payload)) for s in segments] == [
        (HV1, RR1, len(update(nlri("10.30.0.1/32")))), (RR2, HV2, 19)]
    assert segments[0].t == pytest.approx(100.0001, abs=2e-6)


def test_read_pcap_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="not a pcap"):
        list(read_pcap(b"\0" * 24))
    with pytest.raises(ValueError, match="link type 1"):
        list(read_pcap(pcap([], linktype=1)))
    assert list(read_pcap(b"")) == []


def test_carries_matches_the_exact_prefix_in_nlri_or_withdrawn() -> None:
    added = Segment(0, HV1, RR1, update(nlri("10.30.0.1/32")))
    gone = Segment(0, HV1, RR1, update(withdrawn=nlri("10.30.0.1/32")))
    assert carries(added, "10.30.0.1/32") and carries(gone, "10.30.0.1/32")
    assert not carries(added, "10.30.0.10/32")
    assert not carries(Segment(0, HV1, RR1, KEEPALIVE), "10.30.0.1/32")


def test_split_adds_up_to_the_event_and_needs_both_updates() -> None:
    p = "10.30.0.2/32"
    segments = [
        Segment(9.9990, HV1, RR1, update(nlri(p))),  # before the command: an older event
        Segment(10.0003, HV1, RR1, update(nlri("10.30.0.3/32"))),  # another prefix
        Segment(10.0004, HV1, RR1, update(nlri(p))),
        Segment(10.0005, RR1, HV1, update(nlri(p))),  # not towards hv2
        Segment(10.0006, RR2, HV2, update(nlri(p))),
    ]
    hops = split(segments, p, t_cmd=10.0, t_src=10.0001, t_dst=10.0010, hv1=HV1, hv2=HV2)
    assert hops == pytest.approx((0.3, 0.2, 0.4))
    assert sum(hops or ()) == pytest.approx(1000 * (10.0010 - 10.0001))
    # the speaker's UPDATE reached the reflector before hv1's listener read the event
    early = split(segments, p, t_cmd=10.0, t_src=10.0005, t_dst=10.0010, hv1=HV1, hv2=HV2)
    assert early is not None and early[0] == pytest.approx(-0.1)
    assert split(segments[:4], p, 10.0, 10.0001, 10.0010, HV1, HV2) is None
    assert split(segments, p, 10.0, 10.0001, 10.0005, HV1, HV2) is None  # left after t_dst


def test_p1_hop_rows_only_when_measured() -> None:
    def out(**data: list[float]) -> dict[str, object]:
        return {"runs": [{"case": "events", "kind": kind, "rep": 0, "data": data}
                         for kind in ("bird", "l3hostd")]}

    plain = out(route_add_ms=[0.3], route_del_ms=[0.3], tap_del_ms=[1.0])
    assert not any("hop" in row.metric for row in p1_latency.rows(plain))
    hops = out(route_add_ms=[0.3], hop_hv1_ms=[0.1], hop_rr_ms=[0.1], hop_hv2_ms=[0.1],
               tap_up_hop_hv1_ms=[0.5], tap_up_hop_rr_ms=[0.1], tap_up_hop_hv2_ms=[0.3])
    labels = {label: key for key, label in p1_latency.HOPS}
    rows = [row for row in p1_latency.rows(hops) if row.metric in labels]
    assert [row.metric for row in rows] == [label for _, label in p1_latency.HOPS]
    assert [labels[row.metric] for row in rows][:3] == ["hop_hv1_ms", "hop_rr_ms", "hop_hv2_ms"]
    assert rows[0].metric.startswith("route added/deleted, hop 1: hv1's event")
    assert all(row.met is None for row in rows)
    assert rows[3].missing == {"bird": "n/a"} and rows[0].missing == {}
