"""Next-hop resolution for learned routes (BIRD's ``gateway recursive``).

A BGP next hop is the announcing hypervisor's address. When it is on a directly connected
network it is used as the gateway as is; when it is not (hypervisors in different racks,
reached through the fabric) the kernel would refuse it ("Nexthop has invalid gateway":
Linux does not resolve gateways recursively), so we ask the kernel's FIB which way it
takes to that address (``ip route get``) and install the learned route via *that*
gateway. Results are cached per next hop and re-resolved when links change and on every
periodic resync; the learned-route reconciler re-plans the prefixes whose resolution
changed.

A lookup is one netlink request/response on a private blocking socket (~20 us, with a
timeout): there are as many distinct next hops as hypervisors, not as routes.
"""

from __future__ import annotations

import logging
import socket

from l3hostd.model import IPAddress
from l3hostd.netlink import wire

log = logging.getLogger("l3hostd.netlink.resolve")

NLMSG_ERROR = 2


def resolve(next_hop: IPAddress, timeout: float = 1.0) -> IPAddress | None:
    """The gateway to install for ``next_hop``: itself when it is on-link, the gateway of
    the route the kernel uses to reach it otherwise; None when it is unreachable."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         socket.NETLINK_ROUTE)
    try:
        sock.settimeout(timeout)
        sock.bind((0, 0))
        sock.send(wire.route_get_request(next_hop, seq=1))
        data = sock.recv(65536)
    except OSError as exc:
        log.warning("cannot resolve next hop %s: %s", next_hop, exc)
        return None
    finally:
        sock.close()
    for mtype, flags, _seq, start, end in wire.iter_headers(data):
        if mtype == NLMSG_ERROR:
            err, _ = wire.parse_error(data, start, end, flags)
            if err:
                log.info("next hop %s is unreachable (errno %d)", next_hop, err)
                return None
        elif mtype == wire.RTM_NEWROUTE:
            rec = wire.parse_route(data, start, end)
            if rec.type != wire.RTN_UNICAST:
                return None  # local (our own address), blackhole, unreachable...
            return rec.gateway if rec.gateway is not None else next_hop
    return None
