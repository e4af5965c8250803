"""A NETLINK_NETFILTER socket that sends nf_tables batches (set elements) and reads the
kernel's answers: the IO half of :mod:`l3hostd.firewall.nfnl`.

How: one ``AF_NETLINK``/``NETLINK_NETFILTER`` socket, subscribed to nothing, with
``NETLINK_EXT_ACK`` (error strings) and ``NETLINK_CAP_ACK`` (errors echo only the request
header). :meth:`NfnlSocket.send` packs the operations into one batch and writes it with one
``send``. The kernel handles a netlink request synchronously inside that ``send``
(nfnetlink_rcv runs in the sender's context, module-load replays included), so every
answer is queued by the time it returns; they are read without blocking. The last message
carries NLM_F_ACK and nfnetlink answers in order (every failing message, then that ACK),
so success is confirmed, not inferred from silence: the batch is done when the last
message has been answered. Should that answer be missing after all (it never is on a
healthy kernel), the reader waits for it up to ``timeout`` seconds, then fails.

A failed batch changed nothing (nf_tables aborts the whole transaction); the first error
becomes :class:`NfnlError` (errno, the kernel's message, which set). ENOBUFS on the reply
path means answers were lost: the outcome is unknown and the caller must re-read the
table (the reconciler resyncs).

Why not the rtnetlink writer in :mod:`l3hostd.netlink.batch`: that one streams thousands
of independent requests with a window of ACKs; an nf_tables batch is one transaction
that must go in one datagram, so this is much smaller. It reuses that module's namespace
helper for tests (``netns``); the daemon runs in its own namespace.
"""

from __future__ import annotations

import errno as errno_mod
import os
import select
import socket
import time
from collections.abc import Sequence

from l3hostd.firewall import nfnl
from l3hostd.netlink.batch import (
    NETLINK_CAP_ACK,
    NETLINK_EXT_ACK,
    SO_RCVBUFFORCE,
    SO_SNDBUFFORCE,
    SOL_NETLINK,
    _set_bufsize,
    in_netns,
)

NETLINK_NETFILTER = 12
_FAMILIES = {nfnl.NFPROTO_INET: "inet", nfnl.NFPROTO_ARP: "arp"}


class NfnlError(OSError):
    """nf_tables refused a batch (nothing of it was applied), or the answers were lost
    (ENOBUFS: unknown outcome)."""

    def __init__(self, err: int, text: str) -> None:
        super().__init__(err, text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _open(rcvbuf: int, sndbuf: int) -> socket.socket:
    sock = socket.socket(
        socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER
    )
    try:
        _set_bufsize(sock, SO_RCVBUFFORCE, socket.SO_RCVBUF, rcvbuf)
        _set_bufsize(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, sndbuf)
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        sock.bind((0, 0))
        sock.connect((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class NfnlSocket:
    """nf_tables element batches over NETLINK_NETFILTER (see the module docstring).
    Blocking, not thread-safe: one caller at a time (the reconciler's apply)."""

    def __init__(
        self,
        netns: str | None = None,
        *,
        timeout: float = 5.0,
        rcvbuf: int = 4 << 20,
        sndbuf: int = 4 << 20,
    ) -> None:
        self.timeout = timeout
        self._sndbuf = sndbuf
        self._sock: socket.socket | None = (
            _open(rcvbuf, sndbuf) if netns is None
            else in_netns(netns, lambda: _open(rcvbuf, sndbuf))
        )
        self._seq = int(time.time()) & 0x3FFFFFFF
        self._buf = bytearray(256 * 1024)
        self.batches = 0  # batches committed

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def __enter__(self) -> NfnlSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, ops: Sequence[nfnl.SetOp]) -> None:
        """Apply ``ops`` as one nf_tables transaction; :class:`NfnlError` if refused."""
        msgs: list[bytes] = []
        what: list[nfnl.SetOp] = []  # message index -> its operation (for errors)
        for op in ops:
            for m in nfnl.messages(op):
                msgs.append(m)
                what.append(op)
        if not msgs:
            return
        sock = self._socket()
        self._drain(sock)  # nothing stale may be mistaken for an answer
        seq = self._take(len(msgs) + 2)
        b = nfnl.batch_messages(msgs, seq)
        if len(b.data) + 1024 > self._sndbuf:
            self._sndbuf = len(b.data) + (1 << 20)
            _set_bufsize(sock, SO_SNDBUFFORCE, socket.SO_SNDBUF, self._sndbuf)
        try:
            sock.send(b.data)
        except OSError as exc:
            raise NfnlError(exc.errno or errno_mod.EIO, f"nfnetlink: send failed: {exc}") from exc
        self._collect(sock, b, what)
        self.batches += 1

    def _collect(self, sock: socket.socket, b: nfnl.Batch, what: list[nfnl.SetOp]) -> None:
        first, last = b.begin_seq + 1, b.begin_seq + b.count
        done = False
        failure: nfnl.Reply | None = None
        deadline = time.monotonic() + self.timeout
        while not done:
            try:
                n = sock.recv_into(self._buf, len(self._buf), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                if failure is not None and failure.seq == b.begin_seq:
                    break  # the batch itself was refused: no per-message answers follow
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    raise NfnlError(
                        errno_mod.ETIMEDOUT,
                        f"nfnetlink: no answer to a batch of {b.count} messages after "
                        f"{self.timeout:g} s",
                    ) from None
                continue
            except OSError as exc:
                raise NfnlError(
                    exc.errno or errno_mod.EIO,
                    f"nfnetlink: answers lost ({exc}); outcome unknown",
                ) from exc
            for reply in nfnl.parse_replies(self._buf, n):
                if reply.seq == b.begin_seq:
                    if reply.errno and failure is None:
                        failure = reply
                elif first <= reply.seq <= last:
                    done = done or reply.seq == last
                    if reply.errno and (failure is None or failure.seq == b.begin_seq):
                        failure = reply
        if failure is not None:
            raise NfnlError(failure.errno, self._describe(failure, b, what))

    @staticmethod
    def _describe(r: nfnl.Reply, b: nfnl.Batch, what: list[nfnl.SetOp]) -> str:
        text = f"nfnetlink: {os.strerror(r.errno)}"
        idx = r.seq - b.begin_seq - 1
        if 0 <= idx < len(what):
            op = what[idx]
            family = _FAMILIES.get(op.family, str(op.family))
            verb = "flush" if op.flush else op.op
            text += f" ({verb} element in {family} {op.table} {op.set})"
        else:
            text += " (the transaction)"
        if r.message:
            text += f": {r.message}"
        return text

    def _socket(self) -> socket.socket:
        if self._sock is None:
            raise NfnlError(errno_mod.EBADF, "nfnetlink: socket closed")
        return self._sock

    def _take(self, n: int) -> int:
        seq = self._seq + 1
        if seq + n >= 1 << 31:
            seq = 1
        self._seq = seq + n
        return seq

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                sock.recv_into(self._buf, len(self._buf), socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno != errno_mod.ENOBUFS:
                    raise
