"""Per-TAP sysctls, written through /proc/sys (there is no netlink for the IPv6 ones).

What a TAP needs so that a VM behind it reaches its gateway with only /32 routes
(DESIGN.md, "Proxy-ARP that worked"):

* ``net.ipv4.conf.<tap>.proxy_arp = 1``: the host answers the VM's ARP for any address it
  routes through another device (the VM's gateway, the other VMs of its subnet);
* ``net.ipv4.neigh.<tap>.proxy_delay = 0``: without it the first answer waits up to
  ``proxy_delay`` (measured 585 ms);
* ``net.ipv4.conf.<tap>.forwarding = 1``, ``net.ipv6.conf.<tap>.forwarding = 1``;
* ``net.ipv6.conf.<tap>.accept_ra = 0``: the host never takes router advertisements from
  a VM.

Only managed TAPs are touched, values already right are not rewritten, and nothing is
reverted when an endpoint goes away (the TAP normally goes with it).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

PROC_SYS = Path("/proc/sys/net")

IPV4_SETTINGS: tuple[tuple[str, str], ...] = (
    ("ipv4/conf/{}/proxy_arp", "1"),
    ("ipv4/neigh/{}/proxy_delay", "0"),
    ("ipv4/conf/{}/forwarding", "1"),
)
IPV6_SETTINGS: tuple[tuple[str, str], ...] = (
    ("ipv6/conf/{}/forwarding", "1"),
    ("ipv6/conf/{}/accept_ra", "0"),
)


#: only with a loopback metadata address: the DNAT of 169.254.169.254 to 127.0.0.1 needs it
LOCALNET_SETTINGS: tuple[tuple[str, str], ...] = (("ipv4/conf/{}/route_localnet", "1"),)


def _settings(ipv6: bool, localnet: bool = False) -> tuple[tuple[str, str], ...]:
    out = IPV4_SETTINGS + IPV6_SETTINGS if ipv6 else IPV4_SETTINGS
    return out + LOCALNET_SETTINGS if localnet else out


def _path(template: str, ifname: str, root: Path) -> Path:
    if "/" in ifname or ifname in ("", ".", ".."):
        raise ValueError(f"bad interface name {ifname!r}")
    return root / template.format(ifname)


def read(template: str, ifname: str, root: Path = PROC_SYS) -> str | None:
    # os.open/os.read: a tenth of the cost of Path.read_text on /proc (this runs per TAP on
    # the path from a TAP event to its proxy-ARP being ready).
    try:
        fd = os.open(_path(template, ifname, root), os.O_RDONLY)
    except (OSError, ValueError):
        return None
    try:
        return os.read(fd, 64).decode().strip()
    except OSError:
        return None
    finally:
        os.close(fd)


def tap_is_configured(
    ifname: str, ipv6: bool, root: Path = PROC_SYS, localnet: bool = False
) -> bool:
    return all(read(t, ifname, root) == v for t, v in _settings(ipv6, localnet))


def configure_tap(ifname: str, ipv6: bool, root: Path = PROC_SYS, localnet: bool = False) -> int:
    """Write the settings that differ; return 0 or the errno of the first failure (ENODEV
    when the device is gone)."""
    for template, value in _settings(ipv6, localnet):
        if read(template, ifname, root) == value:
            continue
        try:
            fd = os.open(_path(template, ifname, root), os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except FileNotFoundError:
            return errno.ENODEV  # no /proc/sys/net/*/conf/<tap>: the device is gone
        except OSError as exc:
            return exc.errno or errno.EIO
        except ValueError:
            return errno.EINVAL
    return 0


def global_forwarding_warnings(root: Path = PROC_SYS) -> list[str]:
    """Host-wide forwarding belongs to the hypervisor's provisioning; say when it is off."""
    out = []
    for template, name in (
        ("ipv4/conf/{}/forwarding", "net.ipv4.conf.all.forwarding"),
        ("ipv6/conf/{}/forwarding", "net.ipv6.conf.all.forwarding"),
    ):
        if read(template, "all", root) == "0":
            out.append(f"{name} is 0: VMs will not reach anything beyond this host")
    return out
