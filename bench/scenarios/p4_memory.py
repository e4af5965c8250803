"""P4, memory: hv2's speaker RSS at 0, 10k, 100k and 500k learned routes (a curve).

Each point is :func:`bench.scenarios.p3_bulk.measure_bulk`: the reflector originates N
/32s, hv2's speaker starts and installs them; then its peak RSS (``VmHWM``, the load's
transients included) and, after a settle time, its steady RSS (``VmRSS``). Points P3
already measured in the same run (10k, 100k) are reused, not measured again. The
per-route cost is the slope of a least-squares line through the steady points (and,
separately, the peak points), in MiB per 100k routes (and bytes per route); its intercept
is the daemon's base size. The 500k point is bounded: it times out on a slow machine and is
then reported as such.
"""

from __future__ import annotations

from functools import partial

from bench.report import Row
from bench.scenarios.base import Context, Out, Scenario, is_timeout, measure, missing, pooled
from bench.scenarios.p3_bulk import measure_bulk
from bench.stats import LineFit, linear_fit

SIZES = (0, 10_000, 100_000, 500_000)
TARGET_SIZE = 100_000
TARGET_MIB = 50.0


def run(ctx: Context, out: Out) -> None:
    settle = ctx.pick(5.0, 2.0)
    out["params"] = {"sizes": SIZES, "runs": ctx.runs, "settle_s": settle}
    shared: dict[str, list[dict[str, object]]] = ctx.shared.get("bulk", {})
    timed_out: set[tuple[str, int]] = set()
    for size in SIZES:
        for rep in range(ctx.runs):
            for kind in ctx.order(rep):
                reuse = shared.get(f"{kind}/{size}", [])
                if rep < len(reuse):
                    out.setdefault("runs", []).append(
                        {
                            "case": f"rss_{size}",
                            "kind": kind,
                            "rep": rep,
                            "data": reuse[rep],
                            "from": "p3",
                        }
                    )
                    continue
                if (kind, size) in timed_out:
                    continue  # it timed out in an earlier repetition: once is enough
                timeout = ctx.pick(180, 90)
                data = measure(ctx, out, f"rss_{size}", kind, rep,
                               partial(measure_bulk, kind, size, timeout=timeout, settle=settle))
                if data is None and is_timeout(out["runs"][-1].get("error", "")):
                    timed_out.add((kind, size))


def points(out: Out, kind: str, key: str) -> tuple[list[float], list[float]]:
    """(routes, MiB) of every successful measurement of ``kind``."""
    xs: list[float] = []
    ys: list[float] = []
    for size in SIZES:
        for value in pooled(out, f"rss_{size}", kind, key):
            xs.append(float(size))
            ys.append(value)
    return xs, ys


def fit(out: Out, kind: str, key: str) -> LineFit | None:
    return linear_fit(*points(out, kind, key))


def rows(out: Out) -> list[Row]:
    result = []
    for key, what in (("peak_rss_mib", "peak RSS (VmHWM)"), ("steady_rss_mib", "steady RSS")):
        for size in SIZES:
            case = f"rss_{size}"
            samples = {kind: pooled(out, case, kind, key) for kind in ("bird", "l3hostd")}
            target, met = "", None
            if size == TARGET_SIZE:
                target = f"<= {TARGET_MIB:.0f} MiB"
                if samples["l3hostd"]:
                    met = max(samples["l3hostd"]) <= TARGET_MIB
            result.append(
                Row(
                    "P4",
                    f"hv2 speaker {what}, {size:,} learned routes",
                    "MiB",
                    samples,
                    target,
                    met,
                    missing(out, case),
                )
            )
        slopes: dict[str, list[float]] = {}
        for kind in ("bird", "l3hostd"):
            line = fit(out, kind, key)
            slopes[kind] = [] if line is None else [line.slope * 100_000]
        result.append(
            Row("P4", f"per-route cost, slope of {what}", "MiB per 100k routes", slopes, "stated")
        )
    return result


def cost_notes(out: Out) -> list[str]:
    """One sentence per speaker: base size and bytes per route of the steady RSS fit."""
    notes = []
    for kind in ("bird", "l3hostd"):
        line = fit(out, kind, "steady_rss_mib")
        if line is None:
            continue
        notes.append(
            f"P4 {kind}: steady RSS ~ {line.intercept:.1f} MiB + "
            f"{line.slope * 1024 * 1024:.0f} bytes x learned routes "
            f"(least squares over {line.n} points, r2 {line.r2:.3f})."
        )
    return notes


SCENARIO = Scenario("p4", "memory curve of hv2's speaker", (1500, 420), run, rows)
