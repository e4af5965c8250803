"""P6, firewall: full load and one-endpoint changes with 100 / 1000 / 5000 endpoints.

Runs :mod:`bench.firewall` (its own namespace, its own timings: the firewall reconciler's
path as the daemon drives it) as a subprocess, once per repetition, and parses the
table(s) it prints: a header line ``<unit> <size> <size> ...`` then one line per
measurement, ``<label> <value per size>`` in ms. Every parsed value is kept in the JSON.
The suite's table shows the daemon's full load and "add endpoint, known profile" at every
size and every other row at the largest size; the one-endpoint changes (labels starting
``add endpoint`` or ``change``, not the ``worst:`` case where every endpoint has a group
of its own, not the ``nft -f`` comparison) carry the <= 20 ms target at 5000 endpoints.
Labels are bench.firewall's: when they change, rows still appear (at the largest size).
There is no BIRD counterpart (BIRD has no firewall; Felix's iptables is not measured).
"""

from __future__ import annotations

import re
import sys
from typing import Any

from bench.guard import run_bounded
from bench.report import Row
from bench.scenarios.base import Context, Out, Scenario, measure, missing, pooled

SIZES = (100, 1000, 5000)
TARGET_MS = 20.0
ONE_ENDPOINT = re.compile(r"^(add endpoint|change)", re.I)
SHOWN_AT_ALL_SIZES = re.compile(r"^full load \(daemon|^add endpoint, known profile", re.I)
HIDDEN = re.compile(r"chains in the table", re.I)  # a count, kept in the JSON only


def parse_table(text: str) -> dict[str, dict[int, float]]:
    """``label -> size -> ms`` from bench.firewall's table(s). A header line is a word and
    the sizes (``ms 100 1000 5000``) and sets the columns of the lines under it; a line
    ending in one number per column is a measurement; anything else is skipped."""
    table: dict[str, dict[int, float]] = {}
    sizes: list[int] = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and all(p.isdigit() for p in parts[1:]) and not _number(parts[0]):
            sizes = [int(p) for p in parts[1:]]
            continue
        if not sizes or len(parts) <= len(sizes):
            continue
        values = [_number(v) for v in parts[-len(sizes):]]
        if any(v is None for v in values):
            continue
        label = " ".join(parts[: -len(sizes)])
        table.setdefault(label, {}).update(
            {size: v for size, v in zip(sizes, values, strict=True) if v is not None})
    return table


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _help() -> str:
    proc = run_bounded([sys.executable, "-m", "bench.firewall", "--help"], 60)
    return proc.stdout


def measure_firewall(changes: int, timeout: float, worst_sizes: str | None = None
                     ) -> dict[str, Any]:
    """One run of bench.firewall: ``label @size -> ms`` for every value it printed.
    ``worst_sizes``: its ``--worst-sizes`` (if it has that option)."""
    cmd = [
        sys.executable,
        "-m",
        "bench.firewall",
        "--sizes",
        ",".join(map(str, SIZES)),
        "--runs",
        str(changes),
    ]
    if worst_sizes is not None and "--worst-sizes" in _help():
        cmd += ["--worst-sizes", worst_sizes]
    proc = run_bounded(cmd, timeout)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        last = lines[-1] if lines else "(no output)"
        raise RuntimeError(
            f"bench.firewall exit {proc.returncode}: {last}\n{proc.stderr[-3000:]}")
    table = parse_table(proc.stdout)
    if not table:
        raise RuntimeError(f"bench.firewall printed no table: {proc.stdout[-1500:]}")
    return {
        f"{label} @{size}": ms for label, by_size in table.items() for size, ms in by_size.items()
    } | {"stdout": proc.stdout[-6000:]}


def run(ctx: Context, out: Out) -> None:
    changes = ctx.pick(20, 5)
    # the worst case (every endpoint in a group of its own) costs ~34 s for its full load
    # at 5000 endpoints alone: at 5000 only, and not at all with --quick
    worst = ctx.pick(str(max(SIZES)), "")
    out["params"] = {"sizes": SIZES, "changes_per_median": changes, "runs": ctx.runs,
                     "worst_sizes": "bench.firewall's default" if worst is None else worst}
    for rep in range(ctx.runs):
        measure(ctx, out, "firewall", "l3hostd", rep,
                lambda: measure_firewall(changes, ctx.pick(400, 150), worst))


def labels(out: Out) -> list[str]:
    """The measurement labels bench.firewall printed, in its order."""
    seen: dict[str, None] = {}
    for record in out.get("runs", []):
        for key in record.get("data", {}):
            if " @" in key:
                seen[key.rsplit(" @", 1)[0]] = None
    return list(seen)


def rows(out: Out) -> list[Row]:
    result = []
    for label in labels(out):
        if HIDDEN.search(label):
            continue
        for size in SIZES:
            if size != max(SIZES) and not SHOWN_AT_ALL_SIZES.search(label):
                continue
            samples = {"l3hostd": pooled(out, "firewall", "l3hostd", f"{label} @{size}")}
            target, met = "", None
            if size == max(SIZES) and ONE_ENDPOINT.search(label) and "nft" not in label:
                target = f"<= {TARGET_MS:.0f} ms"
                met = max(samples["l3hostd"]) <= TARGET_MS if samples["l3hostd"] else None
            result.append(
                Row(
                    "P6",
                    f"{label}, {size} endpoints",
                    "ms",
                    samples,
                    target,
                    met,
                    {"bird": "n/a", **missing(out, "firewall", ("l3hostd",))},
                )
            )
    if not result:
        result.append(
            Row(
                "P6",
                "firewall",
                "ms",
                {},
                "",
                None,
                {"bird": "n/a", **missing(out, "firewall", ("l3hostd",))},
            )
        )
    return result


SCENARIO = Scenario(
    "p6", "firewall (nftables) full load and one-endpoint change", (600, 200), run, rows
)
