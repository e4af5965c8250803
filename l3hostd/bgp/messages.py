"""Our own BGP message types: small, frozen, typed. ExaBGP objects never leave codec.py.

Pure (no IO). Names follow RFC 4271 and the RFCs of each capability. A decoded UPDATE is
converted at once into :class:`Update` holding :class:`Route` values whose path
attributes are an interned :class:`PathAttributes` (a route reflector sends thousands of
routes sharing one attribute set; interning keeps one object for all of them, which is
what makes 100k+ routes cheap to hold).

Errors that must end the session are raised as :class:`BgpError` carrying the
NOTIFICATION code/subcode/data (RFC 4271 §6); errors that RFC 7606 says to
treat-as-withdraw never raise: the affected prefixes come back as withdrawals in
``Update.withdrawn`` and ``Update.treat_as_withdraw`` is set with the reason.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Network
from typing import ClassVar, TypeAlias

from l3hostd.model import IPAddress, IPNetwork

AFI_IPV4 = 1
AFI_IPV6 = 2
SAFI_UNICAST = 1

Family: TypeAlias = tuple[int, int]  # (AFI, SAFI)
IPV4_UNICAST: Family = (AFI_IPV4, SAFI_UNICAST)
IPV6_UNICAST: Family = (AFI_IPV6, SAFI_UNICAST)
FAMILY_NAMES: dict[Family, str] = {IPV4_UNICAST: "ipv4", IPV6_UNICAST: "ipv6"}


def family_of(prefix: IPNetwork) -> Family:
    return IPV4_UNICAST if prefix.version == 4 else IPV6_UNICAST


class MessageType(enum.IntEnum):
    OPEN = 1
    UPDATE = 2
    NOTIFICATION = 3
    KEEPALIVE = 4
    ROUTE_REFRESH = 5


# ---- NOTIFICATION codes (RFC 4271 §4.5, RFC 4486, RFC 8203, RFC 7313) -------------------

class ErrorCode(enum.IntEnum):
    MESSAGE_HEADER = 1
    OPEN_MESSAGE = 2
    UPDATE_MESSAGE = 3
    HOLD_TIMER_EXPIRED = 4
    FSM = 5
    CEASE = 6
    ROUTE_REFRESH = 7


# Message Header Error subcodes
HDR_CONNECTION_NOT_SYNCHRONIZED = 1
HDR_BAD_MESSAGE_LENGTH = 2
HDR_BAD_MESSAGE_TYPE = 3
# OPEN Message Error subcodes
OPEN_UNSUPPORTED_VERSION = 1
OPEN_BAD_PEER_AS = 2
OPEN_BAD_BGP_IDENTIFIER = 3
OPEN_UNSUPPORTED_OPTIONAL_PARAMETER = 4
OPEN_UNACCEPTABLE_HOLD_TIME = 6
OPEN_UNSUPPORTED_CAPABILITY = 7
# UPDATE Message Error subcodes
UPDATE_MALFORMED_ATTRIBUTE_LIST = 1
UPDATE_UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE = 2
UPDATE_MISSING_WELL_KNOWN_ATTRIBUTE = 3
UPDATE_ATTRIBUTE_FLAGS_ERROR = 4
UPDATE_ATTRIBUTE_LENGTH_ERROR = 5
UPDATE_INVALID_ORIGIN = 6
UPDATE_INVALID_NEXT_HOP = 8
UPDATE_OPTIONAL_ATTRIBUTE_ERROR = 9
UPDATE_INVALID_NETWORK_FIELD = 10
UPDATE_MALFORMED_AS_PATH = 11
# FSM Error subcodes (RFC 6608)
FSM_UNEXPECTED_IN_OPENSENT = 1
FSM_UNEXPECTED_IN_OPENCONFIRM = 2
FSM_UNEXPECTED_IN_ESTABLISHED = 3
# Cease subcodes (RFC 4486)
CEASE_MAX_PREFIXES = 1
CEASE_ADMIN_SHUTDOWN = 2
CEASE_PEER_DECONFIGURED = 3
CEASE_ADMIN_RESET = 4
CEASE_CONNECTION_REJECTED = 5
CEASE_OTHER_CONFIGURATION_CHANGE = 6
CEASE_COLLISION_RESOLUTION = 7
CEASE_OUT_OF_RESOURCES = 8
CEASE_HARD_RESET = 9  # RFC 8538


class BgpError(Exception):
    """A condition that ends the session with this NOTIFICATION (RFC 4271 §6)."""

    def __init__(self, code: int, subcode: int = 0, data: bytes = b"", reason: str = "") -> None:
        self.code = code
        self.subcode = subcode
        self.data = data
        self.reason = reason or describe_notification(code, subcode)
        super().__init__(self.reason)

    def notification(self) -> Notification:
        return Notification(self.code, self.subcode, self.data)


_CODE_NAMES = {
    1: "Message Header Error",
    2: "OPEN Message Error",
    3: "UPDATE Message Error",
    4: "Hold Timer Expired",
    5: "Finite State Machine Error",
    6: "Cease",
    7: "ROUTE-REFRESH Message Error",
}
_SUBCODE_NAMES = {
    (1, 1): "Connection Not Synchronized",
    (1, 2): "Bad Message Length",
    (1, 3): "Bad Message Type",
    (2, 1): "Unsupported Version Number",
    (2, 2): "Bad Peer AS",
    (2, 3): "Bad BGP Identifier",
    (2, 4): "Unsupported Optional Parameter",
    (2, 6): "Unacceptable Hold Time",
    (2, 7): "Unsupported Capability",
    (3, 1): "Malformed Attribute List",
    (3, 2): "Unrecognized Well-known Attribute",
    (3, 3): "Missing Well-known Attribute",
    (3, 4): "Attribute Flags Error",
    (3, 5): "Attribute Length Error",
    (3, 6): "Invalid ORIGIN Attribute",
    (3, 8): "Invalid NEXT_HOP Attribute",
    (3, 9): "Optional Attribute Error",
    (3, 10): "Invalid Network Field",
    (3, 11): "Malformed AS_PATH",
    (5, 1): "Receive Unexpected Message in OpenSent State",
    (5, 2): "Receive Unexpected Message in OpenConfirm State",
    (5, 3): "Receive Unexpected Message in Established State",
    (6, 1): "Maximum Number of Prefixes Reached",
    (6, 2): "Administrative Shutdown",
    (6, 3): "Peer De-configured",
    (6, 4): "Administrative Reset",
    (6, 5): "Connection Rejected",
    (6, 6): "Other Configuration Change",
    (6, 7): "Connection Collision Resolution",
    (6, 8): "Out of Resources",
    (6, 9): "Hard Reset",
}


def describe_notification(code: int, subcode: int) -> str:
    name = _CODE_NAMES.get(code, f"code {code}")
    sub = _SUBCODE_NAMES.get((code, subcode))
    return f"{name}/{sub}" if sub else f"{name}/{subcode}"


# ---- messages ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GracefulRestart:
    """RFC 4724 capability: restart flag, restart time, and per family whether forwarding
    state was preserved (F bit)."""

    restart_time: int
    restarting: bool = False  # the R bit
    families: tuple[tuple[Family, bool], ...] = ()  # (family, forwarding preserved)


@dataclass(frozen=True, slots=True)
class Capabilities:
    families: frozenset[Family] = frozenset({IPV4_UNICAST})  # Multiprotocol (RFC 4760)
    asn4: int | None = None  # 4-octet AS number (RFC 6793); None: not advertised
    route_refresh: bool = True  # RFC 2918
    graceful_restart: GracefulRestart | None = None
    add_path: tuple[tuple[Family, int], ...] = ()  # RFC 7911: 1 receive, 2 send, 3 both


@dataclass(frozen=True, slots=True)
class Open:
    asn: int  # the real AS (4-octet value when the capability is present)
    hold_time: int
    router_id: IPv4Address
    capabilities: Capabilities = field(default_factory=Capabilities)
    version: int = 4


@dataclass(frozen=True, slots=True)
class Keepalive:
    pass


@dataclass(frozen=True, slots=True)
class Notification:
    code: int
    subcode: int = 0
    data: bytes = b""

    def __str__(self) -> str:
        text = describe_notification(self.code, self.subcode)
        if self.code == ErrorCode.CEASE and self.subcode in (2, 4) and self.data:
            # RFC 8203 shutdown communication: length byte + UTF-8
            text += f" ({self.data[1:1 + self.data[0]].decode(errors='replace')!r})"
        return text


@dataclass(frozen=True, slots=True)
class RouteRefresh:
    family: Family
    subtype: int = 0  # RFC 7313: 0 request, 1 BoRR, 2 EoRR


class PathAttributes:
    """The attributes of a path, interned: equal attribute sets are one object.

    Next hop is not part of it (a reflector's routes differ mostly by next hop)."""

    __slots__ = (
        "__weakref__",
        "as_path",
        "cluster_list",
        "communities",
        "large_communities",
        "local_pref",
        "med",
        "origin",
        "originator_id",
    )
    _interned: ClassVar[dict[tuple[object, ...], PathAttributes]] = {}

    origin: int
    as_path: tuple[int, ...]
    local_pref: int | None
    med: int | None
    communities: tuple[int, ...]
    large_communities: tuple[tuple[int, int, int], ...]
    originator_id: IPv4Address | None
    cluster_list: tuple[IPv4Address, ...]

    def __new__(
        cls,
        origin: int = 0,
        as_path: tuple[int, ...] = (),
        local_pref: int | None = None,
        med: int | None = None,
        communities: tuple[int, ...] = (),
        large_communities: tuple[tuple[int, int, int], ...] = (),
        originator_id: IPv4Address | None = None,
        cluster_list: tuple[IPv4Address, ...] = (),
    ) -> PathAttributes:
        key = (origin, as_path, local_pref, med, communities, large_communities,
               originator_id, cluster_list)
        found = cls._interned.get(key)
        if found is not None:
            return found
        self = object.__new__(cls)
        self.origin = origin
        self.as_path = as_path
        self.local_pref = local_pref
        self.med = med
        self.communities = communities
        self.large_communities = large_communities
        self.originator_id = originator_id
        self.cluster_list = cluster_list
        if len(cls._interned) > 100_000:  # bound the table; equality still holds
            cls._interned.clear()
        cls._interned[key] = self
        return self

    def _key(self) -> tuple[object, ...]:
        return (self.origin, self.as_path, self.local_pref, self.med, self.communities,
                self.large_communities, self.originator_id, self.cluster_list)

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, PathAttributes) and self._key() == other._key())

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"PathAttributes(origin={self.origin}, as_path={self.as_path}, "
                f"local_pref={self.local_pref}, med={self.med}, "
                f"communities={self.communities}, originator_id={self.originator_id})")


