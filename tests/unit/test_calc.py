"""Desired-state calculation: the rule per endpoint, conflicts, and incremental == full."""

from __future__ import annotations

import fnmatch
from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from l3hostd.calc import _PREFIXES, DataplaneSettings, DesiredState, calculate, matches
from l3hostd.model import (
    RT_SCOPE_LINK,
    Endpoint,
    EndpointState,
    Link,
    Neighbour,
    RouteKey,
    TapConfig,
)

S = DataplaneSettings(interface_patterns=("tap*",))


def ep(eid: str, iface: str, *ips: str, mac: str = "fa:16:3e:00:00:01") -> Endpoint:
    return Endpoint(eid, iface, mac, tuple(ip_address(i) for i in ips))


def link(ifindex: int, name: str, up: bool = True, carrier: bool = True) -> Link:
    return Link(ifindex, name, up, carrier)


def test_active_endpoint_wants_routes_neighbours_and_tap_config() -> None:
    d = calculate([ep("a", "tapa", "10.0.0.1", "2001:db8::1")], [link(7, "tapa")], S)
    assert d.states == {"a": EndpointState.ACTIVE}
    r4 = d.routes[RouteKey(254, ip_network("10.0.0.1/32"))]
    assert (r4.ifindex, r4.scope, r4.protocol) == (7, RT_SCOPE_LINK, 44)
    assert RouteKey(254, ip_network("2001:db8::1/128")) in d.routes
    assert set(d.neighbours.values()) == {
        Neighbour(7, ip_address("10.0.0.1"), "fa:16:3e:00:00:01"),
        Neighbour(7, ip_address("2001:db8::1"), "fa:16:3e:00:00:01"),
    }
    assert list(d.taps) == [7]


def test_no_interface_down_interface_and_foreign_pattern() -> None:
    d = calculate(
        [ep("a", "tapa", "10.0.0.1"), ep("b", "tapb", "10.0.0.2"), ep("c", "eth0", "10.0.0.3")],
        [link(1, "tapb", up=True, carrier=False), link(2, "eth0")],
        S,
    )
    assert d.states == {
        "a": EndpointState.NO_INTERFACE,
        "b": EndpointState.INTERFACE_DOWN,
        "c": EndpointState.NO_INTERFACE,  # eth0 does not match tap*: never managed
    }
    assert not d.routes
    # a TAP that is down is configured already (sysctls, IPv6 gateway, the VM's permanent
    # neighbour entries): off the path from link up to announcement; nothing for a missing
    # TAP or a foreign interface
    assert d.taps == {1: TapConfig(1, "tapb", True, False)}
    assert set(d.neighbours.values()) == {Neighbour(1, ip_address("10.0.0.2"), "fa:16:3e:00:00:01")}


def test_ip_conflict_smallest_id_wins_and_loser_takes_over_when_winner_leaves() -> None:
    state = DesiredState(S)
    state.replace_links([link(1, "tapa"), link(2, "tapb")])
    state.upsert_endpoint(ep("b", "tapb", "10.0.0.9"))
    delta = state.upsert_endpoint(ep("a", "tapa", "10.0.0.9"))
    assert state.states() == {"a": EndpointState.ACTIVE, "b": EndpointState.CONFLICT}
    assert delta.routes[RouteKey(254, ip_network("10.0.0.9/32"))].ifindex == 1  # type: ignore[union-attr]
    delta = state.remove_endpoint("a")
    assert state.states() == {"b": EndpointState.ACTIVE}
    assert delta.routes[RouteKey(254, ip_network("10.0.0.9/32"))].ifindex == 2  # type: ignore[union-attr]


def test_rename_keeps_ifindex_and_moves_the_endpoint() -> None:
    state = DesiredState(S)
    state.upsert_endpoint(ep("a", "tapa", "10.0.0.1"))
    state.upsert_link(link(5, "tapx"))
    assert state.states() == {"a": EndpointState.NO_INTERFACE}
    delta = state.upsert_link(link(5, "tapa"))
    assert state.states() == {"a": EndpointState.ACTIVE}
    assert delta.routes
    delta = state.upsert_link(link(5, "other0"))  # renamed out of the patterns
    assert state.states() == {"a": EndpointState.NO_INTERFACE}
    assert set(delta.routes.values()) == {None}


