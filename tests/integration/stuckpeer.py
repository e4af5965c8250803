"""A BGP peer that stops reading: the fault tool of ``test_faults_stuck_peer.py``.

Run in a namespace: ``python stuckpeer.py ADDRESS ASN ROUTER_ID [--rcvbuf BYTES]
[--keepalives]``. It listens on ADDRESS port 179 (passive, like a route reflector waiting
for its clients), accepts one connection, answers the OPEN with its own (hold time 90 s,
IPv4 unicast, four-octet AS; no graceful restart), exchanges KEEPALIVEs until the session
is Established on both sides, prints ``established`` and then never reads its socket
again: the receive buffer (small, ``--rcvbuf``, so a little traffic fills it) fills, the
TCP window closes and the speaker's writes pile up. With ``--keepalives`` it keeps
sending a KEEPALIVE every second (a peer whose reader hangs but whose timers run, so only
a send-side limit can notice); without it, it sends nothing either (a hung process) and
the speaker's hold timer has to end the session. It exits on SIGTERM or when its parent
(the lab) goes away.

The messages are built from raw bytes (RFC 4271 §4), independently of l3hostd's codec.
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import time

MARKER = b"\xff" * 16
OPEN, UPDATE, NOTIFICATION, KEEPALIVE = 1, 2, 3, 4


def message(kind: int, body: bytes = b"") -> bytes:
    return MARKER + struct.pack("!HB", 19 + len(body), kind) + body


def open_message(asn: int, router_id: str, hold_time: int = 90) -> bytes:
    caps = (
        b"\x01\x04\x00\x01\x00\x01"  # multiprotocol: IPv4 unicast (RFC 4760)
        + b"\x41\x04" + struct.pack("!I", asn)  # four-octet AS (RFC 6793)
    )
    params = b"\x02" + bytes([len(caps)]) + caps  # one Capabilities parameter (RFC 5492)
    my_as = asn if asn < 65536 else 23456
    body = struct.pack("!BHH", 4, my_as, hold_time) + ipaddress.IPv4Address(router_id).packed
    return message(OPEN, body + bytes([len(params)]) + params)


def read_message(conn: socket.socket) -> tuple[int, bytes]:
    header = _read(conn, 19)
    length, kind = struct.unpack("!HB", header[16:19])
    return kind, _read(conn, length - 19)


def _read(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise SystemExit("connection closed during the handshake")
        data += chunk
    return data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("address")
    parser.add_argument("asn", type=int)
    parser.add_argument("router_id")
    parser.add_argument("--rcvbuf", type=int, default=4096)
    parser.add_argument("--keepalives", action="store_true")
    args = parser.parse_args()
    family = socket.AF_INET6 if ":" in args.address else socket.AF_INET
    server = socket.socket(family, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # before listen(): the accepted socket inherits it, and the window scale is set by it
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)
    server.bind((args.address, 179))
    server.listen(1)
    print("listening", flush=True)
    conn, peer = server.accept()
    print(f"accepted {peer[0]}", flush=True)
    kind, _ = read_message(conn)
    if kind != OPEN:
        raise SystemExit(f"expected OPEN, got type {kind}")
    conn.sendall(open_message(args.asn, args.router_id) + message(KEEPALIVE))
    while True:  # until the speaker's KEEPALIVE: it is Established on its side too
        kind, body = read_message(conn)
        if kind == KEEPALIVE:
            break
        if kind == NOTIFICATION:
            raise SystemExit(f"NOTIFICATION {body[:2].hex()}")
    print("established", flush=True)
    # From here on nothing is read: the socket's receive queue fills and stays full.
    while True:
        if args.keepalives:
            try:
                conn.sendall(message(KEEPALIVE))
            except OSError as exc:
                print(f"send failed: {exc}", flush=True)
                args.keepalives = False
        time.sleep(1)


if __name__ == "__main__":
    main()
