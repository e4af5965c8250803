"""The benchmark suite's pure parts: statistics, table rows and verdicts, Markdown, the
README section, bench.firewall's table parser, the memory-curve fit, the time limit."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.guard import ScenarioTimeout, time_limit
from bench.report import Row, replace_section
from bench.scenarios import p1_latency, p4_memory, p5_restart, p6_firewall, p7_idle
from bench.scenarios.base import Context, missing, pooled
from bench.stats import cpu_percent, linear_fit, pct, ratio, summarize


def out_of(*records: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"params": params, "runs": list(records)}


def rec(case: str, kind: str, rep: int = 0, **data: Any) -> dict[str, Any]:
    return {"case": case, "kind": kind, "rep": rep, "data": data}


# ------------------------------------------------------------------------------ stats


def test_percentile_is_a_measured_value_by_rank() -> None:
    assert pct([3, 1, 2, 4], 95) == 4
    assert pct([5], 95) == 5
    assert pct(list(range(1, 101)), 50) == 51  # rank round(0.5 * 99) = 50 -> 51
    assert pct(list(range(1, 21)), 95) == 19
    with pytest.raises(ValueError):
        pct([], 50)


def test_summary_of_samples_and_of_none() -> None:
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.n, s.median, s.p95, s.min, s.max) == (4, 2.5, 4.0, 1.0, 4.0)
    empty = summarize([])
    assert empty.n == 0 and math.isnan(empty.median)
    assert empty.as_dict() == {"n": 0}


def test_ratio_of_medians_and_when_there_is_none() -> None:
    assert ratio(summarize([2.0, 4.0]), summarize([1.0, 2.0])) == 2.0
    assert ratio(summarize([]), summarize([1.0])) is None
    assert ratio(summarize([1.0]), summarize([])) is None
    assert ratio(summarize([1.0]), summarize([0.0])) is None
    assert ratio(summarize([0.2]), summarize([-0.05])) is None  # BIRD ahead of the listener


def test_linear_fit_recovers_a_line() -> None:
    line = linear_fit([0, 10_000, 100_000, 500_000], [50.0, 51.0, 60.0, 100.0])
    assert line is not None
    assert line.slope == pytest.approx(1e-4)
    assert line.intercept == pytest.approx(50.0)
    assert line.r2 == pytest.approx(1.0)
    noisy = linear_fit([0, 0, 1, 1], [0.0, 2.0, 1.0, 3.0])
    assert noisy is not None and noisy.slope == pytest.approx(1.0) and noisy.r2 < 1
    assert linear_fit([1, 1], [2.0, 3.0]) is None
    assert linear_fit([1], [2.0]) is None
    with pytest.raises(ValueError):
        linear_fit([1, 2], [1.0])


def test_cpu_percent_of_one_core() -> None:
    assert cpu_percent(50, 10.0, 100) == pytest.approx(5.0)
    assert cpu_percent(0, 60.0) == 0.0
    with pytest.raises(ValueError):
        cpu_percent(1, 0)


# ------------------------------------------------------------------------------ report


def test_number_format_has_no_exponent_and_few_digits() -> None:
    assert [report.fmt(v) for v in (100000.0, 1000.0, 12.345, 1.5, 0.473, 0.05, 0.0)] == [
        "100000", "1000", "12.3", "1.50", "0.473", "0.05", "0"]
    assert report.fmt(math.nan) == "-"


def test_markdown_table_cells_ratio_and_missing_sides() -> None:
    rows = [
        Row("P1", "route add", "ms", {"bird": [0.4, 0.5, 0.6], "l3hostd": [1.0, 1.2, 2.0]},
            "median <= 1 ms", False),
        Row("P5", "lost | of 1000", "", {"bird": [1000.0], "l3hostd": [0.0]}, "0", True),
        Row("P6", "add endpoint", "ms", {"l3hostd": [9.5]}, "", None,
            {"bird": "n/a"}),
        Row("P4", "rss 500k", "MiB", {"bird": [49.6]}, "", None, {"l3hostd": "timeout"}),
    ]
    text = report.table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("|  | metric | BIRD 2: median / p95 / min-max (n) | l3hostd")
    assert lines[1] == "|---|---|---|---|---|---|---|"
    assert lines[2] == ("| P1 | route add (ms) | 0.5 / 0.6 / 0.4-0.6 (n=3) | "
                        "1.20 / 2 / 1-2 (n=3) | 2.40 | median <= 1 ms | **no** |")
    assert lines[3] == "| P5 | lost \\| of 1000 | 1000 (n=1) | 0 (n=1) | 0.00 | 0 | yes |"
    assert lines[4] == "| P6 | add endpoint (ms) | n/a | 9.50 (n=1) | - |  |  |"
    assert lines[5] == "| P4 | rss 500k (MiB) | 49.6 (n=1) | timeout | - |  |  |"
    assert rows[0].as_dict()["ratio"] == 2.4
    assert rows[0].as_dict()["bird"] == {"n": 3, "median": 0.5, "p95": 0.6, "min": 0.4,
                                         "max": 0.6}


def test_render_names_the_machine_and_the_command() -> None:
    machine = {"cpu": "Xeon", "cpus": 2, "kernel": "6.18", "bird": "2.0.12", "python": "3.11.7",
               "l3hostd": "0.1.0 (abc123)"}
    meta = {"started": "2026-01-01T00:00:00+00:00", "quick": True, "runs": 1,
            "elapsed_s": 300.0, "scenarios": ["p1", "p3"]}
    text = report.render([Row("P1", "x", "ms", {"bird": [1.0]})], machine, meta,
                         {"P1": "ok in 10 s"}, ["a note"])
    assert text.startswith("### Last results (`python -m bench p1 p3 --quick`)")
    assert "cpu Xeon; cpus 2; kernel 6.18; python 3.11.7; bird 2.0.12; l3hostd 0.1.0 (abc123)" \
        in text
    assert "Scenarios: P1 ok in 10 s." in text
    assert text.rstrip().endswith("- a note")


def test_readme_section_is_replaced_between_the_markers_only() -> None:
    before = ("# Benchmarks\n\nintro\n\n<!-- suite:begin -->\nold table\n"
              "<!-- suite:end -->\n\ntail\n")
    after = replace_section(before, "new table\n")
    assert after == ("# Benchmarks\n\nintro\n\n<!-- suite:begin -->\nnew table\n"
                     "<!-- suite:end -->\n\ntail\n")
    assert replace_section(after, "new table\n") == after
    appended = replace_section("# Benchmarks\n", "t")
    assert appended == "# Benchmarks\n\n<!-- suite:begin -->\nt\n<!-- suite:end -->\n"


# ------------------------------------------------------------------------------ scenarios


def test_alternating_order_and_pick() -> None:
    ctx = Context(quick=True, runs=3)
    assert [ctx.order(r) for r in range(3)] == [["bird", "l3hostd"], ["l3hostd", "bird"],
                                                ["bird", "l3hostd"]]
    assert ctx.pick(60, 10) == 10 and Context().pick(60, 10) == 60


def test_pooled_joins_lists_and_scalars_and_skips_failures() -> None:
    out = out_of(rec("events", "bird", 0, x=[1, 2]), rec("events", "bird", 1, x=[3]),
                 {"case": "events", "kind": "bird", "rep": 2, "error": "LabError: boom"},
                 rec("bulk", "bird", 0, x=7.5), rec("events", "l3hostd", 0, x=[9]))
    assert pooled(out, "events", "bird", "x") == [1.0, 2.0, 3.0]
    assert pooled(out, "bulk", "bird", "x") == [7.5]
    assert pooled(out, "bulk", "l3hostd", "x") == []


def test_missing_says_why_a_side_has_no_numbers() -> None:
    out = out_of({"case": "c", "kind": "bird", "rep": 0, "error": "timeout"},
                 {"case": "c", "kind": "l3hostd", "rep": 0, "error": "LabError: exited"})
    assert missing(out, "c") == {"bird": "timeout", "l3hostd": "error"}
    assert missing(out, "c", na=("bird",))["bird"] == "n/a"
    assert missing(out_of(), "c") == {}
    failed = out_of({"case": "c", "kind": "l3hostd", "rep": 0,
                     "error": "RuntimeError: bench.firewall exit 1: nft timed out after 30 s"},
                    {"case": "c", "kind": "bird", "rep": 0,
                     "error": "LabError: timed out after 60s waiting for routes"})
    assert missing(failed, "c") == {"bird": "timeout", "l3hostd": "error"}


def test_p1_verdicts() -> None:
    out = out_of(
        rec("events", "bird", route_add_ms=[0.3, 0.4, 3.0], route_del_ms=[0.3, 0.4, 0.5],
            tap_del_ms=[1.0, 1.0, 1.0]),
        rec("events", "l3hostd", route_add_ms=[0.8, 0.9, 2.0], route_del_ms=[0.8, 0.9, 2.0],
            tap_up_ms=[0.5, 2.0, 3.0], tap_del_ms=[3.0, 4.0, 9.0]))
    met = {row.metric: row.met for row in p1_latency.rows(out)}
    assert list(met.values()) == [True, False, False, True]
    tap_up = p1_latency.rows(out)[2]
    assert tap_up.missing["bird"] == "n/a"


def test_p4_rows_fit_the_curve_and_judge_100k() -> None:
    runs = []
    for size, mib in ((0, 50.0), (10_000, 51.0), (100_000, 60.0), (500_000, 100.0)):
        runs.append(rec(f"rss_{size}", "l3hostd", peak_rss_mib=mib + 2, steady_rss_mib=mib))
        runs.append(rec(f"rss_{size}", "bird", peak_rss_mib=5 + size / 50_000,
                        steady_rss_mib=5 + size / 50_000))
    out = out_of(*runs)
    rows = {row.metric: row for row in p4_memory.rows(out)}
    steady = rows["per-route cost, slope of steady RSS"]
    assert list(steady.samples["l3hostd"]) == pytest.approx([10.0])  # MiB per 100k
    assert list(steady.samples["bird"]) == pytest.approx([2.0])
    assert rows["hv2 speaker steady RSS, 100,000 learned routes"].met is False
    notes = p4_memory.cost_notes(out)
    assert notes[1].startswith("P4 l3hostd: steady RSS ~ 50.0 MiB + 105 bytes x learned routes")


def test_p4_timeout_at_500k_is_shown_as_such() -> None:
    out = out_of(rec("rss_0", "l3hostd", steady_rss_mib=50.0, peak_rss_mib=50.0),
                 {"case": "rss_500000", "kind": "l3hostd", "rep": 0,
                  "error": "LabError: timed out: 1 of 500000 routes in hv2's FIB after 90 s"})
    row = next(r for r in p4_memory.rows(out) if r.metric.endswith("500,000 learned routes"))
    assert row.missing["l3hostd"] == "timeout"
    assert "| timeout |" in report.table([row])


def test_p5_rows_count_lost_routes() -> None:
    out = out_of(rec("term", "bird", lost=1000, outage_s=4.0, restart_s=0.8),
                 rec("term", "l3hostd", lost=0, outage_s=0.0, restart_s=3.0),
                 rec("kill", "l3hostd", lost=2, outage_s=0.1, restart_s=3.0), routes=1000)
    rows = p5_restart.rows(out)
    assert rows[0].metric == "hv1 SIGTERM + start: hv1's routes lost on hv2, of 1000"
    assert rows[0].met is True and rows[3].met is False


def test_p7_verdict() -> None:
    out = out_of(rec("idle", "bird", cpu_pct=5.3), rec("idle", "l3hostd", cpu_pct=0.4),
                 window_s=60)
    (row,) = p7_idle.rows(out)
    assert row.met is True and row.metric.startswith("idle CPU over 60 s")


FIREWALL_OUTPUT = """\
ms                                              100       1000       5000
full load, one nft -f transaction              83.1      516.2     2421.0
full load (daemon: nft chains + netlink)       50.0      300.0     1500.0
add endpoint, known profile                     0.5        0.6        0.7
change one rule                                 5.0       10.0       25.0
read_table (resync)                            10.0       50.0      300.0

