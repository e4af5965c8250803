"""Small traffic helpers for the firewall acceptance tests (``test_firewall.py``), and the
program ``test_firewall_nft.py`` runs to drive the firewall reconciler inside a namespace
(:data:`RECONCILER_PROGRAM`).

Servers are tiny ``python -c`` programs started in a namespace through :meth:`Lab.start`
(so the lab stops them and their output lands in the lab's log directory); clients are
one-shot ``ip netns exec`` runs with a bounded timeout. Every probe returns what happened
("ok", "timeout", "refused", ...) rather than a bool so that assertion messages say it.

Topology (:func:`topology`): a ``client`` namespace standing for the outside world on the
hypervisor's uplink (100.64.1.254, fd00:64:1::254, routes to the VM subnets via the
hypervisor), one hypervisor ``hv`` (100.64.1.1, fd00:64:1::1) and VMs behind TAPs in
10.10.0.0/24 and 2001:db8:10::/64. Addresses exist only inside the lab's namespaces.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import yaml

from l3hostd.lab import Hypervisor, Lab, LabError, Netns, Vm, wait_until

PY = sys.executable
CLIENT4, CLIENT6 = "100.64.1.254", "fd00:64:1::254"
VM_NET4, VM_NET6 = "10.10.0.0/24", "2001:db8:10::/64"

# ---- programs run inside namespaces ----------------------------------------------------------

_TCP_SERVER = r"""
import socket, sys, threading
socks = []
for spec in sys.argv[1:]:
    addr, port = spec.rsplit(",", 1)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, int(port)))
    s.listen(128)
    socks.append(s)
def serve(s):
    port = s.getsockname()[1]
    while True:
        c, peer = s.accept()
        print("accept", port, peer[0], flush=True)
        c.close()
for s in socks:
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

_UDP_SERVER = r"""
import select, socket, sys
socks = []
for spec in sys.argv[1:]:
    addr, port = spec.rsplit(",", 1)
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((addr, int(port)))
    socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(65535)
        print("recv", s.getsockname()[1], peer[0], peer[1], repr(data), flush=True)
"""

_TCP_CONNECT = r"""
import socket, sys
addr, port, timeout, src = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM)
s.settimeout(timeout)
if src:
    s.bind((src, 0))
try:
    s.connect((addr, port))
except TimeoutError:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as exc:
    print(f"error {exc.errno} {exc.strerror}")
else:
    print("ok")
"""

_UDP_SEND = r"""
import socket, sys
dst, port, payload, src, sport, dev, count = sys.argv[1:8]
fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
if dev:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
if src or sport != "0":
    s.bind((src or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), int(sport)))
for _ in range(int(count)):
    s.sendto(payload.encode(), (dst, int(port)))
print("sent", s.getsockname()[0])
"""

# A DHCPDISCOVER-shaped frame as a real DHCP client sends it: from 0.0.0.0:68 to
# 255.255.255.255:67, Ethernet broadcast, built by hand on an AF_PACKET socket (a UDP
# socket cannot send from 0.0.0.0 on a configured interface).
_RAW_DHCP = r"""
import socket, struct, sys
dev, mac, marker = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), sys.argv[3]
def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF
# BOOTREQUEST, htype 1, hlen 6, xid, flags broadcast, chaddr; the marker in sname
bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, 0x12345678, 0, 0x8000,
                    bytes(4), bytes(4), bytes(4), bytes(4), mac + bytes(10),
                    marker.encode()[:64], bytes(128))
bootp += b"\x63\x82\x53\x63" + b"\x35\x01\x01" + b"\xff"
udp = struct.pack("!HHHH", 68, 67, 8 + len(bootp), 0) + bootp
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0x10, 20 + len(udp), 0, 0, 64, 17, 0,
                 bytes(4), b"\xff" * 4)
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = b"\xff" * 6 + mac + b"\x08\x00" + ip + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((dev, 0))
for _ in range(3):
    s.send(frame)
print("sent")
"""


