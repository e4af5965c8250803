"""BGP codec (l3hostd/bgp/codec.py, ExaBGP behind it): round trips, RFC 4271/7606 error
handling on a corpus of malformed UPDATEs, fuzzing, and process hygiene of ExaBGP."""

from __future__ import annotations

import contextlib
import gc
import struct
import subprocess
import sys
import textwrap
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from l3hostd.bgp import codec as codec_module
from l3hostd.bgp.codec import Codec
from l3hostd.bgp.messages import (
    IPV4_UNICAST,
    IPV6_UNICAST,
    Announcement,
    BgpError,
    Capabilities,
    GracefulRestart,
    Notification,
    Open,
    PathAttributes,
    RouteRefresh,
    Update,
)
from l3hostd.model import IPAddress, IPNetwork

ROOT = Path(__file__).resolve().parents[2]
ASN = 65000
BOTH = frozenset({IPV4_UNICAST, IPV6_UNICAST})
MARKER = b"\xff" * 16


# ---- helpers -----------------------------------------------------------------------------


def caps(add_path: int = 0, **kwargs: Any) -> Capabilities:
    return Capabilities(
        families=kwargs.pop("families", BOTH),
        asn4=kwargs.pop("asn4", ASN),
        add_path=((IPV4_UNICAST, add_path), (IPV6_UNICAST, add_path)) if add_path else (),
        **kwargs,
    )


def pair(add_path: bool = False, local: int = ASN, peer: int = ASN) -> tuple[Codec, Codec]:
    """(sender, receiver): two negotiated codecs facing each other."""
    mode = 3 if add_path else 0
    a_open = Open(local, 90, IPv4Address("10.0.0.1"), caps(mode, asn4=local))
    b_open = Open(peer, 90, IPv4Address("10.0.0.2"), caps(mode, asn4=peer))
    a, b = Codec(local, peer), Codec(peer, local)
    a.negotiate(a_open, b_open, 30)
    b.negotiate(b_open, a_open, 30)
    return a, b


def receiver(add_path: bool = False, asn4: bool = True) -> Codec:
    mode = 3 if add_path else 0
    ours = Open(ASN, 90, IPv4Address("10.0.0.1"), caps(mode, asn4=ASN if asn4 else None))
    theirs = Open(ASN, 90, IPv4Address("10.255.0.1"), caps(mode, asn4=ASN if asn4 else None))
    c = Codec(ASN, ASN)
    c.negotiate(ours, theirs, 30)
    return c


def body(message: bytes) -> bytes:
    assert message[:16] == MARKER
    length, kind = struct.unpack_from("!HB", message, 16)
    assert length == len(message) <= 4096
    assert kind == 2
    return message[19:]


def attr(flags: int, code: int, value: bytes) -> bytes:
    if flags & 0x10 or len(value) > 255:
        return struct.pack("!BBH", flags | 0x10, code, len(value)) + value
    return struct.pack("!BBB", flags, code, len(value)) + value


def update(attrs: bytes, nlri: bytes = b"", withdrawn: bytes = b"") -> bytes:
    return (
        struct.pack("!H", len(withdrawn)) + withdrawn + struct.pack("!H", len(attrs)) + attrs + nlri
    )


ORIGIN_IGP = attr(0x40, 1, b"\x00")
AS_PATH_EMPTY = attr(0x40, 2, b"")
NEXT_HOP = attr(0x40, 3, bytes([192, 0, 2, 1]))
LOCAL_PREF = attr(0x40, 5, struct.pack("!L", 100))
NLRI = b"\x20\x0a\x00\x00\x01" + b"\x18\x0a\x00\x01"  # 10.0.0.1/32, 10.0.1.0/24
NLRI_PREFIXES = {(ip_network("10.0.0.1/32"), 0), (ip_network("10.0.1.0/24"), 0)}
GOOD = ORIGIN_IGP + AS_PATH_EMPTY + NEXT_HOP + LOCAL_PREF


def mp_reach6(next_hop: bytes, nlri: bytes, flags: int = 0x90) -> bytes:
    value = struct.pack("!HBB", 2, 1, len(next_hop)) + next_hop + b"\x00" + nlri
    return attr(flags, 14, value)


def mp_unreach(afi: int, safi: int, nlri: bytes, flags: int = 0x90) -> bytes:
    return attr(flags, 15, struct.pack("!HB", afi, safi) + nlri)


V6_NLRI = (
    b"\x80" + IPv6Address("2001:db8::1").packed + b"\x40" + IPv6Address("2001:db8:1::").packed[:8]
)
V6_PREFIXES = {(ip_network("2001:db8::1/128"), 0), (ip_network("2001:db8:1::/64"), 0)}
V6_GLOBAL = IPv6Address("2001:db8:ffff::1").packed
V6_LINK_LOCAL = IPv6Address("fe80::1").packed


def announced(updates: list[Update]) -> list[tuple[IPNetwork, int, IPAddress, PathAttributes]]:
    return [(r.prefix, r.path_id, r.next_hop, r.attributes)
            for u in updates for r in u.all_announced()]


# ---- hypothesis strategies ---------------------------------------------------------------

u32 = st.integers(0, 2**32 - 1)
v4_prefixes = st.builds(
    lambda a, n: IPv4Network((a, n), strict=False), st.integers(0, 2**32 - 1), st.integers(0, 32)
)
v6_prefixes = st.builds(
    lambda a, n: IPv6Network((a, n), strict=False), st.integers(0, 2**128 - 1), st.integers(0, 128)
)
v4_hops = st.integers(0x01000000, 0xDFFFFFFF).map(IPv4Address).filter(lambda a: not a.is_loopback)
v6_hops = st.integers(0x20000000 << 96, (0x3FFFFFFF << 96) - 1).map(IPv6Address)
AttributeSet = tuple[int, int | None, tuple[int, ...], tuple[tuple[int, int, int], ...]]
attribute_sets: st.SearchStrategy[AttributeSet] = st.tuples(
    u32,  # LOCAL_PREF
    st.none() | u32,  # MED
    st.lists(u32, max_size=6).map(tuple),  # communities, duplicates included
    st.lists(st.tuples(u32, u32, u32), max_size=4).map(tuple),  # large communities
)


