"""sd_notify (l3hostd.systemd.Notifier) against a datagram socket the test owns, and the
unit file config/l3hostd.service; no root."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from l3hostd.systemd import Notifier

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "config" / "l3hostd.service"


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify.sock")
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    name = f"l3hostd-test-{secrets.token_hex(6)}"
    sock.bind("\0" + name)
    sock.settimeout(2)
    yield "@" + name, sock
    sock.close()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(key, raising=False)


def test_path_socket_gets_ready_status_and_stopping(
    path_socket: tuple[str, socket.socket],
) -> None:
    address, sock = path_socket
    notifier = Notifier(address)
    assert notifier.enabled
    notifier.ready("in sync: 1 endpoints, 1 host routes")
    assert sock.recv(4096) == b"READY=1\nSTATUS=in sync: 1 endpoints, 1 host routes"
    notifier.status("resyncing")
    assert sock.recv(4096) == b"STATUS=resyncing"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.close()
    assert not notifier.enabled
    notifier.stopping()  # closed: a no-op, not an error


def test_abstract_socket_named_with_at(abstract_socket: tuple[str, socket.socket]) -> None:
    address, sock = abstract_socket
    notifier = Notifier(address)
    notifier.notify("READY=1")
    assert sock.recv(4096) == b"READY=1"
    notifier.close()


def test_address_comes_from_notify_socket(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    notifier = Notifier()
    assert notifier.enabled
    notifier.ready("ok")
    assert sock.recv(4096) == b"READY=1\nSTATUS=ok"
    notifier.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready("x")
    notifier.status("x")
    notifier.stopping()
    notifier.close()
    assert Notifier("").enabled is False


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = Notifier(str(tmp_path / "nobody-listens.sock"))
    notifier.ready("x")  # ENOENT is logged at debug level, never raised
    notifier.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("400000", None, 0.2),
        ("30000000", None, 15.0),
        ("400000", "self", 0.2),
        ("400000", "other", None),
        ("not-a-number", None, None),
        ("", None, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        monkeypatch.setenv("WATCHDOG_USEC", usec)
    if pid == "self":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    elif pid == "other":
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    interval = Notifier("@unused").watchdog_interval()
    if expected is None:
        assert interval is None
    else:
        assert interval == pytest.approx(expected)


def test_watchdog_pings_at_half_the_interval(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = path_socket
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # a ping every 50 ms
    notifier = Notifier(address)

    async def run_for(seconds: float) -> None:
        task = asyncio.create_task(notifier.run_watchdog())
        await asyncio.sleep(seconds)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run_for(0.32))
    sock.setblocking(False)
    pings = []
    while True:
        try:
            pings.append(sock.recv(4096))
        except BlockingIOError:
            break
    assert pings and set(pings) == {b"WATCHDOG=1"}
    assert 4 <= len(pings) <= 9, pings  # ~7 expected: one at once, then every 50 ms
    notifier.close()


@pytest.mark.parametrize("why", ["no socket", "no watchdog"])
def test_watchdog_returns_at_once_when_not_wanted(
    path_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    address, sock = path_socket
    if why == "no socket":
        monkeypatch.setenv("WATCHDOG_USEC", "100000")
        notifier = Notifier()
    else:
        notifier = Notifier(address)
    asyncio.run(asyncio.wait_for(notifier.run_watchdog(), 1))
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    notifier.close()


# ---- config/l3hostd.service ------------------------------------------------------------------


def unit_settings() -> dict[str, list[str]]:
    """``Key`` -> values, every section together (the keys used here are unique to one)."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {raw!r}"
        settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_notify_with_watchdog_and_clean_stop() -> None:
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["NotifyAccess"] == ["main"]
    assert s["ExecStart"] == ["/usr/bin/l3hostd run --config /etc/l3hostd/l3hostd.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] == ["30"]
    assert s["Restart"] == ["on-failure"]
    assert s["RestartSec"] == ["2"]
    assert s["TimeoutStopSec"] == ["10"]
    assert "KillMode" not in s


def test_unit_hardening_leaves_netlink_nftables_and_proc_sys_net_usable() -> None:
    s = unit_settings()
    assert s["CapabilityBoundingSet"] == ["CAP_NET_ADMIN"]
    assert s["NoNewPrivileges"] == ["yes"]
    assert s["ProtectSystem"] == ["strict"]
    assert "ProtectKernelTunables" not in s, "it would make /proc/sys/net read-only"
    assert "MemoryDenyWriteExecute" not in s, "ctypes/libffi may need W+X memory"
    assert "PrivateNetwork" not in s and "PrivateUsers" not in s
    families = s["RestrictAddressFamilies"][0].split()
    assert set(families) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    assert s["ReadWritePaths"] == ["/run/l3hostd /var/lib/l3hostd"]
    assert s["RuntimeDirectory"] == ["l3hostd"]
    assert s["RuntimeDirectoryMode"] == ["0755"]
    assert s["StateDirectory"] == ["l3hostd"]
    for key in ("ProtectHome", "PrivateTmp", "LockPersonality"):
        assert s[key] == ["yes"], key


def test_every_unit_setting_has_a_comment_above_it() -> None:
    previous = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith(("#", "[")):
            assert previous.startswith("#"), f"no comment above {line!r}"
        if line:
            previous = line


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (Debian: apt-get install systemd)")
def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """``systemd-analyze verify`` on a copy whose ExecStart= is this venv's l3hostd (verify
    insists the binary exists). It exits 0 on unknown keys too, so any output fails."""
    binary = Path(sys.executable).parent / "l3hostd"
    if not binary.exists():
        pytest.skip(f"no l3hostd console script next to {sys.executable} (pip install -e .)")
    copy = tmp_path / "l3hostd.service"
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/l3hostd " in text
    copy.write_text(text.replace("ExecStart=/usr/bin/l3hostd ", f"ExecStart={binary} "))
    done = subprocess.run(["systemd-analyze", "verify", str(copy)],
                          capture_output=True, text=True, timeout=60)
    output = (done.stdout + done.stderr).strip()
    assert done.returncode == 0, output
    assert output == "", output
