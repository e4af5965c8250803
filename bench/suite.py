"""The benchmark suite: run scenarios P1-P7 for BIRD 2 and l3hostd, bounded, and report.

:func:`run_suite` runs the chosen scenarios in order (P3 before P4: P4 reuses P3's bulk
loads), each under its own time limit (:func:`bench.guard.time_limit`, the smaller of the
scenario's limit and what is left of the global budget; a scenario with less than 20 s
left is skipped and reported so). Every lab is closed after each scenario whatever
happened, and once more at the end (also on Ctrl-C or SIGTERM). The JSON file is written
after every scenario, so a run that is stopped still leaves what it measured; at the end
it gets the table rows, and the Markdown table is printed, written into the suite section
of ``bench/README.md`` (when asked) and the plots are drawn.
"""

from __future__ import annotations

import compileall
import json
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.common import REPO, loadavg, machine_info
from bench.guard import ScenarioTimeout, close_all_labs, terminate_on_sigterm, time_limit
from bench.report import Row
from bench.scenarios import (
    p1_latency,
    p3_bulk,
    p4_memory,
    p5_restart,
    p6_firewall,
    p7_idle,
)
from bench.scenarios.base import Context, Scenario, pooled

SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        p1_latency.SCENARIO,
        p3_bulk.SCENARIO,
        p4_memory.SCENARIO,
        p5_restart.SCENARIO,
        p6_firewall.SCENARIO,
        p7_idle.SCENARIO,
    )
}
#: global time budget in seconds: (full, quick)
BUDGET = (1500.0, 420.0)
MIN_SLOT = 20.0
README = REPO / "bench" / "README.md"


def run_suite(
    names: Sequence[str],
    ctx: Context,
    out_path: Path,
    budget: float,
    readme: Path | None = None,
    plots: bool = True,
    asked: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Run ``names`` in order; ``asked``: the scenario words of the command line (for the
    report's heading, e.g. ``["all"]``)."""
    terminate_on_sigterm()
    # The daemons run from compiled bytecode, as from an installed wheel (with
    # PYTHONDONTWRITEBYTECODE set, an editable checkout would compile at every start:
    # slower, and ~2 MiB more RSS in P4).
    compileall.compile_dir(REPO / "l3hostd", quiet=1)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    result: dict[str, Any] = {
        "suite": {
            "started": started,
            "quick": ctx.quick,
            "runs": ctx.runs,
            "speakers": list(ctx.kinds),
            "scenarios": list(asked or names),
            "budget_s": budget,
            "out": str(out_path),
        },
        "machine": machine_info(),
        "scenarios": {},
    }
    t0 = time.monotonic()
    interrupted = False
    try:
        for name in names:
            scenario = SCENARIOS[name]
            out: dict[str, Any] = {"title": scenario.title, "status": "running"}
            result["scenarios"][name] = out
            left = budget - (time.monotonic() - t0)
            limit = min(scenario.timeout[1 if ctx.quick else 0], left)
            if limit < MIN_SLOT:
                out["status"] = "skipped (time budget spent)"
                ctx.log(f"\n== {name}: skipped, {left:.0f} s of the budget left")
                continue
            ctx.log(f"\n== {name}: {scenario.title} (limit {limit:.0f} s)")
            out["limit_s"] = round(limit)
            out["loadavg_before"] = loadavg()
            ts = time.monotonic()
            try:
                with time_limit(limit, name):
                    scenario.run(ctx, out)
                failed = sum("error" in r for r in out.get("runs", []))
                out["status"] = f"ok ({failed} measurement(s) failed)" if failed else "ok"
            except ScenarioTimeout as exc:
                out["status"] = "timeout"
                out["error"] = str(exc)
                ctx.log(f"   {exc}")
            except KeyboardInterrupt:
                out["status"] = "interrupted"
                interrupted = True
                break
            except Exception as exc:  # a bug in one scenario must not lose the others
                out["status"] = "error"
                out["error"] = f"{type(exc).__name__}: {exc}"
                ctx.log(f"   error: {out['error']}")
            finally:
                out["elapsed_s"] = round(time.monotonic() - ts, 1)
                out["loadavg_after"] = loadavg()
                close_all_labs()
                _write(out_path, result)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        close_all_labs()
    result["suite"]["elapsed_s"] = round(time.monotonic() - t0, 1)
    result["suite"]["interrupted"] = interrupted
    rows = table_rows(result)
    result["rows"] = [row.as_dict() for row in rows]
    section = report.render(
        rows, result["machine"], result["suite"], statuses(result), notes(result)
    )
    _write(out_path, result)
    print("\n" + section)
    if readme is not None and not interrupted:
        readme.write_text(report.replace_section(readme.read_text(), section))
        print(f"suite section of {readme} updated")
    if plots:
        from bench.plots import plot_all

        for path in plot_all(result["scenarios"], out_path.parent, out_path.stem):
            print(f"plot: {path}")
    print(f"results: {out_path}")
    return result


def table_rows(result: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for name, out in result["scenarios"].items():
        if out.get("runs"):
            rows.extend(SCENARIOS[name].rows(out))
    return rows


def statuses(result: dict[str, Any]) -> dict[str, str]:
    return {
        name.upper(): f"{out['status']}"
        + (f" in {out['elapsed_s']} s" if "elapsed_s" in out else "")
        for name, out in result["scenarios"].items()
    }


def notes(result: dict[str, Any]) -> list[str]:
    out: list[str] = []
    machine = result["machine"]
    load = [s.get("loadavg_before", ["?"])[0] for s in result["scenarios"].values()]
    out.append(
        f"Load average (1 min) before each scenario: {', '.join(load)} on "
        f"{machine.get('cpus')} CPUs: other work on the machine makes the numbers "
        "noisy; compare the two speakers within one run, not across runs."
    )
    p1 = result["scenarios"].get("p1")
    if p1 and p1.get("runs"):
        for kind in ("bird", "l3hostd"):
            negative = sum(pooled(p1, "events", kind, "negative"))
            if negative:
                out.append(f"P1 {kind}: {negative:.0f} sample(s) below 0 (hv1's listener read "
                           "its event after hv2's did; kept as measured).")
    p4 = result["scenarios"].get("p4")
    if p4 and p4.get("runs"):
        out.extend(p4_memory.cost_notes(p4))
    for name, scenario in result["scenarios"].items():
        if scenario.get("error"):
            first = str(scenario["error"]).strip().splitlines()[0][:300]
            out.append(f"{name.upper()} {scenario['status']}: {first}")
        for record in scenario.get("runs", []):
            if "error" in record:
                out.append(
                    f"{name.upper()} {record['case']} {record['kind']} rep "
                    f"{record['rep'] + 1}: {record['error'].strip().splitlines()[0][:300]}"
                )
    return out


def _write(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
    tmp.rename(path)
