"""Input generator for the BGP fuzzer: structured messages, mutated twice.

How it works
------------
Every random decision goes through a :class:`Chooser` (``integer(low, high)`` and
``raw(size)``), so one generator serves two drivers: :class:`RandomChooser` over
``random.Random`` for the deep run (``bench/fuzz.py``, fast) and a hypothesis-backed chooser
in ``tests/unit/test_fuzz_bgp.py`` (whose failures shrink, because every draw is one
hypothesis draw).

An UPDATE is first built as a structure (:class:`UpdateSpec`: withdrawn NLRI entries, a list
of :class:`Attr` with flags/code/value and an optional length that lies, NLRI entries, lies
for the two section lengths) from a session :class:`Profile` (families, ADD-PATH, 4-octet
AS). A structure built without mutation is *valid*, and the generator knows what it means:
:class:`Expected` (routes with next hop and attribute values, withdrawals, End-of-RIB), so
the oracle can check the decode exactly. Then, with some probability, structural mutations
(each named in the input's label: flag bits, duplicate attributes, unknown attributes
optional/transitive/well-known, bad NEXT_HOP, bad AS_PATH segments, MP_REACH with bad
AFI/SAFI/next-hop length, IPv6 prefixes longer than 128, ADD-PATH ids where none were
negotiated or missing where they were, length fields that lie, NLRI overruns, values
replaced by random bytes) and, after packing, byte mutations (bit flips, byte sets,
truncation, insertion, deletion). Other message types (KEEPALIVE, NOTIFICATION,
ROUTE-REFRESH, OPEN, unknown types, bad markers, header length lies) and raw random bytes
are generated the same way. A *stream* input concatenates several messages (mostly valid)
and cuts the bytes at random points into several ``receive_data`` calls. An *open* input
(:func:`open_input`) is the peer's OPEN with mutated fields, optional parameters and
capabilities, for a session waiting in OpenSent. :func:`encoder_corpus` records UPDATEs
and End-of-RIBs made by our own codec's encoder for the session's profile, with their
meaning; they are fed as they are and byte-mutated.

The generator never looks at what the code under test does; the oracle
(``bench/fuzz_oracle.py``) judges the bytes independently.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Protocol, TypeVar

from l3hostd.bgp.codec import Codec
from l3hostd.bgp.messages import (
    AFI_IPV6,
    IPV4_UNICAST,
    IPV6_UNICAST,
    Announcement,
    Capabilities,
    Family,
    Open,
)
from l3hostd.model import IPAddress, IPNetwork

T = TypeVar("T")

MARKER = b"\xff" * 16
LOCAL_ID = IPv4Address("10.255.0.11")  # our router id: a path whose ORIGINATOR_ID is this is ours
OWN_ADDRESS = IPv4Address("10.255.0.11")  # our address: a path via it is ours (policy)
PEER_ID = IPv4Address("10.255.0.1")
ASN = 65501

# ---- choosers -------------------------------------------------------------------------------


class Chooser(Protocol):
    def integer(self, low: int, high: int) -> int: ...

    def raw(self, size: int) -> bytes: ...


class RandomChooser:
    __slots__ = ("rng",)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def integer(self, low: int, high: int) -> int:
        return self.rng.randint(low, high)

    def raw(self, size: int) -> bytes:
        return self.rng.randbytes(size)


def pick(c: Chooser, seq: Sequence[T]) -> T:
    return seq[c.integer(0, len(seq) - 1)]


def chance(c: Chooser, percent: int) -> bool:
    return c.integer(0, 99) < percent


# ---- the session the input is fed to ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Profile:
    """What the session negotiated with the fuzzing peer."""

    families: frozenset[Family]
    add_path: bool  # ADD-PATH receive for every negotiated family
    asn4: bool
    graceful_restart: bool

    def add_path_for(self, family: Family) -> bool:
        return self.add_path and family in self.families

    def label(self) -> str:
        fams = "+".join("v4" if f == IPV4_UNICAST else "v6" for f in sorted(self.families))
        return (
            f"{fams}{' addpath' if self.add_path else ''}{' as2' if not self.asn4 else ''}"
            f"{' gr' if self.graceful_restart else ''}"
        )


PROFILES: tuple[Profile, ...] = tuple(
    Profile(families, add_path, asn4, gr)
    for families in (
        frozenset({IPV4_UNICAST, IPV6_UNICAST}),
        frozenset({IPV4_UNICAST}),
        frozenset({IPV6_UNICAST}),
    )
    for add_path in (False, True)
    for asn4 in (True, False)
    for gr in (True, False)
)

# ---- what a valid message means ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExpectedAttributes:
    origin: int
    as_path: tuple[int, ...]
    local_pref: int | None
    med: int | None
    communities: tuple[int, ...]
    large_communities: tuple[tuple[int, int, int], ...]
    originator_id: IPv4Address | None
    cluster_list: tuple[IPv4Address, ...]


@dataclass(frozen=True, slots=True)
class Expected:
    """The meaning of an unmutated message (an UPDATE; other types are judged by type)."""

    announced: frozenset[tuple[IPNetwork, int, IPAddress]] = frozenset()
    withdrawn: frozenset[tuple[IPNetwork, int]] = frozenset()
    attributes: ExpectedAttributes | None = None
    end_of_rib: Family | None = None


@dataclass(slots=True)
class Input:
    """Bytes to feed, where to cut them (offsets of later ``receive_data`` calls), the
    meaning of the valid messages in them (by exact message bytes), and a label."""

    data: bytes
    cuts: tuple[int, ...] = ()
    expected: dict[bytes, Expected] = field(default_factory=dict)
    label: str = ""
    phase: str = "established"  # or "open": fed to a session in OpenSent


# ---- packing ----------------------------------------------------------------------------------

F_OPTIONAL, F_TRANSITIVE, F_PARTIAL, F_EXTENDED = 0x80, 0x40, 0x20, 0x10
ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF, ATOMIC_AGGREGATE, AGGREGATOR = 1, 2, 3, 4, 5, 6, 7
COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST, MP_REACH, MP_UNREACH = 8, 9, 10, 14, 15
EXT_COMMUNITIES, AS4_PATH, AS4_AGGREGATOR, AIGP, LARGE_COMMUNITY = 16, 17, 18, 26, 32
#: Codes no code path of ours or ExaBGP's knows (0 and 255 are reserved).
UNKNOWN_CODES = (0, 11, 12, 13, 19, 21, 33, 99, 128, 200, 254, 255)
RECOGNISED = frozenset(
    {ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF, ATOMIC_AGGREGATE, AGGREGATOR, COMMUNITIES,
     ORIGINATOR_ID, CLUSTER_LIST, MP_REACH, MP_UNREACH, EXT_COMMUNITIES, AS4_PATH,
     AS4_AGGREGATOR, LARGE_COMMUNITY}
)  # fmt: skip


@dataclass(slots=True)
class Attr:
    flags: int
    code: int
    value: bytes
    length: int | None = None  # a lie about the value's length

    def pack(self) -> bytes:
        n = len(self.value) if self.length is None else self.length
        if self.flags & F_EXTENDED:
            return struct.pack("!BBH", self.flags, self.code, n & 0xFFFF) + self.value
        return struct.pack("!BBB", self.flags, self.code, n & 0xFF) + self.value


def attr(flags: int, code: int, value: bytes) -> Attr:
    if len(value) > 255:
        flags |= F_EXTENDED
    return Attr(flags, code, value)


@dataclass(slots=True)
class UpdateSpec:
    withdrawn: list[bytes] = field(default_factory=list)
    attrs: list[Attr] = field(default_factory=list)
    nlri: list[bytes] = field(default_factory=list)
    withdrawn_len_lie: int = 0
    attr_len_lie: int = 0

    def pack(self) -> bytes:
        w = b"".join(self.withdrawn)
        a = b"".join(x.pack() for x in self.attrs)
        return (
            struct.pack("!H", (len(w) + self.withdrawn_len_lie) & 0xFFFF)
            + w
            + struct.pack("!H", (len(a) + self.attr_len_lie) & 0xFFFF)
            + a
            + b"".join(self.nlri)
        )


def message(msg_type: int, body: bytes, length_lie: int = 0, marker: bytes = MARKER) -> bytes:
    return marker + struct.pack("!HB", (19 + len(body) + length_lie) & 0xFFFF, msg_type) + body


def prefix_entry(prefix: IPNetwork, path_id: int | None) -> bytes:
    plen = prefix.prefixlen
    head = b"" if path_id is None else struct.pack("!L", path_id)
    return head + bytes((plen,)) + prefix.network_address.packed[: (plen + 7) >> 3]


def mp_reach_value(afi: int, safi: int, next_hop: bytes, nlri: Sequence[bytes]) -> bytes:
    return struct.pack("!HBB", afi, safi, len(next_hop)) + next_hop + b"\x00" + b"".join(nlri)


def mp_unreach_value(afi: int, safi: int, nlri: Sequence[bytes]) -> bytes:
    return struct.pack("!HB", afi, safi) + b"".join(nlri)


# ---- pools ------------------------------------------------------------------------------------

V4_PREFIXES: tuple[IPv4Network, ...] = (
    *(IPv4Network(f"10.0.0.{i}/32") for i in range(1, 25)),
    IPv4Network("10.1.0.0/16"), IPv4Network("10.2.3.0/24"), IPv4Network("10.2.3.128/25"),
    IPv4Network("10.3.0.0/31"), IPv4Network("0.0.0.0/0"), IPv4Network("10.0.0.0/8"),
    IPv4Network("203.0.113.0/24"), IPv4Network("198.51.100.77/32"),
)  # fmt: skip
V6_PREFIXES: tuple[IPv6Network, ...] = (
    *(IPv6Network(f"2001:db8::{i:x}/128") for i in range(1, 25)),
    IPv6Network("2001:db8:1::/48"), IPv6Network("2001:db8:2::/64"), IPv6Network("::/0"),
    IPv6Network("2001:db8:3::/127"), IPv6Network("2001:db8:4::/65"),
    IPv6Network("2001:db8:5:6:7::/80"), IPv6Network("2001:db8::/32"),
)  # fmt: skip
PATH_IDS = (0, 1, 2, 7, 0xFFFFFFFF)
V4_NEXT_HOPS = tuple(IPv4Address(a) for a in ("192.0.2.1", "192.0.2.2", "198.51.100.7"))
V6_NEXT_HOPS = tuple(IPv6Address(a) for a in ("2001:db8:ffff::1", "2001:db8:ffff::2"))
V6_LINK_LOCAL = IPv6Address("fe80::1")
BAD_V4_NEXT_HOPS = (
    b"\x00\x00\x00\x00",
    b"\x7f\x00\x00\x01",
    b"\xe0\x00\x00\x05",
    b"\xff" * 4,
    b"",
    b"\xc0\x00\x02",
    b"\xc0\x00\x02\x01\x09",
    IPv6Address("2001:db8::1").packed,
)
BAD_V6_NEXT_HOPS = (bytes(16), IPv6Address("::1").packed, IPv6Address("ff02::1").packed,
                    V6_LINK_LOCAL.packed, b"", bytes(4), bytes(8), bytes(15), bytes(17),
                    bytes(31), bytes(33), bytes(48))  # fmt: skip
ASNS = (65501, 65000, 1, 23456, 64512, 4200000000, 0)
AS_SEGMENT_TYPES = (1, 2, 3, 4)  # SET, SEQUENCE, CONFED_SEQUENCE, CONFED_SET
BAD_AFI_SAFI = ((0, 1), (3, 1), (25, 65), (16388, 71), (1, 2), (2, 2), (1, 4), (2, 128),
                (1, 0), (2, 0), (0xFFFF, 0xFF))  # fmt: skip


# ---- valid UPDATEs ---------------------------------------------------------------------------


def _as_path(c: Chooser, asn4: bool) -> tuple[bytes, tuple[int, ...]]:
    """(value, flat ASNs of SEQUENCE and SET segments as the codec reports them)."""
    if chance(c, 50):
        return b"", ()
    out = b""
    flat: list[int] = []
    for _ in range(c.integer(1, 3)):
        kind = pick(c, AS_SEGMENT_TYPES)
        asns = [pick(c, ASNS[:-1]) for _ in range(c.integer(1, 4))]
        if not asn4:
            asns = [a if a <= 0xFFFF else 23456 for a in asns]
        out += bytes((kind, len(asns))) + b"".join(
            struct.pack("!L" if asn4 else "!H", a) for a in asns
        )
        if kind in (1, 2):
            flat.extend(asns)
    return out, tuple(flat)


def _attributes(c: Chooser, profile: Profile) -> tuple[list[Attr], ExpectedAttributes]:
    """ORIGIN and AS_PATH plus a random choice of the other attributes (no next hop)."""
    origin = c.integer(0, 2)
    path_value, flat = _as_path(c, profile.asn4)
    attrs = [attr(F_TRANSITIVE, ORIGIN, bytes((origin,))), attr(F_TRANSITIVE, AS_PATH, path_value)]
    local_pref = med = originator = None
    communities: tuple[int, ...] = ()
    large: tuple[tuple[int, int, int], ...] = ()
    clusters: tuple[IPv4Address, ...] = ()
    if chance(c, 70):
        local_pref = pick(c, (0, 100, 200, 2**31 - 1, 2**32 - 1))
        attrs.append(attr(F_TRANSITIVE, LOCAL_PREF, struct.pack("!L", local_pref)))
    if chance(c, 30):
        med = pick(c, (0, 10, 2**32 - 1))
        attrs.append(attr(F_OPTIONAL, MED, struct.pack("!L", med)))
    if chance(c, 15):
        attrs.append(attr(F_TRANSITIVE, ATOMIC_AGGREGATE, b""))
    if chance(c, 15):
        asn = pick(c, ASNS[:-1])
        value = (
            struct.pack("!L", asn) if profile.asn4 else struct.pack("!H", asn & 0xFFFF)
        ) + bytes([192, 0, 2, 9])
        attrs.append(attr(F_OPTIONAL | F_TRANSITIVE, AGGREGATOR, value))
    if chance(c, 40):
        values = [
            pick(c, (0xFFDC0001, (65501 << 16) | 10, 1, 0xFFFFFF01, 0))
            for _ in range(c.integer(1, 4))
        ]
        communities = tuple(sorted(set(values)))
        attrs.append(
            attr(
                F_OPTIONAL | F_TRANSITIVE,
                COMMUNITIES,
                b"".join(struct.pack("!L", v) for v in values),
            )
        )
    if chance(c, 30):
        originator = pick(c, (IPv4Address("10.255.0.12"), IPv4Address("10.255.0.13"), LOCAL_ID))
        attrs.append(attr(F_OPTIONAL, ORIGINATOR_ID, originator.packed))
    if chance(c, 30):
        clusters = tuple(
            pick(c, (IPv4Address("10.255.0.1"), IPv4Address("10.255.0.2")))
            for _ in range(c.integer(1, 3))
        )
        attrs.append(attr(F_OPTIONAL, CLUSTER_LIST, b"".join(a.packed for a in clusters)))
    if chance(c, 15):
        attrs.append(attr(F_OPTIONAL | F_TRANSITIVE, EXT_COMMUNITIES, bytes(8) * c.integer(1, 3)))
    if chance(c, 25):
        triples = [
            (pick(c, (65501, 4200000000)), c.integer(0, 3), pick(c, (0, 7, 2**32 - 1)))
            for _ in range(c.integer(1, 3))
        ]
        large = tuple(sorted(set(triples)))
        attrs.append(
            attr(
                F_OPTIONAL | F_TRANSITIVE,
                LARGE_COMMUNITY,
                b"".join(struct.pack("!LLL", *t) for t in triples),
            )
        )
    if chance(c, 10):
        attrs.append(
            attr(
                pick(c, (F_OPTIONAL, F_OPTIONAL | F_TRANSITIVE)),
                pick(c, UNKNOWN_CODES[1:-1]),
                c.raw(c.integer(0, 12)),
            )
        )
    expected = ExpectedAttributes(
        origin, flat, local_pref, med, communities, large, originator, clusters
    )
    return attrs, expected


def _prefixes(
    c: Chooser, pool: Sequence[IPNetwork], add_path: bool, n_max: int
) -> tuple[list[bytes], list[tuple[IPNetwork, int]]]:
    entries: list[bytes] = []
    keys: list[tuple[IPNetwork, int]] = []
    for _ in range(c.integer(1, n_max)):
        prefix = pick(c, pool)
        pid = pick(c, PATH_IDS) if add_path else 0
        entries.append(prefix_entry(prefix, pid if add_path else None))
        keys.append((prefix, pid))
    return entries, keys


def valid_update(c: Chooser, profile: Profile) -> tuple[UpdateSpec, Expected, str]:
    """A well-formed UPDATE of the negotiated families, and what it means."""
    fams = sorted(profile.families)
    kind = pick(c, ("announce", "announce", "announce", "withdraw", "mixed", "eor"))
    spec = UpdateSpec()
    if kind == "eor":
        family = pick(c, fams)
        if family == IPV4_UNICAST:
            return spec, Expected(end_of_rib=IPV4_UNICAST), "eor-v4"
        spec.attrs.append(attr(F_OPTIONAL, MP_UNREACH, mp_unreach_value(*family, [])))
        return spec, Expected(end_of_rib=family), "eor-mp"
    announced: set[tuple[IPNetwork, int, IPAddress]] = set()
    withdrawn: set[tuple[IPNetwork, int]] = set()
    label: list[str] = []
    if kind in ("withdraw", "mixed"):
        chosen = [f for f in fams if chance(c, 60)] or [pick(c, fams)]
        for family in chosen:
            ap = profile.add_path_for(family)
            # one MP_UNREACH_NLRI at most (RFC 7606 §3.g): IPv6 needs it, IPv4 may use it
            if family == IPV4_UNICAST and (IPV6_UNICAST in chosen or chance(c, 80)):
                entries, keys = _prefixes(c, V4_PREFIXES, ap, 6)
                spec.withdrawn.extend(entries)
                label.append("wd-v4")
            else:
                pool: Sequence[IPNetwork] = V4_PREFIXES if family == IPV4_UNICAST else V6_PREFIXES
                entries, keys = _prefixes(c, pool, ap, 6)
                spec.attrs.append(attr(F_OPTIONAL, MP_UNREACH, mp_unreach_value(*family, entries)))
                label.append(f"wd-mp-v{4 if family == IPV4_UNICAST else 6}")
            withdrawn.update(keys)
    attributes: ExpectedAttributes | None = None
    if kind in ("announce", "mixed"):
        family = pick(c, fams)
        ap = profile.add_path_for(family)
        attrs, attributes = _attributes(c, profile)
        if family == IPV4_UNICAST and chance(c, 85):
            hop: IPAddress = pick(c, (*V4_NEXT_HOPS, OWN_ADDRESS))
            attrs.insert(2, attr(F_TRANSITIVE, NEXT_HOP, hop.packed))
            entries, keys = _prefixes(c, V4_PREFIXES, ap, 8)
            spec.nlri.extend(entries)
            label.append("ann-v4")
        else:
            if family == IPV4_UNICAST:
                hop = pick(c, V4_NEXT_HOPS)
                raw_hop = hop.packed
                entries, keys = _prefixes(c, V4_PREFIXES, ap, 8)
                label.append("ann-mp-v4")
            else:
                hop = pick(c, V6_NEXT_HOPS)
                raw_hop = hop.packed + (V6_LINK_LOCAL.packed if chance(c, 40) else b"")
                entries, keys = _prefixes(c, V6_PREFIXES, ap, 8)
                label.append("ann-v6")
            mp = attr(F_OPTIONAL, MP_REACH, mp_reach_value(*family, raw_hop, entries))
            attrs.insert(c.integer(0, len(attrs)), mp)  # RFC 7606 §5.1: first is a SHOULD
        spec.attrs[:0] = attrs
        announced.update((p, pid, hop) for p, pid in keys)
    if not spec.withdrawn and not spec.attrs and not spec.nlri:
        return spec, Expected(end_of_rib=IPV4_UNICAST), "eor-v4"
    return spec, Expected(frozenset(announced), frozenset(withdrawn), attributes), "+".join(label)


# ---- structural mutations ------------------------------------------------------------------


def _random_attr_index(c: Chooser, spec: UpdateSpec) -> int | None:
    return c.integer(0, len(spec.attrs) - 1) if spec.attrs else None


def _find(spec: UpdateSpec, code: int) -> Attr | None:
    return next((a for a in spec.attrs if a.code == code), None)


def m_flags(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    i = _random_attr_index(c, spec)
    if i is None:
        return ""
    spec.attrs[i].flags ^= pick(c, (F_OPTIONAL, F_TRANSITIVE, F_PARTIAL, F_EXTENDED, 0x0F, 0x01))
    return f"flags-{spec.attrs[i].code}"


def m_duplicate(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    i = _random_attr_index(c, spec)
    if i is None:
        return ""
    a = spec.attrs[i]
    value = a.value if chance(c, 50) else c.raw(len(a.value))
    spec.attrs.insert(c.integer(0, len(spec.attrs)), Attr(a.flags, a.code, value))
    return f"dup-{a.code}"


def m_unknown(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    flags = pick(
        c,
        (
            F_OPTIONAL,
            F_OPTIONAL | F_TRANSITIVE,
            F_OPTIONAL | F_TRANSITIVE | F_PARTIAL,
            F_TRANSITIVE,
            0,
            F_OPTIONAL | F_EXTENDED,
        ),
    )
    code = pick(c, (*UNKNOWN_CODES, AIGP))
    spec.attrs.insert(c.integer(0, len(spec.attrs)), attr(flags, code, c.raw(c.integer(0, 20))))
    return f"unknown-{flags:02x}"


def m_remove(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    i = _random_attr_index(c, spec)
    if i is None:
        return ""
    return f"remove-{spec.attrs.pop(i).code}"


def m_next_hop(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    nh = _find(spec, NEXT_HOP)
    if nh is None:
        spec.attrs.append(attr(F_TRANSITIVE, NEXT_HOP, pick(c, BAD_V4_NEXT_HOPS)))
        return "add-next-hop"
    nh.value = pick(c, BAD_V4_NEXT_HOPS)
    return "bad-next-hop"


def m_as_path(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    path = _find(spec, AS_PATH)
    width = 4 if profile.asn4 else 2
    choice = c.integer(0, 5)
    if choice == 0:  # unknown segment type
        value = bytes((pick(c, (0, 5, 7, 255)), 1)) + bytes(width)
    elif choice == 1:  # count overruns
        value = bytes((2, c.integer(2, 255))) + bytes(width)
    elif choice == 2:  # count 0
        value = b"\x02\x00"
    elif choice == 3:  # stray bytes
        value = b"\x02\x01" + bytes(width) + c.raw(c.integer(1, 3))
    elif choice == 4:  # the other AS width
        value = b"\x02\x02" + bytes(2 * (6 - width))
    else:
        value = c.raw(c.integer(1, 12))
    if path is None:
        spec.attrs.append(attr(F_TRANSITIVE, AS_PATH, value))
    else:
        path.value = value
    return f"bad-as-path-{choice}"


def m_mp(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    mp = _find(spec, MP_REACH) or _find(spec, MP_UNREACH)
    if mp is None:
        afi, safi = pick(c, (IPV6_UNICAST, IPV4_UNICAST, *BAD_AFI_SAFI))
        nh = pick(c, (V6_NEXT_HOPS[0].packed, V4_NEXT_HOPS[0].packed, *BAD_V6_NEXT_HOPS))
        entries, _ = _prefixes(
            c,
            V6_PREFIXES if afi == AFI_IPV6 else V4_PREFIXES,
            profile.add_path and chance(c, 50),
            3,
        )
        spec.attrs.insert(0, attr(F_OPTIONAL, MP_REACH, mp_reach_value(afi, safi, nh, entries)))
        return "add-mp-reach"
    value = bytearray(mp.value)
    choice = c.integer(0, 4)
    if choice == 0 and len(value) >= 3:  # bad AFI/SAFI
        afi, safi = pick(c, BAD_AFI_SAFI)
        value[0:3] = struct.pack("!HB", afi, safi)
    elif choice == 1 and mp.code == MP_REACH and len(value) >= 4:  # next hop length lies
        value[3] = pick(c, (0, 1, 4, 8, 15, 16, 17, 31, 32, 33, 255))
    elif choice == 2 and mp.code == MP_REACH and len(value) >= 4:  # next hop replaced
        nh = pick(c, BAD_V6_NEXT_HOPS)
        value[3 : 4 + value[3]] = bytes((len(nh),)) + nh
    elif choice == 3:  # cut
        del value[c.integer(0, len(value)) :]
    else:  # the reserved byte goes
        if mp.code == MP_REACH and len(value) >= 4 and len(value) > 4 + value[3]:
            del value[4 + value[3]]
    mp.value = bytes(value)
    mp.flags = F_OPTIONAL | (F_EXTENDED if len(mp.value) > 255 else mp.flags & F_EXTENDED)
    return f"mp-{choice}"


def _bad_prefix(c: Chooser, add_path: bool, v6: bool) -> bytes:
    head = struct.pack("!L", pick(c, PATH_IDS)) if add_path else b""
    choice = c.integer(0, 3)
    if choice == 0:  # longer than the family allows
        plen = c.integer(129 if v6 else 33, 255)
        return head + bytes((plen,)) + c.raw(c.integer(0, 17))
    if choice == 1:  # overrun: fewer bytes than the length needs
        plen = c.integer(9, 128 if v6 else 32)
        return head + bytes((plen,)) + c.raw(c.integer(0, ((plen + 7) >> 3) - 1))
    if choice == 2:  # path id where none was negotiated, or missing where it was
        prefix = pick(c, V6_PREFIXES if v6 else V4_PREFIXES)
        return prefix_entry(prefix, None if add_path else pick(c, PATH_IDS))
    return c.raw(c.integer(1, 6))


def m_nlri(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    where = c.integer(0, 2)
    if where == 0:
        spec.withdrawn.insert(
            c.integer(0, len(spec.withdrawn)),
            _bad_prefix(c, profile.add_path_for(IPV4_UNICAST), False),
        )
        return "bad-withdrawn"
    if where == 1:
        spec.nlri.insert(
            c.integer(0, len(spec.nlri)), _bad_prefix(c, profile.add_path_for(IPV4_UNICAST), False)
        )
        return "bad-nlri"
    mp = _find(spec, MP_REACH) or _find(spec, MP_UNREACH)
    if mp is None:
        return ""
    mp.value += _bad_prefix(c, profile.add_path_for(IPV6_UNICAST), True)
    if len(mp.value) > 255:
        mp.flags |= F_EXTENDED
    return "bad-mp-nlri"


def m_lengths(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    choice = c.integer(0, 2)
    delta = pick(c, (-3, -2, -1, 1, 2, 5, 200, 4000))
    if choice == 0:
        spec.withdrawn_len_lie = delta
    elif choice == 1:
        spec.attr_len_lie = delta
    else:
        i = _random_attr_index(c, spec)
        if i is None:
            return ""
        spec.attrs[i].length = max(0, len(spec.attrs[i].value) + delta)
    return f"len-lie-{choice}"


def m_value(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    i = _random_attr_index(c, spec)
    if i is None:
        return ""
    a = spec.attrs[i]
    a.value = c.raw(c.integer(0, max(8, len(a.value) + 4)))
    if len(a.value) > 255:
        a.flags |= F_EXTENDED
    return f"value-{a.code}"


def m_origin(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    origin = _find(spec, ORIGIN)
    value = pick(c, (b"\x03", b"\xff", b"", b"\x00\x00"))
    if origin is None:
        spec.attrs.append(attr(F_TRANSITIVE, ORIGIN, value))
    else:
        origin.value = value
    return "bad-origin"


def m_as4(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    code = pick(c, (AS4_PATH, AS4_AGGREGATOR))
    if code == AS4_PATH:
        value = pick(c, (b"\x02\x01\xfa\x56\xea\x00", b"\x02\x05\x00", b"", b"\x01\x01" + bytes(4)))
    else:
        value = pick(c, (bytes(8), bytes(7), b"\xfa\x56\xea\x00\xc0\x00\x02\x01"))
    spec.attrs.insert(c.integer(0, len(spec.attrs)), attr(F_OPTIONAL | F_TRANSITIVE, code, value))
    return f"as4-{code}"


def m_family(c: Chooser, spec: UpdateSpec, profile: Profile) -> str:
    """NLRI of a family that was not negotiated."""
    missing = [f for f in (IPV4_UNICAST, IPV6_UNICAST) if f not in profile.families]
    if not missing:
        return ""
    if missing[0] == IPV4_UNICAST:
        entries, _ = _prefixes(c, V4_PREFIXES, False, 3)
        spec.nlri.extend(entries)
        if _find(spec, NEXT_HOP) is None:
            spec.attrs.append(attr(F_TRANSITIVE, NEXT_HOP, V4_NEXT_HOPS[0].packed))
    else:
        entries, _ = _prefixes(c, V6_PREFIXES, False, 3)
        spec.attrs.insert(
            0,
            attr(
                F_OPTIONAL, MP_REACH, mp_reach_value(*IPV6_UNICAST, V6_NEXT_HOPS[0].packed, entries)
            ),
        )
    return "other-family"


MUTATIONS: tuple[Callable[[Chooser, UpdateSpec, Profile], str], ...] = (
    m_flags, m_duplicate, m_unknown, m_remove, m_next_hop, m_as_path, m_mp, m_nlri,
    m_lengths, m_value, m_origin, m_as4, m_family,
)  # fmt: skip


# ---- byte mutations -----------------------------------------------------------------------


def mutate_bytes(c: Chooser, data: bytes, start: int = 0) -> bytes:
    """Bit flips, byte sets, truncation, insertion, deletion at or after ``start``."""
    out = bytearray(data)
    for _ in range(c.integer(1, 4)):
        if len(out) <= start:
            out += c.raw(c.integer(1, 4))
            continue
        pos = c.integer(start, len(out) - 1)
        op = c.integer(0, 5)
        if op <= 1:
            out[pos] ^= 1 << c.integer(0, 7)
        elif op == 2:
            out[pos] = pick(c, (0, 1, 0x7F, 0x80, 0xFF, c.integer(0, 255)))
        elif op == 3:
            del out[pos:]
        elif op == 4:
            out[pos:pos] = c.raw(c.integer(1, 8))
        else:
            del out[pos : pos + c.integer(1, 4)]
    return bytes(out)


# ---- other message types -----------------------------------------------------------------


def other_message(c: Chooser, profile: Profile, open_body: bytes) -> tuple[bytes, str]:
    kind = c.integer(0, 9)
    if kind == 0:
        return message(4, b""), "keepalive"
    if kind == 1:
        return message(4, c.raw(c.integer(1, 4))), "keepalive-body"
    if kind == 2:
        body = bytes((c.integer(0, 8), c.integer(0, 12))) + c.raw(c.integer(0, 10))
        return message(3, body), "notification"
    if kind == 3:
        return message(3, c.raw(c.integer(0, 1))), "notification-short"
    if kind == 4:
        afi, safi = pick(
            c, (*sorted(profile.families), IPV4_UNICAST, IPV6_UNICAST, (3, 1), (1, 128))
        )
        subtype = pick(c, (0, 0, 1, 2, 3, 255))
        return message(5, struct.pack("!HBB", afi, subtype, safi)), "route-refresh"
    if kind == 5:
        return message(5, c.raw(pick(c, (0, 3, 5, 8)))), "route-refresh-length"
    if kind == 6:
        body = open_body if chance(c, 50) else mutate_bytes(c, open_body)
        return message(1, body), "open"
    if kind == 7:
        return message(pick(c, (0, 6, 7, 128, 255)), c.raw(c.integer(0, 8))), "bad-type"
    if kind == 8:
        marker = bytearray(MARKER)
        marker[c.integer(0, 15)] ^= 1 << c.integer(0, 7)
        return message(4, b"", marker=bytes(marker)), "bad-marker"
    lie = pick(c, (-19, -18, -1, 1, 4078, 5000 - 19, 0xFFFF - 19))
    return message(pick(c, (1, 2, 3, 4, 5)), c.raw(c.integer(0, 8)), length_lie=lie), "length-lie"


# ---- OPEN (fed in OpenSent) -------------------------------------------------------------


def _capability(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def open_input(c: Chooser, profile: Profile, open_body: bytes) -> Input:
    """The peer's OPEN, mutated in its fields, parameters and capabilities, or other bytes
    where the OPEN should be."""
    body = bytearray(open_body)
    names: list[str] = []
    for _ in range(c.integer(0, 3)):
        choice = c.integer(0, 9)
        if choice == 0:
            body[0] = pick(c, (3, 5, 0, 255))
            names.append("version")
        elif choice == 1:
            body[1:3] = struct.pack("!H", pick(c, (65000, 23456, 0, 65502)))
            names.append("my-as")
        elif choice == 2:
            body[3:5] = struct.pack("!H", pick(c, (0, 1, 2, 3, 9, 65535)))
            names.append("hold")
        elif choice == 3:
            body[5:9] = pick(c, (bytes(4), LOCAL_ID.packed, b"\xff" * 4, PEER_ID.packed))
            names.append("bgp-id")
        elif choice == 4:
            body[9] = (body[9] + pick(c, (-5, -1, 1, 4, 200))) & 0xFF
            names.append("opt-len")
        else:
            caps = [
                _capability(65, struct.pack("!L", pick(c, (ASN, 0, 23456, 65502, 4200000000)))),
                _capability(
                    1, pick(c, (b"\x00\x02\x00\x01", b"\x00\x01\x00\x02", b"\x00\x02\x00", b""))
                ),
                _capability(
                    69,
                    pick(
                        c,
                        (
                            b"\x00\x01\x01\x02",
                            b"\x00\x02\x01\x03",
                            b"\x00\x01\x01\x07",
                            b"\x00\x01\x01",
                        ),
                    ),
                ),
                _capability(64, pick(c, (b"\x00\x78", b"\x80\x78\x00\x01\x01\x80", b"\x00"))),
                _capability(pick(c, (2, 128, 70, 73, 99, 255)), c.raw(c.integer(0, 4))),
            ]
            cap = pick(c, caps)
            if chance(c, 20):
                cap = cap[:1] + bytes(((cap[1] + pick(c, (1, 5))) & 0xFF,)) + cap[2:]
            ptype = 2 if chance(c, 85) else pick(c, (1, 3, 255))
            param = bytes((ptype, len(cap))) + cap
            body[10:10] = param
            body[9] = (body[9] + len(param)) & 0xFF
            names.append(f"param-{ptype}-cap-{cap[0]}")
    data = message(1, bytes(body))
    if chance(c, 15):
        data = mutate_bytes(c, data, 19)
        names.append("bytes")
    if chance(c, 5):
        data, label = other_message(c, profile, open_body)
        names = [label]
    return Input(data, (), {}, f"open {','.join(names) or 'as-is'}", phase="open")


# ---- whole inputs -------------------------------------------------------------------------


def one_update(c: Chooser, profile: Profile, mutate: bool) -> tuple[bytes, Expected | None, str]:
    spec, expected, label = valid_update(c, profile)
    if not mutate:
        return message(2, spec.pack()), expected, label
    names = []
    for _ in range(c.integer(1, 3)):
        name = pick(c, MUTATIONS)(c, spec, profile)
        if name:
            names.append(name)
    data = message(2, spec.pack())
    if len(data) > 4096:  # keep the header consistent unless a lie was asked for
        data = data[:4096]
    if not names or chance(c, 25):
        data = mutate_bytes(c, data, 19 if chance(c, 80) else 0)
        names.append("bytes")
    return data, None, f"{label}:{','.join(sorted(set(names)))}"


def encoder_corpus(profile: Profile, seed: int = 0) -> list[tuple[bytes, Expected]]:
    """UPDATEs and End-of-RIBs encoded by our own codec (as a route reflector running
    l3hostd would send them) for a session like ``profile``, each with its meaning."""
    c = RandomChooser(random.Random(seed))
    fams = tuple(sorted(profile.families))
    asn4 = ASN if profile.asn4 else None

    def caps(mode: int) -> Capabilities:
        add_path = tuple((f, mode) for f in fams) if profile.add_path else ()
        return Capabilities(families=profile.families, asn4=asn4, add_path=add_path)

    sender = Codec(ASN, ASN)
    sender.negotiate(Open(ASN, 90, PEER_ID, caps(2)), Open(ASN, 90, LOCAL_ID, caps(1)), 30)
    pid = 1 if profile.add_path else 0  # what our encoder sends with ADD-PATH
    out: list[tuple[bytes, Expected]] = []
    for _ in range(24):
        family = pick(c, fams)
        v6 = family == IPV6_UNICAST
        pool: Sequence[IPNetwork] = V6_PREFIXES if v6 else V4_PREFIXES
        prefixes = sorted({pick(c, pool) for _ in range(c.integer(1, 12))}, key=str)
        if chance(c, 30):
            (encoded,) = sender.encode_updates([], prefixes)
            out.append((encoded, Expected(withdrawn=frozenset((p, pid) for p in prefixes))))
            continue
        hop: IPAddress = pick(c, V6_NEXT_HOPS if v6 else V4_NEXT_HOPS)
        local_pref = pick(c, (100, 2**31 - 1 - 1024, 0))
        med = pick(c, (None, 0, 7))
        communities = tuple(
            sorted({pick(c, (1, 0xFFDC0001, (65501 << 16) | 10)) for _ in range(c.integer(0, 3))})
        )
        large = tuple(sorted({(65501, c.integer(0, 2), 7) for _ in range(c.integer(0, 2))}))
        anns = [Announcement(p, hop, local_pref, communities, large, med) for p in prefixes]
        (encoded,) = sender.encode_updates(anns, [])
        attributes = ExpectedAttributes(0, (), local_pref, med, communities, large, None, ())
        routes = frozenset((p, pid, hop) for p in prefixes)
        out.append((encoded, Expected(routes, frozenset(), attributes)))
    for family in fams:
        out.append((sender.encode_end_of_rib(family), Expected(end_of_rib=family)))
    return out


def message_input(
    c: Chooser, profile: Profile, open_body: bytes, corpus: Sequence[tuple[bytes, Expected]] = ()
) -> Input:
    """One message (or what is left of it), fed in one call."""
    kind = c.integer(0, 99)
    if corpus and kind < 12:
        data, expected = pick(c, corpus)
        if chance(c, 40):
            return Input(data, (), {data: expected}, "corpus")
        return Input(mutate_bytes(c, data, 19 if chance(c, 80) else 0), (), {}, "corpus mutated")
    if kind < 30:
        data, expected_, label = one_update(c, profile, mutate=False)
        return Input(data, (), {data: expected_} if expected_ else {}, f"valid {label}")
    if kind < 82:
        data, _, label = one_update(c, profile, mutate=True)
        return Input(data, (), {}, f"mutated {label}")
    if kind < 94:
        data, label = other_message(c, profile, open_body)
        return Input(data, (), {}, label)
    if chance(c, 50):  # a good header, random body
        body = c.raw(c.integer(0, 60))
        return Input(message(c.integer(1, 5), body), (), {}, "random-body")
    return Input(c.raw(c.integer(0, 80)), (), {}, "random-bytes")


def stream_input(c: Chooser, profile: Profile, open_body: bytes) -> Input:
    """Several messages back to back, cut into several receive_data calls."""
    parts: list[bytes] = []
    expected: dict[bytes, Expected] = {}
    labels: list[str] = []
    for _ in range(c.integer(1, 6)):
        kind = c.integer(0, 99)
        if kind < 60:
            data, exp, label = one_update(c, profile, mutate=False)
            if exp is not None:
                expected[data] = exp
        elif kind < 75:
            data, _, label = one_update(c, profile, mutate=True)
            label = "mutated"
        elif kind < 90:
            data, label = message(4, b""), "keepalive"
        elif kind < 95:
            data, label = other_message(c, profile, open_body)
        else:
            data, label = c.raw(c.integer(1, 40)), "junk"
        parts.append(data)
        labels.append(label.split(":")[0])
    data = b"".join(parts)
    cuts = sorted({c.integer(1, len(data)) for _ in range(c.integer(0, 6))} - {len(data)})
    return Input(data, tuple(cuts), expected, "stream " + " ".join(labels))


def generate(
    c: Chooser, profile: Profile, open_body: bytes, corpus: Sequence[tuple[bytes, Expected]] = ()
) -> Input:
    kind = c.integer(0, 99)
    if kind < 4:
        return open_input(c, profile, open_body)
    if kind < 22:
        return stream_input(c, profile, open_body)
    return message_input(c, profile, open_body, corpus)
