"""Pure rendering of the suite's results: one table row per metric, Markdown, README section.

A :class:`Row` carries the raw samples of both speakers for one metric; the table shows
median / p95 / min-max (n) of each, the ratio of the medians l3hostd/BIRD, the target and
whether it is met. :func:`replace_section` puts the rendered text between the
``<!-- suite:begin -->`` and ``<!-- suite:end -->`` markers of ``bench/README.md``
(appending the section if the markers are missing), leaving the rest of the file as it is.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.stats import Summary, ratio, summarize

BEGIN = "<!-- suite:begin -->"
END = "<!-- suite:end -->"
KINDS = ("bird", "l3hostd")
KIND_LABEL = {"bird": "BIRD 2", "l3hostd": "l3hostd"}


@dataclass(frozen=True)
class Row:
    """One metric of one scenario, both speakers.

    ``samples``: kind -> values (a kind that was not measured is absent or empty);
    ``missing``: kind -> what to show instead of numbers (``timeout``, ``error``, ``n/a``);
    ``met``: the target verdict (None: no target, or not enough data to judge)."""

    scenario: str
    metric: str
    unit: str
    samples: Mapping[str, Sequence[float]]
    target: str = ""
    met: bool | None = None
    missing: Mapping[str, str] = field(default_factory=dict)

    def summary(self, kind: str) -> Summary:
        return summarize(list(self.samples.get(kind, ())))

    @property
    def ratio(self) -> float | None:
        return ratio(self.summary("l3hostd"), self.summary("bird"))

    def as_dict(self) -> dict[str, Any]:
        r = self.ratio
        return {
            "scenario": self.scenario,
            "metric": self.metric,
            "unit": self.unit,
            **{kind: self.summary(kind).as_dict() for kind in KINDS},
            "ratio": None if r is None else round(r, 3),
            "target": self.target,
            "met": self.met,
            "missing": dict(self.missing),
        }


def fmt(value: float) -> str:
    """A number for a table: 3 significant digits, no exponent, integers as integers."""
    if math.isnan(value):
        return "-"
    if value == int(value) and abs(value) >= 1:
        return f"{int(value)}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    if magnitude == 0:
        return "0"
    return f"{value:.2g}" if magnitude < 0.01 else f"{value:.3f}".rstrip("0")


def cell(s: Summary, missing: str = "-") -> str:
    if not s.n:
        return missing
    if s.n == 1:
        return f"{fmt(s.median)} (n=1)"
    return f"{fmt(s.median)} / {fmt(s.p95)} / {fmt(s.min)}-{fmt(s.max)} (n={s.n})"


def verdict(met: bool | None) -> str:
    return {True: "yes", False: "**no**", None: ""}[met]


def table(rows: Sequence[Row]) -> str:
    """The Markdown table of ``rows`` (pipes in text are escaped)."""
    head = [
        "",
        "metric",
        f"{KIND_LABEL['bird']}: median / p95 / min-max (n)",
        f"{KIND_LABEL['l3hostd']}: median / p95 / min-max (n)",
        "l3hostd/BIRD",
        "target",
        "met",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        r = row.ratio
        cells = [
            row.scenario,
            f"{row.metric} ({row.unit})" if row.unit else row.metric,
            cell(row.summary("bird"), row.missing.get("bird", "-")),
            cell(row.summary("l3hostd"), row.missing.get("l3hostd", "-")),
            "-" if r is None else f"{r:.2f}",
            row.target,
            verdict(row.met),
        ]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def machine_line(machine: Mapping[str, Any]) -> str:
    keys = (
        "cpu",
        "cpus",
        "mem_gib",
        "kernel",
        "python",
        "bird",
        "nft",
        "l3hostd",
        "uvloop",
        "pyroute2",
        "exabgp",
    )
    parts = [f"{key} {machine[key]}" for key in keys if machine.get(key) not in (None, "")]
    return "; ".join(parts)


def render(
    rows: Sequence[Row],
    machine: Mapping[str, Any],
    meta: Mapping[str, Any],
    statuses: Mapping[str, str],
    notes: Sequence[str] = (),
) -> str:
    """The whole suite section: how it was run, on what, the table and the notes."""
    mode = "quick" if meta.get("quick") else "full"
    names = meta.get("scenarios") or ["all"]
    command = " ".join(["python -m bench", *names, *(["--quick"] if meta.get("quick") else [])])
    out = [
        f"### Last results (`{command}`)",
        "",
        f"Last run {meta.get('started', '?')}, {mode} mode, {meta.get('runs', '?')} "
        f"repetition(s) per scenario alternating the speakers, "
        f"{meta.get('elapsed_s', '?')} s in all. Every sample is in "
        f"`{meta.get('out', 'bench/results/suite.json')}`; plots in `bench/results/`.",
        "",
        f"Machine: {machine_line(machine)}.",
        "",
        "Scenarios: " + ", ".join(f"{name} {status}" for name, status in statuses.items()) + ".",
        "",
        table(rows),
    ]
    if notes:
        out += ["", *[f"- {note}" for note in notes]]
    return "\n".join(out) + "\n"


def replace_section(text: str, section: str) -> str:
    """``text`` with everything between the suite markers replaced by ``section``."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}"
    start = text.find(BEGIN)
    end = text.find(END, start + len(BEGIN)) if start >= 0 else -1
    if start < 0 or end < 0:
        return text.rstrip("\n") + "\n\n" + block + "\n"
    return text[:start] + block + text[end + len(END) :]