def test_unrelated_change_replans_nothing_else() -> None:
    state = DesiredState(S)
    links = [link(i, f"tap{i}") for i in range(1, 200)]
    state.replace_links(links)
    for i in range(1, 200):
        state.upsert_endpoint(ep(f"e{i}", f"tap{i}", f"10.0.{i // 256}.{i % 256}"))
    delta = state.upsert_link(link(5, "tap5", up=False))
    assert set(delta.states) == {"e5"}
    assert len(delta.routes) == 1


names = st.sampled_from(["tapa", "tapb", "tapc", "eth0"])
ips = st.sampled_from(["10.0.0.1", "10.0.0.2", "2001:db8::1", "2001:db8::2"])
endpoint_st = st.builds(
    lambda i, n, a: ep(f"e{i}", n, *sorted(set(a))),
    st.integers(0, 4),
    names,
    st.lists(ips, min_size=1, max_size=3),
)
link_st = st.builds(lambda i, n, u: link(i, n, u), st.integers(1, 4), names, st.booleans())
op_st = st.one_of(
    st.tuples(st.just("ep"), endpoint_st),
    st.tuples(st.just("rm"), st.integers(0, 4)),
    st.tuples(st.just("link"), link_st),
    st.tuples(st.just("unlink"), st.integers(1, 4)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(op_st, max_size=25))
def test_incremental_equals_full_calculation(ops: list[tuple[str, object]]) -> None:
    state = DesiredState(S)
    endpoints: dict[str, Endpoint] = {}
    links: dict[int, Link] = {}
    routes: dict[RouteKey, object] = {}
    for kind, arg in ops:
        if kind == "ep":
            assert isinstance(arg, Endpoint)
            endpoints[arg.id] = arg
            delta = state.upsert_endpoint(arg)
        elif kind == "rm":
            endpoints.pop(f"e{arg}", None)
            delta = state.remove_endpoint(f"e{arg}")
        elif kind == "link":
            assert isinstance(arg, Link)
            # a name is held by one device at a time, as in the kernel
            for other in [k for k, v in links.items() if v.ifname == arg.ifname]:
                links.pop(other)
                for k, v in state.remove_link(other).routes.items():
                    routes[k] = v
            links[arg.ifindex] = arg
            delta = state.upsert_link(arg)
        else:
            assert isinstance(arg, int)
            links.pop(arg, None)
            delta = state.remove_link(arg)
        routes.update(delta.routes)
        full = calculate(endpoints.values(), links.values(), S)
        assert state.states() == dict(full.states)
        assert state.desired_routes() == dict(full.routes)
        assert state.desired_neighbours() == dict(full.neighbours)
        assert state.desired_taps() == dict(full.taps)
        # the deltas, applied in order, reproduce the full desired routes
        assert {k: v for k, v in routes.items() if v is not None} == dict(full.routes)


@given(
    name=st.text(alphabet="tapvhuxy0-*?[]", max_size=6),
    patterns=st.lists(st.text(alphabet="tapvhuxy0-*?[]!", max_size=5), min_size=1, max_size=3),
)
def test_interface_patterns_match_as_fnmatch_does(name: str, patterns: list[str]) -> None:
    expected = any(fnmatch.fnmatchcase(name, p) for p in patterns)
    assert matches(name, tuple(patterns)) == expected
    assert matches(name, tuple(patterns)) == expected  # again, from the cache


def test_prefix_patterns_take_the_prefix_path() -> None:
    assert matches("tap0a1b", ("tap*",)) and matches("vhu9", ("tap*", "vhu*"))
    assert not matches("eth0", ("tap*", "vhu*")) and not matches("ta", ("tap*",))
    assert _PREFIXES[("tap*", "vhu*")] == ("tap", "vhu")
    assert matches("tapx", ("tap?",)) and _PREFIXES[("tap?",)] is None  # fnmatch's
    assert matches("tap[1]", ("tap[[]1]",)) and not matches("tap1", ("tap[[]1]",))
