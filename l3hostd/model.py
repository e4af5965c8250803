"""The data model: frozen, typed values that flow from the inputs to the reconcilers.

Everything here is immutable and hashable, built from :mod:`ipaddress` types, so that the
pure desired-state calculation (:mod:`l3hostd.calc`) can compare old and new values with
``==`` and the reconcilers can use them as dictionary keys. Nothing here does IO.

Inputs:
    :class:`Endpoint`, :class:`SecurityGroup` (from the endpoint source), :class:`Link`
    (from the netlink monitor).
Desired kernel objects (outputs of the calculation, inputs of the reconcilers):
    :class:`HostRoute`, :class:`Neighbour`, :class:`TapConfig`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_network
from typing import TypeAlias

IPAddress: TypeAlias = IPv4Address | IPv6Address
IPNetwork: TypeAlias = IPv4Network | IPv6Network

#: ``rtm_protocol`` of the host routes l3hostd installs for its local endpoints.
#: Listed in config/rt_protos.d/l3hostd.conf so ``ip route`` prints ``proto l3hostd``.
RTPROT_L3HOSTD = 44
#: ``rtm_protocol`` of routes l3hostd learned over BGP (``proto l3hostd-bgp``).
RTPROT_L3HOSTD_BGP = 45

RT_TABLE_MAIN = 254
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253

#: The gateway address every managed TAP carries for IPv6 (``fe80::1/64 nodad``): the VM
#: uses ``default via fe80::1 dev eth0``. Stateless: the same on every TAP and host.
IPV6_GATEWAY = IPv6Address("fe80::1")


class Direction(enum.Enum):
    INGRESS = "ingress"  # towards the VM
    EGRESS = "egress"  # from the VM


class EtherType(enum.Enum):
    IPV4 = "IPv4"
    IPV6 = "IPv6"


@dataclass(frozen=True, slots=True)
class SecurityGroupRule:
    """One Neutron-shaped rule. ``protocol`` is None for "any", else a name or a number."""

    direction: Direction
    ethertype: EtherType
    protocol: str | int | None = None  # "tcp", "udp", "icmp", "icmpv6", an IP protocol number
    port_range_min: int | None = None
    port_range_max: int | None = None
    icmp_type: int | None = None
    icmp_code: int | None = None
    remote_ip_prefix: IPNetwork | None = None
    remote_group: str | None = None


@dataclass(frozen=True, slots=True)
class SecurityGroup:
    name: str
    rules: tuple[SecurityGroupRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One VM port, as described by its endpoint file. ``mac`` is lower-case ``aa:bb:..``."""

    id: str
    interface: str
    mac: str
    ips: tuple[IPAddress, ...]
    allowed_address_pairs: tuple[IPNetwork, ...] = ()
    security_groups: tuple[str, ...] = ()
    #: a /32 or /128 per IP, for its host route. Derived here, when the endpoint file is
    #: read, not on the path from TAP up to the announcement: there, ``ip_network`` cost
    #: ~0.1 ms on a CPU back from idle.
    host_prefixes: tuple[IPNetwork, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_prefixes",
                           tuple(ip_network((ip, ip.max_prefixlen)) for ip in self.ips))

    @property
    def ipv4(self) -> tuple[IPv4Address, ...]:
        return tuple(ip for ip in self.ips if isinstance(ip, IPv4Address))

    @property
    def ipv6(self) -> tuple[IPv6Address, ...]:
        return tuple(ip for ip in self.ips if isinstance(ip, IPv6Address))


@dataclass(frozen=True, slots=True)
class Link:
    """A network interface as the kernel reports it (RTM_NEWLINK). Keyed by ``ifindex``:
    a rename keeps the index, so state follows the device, not its name."""

    ifindex: int
    ifname: str
    admin_up: bool  # IFF_UP
    lower_up: bool  # IFF_LOWER_UP: carrier (a VM is attached to the tap / veth peer up)

    @property
    def up(self) -> bool:
        """Usable for host routes: the kernel refuses routes on an admin-down device and a
        route to a device without carrier would black-hole the VM's traffic."""
        return self.admin_up and self.lower_up


@dataclass(frozen=True, slots=True)
class RouteKey:
    """What identifies a route for ownership: (table, destination). One l3hostd route per
    key; a route of another protocol with the same key is a different kernel object."""

    table: int
    dst: IPNetwork


@dataclass(frozen=True, slots=True)
class HostRoute:
    """``<ip>/32|/128 dev <tap> scope link proto l3hostd table <table>``."""

    dst: IPNetwork
    ifindex: int
    table: int = RT_TABLE_MAIN
    protocol: int = RTPROT_L3HOSTD
    scope: int = RT_SCOPE_LINK

    @property
    def key(self) -> RouteKey:
        return RouteKey(self.table, self.dst)


@dataclass(frozen=True, slots=True)
class NeighbourKey:
    ifindex: int
    ip: IPAddress


@dataclass(frozen=True, slots=True)
class Neighbour:
    """A permanent neighbour entry ``<vm ip> lladdr <vm mac> dev <tap> nud permanent``."""

    ifindex: int
    ip: IPAddress
    mac: str

    @property
    def key(self) -> NeighbourKey:
        return NeighbourKey(self.ifindex, self.ip)


@dataclass(frozen=True, slots=True)
class TapConfig:
    """Per-TAP settings: sysctls (proxy-ARP, forwarding, no RA) and the IPv6 gateway
    address. Keyed by ifindex; ``ifname`` is needed for the /proc/sys paths."""

    ifindex: int
    ifname: str
    ipv6: bool = True
    #: ``route_localnet=1``: the metadata service is DNATed to a loopback address
    route_localnet: bool = False


class EndpointState(enum.Enum):
    """Why an endpoint is or is not programmed (shown by l3hostctl and in metrics)."""

    ACTIVE = "active"  # valid file, TAP present and up: routes installed
    NO_INTERFACE = "no-interface"  # valid file, TAP not (yet) present
    INTERFACE_DOWN = "interface-down"  # TAP present but admin-down or without carrier
    CONFLICT = "conflict"  # an IP or the interface is claimed by another endpoint
    INVALID = "invalid"  # its file could not be parsed (previous version may stay in force)
