"""Bounds and cleanup of the benchmark suite: time limits, every lab closed, Ctrl-C safe.

- :func:`time_limit` arms SIGALRM; when it fires, :class:`ScenarioTimeout` is raised in the
  main thread wherever the scenario is (a ``time.sleep``, a ``subprocess.run`` - which then
  kills its child -, a wait loop). It derives from BaseException so that the scenarios'
  ``except Exception`` (one failed measurement must not stop the others) does not swallow
  it, and it fires once, so the ``with Lab()`` blocks it unwinds still clean up.
- :func:`new_lab` registers every lab the suite creates; :func:`close_all_labs` closes
  them again at the end whatever happened (``Lab.close`` is idempotent), so a lab whose
  cleanup was interrupted leaves no namespace or process behind.
- :func:`terminate_on_sigterm` turns SIGTERM into KeyboardInterrupt: ``kill`` of the
  suite unwinds like Ctrl-C; and SIGINT raises KeyboardInterrupt even when the suite
  was started with it ignored (a background job of a non-interactive shell inherits
  SIGINT as SIG_IGN, and Python then leaves it so).
- :func:`run_bounded` runs a command in its own process group and, on timeout or any
  exception, stops the group with SIGINT first (so a child that cleans up in ``finally``,
  like ``bench.firewall`` deleting its namespace, can), then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from types import FrameType

from l3hostd.lab import Lab


class ScenarioTimeout(BaseException):
    """A scenario ran past its time limit."""


@contextlib.contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise :class:`ScenarioTimeout` in the block after ``seconds`` (once). An alarm set
    before (by whoever) is suspended meanwhile and re-armed afterwards."""
    if seconds <= 0:
        raise ScenarioTimeout(f"{what}: no time left")

    def fire(signum: int, frame: FrameType | None) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        raise ScenarioTimeout(f"{what}: over its limit of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)  # an outer alarm (pytest-timeout)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer:  # re-arm it with what was left of it
            signal.setitimer(signal.ITIMER_REAL, max(0.001, outer - (time.monotonic() - started)))


_labs: list[Lab] = []


def new_lab(prefix: str = "l3s") -> Lab:
    """A :class:`~l3hostd.lab.Lab` that :func:`close_all_labs` will close again."""
    lab = Lab(prefix)
    _labs.append(lab)
    return lab


def close_all_labs() -> int:
    """Close every lab made by :func:`new_lab` (again), and delete any namespace named
    after one of them that the lab does not know of (``ip netns add`` that timed out on a
    busy machine but created the namespace all the same); return how many labs."""
    count = len(_labs)
    prefixes = []
    while _labs:
        lab = _labs.pop()
        prefixes.append(f"{lab.prefix}-{lab.tag}-")
        with contextlib.suppress(Exception):
            lab.close()
    if prefixes:
        for name in _namespaces():
            if name.startswith(tuple(prefixes)):
                subprocess.run(
                    ["ip", "netns", "del", name], capture_output=True, timeout=60, check=False
                )
    return count


def _namespaces() -> list[str]:
    try:
        proc = subprocess.run(
            ["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[0] for line in proc.stdout.splitlines() if line.strip()]


def terminate_on_sigterm() -> None:
    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_bounded(
    cmd: Sequence[str], timeout: float, grace: float = 15.0
) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` (output captured) for at most ``timeout`` seconds; raise
    ``subprocess.TimeoutExpired`` after stopping its process group."""
    proc = subprocess.Popen(
        list(cmd), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        _stop_group(proc, grace)
        raise
    return subprocess.CompletedProcess(list(cmd), proc.returncode, out, err)


def _stop_group(proc: subprocess.Popen[str], grace: float) -> None:
    for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            break
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        deadline = time.monotonic() + wait
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=1)
