"""Fast construction of ipaddress networks from (int, prefix length).

Used where networks are made per route (netlink dumps, received UPDATEs): see the block
comment below. ``ipv4_network(value, plen)`` / ``ipv6_network(value, plen)`` mask host
bits, like ``IPv4Network((value, plen), strict=False)``.
"""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import TypeAlias

from l3hostd.model import IPNetwork

#
# ``IPv4Network((int, plen))`` costs ~2.5 us (argument parsing, mask lookup, host-bit check)
# and dominated route parsing (100k routes: 0.45 s, of which 0.3 s was this). The kernel
# hands us a masked address and a valid length, so we fill the instance the way
# ``_BaseNetwork.__init__`` does (``network_address``, ``netmask``, ``_prefixlen`` and the
# ``hosts`` override for /31-/32, /127-/128) in ~0.5 us. That relies on CPython internals,
# so :func:`_fast_networks_ok` compares the result with the real constructor at import
# time and the slow, public path is used if anything differs.


_NetFactory: TypeAlias = Callable[[int, int], IPNetwork]


def _net_slow4(value: int, plen: int) -> IPNetwork:
    return IPv4Network((value, plen), strict=False)


def _net_slow6(value: int, plen: int) -> IPNetwork:
    return IPv6Network((value, plen), strict=False)


def _make_fast(
    cls: type[IPv4Network] | type[IPv6Network],
    addr_cls: type[IPv4Address] | type[IPv6Address],
    bits: int,
) -> _NetFactory:
    masks = [cls._make_netmask(plen) for plen in range(bits + 1)]  # type: ignore[union-attr]
    all_ones = (1 << bits) - 1
    new = object.__new__

    def make(value: int, plen: int) -> IPNetwork:
        net = new(cls)
        d = net.__dict__
        addr = addr_cls(value & (all_ones ^ (all_ones >> plen)))
        d["network_address"] = addr
        d["netmask"], d["_prefixlen"] = masks[plen]
        if plen >= bits - 1:
            # what __init__ sets: /32 and /128 list their one address, /31 and /127 both
            d["hosts"] = [addr].copy if plen == bits else net.__iter__
        return net

    return make


def _fast_networks_ok(fast4: _NetFactory, fast6: _NetFactory) -> bool:
    """True if the fast factories build networks indistinguishable from the real ones."""
    samples: list[tuple[_NetFactory, _NetFactory, int, int]] = [
        (fast4, _net_slow4, 0, 0),
        (fast4, _net_slow4, 0x0A000000, 8),
        (fast4, _net_slow4, 0xC0000200, 30),
        (fast4, _net_slow4, 0x0A000004, 31),
        (fast4, _net_slow4, 0x0A000005, 32),
        (fast6, _net_slow6, 0, 0),
        (fast6, _net_slow6, 0x20010DB8 << 96, 64),
        (fast6, _net_slow6, 0x20010DB8 << 96 | 4, 126),
        (fast6, _net_slow6, 0x20010DB8 << 96 | 4, 127),
        (fast6, _net_slow6, 0x20010DB8 << 96 | 5, 128),
    ]
    try:
        for fast, slow, value, plen in samples:
            a, b = fast(value, plen), slow(value, plen)
            if (
                type(a) is not type(b)
                or a != b
                or hash(a) != hash(b)
                or repr(a) != repr(b)
                or set(vars(a)) != set(vars(b))
                or a.netmask != b.netmask
                or a.prefixlen != b.prefixlen
                or a.broadcast_address != b.broadcast_address
                or (a.max_prefixlen - plen <= 2 and list(a.hosts()) != list(b.hosts()))
            ):
                return False
    except Exception:
        return False
    return True


_net4_fast = _make_fast(IPv4Network, IPv4Address, 32)
_net6_fast = _make_fast(IPv6Network, IPv6Address, 128)
ipv4_network: _NetFactory
ipv6_network: _NetFactory
if _fast_networks_ok(_net4_fast, _net6_fast):
    ipv4_network, ipv6_network = _net4_fast, _net6_fast
else:  # pragma: no cover - a future CPython changed ipaddress internals
    ipv4_network, ipv6_network = _net_slow4, _net_slow6