@st.composite
def announcements(draw: st.DrawFn) -> list[Announcement]:
    """Unique prefixes of both families in a few attribute groups and next hops."""
    groups = draw(st.lists(attribute_sets, min_size=1, max_size=4))
    hops: dict[int, list[IPAddress]] = {
        4: list(draw(st.lists(v4_hops, min_size=1, max_size=3))),
        6: list(draw(st.lists(v6_hops, min_size=1, max_size=3))),
    }
    prefixes = draw(st.sets(v4_prefixes, max_size=150)) | draw(st.sets(v6_prefixes, max_size=80))
    out = []
    for prefix in prefixes:
        local_pref, med, communities, large = draw(st.sampled_from(groups))
        hop = draw(st.sampled_from(hops[prefix.version]))
        out.append(Announcement(prefix, hop, local_pref, communities, large, med))
    return out


def expected(a: Announcement) -> PathAttributes:
    return PathAttributes(
        origin=0,
        as_path=(),
        local_pref=a.local_pref,
        med=a.med,
        communities=tuple(sorted(set(a.communities))),
        large_communities=tuple(sorted(set(a.large_communities))),
    )


# ---- UPDATE round trips ------------------------------------------------------------------


@pytest.mark.parametrize("add_path", [False, True])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(anns=announcements(), data=st.data())
def test_announcements_round_trip(add_path: bool, anns: list[Announcement], data: Any) -> None:
    sender, receiver_ = pair(add_path)
    messages = sender.encode_updates(anns, ())
    decoded = [receiver_.decode_update(body(m)) for m in messages]
    path_id = 1 if add_path else 0
    got = announced(decoded)
    assert sorted(got, key=repr) == sorted(
        ((a.prefix, path_id, a.next_hop, expected(a)) for a in anns), key=repr
    )
    assert all(
        not u.withdrawn and not u.treat_as_withdraw and u.end_of_rib is None for u in decoded
    )
    # slicing the work (what the caller does to keep its loop responsive) changes nothing
    cut = data.draw(st.integers(0, len(anns)))
    sliced = sender.encode_updates(anns[:cut], ()) + sender.encode_updates(anns[cut:], ())
    again = announced([receiver_.decode_update(body(m)) for m in sliced])
    assert sorted(again, key=repr) == sorted(got, key=repr)


@pytest.mark.parametrize("add_path", [False, True])
@settings(max_examples=60, deadline=None)
@given(
    prefixes=st.sets(v4_prefixes, max_size=900) | st.sets(v6_prefixes, max_size=300),
)
def test_withdrawals_round_trip(add_path: bool, prefixes: set[IPNetwork]) -> None:
    sender, receiver_ = pair(add_path)
    messages = sender.encode_updates((), sorted(prefixes, key=repr))
    decoded = [receiver_.decode_update(body(m)) for m in messages]
    path_id = 1 if add_path else 0
    got = [w for u in decoded for w in u.withdrawn]
    assert sorted(got, key=repr) == sorted(((p, path_id) for p in prefixes), key=repr)
    assert not announced(decoded)


def test_withdrawals_come_before_announcements() -> None:
    sender, receiver_ = pair()
    ann = Announcement(ip_network("10.1.0.0/16"), ip_address("192.0.2.1"))
    out = [receiver_.decode_update(body(m)) for m in sender.encode_updates([ann], [ann.prefix])]
    assert [bool(u.withdrawn) for u in out] == [True, False]


def test_many_prefixes_share_a_message() -> None:
    sender, receiver_ = pair()
    anns = [
        Announcement(IPv4Network((0x0A000000 + i, 32)), ip_address("192.0.2.1"), 200, (1, 2))
        for i in range(2000)
    ] + [
        Announcement(IPv6Network(((0x20010DB8 << 96) + i, 128)), ip_address("2001:db8::ff"))
        for i in range(1000)
    ]
    messages = sender.encode_updates(anns, [a.prefix for a in anns])
    # 5 bytes per /32, 17 per /128: 4096-byte messages hold ~800 and ~235 of them
    assert len(messages) == 3 + 5 + 3 + 5
    assert all(len(m) <= 4096 for m in messages)
    assert max(len(m) for m in messages) > 4000
    decoded = [receiver_.decode_update(body(m)) for m in messages]
    assert len(announced(decoded)) == 3000
    assert sum(len(u.withdrawn) for u in decoded) == 3000


def test_end_of_rib_round_trips() -> None:
    sender, receiver_ = pair()
    for family in (IPV4_UNICAST, IPV6_UNICAST):
        message = sender.encode_end_of_rib(family)
        assert receiver_.decode_update(body(message)) == Update(end_of_rib=family)
    assert sender.encode_end_of_rib(IPV4_UNICAST) == MARKER + b"\x00\x17\x02" + b"\x00" * 4


def test_end_of_rib_encodings_and_lookalikes() -> None:
    r = receiver()
    assert r.decode_update(b"\x00\x00\x00\x00") == Update(end_of_rib=IPV4_UNICAST)
    for flags in (0x80, 0x90):  # both length encodings of an empty MP_UNREACH_NLRI
        assert r.decode_update(update(mp_unreach(2, 1, b"", flags))).end_of_rib == IPV6_UNICAST
    # an UPDATE whose only attribute is an empty AS_PATH: ExaBGP calls it an IPv4 EoR
    assert r.decode_update(update(AS_PATH_EMPTY)) == Update()
    assert r.decode_update(update(GOOD)) == Update()  # attributes, no NLRI: nothing


def test_path_attributes_are_shared_between_routes_and_messages() -> None:
    r = receiver()
    first = r.decode_update(update(GOOD, NLRI))
    second = r.decode_update(update(GOOD, b"\x20\x0a\x00\x00\x09"))
    attrs = {id(route.attributes) for u in (first, second) for route in u.all_announced()}
    assert len(attrs) == 1


