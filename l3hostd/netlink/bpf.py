"""Classic BPF socket filters (``SO_ATTACH_FILTER``) for netlink notification sockets.

A filter runs in the kernel on every message about to be queued to the socket and drops
what the reader does not want, before it costs a wake-up. A program is a list of
instructions ``(code, jt, jf, k)``; a notification is one netlink message per datagram,
so its fields sit at fixed offsets from the start (the ``nlmsghdr``, 16 bytes, then the
family header). Used by the kernel-learn watcher (:mod:`l3hostd.netlink.routewatch`)
and by the benchmarks' listener (``bench/listen.py``).
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Sequence

SO_ATTACH_FILTER = 26
LDB_ABS = 0x30  # BPF_LD | BPF_B | BPF_ABS: A = byte at offset k
JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K: if A == k skip jt instructions, else jf
RET_K = 0x06  # BPF_RET | BPF_K: keep k bytes (0: drop the message)
ACCEPT = 0xFFFFFFFF

Insn = tuple[int, int, int, int]


def attach(sock: socket.socket, program: Sequence[Insn]) -> None:
    """Attach ``program`` to ``sock`` (the kernel copies it: the buffer may go)."""
    code = b"".join(struct.pack("=HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(code)
    layout = "=HxxxxxxQ" if struct.calcsize("P") == 8 else "=HxxI"  # struct sock_fprog
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER,
                    struct.pack(layout, len(program), ctypes.addressof(buf)))
