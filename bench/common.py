"""Lab helpers shared by the benchmarks: command pipes, listeners, TAPs, FIB counts.

Everything here acts inside a :class:`~l3hostd.lab.Lab`'s namespaces and registers its
processes with the lab, so the lab's teardown stops them. The two ways of loading many
endpoints fast, both through ``ip -batch`` (one process, not one per command):

- :func:`fake_taps`: N macvlan interfaces named like TAPs, up, on one veth pair of the
  namespace (``vmlink0``/``vmlink1``, both up). A macvlan has carrier from its parent
  (IFF_LOWER_UP), like a TAP with its VM attached, ARP and neighbour entries like an
  Ethernet TAP, and costs one netdev where a veth costs two: ~0.35 ms each through
  ``ip -batch``. (The lab kernel has no ``dummy`` driver; ``ifb`` works but is NOARP.)
- :func:`endpoint_files` (l3hostd) / :func:`felix_routes` (BIRD): what the orchestrator,
  respectively Felix, does for each of them: an endpoint file (written by hand, not by
  PyYAML: 10k files in a fraction of a second), or ``ip route add <ip>/32 dev <tap> proto
  static``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import platform
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench.guard import ScenarioTimeout
from bench.listen import Listener
from l3hostd.birdlab import BirdRouter, BirdSpeaker, L3hostdSpeaker, Speaker
from l3hostd.lab import Hypervisor, Lab, LabError, Netns

PROTO_STATIC = 4
EVENT_TIMEOUT = 10.0
REPO = Path(__file__).resolve().parents[1]


class IpBatch:
    """A running ``ip -force -batch -`` in a namespace: a command costs a pipe write, not a
    process start, so the time the bench writes it is the time it happens (to ~0.1 ms)."""

    def __init__(self, lab: Lab, ns: Netns) -> None:
        self.proc = subprocess.Popen(
            ["ip", "-n", ns.name, "-force", "-batch", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            bufsize=1,
        )
        lab.on_close(self.close)

    def __call__(self, line: str) -> float:
        assert self.proc.stdin is not None
        t = time.monotonic()
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return t

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def ip_batch(ns: Netns, lines: list[str], timeout: float = 300) -> None:
    """Run ``lines`` through one ``ip -batch`` in ``ns``; raise on the first failure."""
    proc = subprocess.run(
        ["ip", "-n", ns.name, "-batch", "-"],
        input="\n".join(lines) + "\n",
        text=True,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise LabError(f"ip -batch in {ns.name}: {proc.stderr.strip()[:500]}")


def listen(
    lab: Lab, ns: Netns, protocols: int | str, record: bool = False, realtime: bool = False
) -> Listener:
    """A :mod:`bench.listen` process in ``ns`` reporting routes of ``protocols``
    (SCHED_FIFO with ``realtime``: see :class:`~bench.listen.Listener`)."""
    listener = Listener(ns.name, str(protocols), record=record, realtime=realtime)
    listener.start()
    lab.on_close(listener.stop)
    return listener


def tap_pair(hv: Hypervisor, vms: Netns, tap: str, peer: str, up: bool = True) -> None:
    """A TAP-named veth on ``hv`` whose peer (up) sits in ``vms``: it has carrier when up.
    With ``up=False`` the TAP is created down and never seen up before the bench says so."""
    hv.ns.ip("link", "add", tap, "type", "veth", "peer", "name", peer, "netns", vms.name)
    vms.ip("link", "set", peer, "up")
    if up:
        hv.ns.ip("link", "set", tap, "up")


def wait_event(
    listener: Listener, table: dict[str, float], key: str, after: float = 0.0,
    timeout: float = EVENT_TIMEOUT, what: str = "event",
) -> float:
    """Wait until ``table[key]`` (a table of ``listener``) holds a time later than
    ``after``; return it (:meth:`~bench.listen.Listener.wait`: no polling)."""
    t = listener.wait(table, key, after, timeout)
    if t is None:
        raise LabError(f"timed out after {timeout}s waiting for {what} {key}")
    return t


def event_prefix(block: int, j: int) -> str:
    """A /32 as the listener prints it."""
    return f"10.{block}.{j // 250}.{j % 250 + 1}/32"


def log_tail(speaker: Speaker, chars: int = 1500) -> str:
    """The end of a speaker's log (l3hostd's, or BIRD's stderr)."""
    if isinstance(speaker, L3hostdSpeaker):
        text = speaker.hv.log()
    elif isinstance(speaker, BirdSpeaker):
        text = speaker.router.log()
    else:
        return ""
    return text[-chars:]


@contextlib.contextmanager
def with_log_on_error(speaker: Speaker, what: str) -> Iterator[None]:
    """A LabError or time-out raised in the block gets the end of ``speaker``'s log
    appended (same exception type)."""
    try:
        yield
    except (LabError, ScenarioTimeout) as exc:
        raise type(exc)(f"{exc}\n--- {what} log, last lines:\n{log_tail(speaker)}") from exc


# ------------------------------------------------------------------------ many endpoints


@dataclass(frozen=True)
class Port:
    """One bench endpoint: port id, TAP name, MAC, IPv4 address."""

    id: str
    tap: str
    mac: str
    ip: str


