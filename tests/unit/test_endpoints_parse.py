"""Endpoint, security-group and group-member file parsing (pure: bytes in, model out)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from pathlib import Path

import pytest

from l3hostd.endpoints.parse import (
    EndpointFileError,
    GroupMembers,
    parse_endpoint,
    parse_group_members,
    parse_security_group,
)
from l3hostd.model import Direction, EtherType, SecurityGroupRule

GOOD = b"""\
id: 8a3f1c2d-4e5b-4c8e-9a61-2f0b7c3d9e10   # Neutron port id
interface: tap8a3f1c2d-4e
mac: "FA:16:3E:12:34:56"
ips: [192.0.2.10, "2001:db8::10"]
allowed_address_pairs: [192.0.2.64/28, 198.51.100.7, "2001:db8:1::/64"]
security_groups: [default, web]
"""

MINIMAL = {
    "id": "port-1",
    "interface": "tap-port-1",
    "mac": "fa:16:3e:00:00:01",
    "ips": ["192.0.2.1"],
}


def dump(doc: object) -> bytes:
    return json.dumps(doc).encode()


def error_of(
    data: bytes, filename: str = "ep.yaml", parse: Callable[[bytes, str], object] = parse_endpoint
) -> EndpointFileError:
    with pytest.raises(EndpointFileError) as info:
        parse(data, filename)
    return info.value


# ----------------------------------------------------------------------------- endpoints


def test_good_endpoint() -> None:
    ep = parse_endpoint(GOOD, "tap8a3f1c2d-4e.yaml")
    assert ep.id == "8a3f1c2d-4e5b-4c8e-9a61-2f0b7c3d9e10"
    assert ep.interface == "tap8a3f1c2d-4e"
    assert ep.mac == "fa:16:3e:12:34:56"  # normalised to lower case
    assert ep.ips == (IPv4Address("192.0.2.10"), IPv6Address("2001:db8::10"))
    assert ep.allowed_address_pairs == (
        IPv4Network("192.0.2.64/28"),
        IPv4Network("198.51.100.7/32"),  # a bare IP is a /32
        IPv6Network("2001:db8:1::/64"),
    )
    assert ep.security_groups == ("default", "web")
    hash(ep)  # frozen, usable as a key


def test_optional_keys_default_empty() -> None:
    ep = parse_endpoint(dump(MINIMAL), "ep.json")
    assert ep.allowed_address_pairs == ()
    assert ep.security_groups == ()


def test_duplicates_are_dropped_in_order() -> None:
    doc = {
        **MINIMAL,
        "ips": ["192.0.2.2", "192.0.2.1", "192.0.2.2"],
        "security_groups": ["web", "default", "web"],
        "allowed_address_pairs": ["192.0.2.9", "192.0.2.9/32"],
    }
    ep = parse_endpoint(dump(doc), "ep.json")
    assert ep.ips == (IPv4Address("192.0.2.2"), IPv4Address("192.0.2.1"))
    assert ep.security_groups == ("web", "default")
    assert ep.allowed_address_pairs == (IPv4Network("192.0.2.9/32"),)


def test_json_file_is_read_as_json() -> None:
    ep = parse_endpoint(dump(MINIMAL), "x.json")
    assert ep.id == "port-1"
    # The same text in a .yaml file parses too (JSON is YAML) ...
    assert parse_endpoint(dump(MINIMAL), "x.yaml") == ep
    # ... but YAML is not JSON.
    err = error_of(GOOD, "x.json")
    assert "invalid JSON" in str(err)


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"id": None}, "id", "must be a string"),
        ({"id": ""}, "id", "must not be empty"),
        ({"id": 12}, "id", "must be a string"),
        ({"id": "a b"}, "id", "whitespace"),
        ({"mac": "fa:16:3e:12:34"}, "mac", "not a MAC address"),
        ({"mac": "fa-16-3e-12-34-56"}, "mac", "not a MAC address"),
        ({"mac": "zz:16:3e:12:34:56"}, "mac", "not a MAC address"),
        ({"mac": "01:00:5e:00:00:01"}, "mac", "multicast"),
        ({"mac": "00:00:00:00:00:00"}, "mac", "all-zero"),
        ({"interface": "tap123456789012345"}, "interface", "1..15 bytes"),
        ({"interface": ""}, "interface", "1..15 bytes"),
        ({"interface": "tap/1"}, "interface", "not a Linux interface name"),
        ({"interface": "tap 1"}, "interface", "not a Linux interface name"),
        ({"interface": "tap:1"}, "interface", "not a Linux interface name"),
        ({"interface": ".."}, "interface", "not a Linux interface name"),
        ({"interface": ["tap1"]}, "interface", "must be a string"),
        ({"ips": []}, "ips", "at least one"),
        ({"ips": "192.0.2.1"}, "ips", "must be a list"),
        ({"ips": ["192.0.2.1", "192.0.2.300"]}, "ips[1]", "not an IP address"),
        ({"ips": ["192.0.2.0/24"]}, "ips[0]", "not an IP address (a prefix?)"),
        ({"ips": ["0.0.0.0"]}, "ips[0]", "unspecified"),
        ({"ips": ["127.0.0.1"]}, "ips[0]", "loopback"),
        ({"ips": ["224.0.0.1"]}, "ips[0]", "multicast"),
        ({"ips": ["fe80::1"]}, "ips[0]", "link-local"),
        ({"ips": ["::ffff:192.0.2.1"]}, "ips[0]", "IPv4-mapped"),
        ({"ips": [3221225985]}, "ips[0]", "must be a string"),
        ({"allowed_address_pairs": ["192.0.2.1/24"]}, "allowed_address_pairs[0]", "host bits"),
        ({"allowed_address_pairs": ["192.0.2.0/33"]}, "allowed_address_pairs[0]", "prefix"),
        ({"allowed_address_pairs": ["nonsense"]}, "allowed_address_pairs[0]", "not an IP"),
        ({"allowed_address_pairs": "192.0.2.1"}, "allowed_address_pairs", "must be a list"),
        ({"security_groups": "web"}, "security_groups", "must be a list"),
        ({"security_groups": [""]}, "security_groups[0]", "must not be empty"),
        ({"security_groups": [7]}, "security_groups[0]", "must be a string"),
        ({"colour": "red"}, "colour", "unknown key"),
    ],
)
def test_bad_endpoint_fields(change: dict[str, object], field: str, message: str) -> None:
    doc = {**MINIMAL, **change}
    err = error_of(dump(doc), "ep.json")
    assert err.filename == "ep.json"
    assert err.field_path == field
    assert message in err.message
    line = str(err)
    assert line.startswith(f"ep.json: {field}: ")
    assert "\n" not in line


@pytest.mark.parametrize("key", ["id", "interface", "mac", "ips"])
def test_missing_required_key(key: str) -> None:
    doc = {k: v for k, v in MINIMAL.items() if k != key}
    err = error_of(dump(doc), "ep.json")
    assert str(err) == f"ep.json: {key}: required key missing"


def test_error_line_format_with_value() -> None:
    err = error_of(GOOD.replace(b'"FA:16:3E:12:34:56"', b'"fa:16:3e:zz:34:56"'), "t.yaml")
    assert str(err) == (
        "t.yaml: mac: not a MAC address (expected six hex octets like fa:16:3e:12:34:56) "
        "(got 'fa:16:3e:zz:34:56')"
    )


def test_long_value_is_truncated_and_one_line() -> None:
    err = error_of(dump({**MINIMAL, "id": "x\n" * 200}), "ep.json")
    line = str(err)
    assert "\n" not in line
    assert len(line) < 200


def test_unquoted_mac_read_as_base60_number() -> None:
    err = error_of(GOOD.replace(b'"FA:16:3E:12:34:56"', b"10:16:33:12:34:56"))
    assert err.field_path == "mac"
    assert "quoted" in err.message


def test_wrong_types() -> None:
    assert error_of(dump({**MINIMAL, "ips": [["192.0.2.1"]]}), "e.json").field_path == "ips[0]"
    err = error_of(b"- a\n- b\n")
    assert str(err) == "ep.yaml: top level must be a mapping, not a list (got ['a', 'b'])"
    err = error_of(b"just a string\n")
    assert "top level must be a mapping" in str(err)


@pytest.mark.parametrize("data", [b"", b"   \n\n", b"\x00"[:0]])
def test_empty_file(data: bytes) -> None:
    assert str(error_of(data)) == "ep.yaml: empty file (half-written?)"


def test_comment_only_document() -> None:
    assert str(error_of(b"# nothing yet\n")) == "ep.yaml: empty document (half-written?)"


def test_truncated_yaml() -> None:
    # Cut inside a flow list: a syntax error.
    cut = GOOD[: GOOD.index(b"2001:db8::10")]
    err = error_of(cut)
    assert err.field_path == ""
    assert "invalid YAML at line" in err.message
    # Cut between keys: still valid YAML, but keys are missing.
    err = error_of(GOOD[: GOOD.index(b"mac:")])
    assert str(err) == "ep.yaml: mac: required key missing"


def test_truncated_json() -> None:
    data = dump(MINIMAL)
    err = error_of(data[: len(data) // 2], "ep.json")
    assert "invalid JSON at line 1" in str(err)


def test_duplicate_keys_rejected() -> None:
    err = error_of(GOOD + b"id: other\n")
    assert err.field_path == "id"
    assert "key given twice" in err.message
    err = error_of(b'{"id": "a", "id": "b"}', "ep.json")
    assert str(err) == "ep.json: id: key given twice"


def test_not_utf8() -> None:
    assert "not UTF-8" in str(error_of(b"id: \xff\xfe\n"))


def test_yaml_python_tags_are_not_executed() -> None:
    err = error_of(b"id: !!python/object/apply:os.system ['true']\n")
    assert "invalid YAML" in str(err)


# ----------------------------------------------------------------------------- groups

WEB = b"""\
name: web
description: HTTPS from anywhere, SSH from the jump hosts
rules:
  - {direction: ingress, protocol: tcp, port_range_min: 443, port_range_max: 443}
  - {direction: ingress, ethertype: IPv6, protocol: tcp, port_range_min: 443}
  - {direction: ingress, protocol: tcp, port_range_min: 22, remote_ip_prefix: 198.51.100.0/24}
  - {direction: ingress, protocol: 6, port_range_min: 8080, port_range_max: 8081,
     remote_group: web}
  - {direction: ingress, protocol: icmp, icmp_type: 8, icmp_code: 0}
  - {direction: ingress, ethertype: ipv6, protocol: ipv6-icmp, icmp_type: 128}
  - {direction: egress}
  - {direction: egress, ethertype: IPv6, protocol: any}
  - {direction: ingress, protocol: 47, remote_ip_prefix: 192.0.2.7}
