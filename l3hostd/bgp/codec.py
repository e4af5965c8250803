"""BGP wire codec: the only module that imports exabgp.

How it works
------------
ExaBGP 5.0.x is used as a library, never as a daemon: its reactor, configuration and
process management are not imported. What it does for us:

* **UPDATE decode** (the part that matters: we parse what route reflectors send us):
  ``Update.unpack_message(body, Direction.IN, negotiated)`` with an ExaBGP ``Negotiated``
  built from both OPENs. Its objects are converted at once into our own compact types
  (:class:`~l3hostd.bgp.messages.Route` with an interned
  :class:`~l3hostd.bgp.messages.PathAttributes`); no ExaBGP object leaves this module.
* **OPEN** encode and decode (``Capabilities``/``Open``), **KEEPALIVE**, **NOTIFICATION**
  and **ROUTE-REFRESH** encode, **End-of-RIB** encode.

What we do ourselves, and why:

* **UPDATE encode** is packed here with ``struct``. What we send is simple (iBGP,
  next-hop self, a handful of attributes, host routes); ExaBGP's ``Update.messages``
  measured ~145k prefixes/s and ~17 us per attribute set (so a table whose LOCAL_PREF
  varies per route would encode at ~50k/s), while this packer does >1M/s. The tests decode
  everything it produces with ExaBGP.
* **NOTIFICATION decode** (ExaBGP rewrites the data field into text; we keep the bytes) and
  **ROUTE-REFRESH decode** (ExaBGP answers an unknown subtype with a NOTIFICATION that
  RFC 7313 §5 does not define; the RFC says to ignore the message, so we return it and the
  caller ignores subtypes other than 0/1/2).
* The checks ExaBGP leaves to its reactor: OPEN version (data = our version, RFC 4271
  §6.2), BGP identifier, hold time, peer AS; RFC 7606 checks listed below.

ExaBGP pitfalls handled here (measured with 5.0.15)
---------------------------------------------------
* **Logger:** ExaBGP's ``log.debug`` dereferences ``option.logger`` which is ``None`` until
  ExaBGP's own ``log.init`` has run: the first decode would die with AttributeError. Its
  ``log.init`` however adds a StreamHandler on stderr (and, depending on environment
  variables, syslog or file handlers). We point ``option.logger`` at our own
  ``logging.getLogger("l3hostd.bgp.exabgp")`` (no handler added: it propagates to whatever
  the daemon configured), pass WARNING and above through, and replace ``log.debug`` by a
  no-op (it is called per NLRI and cost ~10% of decode time). Importing exabgp and calling
  ``getenv()`` (which reads ``exabgp.*`` variables and an ``exabgp.env`` next to argv[0])
  was checked not to touch cwd, umask, uid, signal handlers, the root logger, stdout or
  ``os.environ``; the daemon/reactor modules that would are never imported.
  ``tests/unit/test_bgp_codec.py`` checks this in a fresh interpreter.
* **RFC 7606 in ExaBGP is partial.** Treat-as-withdraw comes back as an
  ``INTERNAL_TREAT_AS_WITHDRAW`` (0xFFFF) entry in the attributes, attribute-discard as
  ``INTERNAL_DISCARD`` (0xFFFE); neither raises. Gaps we close:
  - a bad ORIGIN value or length is accepted silently: checked here (treat-as-withdraw);
  - a malformed ORIGINATOR_ID or CLUSTER_LIST raised 3/5 (session reset); RFC 7606 §7.9
    and §7.10 say treat-as-withdraw: added to ExaBGP's ``Attributes.TREAT_AS_WITHDRAW``;
    a malformed AS4_PATH / AS4_AGGREGATOR reset the session; RFC 6793 §6 says discard:
    added to ``Attributes.DISCARD``;
  - missing well-known mandatory attributes (ORIGIN, AS_PATH, NEXT_HOP for IPv4 NLRI)
    are not checked by ExaBGP: checked here (RFC 7606 §3.d, treat-as-withdraw);
  - an empty AS_PATH decodes to *no* AS_PATH attribute, indistinguishable from a missing
    one: when it is absent we look at the raw attribute headers;
  - an attribute whose length overruns the attribute section is treat-as-withdraw in
    ExaBGP even when it is the MP_REACH/MP_UNREACH whose NLRI then cannot be located:
    RFC 7606 §5.3 requires a session reset then, so it raises BgpError 3/1 here;
  - the IPv4 NEXT_HOP is accepted with 16 bytes; semantically invalid next hops
    (0.0.0.0, ::, multicast, loopback, an IPv6 link-local one in the global field) are
    accepted: all are treat-as-withdraw here (RFC 4271 §6.3: ignore the route);
  - an UPDATE whose attributes all decode to nothing (e.g. only an empty AS_PATH) is
    reported by ExaBGP as IPv4 End-of-RIB; only the 4-byte empty UPDATE is one here, and
    another family's End-of-RIB is an UPDATE holding nothing but an empty MP_UNREACH_NLRI
    of a negotiated family (ExaBGP also reports one beside another attribute, or for an
    unknown AFI/SAFI);
  - ExaBGP applies its zero-length rule before an attribute's class, so a zero-length
    AGGREGATOR / AS4_PATH / AS4_AGGREGATOR (discard, RFC 7606 §7.7, RFC 6793 §6) made the
    UPDATE treat-as-withdraw; and it drops an empty AS_PATH, then decodes a repeated
    AS_PATH as the first (RFC 7606 §3.g keeps the first): when ExaBGP says
    treat-as-withdraw, such attributes are taken out and the UPDATE decoded again;
  - an empty or repeated MP_REACH/MP_UNREACH came back as treat-as-withdraw, as did one
    whose extended length is cut: their NLRI cannot be located, so it raises (3/9, 3/1);
  - on a session without IPv4 unicast, the classic Withdrawn Routes and NLRI fields are
    ignored (as FRR does) instead of installed;
  - OPEN: an Optional Parameters Length running past the message was accepted (2/0 here),
    an optional parameter of type 1 got the deprecated subcode 5 (2/4 here), My AS 0 was
    accepted beside a 4-octet AS capability (2/2, RFC 7607).
  These were found by the fuzzer (``bench/fuzz.py``); each has a regression test in
  ``tests/unit/test_fuzz_bgp.py``.
* **IPv6 with a global and a link-local next hop** (BIRD sends both, next-hop length 32):
  ExaBGP yields every prefix twice, once per next hop. We keep one route per
  (prefix, path id), with the global next hop (only for IPv6: the same IPv4 prefix in the
  NLRI field and in an MP_REACH_NLRI is two routes, each next hop is checked).
* **Exceptions other than Notify** (IndexError, struct.error, ValueError... ExaBGP's own
  FIXME says so) are wrapped into BgpError 3/1 for UPDATE and 2/0 for OPEN, with the
  original message in ``reason``. ``Notify`` becomes ``BgpError(code, subcode)``; its
  data field is ExaBGP's diagnostic text, which goes into ``reason`` (data is kept only
  where it is binary, the Bad Message Length case).
* **Per-session attribute cache:** ExaBGP returns the very same Attributes object when an
  UPDATE repeats the previous one's attribute bytes; our conversion is cached on that
  identity, so a reflector's run of UPDATEs costs one conversion.
* **Garbage collector:** ExaBGP allocates several GC-tracked objects per NLRI, alive until
  the message is converted; the collections they trigger promote them and rescan the
  caller's growing RIB. ``decode_update`` pauses the cyclic GC for its duration (restoring
  the previous state). The daemon should still ``gc.freeze()`` after a full table load.

Measured (``bench/codec.py``, 2 vCPU VM, Python 3.11): decode of a reflector's stream of
100k IPv4 /32s ~140k prefixes/s (~110k/s when the results are kept, as a RIB does); IPv6
/128s with BIRD's global + link-local next hop ~65k/s (ExaBGP parses each NLRI twice),
~115k/s with a global next hop only; encode ~1M prefixes/s (100k in ~0.1 s).

Decoded values
--------------
``PathAttributes.as_path`` is flat: the ASNs of AS_SEQUENCE and AS_SET segments in wire
order (AS_SET members included, each counted); confederation segments (RFC 5065) are
left out. Communities and large communities are sorted and de-duplicated (order carries
no meaning, RFC 1997/8092; ExaBGP already sorts them). A missing LOCAL_PREF is ``None``.
"""

