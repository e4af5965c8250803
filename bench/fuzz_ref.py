"""Reference reading of BGP bytes for the fuzzer's oracle, written from the RFCs.

How it works
------------
Independent of ``l3hostd/bgp`` (it imports only the generator's constants and the message
type names): :func:`ref_frames` splits a byte stream the way RFC 4271 §4.1/§6.1 says and
names the NOTIFICATION(s) a header error calls for; :func:`ref_update` reads one UPDATE
body for a session :class:`~bench.fuzz_gen.Profile` and says what any correct speaker may do
with it:

* ``must_reset``: RFC 7606 leaves no choice but a session reset (Withdrawn Routes or Total
  Path Attribute Length overrunning the message, IPv4 NLRI that cannot be parsed,
  MP_REACH/MP_UNREACH twice (§3.g), or one that overruns the attributes or whose prefixes
  cannot be parsed (§5.3, §3.j));
* ``reset_subcodes``: the UPDATE Message Error subcodes a reset may carry (none if no reset
  is allowed: every other error is treat-as-withdraw or attribute-discard under RFC 7606);
  a reset is allowed for an MP attribute that is wrong in any way (RFC 4760 §7 names
  Optional Attribute Error), and 3/2 for an unrecognized well-known attribute;
* ``announce`` / ``withdraw``: every prefix in the message (IPv4 fields, MP_REACH and
  MP_UNREACH) with the next hop(s) the wire gives it; the IPv4 fields of a session without
  IPv4 unicast are ignored, as FRR does;
* ``must_taw``: why routes must not be accepted (missing ORIGIN/AS_PATH/NEXT_HOP §3.d,
  malformed ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF, COMMUNITIES, ORIGINATOR_ID,
  CLUSTER_LIST, extended or large communities §7, wrong flags §3.c, an attribute walk that
  overruns §4, a next hop that is not a unicast address RFC 4271 §5.1.3); ``may_taw``: any
  reason treat-as-withdraw is acceptable; ``exotic``: attributes whose rules are not
  modelled (then an unexplained treat-as-withdraw is not judged);
* ``eor``: the End-of-RIB readings allowed (RFC 4724 §2: only the empty UPDATE, or an
  UPDATE holding nothing but an empty MP_UNREACH_NLRI).
"""

from __future__ import annotations

import struct
from collections import Counter
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

from bench.fuzz_gen import (
    AS_PATH,
    CLUSTER_LIST,
    COMMUNITIES,
    EXT_COMMUNITIES,
    LARGE_COMMUNITY,
    LOCAL_PREF,
    MED,
    MP_REACH,
    MP_UNREACH,
    NEXT_HOP,
    ORIGIN,
    ORIGINATOR_ID,
    RECOGNISED,
    Profile,
)
from l3hostd.bgp.messages import IPV4_UNICAST, Family
from l3hostd.model import IPNetwork

#: Codes ExaBGP decodes with rules this reference does not model (PMSI, IPv6 extended
#: communities, AIGP, BGP-LS, Prefix-SID): their presence lifts the "treat-as-withdraw needs
#: a reason" check.
EXOTIC = frozenset({22, 25, 26, 29, 40})
KNOWN = RECOGNISED | EXOTIC
UPDATE_RESET_MP = frozenset({1, 4, 5, 8, 9, 10})

PathKey = tuple[IPNetwork, int]


# ---- reference framing (RFC 4271 §4.1, §6.1) ---------------------------------------------

_BOUNDS = {1: (29, 4096), 2: (23, 4096), 3: (21, 4096), 4: (19, 19), 5: (23, 23)}


@dataclass(slots=True)
class Frames:
    frames: list[tuple[int, bytes, bytes]]  # type, body, whole message
    rest: bytes  # an incomplete message at the end
    header_error: frozenset[tuple[int, int, bytes]] | None  # acceptable NOTIFICATIONs


def ref_frames(buf: bytes) -> Frames:
    frames: list[tuple[int, bytes, bytes]] = []
    off = 0
    while len(buf) - off >= 19:
        marker = buf[off : off + 16]
        length, kind = struct.unpack_from("!HB", buf, off + 16)
        errors: set[tuple[int, int, bytes]] = set()
        if marker != b"\xff" * 16:
            errors.add((1, 1, b""))
        else:
            if not 19 <= length <= 4096:
                errors.add((1, 2, struct.pack("!H", length)))
            if kind not in _BOUNDS:
                errors.add((1, 3, bytes((kind,))))
            elif not _BOUNDS[kind][0] <= length <= _BOUNDS[kind][1]:
                errors.add((1, 2, struct.pack("!H", length)))
        if errors:
            return Frames(frames, b"", frozenset(errors))
        if len(buf) - off < length:
            break
        frames.append((kind, buf[off + 19 : off + length], buf[off : off + length]))
        off += length
    return Frames(frames, buf[off:], None)


