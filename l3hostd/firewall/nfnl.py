"""nf_tables set-element messages, packed by hand (pure: no IO, no pyroute2).

Why: every ``nft`` command (libnftables included) first re-fetches its cache of the
ruleset, whose cost grows with the table: an ``add element`` cost 7-14 ms at 5,000
endpoints. The kernel itself applies a set element in microseconds. So the daemon writes
set and map elements as nfnetlink messages it packs here and sends over a
``NETLINK_NETFILTER`` socket (:mod:`l3hostd.firewall.nfsock`): no cache, flat cost.

Layout (what ``nft --debug=mnl`` / strace show nft 1.0.6 sending; all attributes 4-byte
aligned, attribute headers in host order, data values in network order)::

    nlmsghdr  type (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM / _DELSETELEM,
              flags REQUEST (| CREATE for an add; | ACK on the batch's last message)
    nfgenmsg  u8 family (NFPROTO_INET / NFPROTO_ARP), u8 version 0, be16 res_id 0
    NFTA_SET_ELEM_LIST_TABLE  string, NUL-terminated
    NFTA_SET_ELEM_LIST_SET    string, NUL-terminated
    NFTA_SET_ELEM_LIST_ELEMENTS (nested)
        NFTA_LIST_ELEM (nested), one per element
            NFTA_SET_ELEM_KEY (nested) -> NFTA_DATA_VALUE  key bytes
            NFTA_SET_ELEM_KEY_END (nested) -> NFTA_DATA_VALUE    concatenated interval
                                           sets (pipapo): the last key of the range
            NFTA_SET_ELEM_DATA (nested) -> NFTA_DATA_VERDICT (nested)   verdict maps
                NFTA_VERDICT_CODE  be32 NFT_JUMP (-3)
                NFTA_VERDICT_CHAIN string

Keys are the set's fields concatenated, each padded to 4 bytes: ``ifname`` is 16 bytes
(NUL-padded), ``ether_addr`` 6 (+2), ``nf_proto`` 1 (+3), ``ipv4_addr`` 4, ``ipv6_addr``
16. A DELSETELEM without NFTA_SET_ELEM_LIST_ELEMENTS flushes the set.

A *batch* is NFNL_MSG_BATCH_BEGIN, the messages, NFNL_MSG_BATCH_END (res_id =
NFNL_SUBSYS_NFTABLES), sent in one ``sendmsg``: nf_tables applies it as one transaction,
all or nothing. nfnetlink answers every message that fails (whatever its flags) and every
message that asks for an ACK, after the whole batch, in order; so only the last message
asks for one (as l3hostd's rtnetlink batch writer does): its ACK means every message has
been answered -- one answer for a whole load instead of one per message, which overflowed
the receive buffer. A failed commit is answered on the BATCH_BEGIN's sequence number.
:func:`parse_replies` reads the answers.

Only l3hostd's element shapes are covered (no rbtree interval sets: every interval set
l3hostd declares is a concatenation, i.e. pipapo, which takes KEY + KEY_END).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Address, IPv6Network
from typing import Final

from l3hostd.netlink import wire

# linux/netfilter/nfnetlink.h, nf_tables.h, netfilter.h
NFNL_SUBSYS_NFTABLES: Final = 10
NFNL_MSG_BATCH_BEGIN: Final = 16
NFNL_MSG_BATCH_END: Final = 17
NFT_MSG_NEWSETELEM: Final = 12
NFT_MSG_DELSETELEM: Final = 14
NFTA_SET_ELEM_LIST_TABLE: Final = 1
NFTA_SET_ELEM_LIST_SET: Final = 2
NFTA_SET_ELEM_LIST_ELEMENTS: Final = 3
NFTA_LIST_ELEM: Final = 1
NFTA_SET_ELEM_KEY: Final = 1
NFTA_SET_ELEM_DATA: Final = 2
NFTA_SET_ELEM_KEY_END: Final = 10
NFTA_DATA_VALUE: Final = 1
NFTA_DATA_VERDICT: Final = 2
NFTA_VERDICT_CODE: Final = 1
NFTA_VERDICT_CHAIN: Final = 2
NFT_JUMP: Final = -3
NFT_GOTO: Final = -4
NFPROTO_INET: Final = 1
NFPROTO_IPV4: Final = 2
NFPROTO_ARP: Final = 3
NFPROTO_IPV6: Final = 10
NLA_F_NESTED: Final = 0x8000
IFNAMSIZ: Final = 16

#: Room for one message's element list: its attribute length is a u16 (65535), keep a
#: margin for the message's other attributes.
MAX_ELEMENTS_BYTES: Final = 60_000

_NFGEN = struct.Struct("!BBH")  # family, version, res_id (big endian)
_NLA = struct.Struct("=HH")
_BE32 = struct.Struct("!i")

ADD: Final = "add"
DELETE: Final = "delete"


# ----------------------------------------------------------------------------- keys


def ifname(name: str) -> bytes:
    """An interface name as nft's ``ifname`` type: 16 bytes, NUL-padded."""
    raw = name.encode("ascii")
    if not 0 < len(raw) < IFNAMSIZ:
        raise ValueError(f"invalid interface name {name!r}")
    return raw.ljust(IFNAMSIZ, b"\0")