def test_reflected_attributes_decode() -> None:
    r = receiver(asn4=True)
    as_path = (
        b"\x02\x02" + struct.pack("!LL", 65001, 4200000000)  # AS_SEQUENCE
        + b"\x01\x02" + struct.pack("!LL", 65003, 65004)  # AS_SET
        + b"\x03\x01" + struct.pack("!L", 65100)  # AS_CONFED_SEQUENCE: left out
    )  # fmt: skip
    attrs = (
        attr(0x40, 1, b"\x02")
        + attr(0x40, 2, as_path)
        + NEXT_HOP
        + attr(0x80, 4, struct.pack("!L", 7))
        + attr(0x40, 5, struct.pack("!L", 2**31 - 1))
        + attr(0xC0, 8, struct.pack("!LLL", 5, 3, 5))
        + attr(0x80, 9, bytes([10, 1, 1, 1]))
        + attr(0x80, 10, bytes([10, 255, 0, 1, 10, 255, 0, 2]))
        + attr(0xC0, 32, struct.pack("!LLLLLL", 9, 9, 9, 1, 2, 3))
        + attr(0xC0, 99, b"unknown transitive")
    )
    u = r.decode_update(update(attrs, NLRI))
    assert {(x.prefix, x.path_id) for x in u.all_announced()} == NLRI_PREFIXES
    route = u.all_announced()[0]
    assert route.next_hop == IPv4Address("192.0.2.1")
    assert route.attributes == PathAttributes(
        origin=2,
        as_path=(65001, 4200000000, 65003, 65004),
        local_pref=2**31 - 1,
        med=7,
        communities=(3, 5),
        large_communities=((1, 2, 3), (9, 9, 9)),
        originator_id=IPv4Address("10.1.1.1"),
        cluster_list=(IPv4Address("10.255.0.1"), IPv4Address("10.255.0.2")),
    )


def test_two_octet_as_session_decodes_two_octet_paths() -> None:
    r = receiver(asn4=False)
    attrs = ORIGIN_IGP + attr(0x40, 2, b"\x02\x02" + struct.pack("!HH", 65001, 23456))
    attrs += (
        NEXT_HOP + LOCAL_PREF + attr(0xC0, 17, b"\x02\x02" + struct.pack("!LL", 65001, 4200000000))
    )
    u = r.decode_update(update(attrs, NLRI))
    assert u.all_announced()[0].attributes.as_path == (65001, 4200000000)  # RFC 6793 AS4_PATH merge


def test_missing_local_pref_is_none() -> None:
    u = receiver().decode_update(update(ORIGIN_IGP + AS_PATH_EMPTY + NEXT_HOP, NLRI))
    assert u.all_announced()[0].attributes.local_pref is None


def test_add_path_ids_are_decoded() -> None:
    r = receiver(add_path=True)
    nlri = b"\x00\x00\x00\x07\x20\x0a\x00\x00\x01" + b"\x00\x00\x00\x08\x20\x0a\x00\x00\x01"
    u = r.decode_update(update(GOOD, nlri, withdrawn=b"\x00\x00\x00\x09\x08\x0b"))
    assert [(x.prefix, x.path_id) for x in u.all_announced()] == [
        (ip_network("10.0.0.1/32"), 7),
        (ip_network("10.0.0.1/32"), 8),
    ]
    assert u.withdrawn == ((ip_network("11.0.0.0/8"), 9),)


def test_host_bits_past_the_mask_are_cleared() -> None:
    u = receiver().decode_update(update(GOOD, b"\x19\x0a\x00\x00\xff"))  # 10.0.0.255/25
    assert u.all_announced()[0].prefix == ip_network("10.0.0.128/25")


def test_bird_ipv6_global_and_link_local_next_hop_yields_each_prefix_once() -> None:
    r = receiver()
    attrs = mp_reach6(V6_GLOBAL + V6_LINK_LOCAL, V6_NLRI) + ORIGIN_IGP + AS_PATH_EMPTY + LOCAL_PREF
    u = r.decode_update(update(attrs))
    assert sorted((x.prefix, x.path_id) for x in u.all_announced()) == sorted(V6_PREFIXES)
    assert {x.next_hop for x in u.all_announced()} == {IPv6Address("2001:db8:ffff::1")}
    # with ADD-PATH two paths for one prefix stay two routes
    r = receiver(add_path=True)
    nlri = b"\x00\x00\x00\x01" + V6_NLRI[:17] + b"\x00\x00\x00\x02" + V6_NLRI[:17]
    attrs = mp_reach6(V6_GLOBAL + V6_LINK_LOCAL, nlri) + ORIGIN_IGP + AS_PATH_EMPTY + LOCAL_PREF
    u = r.decode_update(update(attrs))
    assert [(x.path_id, x.next_hop) for x in u.all_announced()] == [
        (1, IPv6Address("2001:db8:ffff::1")),
        (2, IPv6Address("2001:db8:ffff::1")),
    ]


def test_ipv6_withdrawals_and_mp_unreach() -> None:
    u = receiver().decode_update(update(mp_unreach(2, 1, V6_NLRI)))
    assert set(u.withdrawn) == V6_PREFIXES and not u.all_announced()


def test_ebgp_encode_prepends_our_as_and_drops_local_pref() -> None:
    for asn4 in (True, False):
        local, peer = 4200000001, 65001
        a_open = Open(local, 90, IPv4Address("10.0.0.1"), caps(asn4=local))
        b_open = Open(peer, 90, IPv4Address("10.0.0.2"), caps(asn4=peer if asn4 else None))
        a, b = Codec(local, peer), Codec(peer, local)
        a.negotiate(a_open, b_open, 30)
        b.negotiate(b_open, a_open, 30)
        ann = Announcement(ip_network("10.0.0.0/24"), ip_address("192.0.2.1"), 300, (1,))
        (message,) = a.encode_updates([ann], ())
        (route,) = b.decode_update(body(message)).all_announced()
        assert route.attributes.as_path == (local,)
        assert route.attributes.local_pref is None
        assert route.attributes.communities == (1,)