# ---- reference UPDATE reading (RFC 4271 §4.3, RFC 7606, RFC 4760, RFC 7911) --------------


def ref_prefixes(data: bytes, add_path: bool, v6: bool) -> list[PathKey] | None:
    """The prefixes of an NLRI field; None if it is not well-formed."""
    out: list[PathKey] = []
    off, end = 0, len(data)
    width = 128 if v6 else 32
    while off < end:
        pid = 0
        if add_path:
            if end - off < 4:
                return None
            pid = int.from_bytes(data[off : off + 4], "big")
            off += 4
        if off >= end:
            return None
        plen = data[off]
        nbytes = (plen + 7) // 8
        if plen > width or off + 1 + nbytes > end:
            return None
        value = int.from_bytes(data[off + 1 : off + 1 + nbytes].ljust(width // 8, b"\0"), "big")
        net: IPNetwork = (
            IPv6Network((value, plen), strict=False)
            if v6
            else IPv4Network((value, plen), strict=False)
        )
        out.append((net, pid))
        off += 1 + nbytes
    return out


def _as_path_ok(value: bytes, width: int) -> bool:
    """RFC 7606 §7.2: segment types 1..4, no overrun, no stray octet."""
    off = 0
    while off < len(value):
        if len(value) - off < 2 or value[off] not in (1, 2, 3, 4):
            return False
        off += 2 + value[off + 1] * width
        if off > len(value):
            return False
    return True


def _bad_v4_next_hop(raw: bytes) -> bool:
    a = IPv4Address(raw)
    return a.is_unspecified or a.is_multicast or a.is_loopback or raw == b"\xff" * 4


def _bad_v6_next_hop(raw: bytes) -> bool:
    a = IPv6Address(raw)
    return a.is_unspecified or a.is_multicast or a.is_loopback or a.is_link_local


#: Flags (optional, transitive) each attribute must have (RFC 4271 §5, 4760, 1997, 4456, 8092)
_FLAGS = {ORIGIN: 0x40, AS_PATH: 0x40, NEXT_HOP: 0x40, MED: 0x80, LOCAL_PREF: 0x40,
          COMMUNITIES: 0xC0, ORIGINATOR_ID: 0x80, CLUSTER_LIST: 0x80, MP_REACH: 0x80,
          MP_UNREACH: 0x80, EXT_COMMUNITIES: 0xC0, LARGE_COMMUNITY: 0xC0}  # fmt: skip


#: Value lengths: fixed, or a non-zero multiple (RFC 7606 §7.4-7.10, §7.14, RFC 8092 §6)
_FIXED = {MED: 4, LOCAL_PREF: 4, ORIGINATOR_ID: 4}
_MULTIPLE = {COMMUNITIES: 4, CLUSTER_LIST: 4, EXT_COMMUNITIES: 8, LARGE_COMMUNITY: 12}


def _length_ok(code: int, size: int) -> bool:
    if code in _FIXED:
        return size == _FIXED[code]
    if code in _MULTIPLE:
        return size > 0 and size % _MULTIPLE[code] == 0
    return True


@dataclass(slots=True)
class RefUpdate:
    must_reset: str = ""  # why RFC 7606 leaves no choice but a session reset
    reset_subcodes: frozenset[int] = frozenset()  # UPDATE Message Error subcodes allowed
    announce: dict[PathKey, set[bytes]] = field(default_factory=dict)  # -> wire next hops
    withdraw: set[PathKey] = field(default_factory=set)
    must_taw: str = ""  # why routes must not be accepted (RFC 7606 treat-as-withdraw)
    may_taw: str = ""  # a reason treat-as-withdraw is acceptable
    exotic: bool = False  # an attribute whose rules are not modelled here
    eor: frozenset[Family | None] = frozenset()  # acceptable End-of-RIB readings


def _mp_reach(value: bytes, profile: Profile) -> tuple[Family, bytes, list[PathKey] | None] | None:
    """MP_REACH_NLRI: (family, next hop, prefixes or None if unparseable); None when the
    fixed part is malformed."""
    if len(value) < 5:
        return None
    afi, safi, nhlen = struct.unpack_from("!HBB", value)
    if len(value) < 5 + nhlen:
        return None
    family = (afi, safi)
    nh = value[4 : 4 + nhlen]
    if family not in profile.families:
        return family, nh, None
    return family, nh, ref_prefixes(value[5 + nhlen :], profile.add_path_for(family), afi == 2)


def ref_update(body: bytes, profile: Profile) -> RefUpdate:
    ref = RefUpdate()
    n = len(body)
    wlen = int.from_bytes(body[0:2], "big")
    if 4 + wlen > n:
        ref.must_reset, ref.reset_subcodes = "withdrawn length overruns", frozenset({1})
        return ref
    alen = int.from_bytes(body[2 + wlen : 4 + wlen], "big")
    if 4 + wlen + alen > n:
        ref.must_reset, ref.reset_subcodes = "attribute length overruns", frozenset({1})
        return ref
    ap4 = profile.add_path_for(IPV4_UNICAST)
    withdrawn: list[PathKey] | None = []
    nlri: list[PathKey] | None = []
    if IPV4_UNICAST in profile.families:
        withdrawn = ref_prefixes(body[2 : 2 + wlen], ap4, False)
        nlri = ref_prefixes(body[4 + wlen + alen :], ap4, False)
    # else: the IPv4 fields of a session without IPv4 unicast are ignored (as FRR does)
    subcodes = set()
    reasons: list[str] = []
    if withdrawn is None or nlri is None:
        reasons.append("IPv4 NLRI not well-formed")
        subcodes |= {1, 10}
    # the attribute walk (RFC 7606 §4)
    block = body[4 + wlen : 4 + wlen + alen]
    attrs: dict[int, tuple[int, bytes]] = {}  # first occurrence of each code
    counts: Counter[int] = Counter()
    off = 0
    walk_broken = ""
    while off < len(block):
        if len(block) - off < 3:
            walk_broken = "truncated attribute header"
            break
        flags, code = block[off], block[off + 1]
        if flags & 0x10:
            if len(block) - off < 4:
                walk_broken = "truncated attribute header"
                if code in (MP_REACH, MP_UNREACH):
                    reasons.append("MP attribute header truncated")
                break
            length, start = int.from_bytes(block[off + 2 : off + 4], "big"), off + 4
        else:
            length, start = block[off + 2], off + 3
        if start + length > len(block):
            walk_broken = f"attribute {code} overruns"
            if code in (MP_REACH, MP_UNREACH):
                reasons.append("MP attribute overruns the attributes")
            break
        counts[code] += 1
        attrs.setdefault(code, (flags, block[start : start + length]))
        off = start + length
    if walk_broken:
        ref.may_taw = walk_broken
        ref.must_taw = walk_broken
    if counts[MP_REACH] > 1 or counts[MP_UNREACH] > 1:
        reasons.append("MP_REACH_NLRI or MP_UNREACH_NLRI twice (RFC 7606 §3.g)")
    ref.exotic = any(code in EXOTIC for code in counts)
    if any(not flags & 0x80 and code not in KNOWN for code, (flags, _) in attrs.items()):
        subcodes.add(2)  # unrecognized well-known attribute (RFC 4271 §6.3)

    announce: dict[PathKey, set[bytes]] = {}
    withdraw: set[PathKey] = set(withdrawn or ())
    mp_problem = False
    if MP_REACH in attrs:
        flags, value = attrs[MP_REACH]
        parsed = _mp_reach(value, profile)
        if flags & 0xC0 != 0x80 or parsed is None:
            mp_problem = True
        else:
            family, nh, prefixes = parsed
            if not value[5 + len(nh) :]:
                # no NLRI: RFC 4760 does not forbid it, ExaBGP calls it an error (3/9)
                mp_problem = True
            if prefixes is None:
                if family in profile.families:
                    reasons.append("MP_REACH_NLRI prefixes not well-formed")
                mp_problem = True
            else:
                good_len = (4,) if family == IPV4_UNICAST else (16, 32)
                if len(nh) not in good_len:
                    mp_problem = True
                    ref.may_taw = ref.may_taw or "MP next hop length"
                for key in prefixes:
                    announce.setdefault(key, set()).add(
                        nh[:4] if family == IPV4_UNICAST else nh[:16]
                    )
    if MP_UNREACH in attrs:
        flags, value = attrs[MP_UNREACH]
        if flags & 0xC0 != 0x80 or len(value) < 3:
            mp_problem = True
        else:
            afi, safi = struct.unpack_from("!HB", value)
            family = (afi, safi)
            if family not in profile.families:
                mp_problem = True
            else:
                prefixes = ref_prefixes(value[3:], profile.add_path_for(family), afi == 2)
                if prefixes is None:
                    reasons.append("MP_UNREACH_NLRI prefixes not well-formed")
                    mp_problem = True
                else:
                    withdraw.update(prefixes)
    if reasons or mp_problem:
        subcodes |= UPDATE_RESET_MP
    if reasons:
        ref.must_reset = "; ".join(reasons)
    ref.reset_subcodes = frozenset(subcodes)
    if nlri:
        nh_attr = attrs.get(NEXT_HOP)
        nh_raw = nh_attr[1] if nh_attr is not None and len(nh_attr[1]) == 4 else b""
        for key in nlri:
            announce.setdefault(key, set()).add(nh_raw)
    ref.announce = announce
    ref.withdraw = withdraw

    # End-of-RIB (RFC 4724 §2)
    if body == b"\x00\x00\x00\x00":
        ref.eor = frozenset({IPV4_UNICAST if IPV4_UNICAST in profile.families else None})
    elif (
        wlen == 0
        and len(body) == 4 + alen
        and counts == Counter({MP_UNREACH: 1})
        and len(attrs[MP_UNREACH][1]) == 3
        and attrs[MP_UNREACH][0] & 0xC0 == 0x80
    ):
        family = struct.unpack_from("!HB", attrs[MP_UNREACH][1])
        if family in profile.families:
            # IPv4's marker is the empty UPDATE; reading this one as a no-op is fine too
            ref.eor = frozenset({family, None} if family == IPV4_UNICAST else {family})

    # RFC 7606 treat-as-withdraw (only matters when something is announced)
    must: list[str] = []
    may: list[str] = []
    if announce:
        for code, name in ((ORIGIN, "ORIGIN"), (AS_PATH, "AS_PATH")):
            if code not in attrs:
                must.append(f"missing {name}")
        if nlri and NEXT_HOP not in attrs:
            must.append("missing NEXT_HOP")
    width = 4 if profile.asn4 else 2
    for code, (flags, value) in attrs.items():
        if code in _FLAGS and flags & 0xC0 != _FLAGS[code]:
            if code == NEXT_HOP and not nlri:
                may.append("NEXT_HOP flags (ignored without IPv4 NLRI)")
            elif code not in (MP_REACH, MP_UNREACH):
                must.append(f"attribute {code} flags 0x{flags:02x}")
            continue
        if flags & 0x20 and code in _FLAGS and _FLAGS[code] != 0xC0:
            may.append(f"attribute {code} partial bit")
        size = len(value)
        problem = ""
        if code == ORIGIN and (size != 1 or value[0] > 2):
            problem = "ORIGIN"
        elif code == AS_PATH and not _as_path_ok(value, width):
            problem = "AS_PATH"
        elif not _length_ok(code, size):
            problem = f"attribute {code} length {size}"
        elif code == NEXT_HOP and (size != 4 or _bad_v4_next_hop(value)):
            (must if nlri else may).append(f"NEXT_HOP {value.hex()}")
        if problem:
            must.append(problem)
    for key, hops in announce.items():
        v6 = key[0].version == 6
        for nh in hops:
            if len(nh) != (16 if v6 else 4) or (
                _bad_v6_next_hop(nh) if v6 else _bad_v4_next_hop(nh)
            ):
                must.append(f"next hop {nh.hex()} for {key[0]}")
                break
    if must and announce:
        ref.must_taw = ref.must_taw or "; ".join(must)
    if must or may:
        ref.may_taw = ref.may_taw or "; ".join(must + may)
    return ref


# ---- reference OPEN reading (RFC 4271 §4.2/§6.2, RFC 5492, 4760, 6793, 4724, 7911) -------

CAP_MP, CAP_RR, CAP_GR, CAP_ASN4, CAP_ADD_PATH, CAP_RR_CISCO = 1, 2, 64, 65, 69, 128
_CAP_OK = {
    CAP_MP: lambda n: n == 4,
    CAP_RR: lambda n: n == 0,
    CAP_RR_CISCO: lambda n: n == 0,
    CAP_ASN4: lambda n: n == 4,
    CAP_GR: lambda n: n >= 2 and (n - 2) % 4 == 0,
    CAP_ADD_PATH: lambda n: n > 0 and n % 4 == 0,
}


#: Capabilities ExaBGP decodes whose content this reference does not check (extended next
#: hop, extended message, multisession, enhanced route refresh, hostname, software version,
#: Cisco multisession/operational): a malformed one may be refused. Any other unknown
#: capability must be ignored (RFC 5492 §5).
EXOTIC_CAPS = frozenset({5, 6, 68, 70, 73, 75, 131, 185})


@dataclass(slots=True)
class RefOpen:
    """What an OPEN from the fuzzing peer allows: ``must`` maps an OPEN Message Error
    subcode to the reason the OPEN must be refused (any of them may be sent); ``may`` the
    subcodes a refusal may carry when nothing forces one (unusual but tolerable content);
    the rest is what the OPEN says, for checking the negotiation (``exact``: every
    capability was understood)."""

    must: dict[int, str] = field(default_factory=dict)
    may: set[int] = field(default_factory=set)
    exact: bool = True
    hold: int = 0
    asn4: int | None = None
    families: frozenset[Family] = frozenset({IPV4_UNICAST})  # RFC 4760 §8: no MP cap
    add_path: dict[Family, int] = field(default_factory=dict)
    graceful_restart: bool = False
    route_refresh: bool = False


def read_open(
    body: bytes, peer_asn: int = 65501, our_id: bytes = bytes((10, 255, 0, 11))
) -> RefOpen:
    ref = RefOpen()
    version, my_as, ref.hold = (
        body[0],
        int.from_bytes(body[1:3], "big"),
        int.from_bytes(body[3:5], "big"),
    )
    bgp_id, opt_len, params = body[5:9], body[9], body[10:]
    if version != 4:
        ref.must[1] = f"version {version}"
    if ref.hold in (1, 2):
        ref.must[6] = f"hold time {ref.hold}"
    if bgp_id == bytes(4) or bgp_id == our_id:
        ref.must[3] = f"BGP identifier {'.'.join(map(str, bgp_id))}"
    families: set[Family] = set()
    seen_mp = False
    codes: Counter[int] = Counter()
    asn4s: list[int] = []
    if opt_len == 255 and params[:1] == b"\xff":  # RFC 9072 extended parameters: not modelled
        ref.exact = False
        ref.may |= {0, 2, 4, 7}
        return ref
    if opt_len != len(params):
        ref.must[0] = f"optional parameters length {opt_len}, {len(params)} bytes follow"
    off = 0
    while off < len(params):
        if len(params) - off < 2 or off + 2 + params[off + 1] > len(params):
            ref.must[0] = "optional parameter overruns"
            break
        ptype, plen = params[off], params[off + 1]
        value = params[off + 2 : off + 2 + plen]
        off += 2 + plen
        if ptype != 2:
            ref.must[4] = f"optional parameter type {ptype}"
            continue
        coff = 0
        while coff < len(value):
            if len(value) - coff < 2 or coff + 2 + value[coff + 1] > len(value):
                ref.must[0] = "capability overruns its parameter"
                break
            code, clen = value[coff], value[coff + 1]
            cval = value[coff + 2 : coff + 2 + clen]
            coff += 2 + clen
            codes[code] += 1
            if code in _CAP_OK and not _CAP_OK[code](clen):
                ref.may |= {0, 7}  # RFC 5492 names no remedy: refuse or ignore
                ref.exact = False
                continue
            if code in EXOTIC_CAPS:
                ref.may |= {0, 7}  # content rules not modelled here
            if code == CAP_MP:
                seen_mp = True
                families.add((int.from_bytes(cval[0:2], "big"), cval[3]))
            elif code in (CAP_RR, CAP_RR_CISCO):
                ref.route_refresh = True
            elif code == CAP_ASN4:
                asn4s.append(int.from_bytes(cval, "big"))
            elif code == CAP_GR:
                ref.graceful_restart = True
            elif code == CAP_ADD_PATH:
                for i in range(0, clen, 4):
                    fam = (int.from_bytes(cval[i : i + 2], "big"), cval[i + 2])
                    ref.add_path[fam] = cval[i + 3]
                    if cval[i + 3] not in (1, 2, 3):
                        ref.may |= {0, 7}
                        ref.exact = False
    if any(n > 1 for c, n in codes.items() if c in _CAP_OK):
        ref.exact = False  # a capability twice: which one counts is not specified
        ref.may |= {0, 2, 7}
    if seen_mp:
        ref.families = frozenset(families)
    if asn4s:
        ref.asn4 = asn4s[-1]
    candidates = set(asn4s) or {my_as}  # a capability twice: either may count
    if my_as == 0:
        ref.must[2] = "My AS 0 (RFC 7607)"
    elif peer_asn not in candidates:
        ref.must[2] = f"AS {sorted(candidates)}, configured {peer_asn}"
    elif len(candidates) > 1 or 0 in candidates:
        ref.may.add(2)
    if asn4s and my_as not in (23456, *asn4s):
        ref.may.add(2)  # RFC 6793 §4.1: My AS should be AS_TRANS or the AS itself
    return ref