def ports(count: int, tag: str, base: str = "10.40.0.0") -> list[Port]:
    """``count`` endpoints with distinct TAPs, MACs and /32s from ``base`` + 1 on.
    ``tag``: one hex character, so that two sets in one lab never share a TAP name."""
    first = int(ipaddress.IPv4Address(base)) + 1
    out = []
    for i in range(count):
        port_id = f"{tag}{i:06x}0-0000-4000-8000-000000000000"
        out.append(
            Port(
                port_id,
                f"tap{port_id[:11]}",
                f"fa:16:3e:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}",
                str(ipaddress.IPv4Address(first + i)),
            )
        )
    return out


#: l3hostd's config for labs with :func:`fake_taps` (IPv4 only: no fe80::1, no IPv6 sysctls)
IPV4_ONLY_TAPS: dict[str, object] = {"dataplane": {"ipv6_gateway": False}}


def fake_taps(ns: Netns, items: list[Port]) -> None:
    """A macvlan named like each port's TAP, up, with carrier (see the module docstring).

    They are created without IPv6 (``disable_ipv6`` as the namespace's default while they
    are made): bringing up a device with IPv6 costs time proportional to the devices
    already up (addrconf), 5k took 6.9 s, 10k ~28 s, against 0.27 s for 5k without. The
    benches that use them are IPv4 only; l3hostd runs there with :data:`IPV4_ONLY_TAPS`."""
    parent: list[str] = []
    if ns.ip("link", "show", "vmlink0", check=False).returncode != 0:
        parent = [
            "link add vmlink0 type veth peer name vmlink1",
            "link set vmlink1 up",
            "link set vmlink0 up",
        ]
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
    try:
        ip_batch(
            ns,
            parent
            + [f"link add {p.tap} link vmlink0 type macvlan mode private" for p in items]
            + [f"link set {p.tap} up" for p in items],
        )
    finally:
        ns.sysctl("net.ipv6.conf.default.disable_ipv6", "0")


def endpoint_files(hv: Hypervisor, items: list[Port]) -> None:
    """The endpoint file of each port (atomic write + rename, as the orchestrator does),
    in the lab's open ``default`` security group."""
    for p in items:
        path = hv.endpoints / f"{p.tap}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            f'id: {p.id}\ninterface: {p.tap}\nmac: "{p.mac}"\n'
            f"ips: [{p.ip}]\nsecurity_groups: [default]\n"
        )
        tmp.rename(path)


def felix_routes(ns: Netns, items: list[Port]) -> None:
    """Felix's host route of each port: ``<ip>/32 dev <tap> proto static``."""
    ip_batch(ns, [f"route add {p.ip}/32 dev {p.tap} proto static" for p in items])


# ------------------------------------------------------------------------ kernel / BIRD


def session_up_at(rr: BirdRouter, client: str, after: float) -> float | None:
    """When the reflector's session to ``client`` last went up (its log line ``<client>:
    State changed to up``, wall clock with microseconds), as CLOCK_MONOTONIC; None if not
    after ``after``. Taken on the reflector, not from the speaker under test: a speaker
    busy decoding 100k routes answers its control socket late (l3hostctl showed
    Established ~0.7 s after the first route was installed)."""
    found = re.findall(
        rf"^(\S+ \S+) <\w+> {re.escape(client)}: State changed to up$", rr.log(), re.M
    )
    if not found:
        return None
    wall = datetime.strptime(found[-1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
    mono = wall - (time.time() - time.monotonic())
    return mono if mono > after else None


def fib_prefixes(path: str) -> int:
    """IPv4 prefixes in a namespace's FIB, from ``fib_triestat`` (main and local tables;
    ``Main:`` comes first). Kernel-side count, no dump: ~30 us empty, 3-5 ms at 100k.
    ``path``: ``/proc/<pid of a process in the namespace>/net/fib_triestat``."""
    with open(path) as f:
        text = f.read()
    match = re.search(r"Prefixes:\s+(\d+)", text)
    if not match:
        raise LabError(f"{path}: no prefix count")
    return int(match.group(1))


def ns_fib_prefixes(ns: Netns) -> int:
    """:func:`fib_prefixes` of a namespace by running ``cat`` in it (for a baseline)."""
    match = re.search(r"Prefixes:\s+(\d+)", ns.run("cat", "/proc/net/fib_triestat").stdout)
    if not match:
        raise LabError(f"{ns.name}: no prefix count")
    return int(match.group(1))


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks (``/proc/PID/stat`` fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


# ------------------------------------------------------------------------ machine


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return ""


def _first_line(*cmd: str) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (proc.stdout + proc.stderr).strip()
    return text.splitlines()[0] if text else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return 0.0


def git_describe() -> str:
    """``git describe --always --dirty`` of the checkout, read-only: no optional locks,
    so a concurrent git command in the same tree never meets our index.lock."""
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}
    try:
        proc = subprocess.run(
            [
                "git",
                "-C",
                str(REPO),
                "--no-optional-locks",
                "describe",
                "--always",
                "--dirty",
                "--tags",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
            env=env,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return proc.stdout.strip()


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (written into the JSON and the README table)."""
    describe = git_describe()
    l3 = _version("l3hostd")
    return {
        "cpu": _cpu_model(),
        "cpus": os.cpu_count() or 0,
        "mem_gib": _mem_gib(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bird": _first_line("bird", "--version").removeprefix("BIRD version "),
        "nft": _first_line("nft", "--version"),
        "l3hostd": f"{l3} ({describe})" if describe else l3,
        "uvloop": _version("uvloop"),
        "pyroute2": _version("pyroute2"),
        "exabgp": _version("exabgp"),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }


def loadavg() -> list[str]:
    return Path("/proc/loadavg").read_text().split()[:3]