def ether(mac: str) -> bytes:
    """``aa:bb:cc:dd:ee:ff`` as 6 bytes (padded to 8 when part of a concatenation)."""
    raw = bytes.fromhex(mac.replace(":", ""))
    if len(raw) != 6:
        raise ValueError(f"invalid MAC {mac!r}")
    return raw


def nfproto(version: int) -> bytes:
    """``nf_proto`` of an address family (``ipv4``/``ipv6``): one byte."""
    return bytes([NFPROTO_IPV4 if version == 4 else NFPROTO_IPV6])


def concat(*fields: bytes) -> bytes:
    """Fields of a concatenated key, each padded to a multiple of 4 bytes."""
    return b"".join(f + b"\0" * (-len(f) % 4) for f in fields)


def address_range(net: IPv4Network | IPv6Network) -> tuple[bytes, bytes]:
    """First and last address of a prefix, packed (network order)."""
    return net.network_address.packed, net.broadcast_address.packed


def parse_range(text: str) -> tuple[bytes, bytes]:
    """An address in nft's spelling -- ``10.0.0.1``, ``10.0.0.0/24`` or
    ``10.0.0.1-10.0.0.5`` (IPv4 or IPv6) -- as (first, last) packed addresses."""
    if "-" in text:
        low, high = text.split("-", 1)
        return _packed(low), _packed(high)
    addr, _, length = text.partition("/")
    packed = _packed(addr)
    if not length:
        return packed, packed
    bits = len(packed) * 8
    plen = int(length)
    if not 0 <= plen <= bits:
        raise ValueError(f"invalid prefix {text!r}")
    host = (1 << (bits - plen)) - 1
    value = int.from_bytes(packed, "big")
    return (value & ~host).to_bytes(len(packed), "big"), (value | host).to_bytes(len(packed), "big")


def _packed(text: str) -> bytes:
    """An IPv4 or IPv6 address, packed (IPv4 without :mod:`ipaddress`: a full load packs
    tens of thousands of them)."""
    if ":" in text:
        return IPv6Address(text).packed
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
        raise ValueError(f"invalid IPv4 address {text!r}")
    return bytes(map(int, parts))  # ValueError above 255


# ----------------------------------------------------------------------------- elements


@dataclass(frozen=True, slots=True)
class Element:
    """One set element: ``key`` (and ``key_end`` for a concatenated interval set), and
    for a verdict map the chain it jumps to."""

    key: bytes
    key_end: bytes | None = None
    jump: str | None = None


@dataclass(frozen=True, slots=True)
class SetOp:
    """Add (or delete) ``elements`` of one set; ``flush``: delete every element."""

    op: str  # ADD or DELETE
    family: int  # NFPROTO_INET, NFPROTO_ARP
    table: str
    set: str
    elements: tuple[Element, ...] = ()
    flush: bool = False


def coalesce(ops: Iterable[SetOp]) -> list[SetOp]:
    """The same changes in as few operations as possible: every deletion (flushes first),
    then every addition, one operation per set. For a batch of many TAPs' deltas (a full
    load: tens of thousands of elements in a few dozen messages instead of one message,
    and one ACK, per element group). Valid when no element is both deleted and added in
    ``ops`` other than in that order (true of per-TAP and per-group deltas: their keys
    differ)."""
    flushes: dict[tuple[int, str, str], SetOp] = {}
    groups: dict[tuple[str, int, str, str], list[Element]] = {}
    for op in ops:
        if op.flush:
            flushes.setdefault((op.family, op.table, op.set), op)
        else:
            groups.setdefault((op.op, op.family, op.table, op.set), []).extend(op.elements)
    out = list(flushes.values())
    for want in (DELETE, ADD):
        out += [SetOp(kind, family, table, name, tuple(elems))
                for (kind, family, table, name), elems in groups.items()
                if kind == want and elems]
    return out


def _attr(kind: int, data: bytes) -> bytes:
    n = 4 + len(data)
    return _NLA.pack(n, kind) + data + b"\0" * (-n % 4)


def _nested(kind: int, *parts: bytes) -> bytes:
    return _attr(kind | NLA_F_NESTED, b"".join(parts))


def _string(kind: int, text: str) -> bytes:
    return _attr(kind, text.encode() + b"\0")


