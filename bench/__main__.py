"""``python -m bench``: the side-by-side benchmark suite, l3hostd vs BIRD 2 (issue 6).

    sudo .venv/bin/python -m bench all [--quick] [--runs N] [--out bench/results/suite.json]
    sudo .venv/bin/python -m bench p1 p5 --quick        # some scenarios only
    sudo .venv/bin/python -m bench p1 --hops            # P1 split at the reflector

Scenarios (see each module in ``bench/scenarios/`` for what is measured and how):
  p1  event latency hv1 -> hv2's kernel FIB: route add/del, TAP up, TAP deleted
  p3  bulk: 10k / 100k /32s behind the reflector -> hv2's FIB; cold start of hv1 with
      1k / 10k endpoints -> all at the reflector
  p4  memory: hv2's speaker RSS (peak, steady) at 0 / 10k / 100k / 500k learned routes
  p5  restart of hv1's speaker (SIGTERM + start, kill -9 + start): routes lost on hv2
  p6  firewall: full load, one-endpoint change at 100 / 1000 / 5000 endpoints
  p7  idle CPU with 100k learned routes and 1k local endpoints

Every scenario runs both speakers in the same run, alternating, ``--runs`` repetitions
(3; 1 with ``--quick``, which also shortens windows and event counts). The whole run is
bounded (``--budget``: 25 min, 7 min with ``--quick``) and every scenario has its own
time limit; namespaces and processes are removed on failure and on Ctrl-C. ``all``
updates the suite section of ``bench/README.md`` (``--no-readme`` not to); the JSON holds
every sample; PNG plots go next to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.scenarios.base import Context
from bench.suite import BUDGET, README, SCENARIOS, run_suite
from l3hostd.birdlab import SpeakerKind

ORDER = ["p1", "p3", "p4", "p5", "p6", "p7"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join((__doc__ or "").split("\n\n")[2:]),
    )
    parser.add_argument(
        "scenarios",
        nargs="+",
        choices=["all", *ORDER],
        metavar="SCENARIO",
        help="all, or some of: " + " ".join(ORDER),
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 repetition, short windows: a few minutes in all"
    )
    parser.add_argument("--runs", type=int, help="repetitions per scenario (3; quick: 1)")
    parser.add_argument(
        "--out",
        type=Path,
        help="JSON results (default bench/results/suite.json for all, "
        "bench/results/suite-<scenarios>.json otherwise)",
    )
    parser.add_argument("--budget", type=float, help="global time limit, seconds")
    parser.add_argument("--speaker", choices=["both", "bird", "l3hostd"], default="both")
    parser.add_argument(
        "--readme",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="write the table into bench/README.md (default: for all)",
    )
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument(
        "--hops", action="store_true",
        help="P1: also split each route event at the reflector (tcpdump there; bench/hops.py)",
    )
    parser.add_argument(
        "--gap", type=float, default=0.05,
        help="P1: pause between two changes, seconds (0.05; 0.003 keeps the CPUs' caches warm)",
    )
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench needs root (network namespaces)", file=sys.stderr)
        return 2
    everything = "all" in args.scenarios
    names = ORDER if everything else [n for n in ORDER if n in args.scenarios]
    kinds: list[SpeakerKind] = ["bird", "l3hostd"] if args.speaker == "both" else [args.speaker]
    ctx = Context(quick=args.quick, runs=args.runs or (1 if args.quick else 3), kinds=kinds,
                  hops=args.hops, gap=args.gap)
    out = args.out or Path("bench/results") / (
        "suite.json" if everything else f"suite-{'-'.join(names)}.json"
    )
    budget = args.budget or BUDGET[1 if args.quick else 0]
    write_readme = everything and args.speaker == "both" if args.readme is None else args.readme
    assert set(names) <= set(SCENARIOS)
    result = run_suite(names, ctx, out, budget, README if write_readme else None, args.plots,
                       asked=["all"] if everything else names)
    return 130 if result["suite"].get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
