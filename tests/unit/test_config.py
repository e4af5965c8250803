"""Tests of the configuration layer (l3hostd.config, l3hostd.cli_check).

Most error cases are golden files: ``configs/bad/X.yaml`` must fail with exactly the lines
in ``configs/bad/X.err`` (the file name written as ``{file}``), and every
``configs/good/*.yaml`` must load. To rewrite the .err files after a deliberate message
change, run with ``L3HOSTD_UPDATE_GOLDEN=1`` and review the diff.
"""

from __future__ import annotations

import json
import os
import re
from ipaddress import IPv4Address, IPv6Address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from l3hostd.cli_check import check_config
from l3hostd.config import (
    Config,
    ConfigError,
    HostPort,
    PeerConfig,
    load_config,
    parse_community,
    parse_config,
    read_password,
    route_table_id,
)

HERE = Path(__file__).parent
GOOD = sorted((HERE / "configs" / "good").glob("*.yaml"))
BAD = sorted((HERE / "configs" / "bad").glob("*.yaml"))
EXAMPLE = HERE.parents[1] / "config" / "l3hostd.example.yaml"

NODE = {"name": "hv1", "router_id": "192.0.2.11", "asn": 65501}


def _errors_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    prefix = f"{path}: "
    lines = []
    for line in info.value.errors:
        assert line.startswith(prefix), line
        assert "\n" not in line
        lines.append("{file}: " + line[len(prefix) :])
    return "\n".join(lines) + "\n"


def _errors(data: object) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data, "t.yaml")
    return info.value.errors


# --------------------------------------------------------------------------- golden files


def test_corpus_is_there() -> None:
    assert len(GOOD) >= 3
    assert len(BAD) >= 12


@pytest.mark.parametrize("path", GOOD, ids=[p.stem for p in GOOD])
def test_good_configs_load(path: Path) -> None:
    assert isinstance(load_config(path), Config)


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_configs_fail_with_golden_errors(path: Path) -> None:
    got = _errors_of(path)
    golden = path.with_suffix(".err")
    if os.environ.get("L3HOSTD_UPDATE_GOLDEN"):
        golden.write_text(got)
    assert golden.exists(), f"missing {golden.name}; run with L3HOSTD_UPDATE_GOLDEN=1"
    assert got == golden.read_text()


def test_every_golden_file_has_its_config() -> None:
    for err in (HERE / "configs" / "bad").glob("*.err"):
        assert err.with_suffix(".yaml").exists(), err.name


# ------------------------------------------------------------------------------ example


def test_example_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.node.name == "hv1"
    assert [p.name for p in cfg.bgp.peers] == ["rr1", "rr2"]


def _keys_of(model: type[BaseModel]) -> dict[str, Any]:
    """Every key a model accepts, as written in YAML, mapped to the nested model if any."""
    from l3hostd.config import _model_in

    return {f.alias or n: _model_in(f.annotation) for n, f in model.model_fields.items()}


def _missing_keys(model: type[BaseModel], data: Any, path: str) -> list[str]:
    missing: list[str] = []
    assert isinstance(data, dict), path
    for key, sub in _keys_of(model).items():
        if key not in data:
            missing.append(f"{path}{key}")
        elif sub is not None:
            items = data[key] if isinstance(data[key], list) else [data[key]]
            assert items, f"{path}{key} is an empty list"
            missing += _missing_keys(sub, items[0], f"{path}{key}.")
    return missing


def test_example_sets_every_key() -> None:
    data = yaml.safe_load(EXAMPLE.read_text())
    assert _missing_keys(Config, data, "") == []


def test_example_comments_every_key() -> None:
    lines = EXAMPLE.read_text().splitlines()
    key_re = re.compile(r"^\s*(?:- )?([a-z_]+):")
    commented: dict[str, bool] = {}
    for index, line in enumerate(lines):
        match = key_re.match(line)
        if not match:
            continue
        above = lines[index - 1].strip() if index else ""
        has_comment = above.startswith(("#", "- #")) or "#" in line
        key = match.group(1)
        commented[key] = commented.get(key, False) or has_comment
    assert commented
    assert [k for k, ok in commented.items() if not ok] == []


