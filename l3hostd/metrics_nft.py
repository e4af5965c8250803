"""How big our nftables tables are, read from the kernel over nf_tables netlink.

How it works
    :func:`table_size` opens a ``NETLINK_NETFILTER`` socket in the current network
    namespace and runs three kinds of dumps, each filtered by the kernel to the tables
    named ``l3hostd`` (every family: ``inet``, ``arp``, ``netdev``...):

    * ``NFT_MSG_GETRULE``: one message per rule -- only the message headers are walked;
    * ``NFT_MSG_GETSET``: the named sets and maps (anonymous sets belong to their rule);
    * ``NFT_MSG_GETSETELEM`` per set: the elements, counted as ``nft list`` shows them (the
      closing element that the kernel stores for each range of a plain interval set is
      not counted).

    Nothing is decoded beyond the few attributes needed to count, so thousands of rules
    cost a few milliseconds; the metrics read it once per scrape and never between.

Why it is built this way
    The count is the kernel's, whatever the firewall reconciler believes and however it
    writes (``nft -f`` scripts, netlink element batches), and it costs nothing between
    scrapes. ``nft -j list table`` would give the same numbers through a subprocess and a
    JSON document of megabytes parsed in the event loop.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["NftTableSize", "table_size"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_GETRULE = 7
NFT_MSG_GETSET = 10
NFT_MSG_GETSETELEM = 13
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
#: NFPROTO_INET, _IPV4, _ARP, _NETDEV, _BRIDGE, _IPV6: a dump filtered by table name
#: stops at the first table of that name, so each family is asked on its own.
FAMILIES = (1, 2, 3, 5, 7, 10)
NFTA_RULE_TABLE = 1
NFTA_SET_TABLE = 1
NFTA_SET_NAME = 2
NFTA_SET_FLAGS = 3
NFT_SET_ANONYMOUS = 0x1
NFTA_SET_ELEM_LIST_TABLE = 1
NFTA_SET_ELEM_LIST_SET = 2
NFTA_SET_ELEM_LIST_ELEMENTS = 3
NFTA_SET_ELEM_FLAGS = 3
NFT_SET_ELEM_INTERVAL_END = 0x1
NLA_TYPE_MASK = 0x3FFF

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_HEADER = _NLMSGHDR.size + 4  # + struct nfgenmsg


@dataclass(frozen=True, slots=True)
class NftTableSize:
    rules: int
    sets: int
    elements: int


def _attr(kind: int, data: bytes) -> bytes:
    raw = _NLATTR.pack(4 + len(data), kind) + data
    return raw + b"\0" * (-len(raw) % 4)


def _request(msg_type: int, family: int, seq: int, attrs: bytes) -> bytes:
    nfgenmsg = struct.pack("=BBH", family, 0, 0)
    length = _NLMSGHDR.size + len(nfgenmsg) + len(attrs)
    kind = (NFNL_SUBSYS_NFTABLES << 8) | msg_type
    return _NLMSGHDR.pack(length, kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + nfgenmsg + attrs


def _attrs(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of the attributes in ``buf[start:end]``."""
    while start + 4 <= end:
        length, kind = _NLATTR.unpack_from(buf, start)
        if length < 4:
            return
        yield kind & NLA_TYPE_MASK, start + 4, start + length
        start += (length + 3) & ~3


def _dump(sock: socket.socket, request: bytes, seq: int) -> Iterator[tuple[int, bytes, int, int]]:
    """Send a dump request; yield (nfgen family, buffer, payload start, message end) per
    answer message. A missing table or set ends the dump quietly (nothing to count)."""
    sock.send(request)
    while True:
        buf = sock.recv(1 << 20)
        offset = 0
        while offset + _NLMSGHDR.size <= len(buf):
            length, kind, _flags, mseq, _pid = _NLMSGHDR.unpack_from(buf, offset)
            if length < _NLMSGHDR.size:
                return
            end = offset + length
            if mseq == seq:
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    err = -struct.unpack_from("=i", buf, offset + _NLMSGHDR.size)[0]
                    if err in (0, errno.ENOENT):
                        return
                    raise OSError(err, os.strerror(err))
                yield buf[offset + _NLMSGHDR.size], buf, offset + _HEADER, end
            offset = (end + 3) & ~3


def table_size(table: str = "l3hostd", timeout: float = 2.0) -> NftTableSize:
    """Rules, named sets/maps and their elements in every table called ``table``.
    Raises OSError if the kernel cannot be asked (no nf_tables, no permission)."""
    name = table.encode() + b"\0"
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as sock:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        rules = 0
        sets: list[tuple[int, bytes]] = []
        seq = 0
        for family in FAMILIES:
            seq += 1
            request = _request(NFT_MSG_GETRULE, family, seq, _attr(NFTA_RULE_TABLE, name))
            rules += sum(1 for _ in _dump(sock, request, seq))
            seq += 1
            request = _request(NFT_MSG_GETSET, family, seq, _attr(NFTA_SET_TABLE, name))
            for _family, buf, start, end in _dump(sock, request, seq):
                set_name = b""
                flags = 0
                for kind, a, b in _attrs(buf, start, end):
                    if kind == NFTA_SET_NAME:
                        set_name = buf[a:b].rstrip(b"\0")
                    elif kind == NFTA_SET_FLAGS:
                        flags = struct.unpack_from(">I", buf, a)[0]
                if set_name and not flags & NFT_SET_ANONYMOUS:
                    sets.append((family, set_name))
        elements = 0
        for family, set_name in sets:
            seq += 1
            request = _request(NFT_MSG_GETSETELEM, family, seq,
                               _attr(NFTA_SET_ELEM_LIST_TABLE, name)
                               + _attr(NFTA_SET_ELEM_LIST_SET, set_name + b"\0"))
            for _family, buf, start, end in _dump(sock, request, seq):
                for kind, a, b in _attrs(buf, start, end):
                    if kind != NFTA_SET_ELEM_LIST_ELEMENTS:
                        continue
                    for _elem, ea, eb in _attrs(buf, a, b):
                        elements += 1
                        for ekind, fa, _fb in _attrs(buf, ea, eb):
                            if ekind == NFTA_SET_ELEM_FLAGS and struct.unpack_from(
                                ">I", buf, fa
                            )[0] & NFT_SET_ELEM_INTERVAL_END:
                                elements -= 1
    return NftTableSize(rules, len(sets), elements)
