"""A fast, batched rtnetlink request socket for asyncio (and uvloop), without pyroute2.

Why: pyroute2 encodes ~3.7k routes/s; the kernel applies ~50k route adds/s when the
requests arrive packed many per datagram. :class:`RtnlBatchSocket` sends requests built by
:mod:`l3hostd.netlink.wire` (plain ``bytes``, one netlink message each) in datagrams of up
to 256 messages / 64 KiB, and matches every acknowledgement to its request by sequence
number. It also runs kernel-filtered dumps (routes by protocol/table, neighbours by
interface) on the same socket.

How:

* One ``AF_NETLINK``/``NETLINK_ROUTE`` ``SOCK_RAW`` socket, non-blocking, subscribed to no
  multicast group (a request socket must never receive events), with
  ``NETLINK_GET_STRICT_CHK`` (the kernel honours the filters in dump requests),
  ``NETLINK_EXT_ACK`` (error strings), ``NETLINK_CAP_ACK`` (error replies echo only the
  request header) and large buffers (``SO_RCVBUFFORCE`` when permitted).
* Driven by ``loop.add_reader()``: ``loop.create_datagram_endpoint()`` fails for
  ``AF_NETLINK`` on uvloop. The reader is registered at the first operation and stays
  (replies that arrive with no operation in progress are discarded).
* The kernel processes a request datagram synchronously inside ``send()``. Only the last
  request of a datagram asks for an ACK; a failing request is always answered. At most
  ``max_in_flight`` requests (256 by default; the daemon's socket 1024, one full datagram
  of route messages) are unacknowledged at any time, so the answers of a datagram that
  fails entirely fit the receive buffer. The answers to the first datagram are read right
  after ``send()``, which is where the kernel has just written them: an event's few
  requests are done without a trip through the event loop (~0.1 ms on a CPU back from
  idle), and without a timer (armed only when an operation still waits). After that,
  each time the reader drains answers it refills the window from the reader callback
  itself, so a bulk operation costs one event-loop iteration per datagram and yields
  between them. A run of requests of one length, type
  and flags (a bulk of routes) is framed with array operations (:meth:`_BatchOp.
  _fill_uniform`), not request by request.
* Every operation has a progress timeout (default 5 s without any reply -> exception).
  A socket error (ENOBUFS: ACKs lost) fails the operation at once with
  :class:`NetlinkSocketError`. Replies with sequence numbers of an earlier (failed)
  operation are ignored.
* Operations on one socket are serialized with an :class:`asyncio.Lock`.
* Dumps parse records inside the reader callback with the cyclic GC paused for that
  callback: the records are acyclic, and the collector otherwise doubles the parse time of
  100k routes.

``netns``: the socket can be opened inside another network namespace (a path such as
``/run/netns/NAME``, or just ``NAME``). A short-lived thread does ``setns()`` and creates the
socket there; the socket stays bound to that namespace, the calling thread never changes
namespace. The daemon runs inside its namespace itself (``netns=None``); the argument is
for tests and benchmarks.
"""

from __future__ import annotations

import array
import asyncio
import collections
import contextlib
import ctypes
import errno as errno_mod
import gc
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

from l3hostd.netlink import wire

T = TypeVar("T")

SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NETLINK_GET_STRICT_CHK = 12
SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
CLONE_NEWNET = 0x40000000

DEFAULT_TIMEOUT = 5.0
MAX_IN_FLIGHT = 256
MAX_DATAGRAM = 64 * 1024
_RECV_BUFFER = 256 * 1024
# Work per reader wake-up before yielding back to the loop (a 100k-route dump would
# otherwise be parsed in one callback).
_MAX_BYTES_PER_WAKEUP = 128 * 1024
_DUMP_RETRIES = 3

#: ``results`` of a failed batch: sent, but no ACK (the kernel may have applied it).
RESULT_UNKNOWN = -1
#: ``results`` of a failed batch: never sent (certainly not applied).
RESULT_NOT_SENT = -2
_PENDING = RESULT_UNKNOWN
_FLAGS_SEQ = struct.Struct("=HI")  # nlmsg_flags (offset 6) + nlmsg_seq (offset 8)
_I32 = struct.Struct("=i")
_REQ_ACK = wire.NLM_F_REQUEST | wire.NLM_F_ACK
_WORDS_ARE_U32 = array.array("I").itemsize == 4  # (the uniform fill's netlink header words)
#: Requests from which the uniform fill is worth its set-up (a single event's few go one
#: by one: less code on the path of an event)
UNIFORM_MIN = 16


