"""The keyed route packer produces the same bytes as the general route_message()."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from hypothesis import given
from hypothesis import strategies as st

from l3hostd.bgp.rib import prefix_key
from l3hostd.netlink import wire


@given(
    st.one_of(
        st.builds(lambda a, p: ip_network((a, p), strict=False), st.integers(0, 2**32 - 1),
                  st.integers(0, 32)),
        st.builds(lambda a, p: ip_network((a, p), strict=False), st.integers(0, 2**128 - 1),
                  st.integers(0, 128)),
    ),
    st.sampled_from([254, 100, 1000]),
    st.integers(1, 3),
)
def test_keyed_packer_matches_route_message(prefix: object, table: int, n_hops: int) -> None:
    dst = prefix  # type: ignore[assignment]
    assert isinstance(dst, (type(ip_network("0.0.0.0/0")), type(ip_network("::/0"))))
    v6 = dst.version == 6
    hops = tuple(ip_address(("fd00::%d" if v6 else "100.64.0.%d") % (i + 1))
                 for i in range(n_hops))
    packer = wire.KeyedRoutePacker(table, 45, 2048)
    family = 10 if v6 else 2
    got = packer.add(prefix_key(dst), wire.next_hop_attrs(family, hops))
    if n_hops == 1:
        want = wire.route_add(dst, protocol=45, gateway=hops[0], table=table, priority=2048)
    else:
        want = wire.route_add(dst, protocol=45, multipath=[(h, None) for h in hops],
                              table=table, priority=2048)
    assert wire.parse_route(got, 16) == wire.parse_route(want, 16)
    got_del = packer.delete(prefix_key(dst))
    want_del = wire.route_del(dst, protocol=45, table=table, priority=2048)
    assert wire.parse_route(got_del, 16) == wire.parse_route(want_del, 16)
    assert got_del[4:6] == want_del[4:6] and got[4:6] == want[4:6]  # message types


@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.builds(lambda a, p: ip_network((a, p), strict=False),
                          st.integers(0, 2**32 - 1), st.integers(0, 32)),
                st.builds(lambda a, p: ip_network((a, p), strict=False),
                          st.integers(0, 2**128 - 1), st.integers(0, 128)),
            ),
            st.integers(0, 3),  # next-hop set
        ),
        max_size=40,
    ),
    st.sampled_from([254, 1000]),
    st.integers(1, 5),
)
def test_templated_adds_are_byte_identical_to_add(
    items: list[tuple[object, int]], table: int, max_templates: int
) -> None:
    """``adds`` (one template per prefix length, family and next-hop set, the address put
    in) gives exactly the bytes of ``add``, also when its template cache starts over."""
    def hops(nh_set: int, v6: bool) -> tuple[object, ...]:
        fmt = "fd00::%d" if v6 else "100.64.0.%d"
        return tuple(ip_address(fmt % (i + 1)) for i in range(nh_set + 1))

    def attrs(nh_set: int, family: int) -> bytes:
        return wire.next_hop_attrs(family, hops(nh_set, family == 10))  # type: ignore[arg-type]

    packer = wire.KeyedRoutePacker(table, 45, 2048)
    packer.MAX_TEMPLATES = max_templates
    pairs = [(prefix_key(dst), nh_set) for dst, nh_set in items]  # type: ignore[arg-type]
    want = [packer.add(key, attrs(nh_set, 10 if key & 1 else 2)) for key, nh_set in pairs]
    assert packer.adds(pairs, attrs) == want
    assert packer.adds(pairs, attrs) == want  # from the cached templates
