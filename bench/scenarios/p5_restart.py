"""P5, restart: hv1's speaker is restarted; how many of its routes hv2 loses, and for how long.

hv1 announces N routes (1000 endpoints: TAPs - macvlans named like TAPs - with
endpoint files for l3hostd, with Felix-style ``proto static`` routes for BIRD); hv2 runs
the same speaker and has them all in its FIB. A :mod:`bench.listen` process on hv2 records
every add and delete of hv2's learned routes. hv1's speaker is then stopped with SIGTERM
(``term``) or SIGKILL (``kill``) and started again at once, with graceful restart as in
:mod:`l3hostd.birdlab`'s configs (BIRD restarts with ``-R``, as Calico runs it). After hv1
is Established again and all N are back on hv2, the bench waits ``settle`` seconds more
(stale routes are swept after End-of-RIB) and reports:

- ``lost``: distinct prefixes of hv1's that left hv2's FIB at any moment;
- ``outage_s``: first loss -> last re-add of a lost prefix (0 when none was lost);
- ``restart_s``: signal -> hv1's sessions Established again;
- ``not_back``: prefixes still missing on hv2 at the end (should be 0).
"""

from __future__ import annotations

import signal
import time
from functools import partial
from typing import Any

from bench.common import IPV4_ONLY_TAPS, endpoint_files, fake_taps, felix_routes, listen, ports
from bench.guard import new_lab
from bench.report import Row
from bench.scenarios.base import Context, Out, Scenario, measure, missing, pooled
from l3hostd.birdlab import BgpTopology, SpeakerKind
from l3hostd.lab import wait_until

MODES = {"term": signal.SIGTERM, "kill": signal.SIGKILL}


def measure_restart(kind: SpeakerKind, n: int, mode: str, settle: float) -> dict[str, Any]:
    with new_lab("l3s") as lab:
        topo = BgpTopology(
            lab, hypervisors=2, ipv6=False, speaker=kind, l3hostd_config=IPV4_ONLY_TAPS
        )
        hv1, hv2 = topo.hv(1), topo.hv(2)
        items = ports(n, "e", base="10.50.0.0")
        fake_taps(hv1.ns, items)
        if kind == "l3hostd":
            endpoint_files(hv1, items)
        else:
            felix_routes(hv1.ns, items)
        expected = {f"{p.ip}/32" for p in items}
        dst = listen(lab, hv2.ns, topo.learned_proto, record=True)
        topo.start(timeout=60)
        wait_until(
            lambda: expected <= dst.routes_now, 60, interval=0.05, what=f"hv1's {n} routes on hv2"
        )
        time.sleep(settle)  # past the initial exchange (End-of-RIB, stale sweeps)
        speaker = topo.speaker(1)
        t_sig = time.monotonic()
        speaker.stop(MODES[mode])
        t_stopped = time.monotonic()
        speaker.start()
        speaker.wait_established(60)
        t_est = time.monotonic()
        wait_until(
            lambda: expected <= dst.routes_now,
            60,
            interval=0.02,
            what=f"hv1's {n} routes back on hv2",
        )
        time.sleep(settle)
        history = [
            (what, prefix, t)
            for what, prefix, t in list(dst.history)
            if t > t_sig and prefix in expected
        ]
        deletes = [(prefix, t) for what, prefix, t in history if what == "del"]
        lost = {prefix for prefix, _ in deletes}
        outage = 0.0
        if lost:
            first_loss = min(t for _, t in deletes)
            readds = [t for what, prefix, t in history if what == "add" and prefix in lost]
            outage = (max(readds) if readds else time.monotonic()) - first_loss
        return {
            "routes": n,
            "lost": len(lost),
            "outage_s": round(outage, 3),
            "stop_s": round(t_stopped - t_sig, 3),
            "restart_s": round(t_est - t_sig, 3),
            "not_back": len(expected - dst.routes_now),
            "overflows": dst.overflows,
        }


def run(ctx: Context, out: Out) -> None:
    n, settle = 1000, ctx.pick(5.0, 2.0)
    out["params"] = {"routes": n, "settle_s": settle, "runs": ctx.runs, "modes": list(MODES)}
    for mode in MODES:
        for rep in range(ctx.runs):
            for kind in ctx.order(rep):
                measure(ctx, out, mode, kind, rep, partial(measure_restart, kind, n, mode, settle))


def rows(out: Out) -> list[Row]:
    result = []
    label = {"term": "SIGTERM + start", "kill": "kill -9 + start"}
    kinds = ("bird", "l3hostd")
    for mode in MODES:
        lost = {kind: pooled(out, mode, kind, "lost") for kind in kinds}
        met = None if not lost["l3hostd"] else max(lost["l3hostd"]) == 0
        shown = missing(out, mode)
        n = out.get("params", {}).get("routes", "?")
        result += [
            Row("P5", f"hv1 {label[mode]}: hv1's routes lost on hv2, of {n}", "", lost, "0",
                met, shown),
            Row("P5", f"hv1 {label[mode]}: outage on hv2, first loss -> last re-add", "s",
                {kind: pooled(out, mode, kind, "outage_s") for kind in kinds}, "", None, shown),
            Row("P5", f"hv1 {label[mode]}: signal -> hv1 Established again", "s",
                {kind: pooled(out, mode, kind, "restart_s") for kind in kinds}, "", None, shown),
        ]
    return result


SCENARIO = Scenario("p5", "restart of hv1's speaker, routes lost on hv2", (600, 180), run, rows)
