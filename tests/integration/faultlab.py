"""Helpers of the fault, abuse and soak tests: route monitors, kernel and nft state read
back independently of the daemon, many endpoints at once.

What the daemon should have made is compared with what the kernel, nftables and BIRD say,
read with ``ip``, ``nft -j`` and ``birdc`` -- never with what the daemon reports about
itself: :mod:`bench.kstate` (shared with the soak, ``bench/soak.py``) is re-exported
here: :class:`KernelState`, :func:`kernel_state`, :func:`state_diff`.

Many endpoints (:func:`make_ports`, :func:`add_taps`): macvlans named like TAPs on one veth
(``bench.common.fake_taps``: one netdev each, ~0.35 ms through ``ip -batch``, IPv4 only,
so l3hostd runs with ``dataplane.ipv6_gateway: false``), and endpoint files written by hand.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from typing import Any

from bench.common import IPV4_ONLY_TAPS, Port, endpoint_files, fake_taps, ip_batch, ports
from bench.kstate import (
    LEARNED_PROTO,
    KernelState,
    expected_state,
    kernel_state,
    rr_prefixes,
    state_diff,
)
from l3hostd.lab import Hypervisor, Netns, route_monitor

__all__ = [
    "IPV4_ONLY_TAPS",
    "KernelState",
    "Port",
    "add_taps",
    "deleted_learned",
    "endpoint_files",
    "expected_state",
    "ip_batch",
    "ip_batch_quiet",
    "kernel_state",
    "learned_lines",
    "make_ports",
    "paths_by_peer",
    "peer_rows",
    "remove_endpoint_files",
    "route_monitor",
    "rr_prefixes",
    "state_diff",
]


def learned_lines(lines: Iterable[str]) -> list[str]:
    """Monitor lines about routes l3hostd learned over BGP (proto 45)."""
    return [line for line in lines if "l3hostd-bgp" in line or f"proto {LEARNED_PROTO}" in line]


def deleted_learned(lines: Iterable[str]) -> list[str]:
    return [line for line in learned_lines(lines) if line.startswith("Deleted")]


def peer_rows(hv: Hypervisor) -> dict[str, dict[str, Any]]:
    """``l3hostctl show peers``, by peer name."""
    rows = hv.ctl("show", "peers")
    assert isinstance(rows, list)
    return {str(row["name"]): row for row in rows}


def paths_by_peer(hv: Hypervisor, prefix: str) -> dict[str, list[str]]:
    """``l3hostctl show routes --prefix``: the peers that sent a path, with its next hops."""
    from l3hostd.ctl import request

    reply = request(str(hv.socket), {"command": "show", "what": "routes", "prefix": prefix})
    out: dict[str, list[str]] = {}
    for path in reply["data"]["paths"]:
        out.setdefault(path["peer"], []).append(path["next_hop"])
    return out


# ---- many endpoints ----------------------------------------------------------------------------


def make_ports(count: int, tag: str, base: str = "10.40.0.0") -> list[Port]:
    return ports(count, tag, base)


def add_taps(ns: Netns, items: list[Port]) -> None:
    """Macvlans named like the ports' TAPs, up, with carrier (IPv4 only)."""
    fake_taps(ns, items)


def remove_endpoint_files(hv: Hypervisor, items: Iterable[Port]) -> None:
    for p in items:
        (hv.endpoints / f"{p.tap}.yaml").unlink(missing_ok=True)


def ip_batch_quiet(ns: Netns, lines: list[str]) -> None:
    """``ip -force -batch``: keep going past lines that fail (e.g. a TAP already gone)."""
    subprocess.run(["ip", "-n", ns.name, "-force", "-batch", "-"],
                   input="\n".join(lines) + "\n", text=True, capture_output=True,
                   timeout=300, check=False)
