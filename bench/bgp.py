"""Bench: l3hostd's BGP speaker side by side with BIRD 2 on the same namespace topology.

Topology (:class:`l3hostd.birdlab.BgpTopology`): a BIRD 2 route reflector ``rr`` and two
hypervisors ``hv1``/``hv2``, each on its own veth link to ``rr`` (100.64.<i>.0/24, iBGP AS
65501, ADD-PATH tx on the reflector, graceful restart). The hypervisors run either BIRD
with Calico's configuration (:func:`l3hostd.birdlab.calico_hv_config`) or l3hostd with a
``bgp:`` section; everything else is identical. A fresh lab is built for every measurement.

What is measured (the measurements are the suite's, shared with ``python -m bench``)
    (a) **Event latency**: :func:`bench.scenarios.p1_latency.measure_events`, ``--events``
        of each kind per run: kernel route added / deleted on hv1 -> in / gone from hv2's
        FIB; l3hostd only: TAP up (endpoint file) -> in hv2's FIB; TAP deleted (for BIRD:
        a TAP carrying a Felix-style route) -> gone from hv2's FIB. Kernel timestamps on
        both ends (:mod:`bench.listen`).
    (b) **Bulk**: :func:`bench.scenarios.p3_bulk.measure_bulk`: the reflector originates
        ``--routes`` /32s, hv2's speaker is started; Established -> all in hv2's FIB,
        first -> last route, peak RSS (``VmHWM``) when all are installed.

Speakers alternate within a run (bird, l3hostd, bird, l3hostd, ...) so that drift of the
machine hits both alike; ``--runs`` repetitions. The table shows median / p95 / min-max
(events pooled over runs; bulk: one value per run) and the ratio of the medians
l3hostd/BIRD; the JSON (``--out``, default ``bench/results/bgp.json``) holds every sample.
A speaker that fails (e.g. l3hostd before its BGP speaker exists) is reported as an error
and the other one still runs.

Run: ``sudo .venv/bin/python -m bench.bgp [--runs 3] [--routes 100000] [--events 30]
[--speaker both|bird|l3hostd]``.
"""

from __future__ import annotations

import argparse
import json
import traceback
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from bench.common import machine_info
from bench.scenarios.p1_latency import measure_events
from bench.scenarios.p3_bulk import measure_bulk
from bench.stats import summary
from l3hostd.birdlab import SpeakerKind

# ------------------------------------------------------------------------------ report

ROWS: list[tuple[str, str, str, str]] = [
    # (label, section, key, unit)
    ("kernel route add hv1 -> hv2 FIB", "events", "route_add_ms", "ms"),
    ("kernel route del hv1 -> gone from hv2 FIB", "events", "route_del_ms", "ms"),
    ("TAP up (endpoint file) hv1 -> hv2 FIB", "events", "tap_up_ms", "ms"),
    ("TAP deleted hv1 -> gone from hv2 FIB", "events", "tap_del_ms", "ms"),
    ("bulk: Established -> all routes in hv2 FIB", "bulk", "established_to_all_s", "s"),
    ("bulk: first -> last route in hv2 FIB", "bulk", "first_to_last_s", "s"),
    ("bulk: hv2 speaker peak RSS (VmHWM)", "bulk", "peak_rss_mib", "MiB"),
]


def samples(result: dict[str, Any], kind: str, section: str, key: str) -> list[float]:
    values: list[float] = []
    for run in result["runs"]:
        data = run.get(kind, {}).get(section)
        if not data:
            continue
        if section == "events":
            values.extend(data.get(key, []))
        elif key in data:
            values.append(data[key])
    return values


def report(result: dict[str, Any], kinds: list[SpeakerKind]) -> str:
    def cell(s: dict[str, Any]) -> str:
        if not s.get("n"):
            return "-"
        return f"{s['median']:.3g} / {s['p95']:.3g} / {s['min']:.3g}-{s['max']:.3g}"

    head = ["metric", *[f"{k} median / p95 / min-max" for k in kinds]]
    if len(kinds) == 2:
        head.append("l3hostd/BIRD")
    rows = [head]
    stats: dict[str, Any] = {}
    for label, section, key, unit in ROWS:
        row = [f"{label} ({unit})"]
        medians: dict[str, float] = {}
        for kind in kinds:
            s = summary(samples(result, kind, section, key))
            stats.setdefault(kind, {})[key] = s
            row.append(cell(s))
            if s.get("n"):
                medians[kind] = s["median"]
        if len(kinds) == 2:
            ok = "bird" in medians and "l3hostd" in medians and medians["bird"] > 0
            row.append(f"{medians['l3hostd'] / medians['bird']:.2f}" if ok else "-")
        if any(c != "-" for c in row[1 : 1 + len(kinds)]):
            rows.append(row)
    result["summary"] = stats
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--routes", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=30)
    parser.add_argument("--gap", type=float, default=0.05, help="pause between events, seconds")
    parser.add_argument(
        "--poll", type=float, default=0.01, help="bulk: FIB count poll interval, seconds"
    )
    parser.add_argument(
        "--settle", type=float, default=0.0, help="bulk: seconds before the steady RSS is read"
    )
    parser.add_argument("--speaker", choices=["both", "bird", "l3hostd"], default="both")
    parser.add_argument("--skip", choices=["events", "bulk"], action="append", default=[])
    parser.add_argument("--out", default="bench/results/bgp.json")
    args = parser.parse_args()
    kinds: list[SpeakerKind] = ["bird", "l3hostd"] if args.speaker == "both" else [args.speaker]
    result: dict[str, Any] = {
        "machine": machine_info(),
        "params": {
            "runs": args.runs,
            "routes": args.routes,
            "events": args.events,
            "gap_s": args.gap,
            "poll_s": args.poll,
        },
        "runs": [],
    }
    for r in range(args.runs):
        run: dict[str, Any] = {}
        result["runs"].append(run)
        for kind in kinds:
            data: dict[str, Any] = run.setdefault(kind, {})
            measurements: list[tuple[str, Callable[[], dict[str, Any]]]] = [
                ("events", partial(measure_events, kind, args.events, args.gap)),
                ("bulk", partial(measure_bulk, kind, args.routes, args.poll, settle=args.settle)),
            ]
            for section, fn in measurements:
                if section in args.skip:
                    continue
                print(f"run {r + 1}/{args.runs}: {kind} {section} ...", flush=True)
                try:
                    data[section] = fn()
                except Exception as exc:  # report it, keep measuring the other speaker
                    data.setdefault("errors", {})[section] = f"{type(exc).__name__}: {exc}"
                    print(f"  {kind} {section} failed: {exc}", flush=True)
                    traceback.print_exc(limit=3)
                    continue
                if section == "events":
                    brief = {k: summary(v)["median"] for k, v in data[section].items()
                             if k.endswith("_ms") and v}
                    print(f"  medians (ms): {brief}", flush=True)
                else:
                    print(f"  {data[section]}", flush=True)
    print()
    print(report(result, kinds))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
