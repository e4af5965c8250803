"""Flow control from the kernel back to the peers: stop reading while routes queue up.

A route reflector sends a full table as fast as TCP carries it; the codec decodes and the
RIB selects ~300k routes/s, the kernel installs ~150k/s. Without a brake, the difference
piles up as dirty keys of the learned-route reconciler (and, before the slices of
:meth:`~l3hostd.bgp.speaker.PeerSpeaker._feed`, as decoded UPDATEs): at 100k routes a
backlog of tens of thousands of entries, megabytes at the peak of the process's memory
for nothing, since the routes cannot reach the kernel any sooner.

So after each UPDATE the manager asks :meth:`Backpressure.after_input`: when the backlog is
above ``high``, every peer is *held* (the transport stops reading, bytes already read
wait undecoded in the speaker); after each dataplane pass :meth:`Backpressure.after_pass`
releases them once the backlog is below ``low``. TCP's window does the rest: the
reflector simply waits. A hold never lasts more than ``max_hold`` seconds, so a kernel
that keeps failing writes (their keys stay dirty, with backoff) cannot starve a session of
its KEEPALIVEs into a hold-timer expiry.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Protocol


class Holdable(Protocol):
    def hold(self) -> None: ...

    def release(self) -> None: ...


class Backpressure:
    def __init__(
        self,
        backlog: Callable[[], int],
        peers: Callable[[], Iterable[Holdable]],
        high: int = 16384,
        low: int = 4096,
        max_hold: float = 1.0,
    ) -> None:
        self._backlog = backlog
        self._peers = peers
        self.high = high
        self.low = low
        self.max_hold = max_hold
        self.held = False
        self.holds = 0  # how many times input was held (a metric)
        self._timer: asyncio.TimerHandle | None = None

    def after_input(self) -> None:
        if self.held or self._backlog() <= self.high:
            return
        self.held = True
        self.holds += 1
        for peer in self._peers():
            peer.hold()
        self._timer = asyncio.get_running_loop().call_later(self.max_hold, self.release)

    def after_pass(self) -> None:
        if self.held and self._backlog() < self.low:
            self.release()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for peer in self._peers():
            peer.release()
