"""Pure tests of l3hostd.netlink.wire: pack -> parse round trips and byte layouts.

The expected bytes in the ``IPROUTE2_*`` constants were captured with
``strace -e sendmsg,sendto -xx ip -n NS ...`` (iproute2 6.1, kernel 6.18; veth0 had
ifindex 3, veth1 ifindex 2); only ``nlmsg_seq`` is replaced by the value the test uses.
"""

from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from l3hostd.model import RT_SCOPE_LINK, RT_TABLE_MAIN, RTPROT_L3HOSTD, HostRoute, Neighbour
from l3hostd.netlink import wire

SEQ = 0x6B05_1AA0


def hdr(length: int, mtype: int, flags: int, seq: int = SEQ) -> bytes:
    return struct.pack("=IHHII", length, mtype, flags, seq, 0)


def payload(msg: bytes) -> bytes:
    (length,) = struct.unpack_from("=I", msg)
    assert length == len(msg)
    return msg[16:]


# --- byte layouts compared with iproute2 ----------------------------------------------

# ip route add 10.1.2.3/32 dev veth0 scope link proto 44
IPROUTE2_ROUTE_ADD = hdr(44, 0x18, 0x605) + bytes.fromhex(
    "02200000fe2cfd01 00000000 08000100 0a010203 08000400 03000000".replace(" ", "")
)
# ip -6 route add 2001:db8::1/128 dev veth0 proto 44 table 1000
IPROUTE2_ROUTE6_ADD_TABLE = hdr(64, 0x18, 0x605) + bytes.fromhex(
    "0a800000002c0001 00000000 14000100 20010db8000000000000000000000001"
    " 08000f00 e8030000 08000400 03000000".replace(" ", "")
)
# ip route del 10.1.2.3/32 dev veth0 proto 44
IPROUTE2_ROUTE_DEL = hdr(44, 0x19, 0x005) + bytes.fromhex(
    "02200000fe2cff00 00000000 08000100 0a010203 08000400 03000000".replace(" ", "")
)
# ip route add 192.0.2.0/24 proto 45 nexthop via 10.0.0.1 dev veth0 onlink \
#                                    nexthop via 10.0.1.1 dev veth1 weight 2 onlink
IPROUTE2_ROUTE_MULTIPATH = hdr(72, 0x18, 0x605) + bytes.fromhex(
    "02180000fe2d0001 00000000 08000100 c0000200 24000900"
    " 10000400 03000000 08000500 0a000001"
    " 10000401 02000000 08000500 0a000101".replace(" ", "")
)
# ip neigh add 10.1.2.3 lladdr fa:16:3e:12:34:56 dev veth0 nud permanent
IPROUTE2_NEIGH_ADD = hdr(48, 0x1C, 0x605) + bytes.fromhex(
    "02000000 03000000 80000000 08000100 0a010203 0a000200 fa163e123456 0000".replace(" ", "")
)
# ip -6 addr show dev veth0
IPROUTE2_ADDR_DUMP = hdr(24, 0x16, 0x301) + bytes.fromhex("0a000000 03000000".replace(" ", ""))
# ip route show proto 44 table 1000
IPROUTE2_ROUTE_DUMP = hdr(36, 0x1A, 0x301) + bytes.fromhex(
    "02000000002c0000 00000000 08000f00 e8030000".replace(" ", "")
)
# ip neigh show dev veth0
IPROUTE2_NEIGH_DUMP = hdr(36, 0x1E, 0x301) + bytes.fromhex(
    "00000000 00000000 00000000 08000800 03000000".replace(" ", "")
)

EXCL = wire.NLM_F_CREATE | wire.NLM_F_EXCL


def test_route_add_matches_iproute2() -> None:
    msg = wire.route_add(
        IPv4Network("10.1.2.3/32"), protocol=RTPROT_L3HOSTD, oif=3, flags=EXCL, seq=SEQ
    )
    assert msg == IPROUTE2_ROUTE_ADD


def test_route6_add_with_big_table_matches_iproute2() -> None:
    msg = wire.route_add(
        IPv6Network("2001:db8::1/128"), protocol=44, oif=3, table=1000, flags=EXCL, seq=SEQ
    )
    assert msg == IPROUTE2_ROUTE6_ADD_TABLE