def pack_element(e: Element) -> bytes:
    """One NFTA_LIST_ELEM."""
    parts = [_nested(NFTA_SET_ELEM_KEY, _attr(NFTA_DATA_VALUE, e.key))]
    if e.key_end is not None:
        parts.append(_nested(NFTA_SET_ELEM_KEY_END, _attr(NFTA_DATA_VALUE, e.key_end)))
    if e.jump is not None:
        verdict = _nested(
            NFTA_DATA_VERDICT,
            _attr(NFTA_VERDICT_CODE, _BE32.pack(NFT_JUMP)),
            _string(NFTA_VERDICT_CHAIN, e.jump),
        )
        parts.append(_nested(NFTA_SET_ELEM_DATA, verdict))
    return _nested(NFTA_LIST_ELEM, *parts)


def _message(msg_type: int, flags: int, family: int, payload: bytes) -> bytes:
    body = _NFGEN.pack(family, 0, 0) + payload
    return (
        wire.NLMSGHDR.pack(16 + len(body), (NFNL_SUBSYS_NFTABLES << 8) | msg_type, flags, 0, 0)
        + body
    )


def messages(op: SetOp) -> list[bytes]:
    """The NEWSETELEM/DELSETELEM messages of one operation (several when the elements
    do not fit one attribute), with seq 0 (:func:`batch` numbers them)."""
    if op.op not in (ADD, DELETE):
        raise ValueError(f"unknown set operation {op.op!r}")
    kind = NFT_MSG_NEWSETELEM if op.op == ADD else NFT_MSG_DELSETELEM
    flags = wire.NLM_F_REQUEST
    if op.op == ADD:
        flags |= wire.NLM_F_CREATE
    head = _string(NFTA_SET_ELEM_LIST_TABLE, op.table) + _string(NFTA_SET_ELEM_LIST_SET, op.set)
    if op.flush:
        if op.op != DELETE or op.elements:
            raise ValueError("a flush is a delete without elements")
        return [_message(kind, flags, op.family, head)]
    out: list[bytes] = []
    chunk: list[bytes] = []
    size = 0
    for e in op.elements:
        packed = pack_element(e)
        if chunk and size + len(packed) > MAX_ELEMENTS_BYTES:
            out.append(_message(kind, flags, op.family,
                                head + _nested(NFTA_SET_ELEM_LIST_ELEMENTS, *chunk)))
            chunk, size = [], 0
        chunk.append(packed)
        size += len(packed)
    if chunk:
        out.append(_message(kind, flags, op.family,
                            head + _nested(NFTA_SET_ELEM_LIST_ELEMENTS, *chunk)))
    return out


def _batch_marker(msg_type: int, seq: int) -> bytes:
    return wire.NLMSGHDR.pack(20, msg_type, wire.NLM_F_REQUEST, seq, 0) + _NFGEN.pack(
        0, 0, NFNL_SUBSYS_NFTABLES
    )


@dataclass(frozen=True, slots=True)
class Batch:
    """A packed batch: ``data`` for one ``sendmsg``; ``begin_seq`` is the sequence number
    of BATCH_BEGIN, the messages have ``begin_seq + 1 .. begin_seq + count``."""

    data: bytes
    begin_seq: int
    count: int


def batch(ops: Iterable[SetOp], seq: int) -> Batch:
    """Every operation's messages, in order, between BATCH_BEGIN and BATCH_END, numbered
    from ``seq`` (BATCH_BEGIN) on."""
    msgs = [m for op in ops for m in messages(op)]
    return batch_messages(msgs, seq)


def batch_messages(msgs: Sequence[bytes], seq: int) -> Batch:
    """Number ``msgs`` from ``seq + 1``, set NLM_F_ACK on the last one only, frame them."""
    parts = [_batch_marker(NFNL_MSG_BATCH_BEGIN, seq)]
    for i, m in enumerate(msgs, 1):
        numbered = bytearray(m)
        struct.pack_into("=I", numbered, 8, seq + i)
        if i == len(msgs):
            flags = struct.unpack_from("=H", numbered, 6)[0]
            struct.pack_into("=H", numbered, 6, flags | wire.NLM_F_ACK)
        parts.append(bytes(numbered) + b"\0" * (-len(m) % 4))
    parts.append(_batch_marker(NFNL_MSG_BATCH_END, seq + len(msgs) + 1))
    return Batch(b"".join(parts), seq, len(msgs))


# ----------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Reply:
    """An NLMSG_ERROR answer: the request's sequence number, errno (0 = ACK) and the
    kernel's extended-ACK message, if any."""

    seq: int
    errno: int
    message: str | None = None


def parse_replies(buf: bytes | bytearray | memoryview, n: int | None = None) -> list[Reply]:
    """The NLMSG_ERROR messages in a datagram (anything else is ignored)."""
    out: list[Reply] = []
    for mtype, mflags, seq, po, pe in wire.iter_headers(buf, 0, n):
        if mtype == wire.NLMSG_ERROR:
            err, text = wire.parse_error(buf, po, pe, mflags)
            out.append(Reply(seq, err, text))
    return out
