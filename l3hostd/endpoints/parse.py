"""Parse endpoint, security-group and group-member files into model values (pure, no IO).

The directory source (:mod:`l3hostd.endpoints.directory`) reads the bytes; this module turns
them into the frozen :mod:`l3hostd.model` values or raises :class:`EndpointFileError`. It
imports no asyncio, socket or os: it is a pure function of ``(data, filename)``, so the
same code can serve a later etcd source and is tested without a file system.

How it works, in three steps:

1. **Load the document.** ``.json`` files are read with :mod:`json`, everything else with
   PyYAML's safe loader (libyaml when available). Both reject duplicate keys (PyYAML and
   json silently keep the last one, which would hide a merge accident). An empty file, a
   document that is only comments, or a truncated document is an error: with non-atomic
   writers it is the normal look of a half-written file, and the caller keeps the previous
   valid version in force.
2. **Check the shape**: each document kind is an ordered table of fields (``_ENDPOINT``,
   ``_SECURITY_GROUP``...), strict (no coercion) and closed: an unknown key is a typo, not
   something to ignore. Every leaf is checked by a small plain validator, so the messages
   speak the file's language ("not an IP address"), and the error path names the list
   index (``ips[1]``). No pydantic here: its models cost the daemon ~10 MiB of memory.
3. **Check what spans fields** (port ranges only with tcp/udp, ICMP type/code only with
   ICMP, prefix family = ethertype, remote prefix XOR remote group) and convert at once to
   the frozen dataclasses of :mod:`l3hostd.model`.

Every error is one line, ``<file>: <field>: <message> (got <value>)``; for whole-document
errors (empty, syntax) the field part is left out: ``<file>: <message>``. The first error
found is reported, the way a compiler stops at the first syntax error: the operator fixes
it and sees the next.

File shapes (see also ``config/endpoints/``)::

    # <anything>.yaml — one endpoint (VM port)
    id: 8a3f1c2d-4e5b-4c8e-9a61-2f0b7c3d9e10   # required: Neutron port id
    interface: tap8a3f1c2d-4e                   # required: Linux ifname
    mac: "fa:16:3e:12:34:56"                    # required: unicast; stored lower-case
    ips: [192.0.2.10, "2001:db8::10"]           # required, >= 1 host address
    allowed_address_pairs: [192.0.2.64/28]      # optional: IPs (= /32, /128) or CIDRs
    security_groups: [default, web]             # optional: group names

    # security-groups/<name>.yaml — one security group
    name: web                                   # required, authoritative (not the stem)
    description: "..."                          # optional, ignored
    rules:                                      # optional, Neutron-shaped
      - direction: ingress                      # required: ingress | egress
        ethertype: IPv4                         # IPv4 (default) | IPv6
        protocol: tcp                           # tcp|udp|icmp|icmpv6|any|null|0..255
        port_range_min: 443                     # 1..65535, tcp/udp only
        port_range_max: 443                     # defaults to the other bound if absent
        remote_ip_prefix: 198.51.100.0/24       # CIDR or IP; XOR remote_group
        # remote_group: web                     # a group name
        # icmp_type: 8 / icmp_code: 0           # 0..255, icmp/icmpv6 only
        description: "..."                      # optional, ignored

    # group-members/<group>.yaml — members of a group on OTHER hypervisors
    group: web                                  # required, authoritative
    ips: [192.0.2.20, "2001:db8::20", 198.51.100.0/28]   # required (may be []): IPs/CIDRs

Normalisations (so equal meaning compares equal downstream): MAC lower-case; duplicate IPs,
pairs, group names and rules dropped (first kept); protocol numbers 1, 6, 17, 58 become
``icmp``, ``tcp``, ``udp``, ``icmpv6`` and ``ipv6-icmp`` (Neutron's spelling) becomes
``icmpv6``; ``any`` becomes ``None``; a bare IP as a prefix is a /32 or /128; a
full-length prefix among group members is kept as the address. CIDRs with host bits set
are rejected (rather than silently widened or narrowed).
"""

from __future__ import annotations