# The firewall reconciler itself (libnftables + netlink, in process), run by
# test_firewall_nft.py in a child inside a namespace; prints what it saw as JSON. argv[1]:
# "empty", or "legacy" (start from a table in the old per-endpoint layout).
RECONCILER_PROGRAM = textwrap.dedent(r'''
    import asyncio, json, subprocess, sys, time
    from ipaddress import ip_address
    from l3hostd.firewall.compile import FirewallSettings
    from l3hostd.firewall.reconciler import FirewallInputs, FirewallReconciler
    from l3hostd.model import *
    from l3hostd.reconcile import Phase
    R = SecurityGroupRule
    groups = {"web": SecurityGroup("web", (R(Direction.INGRESS, EtherType.IPV4, "tcp", 80, 80,
                                              remote_group="app"),)),
              "app": SecurityGroup("app", (R(Direction.EGRESS, EtherType.IPV4),))}
    def ep(n, g):
        return Endpoint(f"e{n}", f"tap{n}", f"fa:16:3e:00:00:{n:02x}",
                        (ip_address(f"10.0.0.{n}"),), (), g)
    def handles():
        out = subprocess.run(["nft", "-a", "list", "table", "inet", "l3hostd"],
                             capture_output=True, text=True).stdout
        return sorted(l.strip() for l in out.splitlines() if "l3hostd:" in l)
    def chains():
        out = subprocess.run(["nft", "list", "table", "inet", "l3hostd"],
                             capture_output=True, text=True).stdout
        return sorted(l.split()[1] for l in out.splitlines() if l.strip().startswith("chain "))
    async def run(fw):
        if fw.resync_pending:
            await fw.resync()
        await fw.apply(Phase.REMOVE, time.monotonic())
        await fw.apply(Phase.ADD, time.monotonic())
    def make(eps):
        fw = FirewallReconciler(FirewallInputs(FirewallSettings()))
        fw.refresh(fw.inputs.set_groups(groups))
        for e in eps:
            fw.refresh(fw.inputs.set_endpoint(e, e.id, True))
        return fw
    async def main():
        out = {}
        if sys.argv[1] == "legacy":
            subprocess.run(["nft", "-f", "-"], check=True, text=True, input="""
                table inet l3hostd {
                    map src_vm { type ifname : verdict; }
                    chain from-e1 { drop; }
                    map from_vm { type ifname : verdict; elements = { "tap1" : jump from-e1 }; }
                }
            """)
        eps = [ep(1, ("web",)), ep(2, ("app",)), ep(3, ("web", "app"))]
        fw = make(eps)
        await run(fw)
        out["ready"] = [fw.ready(e.id) for e in eps]
        out["replaced"] = fw.full_replacements
        out["error"] = fw.nft_error
        out["handles"] = handles()
        fw.close()
        again = make(eps)  # a restart: adopts, rewrites nothing but the skeleton
        await run(again)
        out["adopted_ready"] = [again.ready(e.id) for e in eps]
        out["handles_after_restart"] = handles()
        out["batches_after_restart"] = again.element_batches
        # e3 leaves, e1 moves to app: web's and the web+app profile's chains go
        again.refresh(again.inputs.set_endpoint(None, "e3", False))
        again.refresh(again.inputs.set_endpoint(ep(1, ("app",)), "e1", True))
        await run(again)
        out["chains_after_gc"] = chains()
        out["ready_after_move"] = again.ready("e1")
        again.queue_resync()
        await run(again)
        out["dirty_after_resync"] = again.dirty_count
        print(json.dumps(out))
    asyncio.run(main())
''')



# ---- servers ---------------------------------------------------------------------------------


class Listener:
    """TCP or UDP servers on ``addr,port`` specs in one namespace; what they saw is in the
    lab's log directory."""

    def __init__(self, lab: Lab, ns: Netns, kind: str, specs: Sequence[str]) -> None:
        assert kind in ("tcp", "udp")
        self.lab, self.ns, self.kind, self.specs = lab, ns, kind, list(specs)
        self.log_name = f"{ns.name.rsplit('-', 1)[-1]}-{kind}-{secrets.token_hex(2)}.srv.log"
        program = _TCP_SERVER if kind == "tcp" else _UDP_SERVER
        self.proc = lab.start(ns, [PY, "-u", "-c", program, *self.specs], self.log_name)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise LabError(f"{kind} server {self.specs} in {ns.name} died: {self.text()}")
            return "ready" in self.text()

        wait_until(ready, 5, interval=0.01, what=f"{kind} server {self.specs} in {ns.name}")

    def text(self) -> str:
        path = self.lab.workdir / self.log_name
        return path.read_text(errors="replace") if path.exists() else ""

    def received(self, marker: str) -> list[str]:
        """The lines (``recv <port> <src> <sport> <payload>``) whose payload has ``marker``."""
        return [line for line in self.text().splitlines()
                if line.startswith("recv ") and marker in line]