def test_encode_refuses_what_cannot_be_sent() -> None:
    sender, _ = pair()
    with pytest.raises(ValueError):
        sender.encode_updates([Announcement(ip_network("10.0.0.0/8"), ip_address("::1"))], ())
    with pytest.raises(ValueError):
        sender.encode_updates([Announcement(ip_network("::/0"), ip_address("10.0.0.1"))], ())
    with pytest.raises(ValueError):
        sender.encode_updates(
            [Announcement(ip_network("10.0.0.0/8"), ip_address("10.0.0.1"), 2**32)], ()
        )
    with pytest.raises(ValueError):  # attributes alone fill the message
        big = tuple((i, i, i) for i in range(400))
        sender.encode_updates(
            [Announcement(ip_network("10.0.0.0/8"), ip_address("10.0.0.1"), 1, (), big)], ()
        )
    with pytest.raises(RuntimeError):
        Codec(ASN, ASN).encode_updates((), ())


def test_families_not_negotiated_are_left_out() -> None:
    a_open = Open(ASN, 90, IPv4Address("10.0.0.1"), caps(families=frozenset({IPV4_UNICAST})))
    b_open = Open(ASN, 90, IPv4Address("10.0.0.2"), caps())
    a = Codec(ASN, ASN)
    a.negotiate(a_open, b_open, 30)
    v6 = Announcement(ip_network("2001:db8::/64"), ip_address("2001:db8::1"))
    assert a.encode_updates([v6], [v6.prefix]) == []


# ---- OPEN --------------------------------------------------------------------------------