from __future__ import annotations

import gc
import logging
import struct
from collections.abc import Iterator, Sequence
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any, Final, TypeAlias

from exabgp.bgp.message.action import Action
from exabgp.bgp.message.direction import Direction
from exabgp.bgp.message.keepalive import KeepAlive as ExaKeepAlive
from exabgp.bgp.message.notification import Notify
from exabgp.bgp.message.open import Open as ExaOpen
from exabgp.bgp.message.open.asn import ASN
from exabgp.bgp.message.open.capability import Capabilities as ExaCapabilities
from exabgp.bgp.message.open.capability.addpath import AddPath
from exabgp.bgp.message.open.capability.asn4 import ASN4
from exabgp.bgp.message.open.capability.capability import Capability
from exabgp.bgp.message.open.capability.graceful import Graceful
from exabgp.bgp.message.open.capability.mp import MultiProtocol
from exabgp.bgp.message.open.capability.negotiated import Negotiated as ExaNegotiated
from exabgp.bgp.message.open.capability.refresh import RouteRefresh as ExaRouteRefreshCapability
from exabgp.bgp.message.open.holdtime import HoldTime
from exabgp.bgp.message.open.routerid import RouterID
from exabgp.bgp.message.open.version import Version
from exabgp.bgp.message.refresh import RouteRefresh as ExaRouteRefresh
from exabgp.bgp.message.update import Update as ExaUpdate
from exabgp.bgp.message.update.attribute import Attribute, Attributes
from exabgp.bgp.message.update.attribute.aspath import SEQUENCE, SET
from exabgp.bgp.message.update.eor import EOR
from exabgp.environment import getenv
from exabgp.logger import log as exa_log
from exabgp.logger.option import option as exa_log_option
from exabgp.protocol.family import AFI, SAFI

from l3hostd.bgp.messages import (
    AFI_IPV6,
    IPV4_UNICAST,
    IPV6_UNICAST,
    SAFI_UNICAST,
    Announcement,
    BgpError,
    Capabilities,
    ErrorCode,
    Family,
    GracefulRestart,
    MessageType,
    Negotiated,
    Notification,
    Open,
    PackedRoutes,
    PathAttributes,
    Route,
    RouteRefresh,
    Update,
    key_prefix,
    prefix_key,
)
from l3hostd.fastnet import ipv4_network
from l3hostd.model import IPAddress, IPNetwork

HEADER_LEN = 19
MAX_MESSAGE_LEN = 4096
BGP_VERSION = 4
AS_TRANS = 23456

_MARKER: Final = b"\xff" * 16
_HEADER = struct.Struct("!HB")  # length, type (after the marker)
_U16 = struct.Struct("!H")
_U32 = struct.Struct("!L")
_LARGE = struct.Struct("!LLL")
_ADD_PATH_ID: Final = b"\x00\x00\x00\x01"  # we only ever send one path per prefix
_LEN_BYTE: Final = [bytes((n,)) for n in range(129)]
_LEN32: Final = b"\x20"
_HOST32 = struct.Struct("!xI")  # a /32 in an NLRI field: length (32), address
_HOST32_ADD_PATH = struct.Struct("!IxI")  # path id, length (32), address
_MAX_NLRI_LEN: Final = 4 + 1 + 16  # path id, length, IPv6 address
_MP_IPV6_FAMILY: Final = struct.pack("!HB", AFI_IPV6, SAFI_UNICAST)
_UPDATE: Final = int(MessageType.UPDATE)
_WITHDRAW: Final = Action.WITHDRAW

# Path attribute type codes and flags (RFC 4271 §4.3, RFC 4760, RFC 1997, RFC 8092, RFC 4456)
ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF, ATOMIC_AGGREGATE, AGGREGATOR = 1, 2, 3, 4, 5, 6, 7
COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST, MP_REACH_NLRI, MP_UNREACH_NLRI = 8, 9, 10, 14, 15
AS4_PATH, AS4_AGGREGATOR, LARGE_COMMUNITY = 17, 18, 32
F_OPTIONAL, F_TRANSITIVE, F_EXTENDED = 0x80, 0x40, 0x10
_ATTRIBUTE_NAMES = {
    ORIGIN: "ORIGIN", AS_PATH: "AS_PATH", NEXT_HOP: "NEXT_HOP", MED: "MULTI_EXIT_DISC",
    LOCAL_PREF: "LOCAL_PREF", ATOMIC_AGGREGATE: "ATOMIC_AGGREGATE", AGGREGATOR: "AGGREGATOR",
    COMMUNITIES: "COMMUNITIES", ORIGINATOR_ID: "ORIGINATOR_ID", CLUSTER_LIST: "CLUSTER_LIST",
    MP_REACH_NLRI: "MP_REACH_NLRI", MP_UNREACH_NLRI: "MP_UNREACH_NLRI", 16: "EXTENDED_COMMUNITIES",
    AS4_PATH: "AS4_PATH", AS4_AGGREGATOR: "AS4_AGGREGATOR", LARGE_COMMUNITY: "LARGE_COMMUNITY",
}  # fmt: skip

#: Malformed means discard for these (RFC 7606 §7.7, RFC 6793 §6), zero length included
_DISCARD_WHEN_EMPTY: Final = frozenset({AGGREGATOR, AS4_PATH, AS4_AGGREGATOR})

# ExaBGP's marker for treat-as-withdraw in a decoded attribute set (attribute-discard has
# one too, 0xFFFE; the discarded attribute is simply absent, which is all we need)
_TREAT_AS_WITHDRAW: Final = 0xFFFF

# GR capability flag bits (RFC 4724 §3): R in the 4-bit flags, F in each family's flags
_GR_RESTART: Final = 0x8
_GR_FORWARDING: Final = 0x80

_EOR_IPV4_BODY: Final = b"\x00\x00\x00\x00"
_BROADCAST: Final = IPv4Address("255.255.255.255")
_EMPTY_UPDATE: Final = Update()

_exa_logger = logging.getLogger("l3hostd.bgp.exabgp")

# announcements with equal keys share their UPDATEs: prefix type, next hop, LOCAL_PREF, MED,
# communities, large communities
_GroupKey: TypeAlias = tuple[
    type, IPAddress, int, int | None, tuple[int, ...], tuple[tuple[int, int, int], ...]
]


# ---- ExaBGP process-wide set-up ----------------------------------------------------------


def _ignore(*_args: object, **_kwargs: object) -> None:
    return None


def _format_exabgp_line(message: str, source: str, level: str, timestamp: object) -> str:
    return f"{source}: {message}"


