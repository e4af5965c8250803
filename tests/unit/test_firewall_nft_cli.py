"""``nft -f -`` that fails at once: its message must come through, not a pipe error."""

from __future__ import annotations

import asyncio
import signal
import stat
from pathlib import Path

import pytest
import uvloop
from cancelled_child import returncode_after_cancel

from l3hostd.firewall import nft


def test_an_nft_that_exits_before_reading_its_script_reports_its_own_error(
        tmp_path: Path) -> None:
    fake = tmp_path / "nft"
    fake.write_text('#!/bin/sh\necho "Error: simulated nft failure" >&2\nexit 1\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)

    async def main() -> tuple[int | None, bytes]:
        proc = await asyncio.create_subprocess_exec(
            str(fake), "-f", "-", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await proc.wait()  # gone before we write: uvloop has closed its stdin pipe
        await asyncio.sleep(0.05)
        _, err = await nft._talk(proc, b"add table inet x\n" * 1000)
        return proc.returncode, err

    rc, err = uvloop.run(main())
    assert rc == 1 and b"simulated nft failure" in err  # communicate() raised RuntimeError


def test_a_cancelled_nft_call_reaps_its_child(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelled (the daemon stops mid-apply): the child is killed *and* waited for before
    the cancellation goes on, so nothing of it is left for the garbage collector to close
    after the loop is gone ("Exception ignored in BaseSubprocessTransport.__del__: Event
    loop is closed", seen in CI)."""
    fake = tmp_path / "nft"
    fake.write_text("#!/bin/sh\nexec sleep 30\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("NFT", str(fake))
    status = returncode_after_cancel(
        monkeypatch, lambda: nft.apply("add table inet x\n", timeout=30), after=0.2)
    assert status == -signal.SIGKILL
