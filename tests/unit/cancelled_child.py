"""Tests' helper: what is left of a child process when the coroutine that runs it is
cancelled (the daemon stopping mid-call)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

import pytest


def returncode_after_cancel(
    monkeypatch: pytest.MonkeyPatch, call: Callable[[], Coroutine[Any, Any, Any]],
    after: float,
) -> int | None:
    """Run ``call()`` on a fresh loop, cancel it ``after`` seconds, and return the exit
    status of the child it spawned as soon as the cancellation is through: None if the
    child was not reaped by then (left running, or to the garbage collector)."""
    started: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def recording(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        proc = await spawn(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(asyncio, "create_subprocess_exec", recording)

    async def main() -> int | None:
        task = asyncio.ensure_future(call())
        await asyncio.sleep(after)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert task.cancelled()
        return started[0].returncode

    return asyncio.run(main())