class NetlinkError(OSError):
    """The kernel refused a request or a dump: ``errno`` and the extended-ACK message."""

    def __init__(self, err: int, message: str | None = None, *, what: str = "netlink") -> None:
        text = f"{what}: {os.strerror(err)}"
        if message:
            text += f" ({message})"
        super().__init__(err, text)
        self.kernel_message = message


class NetlinkSocketError(NetlinkError):
    """The socket failed during an operation (e.g. ENOBUFS: acknowledgements were lost;
    the kernel may have applied requests whose result is unknown). ``results`` holds the
    errno per request known so far, RESULT_UNKNOWN (-1) for a request sent without a known
    outcome, RESULT_NOT_SENT (-2) for one never sent (batch operations only)."""

    def __init__(self, err: int, message: str | None = None, *, what: str = "netlink") -> None:
        super().__init__(err, message, what=what)
        self.results: list[int] = []


class NetlinkTimeoutError(TimeoutError):
    """No reply from the kernel within the timeout. ``results`` as for
    :class:`NetlinkSocketError`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.results: list[int] = []


class Result(NamedTuple):
    """Outcome of one request: ``errno`` (0 = success) and the kernel's extack message."""

    errno: int
    message: str | None = None


# --- socket creation ---------------------------------------------------------------------


def _setns(fd: int, nstype: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, nstype)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _set_bufsize(sock: socket.socket, force_opt: int, opt: int, size: int) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, force_opt, size)  # ignores rmem_max; needs CAP_NET_ADMIN
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, opt, size)  # capped at net.core.[rw]mem_max


def _new_socket(rcvbuf: int, sndbuf: int) -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK,
        socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC,
        socket.NETLINK_ROUTE,
    )
    try:
        _set_bufsize(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        _set_bufsize(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))  # the kernel picks the port id; groups 0: no events
        sock.connect((0, 0))  # the kernel
    except BaseException:
        sock.close()
        raise
    return sock


def netns_path(netns: str) -> str:
    """``NAME`` -> ``/run/netns/NAME``; paths are returned unchanged."""
    return netns if "/" in netns else f"/run/netns/{netns}"


def open_netlink_socket(
    netns: str | None = None, *, rcvbuf: int = 8 << 20, sndbuf: int = 4 << 20
) -> socket.socket:
    """A configured NETLINK_ROUTE request socket, created in ``netns`` if given (by a
    short-lived thread that enters the namespace; the caller's thread is not affected)."""
    if netns is None:
        return _new_socket(rcvbuf, sndbuf)
    return in_netns(netns, lambda: _new_socket(rcvbuf, sndbuf))


def in_netns(netns: str, make: Callable[[], T]) -> T:
    """``make()`` run in network namespace ``netns`` (a name or a path) by a short-lived
    thread that enters it: a socket made there stays in it; the caller's thread is not
    affected. Its exception, if any, is raised here."""
    path = netns_path(netns)
    box: list[T | BaseException] = []

    def worker() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            box.append(make())
        except BaseException as exc:
            box.append(exc)

    thread = threading.Thread(target=worker, name="l3hostd-netns", daemon=True)
    thread.start()
    thread.join()
    result = box[0]
    if isinstance(result, BaseException):
        raise result
    return result


# --- operations --------------------------------------------------------------------------


