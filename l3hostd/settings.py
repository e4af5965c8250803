"""The runtime configuration: plain frozen dataclasses, no pydantic, no YAML.

How it works
    The YAML file is parsed and validated by :mod:`l3hostd.config` (pydantic, the schema
    and the error messages) in a child process (:mod:`l3hostd.config_isolated`), which
    converts the validated model into the classes below and hands them to the daemon
    pickled. The daemon and everything it runs import only this module: the classes have
    the same names, attributes and derived helpers as the pydantic models
    (``ExportConfig.standard_communities``, ``BgpConfig.hold_time_for``,
    ``PeerConfig.read_password``, ``ImportConfig.table_id``...), so code reads
    ``config.bgp.peers[0].address`` whichever it holds.

    A unit test (tests/unit/test_config_settings.py) checks that every pydantic model has a
    class here with exactly the same fields and defaults, so the two cannot drift apart.

Why it is built this way
    Importing pydantic and building the models' validators costs the daemon ~14 MiB of RSS
    for its whole life, a third of its footprint, to run once at start and on a reload.
    Validating in a short-lived child keeps that memory out of the long-running process.
    The classes are frozen and slotted and hold tuples, never lists: they are small,
    hashable and compare by value, so a reload diffs old and new settings with ``==``.
    Values here are trusted (the child validated them); nothing is re-checked.
    Nothing reads secrets at construction: :meth:`PeerConfig.read_password` reads the
    TCP-MD5 key file when a session is (re)started.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Literal, TypeAlias

from l3hostd.model import IPAddress, IPNetwork

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
    "parse_community",
    "read_password",
    "route_table_id",
]

DEFAULT_CONFIG_PATH = "/etc/l3hostd/l3hostd.yaml"

#: Route table names understood without /etc/iproute2/rt_tables (as in ``ip route``).
ROUTE_TABLE_NAMES: dict[str, int] = {"default": 253, "main": 254, "local": 255}
#: Linux TCP_MD5SIG_MAXKEYLEN.
TCP_MD5_MAX_KEY_LEN = 80

Family: TypeAlias = Literal["ipv4", "ipv6"]
LogLevel: TypeAlias = Literal["debug", "info", "warning", "error"]
LogFormat: TypeAlias = Literal["text", "json"]


class ConfigError(Exception):
    """The configuration cannot be used. ``errors`` holds one human-readable line per problem."""

    def __init__(self, errors: Sequence[str]) -> None:
        self.errors: list[str] = list(errors)
        super().__init__("\n".join(self.errors))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[list[str]]]:
        return (ConfigError, (self.errors,))


# ------------------------------------------------------------------------------ helpers


@dataclass(frozen=True, slots=True)
class HostPort:
    """An IP address and a TCP port, written ``192.0.2.1:9469`` or ``[2001:db8::1]:9469``."""

    host: IPAddress
    port: int

    def __str__(self) -> str:
        if isinstance(self.host, IPv6Address):
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def parse_community(text: str) -> tuple[int, int] | tuple[int, int, int]:
    """Parse ``"a:b"`` (RFC 1997, each 0..65535) or ``"a:b:c"`` (RFC 8092, each 0..2**32-1).

    Raises :class:`ValueError` if ``text`` is neither.
    """
    parts = text.split(":")
    if all(p.isascii() and p.isdigit() for p in parts):
        numbers = [int(p) for p in parts]
        if len(numbers) == 2 and all(n <= 0xFFFF for n in numbers):
            return (numbers[0], numbers[1])
        if len(numbers) == 3 and all(n <= 0xFFFFFFFF for n in numbers):
            return (numbers[0], numbers[1], numbers[2])
    raise ValueError(f"not a valid community: {text!r}")


def standard_communities(communities: Sequence[str]) -> tuple[tuple[int, int], ...]:
    """The RFC 1997 ones of normalised community strings, as ``(asn, value)`` pairs."""
    return tuple((c[0], c[1]) for c in map(parse_community, communities) if len(c) == 2)


def large_communities(communities: Sequence[str]) -> tuple[tuple[int, int, int], ...]:
    """The RFC 8092 ones, as ``(global, local1, local2)`` triples."""
    return tuple((c[0], c[1], c[2]) for c in map(parse_community, communities) if len(c) == 3)


def route_table_id(table: str | int) -> int:
    """The kernel table number of a configured route table: a name or a number."""
    if isinstance(table, str):
        return ROUTE_TABLE_NAMES[table]
    return table


def read_password(path: str | Path) -> bytes:
    """Read a TCP-MD5 key: the file's bytes without trailing newlines, 1..80 bytes.

    Raises :class:`ConfigError` with one line naming the file and what is wrong.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read password file: {exc.strerror or exc}"]) from exc
    key = data.rstrip(b"\r\n")
    if not key:
        raise ConfigError([f"{path}: password file is empty"])
    if len(key) > TCP_MD5_MAX_KEY_LEN:
        raise ConfigError(
            [f"{path}: password is {len(key)} bytes, TCP-MD5 allows at most {TCP_MD5_MAX_KEY_LEN}"]
        )
    return key