families = st.sets(st.sampled_from([IPV4_UNICAST, IPV6_UNICAST]), min_size=1).map(frozenset)
graceful = st.builds(
    GracefulRestart,
    restart_time=st.integers(0, 4095),
    restarting=st.booleans(),
    families=st.lists(
        st.tuples(st.sampled_from([IPV4_UNICAST, IPV6_UNICAST]), st.booleans()),
        max_size=2,
        unique_by=lambda x: x[0],
    ).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(
    asn=st.integers(1, 2**32 - 1),
    hold=st.sampled_from([0, 3, 9, 90, 240, 65535]),
    router_id=st.integers(1, 2**32 - 1).map(IPv4Address),
    fams=families,
    refresh=st.booleans(),
    gr=st.none() | graceful,
    add_path=st.lists(
        st.tuples(st.sampled_from([IPV4_UNICAST, IPV6_UNICAST]), st.integers(1, 3)),
        max_size=2,
        unique_by=lambda x: x[0],
    ).map(tuple),
)
def test_open_round_trip(
    asn: int,
    hold: int,
    router_id: IPv4Address,
    fams: frozenset[tuple[int, int]],
    refresh: bool,
    gr: GracefulRestart | None,
    add_path: tuple[tuple[tuple[int, int], int], ...],
) -> None:
    message = Open(asn, hold, router_id, Capabilities(fams, asn, refresh, gr, add_path))
    wire = Codec(ASN, asn).encode_open(message)
    assert wire[:16] == MARKER and wire[18] == 1
    assert struct.unpack_from("!H", wire, 16)[0] == len(wire)
    my_as = struct.unpack_from("!H", wire, 20)[0]
    assert my_as == (asn if asn <= 0xFFFF else 23456)  # AS_TRANS (RFC 6793)
    assert Codec(ASN, asn).decode_open(wire[19:]) == message


def test_open_without_four_octet_capability_and_multiprotocol() -> None:
    message = Open(65001, 90, IPv4Address("1.2.3.4"), Capabilities(frozenset(), None, False))
    decoded = Codec(ASN, 65001).decode_open(Codec(ASN, 65001).encode_open(message)[19:])
    # no MP capability: IPv4 unicast only (RFC 4760 §8)
    assert decoded == Open(
        65001, 90, IPv4Address("1.2.3.4"), Capabilities(frozenset({IPV4_UNICAST}), None, False)
    )
    with pytest.raises(ValueError):
        Codec(ASN, ASN).encode_open(Open(4200000000, 90, IPv4Address("1.2.3.4"), Capabilities()))


def open_body(version: int = 4, asn: int = ASN, hold: int = 90, rid: str = "1.2.3.4") -> bytes:
    return struct.pack("!BHH", version, asn, hold) + IPv4Address(rid).packed + b"\x00"


@pytest.mark.parametrize(
    ("body_", "code", "subcode", "data"),
    [
        (open_body(version=3), 2, 1, b"\x00\x04"),
        (open_body(version=5), 2, 1, b"\x00\x04"),
        (open_body(rid="0.0.0.0"), 2, 3, b""),
        (open_body(hold=1), 2, 6, b""),
        (open_body(hold=2), 2, 6, b""),
        (open_body()[:5], 1, 2, struct.pack("!H", 24)),
        (open_body()[:-1] + b"\x04\x03\x02\x00\x00", 2, 4, b""),  # unknown optional parameter
        (open_body()[:-1] + b"\x08\x02\x06\x01\x04\x00\x01", 2, 0, b""),  # truncated
        (open_body()[:-1] + b"\x05\x02\x03\x41\x01\x00", 2, 0, b""),  # bad 4-octet AS length
    ],
)
def test_open_errors(body_: bytes, code: int, subcode: int, data: bytes) -> None:
    with pytest.raises(BgpError) as err:
        Codec(ASN, ASN).decode_open(body_)
    assert (err.value.code, err.value.subcode, err.value.data) == (code, subcode, data)


def test_open_asn_comes_from_the_four_octet_capability() -> None:
    message = Open(4200000000, 90, IPv4Address("1.2.3.4"), caps(asn4=4200000000))
    assert Codec(ASN, 4200000000).decode_open(Codec(ASN, ASN).encode_open(message)[19:]).asn == (
        4200000000
    )


def test_negotiate() -> None:
    gr_ours = GracefulRestart(120, True, ((IPV4_UNICAST, True),))
    gr_theirs = GracefulRestart(90, False, ((IPV4_UNICAST, False), (IPV6_UNICAST, True)))
    sent = Open(
        ASN,
        90,
        IPv4Address("10.0.0.1"),
        Capabilities(BOTH, ASN, True, gr_ours, ((IPV4_UNICAST, 1), (IPV6_UNICAST, 3))),
    )
    received = Open(
        ASN,
        30,
        IPv4Address("10.0.0.2"),
        Capabilities(BOTH, ASN, True, gr_theirs, ((IPV4_UNICAST, 3), (IPV6_UNICAST, 1))),
    )
    n = Codec(ASN, ASN).negotiate(sent, received, 30)
    assert (n.hold_time, n.keepalive_time) == (30, 10)
    assert n.families == BOTH and n.asn4 and n.route_refresh
    assert n.add_path_receive == {IPV4_UNICAST}  # we receive, they send
    assert n.add_path_send == {IPV6_UNICAST}  # we send, they receive
    assert (n.local_graceful_restart, n.peer_graceful_restart) == (gr_ours, gr_theirs)
    assert (n.peer_asn, n.peer_router_id) == (ASN, IPv4Address("10.0.0.2"))

    v4_only = Open(
        ASN, 0, IPv4Address("10.0.0.3"), Capabilities(frozenset({IPV4_UNICAST}), None, False)
    )
    n = Codec(ASN, ASN).negotiate(sent, v4_only, 30)
    assert n.families == {IPV4_UNICAST} and not n.asn4 and not n.route_refresh
    assert (n.hold_time, n.keepalive_time) == (0, 0)
    assert n.add_path_receive == n.add_path_send == frozenset()
    assert n.peer_graceful_restart is None

    with pytest.raises(BgpError) as err:
        Codec(ASN, 65001).negotiate(sent, received, 30)
    assert (err.value.code, err.value.subcode) == (2, 2)
    with pytest.raises(BgpError) as err:  # internal peer with our identifier (RFC 6286)
        Codec(ASN, ASN).negotiate(sent, Open(ASN, 90, IPv4Address("10.0.0.1"), caps()), 30)
    assert (err.value.code, err.value.subcode) == (2, 3)


def test_add_path_in_one_direction_only() -> None:
    """We advertise receive, the reflector send: path ids come in, none go out."""
    ours = Open(ASN, 90, IPv4Address("10.0.0.1"), caps(1))
    theirs = Open(ASN, 90, IPv4Address("10.0.0.2"), caps(2))
    us, rr = Codec(ASN, ASN), Codec(ASN, ASN)
    assert us.negotiate(ours, theirs, 30).add_path_receive == BOTH
    assert rr.negotiate(theirs, ours, 30).add_path_send == BOTH
    ann = Announcement(ip_network("10.0.0.0/24"), ip_address("192.0.2.1"))
    (to_us,) = rr.encode_updates([ann], ())
    assert us.decode_update(body(to_us)).all_announced()[0].path_id == 1
    (to_rr,) = us.encode_updates([ann], ())
    assert rr.decode_update(body(to_rr)).all_announced()[0].path_id == 0


# ---- KEEPALIVE, NOTIFICATION, ROUTE-REFRESH ----------------------------------------------


def test_keepalive() -> None:
    assert Codec(ASN, ASN).encode_keepalive() == MARKER + b"\x00\x13\x04"


@given(code=st.integers(0, 255), subcode=st.integers(0, 255), data=st.binary(max_size=300))
def test_notification_round_trip(code: int, subcode: int, data: bytes) -> None:
    c = Codec(ASN, ASN)
    wire = c.encode_notification(Notification(code, subcode, data))
    assert wire[:19] == MARKER + struct.pack("!HB", 21 + len(data), 3)
    assert c.decode_notification(wire[19:]) == Notification(code, subcode, data)


def test_notification_shutdown_communication_and_short() -> None:
    c = Codec(ASN, ASN)
    shutdown = Notification(6, 2, b"\x0bmaintenance")
    assert c.decode_notification(c.encode_notification(shutdown)[19:]) == shutdown
    assert str(shutdown).endswith("('maintenance')")
    with pytest.raises(BgpError) as err:
        c.decode_notification(b"\x06")
    assert (err.value.code, err.value.subcode) == (1, 2)


@given(
    family=st.sampled_from([IPV4_UNICAST, IPV6_UNICAST, (1, 2), (2, 128)]),
    subtype=st.integers(0, 255),
)
def test_route_refresh_round_trip(family: tuple[int, int], subtype: int) -> None:
    c = Codec(ASN, ASN)
    wire = c.encode_route_refresh(RouteRefresh(family, subtype))
    assert wire[:19] == MARKER + b"\x00\x17\x05"
    assert c.decode_route_refresh(wire[19:]) == RouteRefresh(family, subtype)


def test_route_refresh_bad_length() -> None:
    c = Codec(ASN, ASN)
    with pytest.raises(BgpError) as err:
        c.decode_route_refresh(b"\x00\x01\x01\x01\x00")  # BoRR, 5 bytes (RFC 7313 §5)
    assert (err.value.code, err.value.subcode) == (7, 1)
    assert err.value.data == MARKER + b"\x00\x18\x05\x00\x01\x01\x01\x00"
    with pytest.raises(BgpError) as err:
        c.decode_route_refresh(b"\x00\x01\x00")
    assert (err.value.code, err.value.subcode, err.value.data) == (1, 2, b"\x00\x16")


# ---- malformed UPDATEs: RFC 4271 / RFC 7606 ----------------------------------------------

TAW = "treat-as-withdraw"
BAD_NEXT_HOP = attr(0x40, 3, bytes([192, 0, 2, 1, 9]))
CORPUS: list[tuple[str, bytes, tuple[Any, ...]]] = [
    ("ORIGIN value 5", update(attr(0x40, 1, b"\x05") + GOOD[4:], NLRI), (TAW, "ORIGIN")),
    ("ORIGIN 2 bytes", update(attr(0x40, 1, b"\x00\x00") + GOOD[4:], NLRI), (TAW, "ORIGIN")),
    ("ORIGIN empty", update(attr(0x40, 1, b"") + GOOD[4:], NLRI), (TAW, "ORIGIN")),
    ("ORIGIN optional flag", update(attr(0xC0, 1, b"\x00") + GOOD[4:], NLRI), (TAW, "ORIGIN")),
    ("missing ORIGIN", update(GOOD[4:], NLRI), (TAW, "ORIGIN")),
    (
        "AS_PATH bad segment type",
        update(
            ORIGIN_IGP + attr(0x40, 2, b"\x07\x01\x00\x00\xfd\xe8") + NEXT_HOP + LOCAL_PREF, NLRI
        ),
        (TAW, "AS_PATH"),
    ),
    (
        "AS_PATH segment overruns",
        update(
            ORIGIN_IGP + attr(0x40, 2, b"\x02\x05\x00\x00\xfd\xe8") + NEXT_HOP + LOCAL_PREF, NLRI
        ),
        (TAW, "AS_PATH"),
    ),
    (
        "AS_PATH odd byte",
        update(ORIGIN_IGP + attr(0x40, 2, b"\x02") + NEXT_HOP + LOCAL_PREF, NLRI),
        (TAW, "AS_PATH"),
    ),
    ("missing AS_PATH", update(ORIGIN_IGP + NEXT_HOP + LOCAL_PREF, NLRI), (TAW, "AS_PATH")),
    (
        "LOCAL_PREF 3 bytes",
        update(ORIGIN_IGP + AS_PATH_EMPTY + NEXT_HOP + attr(0x40, 5, b"\x00\x00\x64"), NLRI),
        (TAW, "LOCAL_PREF"),
    ),
    (
        "LOCAL_PREF optional flag",
        update(ORIGIN_IGP + AS_PATH_EMPTY + NEXT_HOP + attr(0x80, 5, b"\x00\x00\x00\x64"), NLRI),
        (TAW, "LOCAL_PREF"),
    ),
    (
        "MED 2 bytes",
        update(GOOD + attr(0x80, 4, b"\x00\x01"), NLRI),
        (TAW, "MULTI_EXIT_DISC"),
    ),
    (
        "NEXT_HOP 5 bytes",
        update(ORIGIN_IGP + AS_PATH_EMPTY + BAD_NEXT_HOP + LOCAL_PREF, NLRI),
        (TAW, "NEXT_HOP"),
    ),
    (
        "NEXT_HOP 16 bytes",
        update(ORIGIN_IGP + AS_PATH_EMPTY + attr(0x40, 3, V6_GLOBAL) + LOCAL_PREF, NLRI),
        (TAW, "next hop"),
    ),
    (
        "NEXT_HOP 0.0.0.0",
        update(ORIGIN_IGP + AS_PATH_EMPTY + attr(0x40, 3, bytes(4)) + LOCAL_PREF, NLRI),
        (TAW, "next hop"),
    ),
    (
        "NEXT_HOP multicast",
        update(
            ORIGIN_IGP + AS_PATH_EMPTY + attr(0x40, 3, bytes([224, 0, 0, 5])) + LOCAL_PREF, NLRI
        ),
        (TAW, "next hop"),
    ),
    ("missing NEXT_HOP", update(ORIGIN_IGP + AS_PATH_EMPTY + LOCAL_PREF, NLRI), (TAW, "NEXT_HOP")),
    (
        "COMMUNITIES 5 bytes",
        update(GOOD + attr(0xC0, 8, b"\x00\x01\x00\x02\x03"), NLRI),
        (TAW, "COMMUNITIES"),
    ),
    (
        "LARGE_COMMUNITY 13 bytes",
        update(GOOD + attr(0xC0, 32, bytes(13)), NLRI),
        (TAW, "LARGE_COMMUNITY"),
    ),
    ("ORIGINATOR_ID 5 bytes", update(GOOD + attr(0x80, 9, bytes(5)), NLRI), (TAW, "ORIGINATOR_ID")),
    ("CLUSTER_LIST 5 bytes", update(GOOD + attr(0x80, 10, bytes(5)), NLRI), (TAW, "CLUSTER_LIST")),
    (
        "ORIGINATOR_ID transitive flag",
        update(GOOD + attr(0xC0, 9, bytes(4)), NLRI),
        (TAW, "ORIGINATOR_ID"),
    ),
    (
        "attribute overruns the section",
        update(GOOD + b"\xc0\x08\x0c" + bytes(4), NLRI),
        (TAW, "COMMUNITIES"),
    ),
    ("truncated attribute header", update(GOOD + b"\xc0\x08", NLRI), (TAW, "truncated")),
    (
        "truncated extended length header",
        update(GOOD + b"\xd0\x08\x00", NLRI),
        (TAW, "COMMUNITIES"),
    ),
    (
        "treat-as-withdraw keeps the withdrawals",
        update(attr(0x40, 1, b"\x09") + GOOD[4:], NLRI, withdrawn=b"\x10\x0b\x00"),
        (TAW, "ORIGIN", {(ip_network("11.0.0.0/16"), 0)}),
    ),
    (
        "IPv6 with a bad attribute",
        update(mp_reach6(V6_GLOBAL, V6_NLRI) + ORIGIN_IGP + attr(0x40, 2, b"\x09"), b""),
        (TAW, "AS_PATH", V6_PREFIXES),
    ),
    (
        "IPv6 missing AS_PATH",
        update(mp_reach6(V6_GLOBAL, V6_NLRI) + ORIGIN_IGP + LOCAL_PREF),
        (TAW, "AS_PATH", V6_PREFIXES),
    ),
    (
        "IPv6 next hop ::",
        update(mp_reach6(bytes(16), V6_NLRI) + ORIGIN_IGP + AS_PATH_EMPTY),
        (TAW, "next hop", V6_PREFIXES),
    ),
    (
        "IPv6 next hop link-local only",
        update(mp_reach6(V6_LINK_LOCAL, V6_NLRI) + ORIGIN_IGP + AS_PATH_EMPTY),
        (TAW, "next hop fe80::1", V6_PREFIXES),
    ),
    # session reset: the NLRI cannot be located or parsed
    ("body of 3 bytes", b"\x00\x00\x00", (1, 2)),
    ("withdrawn length overruns", b"\x00\x09\x08\x0a\x00\x00", (3, 1)),
    (
        "total attribute length overruns",
        b"\x00\x00\x00\xff" + GOOD + NLRI,
        (3, 1),
    ),
    ("NLRI prefix length 33", update(GOOD, b"\x21\x0a\x00\x00\x01\x00"), (3, 10)),
    ("NLRI truncated", update(GOOD, b"\x18\x0a\x00"), (3, 10)),
    (
        "withdrawn prefix length 40",
        update(b"", b"", withdrawn=b"\x28\x0a\x00\x00\x00\x00"),
        (3, 10),
    ),
    (
        "IPv6 MP_REACH next hop 8 bytes",
        update(mp_reach6(bytes(8), V6_NLRI) + ORIGIN_IGP + AS_PATH_EMPTY),
        (3, 9),
    ),
    (
        "IPv6 MP_REACH prefix length 129",
        update(mp_reach6(V6_GLOBAL, b"\x81" + bytes(17)) + ORIGIN_IGP + AS_PATH_EMPTY),
        (3, 10),
    ),
    (
        "MP_REACH overruns the section",
        update(ORIGIN_IGP + AS_PATH_EMPTY + mp_reach6(V6_GLOBAL, V6_NLRI)[:-3]),
        (3, 1),
    ),
    (
        "MP_REACH twice",
        update(mp_reach6(V6_GLOBAL, V6_NLRI) + mp_reach6(V6_GLOBAL, V6_NLRI) + GOOD),
        (3, 1),
    ),
    ("MP_UNREACH of a family not negotiated", update(mp_unreach(1, 2, b"\x08\x0a")), (3, 9)),
    ("MP_REACH optional transitive", update(mp_reach6(V6_GLOBAL, V6_NLRI, 0xD0) + GOOD), (3, 9)),
]


@pytest.mark.parametrize(("body_", "outcome"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_malformed_update(body_: bytes, outcome: tuple[Any, ...]) -> None:
    r = receiver()
    if outcome[0] == TAW:
        u = r.decode_update(body_)
        assert u.all_announced() == ()
        prefixes = outcome[2] if len(outcome) > 2 else NLRI_PREFIXES
        assert set(u.withdrawn) >= NLRI_PREFIXES or set(u.withdrawn) >= V6_PREFIXES
        assert prefixes <= set(u.withdrawn)
        assert outcome[1] in u.treat_as_withdraw, u.treat_as_withdraw
        assert u.end_of_rib is None
    else:
        with pytest.raises(BgpError) as err:
            r.decode_update(body_)
        assert (err.value.code, err.value.subcode) == outcome, err.value.reason
        if outcome == (1, 2):
            assert err.value.data == struct.pack("!H", 19 + len(body_))
    # the codec is still usable afterwards
    assert r.decode_update(update(GOOD, NLRI)).all_announced()


def test_attribute_discard_keeps_the_route() -> None:
    """RFC 7606 §7.7: a malformed AGGREGATOR is discarded, the route stays."""
    for bad in (attr(0xC0, 7, bytes(3)), attr(0x40, 6, b"\x01"), attr(0xC0, 17, b"\x02\x05")):
        u = receiver().decode_update(update(GOOD + bad, NLRI))
        assert {(x.prefix, x.path_id) for x in u.all_announced()} == NLRI_PREFIXES, bad.hex()
        assert not u.treat_as_withdraw and not u.withdrawn


def test_duplicate_attribute_keeps_the_first() -> None:
    u = receiver().decode_update(update(GOOD + attr(0x40, 5, struct.pack("!L", 5)), NLRI))
    assert u.all_announced()[0].attributes.local_pref == 100


def test_unknown_attributes_are_ignored() -> None:
    extra = attr(0x80, 200, b"x") + attr(0xC0, 201, b"y" * 300)
    assert len(receiver().decode_update(update(GOOD + extra, NLRI)).all_announced()) == 2


def test_unexpected_exabgp_exception_becomes_update_error(monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        @staticmethod
        def unpack_message(*_args: object) -> None:
            raise ValueError("boom")

    r = receiver()
    monkeypatch.setattr(codec_module, "ExaUpdate", Broken)
    with pytest.raises(BgpError) as err:
        r.decode_update(update(GOOD, NLRI))
    assert (err.value.code, err.value.subcode) == (3, 1)
    assert "ValueError: boom" in err.value.reason


def test_decode_update_leaves_the_garbage_collector_as_it_found_it() -> None:
    r = receiver()
    try:
        for enabled in (True, False):
            (gc.enable if enabled else gc.disable)()
            r.decode_update(update(GOOD, NLRI))
            with pytest.raises(BgpError):
                r.decode_update(update(GOOD, b"\x21\x0a\x00\x00\x01\x00"))
            assert gc.isenabled() is enabled
    finally:
        gc.enable()


def test_update_before_negotiation() -> None:
    with pytest.raises(BgpError) as err:
        Codec(ASN, ASN).decode_update(update(GOOD, NLRI))
    assert err.value.code == 5


# ---- fuzzing: only BgpError or a result ---------------------------------------------------


def valid_bodies() -> list[bytes]:
    sender, _ = pair(add_path=False)
    anns = [
        Announcement(
            ip_network("10.0.0.0/24"), ip_address("192.0.2.1"), 5, (1, 2), ((1, 2, 3),), 9
        ),
        Announcement(
            ip_network("10.1.2.3/32"), ip_address("192.0.2.1"), 5, (1, 2), ((1, 2, 3),), 9
        ),
        Announcement(ip_network("2001:db8::/48"), ip_address("2001:db8::1"), 7, (3,)),
    ]
    out = [
        body(m)
        for m in sender.encode_updates(
            anns, [ip_network("10.9.0.0/16"), ip_network("2001:db8:9::/48")]
        )
    ]
    out.append(
        update(mp_reach6(V6_GLOBAL + V6_LINK_LOCAL, V6_NLRI) + GOOD + attr(0x80, 9, bytes(4)))
    )
    out.append(update(GOOD + attr(0x80, 10, bytes(8)) + attr(0xC0, 7, bytes(8)), NLRI))
    return out


VALID = valid_bodies()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[pos:]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            del data[pos : pos + draw(st.integers(1, 4))]
    return bytes(data)


@pytest.mark.parametrize("add_path", [False, True])
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mutated(), st.binary(max_size=120)))
def test_fuzz_decode_update(add_path: bool, data: bytes) -> None:
    try:
        result = receiver(add_path).decode_update(data)
    except BgpError as exc:
        assert 1 <= exc.code <= 7
        return
    assert isinstance(result, Update)
    for route in result.all_announced():
        assert route.prefix.version == route.next_hop.version


@settings(max_examples=500, deadline=None)
@given(data=st.binary(max_size=80))
def test_fuzz_decode_other_messages(data: bytes) -> None:
    c = Codec(ASN, ASN)
    for decode in (c.decode_open, c.decode_notification, c.decode_route_refresh):
        with contextlib.suppress(BgpError):
            decode(data)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_fuzz_decode_open_mutations(data: Any) -> None:
    wire = Codec(ASN, ASN).encode_open(
        Open(ASN, 90, IPv4Address("10.0.0.1"), caps(3, graceful_restart=GracefulRestart(120)))
    )[19:]
    mutable = bytearray(wire)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(mutable) - 1))
        mutable[pos] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(mutable)))
    with contextlib.suppress(BgpError):
        Codec(ASN, ASN).decode_open(bytes(mutable[:cut]))