def _setup_exabgp() -> None:
    """Make ExaBGP usable as a library; idempotent. See "Logger" in the module docstring."""
    getenv()  # parse ExaBGP's environment once, now, rather than inside the first decode
    exa_log_option.logger = _exa_logger
    exa_log_option.formater = _format_exabgp_line
    exa_log_option.logit = {
        "FATAL": True, "CRITICAL": True, "ERROR": True, "WARNING": True,
        "INFO": False, "DEBUG": False, "NOTSET": False,
    }  # fmt: skip
    exa_log_option.enabled = {}  # every source; the level above does the filtering
    exa_log.debug = _ignore  # called per NLRI; never enabled for us anyway
    # RFC 7606 §7.9/§7.10 and RFC 6793 §6, which ExaBGP does not follow (see docstring)
    taw = tuple(Attributes.TREAT_AS_WITHDRAW)
    for code in (Attribute.CODE.ORIGINATOR_ID, Attribute.CODE.CLUSTER_LIST):
        if code not in taw:
            taw += (code,)
    Attributes.TREAT_AS_WITHDRAW = taw
    discard = tuple(Attributes.DISCARD)
    for code in (Attribute.CODE.AS4_PATH, Attribute.CODE.AS4_AGGREGATOR):
        if code not in discard:
            discard += (code,)
    Attributes.DISCARD = discard


_setup_exabgp()


# ---- small helpers ------------------------------------------------------------------------


def _message(msg_type: int, body: bytes) -> bytes:
    return _MARKER + _HEADER.pack(HEADER_LEN + len(body), msg_type) + body


def _attribute(flags: int, code: int, value: bytes) -> bytes:
    if len(value) > 255:
        return struct.pack("!BBH", flags | F_EXTENDED, code, len(value)) + value
    return struct.pack("!BBB", flags & ~F_EXTENDED, code, len(value)) + value


def _mp_attribute(code: int, value: bytes) -> bytes:
    """MP_REACH/MP_UNREACH, always with a 2-byte length so that budgets are fixed."""
    return struct.pack("!BBH", F_OPTIONAL | F_EXTENDED, code, len(value)) + value


def _nlri(prefix: IPNetwork) -> bytes:
    plen = prefix.prefixlen
    return _LEN_BYTE[plen] + prefix.network_address.packed[: (plen + 7) >> 3]


def _chunks(items: list[bytes], budget: int) -> Iterator[bytes]:
    """Concatenations of consecutive items, each at most ``budget`` bytes."""
    current: list[bytes] = []
    size = 0
    for item in items:
        n = len(item)
        if size + n > budget and current:
            yield b"".join(current)
            current = []
            size = 0
        current.append(item)
        size += n
    if current:
        yield b"".join(current)


def _attribute_name(code: int) -> str:
    return _ATTRIBUTE_NAMES.get(code, f"attribute {code}")


def _notify_text(exc: Notify) -> str:
    data = exc.data
    if isinstance(data, bytes | bytearray):
        return bytes(data).decode("ascii", errors="replace")
    return str(data)


def _bgp_error(exc: Notify, context: str) -> BgpError:
    """ExaBGP's Notify as our BgpError: its data is diagnostic text, except for Bad Message
    Length where it is the 2-byte length RFC 4271 §6.1 asks for."""
    code, subcode = int(exc.code), int(exc.subcode)
    if (code, subcode) == (ErrorCode.MESSAGE_HEADER, 2):
        return BgpError(code, subcode, bytes(exc.data), f"{context}: bad message length")
    return BgpError(code, subcode, b"", f"{context}: {_notify_text(exc)}")


def _family_objects(family: Family) -> tuple[Any, Any]:
    return AFI.create(family[0]), SAFI.create(family[1])


def _walk_attributes(block: bytes) -> tuple[list[tuple[int, int, bytes]], str, int | None]:
    """Frame the path attributes without decoding them: the well-framed ``(flags, code,
    value)`` list, then what stopped the walk ("" if nothing), and the type code of an
    attribute whose length overran the section or whose extended length was cut (None if
    none)."""
    out: list[tuple[int, int, bytes]] = []
    offset, end = 0, len(block)
    while offset < end:
        if end - offset < 3:
            return out, "truncated attribute header", None
        flags, code = block[offset], block[offset + 1]
        if flags & F_EXTENDED:
            if end - offset < 4:
                return out, f"truncated {_attribute_name(code)} header", code
            length = _U16.unpack_from(block, offset + 2)[0]
            start = offset + 4
        else:
            length = block[offset + 2]
            start = offset + 3
        if start + length > end:
            return out, f"{_attribute_name(code)} length overruns the path attributes", code
        out.append((flags, code, block[start : start + length]))
        offset = start + length
    return out, "", None


def _attribute_block(body: bytes) -> bytes:
    """The path attribute section of an UPDATE body ExaBGP has already framed."""
    withdrawn_len = _U16.unpack_from(body, 0)[0]
    attr_len = _U16.unpack_from(body, 2 + withdrawn_len)[0]
    return body[4 + withdrawn_len : 4 + withdrawn_len + attr_len]


def _without_ignored_attributes(body: bytes) -> bytes | None:
    """The UPDATE without the attributes RFC 7606 says to ignore, or None if it has none:
    repeats of an attribute other than MP_REACH/MP_UNREACH (§3.g: the first one counts) and
    zero-length AGGREGATOR, AS4_PATH and AS4_AGGREGATOR (malformed ones of these three are
    discarded: §7.7, RFC 6793 §6). Called only for an UPDATE ExaBGP marked treat-as-withdraw:
    it drops an empty AS_PATH and then decodes a repeated AS_PATH as if it were the first,
    and applies its zero-length rule before looking at the attribute's class."""
    framed, stop, _ = _walk_attributes(_attribute_block(body))
    if stop:
        return None  # treat-as-withdraw anyway
    kept: list[tuple[int, int, bytes]] = []
    seen: set[int] = set()
    for flags, code, value in framed:
        if code in (MP_REACH_NLRI, MP_UNREACH_NLRI):
            kept.append((flags, code, value))  # twice is a session reset: keep both
        elif code not in seen and (value or code not in _DISCARD_WHEN_EMPTY):
            kept.append((flags, code, value))
        seen.add(code)
    if len(kept) == len(framed):
        return None
    block = b"".join(
        struct.pack("!BBH" if flags & F_EXTENDED else "!BBB", flags, code, len(value)) + value
        for flags, code, value in kept
    )
    withdrawn_len = _U16.unpack_from(body, 0)[0]
    nlri_start = 4 + withdrawn_len + _U16.unpack_from(body, 2 + withdrawn_len)[0]
    return body[: 2 + withdrawn_len] + _U16.pack(len(block)) + block + body[nlri_start:]


def _without_ipv4_fields(body: bytes) -> bytes:
    """The UPDATE with empty Withdrawn Routes and NLRI fields, for a session that did not
    negotiate IPv4 unicast: what they hold is of a family the peer was not to send, and is
    ignored (as FRR does: "UPDATE for non-enabled AFI/SAFI"), rather than installed. A body
    whose lengths do not add up is returned as it is, for the error path."""
    if len(body) < 4:
        return body
    withdrawn_len = _U16.unpack_from(body, 0)[0]
    if 4 + withdrawn_len > len(body):
        return body
    attr_end = 4 + withdrawn_len + _U16.unpack_from(body, 2 + withdrawn_len)[0]
    if attr_end > len(body) or (withdrawn_len == 0 and attr_end == len(body)):
        return body
    return b"\x00\x00" + body[2 + withdrawn_len : attr_end]


def _open_layout_problem(body: bytes) -> str:
    """What is wrong with the lengths of an OPEN body ("" if nothing): the Optional
    Parameters Length must cover exactly the rest of the message (RFC 4271 §4.2; ExaBGP
    accepts a length that runs past the end). The extended form of RFC 9072 (length 255,
    type 255) is left to ExaBGP."""
    if len(body) < 10:
        return ""  # ExaBGP answers Bad Message Length, as framing would
    if body[9] == 255 and body[10:11] == b"\xff":
        return ""
    if body[9] != len(body) - 10:
        return f"optional parameters length {body[9]}, {len(body) - 10} bytes follow"
    return ""


