"""BIRD 2 in the namespace lab: route reflector, Calico-style hypervisor speaker, topology.

The BGP side of the lab and of the benchmarks, so that l3hostd and BIRD can run side by
side on the same topology:

    hv1 ──eth0── 100.64.1.0/24 ──┐
    hv2 ──eth0── 100.64.2.0/24 ──┤ rr   (BIRD route reflector, forwarding on)
    hvN ──eth0── 100.64.N.0/24 ──┘      (or all on one bridge: ``shared_fabric=True``)

With ``reflectors=2`` (and ``shared_fabric=True``) a second reflector ``rr2`` sits on the
same bridge, as production has two spines, and every hypervisor peers with both.

How it works
    - :class:`BirdRouter` writes ``bird.conf`` into ``lab.workdir/<name>/`` and runs
      ``bird -f -c CONF -s SOCK -P PIDFILE`` in a namespace through :meth:`Lab.start`, so
      the lab stops it by PID on teardown whatever happens. The control socket is a path in
      the filesystem, so ``birdc -s SOCK`` works from outside the namespace.
    - :func:`rr_config` renders a reflector: one ``protocol bgp`` per client (``rr client``,
      ADD-PATH tx, graceful restart), a kernel protocol that installs the learned routes
      into the RR's own FIB (the spines of a pure L3 fabric forward the traffic too, and the
      lab's VM-to-VM pings cross this namespace), and optionally ``protocol static`` with N
      host routes for the bulk benchmark.
    - :func:`calico_hv_config` renders BIRD as Calico runs it on a hypervisor: the kernel
      protocol learns the routes Felix puts on the TAPs (``learn``), BGP exports those whose
      interface matches ``tap*`` (never the default route) with next-hop self, and what the
      reflector sends is installed into the kernel as ``proto bird`` (12), ECMP merged.
    - :class:`BgpTopology` builds the namespaces (reusing :class:`~l3hostd.lab.Hypervisor`
      for the hypervisors and their uplinks) and runs on each hypervisor either BIRD
      (``speaker="bird"``) or l3hostd with a ``bgp:`` section (``speaker="l3hostd"``). In
      BIRD mode :meth:`BgpTopology.plug` does by hand what Felix does for a VM: the TAP
      sysctls, ``fe80::1`` on the TAP and ``ip route add <ip>/32 dev <tap> proto static``.

Why it is built this way
    Tests and benchmarks compare l3hostd with the daemon it replaces, so both run against
    the same reflector (real BIRD 2), the same addressing and the same kernel. Everything is
    created through :class:`~l3hostd.lab.Lab`, which removes namespaces and processes on
    exit, also on failure.

BIRD 2.0.12 pitfalls met here
    - ``rr`` and ``originate`` are keywords of the config grammar: ``protocol bgp rr`` is a
      syntax error, so the hypervisor's sessions are ``rr4``/``rr6`` and the reflector's
      static protocol is ``rr_static``.
    - iBGP sessions are multihop by default, and a multihop session cannot use ``gateway
      direct``: with ``gateway recursive`` and no route to the clients in its table, the
      reflector marked their routes unreachable (and installed them so). The reflector's
      sessions are ``direct`` (its clients are on its links).
    - Default timers are made for routers, not tests: ``connect delay time`` 5 s and
      ``connect retry time`` 120 s. Both are lowered here (1 s / 2 s).
    - ADD-PATH must be configured on both ends: ``add paths tx`` on the reflector,
      ``add paths rx`` on the client, otherwise the capability is not negotiated and the
      reflector sends only its best path.
    - Static routes for the reflector are ``blackhole``: a non-BGP route without a gateway
      is exported over iBGP with next-hop self, i.e. the reflector's own address on each
      client's session (``100.64.<i>.254``), directly connected and usable by every client.
      ``via <address>`` would send the same gateway to all clients, which is on-link for one
      of them only.
    - Graceful restart: a restarted BIRD must run with ``-R`` (Calico does), otherwise its
      OPEN says "forwarding state not preserved" and peers drop its routes at once (RFC
      4724); :meth:`BirdRouter.start` adds ``-R`` on every start but the first. In
      recovery BIRD holds its exports until every peer sent End-of-RIB (or ``graceful
      restart wait``, 240 s by default, 20 s here). After "Graceful restart done",
      2.0.12 needed two more turns of its main loop to export and then send: with no
      timer due, its ``poll()`` sleeps up to 3 s each time, so a restarted reflector sent
      its routes and End-of-RIB ~6 s later. A 1 s device scan on the reflector (a timer)
      brings that to <= 2 s.
    - Missed wake-up at the end of a feed: the main loop runs the global event list, then
      at most 10 "work" events (the table feed, 256 routes each), and sleeps in
      ``poll()`` for 0 ms only if an event is still pending; but it checked the global
      list *before* the work events ran (``sysdep/unix/io.c``, ``io_loop``). The last feed
      step queues the BGP transmit event on the global list, so the last <= 256 routes of
      a feed and its End-of-RIB wait for the next timer, socket or netlink message:
      0-1 s (the device scan, 1 s), at random, whatever the client is (seen with BIRD and
      l3hostd clients alike, with ``strace`` on the reflector: ``poll(..., 764)`` right
      after the last full UPDATE). :meth:`BirdRouter.wake` ends such a sleep; the bulk
      benchmark calls it at each of its polls, for either speaker.
    - The kernel protocol exports device routes of ``protocol direct`` too (duplicates of
      the connected routes, ``proto bird metric 32``) unless its filter rejects
      ``RTS_DEVICE``.
    - A route learned from the kernel has preference 10, a BGP route 100: when another
      hypervisor announces the same prefix (anycast), BIRD prefers the BGP path, stops
      announcing its own and installs the remote one beside Felix's (metric 32).
    - A multihop session resolves next hops recursively (``gateway recursive``) through the
      table; the hypervisor's default route reaches that table only because the kernel
      protocol has ``learn`` (routes added by ``ip`` are proto ``boot``, alien to BIRD).
      ``learn`` ignores proto ``kernel`` routes (connected ones) unless ``learn all``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import signal
import socket
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

from l3hostd.lab import Hypervisor, Lab, LabError, Netns, Vm, sh, wait_until

__all__ = [
    "BIRD_PROTO",
    "FELIX_PROTO",
    "L3HOSTD_BGP_PROTO",
    "BgpTopology",
    "BirdError",
    "BirdRouter",
    "BirdSpeaker",
    "L3hostdSpeaker",
    "Rss",
    "Speaker",
    "calico_hv_config",
    "felix_plug",
    "felix_unplug",
    "parse_routes",
    "rr_config",
]

#: ``rtm_protocol`` of the routes BIRD installs into the kernel (``proto bird``).
BIRD_PROTO = 12
#: ``rtm_protocol`` of the routes l3hostd learned over BGP (``proto l3hostd-bgp``).
L3HOSTD_BGP_PROTO = 45
#: How Felix's host routes to TAPs are added here (``proto static``, 4): alien to BIRD.
FELIX_PROTO = "static"

#: The reflector's AS and BGP identifier in the topology.
LAB_ASN = 65501
RR_ROUTER_ID = "100.64.0.254"
RR2_ROUTER_ID = "100.64.0.253"

SpeakerKind = Literal["bird", "l3hostd"]


class BirdError(LabError):
    pass


@dataclass(frozen=True)
class Rss:
    """Memory of a process from ``/proc/PID/status``: peak (VmHWM) and current (VmRSS)."""

    hwm_kib: int
    rss_kib: int


def process_rss(pid: int) -> Rss:
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            values[key] = int(rest.split()[0])
    return Rss(values.get("VmHWM", 0), values.get("VmRSS", 0))


# ------------------------------------------------------------------------ the BIRD process


class BirdRouter:
    """One BIRD 2 daemon in a namespace, with its files in ``lab.workdir/<name>/``."""

    def __init__(
        self, lab: Lab, ns: Netns, name: str, router_id: str, asn: int = LAB_ASN,
        config: str | None = None,
    ) -> None:
        self.lab, self.ns, self.name, self.router_id, self.asn = lab, ns, name, router_id, asn
        self.dir = lab.workdir / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "bird.conf"
        self.sock = self.dir / "bird.ctl"
        self.pidfile = self.dir / "bird.pid"
        self.log_name = f"bird-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        if config is not None:
            self.write_config(config)

    # -- config

    def write_config(self, text: str) -> None:
        """Write ``bird.conf`` (takes effect on the next start or :meth:`reconfigure`)."""
        self.conf.write_text(text)

    def check_config(self) -> None:
        """``bird -p``: parse the config only; raise with BIRD's message if it is wrong."""
        proc = sh("bird", "-p", "-c", str(self.conf), check=False)
        if proc.returncode != 0:
            raise BirdError(f"{self.conf}: {proc.stderr.strip()}")

    def reconfigure(self, text: str | None = None, timeout: float = 30) -> str:
        """Write ``text`` (if given) and tell the running BIRD to load it."""
        if text is not None:
            self.write_config(text)
        out = self.birdc("configure", timeout=timeout)
        if "Reconfigured" not in out and "Reconfiguration in progress" not in out:
            raise BirdError(f"{self.name}: configure failed: {out.strip()}")
        return out

    # -- process

    @property
    def pid(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            raise BirdError(f"BIRD {self.name} is not running")
        return self.proc.pid  # ``ip netns exec`` execs bird: the PID is bird's

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout: float = 30, recovery: bool | None = None) -> None:
        """Start BIRD (config already written) and wait until its control socket answers.

        ``recovery`` starts it with ``-R`` (graceful restart recovery, as Calico runs it):
        its OPEN carries the restart flag and "forwarding state preserved" for each
        family, so peers keep its routes as stale until its End-of-RIB, and its kernel
        protocol prunes old routes only after convergence. Without ``-R`` a restarted BIRD
        is a new speaker: RFC 4724 makes its peers drop its stale routes at once.
        ``None`` (default): ``-R`` on every start but the first. (Not on the first: in
        recovery BIRD holds its exports until every peer has sent End-of-RIB or
        ``graceful restart wait`` ends, and a peer may not be started yet.)
        """
        if recovery is None:
            recovery = self.starts > 0
        self.starts += 1
        if self.running():
            raise BirdError(f"BIRD {self.name} is already running")
        if not self.conf.exists():
            raise BirdError(f"{self.conf}: no config written")
        self.sock.unlink(missing_ok=True)
        self.proc = self.lab.start(
            self.ns,
            ["bird", "-f", *(["-R"] if recovery else []), "-c", str(self.conf),
             "-s", str(self.sock), "-P", str(self.pidfile)],
            self.log_name,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise BirdError(f"BIRD {self.name} exited: {self.log()[-2000:]}")
            if not self.sock.exists():
                return False
            return self._birdc("show status", timeout=5).returncode == 0

        wait_until(up, timeout, interval=0.01, what=f"BIRD {self.name} control socket")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
        """Signal BIRD (by PID, only the process started here) and wait for it."""
        if self.proc is not None:
            self.lab.stop(self.proc, sig, timeout)
            with contextlib.suppress(ValueError):
                self.lab.processes.remove(self.proc)
            self.proc = None

    def kill(self) -> None:
        """SIGKILL: BIRD gets no chance to close sessions (graceful restart tests)."""
        self.stop(signal.SIGKILL)

    def restart(self, sig: int = signal.SIGTERM, timeout: float = 30, recovery: bool = True,
                ) -> None:
        """Stop with ``sig`` (SIGTERM: BIRD closes its sessions with a Cease; SIGKILL: it
        does not; ``persist`` keeps its kernel routes either way), then start again with the
        current ``bird.conf``, by default in graceful restart recovery (``-R``)."""
        self.stop(sig)
        self.start(timeout, recovery=recovery)

    def wake(self) -> None:
        """Wake BIRD's main loop: connect to its control socket and hang up at once.

        BIRD 2.0.12 can sleep in ``poll()`` with an event pending (see "missed wake-up"
        in the module notes); a new connection on the control socket ends that sleep,
        and the loop runs its events before it looks at the CLI. Costs BIRD one
        ``accept()`` and a greeting written to a closed socket.
        """
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.setblocking(False)
        with contextlib.suppress(OSError):
            conn.connect(str(self.sock))
        conn.close()

    def rss_kib(self) -> Rss:
        """Peak (VmHWM) and current (VmRSS) resident memory of the bird process."""
        return process_rss(self.pid)

    def log(self) -> str:
        path = self.lab.workdir / self.log_name
        return path.read_text(errors="replace") if path.exists() else ""

    # -- control socket

    def _birdc(self, cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["birdc", "-s", str(self.sock), *cmd.split()],
            capture_output=True, text=True, timeout=timeout, check=False,
        )

    def birdc(self, *cmd: str, timeout: float = 30) -> str:
        """Run one ``birdc`` command; return its output without the greeting line."""
        proc = self._birdc(" ".join(cmd), timeout)
        lines = proc.stdout.splitlines()
        if lines and lines[0].startswith("BIRD ") and lines[0].endswith("ready."):
            lines = lines[1:]
        if proc.returncode != 0:  # birdc prints BIRD's error on stdout and exits 1
            error = " ".join(lines) or proc.stderr.strip()
            raise BirdError(f"birdc {' '.join(cmd)} ({self.name}): {error}")
        return "\n".join(lines) + "\n"

    def protocols(self) -> dict[str, dict[str, str]]:
        """``show protocols``: name -> {proto, table, state, since, info}.

        ``since`` is two words with the ``timeformat protocol`` of the generated configs
        (date and time); ``info`` is e.g. ``Established`` or ``Active  Socket: ...``."""
        out: dict[str, dict[str, str]] = {}
        for line in self.birdc("show", "protocols").splitlines()[1:]:
            parts = line.split(None, 6)
            if len(parts) < 6:
                continue
            name, proto, table, state, day, clock = parts[:6]
            info = parts[6].strip() if len(parts) > 6 else ""
            out[name] = {"proto": proto, "table": table, "state": state,
                         "since": f"{day} {clock}", "info": info}
        return out

    def established(self, peer_name: str) -> bool:
        """Whether BGP protocol ``peer_name`` is Established (False while BIRD starts)."""
        try:
            proto = self.protocols().get(peer_name)
        except (BirdError, subprocess.TimeoutExpired):
            return False
        return proto is not None and "Established" in proto["info"]

    def wait_established(self, peer_name: str, timeout: float = 20) -> float:
        """Wait until the BGP protocol ``peer_name`` is Established; return the seconds."""

        def check() -> bool:
            if not self.running():
                raise BirdError(f"BIRD {self.name} exited: {self.log()[-2000:]}")
            return self.established(peer_name)

        try:
            return wait_until(check, timeout, interval=0.02,
                              what=f"{self.name}: {peer_name} Established")
        except LabError as exc:
            raise BirdError(f"{exc}\n{self.birdc('show', 'protocols', 'all', peer_name)}"
                            ) from None

    def routes(self, table: str = "master4") -> dict[str, list[str]]:
        """The table's routes: prefix -> one entry per path and next hop (see
        :func:`parse_routes`). Meant for tests; for 100k routes use :meth:`route_count`."""
        return parse_routes(self.birdc("show", "route", "table", table))

    def route_count(self, table: str = "master4") -> int:
        """Number of routes (paths) in a table, from ``show route count``."""
        out = self.birdc("show", "route", "count", "table", table)
        match = re.search(r"(\d+) of (\d+) routes", out)
        return int(match.group(1)) if match else 0


_ROUTE_START = re.compile(r"^(\S+)\s+(unicast|blackhole|unreachable|prohibited)\b")
_ROUTE_MORE = re.compile(r"^\s+(unicast|blackhole|unreachable|prohibited)\s+\[")
_VIA = re.compile(r"^\s+via\s+(\S+)(?:\s+on\s+(\S+))?")
_DEV = re.compile(r"^\s+dev\s+(\S+)")


def parse_routes(text: str) -> dict[str, list[str]]:
    """Parse ``birdc show route [all]`` into prefix -> next hops.

    One entry per (path, next hop): a gateway address (``"100.64.2.254"``), ``"dev tapX"``
    for a device route, or the route type (``"blackhole"``). With ADD-PATH or ECMP a
    prefix has several entries. Attribute lines of ``show route all`` are ignored.
    """
    routes: dict[str, list[str]] = {}
    prefix: str | None = None
    for line in text.splitlines():
        if not line.strip() or line.startswith("Table "):
            continue
        start = _ROUTE_START.match(line)
        if start:
            prefix = start.group(1)
            routes.setdefault(prefix, [])
            if start.group(2) != "unicast":
                routes[prefix].append(start.group(2))
            continue
        more = _ROUTE_MORE.match(line)
        if more and prefix is not None:
            if more.group(1) != "unicast":
                routes[prefix].append(more.group(1))
            continue
        if prefix is None:
            continue
        via = _VIA.match(line)
        if via:
            routes[prefix].append(via.group(1))
            continue
        dev = _DEV.match(line)
        if dev:
            routes[prefix].append(f"dev {dev.group(1)}")
    return routes


# ---------------------------------------------------------------------- config generators

_PREAMBLE = """\
# Generated by l3hostd.birdlab for a namespace lab.
router id {router_id};
log stderr all;
timeformat log "%F %T.%6f";
timeformat protocol "%F %T.%3f";
debug protocols {{ states }};
graceful restart wait {gr_wait};

protocol device {{
  scan time {scan_time};
}}
"""

# Lab timers: BIRD's defaults (5 s connect delay, 120 s retry) would slow every test.
_BGP_TIMERS = """\
  connect delay time 1;
  connect retry time 2;
  error wait time 1, 10;
"""


def _version(address: str) -> int:
    return ipaddress.ip_address(address).version


def _proto_name(name: str) -> str:
    """A BIRD symbol from a lab name (``hv1`` stays, ``hv-1`` -> ``hv_1``)."""
    symbol = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not symbol or not symbol[0].isalpha():
        symbol = "p_" + symbol
    return symbol


def rr_config(
    router_id: str,
    asn: int,
    clients: Sequence[tuple[str, str] | tuple[str, str, str]],
    add_path_tx: bool = True,
    graceful_restart: bool = True,
    static_routes: int = 0,
    static_prefix: str = "10.200.0.0/13",
    kernel_export: bool = True,
    hold_time: int | None = None,
    graceful_restart_time: int | None = None,
    graceful_restart_wait: int = 20,
    extra: str = "",
) -> str:
    """A BIRD 2 route reflector for ``clients`` = [(name, address[, local address]), ...].

    Each client gets ``protocol bgp <name>`` with ``rr client``, ``import all; export all``
    on the channel of the address family of its address (NREC: IPv4 sessions carry IPv4
    routes, IPv6 sessions IPv6 routes), ``add paths tx`` and ``graceful restart on``.

    ``static_routes`` > 0 adds ``protocol static rr_static`` with that many host routes
    (``/32`` or ``/128``, the first addresses of ``static_prefix``) as ``blackhole``: BIRD
    exports a gateway-less route over iBGP with next-hop self, so every client gets the
    reflector's address on its own link as the next hop (``100.64.<i>.254``): reachable,
    and the 100k-route benchmark's routes are valid in the clients' kernels.

    ``kernel_export`` installs the routes learned over BGP (not the static ones) into the
    reflector's kernel, so that traffic between hypervisors' VMs crosses the RR namespace.

    ``graceful_restart_time`` is the restart time the reflector advertises in its OPEN
    (BIRD's ``graceful restart time``, 120 s by default): how long its clients keep its
    routes as stale when its session drops. ``graceful_restart_wait``: how long a
    reflector started in recovery (``-R``) holds its routes and End-of-RIB back waiting
    for every client's End-of-RIB (BIRD's global ``graceful restart wait``; a client that
    is configured but never connects makes it wait that long). ``extra`` is appended
    verbatim (e.g. a ``protocol static`` announcing routes a test needs: BGP exports
    every route).
    """
    # scan time 1: the device scan timer is what wakes BIRD's loop after graceful-restart
    # recovery (see the module docstring); interfaces here are few, a scan costs nothing
    lines = [_PREAMBLE.format(router_id=router_id, scan_time=1, gr_wait=graceful_restart_wait)]
    families = {_version(client[1]) for client in clients}
    if kernel_export:
        for family in sorted(families):
            lines.append(
                f"protocol kernel kernel{family} {{\n"
                f"  merge paths on;\n"
                f"  ipv{family} {{ import none; export where source = RTS_BGP; }};\n"
                f"}}\n"
            )
    if static_routes:
        net = ipaddress.ip_network(static_prefix)
        if static_routes > net.num_addresses:
            raise ValueError(f"{static_prefix} holds fewer than {static_routes} host routes")
        plen = net.max_prefixlen
        base = int(net.network_address)
        cls = ipaddress.IPv4Address if net.version == 4 else ipaddress.IPv6Address
        routes = "".join(
            f"  route {cls(base + i)}/{plen} blackhole;\n" for i in range(static_routes)
        )
        lines.append(f"protocol static rr_static {{\n  ipv{net.version};\n{routes}}}\n")
    for client in clients:
        name, address = client[0], client[1]
        local = f"{client[2]} " if len(client) > 2 else ""
        family = _version(address)
        channel = "import all; export all;"
        if add_path_tx:
            channel += " add paths tx;"
        lines.append(
            f"protocol bgp {_proto_name(name)} {{\n"
            f"  local {local}as {asn};\n"
            f"  neighbor {address} as {asn};\n"
            f"  rr client;\n"
            f"  direct;\n"
            + ("  graceful restart on;\n" if graceful_restart else "")
            + (f"  graceful restart time {graceful_restart_time};\n"
               if graceful_restart and graceful_restart_time else "")
            + (f"  hold time {hold_time};\n" if hold_time else "")
            + _BGP_TIMERS
            + f"  ipv{family} {{ {channel} }};\n"
            f"}}\n"
        )
    if extra:
        lines.append(extra)
    return "\n".join(lines)


def calico_hv_config(
    router_id: str,
    asn: int,
    rr_address: str,
    source_address: str,
    kernel_table: int = 254,
    learn_proto: int | None = None,
    scan_time: int = 2,
    interfaces: Sequence[str] = ("tap*",),
    rr6_address: str | None = None,
    source6_address: str | None = None,
    add_path_rx: bool = True,
    graceful_restart: bool = True,
) -> str:
    """BIRD 2 as Calico's ``bird.cfg`` runs it on an OpenStack hypervisor.

    - ``protocol kernel``: ``learn`` the routes Felix adds to the TAPs, ``persist``
      (routes stay in the kernel when BIRD stops), ``scan time``, ``merge paths on``
      (ECMP), ``graceful restart``; ``import all``, export everything but device routes
      into ``kernel_table``.
    - ``protocol device`` with the same scan time; ``protocol direct`` on every interface
      but the TAP patterns (connected networks, to resolve next hops on-link).
    - ``protocol bgp rr4`` (and ``rr6`` if ``rr6_address`` is given, IPv6 routes over an
      IPv6 session): multihop, source address, graceful restart, ``import all``, export
      filter ``calico_export_to_bgp`` (routes whose interface matches one of
      ``interfaces``, never the default route; with ``learn_proto`` only kernel routes
      with that ``rtm_protocol``), ``add paths rx``, ``next hop self``.

    Learned routes are installed by the kernel protocol as ``proto bird``.
    """
    match = " || ".join(f'ifname ~ "{pattern}"' for pattern in interfaces)
    proto_check = f"  if krt_source != {learn_proto} then reject;\n" if learn_proto else ""
    lines = [
        _PREAMBLE.format(router_id=router_id, scan_time=scan_time, gr_wait=20),
        "filter calico_export_to_bgp {\n"
        "  if net = 0.0.0.0/0 || net = ::/0 then reject;\n"
        + proto_check
        + f"  if {match} then accept;\n"
        "  reject;\n"
        "}\n",
    ]
    sessions = [("rr4", rr_address, source_address)]
    if rr6_address is not None:
        if source6_address is None:
            raise ValueError("rr6_address needs source6_address")
        sessions.append(("rr6", rr6_address, source6_address))
    # Connected networks of the non-TAP interfaces (Calico's ``protocol direct``): next hops
    # on a shared fabric resolve on-link instead of through the default route. BIRD 2.0.12
    # would export these device routes to the kernel too (duplicates of the connected
    # routes, ``proto bird metric 32``): the kernel protocol's export filter skips them.
    excluded = ", ".join(f'-"{pattern}"' for pattern in interfaces)
    direct_channels = " ".join(f"ipv{_version(address)};" for _, address, _ in sessions)
    lines.append(
        f"protocol direct {{\n"
        f"  {direct_channels}\n"
        f'  interface {excluded}, "*";\n'
        f"}}\n"
    )
    for _, address, _ in sessions:
        family = _version(address)
        lines.append(
            f"protocol kernel kernel{family} {{\n"
            f"  learn;\n"
            f"  persist;\n"
            f"  scan time {scan_time};\n"
            f"  kernel table {kernel_table};\n"
            f"  merge paths on;\n"
            + ("  graceful restart;\n" if graceful_restart else "")
            + f"  ipv{family} {{ import all; export where source != RTS_DEVICE; }};\n"
            f"}}\n"
        )
    for name, address, source in sessions:
        family = _version(address)
        channel = "import all; export filter calico_export_to_bgp; next hop self;"
        if add_path_rx:
            channel += " add paths rx;"
        lines.append(
            f"protocol bgp {name} {{\n"
            f"  local {source} as {asn};\n"
            f"  neighbor {address} as {asn};\n"
            f"  multihop;\n"
            f"  source address {source};\n"
            + ("  graceful restart on;\n" if graceful_restart else "")
            + _BGP_TIMERS
            + f"  ipv{family} {{ {channel} }};\n"
            f"}}\n"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------- Felix, by hand


def felix_plug(ns: Netns, vm: Vm, ipv6: bool = True) -> None:
    """What Felix does for a VM's TAP on a BIRD hypervisor: proxy-ARP without delay,
    ``fe80::1`` as the IPv6 gateway, and host routes ``proto static`` to the TAP (which
    BIRD's kernel protocol learns and the BGP filter exports)."""
    ns.sysctl(f"net.ipv4.conf.{vm.tap}.proxy_arp", "1")
    ns.sysctl(f"net.ipv4.neigh.{vm.tap}.proxy_delay", "0")
    ns.ip("route", "add", f"{vm.ipv4}/32", "dev", vm.tap, "proto", FELIX_PROTO)
    if ipv6:
        ns.ip("-6", "addr", "add", "fe80::1/64", "dev", vm.tap, "nodad")
        ns.ip("-6", "route", "add", f"{vm.ipv6}/128", "dev", vm.tap, "proto", FELIX_PROTO)


def felix_unplug(ns: Netns, vm: Vm, ipv6: bool = True) -> None:
    """Remove the host routes :func:`felix_plug` added."""
    ns.ip("route", "del", f"{vm.ipv4}/32", "dev", vm.tap, "proto", FELIX_PROTO, check=False)
    if ipv6:
        ns.ip("-6", "route", "del", f"{vm.ipv6}/128", "dev", vm.tap, "proto", FELIX_PROTO,
              check=False)


# ------------------------------------------------------------------------------ speakers


class Speaker(Protocol):
    """The BGP speaker of one hypervisor, whichever daemon it is."""

    kind: SpeakerKind
    #: ``rtm_protocol`` of the routes it installs from BGP.
    learned_proto: int
    #: Its sessions to the reflector.
    peer_names: list[str]

    @property
    def pid(self) -> int: ...
    def start(self) -> None: ...
    def stop(self, sig: int = signal.SIGTERM) -> None: ...
    def running(self) -> bool: ...
    def established(self, peer_name: str) -> bool: ...
    def wait_established(self, timeout: float = 20) -> float: ...
    def rss_kib(self) -> Rss: ...


class BirdSpeaker:
    """BIRD with :func:`calico_hv_config` in a hypervisor namespace."""

    kind: SpeakerKind = "bird"
    learned_proto = BIRD_PROTO

    def __init__(self, hv: Hypervisor, rr4: str, rr6: str | None,
                 options: dict[str, Any] | None = None) -> None:
        self.hv = hv
        self.router = BirdRouter(hv.lab, hv.ns, hv.role, hv.uplink4)
        self.router.write_config(calico_hv_config(
            hv.uplink4, LAB_ASN, rr4, hv.uplink4,
            rr6_address=rr6, source6_address=hv.uplink6 if rr6 else None,
            **(options or {}),
        ))
        self.peer_names = ["rr4"] + (["rr6"] if rr6 else [])

    @property
    def pid(self) -> int:
        return self.router.pid

    def start(self) -> None:
        self.router.start()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.router.stop(sig)

    def running(self) -> bool:
        return self.router.running()

    def established(self, peer_name: str) -> bool:
        return self.router.established(peer_name)

    def wait_established(self, timeout: float = 20) -> float:
        return sum(self.router.wait_established(name, timeout) for name in self.peer_names)

    def rss_kib(self) -> Rss:
        return self.router.rss_kib()


class L3hostdSpeaker:
    """l3hostd (``l3hostd run``) with a ``bgp:`` section peering with the reflector.

    The session state is read from ``l3hostctl show peers`` (the control socket): a list of
    peers with ``name`` and ``state``; a peer is up when its state is ``Established``
    (compared case-insensitively).
    """

    kind: SpeakerKind = "l3hostd"
    learned_proto = L3HOSTD_BGP_PROTO

    def __init__(self, hv: Hypervisor, rr4: str, rr6: str | None,
                 extra: dict[str, object] | None = None,
                 more_reflectors: Sequence[tuple[str, str | None]] = ()) -> None:
        self.hv = hv
        peers: list[dict[str, object]] = []
        # the first reflector's sessions are rr / rr6, the second's rr2 / rr2_6, ...
        for n, (address4, address6) in enumerate([(rr4, rr6), *more_reflectors], start=1):
            name = "rr" if n == 1 else f"rr{n}"
            peers.append({
                "name": name, "address": address4, "asn": LAB_ASN,
                "source_address": hv.uplink4, "families": ["ipv4"],
            })
            if address6:
                peers.append({
                    "name": "rr6" if n == 1 else f"{name}_6", "address": address6,
                    "asn": LAB_ASN, "source_address": hv.uplink6, "families": ["ipv6"],
                })
        self.peer_names = [str(p["name"]) for p in peers]
        bgp: dict[str, object] = {"peers": peers, "connect_retry_time": 2}
        config: dict[str, object] = {"bgp": bgp, "logging": {"level": "info"}}
        for key, value in (extra or {}).items():
            if key == "bgp" and isinstance(value, dict):
                bgp.update(value)
            else:
                config[key] = value
        hv.write_config(config)

    def start(self) -> None:
        self.hv.start()
        self.hv.wait_ready()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.hv.stop(sig)

    def running(self) -> bool:
        return self.hv.proc is not None and self.hv.proc.poll() is None

    def established(self, peer_name: str) -> bool:
        try:
            peers = self.hv.ctl("show", "peers")
        except (OSError, ValueError, LabError):
            return False
        if isinstance(peers, dict):  # tolerate {"peers": [...]} as well as [...]
            inner = peers.get("peers", [])
            peers = inner if isinstance(inner, list) else []
        return any(
            isinstance(p, dict) and p.get("name") == peer_name
            and str(p.get("state", "")).lower() == "established"
            for p in peers
        )

    def wait_established(self, timeout: float = 20) -> float:
        def check() -> bool:
            if not self.running():
                raise LabError(f"l3hostd on {self.hv.role} exited: {self.hv.log()[-2000:]}")
            return all(self.established(name) for name in self.peer_names)

        return wait_until(check, timeout, interval=0.02,
                          what=f"l3hostd on {self.hv.role}: sessions Established")

    @property
    def pid(self) -> int:
        if self.hv.proc is None or self.hv.proc.poll() is not None:
            raise LabError(f"l3hostd on {self.hv.role} is not running")
        return self.hv.proc.pid  # ``ip netns exec`` execs the interpreter

    def rss_kib(self) -> Rss:
        return process_rss(self.pid)


# ------------------------------------------------------------------------------ topology


class BgpTopology:
    """A BIRD route reflector (namespace ``rr``) and ``hypervisors`` hypervisors.

    ``hv<i>`` is connected to ``rr`` by its own veth (``eth0`` 100.64.<i>.1/24 and
    fd00:64:<i>::1/64, the reflector's side ``.254`` / ``::254``); the RR forwards, so the
    hypervisors reach each other through it and a learned route's next hop (another
    hypervisor) resolves through the default route to the RR. ``shared_fabric=True`` puts
    every ``eth0`` on one bridge in ``rr`` instead (same addresses, in 100.64.0.0/16 and
    fd00:64::/32): next hops are then on-link, and a prefix announced by several
    hypervisors shows as ECMP on the others. Nothing is started by the constructor:
    call :meth:`start` (reflector, then every speaker) or :meth:`start_rr` and
    :meth:`start_speaker` to time one session coming up.

    ``speaker="bird"``: BIRD with :func:`calico_hv_config` (``bird_config`` passes options
    through); ``speaker="l3hostd"``: l3hostd with peers ``rr`` (IPv4) and ``rr6`` (IPv6)
    (``l3hostd_config`` is merged into its YAML config, its ``bgp`` key into ``bgp``).

    ``reflectors=2`` adds a second BIRD reflector, as in production (two spines), in
    namespace ``rr2`` (:attr:`rr2`), plugged into the shared fabric (so it needs
    ``shared_fabric=True``) with ``100.64.<i>.253`` / ``fd00:64:<i>::253`` for hypervisor
    ``i``; every l3hostd also peers with it (sessions ``rr2`` and ``rr2_6``), from the same
    source address. Both reflectors send every path with ADD-PATH and the same next hop
    (the announcing hypervisor's address), so a hypervisor's kernel route does not depend
    on which reflector is up. ``rr_options`` apply to both. Only with ``speaker="l3hostd"``.
    """

    def __init__(
        self,
        lab: Lab,
        hypervisors: int = 2,
        ipv6: bool = True,
        speaker: SpeakerKind = "bird",
        rr_static_routes: int = 0,
        rr_static_prefix: str = "10.200.0.0/13",
        rr_options: dict[str, Any] | None = None,
        bird_config: dict[str, Any] | None = None,
        l3hostd_config: dict[str, object] | None = None,
        shared_fabric: bool = False,
        reflectors: int = 1,
    ) -> None:
        if reflectors not in (1, 2):
            raise ValueError("reflectors: 1 or 2")
        if reflectors == 2 and not (shared_fabric and speaker == "l3hostd"):
            raise ValueError("reflectors=2 needs shared_fabric=True and speaker='l3hostd'")
        self.lab, self.ipv6, self.speaker_kind = lab, ipv6, speaker
        self.shared_fabric = shared_fabric
        self.rr_ns = lab.netns("rr")
        self.rr_ns.sysctl("net.ipv4.ip_forward", "1")
        self.rr_ns.sysctl("net.ipv6.conf.all.forwarding", "1")
        if shared_fabric:
            self.rr_ns.ip("link", "add", "fabric", "type", "bridge")
            self.rr_ns.ip("link", "set", "fabric", "up")
        self.rr2_ns: Netns | None = None
        if reflectors == 2:
            self.rr2_ns = lab.netns("rr2")
            lab.veth(self.rr2_ns, "fabric", self.rr_ns, "rr2")
            self.rr_ns.ip("link", "set", "rr2", "master", "fabric")
        self.hvs: list[Hypervisor] = []
        self.speakers: list[Speaker] = []
        clients: list[tuple[str, str, str]] = []
        clients2: list[tuple[str, str, str]] = []
        for i in range(1, hypervisors + 1):
            hv = Hypervisor(lab, f"hv{i}", i)
            if shared_fabric:
                self._attach_shared(hv)
            else:
                hv.attach_uplink(self.rr_ns)
            self.hvs.append(hv)
            rr4 = self.rr_address(i, 4)
            rr6 = self.rr_address(i, 6) if ipv6 else None
            clients.append((f"hv{i}", hv.uplink4, rr4))
            if ipv6:
                clients.append((f"hv{i}_v6", hv.uplink6, self.rr_address(i, 6)))
            more: list[tuple[str, str | None]] = []
            if self.rr2_ns is not None:
                more.append(self._attach_rr2(hv))
                clients2.append((f"hv{i}", hv.uplink4, self.rr2_address(i, 4)))
                if ipv6:
                    clients2.append((f"hv{i}_v6", hv.uplink6, self.rr2_address(i, 6)))
            if speaker == "bird":
                self.speakers.append(BirdSpeaker(hv, rr4, rr6, bird_config))
            elif speaker == "l3hostd":
                self.speakers.append(L3hostdSpeaker(hv, rr4, rr6, l3hostd_config, more))
            else:
                raise ValueError(f"unknown speaker {speaker!r}")
        self.rr = BirdRouter(lab, self.rr_ns, "rr", RR_ROUTER_ID)
        self.rr.write_config(rr_config(
            RR_ROUTER_ID, LAB_ASN, clients, static_routes=rr_static_routes,
            static_prefix=rr_static_prefix, **(rr_options or {}),
        ))
        self.rr_clients = [client[0] for client in clients]
        #: The second reflector (``reflectors=2``), else None; :attr:`reflectors` has both.
        self.rr2: BirdRouter | None = None
        self.reflectors = [self.rr]
        if self.rr2_ns is not None:
            self.rr2 = BirdRouter(lab, self.rr2_ns, "rr2", RR2_ROUTER_ID)
            self.rr2.write_config(rr_config(
                RR2_ROUTER_ID, LAB_ASN, clients2, static_routes=rr_static_routes,
                static_prefix=rr_static_prefix, **(rr_options or {}),
            ))
            self.reflectors.append(self.rr2)

    def _attach_rr2(self, hv: Hypervisor) -> tuple[str, str | None]:
        """The second reflector's addresses for ``hv`` on the fabric (on-link for it)."""
        assert self.rr2_ns is not None
        i = hv.index
        self.rr2_ns.ip("addr", "add", f"{self.rr2_address(i, 4)}/16", "dev", "fabric")
        self.rr2_ns.ip("-6", "addr", "add", f"{self.rr2_address(i, 6)}/32", "dev", "fabric",
                       "nodad")
        return self.rr2_address(i, 4), self.rr2_address(i, 6) if self.ipv6 else None

    @staticmethod
    def rr2_address(index: int, family: int = 4) -> str:
        """The second reflector's address for hypervisor ``index`` (``reflectors=2``)."""
        return f"100.64.{index}.253" if family == 4 else f"fd00:64:{index}::253"

    def _attach_shared(self, hv: Hypervisor) -> None:
        """``eth0`` of ``hv`` on the RR's bridge: one L2 segment, 100.64.0.0/16 and
        fd00:64::/32, the same addresses as with a link of its own (the RR has its
        ``.254``/``::254`` for every hypervisor on the bridge)."""
        i, rr, port = hv.index, self.rr_ns, f"hv{hv.index}"
        self.lab.veth(hv.ns, "eth0", rr, port)
        rr.ip("link", "set", port, "master", "fabric")
        hv.ns.ip("addr", "add", f"{hv.uplink4}/16", "dev", "eth0")
        hv.ns.ip("-6", "addr", "add", f"{hv.uplink6}/32", "dev", "eth0", "nodad")
        rr.ip("addr", "add", f"{self.rr_address(i, 4)}/16", "dev", "fabric")
        rr.ip("-6", "addr", "add", f"{self.rr_address(i, 6)}/32", "dev", "fabric", "nodad")
        hv.ns.ip("route", "add", "default", "via", self.rr_address(i, 4))
        hv.ns.ip("-6", "route", "add", "default", "via", self.rr_address(i, 6))

    @staticmethod
    def rr_address(index: int, family: int = 4) -> str:
        """The reflector's address on hypervisor ``index``'s link."""
        return f"100.64.{index}.254" if family == 4 else f"fd00:64:{index}::254"

    @property
    def learned_proto(self) -> int:
        """``rtm_protocol`` of the routes the hypervisors' speakers learn over BGP."""
        return BIRD_PROTO if self.speaker_kind == "bird" else L3HOSTD_BGP_PROTO

    def hv(self, index: int) -> Hypervisor:
        return self.hvs[index - 1]

    def speaker(self, index: int) -> Speaker:
        return self.speakers[index - 1]

    def start_rr(self) -> None:
        for rr in self.reflectors:
            rr.start()

    def start_speaker(self, index: int) -> None:
        self.speaker(index).start()

    def start(self, wait: bool = True, timeout: float = 20) -> None:
        """Start the reflector and every speaker; wait until every session is up."""
        self.start_rr()
        for speaker in self.speakers:
            speaker.start()
        if wait:
            self.wait_established(timeout)

    def wait_established(self, timeout: float = 20, indexes: Iterable[int] | None = None
                         ) -> None:
        for i in indexes or range(1, len(self.hvs) + 1):
            self.speaker(i).wait_established(timeout)

    def add_vm(self, index: int, name: str, host: int, plug: bool = True) -> Vm:
        """A VM on ``hv<index>`` (see :meth:`Hypervisor.add_vm`), plugged unless told not."""
        vm = self.hv(index).add_vm(name, host)
        if plug:
            self.plug(index, vm)
        return vm

    def plug(self, index: int, vm: Vm) -> None:
        """Make the VM reachable the way its hypervisor's stack does it: Felix-style host
        routes and sysctls for BIRD, the endpoint file for l3hostd."""
        hv = self.hv(index)
        if self.speaker_kind == "bird":
            felix_plug(hv.ns, vm, ipv6=self.ipv6)
        else:
            hv.write_endpoint(vm)

    def learned_routes(self, index: int, family: str = "-4") -> list[str]:
        """``ip route show proto <learned>`` on ``hv<index>``."""
        out = self.hv(index).ns.ip(family, "route", "show", "proto",
                                   str(self.learned_proto)).stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