def test_route_del_matches_iproute2() -> None:
    msg = wire.route_del(IPv4Network("10.1.2.3/32"), protocol=44, oif=3, seq=SEQ)
    assert msg == IPROUTE2_ROUTE_DEL


def test_multipath_matches_iproute2() -> None:
    msg = wire.route_add(
        IPv4Network("192.0.2.0/24"),
        protocol=45,
        multipath=[
            wire.NextHop(IPv4Address("10.0.0.1"), 3, 1, wire.RTNH_F_ONLINK),
            wire.NextHop(IPv4Address("10.0.1.1"), 2, 2, wire.RTNH_F_ONLINK),
        ],
        flags=EXCL,
        seq=SEQ,
    )
    assert msg == IPROUTE2_ROUTE_MULTIPATH


def test_neigh_add_matches_iproute2() -> None:
    msg = wire.neigh_add(3, IPv4Address("10.1.2.3"), "fa:16:3e:12:34:56", flags=EXCL, seq=SEQ)
    assert msg == IPROUTE2_NEIGH_ADD


def test_route_dump_request_matches_iproute2() -> None:
    msg = wire.route_dump_request(wire.AF_INET, protocol=44, table=1000, seq=SEQ)
    assert msg == IPROUTE2_ROUTE_DUMP


def test_neigh_dump_request_matches_iproute2() -> None:
    assert wire.neigh_dump_request(wire.AF_UNSPEC, ifindex=3, seq=SEQ) == IPROUTE2_NEIGH_DUMP


def test_addr_dump_request_matches_iproute2() -> None:
    assert wire.addr_dump_request(wire.AF_INET6, ifindex=3, seq=SEQ) == IPROUTE2_ADDR_DUMP
    assert wire.addr_dump_request(wire.AF_UNSPEC, seq=1) == hdr(24, 22, 0x301, 1) + bytes(8)


def test_route_dump_request_layouts() -> None:
    # small table: in the header and in RTA_TABLE; no table: neither; no NLM_F_ACK.
    msg = wire.route_dump_request(wire.AF_INET6, protocol=45, table=RT_TABLE_MAIN, seq=1)
    assert msg == hdr(36, 26, 0x301, 1) + bytes.fromhex(
        "0a000000fe2d0000 00000000 08000f00 fe000000"
    )
    msg = wire.route_dump_request(wire.AF_INET, protocol=44, seq=2)
    assert msg == hdr(28, 26, 0x301, 2) + bytes.fromhex("02000000002c000000000000")


def test_addr_add_layout() -> None:
    # ip -6 addr add fe80::1/64 dev veth0 nodad, plus IFA_FLAGS and scope link
    msg = wire.addr_add(3, IPv6Address("fe80::1"), 64, seq=SEQ)
    fe80_1 = "fe800000000000000000000000000001"
    assert msg == hdr(72, 20, 0x505) + bytes.fromhex(
        f"0a4002fd 03000000 14000200{fe80_1} 14000100{fe80_1} 08000800 02000000".replace(" ", "")
    )
    rec = wire.parse_addr(payload(msg))
    assert rec == wire.AddrRecord(
        wire.AF_INET6, 3, 64, wire.IFA_F_NODAD, RT_SCOPE_LINK, IPv6Address("fe80::1"),
        IPv6Address("fe80::1"),
    )  # fmt: skip
    deleted = wire.parse_addr(payload(wire.addr_del(3, IPv4Address("192.0.2.1"), 24)))
    assert (deleted.family, deleted.prefixlen, deleted.local) == (2, 24, IPv4Address("192.0.2.1"))


def test_header_flags_and_seq() -> None:
    msg = wire.route_add(IPv4Network("10.0.0.1/32"), protocol=44, oif=1, seq=77)
    length, mtype, flags, seq, pid = wire.NLMSGHDR.unpack_from(msg)
    assert (length, mtype, seq, pid) == (len(msg), wire.RTM_NEWROUTE, 77, 0)
    assert flags == wire.NLM_F_REQUEST | wire.NLM_F_ACK | wire.NLM_F_CREATE | wire.NLM_F_REPLACE
    assert wire.NLMSGHDR.unpack_from(wire.set_seq(msg, 5))[3] == 5
    assert all(len(m) % 4 == 0 for m in (IPROUTE2_NEIGH_ADD, msg))