def _is_mp_end_of_rib(body: bytes) -> bool:
    """RFC 4724 §2: no withdrawn routes, no NLRI, one attribute: an MP_UNREACH_NLRI that
    holds only its AFI/SAFI."""
    if body[:2] != b"\x00\x00":
        return False
    attr_len = _U16.unpack_from(body, 2)[0]
    if 4 + attr_len != len(body):
        return False
    framed, stop, _ = _walk_attributes(body[4:])
    if stop or len(framed) != 1:
        return False
    _, code, value = framed[0]
    return code == MP_UNREACH_NLRI and len(value) == 3


def _prefix(packed: bytes, mask: int) -> IPNetwork:
    """ExaBGP's CIDR (address padded to full length) as our network; bits past the mask
    are irrelevant on the wire (RFC 4271 §4.3) and are cleared."""
    if len(packed) == 4:
        if mask == 32:
            return IPv4Network(packed)
        return IPv4Network((int.from_bytes(packed, "big"), mask), strict=False)
    if mask == 128:
        return IPv6Network(packed)
    return IPv6Network((int.from_bytes(packed, "big"), mask), strict=False)


def _bad_next_hop(address: IPAddress) -> bool:
    if address.version == 4:
        return (
            address.is_unspecified
            or address.is_multicast
            or address.is_loopback
            or address == _BROADCAST
        )
    # a link-local next hop without a global one cannot be resolved: no interface is known
    return (
        address.is_unspecified
        or address.is_multicast
        or address.is_loopback
        or address.is_link_local
    )


def _path_id(nlri: Any) -> int:
    raw = nlri.path_info.path_info
    return int.from_bytes(raw, "big") if raw else 0


def _next_hop(raw: object) -> IPAddress | None:
    """Our next hop for ExaBGP's packed one; None when missing or not a unicast address."""
    if not isinstance(raw, bytes) or len(raw) not in (4, 16):
        return None
    address: IPAddress = IPv4Address(raw) if len(raw) == 4 else IPv6Address(raw)
    return None if _bad_next_hop(address) else address


def _next_hop_problem(raw: object, prefix: IPNetwork) -> str:
    if not isinstance(raw, bytes) or not raw:
        return f"missing NEXT_HOP for {prefix}"
    shown = str(ip_address(raw)) if len(raw) in (4, 16) else raw.hex()
    return f"invalid next hop {shown} for {prefix}"


def _parse_ipv4_prefixes(
    body: bytes, start: int, end: int, add_path: bool
) -> list[tuple[IPNetwork, int]] | None:
    """IPv4 prefixes of a Withdrawn Routes / NLRI field (RFC 4271 §4.3, RFC 7911 §3) as
    networks; None at the first thing that is not well-formed (the caller falls back to
    ExaBGP). :func:`_parse_ipv4_keys` does the parsing."""
    parsed = _parse_ipv4_keys(body, start, end, add_path)
    if parsed is None:
        return None
    make = ipv4_network
    return [(make(key >> 9, (key >> 1) & 0xFF), pid) for key, pid in zip(*parsed, strict=True)]


def _parse_ipv4_keys(
    body: bytes, start: int, end: int, add_path: bool
) -> tuple[list[int], list[int]] | None:
    """IPv4 prefixes of a Withdrawn Routes / NLRI field (RFC 4271 §4.3, RFC 7911 §3), each
    as its key (:func:`~l3hostd.bgp.messages.prefix_key`) beside its path id: no object
    per prefix but the key the RIB keeps. None at the first thing that is not well-formed
    (the caller falls back to ExaBGP)."""
    if not add_path:
        # a run of /32s only -- a full table of host routes -- is read in C: ~5x faster
        n, rest = divmod(end - start, 5)
        if n and not rest and body[start:end:5] == _LEN32 * n:
            return [a << 9 | 64 for (a,) in _HOST32.iter_unpack(body[start:end])], [0] * n
    else:
        n, rest = divmod(end - start, 9)
        if n and not rest and body[start + 4 : end : 9] == _LEN32 * n:
            pairs = _HOST32_ADD_PATH.iter_unpack(body[start:end])
            keys = []
            pids = []
            for pid, a in pairs:
                keys.append(a << 9 | 64)
                pids.append(pid)
            return keys, pids
    keys = []
    pids = []
    off = start
    from_bytes = int.from_bytes
    while off < end:
        pid = 0
        if add_path:
            if off + 4 > end:
                return None
            pid = from_bytes(body[off : off + 4], "big")
            off += 4
        if off >= end:
            return None
        plen = body[off]
        nbytes = (plen + 7) >> 3
        if plen > 32 or off + 1 + nbytes > end:
            return None
        value = from_bytes(body[off + 1 : off + 1 + nbytes], "big") << (32 - 8 * nbytes)
        keys.append(((value & (0xFFFFFFFF ^ (0xFFFFFFFF >> plen))) << 9) | (plen << 1))
        pids.append(pid)
        off += 1 + nbytes
    return keys, pids


def _first_prefix_length(body: bytes, start: int, add_path: bool) -> int:
    """Bytes taken by the first prefix of an NLRI field (already checked well-formed)."""
    head = 4 if add_path else 0
    return head + 1 + ((body[start + head] + 7) >> 3)


# ---- the codec ----------------------------------------------------------------------------