ms                                5000
worst: add endpoint, new group    30.0
worst: chains in the table       20000
"""


def test_firewall_table_is_parsed_with_each_tables_columns() -> None:
    table = p6_firewall.parse_table("log line\n" + FIREWALL_OUTPUT)
    assert table["full load, one nft -f transaction"] == {100: 83.1, 1000: 516.2, 5000: 2421.0}
    assert table["worst: add endpoint, new group"] == {5000: 30.0}
    assert "log line" not in table and "ms" not in table


def test_firewall_rows_and_the_20ms_target() -> None:
    data = {f"{label} @{size}": ms for label, by_size in
            p6_firewall.parse_table(FIREWALL_OUTPUT).items() for size, ms in by_size.items()}
    record = {"case": "firewall", "kind": "l3hostd", "rep": 0, "data": data}
    rows = {row.metric: row for row in p6_firewall.rows(out_of(record))}
    assert rows["add endpoint, known profile, 5000 endpoints"].met is True
    assert rows["change one rule, 5000 endpoints"].met is False
    assert rows["full load (daemon: nft chains + netlink), 100 endpoints"].met is None
    assert "read_table (resync), 100 endpoints" not in rows  # largest size only
    assert rows["worst: add endpoint, new group, 5000 endpoints"].target == ""
    assert not any("chains in the table" in metric for metric in rows)
    assert all(row.missing["bird"] == "n/a" for row in rows.values())


# ------------------------------------------------------------------------------ bounds


def test_time_limit_interrupts_a_sleep_once() -> None:
    t0 = time.monotonic()
    with pytest.raises(ScenarioTimeout), time_limit(0.2, "sleep"):
        time.sleep(5)
    assert time.monotonic() - t0 < 2
    with time_limit(5, "fast"):
        pass  # disarmed on exit: nothing fires later
    time.sleep(0.05)
    with pytest.raises(ScenarioTimeout):
        time_limit(0, "none left").__enter__()


def test_plots_are_written_when_matplotlib_is_there(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from bench.plots import plot_all

    scenarios = {
        "p1": out_of(rec("events", "bird", route_add_ms=[0.3, 0.5]),
                     rec("events", "l3hostd", route_add_ms=[0.9, 1.1], tap_up_ms=[1.0])),
        "p3": out_of(rec("bulk_10000", "bird", established_to_all_s=0.2),
                     rec("bulk_10000", "l3hostd", established_to_all_s=0.3)),
        "p4": out_of(rec("rss_0", "bird", peak_rss_mib=5.0, steady_rss_mib=5.0),
                     rec("rss_10000", "bird", peak_rss_mib=6.0, steady_rss_mib=6.0)),
    }
    written = plot_all(scenarios, tmp_path, "t")
    assert sorted(p.name for p in written) == ["t_p1_latency.png", "t_p3_bulk.png",
                                               "t_p4_memory.png"]
    assert all(p.stat().st_size > 1000 for p in written)


def test_p1_missed_events_get_a_row_only_when_there_are_some() -> None:
    clean = out_of(rec("events", "bird", route_add_ms=[0.3], missed_count=0),
                   rec("events", "l3hostd", route_add_ms=[0.9], missed_count=0))
    assert not any("missed" in row.metric for row in p1_latency.rows(clean))
    lossy = out_of(rec("events", "bird", route_add_ms=[0.3], missed_count=1),
                   rec("events", "l3hostd", route_add_ms=[0.9], missed_count=0))
    row = p1_latency.rows(lossy)[-1]
    assert row.metric.startswith("events missed") and row.met is True