# --- round trips ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dst", "table"),
    [
        ("10.1.2.3/32", RT_TABLE_MAIN),
        ("10.1.2.3/32", 1000),
        ("0.0.0.0/0", 100),
        ("2001:db8::10/128", RT_TABLE_MAIN),
        ("2001:db8::10/128", 70000),
        ("::/0", RT_TABLE_MAIN),
    ],
)
def test_route_round_trip(dst: str, table: int) -> None:
    net = ip_network(dst)
    msg = wire.route_add(net, protocol=44, oif=7, table=table, priority=1024, seq=3)
    (rec,) = [wire.parse_route(m.payload) for m in wire.split_messages(msg)]
    assert rec.dst == net and type(rec.dst) is type(net)
    assert rec.table == table  # RTA_TABLE wins over rtm_table (0 for tables >= 256)
    assert (rec.protocol, rec.oif, rec.priority, rec.type) == (44, 7, 1024, wire.RTN_UNICAST)
    assert rec.scope == (RT_SCOPE_LINK if net.version == 4 else 0)
    assert rec.gateway is None and rec.multipath == ()
    assert rec.family == (wire.AF_INET if net.version == 4 else wire.AF_INET6)
    assert rec.key.table == table and rec.key.dst == net


def test_route_with_gateway_and_via() -> None:
    gw = IPv4Address("10.0.0.1")
    rec = wire.parse_route(
        payload(wire.route_add(IPv4Network("192.0.2.0/24"), protocol=45, gateway=gw))
    )
    assert rec.gateway == IPv4Address("10.0.0.1") and rec.scope == 0 and rec.oif is None
    # IPv4 route via an IPv6 next hop: RTA_VIA
    msg = wire.route_add(
        IPv4Network("192.0.2.0/24"), protocol=45, gateway=IPv6Address("fe80::1"), oif=4
    )
    assert struct.pack("=HH", 22, wire.RTA_VIA) + struct.pack("=H", 10) in msg
    rec = wire.parse_route(payload(msg))
    assert rec.gateway == IPv6Address("fe80::1") and rec.oif == 4


@pytest.mark.parametrize("table", [RT_TABLE_MAIN, 1000])
def test_multipath_round_trip_v4(table: int) -> None:
    hops: list[wire.NextHopLike] = [
        (IPv4Address("10.0.0.1"), 3),
        wire.NextHop(IPv4Address("10.0.1.1"), 4, weight=5),
    ]
    msg = wire.route_add(IPv4Network("198.51.100.0/24"), protocol=45, multipath=hops, table=table)
    rec = wire.parse_route(payload(msg))
    assert rec.multipath == (
        wire.NextHop(IPv4Address("10.0.0.1"), 3, 1, 0),
        wire.NextHop(IPv4Address("10.0.1.1"), 4, 5, 0),
    )
    assert rec.table == table and rec.gateway is None and rec.oif is None
    assert rec.as_host_route() is None


def test_multipath_round_trip_v6() -> None:
    hops = [(IPv6Address("fe80::1"), 3), (IPv6Address("fe80::2"), 4)]
    rec = wire.parse_route(
        payload(wire.route_add(IPv6Network("2001:db8:1::/48"), protocol=45, multipath=hops))
    )
    assert [(h.gateway, h.ifindex, h.weight) for h in rec.multipath] == [
        (IPv6Address("fe80::1"), 3, 1),
        (IPv6Address("fe80::2"), 4, 1),
    ]


def test_route_brief_has_destination_and_packed_gateways() -> None:
    one = payload(wire.route_add(IPv4Network("192.0.2.7/32"), protocol=45,
                                 gateway=IPv4Address("10.0.0.1")))
    assert wire.parse_route_brief(one) == (
        wire.AF_INET, int(IPv4Address("192.0.2.7")), 32, (IPv4Address("10.0.0.1").packed,))
    via = payload(wire.route_add(IPv4Network("192.0.2.0/24"), protocol=45,
                                 gateway=IPv6Address("fe80::1"), oif=4))
    assert wire.parse_route_brief(via)[3] == (IPv6Address("fe80::1").packed,)
    hops = [(IPv6Address("fe80::1"), 3), (IPv6Address("fe80::2"), 4)]
    multi = payload(wire.route_add(IPv6Network("2001:db8:1::/48"), protocol=45, multipath=hops))
    assert wire.parse_route_brief(multi) == (
        wire.AF_INET6, int(IPv6Address("2001:db8:1::")), 48,
        (IPv6Address("fe80::1").packed, IPv6Address("fe80::2").packed))
    bare = payload(wire.route_add(IPv4Network("10.1.2.3/32"), protocol=44, oif=7))
    assert wire.parse_route_brief(bare) == (wire.AF_INET, int(IPv4Address("10.1.2.3")), 32, ())


