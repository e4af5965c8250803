"""BGP wire codec: the only module that imports exabgp (to be written; see the BGP issue)."""

from __future__ import annotations

from collections.abc import Sequence

from l3hostd.bgp.messages import (
    Announcement,
    Family,
    Negotiated,
    Notification,
    Open,
    RouteRefresh,
    Update,
)
from l3hostd.model import IPNetwork

HEADER_LEN = 19
MAX_MESSAGE_LEN = 4096


class Codec:
    """Encodes and decodes the messages of one session. Before :meth:`negotiate` only
    OPEN, KEEPALIVE and NOTIFICATION can be handled; after it, UPDATE and ROUTE-REFRESH
    use the negotiated families, 4-octet AS and ADD-PATH settings."""

    def __init__(self, local_asn: int, peer_asn: int) -> None:
        raise NotImplementedError

    def encode_open(self, message: Open) -> bytes:  # full message, header included
        raise NotImplementedError

    def decode_open(self, body: bytes) -> Open:  # body = bytes after the 19-byte header
        raise NotImplementedError

    def negotiate(self, sent: Open, received: Open, keepalive_time: int) -> Negotiated:
        raise NotImplementedError

    def encode_keepalive(self) -> bytes:
        raise NotImplementedError

    def encode_notification(self, message: Notification) -> bytes:
        raise NotImplementedError

    def decode_notification(self, body: bytes) -> Notification:
        raise NotImplementedError

    def encode_route_refresh(self, message: RouteRefresh) -> bytes:
        raise NotImplementedError

    def decode_route_refresh(self, body: bytes) -> RouteRefresh:
        raise NotImplementedError

    def decode_update(self, body: bytes) -> Update:
        raise NotImplementedError

    def encode_updates(
        self, announce: Sequence[Announcement], withdraw: Sequence[IPNetwork]
    ) -> list[bytes]:
        raise NotImplementedError

    def encode_end_of_rib(self, family: Family) -> bytes:
        raise NotImplementedError
