"""l3hostd: the hypervisor daemon of a pure Layer 3 cloud.

For every VM interface (TAP) it installs host routes and proxy-ARP, enforces security
groups in nftables and announces the host routes over iBGP to route reflectors; it
installs what the reflectors send back. See DESIGN.md for the architecture.
"""

__version__ = "0.1.0"
