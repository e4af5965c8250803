"""The batch socket's datagrams: the array-made fill of a uniform run of requests sends
exactly the bytes of the request-by-request fill, and leaves everything else to it."""

from __future__ import annotations

import asyncio
import struct
from ipaddress import ip_address, ip_network

from hypothesis import given, settings
from hypothesis import strategies as st

from l3hostd.bgp.rib import prefix_key
from l3hostd.netlink import batch, wire


class Capture:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: object) -> int:
        self.sent.append(bytes(data))  # type: ignore[call-overload]
        return len(self.sent[-1])


FAST: list[bool] = []  # what the uniform fill answered, in the last datagrams() call


def datagrams(requests: list[bytes], uniform: bool, window: int = 4096) -> list[bytes]:
    async def go() -> list[bytes]:
        loop = asyncio.get_running_loop()
        cap = Capture()
        op = batch._BatchOp(loop, 5.0, cap, requests, 1000, window)  # type: ignore[arg-type]
        FAST.clear()
        real = op._fill_uniform

        def recorded(start: int, stop: int) -> bool:
            FAST.append(uniform and real(start, stop))
            return FAST[-1]

        op._fill_uniform = recorded  # type: ignore[method-assign]
        while op.sent < op.n and not op.future.done():
            before = op.sent
            op.fill()
            op.acked = op.sent  # as if the kernel had answered
            assert op.sent > before
        op.finish()
        return cap.sent

    return asyncio.run(go())


def packed_routes(n: int, hops: int) -> list[bytes]:
    packer = wire.KeyedRoutePacker(254, 45, 2048)
    attrs = wire.next_hop_attrs(2, tuple(ip_address(f"100.64.0.{i + 1}") for i in range(hops)))
    return packer.adds(((prefix_key(ip_network(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32")),
                         0) for i in range(n)), lambda _s, _f: attrs)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3000), st.integers(1, 3), st.sampled_from([1, 7, 256, 4096]))
def test_uniform_fill_is_byte_identical(n: int, hops: int, window: int) -> None:
    requests = packed_routes(n, hops)
    fast = datagrams(requests, True, window)
    assert all(FAST)  # every datagram made the uniform way
    slow = datagrams(requests, False, window)
    assert fast == slow
    # one ACK per datagram, on its last request; sequence numbers follow the requests
    seqs = []
    for d in fast:
        off, flags = 0, []
        while off < len(d):
            length, _t, f, seq, _pid = struct.unpack_from("=IHHII", d, off)
            flags.append(f & wire.NLM_F_ACK)
            seqs.append(seq)
            off += length
        assert flags[-1] and not any(flags[:-1])
    assert seqs == list(range(1000, 1000 + n))


def test_mixed_or_odd_requests_take_the_request_by_request_way() -> None:
    routes = packed_routes(10, 1)
    other = wire.route_del(ip_network("10.9.9.9/32"), protocol=45)
    mixed = [*routes[:5], other, *routes[5:]]
    assert datagrams(mixed, True) == datagrams(mixed, False)
    bad = bytearray(routes[0])
    struct.pack_into("=I", bad, 0, len(bad) + 4)  # a header that lies about its length

    async def go() -> BaseException | None:
        op = batch._BatchOp(asyncio.get_running_loop(), 5.0, Capture(),  # type: ignore[arg-type]
                            [bytes(bad)] * 3, 1, 256)
        op.fill()
        return op.future.exception() if op.future.done() else None

    assert isinstance(asyncio.run(go()), ValueError)  # refused, as before
