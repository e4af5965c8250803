"""bench.listen.Listener.wait: the bench's wait for an event is woken by the reader thread.

The reader thread is fed through a pipe, as by a listener process; nothing polls."""

from __future__ import annotations

import os
import threading
import time
from types import SimpleNamespace

from bench.listen import Listener


def _listener() -> tuple[Listener, int]:
    read_fd, write_fd = os.pipe()
    listener = Listener("unused")
    listener.proc = SimpleNamespace(stdout=os.fdopen(read_fd, "r"))  # type: ignore[assignment]
    listener.thread = threading.Thread(target=listener._run, daemon=True)
    listener.thread.start()
    return listener, write_fd


def test_wait_returns_the_time_of_the_line_that_arrives() -> None:
    listener, fd = _listener()
    threading.Timer(0.05, os.write, (fd, b"add 10.0.0.1/32 4 123.5\n")).start()
    started = time.monotonic()
    assert listener.wait(listener.route_added, "10.0.0.1/32", 100.0, timeout=5) == 123.5
    assert time.monotonic() - started < 1.0
    os.close(fd)


def test_an_earlier_time_does_not_count_and_a_timeout_gives_none() -> None:
    listener, fd = _listener()
    os.write(fd, b"up tap0 50.0\n")
    assert listener.wait(listener.link_up, "tap0", 0.0, timeout=5) == 50.0
    started = time.monotonic()
    assert listener.wait(listener.link_up, "tap0", 50.0, timeout=0.2) is None  # not later
    assert 0.15 < time.monotonic() - started < 2.0
    os.write(fd, b"up tap0 60.0\n")
    assert listener.wait(listener.link_up, "tap0", 50.0, timeout=5) == 60.0
    os.close(fd)


def test_a_listener_that_is_gone_ends_the_wait() -> None:
    listener, fd = _listener()
    os.close(fd)  # the process exited: its output ends
    listener.thread.join(5)
    started = time.monotonic()
    assert listener.wait(listener.route_added, "10.0.0.9/32", 0.0, timeout=30) is None
    assert time.monotonic() - started < 1.0
