"""The daemon's configuration: a YAML file validated into frozen pydantic models.

How it works
    :func:`load_config` reads the file, parses it with a slightly hardened YAML loader
    (duplicate keys are an error; ``1:30`` stays a string instead of becoming the YAML 1.1
    base-60 integer 90, so a community like ``65501:10`` is not silently turned into a
    number) and hands the data to :func:`parse_config`, which validates it into
    :class:`Config`. Every problem, whichever layer finds it, becomes one line of the form::

        <file>: <yaml.path>: <message> (got <value>)

    e.g. ``l3hostd.yaml: bgp.peers[0].address: not a valid IPv4 or IPv6 address (got
    '10.0.0.256')``, and all of them are raised together as :class:`ConfigError`.
    ``l3hostd check-config`` prints exactly these lines (:mod:`l3hostd.cli_check`).

Why it is built this way
    - ``extra="forbid"`` everywhere: a misspelt key is an error, never a silently ignored
      setting (``hold_tme: 9`` would otherwise leave the default of 90 in force).
    - Scalars are strict (no ``"90"`` -> 90, no ``true`` -> 1): YAML already types values,
      so a string where a number belongs is a mistake worth reporting.
    - Values that pydantic would validate as a union (an address that may be IPv4 or IPv6,
      a route table that may be a name or a number) use one plain validator each, so an
      error is a single short line rather than one line per union member.
    - Cross-field rules (keepalive < hold, unique peer names) run in model validators and
      point at the offending field, not at the enclosing mapping: their errors carry the
      sub-path and the bad value in the error context (``at``/``got``), which
      :func:`format_validation_error` appends.
    - Models are frozen and use tuples, never lists, so every model is hashable and
      comparable with ``==``.
    - Nothing here opens sockets or reads secrets: a peer's ``password_file`` is only
      checked to be an absolute path; :func:`read_password` reads it when it is needed.
    - The daemon never imports this module (pydantic and the models' validators cost it
      ~14 MiB of RSS): :func:`to_settings` converts a validated :class:`Config` into the
      plain dataclasses of :mod:`l3hostd.settings` (same class and field names, matched
      generically by name), and :mod:`l3hostd.config_isolated` runs :func:`load_settings`
      in a child process and hands the result to the daemon. ``check-config`` and the
      tests use this module directly.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Hashable, Iterable, Sequence
from ipaddress import (
    IPv4Address,
    IPv4Network,
    IPv6Address,
    IPv6Network,
    ip_address,
    ip_network,
)
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Self, TypeAlias, TypeVar, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from l3hostd import settings
from l3hostd.settings import (
    DEFAULT_CONFIG_PATH,
    ROUTE_TABLE_NAMES,
    ConfigError,
    HostPort,
    large_communities,
    parse_community,
    read_password,
    route_table_id,
    standard_communities,
)

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "BgpConfig",
    "Config",
    "ConfigError",
    "ControlConfig",
    "DataplaneConfig",
    "EndpointsConfig",
    "ExportConfig",
    "FirewallConfig",
    "GracefulRestartConfig",
    "HostAllowConfig",
    "HostPort",
    "ImportConfig",
    "LoggingConfig",
    "MetricsConfig",
    "NodeConfig",
    "PeerConfig",
    "format_validation_error",
    "load_config",
    "load_settings",
    "parse_community",
    "parse_config",
    "read_password",
    "route_table_id",
    "to_settings",
]

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

#: Largest usable table number (the kernel's table ids are u32; 0 is RT_TABLE_UNSPEC).
ROUTE_TABLE_MAX = 4294967294
#: RFC 6793 AS_TRANS: stands in for a 4-byte ASN on 2-byte speakers, never a real ASN.
AS_TRANS = 23456
#: Linux IFNAMSIZ - 1: the longest interface name.
IFNAME_MAX_LEN = 15

_GOT_MAX_LEN = 80


def _error(message: str, *, got: object = None, at: tuple[str | int, ...] = ()) -> Exception:
    """An error for a validator to raise.

    ``at`` extends the error's location below the validated value (a model validator can
    point at one of its fields); ``got`` is the value to show. The message is used
    verbatim: it must not contain ``{`` (pydantic formats it with the context).
    """
    return PydanticCustomError("l3hostd", message, {"at": at, "got": got})


# --------------------------------------------------------------------------- scalar types

StrictInt = Annotated[int, Strict()]
StrictBool = Annotated[bool, Strict()]
StrictStr = Annotated[str, Strict()]
#: A duration in seconds; an int or a float, finite and positive.
Seconds = Annotated[float, Strict(), Field(gt=0, le=86400, allow_inf_nan=False)]


def _require_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise _error(f"must be a string ({what})", got=value)
    return value


def _validate_ip(value: object) -> IPAddress:
    if isinstance(value, IPv4Address | IPv6Address):
        return value
    if isinstance(value, str):
        try:
            return ip_address(value)
        except ValueError:
            pass
    raise _error("not a valid IPv4 or IPv6 address", got=value)


def _validate_ipv4(value: object) -> IPv4Address:
    if isinstance(value, IPv4Address):
        return value
    if isinstance(value, str):
        try:
            return IPv4Address(value)
        except ValueError:
            pass
        try:
            IPv6Address(value)
        except ValueError:
            pass
        else:
            raise _error("must be an IPv4 address, a BGP identifier is 32 bits", got=value)
    raise _error("not a valid IPv4 address", got=value)


def _validate_network(value: object) -> IPNetwork:
    if isinstance(value, IPv4Network | IPv6Network):
        return value
    if isinstance(value, str) and "/" in value:
        try:
            return ip_network(value, strict=True)
        except ValueError:
            try:
                fixed = ip_network(value, strict=False)
            except ValueError:
                pass
            else:
                raise _error(f"host bits set, did you mean '{fixed}'?", got=value) from None
    raise _error("not a valid CIDR prefix like 192.0.2.0/24 or 2001:db8::/32", got=value)


def _unicast(value: IPAddress) -> IPAddress:
    if value.is_unspecified or value.is_multicast:
        raise _error("must be a unicast address", got=str(value))
    return value


def _nonzero_router_id(value: IPv4Address) -> IPv4Address:
    if value.is_unspecified:
        raise _error("must not be 0.0.0.0 (RFC 6286)", got=str(value))
    return value


def _validate_asn(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 0xFFFFFFFF:
        raise _error("must be an AS number 1..4294967295", got=value)
    if value == AS_TRANS:
        raise _error("must not be 23456, AS_TRANS is reserved by RFC 6793", got=value)
    return value


def _validate_hold_time(value: object) -> int:
    if (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value == 0 or 3 <= value <= 65535)
    ):
        return value
    raise _error("must be 0 or 3..65535 seconds", got=value)


_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,252}")


def _validate_name(value: object) -> str:
    text = _require_str(value, "a name")
    if not _NAME_RE.fullmatch(text):
        raise _error(
            "must be letters, digits, '.', '_' or '-', starting with a letter or digit",
            got=value,
        )
    return text


def _validate_abs_path(value: object) -> Path:
    if isinstance(value, Path):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        raise _error("must be an absolute path", got=value)
    if not PurePosixPath(text).is_absolute() or "\0" in text:
        raise _error("must be an absolute path", got=value)
    return Path(text)


def _validate_interface_pattern(value: object) -> str:
    text = _require_str(value, "an interface name or fnmatch pattern like 'tap*'")
    if not text:
        raise _error("must not be empty", got=value)
    if "/" in text or any(c.isspace() for c in text):
        raise _error("must not contain '/' or whitespace", got=value)
    if not any(c in text for c in "*?[") and len(text) > IFNAME_MAX_LEN:
        raise _error(f"longer than {IFNAME_MAX_LEN} characters, matches no interface", got=value)
    return text


def _validate_community(value: object) -> str:
    if isinstance(value, str):
        try:
            return ":".join(str(n) for n in parse_community(value))
        except ValueError:
            pass
    raise _error(
        "not a valid community 'a:b' (each 0..65535) or 'a:b:c' (each 0..4294967295)",
        got=value,
    )


def _validate_route_table(value: object) -> str | int:
    if isinstance(value, str) and value in ROUTE_TABLE_NAMES:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= ROUTE_TABLE_MAX:
        return value
    raise _error(f"must be 'main', 'local', 'default' or a number 1..{ROUTE_TABLE_MAX}", got=value)


def _host_port_validator(min_port: int) -> Callable[[object], HostPort]:
    def validate(value: object) -> HostPort:
        if isinstance(value, HostPort):
            return value
        usage = "must be 'ip:port', like '127.0.0.1:9469' or '[::1]:9469'"
        if not isinstance(value, str):
            raise _error(usage, got=value)
        if value.startswith("["):
            host, sep, port = value[1:].partition("]:")
            if not sep:
                raise _error(usage, got=value)
        else:
            host, sep, port = value.rpartition(":")
            if not sep:
                raise _error(usage, got=value)
            if ":" in host:
                raise _error("an IPv6 address needs brackets, like '[::1]:9469'", got=value)
        try:
            address = ip_address(host)
        except ValueError:
            raise _error(
                "host must be an IP address, like '127.0.0.1:9469' or '[::1]:9469'", got=value
            ) from None
        if not (port.isascii() and port.isdigit() and min_port <= int(port) <= 65535):
            raise _error(f"port must be a number {min_port}..65535", got=value)
        return HostPort(address, int(port))

    return validate


_T = TypeVar("_T")


def _non_empty_unique(items: tuple[_T, ...]) -> tuple[_T, ...]:
    if not items:
        raise _error("must not be empty", got=[])
    seen: dict[_T, int] = {}
    for index, item in enumerate(items):
        if item in seen:
            raise _error(f"duplicate entry, also at index {seen[item]}", got=item, at=(index,))
        seen[item] = index
    return items


_str_ser = PlainSerializer(str, return_type=str)

ASN = Annotated[int, PlainValidator(_validate_asn)]
HoldTime = Annotated[int, PlainValidator(_validate_hold_time)]
Name = Annotated[str, PlainValidator(_validate_name)]
RouterId = Annotated[
    IPv4Address, PlainValidator(_validate_ipv4), AfterValidator(_nonzero_router_id), _str_ser
]
PeerAddress = Annotated[IPAddress, PlainValidator(_validate_ip), AfterValidator(_unicast), _str_ser]
Prefix = Annotated[IPNetwork, PlainValidator(_validate_network), _str_ser]
AbsPath = Annotated[Path, PlainValidator(_validate_abs_path), _str_ser]
InterfacePattern = Annotated[str, PlainValidator(_validate_interface_pattern)]
Community = Annotated[str, PlainValidator(_validate_community)]
RouteTable = Annotated[str | int, PlainValidator(_validate_route_table)]
ListenAddress = Annotated[HostPort, PlainValidator(_host_port_validator(0)), _str_ser]
ServiceAddress = Annotated[HostPort, PlainValidator(_host_port_validator(1)), _str_ser]
Family = Literal["ipv4", "ipv6"]
InterfacePatterns = Annotated[tuple[InterfacePattern, ...], AfterValidator(_non_empty_unique)]
Families = Annotated[tuple[Family, ...], AfterValidator(_non_empty_unique)]


# --------------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Section(_Model):
    """A mapping whose keys all have defaults: ``section:`` with nothing under it is ``{}``."""

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        return {} if data is None else data


class NodeConfig(_Model):
    """This hypervisor: its name, BGP identifier and AS number."""

    name: Name
    router_id: RouterId
    asn: ASN


class GracefulRestartConfig(_Section):
    enabled: StrictBool = True
    restart_time: Annotated[StrictInt, Field(ge=1, le=4095)] = 120


class ExportConfig(_Section):
    interfaces: InterfacePatterns = ("tap*",)
    communities: tuple[Community, ...] = ()

    @property
    def standard_communities(self) -> tuple[tuple[int, int], ...]:
        """The RFC 1997 communities as ``(asn, value)`` pairs."""
        return standard_communities(self.communities)

    @property
    def large_communities(self) -> tuple[tuple[int, int, int], ...]:
        """The RFC 8092 large communities as ``(global, local1, local2)`` triples."""
        return large_communities(self.communities)


class ImportConfig(_Section):
    accept: tuple[Prefix, ...] = ()
    reject: tuple[Prefix, ...] = ()
    allow_default: StrictBool = False
    max_prefixes: Annotated[StrictInt, Field(ge=1)] = 500_000
    table: RouteTable = "main"

    @property
    def table_id(self) -> int:
        """The kernel table number learned routes go into (``main`` -> 254)."""
        return route_table_id(self.table)


class PeerConfig(_Model):
    """One BGP neighbour. ``hold_time``/``keepalive_time`` override the ``bgp`` ones."""

    name: Name
    address: PeerAddress
    asn: ASN
    source_address: PeerAddress | None = None
    port: Annotated[StrictInt, Field(ge=1, le=65535)] = 179
    multihop: StrictBool = True
    password_file: AbsPath | None = None
    families: Families = ("ipv4", "ipv6")
    add_path_receive: StrictBool = True
    hold_time: HoldTime | None = None
    keepalive_time: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None

    @model_validator(mode="after")
    def _check_source_family(self) -> Self:
        src = self.source_address
        if src is not None and src.version != self.address.version:
            raise _error(
                f"must be an IPv{self.address.version} address like the peer address",
                got=str(src),
                at=("source_address",),
            )
        return self

    def read_password(self) -> bytes | None:
        """The TCP-MD5 key from ``password_file``, or None if there is none."""
        if self.password_file is None:
            return None
        return read_password(self.password_file)


class BgpConfig(_Section):
    hold_time: HoldTime = 90
    keepalive_time: Annotated[StrictInt, Field(ge=1, le=65535)] = 30
    connect_retry_time: Annotated[StrictInt, Field(ge=1, le=65535)] = 5
    #: RFC 9687: a session whose writes make no progress this long is closed. Unset:
    #: max(8 minutes, 2 x the negotiated hold time), the RFC's default.
    send_hold_time: Annotated[StrictInt, Field(ge=1, le=65535)] | None = None
    graceful_restart: GracefulRestartConfig = Field(default_factory=GracefulRestartConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    import_: ImportConfig = Field(default_factory=ImportConfig, alias="import")
    peers: tuple[PeerConfig, ...] = ()

    @field_validator("peers", mode="after")
    @classmethod
    def _unique_peers(cls, peers: tuple[PeerConfig, ...]) -> tuple[PeerConfig, ...]:
        for field, what in (("name", "peer name"), ("address", "peer address")):
            seen: dict[object, int] = {}
            for index, peer in enumerate(peers):
                value = getattr(peer, field)
                if value in seen:
                    raise _error(
                        f"duplicate {what}, also used by peers[{seen[value]}]",
                        got=str(value),
                        at=(index, field),
                    )
                seen[value] = index
        return peers

    @model_validator(mode="after")
    def _check_timers(self) -> Self:
        if self.hold_time and self.keepalive_time >= self.hold_time:
            raise _error(
                f"must be less than hold_time ({self.hold_time})",
                got=self.keepalive_time,
                at=("keepalive_time",),
            )
        for index, peer in enumerate(self.peers):
            hold = self.hold_time_for(peer)
            keepalive = self.keepalive_time_for(peer)
            if hold and keepalive >= hold:
                if peer.keepalive_time is not None:
                    raise _error(
                        f"must be less than the hold time ({hold})",
                        got=keepalive,
                        at=("peers", index, "keepalive_time"),
                    )
                raise _error(
                    f"must be 0 or greater than keepalive_time ({keepalive})",
                    got=hold,
                    at=("peers", index, "hold_time"),
                )
        return self

    def hold_time_for(self, peer: PeerConfig) -> int:
        """The hold time to offer to ``peer`` (its own, else the global one)."""
        return self.hold_time if peer.hold_time is None else peer.hold_time

    def keepalive_time_for(self, peer: PeerConfig) -> int:
        """The keepalive time for ``peer`` (its own, else the global one)."""
        return self.keepalive_time if peer.keepalive_time is None else peer.keepalive_time


class EndpointsConfig(_Section):
    directory: AbsPath = Path("/var/lib/l3hostd/endpoints")
    interface_patterns: InterfacePatterns = ("tap*",)
    rescan_interval: Seconds = 60
    allowed_networks: tuple[Prefix, ...] = ()


class DataplaneConfig(_Section):
    resync_interval: Seconds = 90
    route_table: RouteTable = "main"
    ipv6_gateway: StrictBool = True

    @property
    def table_id(self) -> int:
        """The kernel table number local endpoint routes go into (``main`` -> 254)."""
        return route_table_id(self.route_table)


class HostAllowConfig(_Section):
    dhcp: StrictBool = True
    dns: StrictBool = True
    metadata: StrictBool = True


class FirewallConfig(_Section):
    enabled: StrictBool = True
    host_allow: HostAllowConfig = Field(default_factory=HostAllowConfig)
    metadata_address: ServiceAddress = HostPort(IPv4Address("127.0.0.1"), 8775)


class MetricsConfig(_Section):
    enabled: StrictBool = True
    listen: ListenAddress = HostPort(IPv4Address("127.0.0.1"), 9469)


class ControlConfig(_Section):
    socket: AbsPath = Path("/run/l3hostd/control.sock")


class LoggingConfig(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"


class Config(_Model):
    """The whole configuration file."""

    node: NodeConfig
    bgp: BgpConfig = Field(default_factory=BgpConfig)
    endpoints: EndpointsConfig = Field(default_factory=EndpointsConfig)
    dataplane: DataplaneConfig = Field(default_factory=DataplaneConfig)
    firewall: FirewallConfig = Field(default_factory=FirewallConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    control: ControlConfig = Field(default_factory=ControlConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


# ------------------------------------------------------------------------ error messages


def _short_repr(value: object) -> str:
    text = repr(value)
    if len(text) > _GOT_MAX_LEN:
        text = text[: _GOT_MAX_LEN - 3] + "..."
    return text


def _yaml_path(loc: Iterable[str | int]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The first pydantic model found in a (possibly nested, generic) annotation."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _model_at(root: type[BaseModel], loc: Sequence[str | int]) -> type[BaseModel] | None:
    """The model class validating the mapping at ``loc`` (keys as written in YAML)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if isinstance(part, int):
            continue  # a list index: same element model
        if model is None:
            return None
        by_key = {f.alias or name: f for name, f in model.model_fields.items()}
        if part not in by_key:
            return None
        model = _model_in(by_key[part].annotation)
    return model


def _keys_of(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


_TYPE_MESSAGES: dict[str, str] = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "tuple_type": "must be a list",
    "list_type": "must be a list",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
}


_BOUND_MESSAGES: dict[tuple[str, str], str] = {
    ("greater_than_equal", "ge"): "must be at least",
    ("greater_than", "gt"): "must be greater than",
    ("less_than_equal", "le"): "must be at most",
    ("less_than", "lt"): "must be less than",
}


def _number(value: object) -> str:
    """``86400.0`` -> ``86400``: bounds of float fields read like the integers they are."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _message(error: Any, root: type[BaseModel], loc: tuple[str | int, ...]) -> tuple[str, bool]:
    """A short message for one pydantic error, and whether to show the bad value."""
    kind = error["type"]
    if kind == "missing":
        return "required", False
    if kind == "extra_forbidden":
        parent = _model_at(root, loc[:-1])
        key = str(loc[-1])
        if parent is None:
            return "key not allowed", False
        allowed = _keys_of(parent)
        close = difflib.get_close_matches(key, allowed, n=1)
        if close:
            return f"key not allowed, did you mean '{close[0]}'?", False
        return f"key not allowed (allowed: {', '.join(allowed)})", False
    if kind in _TYPE_MESSAGES:
        return _TYPE_MESSAGES[kind], True
    ctx = error.get("ctx") or {}
    for bound, words in _BOUND_MESSAGES.items():
        if kind == bound[0] and bound[1] in ctx:
            return f"{words} {_number(ctx[bound[1]])}", True
    msg = str(error["msg"])
    for prefix in ("Input should be ", "Value should be "):
        if msg.startswith(prefix):
            return "must be " + msg[len(prefix) :], True
    msg = msg.removeprefix("Value error, ")
    return (msg[:1].lower() + msg[1:]), True


def format_validation_error(
    exc: ValidationError, source: str, root: type[BaseModel] = Config
) -> list[str]:
    """Turn a pydantic ValidationError into ``<source>: <path>: <message> (got <value>)`` lines."""
    lines: list[str] = []
    for error in exc.errors():
        ctx = error.get("ctx") or {}
        loc: tuple[str | int, ...] = tuple(error["loc"]) + tuple(ctx.get("at", ()))
        message, show_value = _message(error, root, loc)
        line = f"{source}: {_yaml_path(loc)}: {message}"
        if show_value:
            got = ctx["got"] if "got" in ctx else error.get("input")
            line += f" (got {_short_repr(got)})"
        if line not in lines:
            lines.append(line)
    return lines


# ---------------------------------------------------------------------------------- YAML


_INT_TAG = "tag:yaml.org,2002:int"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# PyYAML's YAML 1.1 patterns without the base-60 forms (``1:30`` -> 90).
_INT_RE = re.compile(
    r"""^(?:[-+]?0b[0-1_]+
    |[-+]?0[0-7_]+
    |[-+]?(?:0|[1-9][0-9_]*)
    |[-+]?0x[0-9a-fA-F_]+)$""",
    re.X,
)
_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
    |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)


class _ConfigLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys and has no base-60 numbers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [
        (tag, _INT_RE if tag == _INT_TAG else _FLOAT_RE if tag == _FLOAT_TAG else regexp)
        for tag, regexp in resolvers
    ]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _yaml_error(exc: yaml.YAMLError, source: str) -> str:
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}"
        problem = exc.problem or "invalid YAML"
        if exc.context:
            context = exc.context
            if exc.context_mark is not None and exc.context_mark.line != mark.line:
                context += f" started at line {exc.context_mark.line + 1}"
            problem = f"{problem} ({context})"
        if isinstance(exc, yaml.constructor.ConstructorError):
            return f"{source}: {where}: {problem}"
        return f"{source}: {where}: YAML syntax error: {problem}"
    return f"{source}: YAML error: {exc}"


# ------------------------------------------------------------------------------ loading


def parse_config(data: object, source: str = "<config>") -> Config:
    """Validate already-loaded YAML data; raise :class:`ConfigError` naming ``source``."""
    if data is None:
        raise ConfigError([f"{source}: (top level): must be a mapping, the file is empty"])
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{source}: (top level): must be a mapping of sections (got {_short_repr(data)})"]
        )
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config(path: str | Path) -> Config:
    """Read, parse and validate the YAML file at ``path``; raise :class:`ConfigError`."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        data = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_error(exc, source)]) from None
    return parse_config(data, source)


# ---------------------------------------------------------------- runtime settings


def _to_runtime(value: object) -> object:
    """A validated value as the daemon holds it: a model becomes the :mod:`l3hostd.settings`
    dataclass of the same name, field by field (by attribute name, e.g. ``import_``)."""
    if isinstance(value, BaseModel):
        cls = getattr(settings, type(value).__name__)
        return cls(**{name: _to_runtime(getattr(value, name)) for name in type(value).model_fields})
    if isinstance(value, tuple):
        return tuple(_to_runtime(item) for item in value)
    return value


def to_settings(config: Config) -> settings.Config:
    """The validated ``config`` as the plain dataclasses the daemon runs with."""
    runtime = _to_runtime(config)
    assert isinstance(runtime, settings.Config)
    return runtime


def load_settings(path: str | Path) -> settings.Config:
    """:func:`load_config`, then :func:`to_settings`; raise :class:`ConfigError`."""
    return to_settings(load_config(path))