class Codec:
    """Encodes and decodes the messages of one session. Before :meth:`negotiate` only
    OPEN, KEEPALIVE and NOTIFICATION can be handled; after it, UPDATE and ROUTE-REFRESH
    use the negotiated families, 4-octet AS and ADD-PATH settings.

    ``decode_*`` raise only :class:`BgpError` (the NOTIFICATION to send); ``encode_*``
    raise ValueError for values that cannot be put on the wire."""

    def __init__(self, local_asn: int, peer_asn: int) -> None:
        for asn in (local_asn, peer_asn):
            if not 0 < asn <= 0xFFFFFFFF:
                raise ValueError(f"invalid AS number {asn}")
        self.local_asn = local_asn
        self.peer_asn = peer_asn
        self.negotiated: Negotiated | None = None
        self._exa: Any = None  # ExaBGP's Negotiated, once negotiated
        self._add_path_send: frozenset[Family] = frozenset()
        self._asn4 = False
        # decode: the last ExaBGP attribute set and what it converted to (see docstring)
        self._last_exa_attributes: object = None
        self._last_attributes: PathAttributes | str | None = None
        # decode fast path: raw attribute block -> (next hop, attributes) or the reason the
        # routes are treat-as-withdraw (see _decode_ipv4_fast)
        self._templates: dict[bytes, tuple[IPAddress, PathAttributes] | str] = {}
        # encode: packed path attributes per attribute key
        self._packed_attributes: dict[tuple[object, ...], bytes] = {}

    # ---- OPEN ------------------------------------------------------------------------

    def encode_open(self, message: Open) -> bytes:  # full message, header included
        """The OPEN, packed by ExaBGP. The 2-byte My AS field carries AS_TRANS when the AS
        does not fit (RFC 6793 §4.1); the capabilities are multiprotocol, route refresh,
        graceful restart, 4-octet AS and ADD-PATH as given."""
        caps = message.capabilities
        if message.asn > 0xFFFF and caps.asn4 is None:
            raise ValueError(f"AS {message.asn} needs the 4-octet AS capability")
        if caps.asn4 is not None and caps.asn4 != message.asn:
            raise ValueError("the 4-octet AS capability must carry the OPEN's AS")
        if not 0 <= message.hold_time <= 0xFFFF or message.hold_time in (1, 2):
            raise ValueError(f"invalid hold time {message.hold_time}")
        gr = caps.graceful_restart
        if gr is not None and not 0 <= gr.restart_time <= 0x0FFF:
            raise ValueError(f"graceful restart time {gr.restart_time} is not 0..4095")
        return bytes(self._exa_open(message).message())

    @staticmethod
    def _exa_open(message: Open) -> Any:
        caps = message.capabilities
        exa = ExaCapabilities()
        exa[Capability.CODE.MULTIPROTOCOL] = MultiProtocol(
            _family_objects(family) for family in sorted(caps.families)
        )
        if caps.route_refresh:
            exa[Capability.CODE.ROUTE_REFRESH] = ExaRouteRefreshCapability()
        gr = caps.graceful_restart
        if gr is not None:
            exa[Capability.CODE.GRACEFUL_RESTART] = Graceful().set(
                _GR_RESTART if gr.restarting else 0,
                gr.restart_time,
                [
                    (*_family_objects(family), _GR_FORWARDING if forwarding else 0)
                    for family, forwarding in gr.families
                ],
            )
        if caps.asn4 is not None:
            exa[Capability.CODE.FOUR_BYTES_ASN] = ASN4(caps.asn4)
        if caps.add_path:
            add_path = AddPath()
            for family, send_receive in caps.add_path:
                add_path.add_path(*_family_objects(family), send_receive)
            exa[Capability.CODE.ADD_PATH] = add_path
        return ExaOpen(
            Version(message.version),
            ASN(message.asn),
            HoldTime(message.hold_time),
            RouterID(str(message.router_id)),
            exa,
        )

    def decode_open(self, body: bytes) -> Open:  # body = bytes after the 19-byte header
        """Parse and validate an OPEN (RFC 4271 §6.2). The returned ``asn`` is the real one
        (the 4-octet capability's value when present); a peer without the multiprotocol
        capability supports IPv4 unicast only (RFC 4760 §8)."""
        if body and body[0] != BGP_VERSION:
            raise BgpError(
                ErrorCode.OPEN_MESSAGE, 1, _U16.pack(BGP_VERSION),
                f"OPEN: unsupported version {body[0]}, we speak {BGP_VERSION}",
            )  # fmt: skip
        problem = _open_layout_problem(body)
        if problem:
            raise BgpError(ErrorCode.OPEN_MESSAGE, 0, b"", f"OPEN: {problem}")
        if body[1:3] == b"\x00\x00":  # RFC 7607 §2
            raise BgpError(ErrorCode.OPEN_MESSAGE, 2, b"", "OPEN: My AS 0")
        try:
            exa = ExaOpen.unpack_message(body)
            message = self._from_exa_open(exa)
        except Notify as exc:
            if (int(exc.code), int(exc.subcode)) == (ErrorCode.OPEN_MESSAGE, 5):
                # ExaBGP's deprecated Authentication Failure for an optional parameter of
                # type 1: RFC 4271 §6.2 says Unsupported Optional Parameter
                raise BgpError(
                    ErrorCode.OPEN_MESSAGE, 4, b"", f"OPEN: {_notify_text(exc)}"
                ) from None
            raise _bgp_error(exc, "OPEN") from None
        except Exception as exc:  # anything else ExaBGP raises on malformed input
            raise BgpError(
                ErrorCode.OPEN_MESSAGE, 0, b"", f"OPEN: undecodable ({type(exc).__name__}: {exc})"
            ) from exc
        if message.hold_time in (1, 2):
            raise BgpError(
                ErrorCode.OPEN_MESSAGE, 6, b"", f"OPEN: unacceptable hold time {message.hold_time}"
            )
        if int(message.router_id) == 0:
            raise BgpError(ErrorCode.OPEN_MESSAGE, 3, b"", "OPEN: BGP identifier 0.0.0.0")
        return message

    @staticmethod
    def _from_exa_open(exa: Any) -> Open:
        caps = exa.capabilities
        mp = caps.get(Capability.CODE.MULTIPROTOCOL)
        families = (
            frozenset((int(afi), int(safi)) for afi, safi in mp)
            if mp is not None
            else frozenset({IPV4_UNICAST})
        )
        asn4_cap = caps.get(Capability.CODE.FOUR_BYTES_ASN)
        asn4 = int(asn4_cap) if asn4_cap is not None else None
        graceful = caps.get(Capability.CODE.GRACEFUL_RESTART)
        gr = None
        if graceful is not None:
            gr = GracefulRestart(
                restart_time=int(graceful.restart_time),
                restarting=bool(graceful.restart_flag & _GR_RESTART),
                families=tuple(
                    ((int(afi), int(safi)), bool(flags & _GR_FORWARDING))
                    for (afi, safi), flags in graceful.items()
                ),
            )
        add_path_cap = caps.get(Capability.CODE.ADD_PATH)
        add_path = (
            tuple(((int(afi), int(safi)), int(sr)) for (afi, safi), sr in add_path_cap.items())
            if add_path_cap is not None
            else ()
        )
        refresh = (
            Capability.CODE.ROUTE_REFRESH in caps or Capability.CODE.ROUTE_REFRESH_CISCO in caps
        )
        return Open(
            asn=asn4 if asn4 is not None else int(exa.asn),
            hold_time=int(exa.hold_time),
            router_id=IPv4Address(str(exa.router_id)),
            capabilities=Capabilities(
                families=families,
                asn4=asn4,
                route_refresh=refresh,
                graceful_restart=gr,
                add_path=add_path,
            ),
            version=int(exa.version),
        )

    def negotiate(self, sent: Open, received: Open, keepalive_time: int) -> Negotiated:
        """What both OPENs agree on; also readies the ExaBGP side for UPDATEs. Raises
        BgpError 2/2 when the peer's AS is not the configured one, 2/3 when an internal
        peer uses our BGP identifier (RFC 6286 §2.1)."""
        if received.asn != self.peer_asn:
            raise BgpError(
                ErrorCode.OPEN_MESSAGE, 2, b"",
                f"OPEN: peer AS {received.asn}, configured {self.peer_asn}",
            )  # fmt: skip
        if received.asn == self.local_asn and received.router_id == sent.router_id:
            raise BgpError(
                ErrorCode.OPEN_MESSAGE, 3, b"",
                f"OPEN: internal peer uses our BGP identifier {sent.router_id}",
            )  # fmt: skip
        ours, theirs = sent.capabilities, received.capabilities
        hold = min(sent.hold_time, received.hold_time)
        families = ours.families & theirs.families
        our_ap, their_ap = dict(ours.add_path), dict(theirs.add_path)
        add_path_receive = frozenset(
            f for f in families if our_ap.get(f, 0) & 1 and their_ap.get(f, 0) & 2
        )
        add_path_send = frozenset(
            f for f in families if our_ap.get(f, 0) & 2 and their_ap.get(f, 0) & 1
        )
        result = Negotiated(
            local_asn=self.local_asn,
            peer_asn=received.asn,
            peer_router_id=received.router_id,
            hold_time=hold,
            keepalive_time=min(keepalive_time, hold // 3),
            families=frozenset(families),
            asn4=ours.asn4 is not None and theirs.asn4 is not None,
            route_refresh=ours.route_refresh and theirs.route_refresh,
            add_path_receive=add_path_receive,
            add_path_send=add_path_send,
            peer_graceful_restart=theirs.graceful_restart,
            local_graceful_restart=ours.graceful_restart,
        )
        try:
            exa = ExaNegotiated({"capability": {"aigp": False}})
            exa.sent(self._exa_open(sent))
            exa.received(self._exa_open(received))
        except Notify as exc:
            raise _bgp_error(exc, "OPEN") from None
        # Ours is authoritative (e.g. the implicit IPv4 unicast of a peer without MP).
        exa.families = [_family_objects(f) for f in sorted(families)]
        self._exa = exa
        self._templates = {}  # verdicts depend on what was negotiated
        self._asn4 = result.asn4
        self._add_path_send = add_path_send
        self._last_exa_attributes = None
        self._last_attributes = None
        self._packed_attributes.clear()
        self.negotiated = result
        return result

    # ---- KEEPALIVE, NOTIFICATION, ROUTE-REFRESH --------------------------------------

    def encode_keepalive(self) -> bytes:
        return bytes(ExaKeepAlive().message())

    def encode_notification(self, message: Notification) -> bytes:
        if len(message.data) > MAX_MESSAGE_LEN - HEADER_LEN - 2:
            raise ValueError("NOTIFICATION data too long")
        return bytes(Notify(message.code, message.subcode, bytes(message.data)).message())

    def decode_notification(self, body: bytes) -> Notification:
        """Code, subcode and the data bytes as received (ExaBGP would rewrite them)."""
        if len(body) < 2:
            raise BgpError(
                ErrorCode.MESSAGE_HEADER, 2, _U16.pack(HEADER_LEN + len(body)),
                f"NOTIFICATION of {len(body)} bytes",
            )  # fmt: skip
        return Notification(body[0], body[1], bytes(body[2:]))

    def encode_route_refresh(self, message: RouteRefresh) -> bytes:
        afi, safi = message.family
        if not (0 <= afi <= 0xFFFF and 0 <= safi <= 0xFF and 0 <= message.subtype <= 0xFF):
            raise ValueError(f"invalid ROUTE-REFRESH {message}")
        return bytes(ExaRouteRefresh(afi, safi, message.subtype).message())

    def decode_route_refresh(self, body: bytes) -> RouteRefresh:
        """RFC 2918/7313. Subtypes other than 0/1/2 are returned as they are: RFC 7313 §5
        says to ignore such a message, which is the caller's business."""
        if len(body) != 4:
            if len(body) >= 3 and body[2] in (1, 2):  # RFC 7313 §5: BoRR/EoRR length
                whole = _message(MessageType.ROUTE_REFRESH, bytes(body))
                raise BgpError(
                    ErrorCode.ROUTE_REFRESH, 1, whole, "ROUTE-REFRESH: invalid message length"
                )
            raise BgpError(
                ErrorCode.MESSAGE_HEADER, 2, _U16.pack(HEADER_LEN + len(body)),
                f"ROUTE-REFRESH of {len(body)} bytes",
            )  # fmt: skip
        afi, subtype, safi = struct.unpack("!HBB", body)
        return RouteRefresh((afi, safi), subtype)

    # ---- UPDATE decode ---------------------------------------------------------------

    def decode_update(self, body: bytes) -> Update:
        """One received UPDATE body as our :class:`Update`; see the module docstring for
        the error handling. Raises only BgpError.

        The cyclic garbage collector is paused for the call (and its previous state put
        back): ExaBGP allocates a few GC-tracked objects per NLRI that live until the
        message is converted, and collections triggered meanwhile promoted them and
        rescanned the caller's growing RIB; measured with 100k routes kept, 80k -> 140k
        prefixes/s. Nothing cyclic is created here that the next collection would miss."""
        if self.negotiated is None:
            raise BgpError(ErrorCode.FSM, 0, b"", "UPDATE before the session was negotiated")
        body = bytes(body)
        if IPV4_UNICAST not in self.negotiated.families:
            stripped = _without_ipv4_fields(body)
            if stripped != body:
                # what was taken out was there: this is no End-of-RIB (RFC 4724 §2)
                result = self.decode_update(stripped)
                return _EMPTY_UPDATE if result.end_of_rib is not None else result
        if body == _EOR_IPV4_BODY:
            if IPV4_UNICAST not in self.negotiated.families:
                return _EMPTY_UPDATE
            return Update(end_of_rib=IPV4_UNICAST)
        collecting = gc.isenabled()
        if collecting:
            gc.disable()
        try:
            fast = self._decode_ipv4_fast(body)
            return fast if fast is not None else self._decode_update(body)
        finally:
            if collecting:
                gc.enable()

    def _decode_ipv4_fast(self, body: bytes) -> Update | None:
        """The common case without ExaBGP per prefix: an UPDATE whose routes are IPv4 in
        the classic Withdrawn Routes / NLRI fields (what a reflector sends by the
        thousand). ExaBGP still decodes and validates every *attribute block*, once: the
        block and the first prefix go through the full path; its verdict (next hop and
        attributes, or treat-as-withdraw) is cached by the block's bytes and applied to
        every prefix of this and later UPDATEs carrying the same block. Prefixes are parsed
        here. Anything unusual (a length that does not add up, a prefix length > 32, an
        UPDATE without NLRI but with attributes -- MP_REACH, End-of-RIB...) returns None and
        the message takes the full ExaBGP path, which knows the right NOTIFICATION."""
        n = len(body)
        if n < 4:
            return None
        wlen = (body[0] << 8) | body[1]
        if 4 + wlen > n:
            return None
        alen = (body[2 + wlen] << 8) | body[3 + wlen]
        nlri_start = 4 + wlen + alen
        if nlri_start > n:
            return None
        negotiated = self.negotiated
        assert negotiated is not None
        add_path = IPV4_UNICAST in negotiated.add_path_receive
        withdrawn = _parse_ipv4_prefixes(body, 2, 2 + wlen, add_path)
        if withdrawn is None:
            return None
        if nlri_start == n:
            if alen:
                return None  # attributes without IPv4 NLRI: MP_REACH / MP_UNREACH, ...
            return Update(withdrawn=tuple(withdrawn))
        if IPV4_UNICAST not in negotiated.families:
            return None
        parsed = _parse_ipv4_keys(body, nlri_start, n, add_path)
        if parsed is None or not parsed[0]:
            return None
        keys, pids = parsed
        head = (keys[0], pids[0])
        block = body[4 + wlen : nlri_start]
        template = self._templates.get(block)
        if template is None:
            first = _first_prefix_length(body, nlri_start, add_path)
            probe = b"\x00\x00" + body[2 + wlen : nlri_start + first]
            result = self._decode_update(probe)  # raises the message's BgpError, if any
            # The block may itself carry prefixes (an MP_UNREACH/MP_REACH beside the IPv4
            # NLRI): then it is no template, the full path handles the message.
            if result.treat_as_withdraw and not result.announced:
                if [(prefix_key(p), pid) for p, pid in result.withdrawn] != [head]:
                    return None
                template = result.treat_as_withdraw
            elif len(result.announced) == 1 and not result.withdrawn:
                route = result.announced[0]
                if (prefix_key(route.prefix), route.path_id) != head:
                    return None
                template = (route.next_hop, route.attributes)
            else:
                return None
            if len(self._templates) >= 4096:
                self._templates.clear()
            self._templates[block] = template
        if isinstance(template, str):
            announced = [(key_prefix(k), pid) for k, pid in zip(keys, pids, strict=True)]
            return Update((), (*withdrawn, *announced), None, template)
        next_hop, attributes = template
        return Update(
            withdrawn=tuple(withdrawn),
            packed=PackedRoutes(tuple(keys), tuple(pids) if add_path else None, next_hop,
                                attributes),
        )

    def _decode_update(self, body: bytes) -> Update:
        try:
            exa = ExaUpdate.unpack_message(body, Direction.IN, self._exa)
        except Notify as exc:
            raise _bgp_error(exc, "UPDATE") from None
        except Exception as exc:  # ExaBGP's own FIXME: IndexError, struct.error, ...
            raise BgpError(
                ErrorCode.UPDATE_MESSAGE, 1, b"",
                f"UPDATE: undecodable ({type(exc).__name__}: {exc})",
            ) from exc  # fmt: skip
        try:
            return self._convert(exa, body)
        except BgpError:
            raise
        except Notify as exc:
            raise _bgp_error(exc, "UPDATE") from None
        except Exception as exc:
            raise BgpError(
                ErrorCode.UPDATE_MESSAGE, 1, b"",
                f"UPDATE: unexpected content ({type(exc).__name__}: {exc})",
            ) from exc  # fmt: skip

    def _convert(self, exa: Any, body: bytes) -> Update:
        if isinstance(exa, EOR):
            afi, safi = exa.nlris[0].family().afi_safi()
            family = (int(afi), int(safi))
            assert self.negotiated is not None
            if (
                family == IPV4_UNICAST
                or family not in self.negotiated.families
                or not _is_mp_end_of_rib(body)
            ):
                # only the 4-byte empty UPDATE is the IPv4 EoR (handled before ExaBGP), and
                # only an UPDATE holding nothing but an empty MP_UNREACH_NLRI is another
                # family's (RFC 4724 §2); one of a family we did not negotiate means nothing
                return _EMPTY_UPDATE
            return Update(end_of_rib=family)

        attributes = exa.attributes
        if _TREAT_AS_WITHDRAW in attributes:
            cleaned = _without_ignored_attributes(body)
            if cleaned is not None:
                result = self._decode_update(cleaned)
                # what was taken out was there: this was no End-of-RIB (RFC 4724 §2)
                return _EMPTY_UPDATE if result.end_of_rib is not None else result
        announced: list[Route] = []
        withdrawn: list[tuple[IPNetwork, int]] = []
        refused: list[tuple[IPNetwork, int]] = []  # announced, but treat-as-withdraw
        reason = self._diagnose(body) if _TREAT_AS_WITHDRAW in attributes else ""
        attrs: PathAttributes | None = None
        next_hops: dict[object, IPAddress | None] = {}  # wire next hop -> ours (None: bad)
        last: tuple[bytes, int, bytes] | None = None  # previous announced NLRI
        for nlri in exa.nlris:
            cidr = nlri.cidr
            packed, mask = cidr._packed, cidr.mask
            if nlri.action is _WITHDRAW:
                withdrawn.append((_prefix(packed, mask), _path_id(nlri)))
                continue
            path_info = nlri.path_info.path_info
            this = (packed, mask, path_info)
            if this == last and len(packed) == 16:
                # ExaBGP's twin of an IPv6 prefix for the second address of a 32-byte
                # MP_REACH next hop: keep the first, the global one (RFC 2545 §3); the
                # second is ignored even when it is not link-local, as FRR does. Only IPv6:
                # the same IPv4 prefix from the NLRI field and from an MP_REACH_NLRI is two
                # routes, each with its own next hop to check.
                continue
            last = this
            if mask == 32 and len(packed) == 4:
                prefix: IPNetwork = IPv4Network(packed)
            else:
                prefix = _prefix(packed, mask)
            path_id = int.from_bytes(path_info, "big") if path_info else 0
            if reason:
                refused.append((prefix, path_id))
                continue
            if attrs is None:
                converted = self._path_attributes(attributes, body)
                if isinstance(converted, str):
                    reason = converted
                    refused.append((prefix, path_id))
                    continue
                attrs = converted
            raw = nlri.nexthop.ton()
            if raw in next_hops:
                next_hop = next_hops[raw]
            else:
                next_hop = next_hops[raw] = _next_hop(raw)
            if next_hop is None or (len(packed) == 4 and len(raw) != 4):
                # RFC 4271's NEXT_HOP is 4 bytes (ExaBGP also takes 16)
                reason = _next_hop_problem(raw, prefix)
                refused.append((prefix, path_id))
                continue
            announced.append(Route(prefix, path_id, next_hop, attrs))
        if reason:
            withdrawn.extend((route.prefix, route.path_id) for route in announced)
            withdrawn.extend(refused)
            return Update((), tuple(withdrawn), None, reason)
        return Update(tuple(announced), tuple(withdrawn))

    def _path_attributes(self, attributes: Any, body: bytes) -> PathAttributes | str:
        """The attribute set as interned PathAttributes, or why it is treat-as-withdraw."""
        if attributes is self._last_exa_attributes and self._last_attributes is not None:
            return self._last_attributes
        result = self._convert_attributes(attributes, body)
        self._last_exa_attributes = attributes
        self._last_attributes = result
        return result

    @staticmethod
    def _convert_attributes(attributes: Any, body: bytes) -> PathAttributes | str:
        code = Attribute.CODE
        origin = attributes.get(code.ORIGIN)
        if origin is None:
            return "missing ORIGIN"
        if len(origin.pack()) != 4 or origin.origin > 2:
            return f"invalid ORIGIN {origin.pack()[3:].hex()}"
        as_path: list[int] = []
        aspath = attributes.get(code.AS_PATH)
        if aspath is None:
            # ExaBGP drops an empty AS_PATH: tell it from a missing one by the raw headers
            framed, _, _ = _walk_attributes(_attribute_block(body))
            if not any(c == AS_PATH for _, c, _ in framed):
                return "missing AS_PATH"
        else:
            for segment in aspath.aspath:
                if isinstance(segment, SEQUENCE | SET):
                    as_path.extend(int(asn) for asn in segment)
        local_pref = attributes.get(code.LOCAL_PREF)
        med = attributes.get(code.MED)
        communities = attributes.get(code.COMMUNITY)
        large = attributes.get(code.LARGE_COMMUNITY)
        originator = attributes.get(code.ORIGINATOR_ID)
        clusters = attributes.get(code.CLUSTER_LIST)
        return PathAttributes(
            origin=int(origin.origin),
            as_path=tuple(as_path),
            local_pref=int(local_pref.localpref) if local_pref is not None else None,
            med=int(med.med) if med is not None else None,
            communities=tuple(
                sorted({_U32.unpack(c.community)[0] for c in communities.communities})
            )
            if communities is not None
            else (),
            large_communities=tuple(
                sorted({_LARGE.unpack(c.large_community) for c in large.communities})
            )
            if large is not None
            else (),
            originator_id=IPv4Address(originator.ton()) if originator is not None else None,
            cluster_list=tuple(IPv4Address(c.ton()) for c in clusters.clusters)
            if clusters is not None
            else (),
        )

    def _diagnose(self, body: bytes) -> str:
        """Why ExaBGP marked this UPDATE treat-as-withdraw (it does not say); raises when
        the error hides an MP_REACH/MP_UNREACH, whose NLRI then cannot be located: one that
        overruns the attributes, is empty (ExaBGP's zero-length rule comes before its MP
        checks) or comes twice (RFC 7606 §3.g, §5.3)."""
        framed, stop, overrun = _walk_attributes(_attribute_block(body))
        if overrun in (MP_REACH_NLRI, MP_UNREACH_NLRI):
            raise BgpError(ErrorCode.UPDATE_MESSAGE, 1, b"", f"UPDATE: {stop}")
        mp = [(c, value) for _, c, value in framed if c in (MP_REACH_NLRI, MP_UNREACH_NLRI)]
        if len({c for c, _ in mp}) != len(mp):
            raise BgpError(ErrorCode.UPDATE_MESSAGE, 1, b"", "UPDATE: MP attribute twice")
        for c, value in mp:
            if not value:
                name = _attribute_name(c)
                raise BgpError(ErrorCode.UPDATE_MESSAGE, 9, b"", f"UPDATE: {name}: zero length")
        seen: set[int] = set()
        for flags, code, value in framed:
            if code in seen:
                continue  # ExaBGP skips repeated attributes (RFC 7606 §3.g)
            seen.add(code)
            name = _attribute_name(code)
            if code in Attribute.attributes_known and not Attribute.registered(code, flags):
                return f"{name}: invalid attribute flags 0x{flags:02x}"
            if not value and code not in Attributes.VALID_ZERO:
                if code in Attribute.attributes_known:
                    return f"{name}: zero length"
                continue
            if not Attribute.registered(code, flags):
                continue
            try:
                Attribute.unpack(code, flags, value, Direction.IN, self._exa)
            except Notify as exc:
                return f"{name}: {_notify_text(exc)}"
            except Exception as exc:
                return f"{name}: {type(exc).__name__}: {exc}"
        return stop or "malformed path attribute"

    # ---- UPDATE encode ---------------------------------------------------------------

    def encode_updates(
        self, announce: Sequence[Announcement], withdraw: Sequence[IPNetwork]
    ) -> list[bytes]:
        """Complete UPDATE messages (each <= 4096 bytes): withdrawals first (IPv4 in the
        Withdrawn Routes field, IPv6 in MP_UNREACH_NLRI), then the announcements grouped
        by identical attributes and next hop, as many prefixes per message as fit. Prefixes
        of families that were not negotiated are left out. Takes about 1 us per prefix
        (100k in ~0.1 s): callers with big tables pass slices and yield to their loop in
        between. Raises ValueError for a next hop of the other family or a value out of
        range; an announcement and a withdrawal of one prefix in one call is announced."""
        if self.negotiated is None:
            raise RuntimeError("encode_updates before negotiate")
        families = self.negotiated.families
        add_path = self._add_path_send
        out: list[bytes] = []

        v4: list[bytes] = []
        v6: list[bytes] = []
        for prefix in withdraw:
            if prefix.version == 4:
                v4.append(_nlri(prefix))
            else:
                v6.append(_nlri(prefix))
        if v4 and IPV4_UNICAST in families:
            if IPV4_UNICAST in add_path:
                v4 = [_ADD_PATH_ID + n for n in v4]
            for chunk in _chunks(v4, MAX_MESSAGE_LEN - HEADER_LEN - 4):
                out.append(_message(_UPDATE, _U16.pack(len(chunk)) + chunk + b"\x00\x00"))
        if v6 and IPV6_UNICAST in families:
            if IPV6_UNICAST in add_path:
                v6 = [_ADD_PATH_ID + n for n in v6]
            for chunk in _chunks(v6, MAX_MESSAGE_LEN - HEADER_LEN - 4 - 4 - 3):
                attr = _mp_attribute(MP_UNREACH_NLRI, _MP_IPV6_FAMILY + chunk)
                out.append(_message(_UPDATE, b"\x00\x00" + _U16.pack(len(attr)) + attr))

        groups: dict[_GroupKey, list[IPNetwork]] = {}
        for a in announce:
            key = (type(a.prefix), a.next_hop, a.local_pref, a.med, a.communities,
                   a.large_communities)  # fmt: skip
            group = groups.get(key)
            if group is None:
                group = groups[key] = []
            group.append(a.prefix)
        for key, prefixes in groups.items():
            kind, next_hop = key[0], key[1]
            if kind is IPv4Network:
                if IPV4_UNICAST not in families:
                    continue
                if not isinstance(next_hop, IPv4Address):
                    raise ValueError(f"IPv4 prefixes with next hop {next_hop}")
                nlris = [_nlri(p) for p in prefixes]
                if IPV4_UNICAST in add_path:
                    nlris = [_ADD_PATH_ID + n for n in nlris]
                attrs = self._packed_path_attributes(key, next_hop)
                head = b"\x00\x00" + _U16.pack(len(attrs)) + attrs
                budget = MAX_MESSAGE_LEN - HEADER_LEN - len(head)
                if budget < _MAX_NLRI_LEN:
                    raise ValueError("path attributes too long for one UPDATE")
                for chunk in _chunks(nlris, budget):
                    out.append(_message(_UPDATE, head + chunk))
            else:
                if IPV6_UNICAST not in families:
                    continue
                if not isinstance(next_hop, IPv6Address):
                    raise ValueError(f"IPv6 prefixes with next hop {next_hop}")
                nlris = [_nlri(p) for p in prefixes]
                if IPV6_UNICAST in add_path:
                    nlris = [_ADD_PATH_ID + n for n in nlris]
                attrs = self._packed_path_attributes(key, None)
                mp_head = _MP_IPV6_FAMILY + b"\x10" + next_hop.packed + b"\x00"
                budget = MAX_MESSAGE_LEN - HEADER_LEN - 4 - len(attrs) - 4 - len(mp_head)
                if budget < _MAX_NLRI_LEN:
                    raise ValueError("path attributes too long for one UPDATE")
                for chunk in _chunks(nlris, budget):
                    # RFC 7606 §5.1: MP_REACH_NLRI first
                    block = _mp_attribute(MP_REACH_NLRI, mp_head + chunk) + attrs
                    out.append(_message(_UPDATE, b"\x00\x00" + _U16.pack(len(block)) + block))
        return out

    def _packed_path_attributes(self, key: _GroupKey, next_hop: IPv4Address | None) -> bytes:
        packed = self._packed_attributes.get(key)
        if packed is None:
            _, _, local_pref, med, communities, large = key
            packed = self._pack_path_attributes(next_hop, local_pref, med, communities, large)
            if len(self._packed_attributes) >= 4096:
                self._packed_attributes.clear()
            self._packed_attributes[key] = packed
        return packed

    def _pack_path_attributes(
        self,
        next_hop: IPv4Address | None,
        local_pref: int,
        med: int | None,
        communities: tuple[int, ...],
        large: tuple[tuple[int, int, int], ...],
    ) -> bytes:
        """ORIGIN IGP, AS_PATH, NEXT_HOP (IPv4 only), MED, LOCAL_PREF, COMMUNITIES,
        LARGE_COMMUNITY, in type code order. iBGP: empty AS_PATH and LOCAL_PREF; on an
        eBGP session our AS in the AS_PATH and no LOCAL_PREF (RFC 4271 §5.1.2, §5.1.5)."""
        ibgp = self.local_asn == self.peer_asn
        as4_path = not ibgp and not self._asn4 and self.local_asn > 0xFFFF
        if ibgp:
            as_path = b""
        elif self._asn4:
            as_path = b"\x02\x01" + _U32.pack(self.local_asn)  # AS_SEQUENCE of one
        else:  # RFC 6793 §4.2.2: AS_TRANS, and the real AS in AS4_PATH
            as_path = b"\x02\x01" + _U16.pack(AS_TRANS if as4_path else self.local_asn)
        try:
            parts = [
                _attribute(F_TRANSITIVE, ORIGIN, b"\x00"),  # IGP
                _attribute(F_TRANSITIVE, AS_PATH, as_path),
            ]
            if next_hop is not None:
                parts.append(_attribute(F_TRANSITIVE, NEXT_HOP, next_hop.packed))
            if med is not None:
                parts.append(_attribute(F_OPTIONAL, MED, _U32.pack(med)))
            if ibgp:
                parts.append(_attribute(F_TRANSITIVE, LOCAL_PREF, _U32.pack(local_pref)))
            if communities:
                value = b"".join(_U32.pack(c) for c in sorted(set(communities)))
                parts.append(_attribute(F_OPTIONAL | F_TRANSITIVE, COMMUNITIES, value))
            if as4_path:
                value = b"\x02\x01" + _U32.pack(self.local_asn)
                parts.append(_attribute(F_OPTIONAL | F_TRANSITIVE, AS4_PATH, value))
            if large:
                value = b"".join(_LARGE.pack(*c) for c in sorted(set(large)))
                parts.append(_attribute(F_OPTIONAL | F_TRANSITIVE, LARGE_COMMUNITY, value))
        except struct.error as exc:
            raise ValueError(f"path attribute value out of range: {exc}") from None
        return b"".join(parts)

    def encode_end_of_rib(self, family: Family) -> bytes:
        """RFC 4724 §2: the empty UPDATE for IPv4 unicast, an empty MP_UNREACH_NLRI else."""
        return bytes(EOR(*_family_objects(family)).message())