class _Op:
    """One operation in progress (a batch or a dump): fed by the reader callback."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.timeout = timeout
        self.last_progress = loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        """Start the progress timeout (not needed by an operation over at once)."""
        if self._timer is None and not self.future.done():
            self._timer = self.loop.call_later(self.timeout, self._check_timeout)

    def feed(self, buf: bytearray, n: int) -> None:
        raise NotImplementedError

    def settled(self) -> bool:
        """Is every answer to what was sent in? Then the reader stops: a further recv()
        would only block (and raising that costs ~40 us on a cold CPU)."""
        return self.future.done()

    def after_drain(self) -> None:
        """Called once the reader has read what was queued or owed (or reached its
        budget)."""

    def socket_failed(self, exc: OSError) -> bool:
        """The socket reported an error (recv/send). Fail the operation, or return True to
        have the reader keep draining what is queued first."""
        raise NotImplementedError

    def describe_pending(self) -> str:
        return ""

    def _check_timeout(self) -> None:
        self._timer = None
        if self.future.done():
            return
        idle = self.loop.time() - self.last_progress
        if idle >= self.timeout:
            self.fail(
                NetlinkTimeoutError(
                    f"netlink: no reply from the kernel for {self.timeout:g} s"
                    f"{self.describe_pending()}"
                )
            )
        else:
            self._timer = self.loop.call_later(self.timeout - idle, self._check_timeout)

    def finish(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.future.done():
            self.future.set_result(None)

    def fail(self, exc: BaseException) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.future.done():
            self.future.set_exception(exc)


class _BatchOp(_Op):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        sock: socket.socket,
        requests: Sequence[bytes],
        base_seq: int,
        max_in_flight: int,
    ) -> None:
        super().__init__(loop, timeout)
        self.sock = sock
        self.requests = requests
        self.n = len(requests)
        self.base = base_seq
        self.max_in_flight = max_in_flight
        self.errors: list[int] = [RESULT_NOT_SENT] * self.n
        self.messages: dict[int, str] = {}
        self.sent = 0
        self.acked = 0
        self.overflow: OSError | None = None
        self._chunks: collections.deque[tuple[int, int]] = collections.deque()

    def describe_pending(self) -> str:
        return f"; {self.n - self.acked} of {self.n} requests unacknowledged"

    def fill(self) -> None:
        """Send requests until ``max_in_flight`` are unacknowledged (one datagram).

        Only the *last* request of a datagram asks for an ACK (NLM_F_ACK): the kernel
        answers every failing request with an NLMSG_ERROR anyway, and processes a
        datagram's requests in order, so the last one's ACK means "every earlier request
        without an error succeeded". One ACK per datagram instead of one per request:
        100k routes cost ~400 reads instead of 100k."""
        room = self.max_in_flight - (self.sent - self.acked)
        if room <= 0 or self.sent >= self.n:
            return
        start = self.sent
        stop = min(self.n, start + room)
        if stop - start >= UNIFORM_MIN and self._fill_uniform(start, stop):
            return
        buf = bytearray()
        seq = self.base + start
        i = start
        requests = self.requests
        hdr_unpack = wire.NLMSGHDR.unpack_from
        patch = _FLAGS_SEQ.pack_into
        last_off = 0
        last_flags = 0
        while i < stop:
            msg = requests[i]
            off = len(buf)
            if off and off + len(msg) > MAX_DATAGRAM:
                break
            length, mtype, mflags, _seq, _pid = hdr_unpack(msg, 0)
            if length != len(msg):
                self.fail(ValueError(f"request {i}: nlmsg_len {length} != {len(msg)} bytes"))
                return
            if mflags & wire.NLM_F_DUMP and mtype & 3 == 2:  # RTM_GET* with NLM_F_DUMP
                self.fail(ValueError(f"request {i} is a dump request: use dump()"))
                return
            buf += msg
            if length & 3:
                buf += b"\0" * (4 - (length & 3))
            patch(buf, off + 6, (mflags | wire.NLM_F_REQUEST) & ~wire.NLM_F_ACK, seq)
            last_off, last_flags = off, mflags
            seq += 1
            i += 1
        patch(buf, last_off + 6, last_flags | _REQ_ACK, seq - 1)
        self._send(buf, start, i)

    def _send(self, datagram: bytearray | array.array[int], start: int, end: int) -> None:
        """Send requests ``start:end`` (one datagram); they then wait for their answers."""
        try:
            self.sock.send(datagram)
        except OSError as exc:
            self.fail(self._socket_error(exc.errno or errno_mod.EIO, f"send failed: {exc}"))
            return
        self.errors[start:end] = [_PENDING] * (end - start)
        self._chunks.append((start, end))
        self.sent = end

    def _fill_uniform(self, start: int, stop: int) -> bool:
        """:meth:`fill` for a run of requests of one length and one type and flags (a bulk
        of routes from :class:`~l3hostd.netlink.wire.KeyedRoutePacker`'s templates): the
        same datagram, made with array operations instead of a header read and a patch
        per request (~0.4 us a route). False, and nothing sent, for anything else."""
        requests = self.requests
        size = len(requests[start])
        if size < 16 or size & 3 or not _WORDS_ARE_U32:
            return False
        stop = min(stop, start + MAX_DATAGRAM // size)
        chunk = requests[start:stop]
        if len(set(map(len, chunk))) != 1:
            return False
        n = len(chunk)
        words = array.array("I")
        words.frombytes(b"".join(chunk))
        step = size >> 2
        if words[0::step] != array.array("I", [size]) * n:
            return False  # a header that does not give its own length: the slow path says
        kinds = words[1::step]  # nlmsg_type | nlmsg_flags << 16 (host order)
        first = kinds[0]
        if kinds.count(first) != n:
            return False
        mtype, mflags = first & 0xFFFF, first >> 16
        if mflags & wire.NLM_F_DUMP and mtype & 3 == 2:
            return False  # a dump request: the slow path fails the operation
        quiet = mtype | ((mflags | wire.NLM_F_REQUEST) & ~wire.NLM_F_ACK) << 16
        words[1::step] = array.array("I", [quiet]) * n
        seq = self.base + start
        words[2::step] = array.array("I", range(seq, seq + n))
        words[1 + (n - 1) * step] = mtype | (mflags | _REQ_ACK) << 16  # the last one: ACK
        self._send(words, start, start + n)
        return True

    def feed(self, buf: bytearray, n: int) -> None:
        base, sent, errors = self.base, self.sent, self.errors
        i32 = _I32.unpack_from
        for mtype, mflags, seq, po, pe in wire.iter_headers(buf, 0, n):
            if mtype != wire.NLMSG_ERROR:
                continue
            idx = seq - base
            if not (0 <= idx < sent and errors[idx] == _PENDING):
                continue
            err = -i32(buf, po)[0]
            errors[idx] = err
            self.acked += 1
            if err and mflags & wire.NLM_F_ACK_TLVS:
                _e, text = wire.parse_error(buf, po, pe, mflags)
                if text:
                    self.messages[idx] = text
            chunks = self._chunks
            while chunks and chunks[0][1] - 1 <= idx:
                # the datagram's last request is answered: the silent ones before it
                # succeeded (a failure would have come, in order, before this answer)
                first, end = chunks.popleft()
                for k in range(first, end - 1):
                    if errors[k] == _PENDING:
                        errors[k] = 0
                        self.acked += 1
        self.last_progress = self.loop.time()

    def settled(self) -> bool:
        # (after an overflow, what is still queued is read before the operation fails)
        return self.future.done() or (self.acked >= self.sent and self.overflow is None)

    def after_drain(self) -> None:
        if self.future.done():
            return
        if self.overflow is not None:
            err = self.overflow.errno or errno_mod.ENOBUFS
            self.fail(self._socket_error(err, "receive buffer overflow, acknowledgements lost"))
        elif self.acked >= self.n:
            self.finish()
        else:
            self.fill()

    def _socket_error(self, err: int, text: str) -> NetlinkSocketError:
        exc = NetlinkSocketError(err, text + self.describe_pending(), what="netlink batch")
        exc.results = list(self.errors)
        return exc

    def fail(self, exc: BaseException) -> None:
        if isinstance(exc, NetlinkTimeoutError):
            exc.results = list(self.errors)
        super().fail(exc)

    def socket_failed(self, exc: OSError) -> bool:
        if exc.errno == errno_mod.ENOBUFS and not self.future.done():
            # ACKs were dropped; the ones still queued are valid: collect them, then fail
            # (after_drain) with the results that are known.
            self.overflow = exc
            return True
        self.fail(self._socket_error(exc.errno or errno_mod.EIO, str(exc)))
        return False


class _DumpOp(_Op, Generic[T]):
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        seq: int,
        msg_type: int,
        parse: Callable[[bytearray, int, int], T],
        sink: Callable[[T], None] | None = None,
    ) -> None:
        super().__init__(loop, timeout)
        self.seq = seq
        self.msg_type = msg_type
        self.parse = parse
        self.records: list[T] = []
        self.sink = sink
        self.interrupted = False
        self.error: tuple[int, str | None] | None = None

    def feed(self, buf: bytearray, n: int) -> None:
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._feed(buf, n)
        finally:
            if gc_was_enabled:
                gc.enable()
        self.last_progress = self.loop.time()

    def _feed(self, buf: bytearray, n: int) -> None:
        want_seq, want_type, parse, append = (
            self.seq,
            self.msg_type,
            self.parse,
            self.records.append if self.sink is None else self.sink,
        )
        for mtype, mflags, seq, po, pe in wire.iter_headers(buf, 0, n):
            if seq != want_seq or self.future.done():
                continue
            if mflags & wire.NLM_F_DUMP_INTR:
                self.interrupted = True
            if mtype == want_type:
                append(parse(buf, po, pe))
            elif mtype == wire.NLMSG_DONE:
                err, text = wire.parse_done(buf, po, pe, mflags)
                if err:
                    self.error = (err, text)
                self.finish()
            elif mtype == wire.NLMSG_ERROR:
                err, text = wire.parse_error(buf, po, pe, mflags)
                if err:
                    self.error = (err, text)
                self.finish()

    def socket_failed(self, exc: OSError) -> bool:
        self.fail(NetlinkSocketError(exc.errno or errno_mod.EIO, str(exc), what="netlink dump"))
        return False


# --- the socket --------------------------------------------------------------------------


class RtnlBatchSocket:
    """Batched rtnetlink requests and kernel-filtered dumps on one request socket.

    Requests are complete netlink messages as ``bytes`` (build them with
    :mod:`l3hostd.netlink.wire`, e.g. ``wire.route_add(...)``, ``wire.neigh_del(...)``);
    their ``nlmsg_seq`` is replaced and ``NLM_F_REQUEST | NLM_F_ACK`` is set on sending.
    """

    def __init__(
        self,
        netns: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_in_flight: int = MAX_IN_FLIGHT,
        rcvbuf: int = 8 << 20,
        sndbuf: int = 4 << 20,
    ) -> None:
        if not 1 <= max_in_flight <= 4096:
            raise ValueError("max_in_flight must be 1..4096")
        self.netns = netns
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self._sock: socket.socket | None = open_netlink_socket(netns, rcvbuf=rcvbuf, sndbuf=sndbuf)
        self._rbuf = bytearray(_RECV_BUFFER)
        self._seq = 0
        self._op: _Op | None = None
        self._reader_loop: asyncio.AbstractEventLoop | None = None
        self._unclean = False  # the last operation may have left replies queued
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle --

    def fileno(self) -> int:
        return self._socket().fileno()

    @property
    def closed(self) -> bool:
        return self._sock is None

    def close(self) -> None:
        """Close the socket; an operation in progress fails with NetlinkSocketError."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        op, self._op = self._op, None
        reader_loop, self._reader_loop = self._reader_loop, None
        if reader_loop is not None:
            with contextlib.suppress(Exception):  # the loop may be closed already
                reader_loop.remove_reader(sock.fileno())
        if op is not None:
            op.fail(NetlinkSocketError(errno_mod.EBADF, "socket closed", what="netlink"))
        sock.close()

    async def __aenter__(self) -> RtnlBatchSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __enter__(self) -> RtnlBatchSocket:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- requests --

    async def execute(
        self, requests: Sequence[bytes], *, timeout: float | None = None
    ) -> list[int]:
        """Send ``requests`` (at most ``max_in_flight`` unacknowledged, many per datagram)
        and return the errno of each, in input order (0 = success).

        Raises :class:`NetlinkTimeoutError` if the kernel stops replying for ``timeout``
        seconds and :class:`NetlinkSocketError` on a socket error; both carry ``results``
        (errno per request; RESULT_UNKNOWN = -1, RESULT_NOT_SENT = -2)."""
        errors, _messages = await self._execute(requests, timeout)
        return errors

    async def execute_detailed(
        self, requests: Sequence[bytes], *, timeout: float | None = None
    ) -> list[Result]:
        """Like :meth:`execute`, with the kernel's extended-ACK message of each failure."""
        errors, messages = await self._execute(requests, timeout)
        return [Result(err, messages.get(i)) for i, err in enumerate(errors)]

    async def _execute(
        self, requests: Sequence[bytes], timeout: float | None
    ) -> tuple[list[int], dict[int, str]]:
        if not requests:
            return [], {}
        async with self._get_lock():
            loop = asyncio.get_running_loop()
            sock = self._socket()
            op = _BatchOp(
                loop,
                self.timeout if timeout is None else timeout,
                sock,
                requests,
                self._take_seqs(len(requests)),
                self.max_in_flight,
            )
            await self._run(loop, sock, op, op.fill)
            return op.errors, op.messages

    # -- dumps --

    async def dump_routes(
        self,
        family: int,
        protocol: int,
        table: int | None = None,
        *,
        oif: int | None = None,
        skip_protocols: frozenset[int] = frozenset(),
        timeout: float | None = None,
    ) -> list[wire.RouteRecord]:
        """Routes of ``family`` (AF_INET / AF_INET6) with ``rtm_protocol == protocol`` (0 =
        any) in ``table`` (None = every table), filtered by the kernel. A table that does not
        exist yields []. Routes whose protocol is in ``skip_protocols`` are dropped before
        they are parsed (one byte read each): the kernel filters by one protocol, not by
        "all but ours", and a host may hold 100k routes of ours."""
        if not skip_protocols:
            parse: Callable[[bytearray, int, int], wire.RouteRecord | None] = wire.parse_route
        else:

            def parse(buf: bytearray, start: int, end: int) -> wire.RouteRecord | None:
                return None if buf[start + 5] in skip_protocols else wire.parse_route(
                    buf, start, end
                )  # byte 5 of struct rtmsg: rtm_protocol

        out: list[wire.RouteRecord] = []

        def keep(rec: wire.RouteRecord | None) -> None:
            if rec is not None:
                out.append(rec)

        try:
            await self._dump(
                lambda seq: wire.route_dump_request(
                    family, protocol=protocol, table=table, oif=oif, seq=seq
                ),
                wire.RTM_NEWROUTE,
                parse,
                timeout,
                keep,
                out.clear,
            )
            return out
        except NetlinkError as exc:
            if table and exc.errno == errno_mod.ENOENT:  # "FIB table does not exist"
                return []
            raise

    async def fold_routes(
        self,
        family: int,
        protocol: int,
        table: int,
        sink: Callable[[wire.RouteBrief], None],
        restart: Callable[[], None],
        *,
        timeout: float | None = None,
    ) -> None:
        """Like :meth:`dump_routes`, but each route goes to ``sink`` as it is parsed
        (:func:`wire.parse_route_brief`) and nothing is accumulated: reading 100k routes
        costs no memory. ``restart()`` runs before every attempt (a dump interrupted by
        concurrent changes is read again from the start)."""
        try:
            await self._dump(
                lambda seq: wire.route_dump_request(
                    family, protocol=protocol, table=table, seq=seq
                ),
                wire.RTM_NEWROUTE,
                wire.parse_route_brief,
                timeout,
                sink,
                restart,
            )
        except NetlinkError as exc:
            if table and exc.errno == errno_mod.ENOENT:  # "FIB table does not exist"
                return
            raise

    async def dump_neighbours(
        self, family: int, ifindex: int | None = None, *, timeout: float | None = None
    ) -> list[wire.NeighRecord]:
        """Neighbour entries of ``family`` (AF_INET / AF_INET6 / AF_UNSPEC = both), only
        those of ``ifindex`` if given (filtered by the kernel)."""
        return await self._dump(
            lambda seq: wire.neigh_dump_request(family, ifindex=ifindex, seq=seq),
            wire.RTM_NEWNEIGH,
            wire.parse_neigh,
            timeout,
        )

    async def dump_addresses(
        self, family: int, ifindex: int | None = None, *, timeout: float | None = None
    ) -> list[wire.AddrRecord]:
        """Interface addresses of ``family`` (AF_UNSPEC = both), only those of ``ifindex``
        if given (filtered by the kernel)."""
        return await self._dump(
            lambda seq: wire.addr_dump_request(family, ifindex=ifindex, seq=seq),
            wire.RTM_NEWADDR,
            wire.parse_addr,
            timeout,
        )

    async def dump(
        self,
        request: Callable[[int], bytes],
        msg_type: int,
        parse: Callable[[bytearray, int, int], T],
        *,
        timeout: float | None = None,
    ) -> list[T]:
        """A generic dump: ``request(seq)`` builds the dump request, every reply message
        of ``msg_type`` is converted with ``parse(buf, payload_offset, payload_end)``."""
        return await self._dump(request, msg_type, parse, timeout)

    async def _dump(
        self,
        request: Callable[[int], bytes],
        msg_type: int,
        parse: Callable[[bytearray, int, int], T],
        timeout: float | None,
        sink: Callable[[T], None] | None = None,
        restart: Callable[[], None] | None = None,
    ) -> list[T]:
        async with self._get_lock():
            loop = asyncio.get_running_loop()
            sock = self._socket()
            for _attempt in range(_DUMP_RETRIES):
                if restart is not None:
                    restart()
                seq = self._take_seqs(1)
                op: _DumpOp[T] = _DumpOp(
                    loop, self.timeout if timeout is None else timeout, seq, msg_type, parse,
                    sink,
                )
                msg = request(seq)

                def start(op: _DumpOp[T] = op, msg: bytes = msg) -> None:
                    try:
                        sock.send(msg)
                    except OSError as exc:
                        op.socket_failed(exc)

                await self._run(loop, sock, op, start)
                if op.error is not None:
                    raise NetlinkError(op.error[0], op.error[1], what="netlink dump")
                if not op.interrupted:
                    return op.records
            raise NetlinkError(
                errno_mod.EAGAIN,
                f"dump interrupted by concurrent changes {_DUMP_RETRIES} times",
                what="netlink dump",
            )

    # -- machinery --

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise NetlinkSocketError(errno_mod.EBADF, "socket closed", what="netlink")
        return self._sock

    def _get_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:  # first use, or a new loop
            self._lock = asyncio.Lock()
            self._lock_loop = loop
        return self._lock

    def _take_seqs(self, n: int) -> int:
        base = self._seq + 1
        if base + n >= 1 << 32:
            base = 1
        self._seq = base + n - 1
        return base

    async def _run(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        op: _Op,
        start: Callable[[], None],
    ) -> None:
        """One operation: ``start()`` sends, the reader feeds ``op`` until it is done.

        The reader stays registered between operations (replies with no operation are
        discarded): adding and removing it cost two ``epoll_ctl`` calls per operation, on
        the path of every event. After an operation that did not end cleanly (timeout,
        socket error, cancellation) the queue is drained of its leftovers and the reader
        registered anew."""
        fd = sock.fileno()
        if self._unclean:
            self._drain_stale(sock)
            self._unclean = False
            # registered again: libuv stops a poll handle for good when the socket reports
            # an error (POLLERR, e.g. ENOBUFS after an overflow), and uvloop's reader with it
            self._drop_reader(fd)
        if self._reader_loop is not loop:
            self._drop_reader(fd)
            loop.add_reader(fd, self._on_readable)
            self._reader_loop = loop
        self._op = op
        clean = False
        try:
            start()
            if not op.future.done():
                # The kernel answers (the first part of) what was just sent inside send():
                # read it now, not one trip through the event loop later (~0.1 ms on the
                # path of every event). Nothing there yet: one recv() that would block.
                self._on_readable()
            op.arm()
            await op.future
            clean = True
        finally:
            if self._op is op:
                self._op = None
            if not clean:
                self._unclean = True
            op.finish()  # cancels the timer if we were cancelled

    def _drop_reader(self, fd: int) -> None:
        reader_loop, self._reader_loop = self._reader_loop, None
        if reader_loop is not None:
            with contextlib.suppress(Exception):  # an earlier loop, maybe closed
                reader_loop.remove_reader(fd)

    def _drain_stale(self, sock: socket.socket) -> None:
        """Discard what an earlier, failed operation left queued (late ACKs, the rest of
        an abandoned dump) and a pending socket error. After an overflow the kernel
        reports ENOBUFS once and then drops further replies *silently* until the receive
        queue has been emptied, so a new operation must start from an empty queue."""
        buf, size = self._rbuf, len(self._rbuf)
        while True:
            try:
                sock.recv_into(buf, size)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno_mod.ENOBUFS:
                    raise

    def _on_readable(self) -> None:
        sock, op = self._sock, self._op
        if sock is None:
            return
        buf = self._rbuf
        size = len(buf)
        budget = _MAX_BYTES_PER_WAKEUP
        recv_into = sock.recv_into
        while budget > 0:
            try:
                n = recv_into(buf, size, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                self._unclean = True  # libuv may have stopped our reader (POLLERR)
                if op is not None and op.socket_failed(exc):
                    continue
                return
            budget -= n + 512
            if op is None or op.future.done():
                continue  # stale replies of an earlier operation
            if n > size:
                op.fail(NetlinkSocketError(errno_mod.EMSGSIZE, f"datagram of {n} bytes truncated"))
                return
            try:
                op.feed(buf, n)
            except Exception as exc:  # malformed message: fail loudly, not hang
                op.fail(exc)
                return
            if op.settled():
                break  # nothing more is owed (what else is queued is read at the next turn)
        if op is not None:
            op.after_drain()
