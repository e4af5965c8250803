"""Adj-RIB-In: paths per peer and path id, selection, ECMP, policy, GR stale, max-prefix."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address, ip_network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from l3hostd.bgp.messages import PathAttributes, Route, Update
from l3hostd.bgp.rib import AdjRibIn, ImportPolicy, MaxPrefixExceeded, key_prefix, prefix_key


def route(prefix: str, nh: str, pid: int = 0, lp: int | None = None,
          originator: str | None = None) -> Route:
    return Route(ip_network(prefix), pid, ip_address(nh),
                 PathAttributes(local_pref=lp,
                                originator_id=IPv4Address(originator) if originator else None))


def hops(rib: AdjRibIn, prefix: str) -> set[str]:
    idx = rib.selected.get(prefix_key(ip_network(prefix)))
    return set() if idx is None else {str(h) for h in rib.ecmp_next_hops(idx)}


def make() -> AdjRibIn:
    rib = AdjRibIn(policy=ImportPolicy(router_id=IPv4Address("10.0.0.1"),
                                       own_addresses=frozenset({ip_address("100.64.1.1")})))
    rib.add_peer("rr1")
    rib.add_peer("rr2")
    return rib


def test_keys_round_trip_and_do_not_collide_across_families() -> None:
    for text in ("10.1.2.3/32", "0.0.0.0/0", "2001:db8::1/128", "::/0", "10.0.0.0/8"):
        assert key_prefix(prefix_key(ip_network(text))) == ip_network(text)
    assert prefix_key(ip_network("0.0.0.0/0")) != prefix_key(ip_network("::/0"))


def test_add_path_paths_from_two_reflectors_give_ecmp_over_distinct_next_hops() -> None:
    rib = make()
    d = rib.apply_update("rr1", Update(announced=(route("10.9.0.1/32", "100.64.2.1", 1),
                                                  route("10.9.0.1/32", "100.64.3.1", 2))))
    assert list(d) == [prefix_key(ip_network("10.9.0.1/32"))]
    assert hops(rib, "10.9.0.1/32") == {"100.64.2.1", "100.64.3.1"}
    # the same paths from the second reflector change nothing
    d = rib.apply_update("rr2", Update(announced=(route("10.9.0.1/32", "100.64.2.1", 7),
                                                  route("10.9.0.1/32", "100.64.3.1", 8))))
    assert d == {}
    # withdraw one path id on one reflector: still both next hops via the other
    assert rib.apply_update("rr1", Update(withdrawn=((ip_network("10.9.0.1/32"), 2),))) == {}
    rib.apply_update("rr2", Update(withdrawn=((ip_network("10.9.0.1/32"), 8),)))
    assert hops(rib, "10.9.0.1/32") == {"100.64.2.1"}


def test_highest_local_pref_wins_over_ecmp() -> None:
    rib = make()
    rib.apply_update("rr1", Update(announced=(route("10.9.0.1/32", "100.64.2.1", 1, lp=100),
                                              route("10.9.0.1/32", "100.64.3.1", 2, lp=200))))
    assert hops(rib, "10.9.0.1/32") == {"100.64.3.1"}


def test_same_path_id_replaces_implicitly() -> None:
    rib = make()
    rib.apply_update("rr1", Update(announced=(route("10.9.0.1/32", "100.64.2.1", 1),)))
    rib.apply_update("rr1", Update(announced=(route("10.9.0.1/32", "100.64.3.1", 1),)))
    assert hops(rib, "10.9.0.1/32") == {"100.64.3.1"}
    assert rib.peers["rr1"].count == 1


def test_policy_rejects_default_own_routes_and_reject_list() -> None:
    rib = AdjRibIn(policy=ImportPolicy(reject=(ip_network("10.66.0.0/16"),),
                                       router_id=IPv4Address("10.0.0.1"),
                                       own_addresses=frozenset({ip_address("100.64.1.1")})))
    rib.add_peer("rr1")
    rib.apply_update("rr1", Update(announced=(
        route("0.0.0.0/0", "100.64.2.1"),
        route("10.66.1.1/32", "100.64.2.1"),
        route("10.9.0.1/32", "100.64.1.1"),  # our own next hop
        route("10.9.0.2/32", "100.64.2.1", originator="10.0.0.1"),  # our ORIGINATOR_ID
        route("10.9.0.3/32", "100.64.2.1"),
    )))
    assert [str(key_prefix(k)) for k in rib.selected] == ["10.9.0.3/32"]
    assert rib.peers["rr1"].filtered == 4
    allow = AdjRibIn(policy=ImportPolicy(allow_default=True, accept=(ip_network("0.0.0.0/0"),)))
    allow.add_peer("rr1")
    allow.apply_update("rr1", Update(announced=(route("0.0.0.0/0", "100.64.2.1"),)))
    assert len(allow.selected) == 1


def test_accept_list_limits_what_is_taken() -> None:
    rib = AdjRibIn(policy=ImportPolicy(accept=(ip_network("10.9.0.0/16"),)))
    rib.add_peer("rr1")
    rib.apply_update("rr1", Update(announced=(route("10.9.3.4/32", "100.64.2.1"),
                                              route("10.10.3.4/32", "100.64.2.1"),
                                              route("2001:db8::1/128", "fd00::2"))))
    assert {str(key_prefix(k)) for k in rib.selected} == {"10.9.3.4/32"}


def test_max_prefix_raises_after_storing() -> None:
    rib = AdjRibIn()
    rib.add_peer("rr1", max_prefixes=2)
    rib.apply_update("rr1", Update(announced=(route("10.9.0.1/32", "100.64.2.1"),
                                              route("10.9.0.2/32", "100.64.2.1"))))
    with pytest.raises(MaxPrefixExceeded):
        rib.apply_update("rr1", Update(announced=(route("10.9.0.3/32", "100.64.2.1"),)))


def test_graceful_restart_stale_paths_kept_then_swept_without_churn() -> None:
    rib = make()
    rib.apply_update("rr1", Update(announced=(route("10.9.0.1/32", "100.64.2.1", 1),
                                              route("10.9.0.2/32", "100.64.2.1", 2))))
    rib.mark_stale("rr1")
    assert hops(rib, "10.9.0.1/32") == {"100.64.2.1"}
    # session back: 10.9.0.1 re-announced (maybe with another path id), 10.9.0.2 not
    d = rib.apply_update("rr1", Update(announced=(route("10.9.0.1/32", "100.64.2.1", 9),)))
    assert d == {}  # same next hop: no kernel change
    d = rib.sweep_stale("rr1")
    assert {str(key_prefix(k)): new for k, (_old, new) in d.items()} == {"10.9.0.2/32": None}
    assert hops(rib, "10.9.0.1/32") == {"100.64.2.1"}
    assert not rib.has_stale("rr1")


def test_peer_down_removes_everything_of_that_peer_only() -> None:
    rib = make()
    rib.apply_update("rr1", Update(announced=(route("10.9.0.1/32", "100.64.2.1", 1),)))
    rib.apply_update("rr2", Update(announced=(route("10.9.0.1/32", "100.64.3.1", 1),
                                              route("10.9.0.2/32", "100.64.3.1", 2))))
    rib.peer_down("rr2")
    assert hops(rib, "10.9.0.1/32") == {"100.64.2.1"}
    assert hops(rib, "10.9.0.2/32") == set()


ops = st.lists(st.tuples(
    st.sampled_from(["rr1", "rr2"]),
    st.booleans(),
    st.integers(0, 5),  # prefix
    st.integers(0, 2),  # path id
    st.integers(0, 2),  # next hop
    st.sampled_from([None, 100, 200]),
), max_size=40)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_selection_matches_a_naive_model(script: list[tuple[str, bool, int, int, int, int | None]]
                                         ) -> None:
    rib = make()
    model: dict[tuple[str, int, int], tuple[str, int]] = {}  # (peer, prefix, pid) -> (nh, lp)
    for peer, announce, p, pid, nh, lp in script:
        prefix = f"10.9.0.{p}/32"
        nh_addr = f"100.64.{nh + 2}.1"
        if announce:
            rib.apply_update(peer, Update(announced=(route(prefix, nh_addr, pid, lp),)))
            model[(peer, p, pid)] = (nh_addr, 100 if lp is None else lp)
        else:
            rib.apply_update(peer, Update(withdrawn=((ip_network(prefix), pid),)))
            model.pop((peer, p, pid), None)
    for p in range(6):
        paths = [v for (_, q, _), v in model.items() if q == p]
        want = set()
        if paths:
            top = max(lp for _, lp in paths)
            want = {nh for nh, lp in paths if lp == top}
        assert hops(rib, f"10.9.0.{p}/32") == want


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["10.9.0.1/32", "10.9.0.2/32", "0.0.0.0/0",
                                           "10.8.0.0/16", "192.0.2.9/32"]),
                          st.integers(0, 3)), max_size=8),
       st.sampled_from(["100.64.2.1", "100.64.1.1"]), st.booleans())
def test_packed_routes_are_stored_exactly_like_route_objects(
        items: list[tuple[str, int]], nh: str, add_path: bool) -> None:
    """The codec's compact form and the route form give the same RIB, filters included
    (default route, own next hop)."""
    from l3hostd.bgp.messages import PackedRoutes

    attrs = PathAttributes(local_pref=200)
    items = list(dict.fromkeys(items if add_path else [(p, 0) for p, _ in items]))
    routes = tuple(Route(ip_network(p), pid, ip_address(nh), attrs) for p, pid in items)
    packed = PackedRoutes(tuple(prefix_key(ip_network(p)) for p, _ in items),
                          tuple(pid for _, pid in items) if add_path else None,
                          ip_address(nh), attrs)
    assert packed.routes() == routes
    one, two = make(), make()
    d1 = one.apply_update("rr1", Update(announced=routes))
    d2 = two.apply_update("rr1", Update(packed=packed))
    assert d1 == d2 and one.paths == two.paths
    assert one.peers["rr1"].count == two.peers["rr1"].count
    assert one.peers["rr1"].filtered == two.peers["rr1"].filtered
    assert Update(packed=packed).announced_count == len(routes)


def named(rib: AdjRibIn, delta: dict[int, tuple[int | None, int | None]]) -> dict[
        int, tuple[frozenset[str] | None, frozenset[str] | None]]:
    def hops_of(idx: int | None) -> frozenset[str] | None:
        return None if idx is None else frozenset(str(h) for h in rib.ecmp_next_hops(idx))
    return {key: (hops_of(old), hops_of(new)) for key, (old, new) in delta.items()}


@settings(max_examples=200)
@given(st.lists(
    st.tuples(
        st.sampled_from(["rr1", "rr2"]),
        st.lists(st.sampled_from(["10.9.0.1/32", "10.9.0.2/32", "10.9.0.3/32", "0.0.0.0/0",
                                  "10.8.0.0/16", "2001:db8::1/128"]), max_size=6),
        st.lists(st.sampled_from(["10.9.0.1/32", "10.9.0.3/32", "10.8.0.0/16"]), max_size=2),
        st.sampled_from(["100.64.2.1", "100.64.2.2", "100.64.1.1"]),
        st.sampled_from([None, 100, 200]),
        st.sampled_from([None, (1,), (1, 2)]),  # path ids (ADD-PATH): none, alike, mixed
    ),
    max_size=6,
))
def test_packed_sequences_give_the_rib_of_route_objects(
        updates: list[tuple[str, list[str], list[str], str, int | None,
                            tuple[int, ...] | None]]) -> None:
    """Sequences of UPDATEs (two peers, withdrawals, a prefix twice in one UPDATE, known
    and new prefixes, filtered next hop and default route): the compact form -- whose
    bulk of new prefixes is stored in one go -- leaves the RIB, every delta and every
    counter as the route form does, prefix by prefix."""
    from l3hostd.bgp.messages import PackedRoutes

    one, two = make(), make()
    for peer, announce, withdraw, nh, lp, ids in updates:
        attrs = PathAttributes(local_pref=lp)
        pids = None if ids is None else tuple(ids[i % len(ids)] for i in range(len(announce)))
        wd = tuple((ip_network(p), 0 if ids is None else ids[0]) for p in withdraw)
        routes = tuple(Route(ip_network(p), 0 if pids is None else pids[i], ip_address(nh),
                             attrs) for i, p in enumerate(announce))
        packed = PackedRoutes(tuple(prefix_key(ip_network(p)) for p in announce), pids,
                              ip_address(nh), attrs) if announce else None
        d1 = one.apply_update(peer, Update(withdrawn=wd, announced=routes))
        d2 = two.apply_update(peer, Update(withdrawn=wd, packed=packed))
        # the same selections (ECMP sets are interned in the order met: compare contents)
        assert named(one, d1) == named(two, d2)
        assert one.paths == two.paths
        for name in ("rr1", "rr2"):
            assert one.peers[name].count == two.peers[name].count
            assert one.peers[name].filtered == two.peers[name].filtered