import json
import re
import reprlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from ipaddress import (
    IPv4Address,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from typing import TYPE_CHECKING, Any, Final, TypeVar

import yaml

from l3hostd.model import (
    Direction,
    Endpoint,
    EtherType,
    IPAddress,
    IPNetwork,
    SecurityGroup,
    SecurityGroupRule,
)

__all__ = [
    "EndpointFileError",
    "GroupMembers",
    "load_document",
    "parse_endpoint",
    "parse_group_members",
    "parse_security_group",
]

_T = TypeVar("_T", bound=Hashable)


class _NoValue:
    """Marker: the error has no offending value to show (e.g. a missing key)."""

    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Final = _NoValue()
_MAX_VALUE_CHARS: Final = 80


class EndpointFileError(ValueError):
    """A file that cannot be used. ``str()`` is exactly one line, meant for logs, metrics
    and ``l3hostctl``: ``<file>: <field>: <message> (got <value>)``.

    ``field_path`` is ``""`` for errors about the whole document; ``value`` is
    :data:`NO_VALUE` when there is nothing meaningful to show (a missing key)."""

    def __init__(
        self, filename: str, field_path: str, message: str, value: object = NO_VALUE
    ) -> None:
        self.filename = filename
        self.field_path = field_path
        self.message = message
        self.value = value
        super().__init__(self._render())

    def _render(self) -> str:
        parts = [self.filename]
        if self.field_path:
            parts.append(self.field_path)
        line = ": ".join([*parts, self.message])
        if self.value is not NO_VALUE:
            line += f" (got {_show(self.value)})"
        # One line whatever the file name or message contains.
        return line.replace("\r", "\\r").replace("\n", "\\n")

    def __str__(self) -> str:
        return self._render()


# Bounded: a value may be a YAML alias bomb (shared references, cheap in memory, but a plain
# repr() of it would be exponential).
_REPR: Final = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxstring = _REPR.maxother = _MAX_VALUE_CHARS


def _show(value: object) -> str:
    text = _REPR.repr(value)
    if len(text) > _MAX_VALUE_CHARS:
        text = text[: _MAX_VALUE_CHARS - 3] + "..."
    return text


@dataclass(frozen=True, slots=True)
class GroupMembers:
    """The members of security group ``group`` that live on other hypervisors (from
    ``group-members/<group>.yaml``). The group's full set, as a remote group in a rule
    sees it, is these plus the IPs of the local endpoints that are in the group."""

    group: str
    members: frozenset[IPAddress | IPNetwork] = frozenset()


# --------------------------------------------------------------------------------------
# Step 1: documents


if TYPE_CHECKING:
    _BaseLoader = yaml.SafeLoader
else:  # libyaml is ~10x faster on the initial scan of thousands of files
    _BaseLoader = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader


class _DuplicateKey(Exception):
    def __init__(self, key: str, line: int | None = None) -> None:
        super().__init__(key)
        self.key = key
        self.line = line


class _UniqueKeyLoader(_BaseLoader):
    """Safe loader that rejects a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                if key_node.value in seen:
                    raise _DuplicateKey(str(key_node.value), key_node.start_mark.line + 1)
                seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def load_document(data: bytes, filename: str) -> dict[str, Any]:
    """Decode ``data`` as JSON (``.json``) or YAML (anything else) into a mapping."""
    if not data.strip():
        raise EndpointFileError(filename, "", "empty file (half-written?)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EndpointFileError(filename, "", f"not UTF-8 (byte {exc.start})") from None
    doc: object
    if filename.lower().endswith(".json"):
        try:
            doc = json.loads(text, object_pairs_hook=_json_pairs)
        except _DuplicateKey as exc:
            raise EndpointFileError(filename, exc.key, "key given twice") from None
        except json.JSONDecodeError as exc:
            raise EndpointFileError(
                filename,
                "",
                f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg} "
                "(truncated or half-written?)",
            ) from None
        except RecursionError:
            raise EndpointFileError(filename, "", "invalid JSON: nested too deeply") from None
    else:
        try:
            doc = yaml.load(text, Loader=_UniqueKeyLoader)  # a safe loader (no python tags)
        except _DuplicateKey as exc:
            raise EndpointFileError(
                filename, exc.key, f"key given twice (again at line {exc.line})"
            ) from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
            problem = exc.problem or exc.context or "syntax error"
            syntax = isinstance(exc, yaml.scanner.ScannerError | yaml.parser.ParserError)
            hint = " (truncated or half-written?)" if syntax else ""
            raise EndpointFileError(filename, "", f"invalid YAML{where}: {problem}{hint}") from None
        except yaml.YAMLError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "syntax error"
            raise EndpointFileError(filename, "", f"invalid YAML: {first}") from None
        except RecursionError:
            raise EndpointFileError(filename, "", "invalid YAML: nested too deeply") from None
    if doc is None:
        raise EndpointFileError(filename, "", "empty document (half-written?)")
    if not isinstance(doc, dict):
        raise EndpointFileError(
            filename, "", f"top level must be a mapping, not {_type_name(doc)}", doc
        )
    return doc


def _type_name(value: object) -> str:
    names = {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------------------
# Step 2: leaf validators (raise ValueError)

_MAC_RE: Final = re.compile(r"[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}")
_IFNAMSIZ: Final = 16
_MAX_NAME: Final = 255
_YAML_HINT: Final = " (quote it in YAML)"


def _expect_str(value: object) -> str:
    if isinstance(value, str):
        return value
    hint = _YAML_HINT if isinstance(value, int | float | bool) else ""
    raise ValueError(f"must be a string, not {_type_name(value)}{hint}")


def _check_id(value: object) -> str:
    text = _expect_str(value)
    if not text:
        raise ValueError("must not be empty")
    if len(text) > _MAX_NAME:
        raise ValueError(f"longer than {_MAX_NAME} characters")
    if any(not ch.isprintable() or ch.isspace() for ch in text):
        raise ValueError("must not contain whitespace or control characters")
    return text


def _check_name(value: object) -> str:
    """A security-group name: any printable text without surrounding whitespace."""
    text = _expect_str(value)
    if not text:
        raise ValueError("group name must not be empty")
    if len(text) > _MAX_NAME:
        raise ValueError(f"group name longer than {_MAX_NAME} characters")
    if text != text.strip() or any(not ch.isprintable() for ch in text):
        raise ValueError("group name with surrounding whitespace or control characters")
    return text


def _check_optional_name(value: object) -> str | None:
    return None if value is None else _check_name(value)


def _check_ifname(value: object) -> str:
    """The kernel's ``dev_valid_name()``: 1..15 bytes, not ``.``/``..``, no ``/``, ``:`` or
    whitespace. We also require printable ASCII: nft and /proc/sys paths stay simple."""
    text = _expect_str(value)
    if not 1 <= len(text.encode()) < _IFNAMSIZ:
        raise ValueError(f"not a Linux interface name: must be 1..{_IFNAMSIZ - 1} bytes")
    if text in (".", ".."):
        raise ValueError("not a Linux interface name")
    if not text.isascii() or not text.isprintable() or any(c in "/: " for c in text):
        raise ValueError(
            "not a Linux interface name: must be printable ASCII without '/', ':' or spaces"
        )
    return text


def _check_mac(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        # YAML 1.1 reads an unquoted 12:34:56:... as a base-60 integer.
        raise ValueError("must be a quoted string (YAML read it as a base-60 number)")
    text = _expect_str(value)
    if not _MAC_RE.fullmatch(text):
        raise ValueError("not a MAC address (expected six hex octets like fa:16:3e:12:34:56)")
    first = int(text[:2], 16)
    if first & 1:
        raise ValueError("multicast/broadcast MAC: a port needs a unicast one")
    if text.replace(":", "").strip("0") == "":
        raise ValueError("all-zero MAC")
    return text.lower()


def _parse_ip(value: object) -> IPAddress:
    text = _expect_str(value)
    try:
        addr = ip_address(text)
    except ValueError:
        raise ValueError(f"not an IP address{' (a prefix?)' if '/' in text else ''}") from None
    if isinstance(addr, IPv6Address) and addr.scope_id is not None:
        raise ValueError("an IP address here must not carry a scope (%zone)")
    return addr


def _check_host_ip(value: object) -> IPAddress:
    """A VM's own address: one the host can route to a TAP and announce over BGP."""
    addr = _parse_ip(value)
    if addr.is_unspecified:
        raise ValueError("unspecified address is not a host address")
    if addr.is_loopback:
        raise ValueError("loopback address is not a VM address")
    if addr.is_multicast:
        raise ValueError("multicast address is not a host address")
    if addr.is_link_local:
        raise ValueError("link-local address cannot be routed to a VM")
    if addr == IPv4Address("255.255.255.255"):
        raise ValueError("broadcast address is not a host address")
    if isinstance(addr, IPv6Address) and addr.ipv4_mapped is not None:
        raise ValueError(f"IPv4-mapped IPv6 address: write {addr.ipv4_mapped} instead")
    return addr


def _parse_prefix(value: object) -> IPNetwork:
    """A CIDR, or a bare IP meaning the full-length prefix (/32, /128)."""
    text = _expect_str(value)
    if "/" not in text:
        addr = _parse_ip(text)
        return ip_network(f"{addr}/{addr.max_prefixlen}")
    try:
        return ip_network(text, strict=True)
    except ValueError as exc:
        try:
            loose = ip_network(text, strict=False)
        except ValueError:
            raise ValueError(f"not an IP prefix ({exc})") from None
        raise ValueError(f"host bits set in prefix (did you mean {loose}?)") from None


def _check_prefix(value: object) -> IPNetwork:
    return _parse_prefix(value)


def _check_optional_prefix(value: object) -> IPNetwork | None:
    return None if value is None else _parse_prefix(value)


def _check_member(value: object) -> IPAddress | IPNetwork:
    net = _parse_prefix(value)
    if net.prefixlen == net.max_prefixlen:
        return net.network_address
    return net


def _check_direction(value: object) -> Direction:
    text = _expect_str(value)
    try:
        return Direction(text)
    except ValueError:
        raise ValueError("must be 'ingress' or 'egress'") from None


def _check_ethertype(value: object) -> EtherType:
    text = _expect_str(value)
    for ethertype in EtherType:
        if text.lower() == ethertype.value.lower():
            return ethertype
    raise ValueError("must be 'IPv4' or 'IPv6'")


_PROTOCOL_NAMES: Final[dict[str, str | None]] = {
    "any": None,
    "tcp": "tcp",
    "udp": "udp",
    "icmp": "icmp",
    "icmpv6": "icmpv6",
    "ipv6-icmp": "icmpv6",  # Neutron's name for it
}
_PROTOCOL_NUMBERS: Final[dict[int, str]] = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmpv6"}
_PORT_PROTOCOLS: Final = frozenset({"tcp", "udp"})
_ICMP_PROTOCOLS: Final = frozenset({"icmp", "icmpv6"})


def _check_protocol(value: object) -> str | int | None:
    if value is None:
        return None
    number: int
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValueError(
            f"must be tcp, udp, icmp, icmpv6, any, null or a number 0..255, not {_type_name(value)}"
        )
    if isinstance(value, str):
        name = value.lower()
        if name in _PROTOCOL_NAMES:
            return _PROTOCOL_NAMES[name]
        if not name.isdigit():
            raise ValueError("must be tcp, udp, icmp, icmpv6, any, null or a number 0..255")
        number = int(name)
    else:
        number = value
    if not 0 <= number <= 255:
        raise ValueError("protocol number must be 0..255")
    return _PROTOCOL_NUMBERS.get(number, number)


def _check_int(value: object, low: int, high: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be an integer {low}..{high}, not {_type_name(value)}")
    if not low <= value <= high:
        raise ValueError(f"must be {low}..{high}")
    return value


def _check_port(value: object) -> int | None:
    return _check_int(value, 1, 65535)


def _check_icmp_field(value: object) -> int | None:
    return _check_int(value, 0, 255)


def _check_description(value: object) -> str | None:
    return None if value is None else _expect_str(value)


# --------------------------------------------------------------------------------------
# Step 2: document shapes
#
# A shape is the ordered fields of a mapping, each with its leaf validator (or a nested
# shape for the rules of a group). Checked in field order, then unknown keys; the first
# problem is the error. (This was pydantic, strict, extra="forbid", with these same
# validators: ~10 MiB of the daemon's memory for four small models.)


@dataclass(frozen=True, slots=True)
class _Field:
    check: Callable[[object], Any] | None = None  # the leaf validator (raises ValueError)
    required: bool = False
    default: Any = None
    many: bool = False  # a list of such values
    shape: _Shape | None = None  # the items are mappings of this shape


_Shape = dict[str, _Field]


class _ShapeError(Exception):
    def __init__(self, loc: tuple[int | str, ...], message: str, value: object = NO_VALUE) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message
        self.value = value


def _check_shape(doc: object, shape: _Shape, loc: tuple[int | str, ...] = ()) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise _ShapeError(loc, f"must be a mapping, not {_type_name(doc)}", doc)
    out: dict[str, Any] = {}
    for name, spec in shape.items():
        here = (*loc, name)
        if name not in doc:
            if spec.required:
                raise _ShapeError(here, "required key missing")
            out[name] = list(spec.default) if spec.many else spec.default
            continue
        value = doc[name]
        if spec.many:
            if not isinstance(value, list):
                raise _ShapeError(here, f"must be a list, not {_type_name(value)}", value)
            out[name] = [_check_value(item, spec, (*here, i)) for i, item in enumerate(value)]
        else:
            out[name] = _check_value(value, spec, here)
    for key in doc:
        if key not in shape:
            raise _ShapeError((*loc, key), "unknown key", doc[key])
    return out


def _check_value(value: object, spec: _Field, loc: tuple[int | str, ...]) -> Any:
    if spec.shape is not None:
        return _check_shape(value, spec.shape, loc)
    assert spec.check is not None
    try:
        return spec.check(value)
    except ValueError as exc:
        raise _ShapeError(loc, str(exc), value) from None


_ENDPOINT: Final[_Shape] = {
    "id": _Field(_check_id, required=True),
    "interface": _Field(_check_ifname, required=True),
    "mac": _Field(_check_mac, required=True),
    "ips": _Field(_check_host_ip, required=True, many=True),
    "allowed_address_pairs": _Field(_check_prefix, many=True, default=()),
    "security_groups": _Field(_check_name, many=True, default=()),
}

_RULE: Final[_Shape] = {
    "direction": _Field(_check_direction, required=True),
    "ethertype": _Field(_check_ethertype, default=EtherType.IPV4),
    "protocol": _Field(_check_protocol),
    "port_range_min": _Field(_check_port),
    "port_range_max": _Field(_check_port),
    "icmp_type": _Field(_check_icmp_field),
    "icmp_code": _Field(_check_icmp_field),
    "remote_ip_prefix": _Field(_check_optional_prefix),
    "remote_group": _Field(_check_optional_name),
    "description": _Field(_check_description),
}

_SECURITY_GROUP: Final[_Shape] = {
    "name": _Field(_check_name, required=True),
    "description": _Field(_check_description),
    "rules": _Field(shape=_RULE, many=True, default=()),
}

_GROUP_MEMBERS: Final[_Shape] = {
    "group": _Field(_check_name, required=True),
    "ips": _Field(_check_member, required=True, many=True),
}


def _validate(shape: _Shape, doc: dict[str, Any], filename: str) -> dict[str, Any]:
    try:
        return _check_shape(doc, shape)
    except _ShapeError as exc:
        message = exc.message
        if filename.lower().endswith(".json"):
            message = message.replace(_YAML_HINT, "")  # a YAML hint misleads in JSON
        raise EndpointFileError(filename, _format_loc(exc.loc), message, exc.value) from None


def _format_loc(loc: Sequence[int | str]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else part
    return path


def _unique(items: Iterable[_T]) -> tuple[_T, ...]:
    return tuple(dict.fromkeys(items))


# --------------------------------------------------------------------------------------
# Step 3: cross-field checks and conversion


def parse_endpoint(
    data: bytes, filename: str, allowed: Sequence[IPNetwork] = ()
) -> Endpoint:
    """Parse one endpoint file. Raises :class:`EndpointFileError`. ``allowed``: the
    networks its IPs and allowed-address-pair prefixes must lie in (empty: any)."""
    doc = _validate(_ENDPOINT, load_document(data, filename), filename)
    if not doc["ips"]:
        raise EndpointFileError(filename, "ips", "at least one IP address is required", [])
    if allowed:
        for field in ("ips", "allowed_address_pairs"):
            for i, value in enumerate(doc[field]):
                net = ip_network(value)
                if not any(net.version == a.version and net.subnet_of(a)  # type: ignore[arg-type]
                           for a in allowed):
                    raise EndpointFileError(
                        filename, f"{field}[{i}]",
                        "not in endpoints.allowed_networks "
                        f"({', '.join(str(a) for a in allowed)})", str(value))
    return Endpoint(
        id=doc["id"],
        interface=doc["interface"],
        mac=doc["mac"],
        ips=_unique(doc["ips"]),
        allowed_address_pairs=_unique(doc["allowed_address_pairs"]),
        security_groups=_unique(doc["security_groups"]),
    )


def parse_security_group(data: bytes, filename: str) -> SecurityGroup:
    """Parse one ``security-groups/`` file. Raises :class:`EndpointFileError`. The
    ``name:`` key is the group's identity; the file name is not checked here."""
    doc = _validate(_SECURITY_GROUP, load_document(data, filename), filename)
    rules = [_convert_rule(rule, f"rules[{i}]", filename) for i, rule in enumerate(doc["rules"])]
    return SecurityGroup(name=doc["name"], rules=_unique(rules))


def parse_group_members(data: bytes, filename: str) -> GroupMembers:
    """Parse one ``group-members/`` file. Raises :class:`EndpointFileError`."""
    doc = _validate(_GROUP_MEMBERS, load_document(data, filename), filename)
    return GroupMembers(group=doc["group"], members=frozenset(doc["ips"]))


def _convert_rule(rule: dict[str, Any], path: str, filename: str) -> SecurityGroupRule:
    def fail(field: str, message: str, value: object) -> EndpointFileError:
        return EndpointFileError(filename, f"{path}.{field}", message, value)

    protocol = rule["protocol"]
    v6 = rule["ethertype"] is EtherType.IPV6
    if protocol == "icmp" and v6:
        raise fail("protocol", "ICMP with ethertype IPv6: use icmpv6", rule["protocol"])
    if protocol == "icmpv6" and not v6:
        raise fail("protocol", "ICMPv6 with ethertype IPv4: use icmp", rule["protocol"])

    low, high = rule["port_range_min"], rule["port_range_max"]
    if low is not None or high is not None:
        if protocol not in _PORT_PROTOCOLS:
            field = "port_range_min" if low is not None else "port_range_max"
            raise fail(field, "ports are allowed only with protocol tcp or udp", low or high)
        # One bound alone means a single port.
        bound = low if low is not None else high
        assert bound is not None
        low = bound if low is None else low
        high = bound if high is None else high
        if high < low:
            raise fail("port_range_max", f"must be >= port_range_min ({low})", high)

    if rule["icmp_type"] is not None or rule["icmp_code"] is not None:
        if protocol not in _ICMP_PROTOCOLS:
            field = "icmp_type" if rule["icmp_type"] is not None else "icmp_code"
            value = rule["icmp_type"] if rule["icmp_type"] is not None else rule["icmp_code"]
            raise fail(field, "allowed only with protocol icmp or icmpv6", value)
        if rule["icmp_type"] is None:
            raise fail("icmp_code", "icmp_code needs icmp_type", rule["icmp_code"])

    prefix = rule["remote_ip_prefix"]
    if prefix is not None:
        if rule["remote_group"] is not None:
            raise fail(
                "remote_group",
                "remote_ip_prefix and remote_group exclude each other",
                rule["remote_group"],
            )
        if isinstance(prefix, IPv6Network) != v6:
            raise fail(
                "remote_ip_prefix",
                f"address family does not match ethertype {rule['ethertype'].value}",
                str(prefix),
            )

    return SecurityGroupRule(
        direction=rule["direction"],
        ethertype=rule["ethertype"],
        protocol=protocol,
        port_range_min=low,
        port_range_max=high,
        icmp_type=rule["icmp_type"],
        icmp_code=rule["icmp_code"],
        remote_ip_prefix=prefix,
        remote_group=rule["remote_group"],
    )
