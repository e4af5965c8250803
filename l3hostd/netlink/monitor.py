"""Link monitor: RTM_NEWLINK / RTM_DELLINK events from a dedicated netlink socket.

The socket is subscribed to RTMGRP_LINK only. Route events are deliberately not
subscribed: a 50k-route burst killed a route-subscribed socket after 1,280 events, and the
reconcilers know what they wrote; routes the kernel flushes silently are derived from link
events (down, delete). The receive buffer is 8 MiB (SO_RCVBUFFORCE as root).

Each event carries the device's complete state, so the latest message for an ifindex *is*
a re-read of the kernel at that moment; the daemon keys everything on the ifindex (a rename
keeps it). When the kernel drops messages (ENOBUFS: the buffer overflowed, e.g. 10,000
TAPs created at once) ``on_overflow`` is called and the daemon re-dumps all links and
resyncs: events are hints, the dump is the truth.

The socket is driven with ``loop.add_reader`` (uvloop-safe) and its messages are decoded by
``wire.parse_link`` (~5 us each). A wake-up reads until nothing is queued, asking
:class:`~l3hostd.netlink.queued.Queued` before each further read.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable

from l3hostd.model import Link
from l3hostd.netlink.driver import parse_link_messages
from l3hostd.netlink.queued import Queued

log = logging.getLogger("l3hostd.netlink.monitor")

#: Bytes read per notification datagram. The kernel sends each event in its own small
#: datagram (a few hundred bytes, at most NLMSG_GOODSIZE); a 1 MiB buffer cost a 1 MiB
#: allocation per event (~10 us), for nothing.
RECV_SIZE = 1 << 16

RTMGRP_LINK = 0x1
SO_RCVBUFFORCE = 33
NETLINK_NO_ENOBUFS = 5  # not set: we want to know about overflows
SOL_NETLINK = 270
RCVBUF = 8 << 20


class LinkMonitor:
    def __init__(
        self,
        on_link: Callable[[Link], None],
        on_link_removed: Callable[[int], None],
        on_overflow: Callable[[], None],
        on_drained: Callable[[], None] | None = None,
    ) -> None:
        self._on_link = on_link
        self._on_removed = on_link_removed
        self._on_overflow = on_overflow
        #: called once what one wake-up read has been handed over (all its events)
        self._on_drained = on_drained
        self._sock: socket.socket | None = None
        self._queued: Queued | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.events = 0
        self.overflows = 0

    def start(self) -> None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        sock.bind((0, RTMGRP_LINK))
        sock.setblocking(False)
        self._sock = sock
        self._queued = Queued(sock)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._on_readable)

    def stop(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            self._queued = None

    def _on_readable(self) -> None:
        assert self._sock is not None and self._queued is not None
        queued = self._queued
        overflowed = False
        for _ in range(256):  # bound the work per wake-up; the reader fires again
            try:
                data = self._sock.recv(RECV_SIZE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overflowed = True
                    continue
                log.error("link monitor socket failed: %s; resyncing", exc)
                overflowed = True
                break
            try:
                for present, link in parse_link_messages(data):
                    self.events += 1
                    if present:
                        self._on_link(link)
                    else:
                        self._on_removed(link.ifindex)
            except Exception:  # a message we cannot parse must not kill the monitor
                log.exception("cannot parse a link event; resyncing")
                overflowed = True
            if not queued():  # (not a recv() that would block: see l3hostd.netlink.queued)
                break
        if overflowed:
            self.overflows += 1
            log.warning("netlink link events overflowed (ENOBUFS): full resync")
            self._on_overflow()
        if self._on_drained is not None:
            self._on_drained()