@dataclass(frozen=True, slots=True)
class Route:
    """One received path: prefix + ADD-PATH path id (0 without ADD-PATH) + next hop."""

    prefix: IPNetwork
    path_id: int
    next_hop: IPAddress
    attributes: PathAttributes


def prefix_key(prefix: IPNetwork) -> int:
    """One int per prefix: address, length and family; unique across families. The RIB,
    the learned-route reconciler and the netlink packer all speak it."""
    return (int(prefix.network_address) << 9) | (prefix.prefixlen << 1) | (prefix.version == 6)


def key_prefix(key: int) -> IPNetwork:
    plen = (key >> 1) & 0xFF
    if key & 1:
        return IPv6Network((key >> 9, plen))
    return IPv4Network((key >> 9, plen))


def key_is_v6(key: int) -> bool:
    return bool(key & 1)


@dataclass(frozen=True, slots=True)
class PackedRoutes:
    """Received paths sharing one next hop and attribute set, in compact form: prefix keys
    (:func:`prefix_key`) and ADD-PATH path ids (None: all 0). How the codec hands over
    the bulk of a table -- the IPv4 NLRI field of a reflector's UPDATEs -- without a
    network and a route object per prefix (100k of them were the bulk of the daemon's
    memory churn during a full-table load)."""

    keys: tuple[int, ...]
    path_ids: tuple[int, ...] | None
    next_hop: IPAddress
    attributes: PathAttributes

    def routes(self) -> tuple[Route, ...]:
        pids = self.path_ids or (0,) * len(self.keys)
        return tuple(Route(key_prefix(k), pid, self.next_hop, self.attributes)
                     for k, pid in zip(self.keys, pids, strict=True))