"""


def test_good_security_group() -> None:
    sg = parse_security_group(WEB, "security-groups/web.yaml")
    assert sg.name == "web"
    v4, v6 = EtherType.IPV4, EtherType.IPV6
    ingress, egress = Direction.INGRESS, Direction.EGRESS
    assert sg.rules == (
        SecurityGroupRule(ingress, v4, "tcp", 443, 443),
        SecurityGroupRule(ingress, v6, "tcp", 443, 443),  # one bound = a single port
        SecurityGroupRule(
            ingress, v4, "tcp", 22, 22, remote_ip_prefix=ip_network("198.51.100.0/24")
        ),
        SecurityGroupRule(ingress, v4, "tcp", 8080, 8081, remote_group="web"),  # 6 -> tcp
        SecurityGroupRule(ingress, v4, "icmp", icmp_type=8, icmp_code=0),
        SecurityGroupRule(ingress, v6, "icmpv6", icmp_type=128),
        SecurityGroupRule(egress, v4),
        SecurityGroupRule(egress, v6, None),  # any -> None
        SecurityGroupRule(ingress, v4, 47, remote_ip_prefix=ip_network("192.0.2.7/32")),
    )


def test_group_without_rules_and_duplicate_rules() -> None:
    assert parse_security_group(b"name: empty\n", "e.yaml").rules == ()
    sg = parse_security_group(
        b"name: d\nrules:\n - {direction: egress}\n - {direction: egress, ethertype: IPv4}\n",
        "d.yaml",
    )
    assert len(sg.rules) == 1


def rule_error(rule: str) -> EndpointFileError:
    data = f"name: g\nrules:\n  - {{direction: egress}}\n  - {rule}\n".encode()
    return error_of(data, "security-groups/g.yaml", parse_security_group)


@pytest.mark.parametrize(
    ("rule", "field", "message"),
    [
        ("{protocol: tcp}", "rules[1].direction", "required key missing"),
        ("{direction: in}", "rules[1].direction", "'ingress' or 'egress'"),
        ("{direction: ingress, ethertype: IPv5}", "rules[1].ethertype", "'IPv4' or 'IPv6'"),
        ("{direction: ingress, protocol: gre}", "rules[1].protocol", "must be tcp, udp"),
        ("{direction: ingress, protocol: 256}", "rules[1].protocol", "0..255"),
        ("{direction: ingress, protocol: true}", "rules[1].protocol", "not a boolean"),
        (
            "{direction: ingress, protocol: tcp, port_range_min: 0}",
            "rules[1].port_range_min",
            "1..65535",
        ),
        (
            "{direction: ingress, protocol: tcp, port_range_max: 65536}",
            "rules[1].port_range_max",
            "1..65535",
        ),
        (
            "{direction: ingress, protocol: tcp, port_range_min: '80'}",
            "rules[1].port_range_min",
            "must be an integer",
        ),
        (
            "{direction: ingress, protocol: tcp, port_range_min: 90, port_range_max: 80}",
            "rules[1].port_range_max",
            "must be >= port_range_min (90)",
        ),
        (
            "{direction: ingress, port_range_min: 80}",
            "rules[1].port_range_min",
            "only with protocol tcp or udp",
        ),
        (
            "{direction: ingress, protocol: icmp, port_range_max: 8}",
            "rules[1].port_range_max",
            "only with protocol tcp or udp",
        ),
        (
            "{direction: ingress, protocol: tcp, icmp_type: 8}",
            "rules[1].icmp_type",
            "only with protocol icmp",
        ),
        ("{direction: ingress, protocol: icmp, icmp_type: 256}", "rules[1].icmp_type", "0..255"),
        (
            "{direction: ingress, protocol: icmp, icmp_code: 0}",
            "rules[1].icmp_code",
            "needs icmp_type",
        ),
        (
            "{direction: ingress, ethertype: IPv6, protocol: icmp}",
            "rules[1].protocol",
            "use icmpv6",
        ),
        ("{direction: ingress, protocol: icmpv6}", "rules[1].protocol", "use icmp"),
        ("{direction: ingress, protocol: 58}", "rules[1].protocol", "use icmp"),
        (
            "{direction: ingress, remote_ip_prefix: 192.0.2.1/24}",
            "rules[1].remote_ip_prefix",
            "host bits set in prefix (did you mean 192.0.2.0/24?)",
        ),
        (
            "{direction: ingress, remote_ip_prefix: '2001:db8::/32'}",
            "rules[1].remote_ip_prefix",
            "does not match ethertype IPv4",
        ),
        (
            "{direction: ingress, ethertype: IPv6, remote_ip_prefix: 192.0.2.0/24}",
            "rules[1].remote_ip_prefix",
            "does not match ethertype IPv6",
        ),
        (
            "{direction: ingress, remote_ip_prefix: 192.0.2.0/24, remote_group: web}",
            "rules[1].remote_group",
            "exclude each other",
        ),
        ("{direction: ingress, remote_group: ''}", "rules[1].remote_group", "must not be empty"),
        ("{direction: ingress, port: 80}", "rules[1].port", "unknown key"),
        ("7", "rules[1]", "must be a mapping"),
    ],
)
def test_bad_rules(rule: str, field: str, message: str) -> None:
    err = rule_error(rule)
    assert err.field_path == field, str(err)
    assert message in err.message, str(err)
    assert str(err).startswith(f"security-groups/g.yaml: {field}: ")


def test_bad_group_documents() -> None:
    assert str(error_of(b"rules: []\n", "g.yaml", parse_security_group)) == (
        "g.yaml: name: required key missing"
    )
    err = error_of(b"name: g\nrules: {direction: egress}\n", "g.yaml", parse_security_group)
    assert err.field_path == "rules"
    assert "must be a list" in err.message
    err = error_of(b"name: g\nrule: []\n", "g.yaml", parse_security_group)
    assert str(err) == "g.yaml: rule: unknown key (got [])"


# ----------------------------------------------------------------------------- members


def test_group_members() -> None:
    data = b"group: web\nips: [192.0.2.20, 192.0.2.20/32, '2001:db8::20', 198.51.100.0/28]\n"
    gm = parse_group_members(data, "group-members/web.yaml")
    assert gm == GroupMembers(
        "web",
        frozenset(
            {
                IPv4Address("192.0.2.20"),  # the /32 spelling is the same member
                IPv6Address("2001:db8::20"),
                IPv4Network("198.51.100.0/28"),
            }
        ),
    )
    assert parse_group_members(b'{"group": "x", "ips": []}', "x.json").members == frozenset()


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"ips: []\n", "m.yaml: group: required key missing"),
        (b"group: web\n", "m.yaml: ips: required key missing"),
        (b"group: web\nips: [192.0.2.1/24]\n", "m.yaml: ips[0]: host bits set"),
        (b"group: web\nips: [bogus]\n", "m.yaml: ips[0]: not an IP address"),
        (b"group: web\nips: []\nmembers: []\n", "m.yaml: members: unknown key"),
    ],
)
def test_bad_group_members(data: bytes, expected: str) -> None:
    assert str(error_of(data, "m.yaml", parse_group_members)).startswith(expected)


# ----------------------------------------------------------------------------- examples, layering

EXAMPLES = Path(__file__).resolve().parents[2] / "config" / "endpoints"


def test_example_files_parse() -> None:
    ep = parse_endpoint((EXAMPLES / "tap8a3f1c2d-4e.yaml").read_bytes(), "tap8a3f1c2d-4e.yaml")
    assert ep.interface == "tap8a3f1c2d-4e"
    groups = {
        name: parse_security_group(
            (EXAMPLES / "security-groups" / f"{name}.yaml").read_bytes(), name
        )
        for name in ("default", "web")
    }
    assert set(groups) == {g.name for g in groups.values()}
    assert set(ep.security_groups) <= set(groups)
    members = parse_group_members((EXAMPLES / "group-members" / "web.yaml").read_bytes(), "web")
    assert members.group == "web"
    documentation = [ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "2001:db8::/32")]
    addresses = [*ep.ips, *(n.network_address for n in ep.allowed_address_pairs)]
    for group in groups.values():
        addresses += [r.remote_ip_prefix.network_address for r in group.rules if r.remote_ip_prefix]
    addresses += [
        m if isinstance(m, IPv4Address | IPv6Address) else m.network_address
        for m in members.members
    ]
    for address in addresses:
        assert any(address in net for net in documentation if net.version == address.version)


def test_parse_module_imports_no_io() -> None:
    """parse.py is pure: it imports no IO module itself, and importing it does not pull
    in the event loop or inotify. (socket does come in transitively, from the standard
    library's email package via importlib.metadata, which pydantic uses.)"""
    import ast

    import l3hostd.endpoints.parse as module

    tree = ast.parse(Path(module.__file__).read_text())
    imported: set[str] = set()
    dotted: set[str] = set()  # full names, for our own IO modules
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
            dotted.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
            dotted.add(node.module)
            dotted.update(f"{node.module}.{alias.name}" for alias in node.names)
    forbidden = {"asyncio", "socket", "subprocess", "os", "pyroute2", "uvloop"}
    assert not imported & forbidden
    assert "l3hostd.endpoints.inotify" not in dotted

    code = (
        "import sys, l3hostd.endpoints.parse\n"
        "print(sorted({'asyncio', 'l3hostd.endpoints.inotify', 'pyroute2', 'uvloop'}\n"
        "             & set(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_yaml_alias_bomb_is_cheap() -> None:
    """Aliases share objects, so loading is cheap (9**8 leaves, one small graph); the
    error line must not repr() the whole expansion."""
    levels = ["&l0 [x, x, x, x, x, x, x, x, x]"]
    for n in range(1, 8):
        levels.append(f"&l{n} [" + ", ".join([f"*l{n - 1}"] * 9) + "]")
    doc = GOOD + f"colour: [{', '.join(levels)}]\n".encode()
    err = error_of(doc)
    assert err.field_path == "colour"
    assert err.message == "unknown key"
    assert len(str(err)) < 200


def test_addresses_outside_the_allowed_networks_are_refused() -> None:
    """``endpoints.allowed_networks``: one error naming the file and the field, for an IP
    and for an allowed-address pair; inside them, or with no list, the file is fine."""
    from ipaddress import ip_network as net

    from l3hostd.endpoints.parse import EndpointFileError, parse_endpoint

    allowed = (net("10.10.0.0/16"), net("2001:db8:10::/48"))
    good = (b"id: p1\ninterface: tap1\nmac: 'fa:16:3e:00:00:01'\n"
            b"ips: [10.10.0.5, '2001:db8:10::5']\nallowed_address_pairs: [10.10.8.0/24]\n")
    assert parse_endpoint(good, "p1.yaml", allowed).ips[0] == IPv4Address("10.10.0.5")
    assert parse_endpoint(good.replace(b"10.10.0.5", b"192.0.2.5"), "p1.yaml").id == "p1"
    with pytest.raises(EndpointFileError) as err:
        parse_endpoint(good.replace(b"10.10.0.5", b"192.0.2.5"), "p1.yaml", allowed)
    assert str(err.value) == ("p1.yaml: ips[0]: not in endpoints.allowed_networks "
                              "(10.10.0.0/16, 2001:db8:10::/48) (got '192.0.2.5')")
    with pytest.raises(EndpointFileError) as err:
        parse_endpoint(good.replace(b"10.10.8.0/24", b"10.0.0.0/8"), "p1.yaml", allowed)
    assert str(err.value).startswith("p1.yaml: allowed_address_pairs[0]: not in endpoints.")