def test_example_uses_documentation_addresses() -> None:
    doc_nets = [ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32")]
    text = EXAMPLE.read_text()
    cfg = load_config(EXAMPLE)
    addresses: list[IPv4Address | IPv6Address] = [cfg.node.router_id]
    for peer in cfg.bgp.peers:
        addresses.append(peer.address)
        if peer.source_address is not None:
            addresses.append(peer.source_address)
    for address in addresses:
        assert any(address in net for net in doc_nets if net.version == address.version)
    assert "10.255." not in text


# ----------------------------------------------------------------------------- defaults


def test_minimal_config_defaults() -> None:
    cfg = parse_config({"node": NODE})
    assert cfg.node.router_id == IPv4Address("192.0.2.11")
    assert cfg.bgp.hold_time == 90
    assert cfg.bgp.keepalive_time == 30
    assert cfg.bgp.connect_retry_time == 5
    assert cfg.bgp.graceful_restart.enabled is True
    assert cfg.bgp.graceful_restart.restart_time == 120
    assert cfg.bgp.export.interfaces == ("tap*",)
    assert cfg.bgp.export.communities == ()
    assert cfg.bgp.import_.accept == ()
    assert cfg.bgp.import_.allow_default is False
    assert cfg.bgp.import_.max_prefixes == 500_000
    assert cfg.bgp.import_.table_id == 254
    assert cfg.bgp.peers == ()
    assert cfg.endpoints.directory == Path("/var/lib/l3hostd/endpoints")
    assert cfg.endpoints.interface_patterns == ("tap*",)
    assert cfg.endpoints.rescan_interval == 60
    assert cfg.dataplane.resync_interval == 90
    assert cfg.dataplane.table_id == 254
    assert cfg.dataplane.ipv6_gateway is True
    assert cfg.firewall.enabled is True
    assert cfg.firewall.host_allow.dhcp and cfg.firewall.host_allow.dns
    assert cfg.firewall.host_allow.metadata
    assert cfg.firewall.metadata_address == HostPort(IPv4Address("127.0.0.1"), 8775)
    assert cfg.metrics.listen == HostPort(IPv4Address("127.0.0.1"), 9469)
    assert cfg.control.socket == Path("/run/l3hostd/control.sock")
    assert cfg.logging.level == "info"
    assert cfg.logging.format == "text"


def test_peer_defaults() -> None:
    cfg = parse_config(
        {"node": NODE, "bgp": {"peers": [{"name": "rr1", "address": "192.0.2.1", "asn": 1}]}}
    )
    (peer,) = cfg.bgp.peers
    assert peer.port == 179
    assert peer.multihop is True
    assert peer.source_address is None
    assert peer.password_file is None
    assert peer.families == ("ipv4", "ipv6")
    assert peer.add_path_receive is True
    assert peer.hold_time is None and peer.keepalive_time is None
    assert cfg.bgp.hold_time_for(peer) == 90
    assert cfg.bgp.keepalive_time_for(peer) == 30


def test_per_peer_timer_overrides() -> None:
    cfg = load_config(EXAMPLE)
    rr1, rr2 = cfg.bgp.peers
    assert (cfg.bgp.hold_time_for(rr1), cfg.bgp.keepalive_time_for(rr1)) == (90, 30)
    assert (cfg.bgp.hold_time_for(rr2), cfg.bgp.keepalive_time_for(rr2)) == (30, 10)


def test_hold_time_zero_allows_any_keepalive() -> None:
    cfg = parse_config({"node": NODE, "bgp": {"hold_time": 0, "keepalive_time": 100}})
    assert cfg.bgp.hold_time == 0


def test_full_config_values() -> None:
    cfg = load_config(HERE / "configs" / "good" / "full.yaml")
    assert cfg.node.asn == 4200000001
    assert cfg.bgp.import_.table == 100
    assert cfg.bgp.import_.table_id == 100
    assert cfg.dataplane.table_id == 255
    assert cfg.bgp.peers[1].address == IPv6Address("2001:db8::2")
    assert cfg.bgp.peers[0].password_file == Path("/etc/l3hostd/rr1.password")
    assert cfg.metrics.listen == HostPort(IPv6Address("::"), 0)
    assert str(cfg.firewall.metadata_address) == "[2001:db8::7]:80"
    assert cfg.endpoints.rescan_interval == 0.5
    assert cfg.logging.format == "json"


# ------------------------------------------------------------------------------ helpers


@pytest.mark.parametrize(
    ("table", "number"),
    [("main", 254), ("local", 255), ("default", 253), (1, 1), (100, 100), (4294967294, 4294967294)],
)
def test_route_table_id(table: str | int, number: int) -> None:
    assert route_table_id(table) == number
    cfg = parse_config({"node": NODE, "dataplane": {"route_table": table}})
    assert cfg.dataplane.table_id == number


def test_host_port_str() -> None:
    assert str(HostPort(IPv4Address("127.0.0.1"), 9469)) == "127.0.0.1:9469"
    assert str(HostPort(IPv6Address("::1"), 9469)) == "[::1]:9469"


def test_listen_ipv6() -> None:
    cfg = parse_config({"node": NODE, "metrics": {"listen": "[::1]:9469"}})
    assert cfg.metrics.listen.host == IPv6Address("::1")
    assert cfg.metrics.listen.port == 9469


def test_communities_normalised_and_split() -> None:
    cfg = parse_config(
        {"node": NODE, "bgp": {"export": {"communities": ["065501:0100", "1:2:3", "0:0"]}}}
    )
    export = cfg.bgp.export
    assert export.communities == ("65501:100", "1:2:3", "0:0")
    assert export.standard_communities == ((65501, 100), (0, 0))
    assert export.large_communities == ((1, 2, 3),)


@pytest.mark.parametrize("text", ["1", "1:2:3:4", "65536:0", "a:b", "1:", ":1", "-1:1", "1:2:x"])
def test_parse_community_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_community(text)


def test_unquoted_community_stays_a_string(tmp_path: Path) -> None:
    # YAML 1.1 would read 65501:10 as the base-60 integer 3930070.
    path = tmp_path / "c.yaml"
    path.write_text(
        "node: {name: hv1, router_id: 192.0.2.11, asn: 65501}\n"
        "bgp: {export: {communities: [65501:10, 1:30]}}\n"
    )
    assert load_config(path).bgp.export.communities == ("65501:10", "1:30")


def test_read_password(tmp_path: Path) -> None:
    path = tmp_path / "pw"
    path.write_bytes(b"s3cret\n")
    assert read_password(path) == b"s3cret"
    peer = PeerConfig.model_validate(
        {"name": "rr1", "address": "192.0.2.1", "asn": 1, "password_file": str(path)}
    )
    assert peer.read_password() == b"s3cret"
    no_pw = PeerConfig.model_validate({"name": "rr1", "address": "192.0.2.1", "asn": 1})
    assert no_pw.read_password() is None


def test_read_password_errors(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as info:
        read_password(missing)
    assert info.value.errors == [f"{missing}: cannot read password file: No such file or directory"]
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n")
    with pytest.raises(ConfigError, match="password file is empty"):
        read_password(empty)
    long = tmp_path / "long"
    long.write_bytes(b"x" * 81)
    with pytest.raises(ConfigError, match="81 bytes, TCP-MD5 allows at most 80"):
        read_password(long)


def test_password_file_not_read_at_validation() -> None:
    cfg = parse_config(
        {
            "node": NODE,
            "bgp": {
                "peers": [
                    {
                        "name": "rr1",
                        "address": "192.0.2.1",
                        "asn": 1,
                        "password_file": "/nonexistent/rr1.pw",
                    }
                ]
            },
        }
    )
    assert cfg.bgp.peers[0].password_file == Path("/nonexistent/rr1.pw")


# ------------------------------------------------------------------------ value semantics


def test_configs_are_frozen_hashable_and_comparable() -> None:
    a = load_config(EXAMPLE)
    b = load_config(EXAMPLE)
    assert a == b
    assert hash(a) == hash(b)
    assert a.bgp.peers[0] == b.bgp.peers[0]
    assert {a.bgp.peers[0], b.bgp.peers[0]} == {a.bgp.peers[0]}
    with pytest.raises(ValidationError):
        setattr(a.node, "name", "other")  # noqa: B010 - the assignment must be dynamic


def test_round_trip_through_json() -> None:
    cfg = load_config(HERE / "configs" / "good" / "full.yaml")
    dumped = json.loads(cfg.model_dump_json(by_alias=True))
    assert dumped["bgp"]["import"]["table"] == 100
    assert parse_config(dumped) == cfg


# ------------------------------------------------------------------------- error details


def test_parse_config_default_source() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({})
    assert info.value.errors == ["<config>: node: required"]
    assert str(info.value) == "<config>: node: required"


def test_error_value_is_truncated() -> None:
    (line,) = _errors({"node": NODE, "logging": {"level": "x" * 200}})
    assert line.endswith("...)")
    assert len(line) < 160


def test_all_errors_reported_at_once() -> None:
    errors = _errors(
        {
            "node": {"name": "hv1", "router_id": "bad", "asn": 0},
            "bgp": {"hold_time": 1},
            "logging": {"level": "loud"},
        }
    )
    assert [e.split(": ")[1] for e in errors] == [
        "node.router_id",
        "node.asn",
        "bgp.hold_time",
        "logging.level",
    ]


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.errors == [f"{missing}: cannot read: No such file or directory"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"node: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == [f"{path}: not UTF-8 text (byte 6)"]


def test_python_tags_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "tag.yaml"
    path.write_text("node: !!python/object/apply:os.system [true]\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    (line,) = info.value.errors
    assert line.startswith(f"{path}: line 1, column 7: could not determine a constructor")


# -------------------------------------------------------------------------- check-config


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config(str(EXAMPLE)) == 0
    assert capsys.readouterr().out == "OK\n"


def test_check_config_errors(capsys: pytest.CaptureFixture[str]) -> None:
    path = HERE / "configs" / "bad" / "unknown_key_top.yaml"
    assert check_config(str(path)) == 2
    out = capsys.readouterr().out
    expected = path.with_suffix(".err").read_text().replace("{file}", str(path))
    assert out == expected


def test_check_config_missing_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert check_config(str(tmp_path / "x.yaml")) == 2
    assert "cannot read" in capsys.readouterr().out