# ----------------------------------------------------------------------------- sections
# Defaults are the schema's (l3hostd.config); the drift test compares them.


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """This hypervisor: its name, BGP identifier and AS number."""

    name: str
    router_id: IPv4Address
    asn: int


@dataclass(frozen=True, slots=True)
class GracefulRestartConfig:
    enabled: bool = True
    restart_time: int = 120


@dataclass(frozen=True, slots=True)
class ExportConfig:
    interfaces: tuple[str, ...] = ("tap*",)
    communities: tuple[str, ...] = ()  # normalised "a:b" / "a:b:c"

    @property
    def standard_communities(self) -> tuple[tuple[int, int], ...]:
        """The RFC 1997 communities as ``(asn, value)`` pairs."""
        return standard_communities(self.communities)

    @property
    def large_communities(self) -> tuple[tuple[int, int, int], ...]:
        """The RFC 8092 large communities as ``(global, local1, local2)`` triples."""
        return large_communities(self.communities)


@dataclass(frozen=True, slots=True)
class ImportConfig:
    accept: tuple[IPNetwork, ...] = ()
    reject: tuple[IPNetwork, ...] = ()
    allow_default: bool = False
    max_prefixes: int = 500_000
    table: str | int = "main"

    @property
    def table_id(self) -> int:
        """The kernel table number learned routes go into (``main`` -> 254)."""
        return route_table_id(self.table)


@dataclass(frozen=True, slots=True)
class PeerConfig:
    """One BGP neighbour. ``hold_time``/``keepalive_time`` override the ``bgp`` ones."""

    name: str
    address: IPAddress
    asn: int
    source_address: IPAddress | None = None
    port: int = 179
    multihop: bool = True
    password_file: Path | None = None
    families: tuple[Family, ...] = ("ipv4", "ipv6")
    add_path_receive: bool = True
    hold_time: int | None = None
    keepalive_time: int | None = None

    def read_password(self) -> bytes | None:
        """The TCP-MD5 key from ``password_file``, or None if there is none."""
        if self.password_file is None:
            return None
        return read_password(self.password_file)


@dataclass(frozen=True, slots=True)
class BgpConfig:
    hold_time: int = 90
    keepalive_time: int = 30
    connect_retry_time: int = 5
    send_hold_time: int | None = None  # RFC 9687; None: max(480, 2 x the hold time)
    graceful_restart: GracefulRestartConfig = field(default_factory=GracefulRestartConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    import_: ImportConfig = field(default_factory=ImportConfig)  # YAML key "import"
    peers: tuple[PeerConfig, ...] = ()

    def hold_time_for(self, peer: PeerConfig) -> int:
        """The hold time to offer to ``peer`` (its own, else the global one)."""
        return self.hold_time if peer.hold_time is None else peer.hold_time

    def keepalive_time_for(self, peer: PeerConfig) -> int:
        """The keepalive time for ``peer`` (its own, else the global one)."""
        return self.keepalive_time if peer.keepalive_time is None else peer.keepalive_time


@dataclass(frozen=True, slots=True)
class EndpointsConfig:
    directory: Path = Path("/var/lib/l3hostd/endpoints")
    interface_patterns: tuple[str, ...] = ("tap*",)
    rescan_interval: float = 60
    allowed_networks: tuple[IPNetwork, ...] = ()  # empty: any


@dataclass(frozen=True, slots=True)
class DataplaneConfig:
    resync_interval: float = 90
    route_table: str | int = "main"
    ipv6_gateway: bool = True

    @property
    def table_id(self) -> int:
        """The kernel table number local endpoint routes go into (``main`` -> 254)."""
        return route_table_id(self.route_table)


@dataclass(frozen=True, slots=True)
class HostAllowConfig:
    dhcp: bool = True
    dns: bool = True
    metadata: bool = True


@dataclass(frozen=True, slots=True)
class FirewallConfig:
    enabled: bool = True
    host_allow: HostAllowConfig = field(default_factory=HostAllowConfig)
    metadata_address: HostPort = HostPort(IPv4Address("127.0.0.1"), 8775)


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    enabled: bool = True
    listen: HostPort = HostPort(IPv4Address("127.0.0.1"), 9469)


@dataclass(frozen=True, slots=True)
class ControlConfig:
    socket: Path = Path("/run/l3hostd/control.sock")


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: LogLevel = "info"
    format: LogFormat = "text"


@dataclass(frozen=True, slots=True)
class Config:
    """The whole configuration file."""

    node: NodeConfig
    bgp: BgpConfig = field(default_factory=BgpConfig)
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    dataplane: DataplaneConfig = field(default_factory=DataplaneConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
