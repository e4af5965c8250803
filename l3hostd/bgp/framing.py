"""BGP message framing: split a TCP byte stream into messages (RFC 4271 §4.1, §6.1).

Pure and small on purpose. TCP gives a byte stream; BGP puts a fixed 19-byte header in
front of every message::

    16 bytes marker (all ones) | 2 bytes length (19..4096, header included) | 1 byte type

:class:`FrameReader` accumulates received bytes and hands out one ``(type, body)`` at a
time, so the session state machine can change state between two messages of one read
(after a NOTIFICATION the rest of the chunk must not be looked at). A header error is
reported as soon as the 19 header bytes are there, before the body has arrived, as a
:class:`~l3hostd.bgp.messages.BgpError` carrying the NOTIFICATION RFC 4271 §6.1 asks for:

- marker not all ones: Message Header Error / Connection Not Synchronized (1/1);
- length < 19, > 4096, or wrong for the type (OPEN >= 29, UPDATE >= 23, NOTIFICATION >= 21,
  KEEPALIVE == 19, ROUTE-REFRESH == 23): Bad Message Length (1/2), data = the length field;
- type not 1..5: Bad Message Type (1/3), data = the type octet.

The 4096 limit holds because we never advertise Extended Messages (RFC 8654).

Efficiency: a 64 KiB read carries hundreds of UPDATEs. The buffer is a ``bytearray`` read
through an offset; consumed bytes are dropped once per :meth:`FrameReader.compact` (the
session calls it at the end of each ``receive_data``), so handling a chunk is linear in its
size, never quadratic.

KEEPALIVE and NOTIFICATION are also encoded and decoded here, with ``struct`` only: the
session must be able to send a NOTIFICATION and a KEEPALIVE whatever state the (ExaBGP
backed) codec is in, including after the codec raised something unexpected.
"""

from __future__ import annotations

import struct

from l3hostd.bgp.messages import (
    HDR_BAD_MESSAGE_LENGTH,
    HDR_BAD_MESSAGE_TYPE,
    HDR_CONNECTION_NOT_SYNCHRONIZED,
    BgpError,
    ErrorCode,
    MessageType,
    Notification,
)

MARKER = b"\xff" * 16
HEADER_LEN = 19
MAX_MESSAGE_LEN = 4096  # RFC 4271 §4.1; no Extended Messages (RFC 8654)

_HEADER = struct.Struct("!16sHB")

#: (minimum, maximum) total length per message type (RFC 4271 §4.2-4.5, §6.1; RFC 2918 §3).
LENGTH_BOUNDS: dict[int, tuple[int, int]] = {
    MessageType.OPEN: (29, MAX_MESSAGE_LEN),
    MessageType.UPDATE: (23, MAX_MESSAGE_LEN),
    MessageType.NOTIFICATION: (21, MAX_MESSAGE_LEN),
    MessageType.KEEPALIVE: (19, 19),
    MessageType.ROUTE_REFRESH: (23, 23),
}

KEEPALIVE = MARKER + struct.pack("!HB", HEADER_LEN, MessageType.KEEPALIVE)


def check_header(buf: bytes | bytearray, offset: int = 0) -> tuple[int, int]:
    """Validate the 19-byte header at ``offset``; return ``(type, length)`` or raise
    :class:`BgpError`."""
    marker, length, msg_type = _HEADER.unpack_from(buf, offset)
    if marker != MARKER:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HDR_CONNECTION_NOT_SYNCHRONIZED)
    bounds = LENGTH_BOUNDS.get(msg_type)
    if not HEADER_LEN <= length <= MAX_MESSAGE_LEN:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HDR_BAD_MESSAGE_LENGTH, struct.pack("!H", length))
    if bounds is None:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HDR_BAD_MESSAGE_TYPE, bytes([msg_type]))
    if not bounds[0] <= length <= bounds[1]:
        raise BgpError(ErrorCode.MESSAGE_HEADER, HDR_BAD_MESSAGE_LENGTH, struct.pack("!H", length))
    return msg_type, length


def frame(msg_type: int, body: bytes = b"") -> bytes:
    """One message: header + body (no checks beyond the 16-bit length)."""
    return MARKER + struct.pack("!HB", HEADER_LEN + len(body), msg_type) + body


def encode_keepalive() -> bytes:
    return KEEPALIVE


def encode_notification(message: Notification) -> bytes:
    """NOTIFICATION (RFC 4271 §4.5). Data is truncated so the message fits in 4096 bytes."""
    data = message.data[: MAX_MESSAGE_LEN - 21]
    return frame(
        MessageType.NOTIFICATION,
        struct.pack("!BB", message.code & 0xFF, message.subcode & 0xFF) + data,
    )


def decode_notification(body: bytes) -> Notification:
    """The body of a NOTIFICATION (at least 2 bytes: :func:`check_header` made sure)."""
    if len(body) < 2:
        raise BgpError(
            ErrorCode.MESSAGE_HEADER,
            HDR_BAD_MESSAGE_LENGTH,
            struct.pack("!H", HEADER_LEN + len(body)),
        )
    return Notification(body[0], body[1], bytes(body[2:]))


class FrameReader:
    """Accumulates stream bytes; :meth:`next_frame` returns complete messages one by one."""

    __slots__ = ("_buf", "_offset")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._offset = 0

    def __len__(self) -> int:
        """Bytes received and not yet returned as a message."""
        return len(self._buf) - self._offset

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._buf += data

    def next_frame(self) -> tuple[int, bytes] | None:
        """The next complete message as ``(type, body)``, or None if more bytes are needed.

        Raises :class:`BgpError` on a header error; the reader is then unusable until
        :meth:`clear` (the session goes Idle and clears it anyway)."""
        buf = self._buf
        start = self._offset
        if len(buf) - start < HEADER_LEN:
            return None
        # No memoryview here: an exported buffer (kept alive by a traceback) would make
        # the bytearray impossible to resize afterwards.
        msg_type, length = check_header(buf, start)
        end = start + length
        if len(buf) < end:
            return None
        body = bytes(buf[start + HEADER_LEN : end])
        self._offset = end
        return msg_type, body

    def compact(self) -> None:
        """Drop the bytes already returned (once per read, so the cost stays linear)."""
        if self._offset:
            del self._buf[: self._offset]
            self._offset = 0

    def clear(self) -> None:
        self._buf.clear()
        self._offset = 0
