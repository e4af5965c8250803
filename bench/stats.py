"""Pure statistics of the benchmark suite: percentiles, summaries, ratios, a line fit.

No IO and no lab imports, so the unit tests (no root) cover it. A percentile is the
nearest-rank value of the sorted samples (``pct([1, 2, 3, 4], 95) == 4``): with a few dozen
samples an interpolated p95 would invent a latency nobody measured.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def pct(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0..100) by rank on the sorted values; ValueError if empty."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Summary:
    """Median, p95 and range of a set of samples (``n == 0``: there were none)."""

    n: int
    median: float = math.nan
    p95: float = math.nan
    min: float = math.nan
    max: float = math.nan

    def as_dict(self, digits: int = 4) -> dict[str, float | int]:
        if not self.n:
            return {"n": 0}
        return {
            "n": self.n,
            "median": round(self.median, digits),
            "p95": round(self.p95, digits),
            "min": round(self.min, digits),
            "max": round(self.max, digits),
        }


def summarize(values: Sequence[float]) -> Summary:
    if not values:
        return Summary(0)
    return Summary(
        len(values), statistics.median(values), pct(values, 95), min(values), max(values)
    )


def summary(values: Sequence[float], digits: int = 3) -> dict[str, float | int]:
    """:func:`summarize` as a rounded dict (the form ``bench.bgp`` always printed)."""
    return summarize(values).as_dict(digits)


def ratio(numerator: Summary, denominator: Summary) -> float | None:
    """Ratio of the medians (l3hostd / BIRD); None when either side has no samples or the
    denominator's median is not above 0 (a ratio to nothing, or to a time difference that
    came out negative, says nothing)."""
    if not numerator.n or not denominator.n or denominator.median <= 0:
        return None
    return numerator.median / denominator.median


@dataclass(frozen=True)
class LineFit:
    """``y = intercept + slope * x`` by least squares, and how well it fits (r²)."""

    slope: float
    intercept: float
    r2: float
    n: int


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> LineFit | None:
    """Least-squares line through the points; None with fewer than two distinct x."""
    if len(xs) != len(ys):
        raise ValueError("xs and ys differ in length")
    n = len(xs)
    if n < 2 or len(set(xs)) < 2:
        return None
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    slope = sxy / sxx
    intercept = my - slope * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys, strict=True))
    r2 = 1.0 - ss_res / ss_tot if ss_tot else 1.0
    return LineFit(slope, intercept, r2, n)


def cpu_percent(ticks: int, seconds: float, clk_tck: int = 100) -> float:
    """CPU time in clock ticks over a wall-clock window, as % of one core."""
    if seconds <= 0:
        raise ValueError("empty window")
    return 100.0 * ticks / clk_tck / seconds
