"""asyncio glue for one peer: sockets and timers around the sans-IO :mod:`~l3hostd.bgp.fsm`.

The session decides, this module only pumps: every input (bytes received, connection
made/failed/lost, timer due) is handed to the :class:`~l3hostd.bgp.fsm.Session` with
``loop.time()``, then its actions are carried out -- open a connection, write bytes,
close -- and its events (Established, UPDATE received, down...) go to the manager's
callback. One timer handle follows ``session.next_deadline()``.

The connection (active only, like a BIRD client of a route reflector): a TCP socket bound
to the configured source address, IP TTL / IPv6 hop limit 255 for multihop iBGP (1
otherwise), TCP_NODELAY, and TCP-MD5 (RFC 2385, ``TCP_MD5SIG``) when a password is set.
Writes go through the transport; ``writable()`` lets the manager's sender wait while more
than ``HIGH_WATER`` bytes are queued for a peer that reads slowly, so one stuck peer never
grows memory without bound or blocks the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from ipaddress import ip_address

from l3hostd.bgp import fsm
from l3hostd.bgp.messages import Notification
from l3hostd.model import IPAddress

log = logging.getLogger("l3hostd.bgp")

TCP_MD5SIG = 14
TCP_MD5SIG_MAXKEYLEN = 80
CONNECT_TIMEOUT = 10.0
HIGH_WATER = 1 << 20
LOW_WATER = 256 << 10
#: RFC 9687 §4: the SendHoldTimer's default, max(8 minutes, 2 x the hold time).
SEND_HOLD_MIN = 480

EventCallback = Callable[["PeerSpeaker", object], None]


def md5sig(peer: IPAddress, key: bytes) -> bytes:
    """``struct tcp_md5sig`` for ``setsockopt(IPPROTO_TCP, TCP_MD5SIG, ...)``."""
    if len(key) > TCP_MD5SIG_MAXKEYLEN:
        raise ValueError("TCP-MD5 key longer than 80 bytes")
    if peer.version == 4:
        addr = struct.pack("=H", socket.AF_INET) + b"\0\0" + peer.packed
    else:
        addr = struct.pack("=H", socket.AF_INET6) + b"\0\0" + b"\0" * 4 + peer.packed
    addr = addr.ljust(128, b"\0")  # struct __kernel_sockaddr_storage
    return addr + struct.pack("=BBHi", 0, 0, len(key), 0) + key.ljust(TCP_MD5SIG_MAXKEYLEN, b"\0")


#: Bytes of a read handed to the session at a time (a few UPDATEs; see ``_on_data``).
FEED_SLICE = 16384


class _Protocol(asyncio.Protocol):
    def __init__(self, speaker: PeerSpeaker) -> None:
        self.speaker = speaker
        self.transport: asyncio.Transport | None = None
        self._drained = asyncio.Event()
        self._drained.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing it
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)  # type: ignore[attr-defined]
        # Tell the session now: the peer's OPEN may be delivered before create_connection()
        # returns to the task that called it.
        self.speaker._on_made(self)

    def data_received(self, data: bytes) -> None:
        self.speaker._on_data(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._drained.set()
        self.speaker._on_lost(self, exc)

    def pause_writing(self) -> None:
        self._drained.clear()

    def resume_writing(self) -> None:
        self._drained.set()


class PeerSpeaker:
    def __init__(
        self,
        name: str,
        address: IPAddress,
        port: int,
        source: IPAddress | None,
        multihop: bool,
        password: bytes | None,
        session: fsm.Session,
        on_event: EventCallback,
        send_hold_time: int | None = None,
    ) -> None:
        self.name = name
        self.address = address
        self.port = port
        self.source = source
        self.multihop = multihop
        self.password = password
        self.session = session
        self._on_event = on_event
        self._loop = asyncio.get_running_loop()
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.local_address: IPAddress | None = None
        self.last_error = ""
        self._logged_error = ""
        self.send_hold_time = send_hold_time  # None: RFC 9687's default
        self._send_hold: asyncio.TimerHandle | None = None
        self._held = False  # reading paused by flow control
        self._unread = b""  # received, not yet handed to the session (from _unread_at)
        self._unread_at = 0

    # ---- control -------------------------------------------------------------------------

    def start(self) -> None:
        self.session.start(self._loop.time())
        self._pump()

    def stop(self, notification: Notification | None) -> None:
        """Stop the session: with a NOTIFICATION, or (None) by closing the connection only
        -- the graceful-restart way, so that the peer keeps our routes as stale."""
        self.session.stop(self._loop.time(), notification)
        self._pump()
        if self._connecting is not None:
            self._connecting.cancel()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def send(self, messages: list[bytes]) -> None:
        self.session.send_updates(messages, self._loop.time())
        self._pump()

    async def writable(self) -> None:
        """Wait while the peer's socket has more than HIGH_WATER bytes queued."""
        proto = self._protocol
        if proto is not None:
            await proto._drained.wait()

    def request_route_refresh(self, family: tuple[int, int]) -> None:
        self.session.request_route_refresh(family)
        self._pump()

    @property
    def write_buffer(self) -> int:
        proto = self._protocol
        return proto.transport.get_write_buffer_size() if proto and proto.transport else 0

    # ---- the pump ---------------------------------------------------------------------------

    def _pump(self) -> None:
        error = self.session.counters.last_error
        if error and error != self._logged_error:
            self._logged_error = error
            log.info("peer %s: %s (state %s)", self.name, error, self.session.state.name)
        for action in self.session.take_actions():
            if isinstance(action, fsm.Connect):
                self._connect()
            elif isinstance(action, fsm.Send):
                proto = self._protocol
                if proto is not None and proto.transport is not None:
                    proto.transport.write(action.data)
            elif isinstance(action, fsm.Disconnect):
                self._disconnect()
            else:
                self._on_event(self, action)
        self._arm_timer()
        self._watch_send_progress()

    # ---- RFC 9687 send hold timer -----------------------------------------------------------

    def _watch_send_progress(self) -> None:
        """Bytes we wrote that the kernel could not take (the peer's TCP window is closed)
        start the SendHoldTimer; an empty buffer at any write stops it. A peer that keeps
        sending KEEPALIVEs but never reads would otherwise hold the session (and our
        routes to it) forever: its hold timer never expires."""
        proto = self._protocol
        if proto is None or proto.transport is None:
            return
        if proto.transport.get_write_buffer_size() == 0:
            if self._send_hold is not None:
                self._send_hold.cancel()
                self._send_hold = None
            return
        if self._send_hold is None:
            negotiated = self.session.negotiated
            hold = negotiated.hold_time if negotiated is not None else 0
            if not hold:
                return  # no hold time, no send hold timer (RFC 9687 §3)
            limit = self.send_hold_time or max(SEND_HOLD_MIN, 2 * hold)
            self._send_hold = self._loop.call_later(limit, self._send_hold_expired, limit)

    def _send_hold_expired(self, limit: int) -> None:
        self._send_hold = None
        proto = self._protocol
        if proto is None or proto.transport is None:
            return
        queued = proto.transport.get_write_buffer_size()
        if queued == 0:
            return  # it drained since
        # The NOTIFICATION (8, Send Hold Timer Expired) could not be delivered either: the
        # connection is dropped, like any transport failure, and the session restarts.
        self.last_error = (f"send hold timer expired: {queued} bytes not taken by the peer "
                           f"for {limit}s (RFC 9687)")
        log.warning("peer %s: %s; closing the connection", self.name, self.last_error)
        proto.transport.abort()

    def _arm_timer(self) -> None:
        deadline = self.session.next_deadline()
        if self._timer is not None:
            if deadline is not None and abs(self._timer.when() - deadline) < 1e-6:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self.session.handle_timer(self._loop.time())
        self._pump()

    # ---- the connection -----------------------------------------------------------------

    def _connect(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            return
        self._connecting = asyncio.create_task(self._open(), name=f"bgp-connect-{self.name}")

    async def _open(self) -> None:
        family = socket.AF_INET if self.address.version == 4 else socket.AF_INET6
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ttl = 255 if self.multihop else 1
            if family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, ttl)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, ttl)
            if self.password:
                sock.setsockopt(socket.IPPROTO_TCP, TCP_MD5SIG, md5sig(self.address,
                                                                       self.password))
            if self.source is not None:
                sock.bind((str(self.source), 0))
            await asyncio.wait_for(
                self._loop.sock_connect(sock, (str(self.address), self.port)), CONNECT_TIMEOUT
            )
            await self._loop.create_connection(lambda: _Protocol(self), sock=sock)
        except (OSError, TimeoutError) as exc:
            sock.close()
            self.last_error = f"connect: {exc}"
            log.debug("peer %s: %s", self.name, self.last_error)
            self.session.connection_failed(self._loop.time())
            self._pump()
            return
        except asyncio.CancelledError:
            sock.close()
            raise

    def _on_made(self, proto: _Protocol) -> None:
        self._protocol = proto
        assert proto.transport is not None
        self.local_address = ip_address(proto.transport.get_extra_info("sockname")[0])
        self.session.connection_made(self._loop.time())
        self._pump()

    def _disconnect(self) -> None:
        proto = self._protocol
        self._protocol = None
        if proto is not None and proto.transport is not None:
            # flush a queued NOTIFICATION, then close; abort if the peer does not read
            transport = proto.transport
            transport.close()
            self._loop.call_later(2.0, transport.abort)

    def _on_data(self, proto: _Protocol, data: bytes) -> None:
        if proto is not self._protocol:
            return
        if self._unread:
            self._unread = self._unread[self._unread_at :] + data
        else:
            self._unread = data
        self._unread_at = 0
        self._feed()

    def _feed(self) -> None:
        # Fed in slices, each handed on before the next is decoded: one read can hold
        # 256 KiB, ~64 full UPDATEs or ~50k routes, and decoding all of them before the
        # RIB sees the first kept every decoded route alive at once (~10 MiB at the peak
        # of a bulk load, and fragmented memory after it). While held (:meth:`hold`), the
        # rest waits.
        proto = self._protocol
        data = self._unread
        now = self._loop.time()
        while self._unread_at < len(data) and not self._held:
            start = self._unread_at
            self._unread_at = start + FEED_SLICE
            self.session.receive_data(data[start : start + FEED_SLICE], now)
            self._pump()
            if proto is not self._protocol or self._unread is not data:
                return
        if self._unread_at >= len(data):
            self._unread = b""
            self._unread_at = 0

    def hold(self) -> None:
        """Stop reading from the peer (flow control: the kernel is behind)."""
        if self._held:
            return
        self._held = True
        proto = self._protocol
        if proto is not None and proto.transport is not None:
            proto.transport.pause_reading()

    def release(self) -> None:
        """Read again, starting with what was received but not yet decoded."""
        if not self._held:
            return
        self._held = False
        proto = self._protocol
        if proto is not None and proto.transport is not None:
            proto.transport.resume_reading()
        if self._unread:
            self._loop.call_soon(self._feed)

    def _on_lost(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is not self._protocol:
            return
        self._protocol = None
        if self._send_hold is not None:
            self._send_hold.cancel()
            self._send_hold = None
        if exc is not None:
            self.last_error = f"connection lost: {exc}"
        self.session.connection_lost(self._loop.time())
        self._pump()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._connecting is not None:
            self._connecting.cancel()
        proto = self._protocol
        self._protocol = None
        if proto is not None and proto.transport is not None:
            with contextlib.suppress(Exception):
                proto.transport.abort()
