"""Histogram buckets for timing events on the hot path, without prometheus_client.

How it works
    :class:`Histogram` keeps one plain int per bucket (not cumulative), the sum and
    nothing else; :meth:`Histogram.observe` is a ``bisect`` and two additions (~0.2 us,
    no lock: the daemon is one event loop). :mod:`l3hostd.metrics` turns it into a
    Prometheus histogram at scrape time (cumulative ``le`` buckets, ``_sum``, ``_count``),
    with the same semantics as ``prometheus_client.Histogram``: a value equal to a bound
    falls into that bound's bucket (``le`` is "less than or equal").

Why it is built this way
    The objects that time events -- reconcilers, the BGP manager, the learned-route
    reconciler -- stay free of prometheus_client (pure and sans-IO modules must not pull
    in an HTTP server), and a histogram lives and dies with its owner: when a SIGHUP
    reload replaces a peer or a reconciler, its series follow at the next scrape with
    nothing to unregister. Observations are made once per batch (an apply, a pass, an
    UPDATE burst), never once per route.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

__all__ = ["APPLY_BUCKETS", "LATENCY_BUCKETS", "Histogram"]

#: Event-to-kernel and event-to-wire latencies: the target is sub-millisecond for one
#: change, seconds for a full table.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)
#: Duration of one reconciler apply (one batch of kernel or nft writes).
APPLY_BUCKETS: tuple[float, ...] = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)


class Histogram:
    """Fixed buckets, counts per bucket (the last one is +Inf) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must be strictly increasing")
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> Iterator[tuple[float, int]]:
        """``(upper bound, observations <= bound)``, ending with ``(inf, count)``."""
        total = 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            yield bound, total
