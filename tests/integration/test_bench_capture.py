"""bench/hops.py's tcpdump capture in a namespace: it starts, captures BGP segments with
their payload, and a tcpdump that cannot start is an error at once, not a hang."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from bench.hops import Capture
from l3hostd.lab import Lab, LabError
from l3hostd.netlink import batch


def test_capture_sees_a_bgp_payload(lab: Lab) -> None:
    ns = lab.netns("cap")
    ns.ip("addr", "add", "127.0.0.2/8", "dev", "lo")
    capture = Capture(lab, ns)

    def server() -> socket.socket:
        s = socket.socket()
        s.bind(("127.0.0.1", 179))
        s.listen()
        return s

    def client() -> socket.socket:
        return socket.socket()

    srv = batch.in_netns(ns.name, server)
    cli = batch.in_netns(ns.name, client)
    accepted: list[socket.socket] = []
    thread = threading.Thread(target=lambda: accepted.append(srv.accept()[0]))
    thread.start()
    try:
        cli.connect(("127.0.0.1", 179))
        cli.sendall(b"\xff" * 16 + b"\x00\x13\x04")  # a KEEPALIVE
        thread.join(5)
        time.sleep(0.1)
        segments, offset = capture.segments()
    finally:
        for s in (cli, srv, *accepted):
            s.close()
    assert [(s.dst, s.payload[-1]) for s in segments] == [("127.0.0.1", 4)]
    assert abs(offset - (time.time() - time.monotonic())) < 0.01


def test_a_tcpdump_that_cannot_start_is_an_error(lab: Lab, monkeypatch: Any) -> None:
    ns = lab.netns("capbad")
    real = ns.popen

    def bad_filter(*args: str, **kwargs: Any) -> Any:
        return real(*(a if a != "tcp port 179" else "tcp port nonsense" for a in args),
                    **kwargs)

    monkeypatch.setattr(ns, "popen", bad_filter)
    started = time.monotonic()
    with pytest.raises(LabError, match="unknown port"):
        Capture(lab, ns)
    assert time.monotonic() - started < 5
