"""What every suite scenario shares: its description, the run context, recorded samples.

A scenario is a :class:`Scenario`: ``run(ctx, out)`` measures and appends one record per
measurement to ``out["runs"]`` (``{"case", "kind", "rep", "data" | "error",
"elapsed_s"}``) through :func:`measure`, so that whatever was measured before a time-out
or a failure is kept; ``rows(out)`` turns the records into table rows
(:class:`bench.report.Row`). Samples of one metric are pooled over repetitions by
:func:`pooled`. :meth:`Context.order` alternates which speaker goes first in each
repetition, so that drift of the (shared) machine hits both alike.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.guard import ScenarioTimeout
from bench.report import Row
from l3hostd.birdlab import SpeakerKind

Out = dict[str, Any]


@dataclass
class Context:
    """How the suite runs: quick or full, repetitions, speakers, shared results."""

    quick: bool = False
    runs: int = 3
    kinds: list[SpeakerKind] = field(default_factory=lambda: ["bird", "l3hostd"])
    #: results one scenario hands to another in the same run (P3's bulk loads to P4)
    shared: dict[str, Any] = field(default_factory=dict)
    verbose: bool = True
    #: P1 also splits each route event at the reflector (``--hops``, :mod:`bench.hops`)
    hops: bool = False
    #: P1's pause between two changes, seconds (``--gap``)
    gap: float = 0.05

    def order(self, rep: int) -> list[SpeakerKind]:
        """The speakers in repetition ``rep``: bird first on even, l3hostd first on odd."""
        return list(self.kinds) if rep % 2 == 0 else list(reversed(self.kinds))

    def log(self, message: str) -> None:
        if self.verbose:
            print(message, flush=True)

    def pick(self, full: Any, quick: Any) -> Any:
        return quick if self.quick else full


@dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    #: time limits in seconds: (full, quick)
    timeout: tuple[float, float]
    run: Callable[[Context, Out], None]
    rows: Callable[[Out], list[Row]]


def measure(
    ctx: Context, out: Out, case: str, kind: str, rep: int, fn: Callable[[], dict[str, Any]]
) -> dict[str, Any] | None:
    """Run one measurement and record it; a failure is recorded and does not stop the
    scenario (the other speaker still runs); a time-out or Ctrl-C is recorded and raised."""
    record: dict[str, Any] = {"case": case, "kind": kind, "rep": rep}
    out.setdefault("runs", []).append(record)
    ctx.log(f"  {case} {kind} (rep {rep + 1}) ...")
    t0 = time.monotonic()
    try:
        data = fn()
        record["data"] = data
    except Exception as exc:
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        ctx.log(f"    failed: {record['error'][:500]}")
        if ctx.verbose:
            traceback.print_exc(limit=4)
        return None
    except ScenarioTimeout as exc:
        record["error"] = f"timeout: {exc}"[:3000]
        raise
    except KeyboardInterrupt:
        record["error"] = "interrupted"
        raise
    finally:
        record["elapsed_s"] = round(time.monotonic() - t0, 2)
    ctx.log(f"    {brief(data)} ({record['elapsed_s']} s)")
    return data


def brief(data: dict[str, Any]) -> str:
    """One line of a measurement's scalars (lists shown by their median)."""
    import statistics

    parts = []
    for key, value in data.items():
        if isinstance(value, list) and value and all(isinstance(v, int | float) for v in value):
            parts.append(f"{key}~{statistics.median(value):.3g} (n={len(value)})")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            parts.append(f"{key}={value:.4g}")
    return ", ".join(parts)


def records(out: Out, case: str, kind: str) -> list[dict[str, Any]]:
    return [r for r in out.get("runs", []) if r["case"] == case and r["kind"] == kind]


def pooled(out: Out, case: str, kind: str, key: str) -> list[float]:
    """All samples of ``key`` for (case, kind) over the repetitions: lists are joined,
    scalars collected; failed measurements contribute nothing."""
    values: list[float] = []
    for record in records(out, case, kind):
        value = record.get("data", {}).get(key)
        if isinstance(value, list):
            values.extend(float(v) for v in value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            values.append(float(value))
    return values


def missing(
    out: Out, case: str, kinds: tuple[str, ...] = ("bird", "l3hostd"), na: tuple[str, ...] = ()
) -> dict[str, str]:
    """What to show for a kind with no samples: ``n/a`` (not applicable to it),
    ``timeout``, ``error`` (see the JSON), or ``-`` (not run)."""
    shown: dict[str, str] = {}
    for kind in kinds:
        if kind in na:
            shown[kind] = "n/a"
            continue
        errors = [r["error"] for r in records(out, case, kind) if "error" in r]
        if "interrupted" in errors:
            shown[kind] = "interrupted"
        elif any(is_timeout(e) for e in errors):
            shown[kind] = "timeout"
        elif errors:
            shown[kind] = "error"
    return shown


def is_timeout(error: str) -> bool:
    """Whether a recorded error is the measurement running out of time (the scenario's
    limit, a bounded wait of the bench, a subprocess time-out), not a failure."""
    return error.startswith(("timeout", "TimeoutExpired:", "LabError: timed out"))