@dataclass(frozen=True, slots=True)
class Update:
    """A decoded UPDATE. ``end_of_rib`` is set (and nothing else) for an End-of-RIB marker
    (RFC 4724 §2: an empty UPDATE for IPv4, an empty MP_UNREACH for other families).

    Announced paths are in ``announced`` or, in compact form, in ``packed`` (see
    :class:`PackedRoutes`); :meth:`all_announced` gives both as routes."""

    announced: tuple[Route, ...] = ()
    withdrawn: tuple[tuple[IPNetwork, int], ...] = ()  # (prefix, path id)
    end_of_rib: Family | None = None
    treat_as_withdraw: str = ""  # RFC 7606: why announced prefixes were turned into withdrawals
    packed: PackedRoutes | None = None

    @property
    def announced_count(self) -> int:
        return len(self.announced) + (len(self.packed.keys) if self.packed else 0)

    def all_announced(self) -> tuple[Route, ...]:
        return self.announced + (self.packed.routes() if self.packed else ())


Message: TypeAlias = Open | Update | Keepalive | Notification | RouteRefresh


@dataclass(frozen=True, slots=True)
class Announcement:
    """What we send for one prefix (iBGP, next-hop self)."""

    prefix: IPNetwork
    next_hop: IPAddress
    local_pref: int = 100
    communities: tuple[int, ...] = ()
    large_communities: tuple[tuple[int, int, int], ...] = ()
    med: int | None = None


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What both OPENs agreed on (RFC 4271 §4.2, RFC 4760, RFC 6793, RFC 7911, RFC 4724)."""

    local_asn: int
    peer_asn: int
    peer_router_id: IPv4Address
    hold_time: int  # the smaller of both offers (0 = no keepalives, no hold timer)
    keepalive_time: int  # min(configured keepalive, hold_time // 3)
    families: frozenset[Family]  # advertised by both
    asn4: bool
    route_refresh: bool
    add_path_receive: frozenset[Family]  # we receive path ids for these
    add_path_send: frozenset[Family]  # we send path ids for these
    peer_graceful_restart: GracefulRestart | None  # the peer's GR capability, if any
    local_graceful_restart: GracefulRestart | None
