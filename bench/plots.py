"""PNG plots of the suite's results (matplotlib, the optional ``bench`` dependency group).

- ``<prefix>_p1_latency.png`` (prefix ``suite`` for ``bench/results/suite.json``):
  empirical CDF of every P1 latency, BIRD and l3hostd on the same axes (log-scaled ms),
  one panel per event kind;
- ``<prefix>_p3_bulk.png``: P3's times per case, both speakers side by side (box plots over
  the repetitions, every sample drawn as a dot);
- ``<prefix>_p4_memory.png``: P4's memory curve, peak and steady RSS against learned routes,
  with the fitted lines whose slopes are the per-route cost.

matplotlib is imported inside :func:`plot_all` (Agg backend, no display), so the rest of
the suite runs without it; without it the plots are skipped with a message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.scenarios import p1_latency, p3_bulk, p4_memory
from bench.scenarios.base import pooled

COLOURS = {"bird": "tab:blue", "l3hostd": "tab:orange"}
LABELS = {"bird": "BIRD 2", "l3hostd": "l3hostd"}


def plot_all(scenarios: dict[str, Any], directory: Path, prefix: str = "suite") -> list[Path]:
    """Write ``<prefix>_<scenario>_<what>.png`` for the scenarios that have data; return
    the files written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plots skipped: matplotlib is not installed (pip install -e '.[bench]')")
        return []
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, fn in (("p1", _p1), ("p3", _p3), ("p4", _p4)):
        out = scenarios.get(name)
        if not out or not out.get("runs"):
            continue
        fig = fn(plt, out)
        if fig is None:
            continue
        path = directory / f"{prefix}_{name}_{_SUFFIX[name]}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


_SUFFIX = {"p1": "latency", "p3": "bulk", "p4": "memory"}


def _p1(plt: Any, out: dict[str, Any]) -> Any:
    keys = [
        (key, label)
        for key, label, _ in p1_latency.KEYS
        if any(pooled(out, "events", kind, key) for kind in LABELS)
    ]
    if not keys:
        return None
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    cols = min(2, len(keys))
    nrows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 3.6 * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[len(keys) :]:
        ax.set_visible(False)
    for ax, (key, label) in zip(flat, keys, strict=False):
        for kind in LABELS:
            values = sorted(v for v in pooled(out, "events", kind, key) if v > 0)
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(
                values,
                ys,
                where="post",
                color=COLOURS[kind],
                label=f"{LABELS[kind]} (n={len(values)})",
            )
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("ms")
        ax.set_ylim(0, 1.02)
        ax.set_title(label, fontsize=9)
        ax.set_ylabel("fraction of events")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("P1 event latency hv1 -> hv2's FIB (CDF)")
    fig.tight_layout()
    return fig


def _p3(plt: Any, out: dict[str, Any]) -> Any:
    panels = [
        (f"bulk_{n}", "established_to_all_s", f"{n // 1000}k /32s: Established -> FIB")
        for n in p3_bulk.BULK_SIZES
    ]
    panels += [
        (f"cold_{n}", "start_to_all_s", f"cold start {n // 1000}k: start -> at RR")
        for n in p3_bulk.COLD_SIZES
    ]
    panels = [p for p in panels if any(pooled(out, p[0], kind, p[1]) for kind in LABELS)]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.8), squeeze=False)
    for ax, (case, key, title) in zip(axes[0], panels, strict=True):
        data = [pooled(out, case, kind, key) for kind in LABELS]
        positions = [i + 1 for i, values in enumerate(data) if values]
        box = ax.boxplot(
            [values for values in data if values],
            positions=positions,
            widths=0.5,
            patch_artist=True,
        )
        for patch, kind in zip(
            box["boxes"], [k for k, v in zip(LABELS, data, strict=True) if v], strict=True
        ):
            patch.set_facecolor(COLOURS[kind])
            patch.set_alpha(0.4)
        for i, values in enumerate(data):
            ax.plot(
                [i + 1] * len(values), values, "o", color=list(COLOURS.values())[i], markersize=4
            )
        ax.set_xticks([1, 2], [LABELS[k] for k in LABELS])
        ax.set_xlim(0.4, 2.6)
        ax.set_ylim(bottom=0)
        ax.set_ylabel("s")
        ax.set_title(title, fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("P3 bulk")
    fig.tight_layout()
    return fig


def _p4(plt: Any, out: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for kind in LABELS:
        for key, style, what in (("peak_rss_mib", "o", "peak"), ("steady_rss_mib", "s", "steady")):
            xs, ys = p4_memory.points(out, kind, key)
            if not xs:
                continue
            drawn = True
            ax.plot(
                [x / 1000 for x in xs],
                ys,
                style,
                color=COLOURS[kind],
                fillstyle="full" if what == "peak" else "none",
                label=f"{LABELS[kind]} {what}",
            )
            line = p4_memory.fit(out, kind, key)
            if line is not None:
                top = max(xs)
                ax.plot(
                    [0, top / 1000],
                    [line.intercept, line.intercept + line.slope * top],
                    "-" if what == "peak" else "--",
                    color=COLOURS[kind],
                    alpha=0.6,
                    label=f"  fit: {line.slope * 1024 * 1024:.0f} B/route",
                )
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(p4_memory.TARGET_MIB, color="grey", linestyle=":", label="target at 100k")
    ax.set_xlabel("learned routes (thousands)")
    ax.set_ylabel("RSS (MiB)")
    ax.set_ylim(bottom=0)
    ax.set_title("P4 hv2 speaker memory vs learned routes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