def tcp_listen(lab: Lab, ns: Netns, specs: Sequence[str]) -> Listener:
    return Listener(lab, ns, "tcp", specs)


def udp_listen(lab: Lab, ns: Netns, specs: Sequence[str]) -> Listener:
    return Listener(lab, ns, "udp", specs)


# ---- probes ----------------------------------------------------------------------------------


def _run(ns: Netns, program: str, *args: str, timeout: float) -> str:
    try:
        proc = ns.run(PY, "-c", program, *args, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "probe hung"
    if proc.returncode != 0:
        return f"probe failed: {proc.stderr.strip()[-300:]}"
    return proc.stdout.strip()


def tcp_connect(ns: Netns, addr: str, port: int, timeout: float = 0.5,
                source: str = "") -> str:
    """One TCP connect from ``ns``: "ok", "timeout", "refused" or "error ..."."""
    return _run(ns, _TCP_CONNECT, addr, str(port), str(timeout), source, timeout=timeout + 10)


def connects_within(ns: Netns, addr: str, port: int, within: float = 3.0,
                    source: str = "") -> str:
    """Retry connects (each bounded) until one succeeds or ``within`` has passed; returns
    the last outcome ("ok" on success)."""
    last = ["never tried"]

    def attempt() -> bool:
        last[0] = tcp_connect(ns, addr, port, timeout=0.5, source=source)
        return last[0] == "ok"

    with contextlib.suppress(LabError):
        wait_until(attempt, within, interval=0.05)
    return last[0]


def blocked_within(ns: Netns, addr: str, port: int, within: float = 5.0) -> str:
    """Retry connects until two in a row fail (the rule has gone, and a lost packet is not
    taken for it); returns the last outcome."""
    last = ["never tried"]
    failures = [0]

    def attempt() -> bool:
        last[0] = tcp_connect(ns, addr, port, timeout=0.5)
        failures[0] = failures[0] + 1 if last[0] != "ok" else 0
        return failures[0] >= 2

    with contextlib.suppress(LabError):
        wait_until(attempt, within, interval=0.05)
    return last[0]


def udp_send(ns: Netns, dst: str, port: int, payload: str, source: str = "",
             sport: int = 0, device: str = "", count: int = 3) -> str:
    return _run(ns, _UDP_SEND, dst, str(port), payload, source, str(sport), device,
                str(count), timeout=10)


def raw_dhcp_discover(ns: Netns, device: str, mac: str, marker: str) -> str:
    return _run(ns, _RAW_DHCP, device, mac, marker, timeout=10)


def udp_arrives(listener: Listener, send: Callable[[], object], marker: str,
                within: float = 3.0) -> list[str]:
    """Send (again and again, bounded) until ``marker`` shows up at ``listener``; returns
    the lines seen (empty if it never arrived)."""
    def attempt() -> bool:
        send()
        return bool(listener.received(marker))

    with contextlib.suppress(LabError):
        wait_until(attempt, within, interval=0.2)
    return listener.received(marker)


def udp_absent(listener: Listener, send: Callable[[], object], marker: str,
               settle: float = 0.5) -> list[str]:
    """Send, wait ``settle`` seconds, and return what arrived (expected: nothing)."""
    send()
    time.sleep(settle)
    send()
    time.sleep(0.2)
    return listener.received(marker)


def no_ping(ns: Netns, addr: str) -> bool:
    """True when two echo requests 0.2 s apart get no reply within 0.5 s of the last."""
    proc = ns.run("ping", "-n", "-q", "-c", "2", "-i", "0.2", "-W", "0.5", addr,
                  check=False, timeout=10)
    return proc.returncode != 0


def pings(ns: Netns, addr: str, within: float = 3.0) -> bool:
    try:
        wait_until(lambda: ns.ping(addr, timeout=1), within, interval=0.05)
    except LabError:
        return False
    return True


# ---- l3hostd files ---------------------------------------------------------------------------


def rule(direction: str, protocol: str | None = None, port: int | tuple[int, int] | None = None,
         ethertype: str = "IPv4", prefix: str | None = None, group: str | None = None,
         ) -> dict[str, object]:
    """A Neutron-shaped security-group rule."""
    r: dict[str, object] = {"direction": direction, "ethertype": ethertype}
    if protocol is not None:
        r["protocol"] = protocol
    if port is not None:
        low, high = port if isinstance(port, tuple) else (port, port)
        r["port_range_min"], r["port_range_max"] = low, high
    if prefix is not None:
        r["remote_ip_prefix"] = prefix
    if group is not None:
        r["remote_group"] = group
    return r


def _atomic_write(path: Path, doc: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(doc))
    tmp.rename(path)
    return path


def write_group(hv: Hypervisor, name: str, rules: Iterable[dict[str, object]]) -> Path:
    return _atomic_write(hv.endpoints / "security-groups" / f"{name}.yaml",
                         {"name": name, "rules": list(rules)})


def write_members(hv: Hypervisor, group: str, ips: Iterable[str]) -> Path:
    return _atomic_write(hv.endpoints / "group-members" / f"{group}.yaml",
                         {"group": group, "ips": list(ips)})


def write_endpoint(hv: Hypervisor, vm: Vm, groups: Sequence[str],
                   pairs: Sequence[str] = ()) -> Path:
    doc = vm.endpoint()
    doc["security_groups"] = list(groups)
    if pairs:
        doc["allowed_address_pairs"] = list(pairs)
    return _atomic_write(hv.endpoints / f"{vm.tap}.yaml", doc)


# ---- topology --------------------------------------------------------------------------------


def topology(lab: Lab, vms: Sequence[tuple[str, int]]) -> tuple[Hypervisor, Netns, list[Vm]]:
    """Client on the uplink, one hypervisor (not started), VMs (no endpoint files yet)."""
    client = lab.netns("client")
    hv = Hypervisor(lab, "hv", 1)
    hv.attach_uplink(client)
    client.ip("route", "add", VM_NET4, "via", hv.uplink4)
    client.ip("-6", "route", "add", VM_NET6, "via", hv.uplink6)
    # Make sure reverse-path filtering is not what drops spoofed packets: the firewall must.
    hv.ns.sysctl("net.ipv4.conf.all.rp_filter", "0")
    hv.ns.sysctl("net.ipv4.conf.default.rp_filter", "0")
    (hv.endpoints / "security-groups").mkdir(exist_ok=True)
    (hv.endpoints / "group-members").mkdir(exist_ok=True)
    machines = [hv.add_vm(name, host) for name, host in vms]
    hv.write_config({"firewall": {"enabled": True}})
    return hv, client, machines


def nft_table(hv: Hypervisor) -> subprocess.CompletedProcess[str]:
    return hv.ns.run("nft", "list", "table", "inet", "l3hostd", check=False)


def start(hv: Hypervisor) -> None:
    hv.start()
    hv.wait_ready()
    wait_until(lambda: nft_table(hv).returncode == 0, 5, interval=0.05,
               what="table inet l3hostd to exist once l3hostd is in sync")


def wait_active(hv: Hypervisor, *vms: Vm, timeout: float = 10) -> None:
    """Until ``l3hostctl show endpoints`` says every VM is active with its routes installed
    (the firewall goes in before the routes, so its chains are loaded by then)."""
    rows: list[dict[str, object]] = []

    def active() -> bool:
        nonlocal rows
        data = hv.ctl("show", "endpoints")
        rows = data if isinstance(data, list) else []
        by_id = {row.get("id"): row for row in rows}
        for vm in vms:
            row = by_id.get(vm.port_id)
            if row is None or row.get("state") != "active":
                return False
            routes = row.get("routes_installed")
            installed = " ".join(map(str, routes)) if isinstance(routes, list) else ""
            if vm.ipv4 not in installed or vm.ipv6 not in installed:
                return False
        return True

    try:
        wait_until(active, timeout, interval=0.05)
    except LabError:
        raise LabError(f"endpoints not active after {timeout}s: {rows}") from None
