"""Benchmark the BGP codec (l3hostd.bgp.codec): UPDATE decode and encode rates.

Decode: an UPDATE stream like a route reflector sends after the session comes up: N host
routes (/32, or /128 with ``--ipv6``) from ``--next-hops`` hypervisors, as many prefixes per
UPDATE as fit, every UPDATE carrying ORIGIN, empty AS_PATH, NEXT_HOP (or MP_REACH_NLRI,
with a global and a link-local next hop as BIRD sends them), LOCAL_PREF, COMMUNITIES,
ORIGINATOR_ID and CLUSTER_LIST, the next hop changing from one UPDATE to the next
(reflected routes are grouped per originating hypervisor). Built by hand here, not by our
encoder, so that what is measured is the decoding of a reflector's UPDATEs.

Encode: N announcements as the export side makes them (next-hop self, LOCAL_PREF from a
handful of metrics, one community), in one ``encode_updates`` call.

    .venv/bin/python -m bench.codec [--routes 100000] [--ipv6] [--add-path] [--rounds 5]

No root needed. Prints prefixes/s (best of the rounds) for both directions.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import struct
import time
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address

from l3hostd.bgp.codec import Codec
from l3hostd.bgp.messages import (
    IPV4_UNICAST,
    IPV6_UNICAST,
    Announcement,
    Capabilities,
    Open,
)
from l3hostd.model import IPAddress, IPNetwork

ASN = 65000
MAX = 4096


def attribute(flags: int, code: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | 0x10, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def reflector_stream(routes: int, next_hops: int, ipv6: bool, add_path: bool) -> list[bytes]:
    """UPDATE bodies (after the 19-byte header) carrying ``routes`` host routes."""
    common = (
        attribute(0x40, 1, b"\x00")  # ORIGIN IGP
        + attribute(0x40, 2, b"")  # AS_PATH, empty (iBGP)
        + attribute(0x40, 5, struct.pack("!L", 2**31 - 1 - 1024))  # LOCAL_PREF
        + attribute(0xC0, 8, struct.pack("!LL", (ASN << 16) | 100, (ASN << 16) | 200))
        + attribute(0x80, 10, bytes([10, 255, 0, 1]))  # CLUSTER_LIST
    )
    path_id = b"\x00\x00\x00\x01" if add_path else b""
    per_hop = -(-routes // next_hops)
    bodies: list[bytes] = []
    n = 0
    for hop in range(next_hops):
        originator = attribute(0x80, 9, struct.pack("!L", 0x0A640000 + hop + 1))
        last = min(routes, n + per_hop)
        if ipv6:
            nh = IPv6Address(0x20010DB8FFFF << 80 | hop + 1).packed
            nh += IPv6Address(0xFE80 << 112 | hop + 1).packed  # BIRD: global + link-local
            mp_head = struct.pack("!HBB", 2, 1, len(nh)) + nh + b"\x00"
            budget = MAX - 19 - 4 - 4 - len(mp_head) - len(common) - len(originator)
        else:
            next_hop = attribute(0x40, 3, struct.pack("!L", 0x0A000000 + hop + 1))
            attrs = common + next_hop + originator
            budget = MAX - 19 - 4 - len(attrs)
        while n < last:
            count = min(last - n, budget // (len(path_id) + (17 if ipv6 else 5)))
            if ipv6:
                base = 0x20010DB8 << 96
                nlri = b"".join(
                    path_id + b"\x80" + IPv6Address(base + i).packed for i in range(n, n + count)
                )
                mp = struct.pack("!BBH", 0x90, 14, len(mp_head) + len(nlri)) + mp_head + nlri
                attrs = mp + common + originator
                bodies.append(b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs)
            else:
                nlri = b"".join(
                    path_id + b"\x20" + struct.pack("!L", 0x64000000 + i)
                    for i in range(n, n + count)
                )
                bodies.append(b"\x00\x00" + struct.pack("!H", len(attrs)) + attrs + nlri)
            n += count
    return bodies


def announcements(routes: int, ipv6: bool) -> list[Announcement]:
    next_hop: IPAddress = ip_address("2001:db8:ffff::1" if ipv6 else "10.0.0.1")
    out = []
    for i in range(routes):
        prefix: IPNetwork = (
            IPv6Network(((0x20010DB8 << 96) + i, 128))
            if ipv6
            else IPv4Network((0x64000000 + i, 32))
        )
        metric = (0, 1024, 2048)[i % 3]
        out.append(Announcement(prefix, next_hop, 2**31 - 1 - metric, ((ASN << 16) | 100,)))
    return out


def codecs(add_path: bool) -> tuple[Codec, Codec]:
    """A receiving codec (as if we were negotiated with a reflector) and a sending one."""
    mode = 3 if add_path else 0
    caps = Capabilities(
        families=frozenset({IPV4_UNICAST, IPV6_UNICAST}),
        asn4=ASN,
        add_path=((IPV4_UNICAST, mode), (IPV6_UNICAST, mode)) if add_path else (),
    )
    ours = Open(ASN, 90, IPv4Address("10.0.0.1"), caps)
    theirs = Open(ASN, 90, IPv4Address("10.255.0.1"), caps)
    receiver, sender = Codec(ASN, ASN), Codec(ASN, ASN)
    receiver.negotiate(ours, theirs, 30)
    sender.negotiate(theirs, ours, 30)
    return receiver, sender


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--next-hops", type=int, default=200, help="originating hypervisors")
    parser.add_argument("--ipv6", action="store_true")
    parser.add_argument("--add-path", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    receiver, sender = codecs(args.add_path)
    stream = reflector_stream(args.routes, args.next_hops, args.ipv6, args.add_path)
    decode_times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        count = 0
        for body in stream:
            count += len(receiver.decode_update(body).all_announced())
        decode_times.append(time.perf_counter() - start)
        assert count == args.routes, count
    # the same, keeping what was decoded (as a RIB does): the cyclic GC then walks the
    # growing heap (each /32 IPv4Network is a reference cycle through its bound `hosts`)
    kept_times = []
    for _ in range(args.rounds):
        gc.collect()
        start = time.perf_counter()
        kept = [receiver.decode_update(body) for body in stream]
        kept_times.append(time.perf_counter() - start)
        del kept

    anns = announcements(args.routes, args.ipv6)
    encode_times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        messages = sender.encode_updates(anns, ())
        encode_times.append(time.perf_counter() - start)
    # what was encoded decodes to what was announced
    assert sum(len(receiver.decode_update(m[19:]).all_announced()) for m in messages) == args.routes

    family = "IPv6 /128" if args.ipv6 else "IPv4 /32"
    mode = ", ADD-PATH" if args.add_path else ""
    print(f"{args.routes} {family}{mode}, best of {args.rounds} rounds (median in brackets)")
    print(
        f"decode: {len(stream)} UPDATEs, {args.routes / min(decode_times):,.0f} prefixes/s"
        f" ({args.routes / statistics.median(decode_times):,.0f});"
        f" {min(decode_times) * 1e3:.0f} ms for all"
    )
    print(
        f"decode, results kept: {args.routes / min(kept_times):,.0f} prefixes/s"
        f" ({args.routes / statistics.median(kept_times):,.0f})"
    )
    print(
        f"encode: {len(messages)} UPDATEs, {args.routes / min(encode_times):,.0f} prefixes/s"
        f" ({args.routes / statistics.median(encode_times):,.0f});"
        f" {min(encode_times) * 1e3:.0f} ms in one call"
    )


if __name__ == "__main__":
    main()
