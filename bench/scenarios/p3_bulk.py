"""P3, bulk: many routes into hv2's FIB, and a hypervisor's cold start seen at the reflector.

- ``bulk_<N>`` (N = 10k, 100k): the reflector originates N /32s (``protocol static``,
  blackholes, so each client gets the reflector's link address as next hop). With the
  reflector loaded, hv2's speaker is started; measured: the time from its session being
  Established (the reflector's log line, microsecond wall clock: the speaker under test
  may answer its own control socket late while it is busy) to the last route in hv2's
  FIB, first to last route, and the speaker's RSS: peak (VmHWM) when all are in, and
  steady (VmRSS) after ``settle`` seconds. The FIB is counted from ``fib_triestat`` every
  ``poll`` seconds (10 ms), not by a netlink listener: parsing 100k notifications in Python
  on a 2-vCPU machine made BIRD's install 5x slower. At each poll the reflector's main
  loop is woken (:meth:`~l3hostd.birdlab.BirdRouter.wake`): BIRD 2.0.12 sends the last
  <= 256 routes of a feed and its End-of-RIB only at its next wake-up (a missed wake-up
  in its main loop, see :mod:`l3hostd.birdlab`), which without a nudge came 0-1 s later
  at random, for either speaker: a property of the reflector, not of the speaker under
  test, and the largest noise in this number (100k, l3hostd: 0.31-0.68 s without, 0.31-
  0.32 s with; BIRD 0.23-0.49 s without, 0.23-0.24 s with). :func:`measure_bulk` is also
  P4's measurement (it hands its samples to P4 through ``ctx.shared``).
- ``cold_<N>`` (N = 1k, 10k): hv1 already has N endpoints when its speaker starts: N TAPs
  (macvlans named like TAPs, up) and, for l3hostd, N endpoint files (in the lab's
  open security group, firewall enabled as deployed); for BIRD, N Felix-style routes
  ``<ip>/32 dev <tap> proto static``. Measured: speaker start -> all N /32s at the
  reflector (``birdc show route count``, polled every 50 ms), and Established -> all N.
  BIRD's number has no firewall in it (Felix programs iptables separately); l3hostd's has.
  "start -> all" includes each speaker's connect delay before its first OPEN (BIRD's lab
  config: 1 s; l3hostd: its own), so "Established -> all" is the like-for-like part.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from bench.common import (
    IPV4_ONLY_TAPS,
    endpoint_files,
    fake_taps,
    felix_routes,
    fib_prefixes,
    ns_fib_prefixes,
    ports,
    session_up_at,
    with_log_on_error,
)
from bench.guard import new_lab
from bench.report import Row
from bench.scenarios.base import Context, Out, Scenario, measure, missing, pooled
from l3hostd.birdlab import BgpTopology, BirdSpeaker, L3hostdSpeaker, Speaker, SpeakerKind
from l3hostd.lab import LabError, wait_until

#: l3hostd's default max-prefix (500k) would close the session at P4's largest size
L3HOSTD_BULK_CONFIG: dict[str, object] = {"bgp": {"import": {"max_prefixes": 2_000_000}}}
BULK_SIZES = (10_000, 100_000)
COLD_SIZES = (1_000, 10_000)


def launch(speaker: Speaker) -> None:
    """Start a speaker without waiting for it to be in sync (the bench times that)."""
    if isinstance(speaker, L3hostdSpeaker):
        speaker.hv.start()
    elif isinstance(speaker, BirdSpeaker):
        speaker.router.start()
    else:
        speaker.start()


def measure_bulk(
    kind: SpeakerKind, routes: int, poll: float = 0.01, timeout: float = 180, settle: float = 0.0
) -> dict[str, Any]:
    """One lab; the reflector holds ``routes`` statics; hv2's speaker is started and
    timed until all of them are in its kernel FIB; RSS peak then, and after ``settle``."""
    with new_lab("l3s") as lab:
        topo = BgpTopology(
            lab,
            hypervisors=2,
            ipv6=False,
            speaker=kind,
            rr_static_routes=routes,
            rr_static_prefix="10.200.0.0/13",
            l3hostd_config=L3HOSTD_BULK_CONFIG,
        )
        t0 = time.monotonic()
        topo.start_rr()
        if routes:
            wait_until(
                lambda: topo.rr.route_count() >= routes,
                max(120.0, timeout),
                interval=0.1,
                what="reflector's static routes",
            )
        rr_loaded_s = time.monotonic() - t0
        hv2 = topo.hv(2)
        base = ns_fib_prefixes(hv2.ns)
        speaker = topo.speaker(2)
        t_start = time.monotonic()
        with with_log_on_error(speaker, f"{kind} on hv2"):
            launch(speaker)
            stat = f"/proc/{speaker.pid}/net/fib_triestat"
            t_first = t_all = 0.0
            limit = time.monotonic() + timeout
            count = 0
            while True:
                now = time.monotonic()
                if now > t_start + 60 and session_up_at(topo.rr, "hv2", t_start) is None:
                    raise LabError(f"{kind} on hv2: no session to the reflector after 60 s")
                count = fib_prefixes(stat) - base
                if count > 0 and not t_first:
                    t_first = now
                if count >= routes and (routes or session_up_at(topo.rr, "hv2", t_start)):
                    t_all = now
                    break
                if now > limit:
                    raise LabError(
                        f"timed out: {count} of {routes} routes in hv2's FIB after {timeout:.0f} s"
                    )
                if not speaker.running():
                    raise LabError(f"{kind} on hv2 exited")
                topo.rr.wake()
                time.sleep(poll)
            t_est = session_up_at(topo.rr, "hv2", t_start)
            if t_est is None:
                raise LabError(f"{kind} on hv2: the reflector logged no session up")
            peak = speaker.rss_kib()
            if settle:
                time.sleep(settle)
            steady = speaker.rss_kib()
            result: dict[str, Any] = {
                "routes": routes,
                "in_fib": count,
                "rr_loaded_s": round(rr_loaded_s, 3),
                "start_to_established_s": round(t_est - t_start, 3),
                "peak_rss_mib": round(peak.hwm_kib / 1024, 2),
                "rss_at_all_mib": round(peak.rss_kib / 1024, 2),
                "steady_rss_mib": round(steady.rss_kib / 1024, 2),
                "steady_hwm_mib": round(steady.hwm_kib / 1024, 2),
                "settle_s": settle,
            }
            if routes:
                result.update(
                    {
                        "established_to_all_s": round(t_all - t_est, 3),
                        "established_to_first_s": round(t_first - t_est, 3),
                        "first_to_last_s": round(t_all - t_first, 3),
                    }
                )
            return result


def measure_cold_start(kind: SpeakerKind, n: int, timeout: float = 180) -> dict[str, Any]:
    """One lab; hv1 holds ``n`` endpoints before its speaker starts; time to all ``n``
    /32s at the reflector."""
    with new_lab("l3s") as lab:
        topo = BgpTopology(lab, hypervisors=1, ipv6=False, speaker=kind,
                           l3hostd_config=IPV4_ONLY_TAPS)
        hv = topo.hv(1)
        items = ports(n, "d")
        t0 = time.monotonic()
        fake_taps(hv.ns, items)
        if kind == "l3hostd":
            endpoint_files(hv, items)
        else:
            felix_routes(hv.ns, items)
        prepare_s = time.monotonic() - t0
        topo.start_rr()
        speaker = topo.speaker(1)
        t_start = time.monotonic()
        with with_log_on_error(speaker, f"{kind} on hv1"):
            launch(speaker)
            limit = t_start + timeout
            count = 0
            while True:
                count = topo.rr.route_count()
                now = time.monotonic()  # the count is the reflector's state when it answered
                if count >= n:
                    t_all = now
                    break
                if now > limit:
                    raise LabError(
                        f"timed out: {count} of {n} routes at the reflector after {timeout:.0f} s"
                    )
                if not speaker.running():
                    raise LabError(f"{kind} on hv1 exited")
                time.sleep(0.05)
            t_est = session_up_at(topo.rr, "hv1", t_start)
            if t_est is None:
                raise LabError(f"{kind} on hv1: the reflector logged no session up")
            return {
                "endpoints": n,
                "at_rr": count,
                "prepare_s": round(prepare_s, 3),
                "start_to_all_s": round(t_all - t_start, 3),
                "start_to_established_s": round(t_est - t_start, 3),
                "established_to_all_s": round(t_all - t_est, 3),
                "peak_rss_mib": round(speaker.rss_kib().hwm_kib / 1024, 2),
            }


def run(ctx: Context, out: Out) -> None:
    settle = ctx.pick(5.0, 2.0)
    out["params"] = {
        "bulk_sizes": BULK_SIZES,
        "cold_sizes": COLD_SIZES,
        "runs": ctx.runs,
        "poll_s": 0.01,
        "settle_s": settle,
        "l3hostd_firewall": True,
    }
    shared = ctx.shared.setdefault("bulk", {})
    for size in BULK_SIZES:
        for rep in range(ctx.runs):
            for kind in ctx.order(rep):
                data = measure(
                    ctx,
                    out,
                    f"bulk_{size}",
                    kind,
                    rep,
                    partial(measure_bulk, kind, size, timeout=ctx.pick(180, 90), settle=settle),
                )
                if data is not None:
                    shared.setdefault(f"{kind}/{size}", []).append(data)
    for size in COLD_SIZES:
        for rep in range(ctx.runs):
            for kind in ctx.order(rep):
                measure(
                    ctx,
                    out,
                    f"cold_{size}",
                    kind,
                    rep,
                    partial(measure_cold_start, kind, size, timeout=ctx.pick(180, 90)),
                )


def _row(
    out: Out,
    case: str,
    key: str,
    label: str,
    unit: str = "s",
    target: str = "",
    max_ratio: float | None = None,
) -> Row:
    samples = {kind: pooled(out, case, kind, key) for kind in ("bird", "l3hostd")}
    row = Row("P3", label, unit, samples, target, missing=missing(out, case))
    if max_ratio is None or row.ratio is None:
        return row
    return Row(
        row.scenario,
        row.metric,
        row.unit,
        row.samples,
        row.target,
        row.ratio <= max_ratio,
        row.missing,
    )


def rows(out: Out) -> list[Row]:
    result = []
    for size in BULK_SIZES:
        big = size >= 100_000
        result.append(
            _row(
                out,
                f"bulk_{size}",
                "established_to_all_s",
                f"{size:,} /32s behind the RR: Established -> all in hv2's FIB",
                target="<= 1.5x BIRD" if big else "",
                max_ratio=1.5 if big else None,
            )
        )
    for size in COLD_SIZES:
        result.append(
            _row(
                out,
                f"cold_{size}",
                "start_to_all_s",
                f"hv1 cold start, {size:,} endpoints: start -> all at the RR",
            )
        )
        result.append(
            _row(
                out,
                f"cold_{size}",
                "established_to_all_s",
                f"hv1 cold start, {size:,} endpoints: Established -> all at RR",
            )
        )
    return result


SCENARIO = Scenario(
    "p3", "bulk: routes into hv2's FIB, cold start at the RR", (900, 240), run, rows
)