# ---- ExaBGP must not touch the process ---------------------------------------------------

HYGIENE = textwrap.dedent(
    """
    import gc, logging, os, signal, sys, threading
    SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2,
               signal.SIGCHLD, signal.SIGPIPE, signal.SIGALRM)

    def state():
        umask = os.umask(0o027)
        os.umask(umask)
        return dict(
            cwd=os.getcwd(), umask=umask, uid=(os.getuid(), os.geteuid()),
            signals={s: signal.getsignal(s) for s in SIGNALS},
            root=list(logging.root.handlers), level=logging.root.level,
            handlers=[(n, list(lg.handlers)) for n, lg in logging.Logger.manager.loggerDict.items()
                      if isinstance(lg, logging.Logger) and lg.handlers],
            environ=dict(os.environ), threads=threading.active_count(),
            streams=(sys.stdout, sys.stderr), recursion=sys.getrecursionlimit(),
            gc=(gc.isenabled(), gc.get_threshold()),
        )

    os.umask(0o027)
    before = state()
    from ipaddress import ip_address, ip_network, IPv4Address
    from l3hostd.bgp.codec import Codec
    from l3hostd.bgp import messages as m
    caps = m.Capabilities(frozenset({m.IPV4_UNICAST, m.IPV6_UNICAST}), 65000,
                          add_path=((m.IPV4_UNICAST, 3),))
    a, b = Codec(65000, 65000), Codec(65000, 65000)
    oa = m.Open(65000, 90, IPv4Address("1.1.1.1"), caps)
    ob = m.Open(65000, 90, IPv4Address("2.2.2.2"), caps)
    a.negotiate(oa, b.decode_open(b.encode_open(ob)[19:]), 30)
    b.negotiate(ob, a.decode_open(a.encode_open(oa)[19:]), 30)
    anns = [m.Announcement(ip_network("10.0.%d.0/24" % i), ip_address("10.9.9.9"))
            for i in range(200)]
    for message in a.encode_updates(anns, [ip_network("10.1.0.0/16")]):
        b.decode_update(message[19:])
    for bad in ("0000000440010107", "0009", "00000003c00809", "00000006900effff0002"):
        try:
            b.decode_update(bytes.fromhex(bad))
        except m.BgpError:
            pass
    b.decode_update(a.encode_end_of_rib(m.IPV6_UNICAST)[19:])
    after = state()
    for key in before:
        assert before[key] == after[key], (key, before[key], after[key])
    sys.stderr.write("ok\\n")
    """
)