def test_multipath_weight_is_validated() -> None:
    with pytest.raises(ValueError, match="weight"):
        wire.route_add(
            IPv4Network("10.0.0.0/8"),
            protocol=45,
            multipath=[wire.NextHop(IPv4Address("10.0.0.1"), 1, weight=0)],
        )


def test_host_route_helpers() -> None:
    route = HostRoute(IPv4Network("10.1.2.3/32"), ifindex=3)
    assert wire.host_route_add(route, flags=EXCL, seq=SEQ) == IPROUTE2_ROUTE_ADD
    assert wire.host_route_del(route, seq=SEQ) == IPROUTE2_ROUTE_DEL
    rec = wire.parse_route(payload(wire.host_route_add(route)))
    assert rec.as_host_route() == route


def test_kernel_dump_message_table_compat() -> None:
    # the kernel reports tables >= 256 as rtm_table=RT_TABLE_COMPAT plus RTA_TABLE
    body = struct.pack("=BBBBBBBBI", 2, 32, 0, 0, 252, 44, 253, 1, 0)
    body += struct.pack("=HHI", 8, wire.RTA_TABLE, 4000)
    body += struct.pack("=HH4s", 8, wire.RTA_DST, b"\x0a\0\0\x01")
    body += struct.pack("=HHI", 8, wire.RTA_OIF, 9) + struct.pack("=HH", 4, 0x8000 | 99)
    rec = wire.parse_route(body)
    assert (rec.table, rec.dst, rec.oif) == (4000, IPv4Network("10.0.0.1/32"), 9)


@pytest.mark.parametrize(
    ("ip", "mac"), [("10.1.2.3", "fa:16:3e:12:34:56"), ("2001:db8::10", "02:00:00:00:00:0a")]
)
def test_neigh_round_trip(ip: str, mac: str) -> None:
    addr = IPv4Address(ip) if "." in ip else IPv6Address(ip)
    rec = wire.parse_neigh(payload(wire.neigh_add(5, addr, mac.upper())))
    assert rec.family == (2 if addr.version == 4 else 10)
    assert (rec.ifindex, rec.ip, rec.lladdr, rec.state) == (5, addr, mac, wire.NUD_PERMANENT)
    assert rec.as_neighbour() == Neighbour(5, addr, mac)
    assert rec.key is not None and rec.key.ifindex == 5
    deleted = wire.parse_neigh(payload(wire.neigh_del(5, addr)))
    assert (deleted.ip, deleted.lladdr, deleted.state) == (addr, None, 0)


def test_bad_mac_is_rejected() -> None:
    with pytest.raises(ValueError):
        wire.neigh_add(1, IPv4Address("10.0.0.1"), "fa:16:3e:12:34")


# --- replies ---------------------------------------------------------------------------


def test_split_messages_and_iter_headers() -> None:
    msgs = [
        wire.route_add(IPv4Network("10.0.0.1/32"), protocol=44, oif=1, seq=1),
        wire.neigh_add(1, IPv4Address("10.0.0.1"), "02:00:00:00:00:01", seq=2),
        wire.route_del(IPv6Network("2001:db8::/64"), protocol=44, seq=3),
    ]
    buf = b"".join(msgs)
    split = wire.split_messages(buf)
    assert [(m.type, m.seq, m.pid) for m in split] == [(24, 1, 0), (28, 2, 0), (25, 3, 0)]
    assert [m.payload for m in split] == [m[16:] for m in msgs]
    heads = list(wire.iter_headers(bytearray(buf)))
    assert [(h[0], h[2]) for h in heads] == [(24, 1), (28, 2), (25, 3)]
    assert heads[1][3] == len(msgs[0]) + 16 and heads[1][4] == len(msgs[0]) + len(msgs[1])
    with pytest.raises(ValueError, match="malformed"):
        wire.split_messages(buf[:-4])
    with pytest.raises(ValueError, match="malformed"):
        list(wire.iter_headers(hdr(8, 2, 0) + b"\0" * 8))


