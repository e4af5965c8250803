"""Network-namespace lab: the hosts of the demo and of the integration tests.

A :class:`Lab` owns every namespace and process it creates and removes them on exit,
whatever happened (context manager; also on Ctrl-C). Names carry a per-lab random tag so
concurrent runs never collide and a leftover is recognisable (``l3-<tag>-<role>``).
Addresses used by labs are private and exist only inside these namespaces; no traffic
leaves them.

Processes are started with ``ip netns exec`` and stopped by PID (SIGTERM, then SIGKILL
after a bounded wait). Only processes the lab started are ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType


class LabError(RuntimeError):
    pass


def sh(*args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(args)}: exit {proc.returncode}: {proc.stderr.strip()}")
    return proc


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name

    def ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "-n", self.name, *args, check=check)

    def run(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.name, *args, check=check, timeout=timeout)

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-qw", f"{key}={value}")

    def ping(self, address: str, count: int = 1, timeout: float = 2) -> bool:
        wait = str(max(1, int(timeout)))
        return self.run(
            "ping", "-n", "-q", "-c", str(count), "-W", wait, "-i", "0.2", address, check=False
        ).returncode == 0

    def popen(
        self, *args: str, stdout: int | None = None, stderr: int | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.name, *args],
            stdout=stdout,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )


class Lab:
    def __init__(self, prefix: str = "l3") -> None:
        self.tag = secrets.token_hex(3)
        self.prefix = prefix
        self.namespaces: list[Netns] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix=f"l3hostd-lab-{self.tag}-"))
        self._cleanups: list[Callable[[], None]] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def netns(self, role: str) -> Netns:
        ns = Netns(f"{self.prefix}-{self.tag}-{role}")
        sh("ip", "netns", "add", ns.name)
        self.namespaces.append(ns)
        ns.ip("link", "set", "lo", "up")
        return ns

    def veth(
        self, a: Netns, a_name: str, b: Netns, b_name: str, b_mac: str | None = None,
        a_mac: str | None = None,
    ) -> None:
        """A veth pair with ``a_name`` in ``a`` and ``b_name`` in ``b``, both up."""
        tmp = f"v{secrets.token_hex(4)}"
        a.ip("link", "add", a_name, "type", "veth", "peer", "name", tmp)
        a.ip("link", "set", tmp, "netns", b.name)
        b.ip("link", "set", tmp, "name", b_name)
        if b_mac:
            b.ip("link", "set", b_name, "address", b_mac)
        if a_mac:
            a.ip("link", "set", a_name, "address", a_mac)
        b.ip("link", "set", b_name, "up")
        a.ip("link", "set", a_name, "up")

    def start(
        self, ns: Netns, args: Sequence[str], log_name: str, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        log = open(self.workdir / log_name, "ab")  # noqa: SIM115 - owned by the process
        proc = ns.popen(*args, stdout=log.fileno(), stderr=log.fileno(), env=env)
        log.close()
        self.processes.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
             timeout: float = 10) -> int:
        """Signal a process this lab started (its whole session: ``ip netns exec`` execs
        the program, so the PID is the program's) and wait for it."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def on_close(self, fn: Callable[[], None]) -> None:
        self._cleanups.append(fn)

    def close(self) -> None:
        for proc in reversed(self.processes):
            with contextlib.suppress(Exception):
                self.stop(proc, timeout=5)
        for fn in reversed(self._cleanups):
            with contextlib.suppress(Exception):
                fn()
        for ns in reversed(self.namespaces):
            sh("ip", "netns", "del", ns.name, check=False)
        self.namespaces.clear()
        if not os.environ.get("L3HOSTD_KEEP_LABDIR"):
            shutil.rmtree(self.workdir, ignore_errors=True)


def wait_until(
    predicate: Callable[[], bool], timeout: float, interval: float = 0.005, what: str = ""
) -> float:
    """Poll ``predicate`` until true; return the seconds it took or raise after timeout."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise LabError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


@contextmanager
def route_monitor(lab: Lab, ns: Netns) -> Iterator[list[str]]:
    """Collect ``ip monitor route`` lines in a namespace while the block runs."""
    proc = subprocess.Popen(["ip", "-n", ns.name, "monitor", "route"], stdout=subprocess.PIPE,
                            text=True)
    lab.on_close(proc.kill)
    lines: list[str] = []
    time.sleep(0.2)
    try:
        yield lines
    finally:
        time.sleep(0.3)
        proc.terminate()
        lines.extend(proc.communicate(timeout=5)[0].splitlines())


def l3hostd_command(*args: str) -> list[str]:
    """How to run this l3hostd from a namespace: the interpreter running us."""
    return [sys.executable, "-m", "l3hostd.cli", *args]


# ---- hypervisors and VMs ---------------------------------------------------------------------


OPEN_GROUP = """\
name: default
rules:
  - {direction: ingress, ethertype: IPv4}
  - {direction: ingress, ethertype: IPv6}
  - {direction: egress, ethertype: IPv4}
  - {direction: egress, ethertype: IPv6}
"""


class Vm:
    """A VM: a namespace whose ``eth0`` is the peer of a TAP-named veth on its hypervisor."""

    def __init__(self, ns: Netns, tap: str, mac: str, ipv4: str, ipv6: str, port_id: str) -> None:
        self.ns, self.tap, self.mac, self.ipv4, self.ipv6, self.port_id = (
            ns, tap, mac, ipv4, ipv6, port_id
        )

    def endpoint(self) -> dict[str, object]:
        return {
            "id": self.port_id,
            "interface": self.tap,
            "mac": self.mac,
            "ips": [self.ipv4, self.ipv6],
            "security_groups": ["default"],
        }


class Hypervisor:
    """A hypervisor namespace with an uplink (``eth0``, default routes) and l3hostd's files."""

    def __init__(self, lab: Lab, role: str, index: int) -> None:
        self.lab = lab
        self.role = role
        self.ns = lab.netns(role)
        self.dir = lab.workdir / role
        self.endpoints = self.dir / "endpoints"
        self.endpoints.mkdir(parents=True)
        groups = self.endpoints / "security-groups"
        groups.mkdir()
        # The lab's "default" group is open in both directions: tests about routing are not
        # about the firewall (tests/integration/test_firewall.py writes its own groups).
        (groups / "default.yaml").write_text(OPEN_GROUP)
        self.config_path = self.dir / "l3hostd.yaml"
        self.socket = self.dir / "control.sock"
        self.proc: subprocess.Popen[bytes] | None = None
        self.index = index
        for key in ("net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"):
            self.ns.sysctl(key, "1")
        self.uplink4 = f"100.64.{index}.1"
        self.uplink6 = f"fd00:64:{index}::1"

    def attach_uplink(self, fabric: Netns) -> None:
        """Connect ``eth0`` to a fabric namespace and route everything there by default."""
        peer = f"hv{self.index}"
        self.lab.veth(self.ns, "eth0", fabric, peer)
        self.ns.ip("addr", "add", f"{self.uplink4}/24", "dev", "eth0")
        self.ns.ip("-6", "addr", "add", f"{self.uplink6}/64", "dev", "eth0", "nodad")
        fabric.ip("addr", "add", f"100.64.{self.index}.254/24", "dev", peer)
        fabric.ip("-6", "addr", "add", f"fd00:64:{self.index}::254/64", "dev", peer, "nodad")
        self.ns.ip("route", "add", "default", "via", f"100.64.{self.index}.254")
        self.ns.ip("-6", "route", "add", "default", "via", f"fd00:64:{self.index}::254")

    def attach_fabric(self, fabric: Netns, bridge: str = "br0") -> None:
        """Connect ``eth0`` to a shared L2 segment (a bridge in ``fabric`` whose own address
        is ``.254``): every hypervisor is on-link for the others, as in one rack."""
        if fabric.ip("link", "show", bridge, check=False).returncode != 0:
            fabric.ip("link", "add", bridge, "type", "bridge")
            fabric.ip("addr", "add", "100.64.0.254/24", "dev", bridge)
            fabric.ip("-6", "addr", "add", "fd00:64::254/64", "dev", bridge, "nodad")
            fabric.ip("link", "set", bridge, "up")
        peer = f"hv{self.index}"
        self.lab.veth(self.ns, "eth0", fabric, peer)
        fabric.ip("link", "set", peer, "master", bridge)
        self.uplink4 = f"100.64.0.{self.index}"
        self.uplink6 = f"fd00:64::{self.index}"
        self.ns.ip("addr", "add", f"{self.uplink4}/24", "dev", "eth0")
        self.ns.ip("-6", "addr", "add", f"{self.uplink6}/64", "dev", "eth0", "nodad")
        self.ns.ip("route", "add", "default", "via", "100.64.0.254")
        self.ns.ip("-6", "route", "add", "default", "via", "fd00:64::254")

    def write_config(self, extra: dict[str, object] | None = None) -> None:
        import yaml

        config: dict[str, object] = {
            "node": {"name": self.role, "router_id": self.uplink4, "asn": 65501},
            "endpoints": {"directory": str(self.endpoints), "interface_patterns": ["tap*"]},
            "control": {"socket": str(self.socket)},
            "logging": {"level": "debug"},
        }
        config.update(extra or {})
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        if not self.config_path.exists():
            self.write_config()
        self.proc = self.lab.start(
            self.ns, l3hostd_command("run", "--config", str(self.config_path)),
            f"{self.role}.log", env=env,
        )
        return self.proc

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.lab.stop(self.proc, sig)
            self.lab.processes.remove(self.proc)
            self.proc = None

    def ctl(self, *args: str) -> dict[str, object] | list[dict[str, object]]:
        from l3hostd.ctl import request

        reply = request(str(self.socket), {"command": args[0], "what": args[1]})
        if not reply.get("ok"):
            raise LabError(str(reply.get("error")))
        data: dict[str, object] | list[dict[str, object]] = reply["data"]
        return data

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"l3hostd on {self.role} exited: {self.log()[-2000:]}")
            try:
                status = self.ctl("show", "status")
            except (OSError, ValueError):
                return False
            return isinstance(status, dict) and bool(status.get("synced"))

        wait_until(ready, timeout, interval=0.05, what=f"l3hostd on {self.role} in sync")

    def log(self) -> str:
        path = self.lab.workdir / f"{self.role}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def add_vm(self, name: str, host: int, subnet4: str = "10.10.0", subnet6: str = "2001:db8:10"
               ) -> Vm:
        """A VM namespace behind ``tap<port id[:11]>``; its endpoint file is not written yet.

        The VM is configured as a cloud image would be: IPv4 in a /24 whose gateway
        ``.1`` exists nowhere (proxy-ARP answers for it), IPv6 as a /128 with
        ``default via fe80::1`` (the gateway address on every TAP)."""
        port_id = (
            f"{self.index:02x}{host:02x}{secrets.token_hex(2)}-0000-4000-8000-{self.lab.tag}000000"
        )
        tap = f"tap{port_id[:11]}"
        mac = f"fa:16:3e:{self.index:02x}:{host // 256:02x}:{host % 256:02x}"
        ns = self.lab.netns(name)
        self.lab.veth(self.ns, tap, ns, "eth0", b_mac=mac)
        ipv4, ipv6 = f"{subnet4}.{host}", f"{subnet6}::{host:x}"
        ns.ip("addr", "add", f"{ipv4}/24", "dev", "eth0")
        ns.ip("route", "add", "default", "via", f"{subnet4}.1")
        ns.ip("-6", "addr", "add", f"{ipv6}/128", "dev", "eth0", "nodad")
        ns.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
        return Vm(ns, tap, mac, ipv4, ipv6, port_id)

    def write_endpoint(self, vm: Vm) -> Path:
        """Atomic write + rename, as the orchestrator does."""
        import yaml

        path = self.endpoints / f"{vm.tap}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump(vm.endpoint()))
        tmp.rename(path)
        return path

    def routes(self, family: str = "-4") -> list[str]:
        out = self.ns.ip(family, "route", "show", "proto", "44").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]