def test_exabgp_leaves_the_process_alone() -> None:
    """Fresh interpreter: importing and using the codec changes neither cwd, umask, uid,
    signal handlers, logging handlers nor the environment, and prints nothing."""
    proc = subprocess.run(
        [sys.executable, "-c", HYGIENE], cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout == b""
    assert proc.stderr == b"ok\n"


def test_exabgp_version_is_the_one_the_workarounds_were_measured_with() -> None:
    from importlib.metadata import version

    assert version("exabgp").split(".")[:2] == ["5", "0"]


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.integers(0, 2**32 - 1), st.sampled_from([32, 32, 32, 24, 31, 0, 8]),
                       st.integers(0, 2**32 - 1)), max_size=30),
    st.booleans(),
)
def test_nlri_keys_fast_path_equals_the_field_read_prefix_by_prefix(
    items: list[tuple[int, int, int]], add_path: bool
) -> None:
    """A field of /32s only is read in C (codec._parse_ipv4_keys); whatever the field, the
    keys and path ids are those of RFC 4271 §4.3 / RFC 7911 §3 read one prefix at a time."""
    from l3hostd.bgp import codec as codec_mod

    field = b""
    want_keys, want_pids = [], []
    for addr, plen, pid in items:
        nbytes = (plen + 7) // 8
        head = pid.to_bytes(4, "big") if add_path else b""
        field += head + bytes([plen]) + addr.to_bytes(4, "big")[:nbytes]
        masked = addr & (0xFFFFFFFF ^ (0xFFFFFFFF >> plen)) if plen else 0
        if nbytes < 4:
            masked = (addr >> (32 - 8 * nbytes) << (32 - 8 * nbytes)) & masked if nbytes else 0
        want_keys.append(masked << 9 | plen << 1)
        want_pids.append(pid if add_path else 0)
    body = b"\x99" + field + b"\x99"
    got = codec_mod._parse_ipv4_keys(body, 1, 1 + len(field), add_path)
    assert got == (want_keys, want_pids)
