"""The command line as an operator runs it: exit codes and output of check-config, run,
l3hostctl reload."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

CONFIGS = Path(__file__).with_name("configs")
EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "l3hostd.example.yaml"


def l3hostd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "l3hostd.cli", *args],
                          capture_output=True, text=True, timeout=60)


def test_check_config_ok() -> None:
    proc = l3hostd("check-config", "--config", str(EXAMPLE))
    assert (proc.returncode, proc.stdout.strip()) == (0, "OK")


def test_check_config_every_bad_config_exits_2_naming_the_yaml_path() -> None:
    bad = sorted((CONFIGS / "bad").glob("*.yaml"))
    assert len(bad) >= 12
    for path in bad:
        proc = l3hostd("check-config", "--config", str(path))
        assert proc.returncode == 2, path
        expected = (path.with_suffix(".err")).read_text().replace("{file}", str(path)).strip()
        assert proc.stdout.strip() == expected, path


def test_run_with_a_bad_config_exits_2_and_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("node: {name: hv1, router_id: 10.0.0.1, asn: 65501}\nbgp: {hold_time: 2}\n")
    proc = l3hostd("run", "--config", str(path))
    assert proc.returncode == 2
    assert "bgp.hold_time" in proc.stderr


# ---- l3hostctl reload against the real control server (a stand-in daemon) -----------------


class _ReloadingDaemon:
    """Just what ControlServer needs for ``reload``: the daemon's reload coroutine."""

    def __init__(self, outcome: list[str] | Exception) -> None:
        self.outcome = outcome
        self.calls = 0

    async def reload(self) -> list[str]:
        self.calls += 1
        await asyncio.sleep(0.05)  # the child process, as far as the client can tell
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


@contextmanager
def _control_server(tmp_path: Path, daemon: _ReloadingDaemon) -> Iterator[str]:
    from l3hostd.control import ControlServer

    path = str(tmp_path / "ctl.sock")
    loop = asyncio.new_event_loop()
    server = ControlServer(path, daemon)  # type: ignore[arg-type]
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_ctl_reload_ok_prints_the_changes(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from l3hostd.ctl import main as ctl

    daemon = _ReloadingDaemon(["peer rr2 (192.0.2.2): added"])
    with _control_server(tmp_path, daemon) as path:
        assert ctl(["--socket", path, "reload"]) == 0
    out = capsys.readouterr()
    assert out.out == "OK\n  peer rr2 (192.0.2.2): added\n"
    assert daemon.calls == 1


def test_ctl_reload_rejected_prints_each_error_and_exits_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from l3hostd.ctl import main as ctl
    from l3hostd.settings import ConfigError

    lines = ["/etc/l3hostd/l3hostd.yaml: bgp.hold_time: must be 0 or 3..65535 seconds (got 2)"]
    with _control_server(tmp_path, _ReloadingDaemon(ConfigError(lines))) as path:
        assert ctl(["--socket", path, "reload"]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err.splitlines() == [
        "l3hostctl: reload rejected: the running configuration stays", *lines]


def test_ctl_reload_internal_failure_exits_1(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from l3hostd.ctl import main as ctl

    with _control_server(tmp_path, _ReloadingDaemon(RuntimeError("bug"))) as path:
        assert ctl(["--socket", path, "reload"]) == 1
    assert "reload failed: bug" in capsys.readouterr().err


def test_ctl_reload_without_a_daemon_exits_1(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    from l3hostd.ctl import main as ctl

    assert ctl(["--socket", str(tmp_path / "none.sock"), "reload"]) == 1
    assert "cannot reach l3hostd" in capsys.readouterr().err
