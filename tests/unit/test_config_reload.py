"""The reload plan (l3hostd.reload, pure) and the Adj-RIB-In refilter it relies on."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network, ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest

from l3hostd.bgp.messages import PathAttributes, Route, Update
from l3hostd.bgp.rib import AdjRibIn, ImportPolicy, prefix_key, refilter
from l3hostd.config import parse_config, to_settings
from l3hostd.reload import LIVE, _leaves, import_policy, plan, policy_widens
from l3hostd.settings import Config

NODE = {"name": "hv1", "router_id": "192.0.2.11", "asn": 65501}
RR1 = {"name": "rr1", "address": "192.0.2.1", "asn": 65501, "source_address": "192.0.2.11"}
RR2 = {"name": "rr2", "address": "192.0.2.2", "asn": 65501, "source_address": "192.0.2.11"}


def cfg(**sections: Any) -> Config:
    data: dict[str, Any] = {"node": NODE, "bgp": {"peers": [RR1, RR2]}}
    for key, value in sections.items():
        if key == "bgp":
            data["bgp"] = {**data["bgp"], **value}
        else:
            data[key] = value
    return to_settings(parse_config(data))


def test_live_paths_are_real_settings() -> None:
    paths = set(dict(_leaves(cfg(), "")))
    assert paths >= LIVE, LIVE - paths
    assert "bgp.import.accept" in paths and "bgp.peers" in paths


def test_the_same_config_changes_nothing() -> None:
    p = plan(cfg(), cfg())
    assert (p.rejected, p.changes, p.added, p.removed, p.restarted) == ((), (), (), (), ())
    assert not p.changed_paths


def test_added_and_removed_peers_leave_the_unchanged_one_alone() -> None:
    rr3 = {**RR2, "name": "rr3", "address": "192.0.2.3"}
    p = plan(cfg(), cfg(bgp={"peers": [RR1, rr3]}))
    assert [peer.name for peer in p.removed] == ["rr2"]
    assert [peer.name for peer in p.added] == ["rr3"]
    assert p.restarted == ()
    assert p.changes == ("peer rr2 (192.0.2.2): removed", "peer rr3 (192.0.2.3): added")
    assert not p.rejected


def test_a_changed_peer_is_restarted_with_its_reasons() -> None:
    changed = {**RR2, "hold_time": 30, "keepalive_time": 10, "families": ["ipv4"]}
    p = plan(cfg(), cfg(bgp={"peers": [RR1, changed]}))
    (restart,) = p.restarted
    assert restart.old.name == restart.new.name == "rr2"
    assert restart.reasons == ("families [ipv4, ipv6] -> [ipv4]", "hold_time 90 -> 30",
                               "keepalive_time 30 -> 10")
    assert p.changes == ("peer rr2 (192.0.2.2): restarting the session: families "
                         "[ipv4, ipv6] -> [ipv4]; hold_time 90 -> 30; keepalive_time 30 -> 10",)


def test_a_global_timer_restarts_only_the_peers_it_applies_to() -> None:
    own = {**RR2, "hold_time": 30, "keepalive_time": 10}
    p = plan(cfg(bgp={"peers": [RR1, own]}),
             cfg(bgp={"hold_time": 60, "keepalive_time": 20, "peers": [RR1, own]}))
    assert [r.new.name for r in p.restarted] == ["rr1"]
    assert p.restarted[0].reasons == ("hold_time 90 -> 60", "keepalive_time 30 -> 20")
    assert "bgp.hold_time: 90 -> 60" in p.changes


def test_graceful_restart_and_connect_retry_reach_every_session() -> None:
    p = plan(cfg(), cfg(bgp={"graceful_restart": {"restart_time": 60}}))
    assert [r.new.name for r in p.restarted] == ["rr1", "rr2"]
    assert p.restarted[0].reasons == ("bgp.graceful_restart.restart_time 120 -> 60",)


def test_asn_source_port_multihop_add_path_name_each_restart() -> None:
    for key, value in (("asn", 65502), ("source_address", None), ("port", 1179),
                       ("multihop", False), ("add_path_receive", False), ("name", "spine1"),
                       ("password_file", "/etc/l3hostd/rr2.pw")):
        p = plan(cfg(), cfg(bgp={"peers": [RR1, {**RR2, key: value}]}))
        assert [r.old.name for r in p.restarted] == ["rr2"], key
        assert p.restarted[0].reasons[0].startswith(f"{key} "), p.restarted[0].reasons


def test_a_new_password_in_the_same_file_restarts_the_session() -> None:
    address = ip_address("192.0.2.2")
    p = plan(cfg(), cfg(), old_passwords={address: b"old"}, new_passwords={address: b"new"})
    assert [r.new.name for r in p.restarted] == ["rr2"]
    assert p.restarted[0].reasons == ("TCP-MD5 password changed",)
    assert "old" not in p.changes[0] and "new" not in p.changes[0].split(":")[-1]
    same = plan(cfg(), cfg(), old_passwords={address: b"k"}, new_passwords={address: b"k"})
    assert same.restarted == ()


def test_filters_exports_and_logging_apply_without_a_restart() -> None:
    new = cfg(bgp={"import": {"reject": ["10.0.0.0/8"], "max_prefixes": 10},
                   "export": {"communities": ["65501:7"], "interfaces": ["tap*", "cali*"]}},
              logging={"level": "debug"}, dataplane={"resync_interval": 30},
              endpoints={"rescan_interval": 5})
    p = plan(cfg(), new)
    assert not p.rejected and p.restarted == ()
    assert p.changes == (
        "bgp.export.communities: [] -> [65501:7]",
        "bgp.export.interfaces: [tap*] -> [tap*, cali*]",
        "bgp.import.max_prefixes: 500000 -> 10",
        "bgp.import.reject: [] -> [10.0.0.0/8]",
        "dataplane.resync_interval: 90 -> 30",
        "endpoints.rescan_interval: 60 -> 5",
        "logging.level: info -> debug",
    )
    assert p.changed("bgp.export.interfaces") and p.bgp_changed


def test_restart_only_settings_reject_the_whole_reload() -> None:
    new = cfg(node={**NODE, "router_id": "192.0.2.12"}, control={"socket": "/run/x.sock"},
              firewall={"enabled": False},
              bgp={"import": {"table": 100}, "peers": [RR1]})
    p = plan(cfg(), new)
    assert p.rejected == (
        "bgp.import.table cannot change without a restart (running: main, new: 100): the "
        "learned routes would have to move between tables",
        "control.socket cannot change without a restart (running: /run/l3hostd/control.sock, "
        "new: /run/x.sock): l3hostctl would lose the daemon",
        "firewall.enabled cannot change without a restart (running: true, new: false)",
        "node.router_id cannot change without a restart (running: 192.0.2.11, new: "
        "192.0.2.12): every session would reset; restart with graceful restart instead",
    )
    assert p.changes == () and p.removed == ()  # nothing of it is applied


def test_a_setting_unknown_to_the_reload_is_restart_only() -> None:
    # the firewall's and dataplane's settings are not applied live (yet): refused, never
    # silently ignored
    for section, value in (("dataplane", {"route_table": 100}),
                           ("endpoints", {"directory": "/srv/endpoints"}),
                           ("metrics", {"listen": "127.0.0.1:9470"})):
        p = plan(cfg(), cfg(**{section: value}))
        assert len(p.rejected) == 1 and "cannot change without a restart" in p.rejected[0]
    p = plan(cfg(), cfg(metrics={"listen": "[::1]:9470"}))
    assert p.rejected == ("metrics.listen cannot change without a restart (running: "
                          "127.0.0.1:9469, new: [::1]:9470)",)


def test_starting_bgp_needs_a_restart() -> None:
    without = to_settings(parse_config({"node": NODE}))
    p = plan(without, cfg(), bgp_running=False)
    assert p.rejected == ("bgp.peers: the daemon was started without BGP peers; starting "
                          "BGP needs a restart",)
    assert plan(without, without, bgp_running=False).rejected == ()


# ------------------------------------------------------------------------- import policy


def policy(**kw: Any) -> ImportPolicy:
    for key in ("accept", "reject"):
        if key in kw:
            kw[key] = tuple(ip_network(n) for n in kw[key])
    return ImportPolicy(**kw)


@pytest.mark.parametrize(("old", "new"), [
    ({}, {"reject": ["10.1.0.0/16"]}),  # reject more
    ({"reject": ["10.1.0.0/16"]}, {"reject": ["10.0.0.0/8"]}),  # a wider reject
    ({}, {"accept": ["10.0.0.0/8"]}),  # accept only a part
    ({"accept": ["10.0.0.0/8"]}, {"accept": ["10.1.0.0/16"]}),  # a narrower accept
    ({"allow_default": True}, {}),  # no more default
    ({}, {"own_addresses": frozenset({ip_address("192.0.2.11")})}),
])
def test_narrowing_needs_no_refresh(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert not policy_widens(policy(**old), policy(**new))


@pytest.mark.parametrize(("old", "new"), [
    ({"reject": ["10.1.0.0/16"]}, {}),  # reject less
    ({"reject": ["10.0.0.0/8"]}, {"reject": ["10.1.0.0/16"]}),
    ({"accept": ["10.1.0.0/16"]}, {}),  # accept everything
    ({"accept": ["10.1.0.0/16"]}, {"accept": ["10.0.0.0/8"]}),
    ({}, {"allow_default": True}),
    ({"own_addresses": frozenset({ip_address("192.0.2.11")})}, {}),
])
def test_widening_needs_a_refresh(old: dict[str, Any], new: dict[str, Any]) -> None:
    assert policy_widens(policy(**old), policy(**new))


def test_import_policy_from_settings() -> None:
    p = import_policy(cfg(bgp={"import": {"accept": ["10.0.0.0/8"], "allow_default": True}}))
    assert p.accept == (IPv4Network("10.0.0.0/8"),) and p.allow_default
    assert p.router_id == IPv4Address("192.0.2.11")
    assert p.own_addresses == frozenset({ip_address("192.0.2.11")})


def _route(prefix: str, nh: str, pid: int = 0) -> Route:
    return Route(ip_network(prefix), pid, ip_address(nh), PathAttributes())


def _rib() -> AdjRibIn:
    rib = AdjRibIn(policy=ImportPolicy(router_id=IPv4Address("10.0.0.1")))
    rib.add_peer("rr1")
    rib.add_peer("rr2")
    rib.apply_update("rr1", Update(announced=(
        _route("10.1.0.1/32", "100.64.2.1", 1), _route("10.1.0.1/32", "100.64.3.1", 2),
        _route("10.2.0.1/32", "100.64.2.1", 3), _route("10.3.0.1/32", "100.64.1.1", 4))))
    rib.apply_update("rr2", Update(announced=(_route("10.1.0.1/32", "100.64.2.1", 7),)))
    return rib


def test_refilter_drops_what_the_new_policy_refuses_and_counts_it() -> None:
    rib = _rib()
    assert rib.peers["rr1"].count == 4
    delta = refilter(rib, ImportPolicy(router_id=IPv4Address("10.0.0.1"),
                                       reject=(ip_network("10.1.0.0/16"),)))
    assert {k: new for k, (_old, new) in delta.items()} == {
        prefix_key(ip_network("10.1.0.1/32")): None}
    assert rib.peers["rr1"].count == 2 and rib.peers["rr2"].count == 0
    assert rib.peers["rr1"].filtered == 2 and rib.peers["rr2"].filtered == 1
    assert set(rib.selected) == {prefix_key(ip_network(p)) for p in ("10.2.0.1/32", "10.3.0.1/32")}
    # a path check: our own address as next hop is refused now
    delta = refilter(rib, dataclasses.replace(
        rib.policy, own_addresses=frozenset({ip_address("100.64.1.1")})))
    assert {k: new for k, (_old, new) in delta.items()} == {
        prefix_key(ip_network("10.3.0.1/32")): None}
    assert rib.peers["rr1"].count == 1


def test_refilter_with_an_ecmp_path_left_changes_the_selection() -> None:
    rib = _rib()
    delta = refilter(rib, dataclasses.replace(
        rib.policy, own_addresses=frozenset({ip_address("100.64.3.1")})))
    key = prefix_key(ip_network("10.1.0.1/32"))
    assert set(delta) == {key}
    old, new = delta[key]
    assert old is not None and new is not None
    assert [str(h) for h in rib.ecmp_next_hops(old)] == ["100.64.2.1", "100.64.3.1"]
    assert [str(h) for h in rib.ecmp_next_hops(new)] == ["100.64.2.1"]


def test_refilter_with_the_same_or_a_wider_policy_changes_nothing() -> None:
    rib = _rib()
    before = dict(rib.paths)
    assert refilter(rib, rib.policy) == {}
    assert refilter(rib, dataclasses.replace(rib.policy, allow_default=True)) == {}
    assert rib.paths == before


def test_refilter_keeps_stale_paths_counts_straight() -> None:
    rib = _rib()
    rib.mark_stale("rr2")
    refilter(rib, dataclasses.replace(rib.policy, reject=(ip_network("10.0.0.0/8"),)))
    assert rib.paths == {}
    assert rib.peers["rr1"].count == 0 and rib.peers["rr2"].count == 0
    assert rib.sweep_stale("rr2") == {}


def test_example_file_unchanged_reload() -> None:
    from l3hostd.config import load_settings

    example = Path(__file__).resolve().parents[2] / "config" / "l3hostd.example.yaml"
    assert plan(load_settings(example), load_settings(example)).changes == ()


@pytest.mark.parametrize("module", ["reload.py", "settings.py"])
def test_plan_and_settings_are_pure(module: str) -> None:
    import ast

    source = Path(__file__).resolve().parents[2] / "l3hostd" / module
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    io = {"asyncio", "socket", "subprocess", "os", "pyroute2", "exabgp", "pydantic", "yaml"}
    assert not imported & io
