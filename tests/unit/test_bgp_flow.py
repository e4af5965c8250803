"""Backpressure: peers are held while the install backlog is high, released when it drains
or after ``max_hold`` at the latest."""

from __future__ import annotations

import asyncio

from l3hostd.bgp.flow import Backpressure


class Peer:
    def __init__(self) -> None:
        self.held = False
        self.calls: list[str] = []

    def hold(self) -> None:
        self.held = True
        self.calls.append("hold")

    def release(self) -> None:
        self.held = False
        self.calls.append("release")


def test_held_above_high_released_below_low() -> None:
    async def main() -> None:
        backlog = [0]
        peers = [Peer(), Peer()]
        bp = Backpressure(lambda: backlog[0], lambda: peers, high=100, low=10, max_hold=60)
        backlog[0] = 100
        bp.after_input()
        assert not bp.held and not any(p.held for p in peers)  # not above high
        backlog[0] = 101
        bp.after_input()
        bp.after_input()  # once only
        assert bp.held and all(p.calls == ["hold"] for p in peers) and bp.holds == 1
        backlog[0] = 10
        bp.after_pass()
        assert bp.held  # not yet below low
        backlog[0] = 9
        bp.after_pass()
        assert not bp.held and all(p.calls == ["hold", "release"] for p in peers)
        bp.after_pass()
        assert all(len(p.calls) == 2 for p in peers)

    asyncio.run(main())


def test_a_hold_ends_after_max_hold_even_if_the_backlog_stays() -> None:
    async def main() -> None:
        peers = [Peer()]
        bp = Backpressure(lambda: 10**6, lambda: peers, high=100, low=10, max_hold=0.05)
        bp.after_input()
        assert peers[0].held
        await asyncio.sleep(0.1)
        assert not peers[0].held and not bp.held
        bp.after_input()  # still behind: held again, a new bounded hold
        assert peers[0].held and bp.holds == 2
        bp.release()

    asyncio.run(main())
