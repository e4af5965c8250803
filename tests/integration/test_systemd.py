"""systemd integration for real: the notify protocol of the running daemon.

The daemon runs in a hypervisor namespace with ``NOTIFY_SOCKET`` pointing at a datagram
socket this test binds (a filesystem path: abstract unix sockets belong to a network
namespace, paths do not), as systemd would hand it to a ``Type=notify`` service. The unit
file itself is checked in tests/unit/test_sd_notify.py (``systemd-analyze verify``).
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import time
from pathlib import Path

from l3hostd.lab import Hypervisor, Lab, LabError, Vm


class NotifyListener:
    """What systemd's end of ``$NOTIFY_SOCKET`` sees: (monotonic time, message lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[tuple[float, list[str]]] = []

    def receive(self, timeout: float) -> list[str] | None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return None
        lines = data.decode().split("\n")
        self.messages.append((time.monotonic(), lines))
        return lines

    def lines(self, since: float = 0.0) -> list[str]:
        return [line for at, lines in self.messages if at >= since for line in lines]

    def close(self) -> None:
        self.sock.close()


def boot_with_notify(lab: Lab) -> tuple[Hypervisor, Vm, NotifyListener]:
    fabric = lab.netns("fabric")
    hv = Hypervisor(lab, "hv", 1)
    hv.attach_uplink(fabric)
    hv.write_config({"firewall": {"enabled": False}})
    vm = hv.add_vm("vm1", 11)
    hv.write_endpoint(vm)  # before the start: READY must wait for its routes
    listener = NotifyListener(lab.workdir / "notify.sock")
    lab.on_close(listener.close)
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "NOTIFY_SOCKET")}
    env.update(NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="400000")
    hv.start(env=env)
    return hv, vm, listener


def wait_for_ready(hv: Hypervisor, listener: NotifyListener, timeout: float = 20
                   ) -> tuple[list[str], list[str], list[str]]:
    """Receive until READY=1; return its lines and the host routes read right then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert hv.proc is not None
        if hv.proc.poll() is not None:
            raise LabError(f"l3hostd exited before READY: {hv.log()[-2000:]}")
        lines = listener.receive(0.1)
        if lines is not None and "READY=1" in lines:
            return lines, hv.routes("-4"), hv.routes("-6")
    raise LabError(f"no READY=1 within {timeout}s; got {listener.messages}")


def test_ready_after_routes_watchdog_pings_and_clean_stop(lab: Lab) -> None:
    hv, vm, listener = boot_with_notify(lab)
    ready, routes4, routes6 = wait_for_ready(hv, listener)

    # READY only after the first full sync: the endpoint's host routes are in the kernel
    assert any(r.startswith(f"{vm.ipv4} dev {vm.tap}") for r in routes4), routes4
    assert any(r.startswith(f"{vm.ipv6} dev {vm.tap}") for r in routes6), routes6
    status = [line for line in ready if line.startswith("STATUS=")]
    assert status, f"READY=1 without STATUS=: {ready}"
    counted = re.search(r"(\d+) host routes", status[0])
    assert counted is not None and int(counted.group(1)) == 2, status

    # watchdog: every WATCHDOG_USEC/2 = 0.2 s while the loop runs
    since = time.monotonic()
    while time.monotonic() - since < 1.1:
        listener.receive(0.05)
    pings = [line for line in listener.lines(since) if line == "WATCHDOG=1"]
    assert len(pings) >= 3, listener.messages
    # no gap reaches WATCHDOG_USEC, where systemd would have killed the daemon
    ping_times = [at for at, lines in listener.messages if at >= since and "WATCHDOG=1" in lines]
    gaps = [b - a for a, b in itertools.pairwise(ping_times)]
    assert gaps and max(gaps) < 0.4, f"watchdog gaps {gaps}"

    # SIGTERM: STOPPING=1, exit 0, kernel state left in place
    assert hv.proc is not None
    hv.proc.send_signal(signal.SIGTERM)  # `ip netns exec` execs: this PID is the daemon
    stopped = time.monotonic()
    returncode = hv.proc.wait(10)
    while listener.receive(0.2) is not None:
        pass
    assert "STOPPING=1" in listener.lines(stopped), listener.messages
    assert returncode == 0, hv.log()[-2000:]
    assert any(r.startswith(f"{vm.ipv4} dev {vm.tap}") for r in hv.routes("-4"))
    assert any(r.startswith(f"{vm.ipv6} dev {vm.tap}") for r in hv.routes("-6"))
    assert all(line.startswith(("READY=", "STATUS=", "WATCHDOG=", "STOPPING="))
               for line in listener.lines()), listener.messages


def test_no_notify_socket_runs_normally(lab: Lab) -> None:
    """Outside systemd (no NOTIFY_SOCKET, a stray WATCHDOG_USEC) nothing breaks."""
    fabric = lab.netns("fabric")
    hv = Hypervisor(lab, "hv", 1)
    hv.attach_uplink(fabric)
    hv.write_config({"firewall": {"enabled": False}})
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "NOTIFY_SOCKET")}
    env["WATCHDOG_USEC"] = "400000"
    hv.start(env=env)
    hv.wait_ready()
    assert hv.proc is not None
    hv.proc.send_signal(signal.SIGTERM)
    assert hv.proc.wait(10) == 0