def test_parse_error_plain_capped_and_with_extack() -> None:
    ack = struct.pack("=i", 0) + hdr(44, 24, 0x605, 9)
    assert wire.parse_error(ack, msg_flags=wire.NLM_F_CAPPED) == (0, None)
    text = b"Nexthop device not found\0"
    tlv = struct.pack("=HH", 4 + len(text), wire.NLMSGERR_ATTR_MSG) + text
    tlv += b"\0" * (-len(tlv) % 4)
    err = struct.pack("=i", -19) + hdr(44, 24, 0x605, 9) + tlv
    flags = wire.NLM_F_CAPPED | wire.NLM_F_ACK_TLVS
    assert wire.parse_error(err, msg_flags=flags) == (19, "Nexthop device not found")
    # not capped: the whole request is echoed before the TLVs
    full = struct.pack("=i", -17) + IPROUTE2_ROUTE_ADD + tlv
    assert wire.parse_error(full, msg_flags=wire.NLM_F_ACK_TLVS) == (17, "Nexthop device not found")
    assert wire.parse_error(err) == (19, None)


def test_parse_done() -> None:
    assert wire.parse_done(struct.pack("=i", 0)) == (0, None)
    assert wire.parse_done(b"") == (0, None)
    text = b"ipv4: FIB table does not exist\0"
    tlv = struct.pack("=HH", 4 + len(text), wire.NLMSGERR_ATTR_MSG) + text
    done = struct.pack("=i", -2) + tlv
    assert wire.parse_done(done, msg_flags=wire.NLM_F_ACK_TLVS) == (
        2,
        "ipv4: FIB table does not exist",
    )


# --- the fast network construction is indistinguishable from ipaddress's ---------------


@given(st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_fast_ipv4_networks(value: int, plen: int) -> None:
    fast = wire._net4(value, plen)
    slow = IPv4Network((value, plen), strict=False)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert fast.broadcast_address == slow.broadcast_address and fast.netmask == slow.netmask
    assert set(vars(fast)) == set(vars(slow))
    if plen >= 30:
        assert list(fast.hosts()) == list(slow.hosts())
    assert fast.supernet() == slow.supernet() if plen else True


@given(st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_fast_ipv6_networks(value: int, plen: int) -> None:
    fast = wire._net6(value, plen)
    slow = IPv6Network((value, plen), strict=False)
    assert fast == slow and hash(fast) == hash(slow) and repr(fast) == repr(slow)
    assert set(vars(fast)) == set(vars(slow))
    if plen >= 126:
        assert list(fast.hosts()) == list(slow.hosts())


def test_fast_networks_are_in_use() -> None:
    from l3hostd import fastnet

    assert wire._net4 is fastnet._net4_fast and wire._net6 is fastnet._net6_fast


def _link_message(ifindex: int, flags: int, attrs: list[tuple[int, bytes]]) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, ifindex, flags, 0)
    for atype, value in attrs:
        body += struct.pack("=HH", 4 + len(value), atype) + value
        body += b"\0" * (-len(value) % 4)
    return body


def test_parse_link_reads_the_header_and_the_name_wherever_it_is() -> None:
    name = (wire.IFLA_IFNAME, b"tapabc\0")
    mtu, stats = (4, struct.pack("=I", 1500)), (23, bytes(200))
    first = wire.parse_link(_link_message(7, 0x10003, [name, mtu, stats]))
    assert first == wire.LinkRecord(7, "tapabc", 0x10003)
    later = _link_message(7, 0x10003, [mtu, stats, name])  # not where the kernel puts it
    assert wire.parse_link(later) == first
    assert wire.parse_link(_link_message(9, 0, [mtu])) == wire.LinkRecord(9, "", 0)
    truncated = _link_message(9, 0, [mtu]) + struct.pack("=HH", 2, 3)  # a length < 4
    assert wire.parse_link(truncated) == wire.LinkRecord(9, "", 0)
