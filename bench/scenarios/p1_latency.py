"""P1, event latency: one change on hv1 -> in (or gone from) hv2's kernel FIB.

Topology: BIRD 2 route reflector, hv1 and hv2 running the same speaker (BIRD with
Calico's config, or l3hostd), a fresh lab per measurement. One change at a time, a pause
(``gap``) between changes:

- ``route_add_ms``: ``ip route add <p>/32 dev tapbench0 proto static`` on hv1 (how Felix
  installs a VM's host route: BIRD's kernel protocol ``learn``s it, l3hostd's kernel-learn
  mode exports it) -> the route appears in hv2's FIB;
- ``route_del_ms``: ``ip route del`` of it -> the route leaves hv2's FIB;
- ``tap_up_ms`` (l3hostd only; for BIRD it is Felix's job, not measured): a TAP with an
  endpoint file comes up on hv1 -> its /32 appears in hv2's FIB;
- ``tap_del_ms``: the TAP is deleted on hv1 -> its /32 leaves hv2's FIB. l3hostd: the
  TAP of an endpoint; BIRD: a TAP carrying a Felix-style route (the kernel flushes that
  route with the device and sends no RTM_DELROUTE for it, so BIRD notices it by its own
  interface tracking or its next kernel scan).

Both ends are the kernel's own netlink notifications, timestamped on CLOCK_MONOTONIC when
a :mod:`bench.listen` process (one per namespace, nothing else to do) reads them: on hv1
the ``proto static`` route events and link events (up; the first of down or RTM_DELLINK
for a deletion), on hv2 the speaker's learned routes (``proto bird`` 12 or ``l3hostd-bgp``
45). What is measured is the daemons, not the ``ip`` commands. With ``--hops``, the route
events are also split at the reflector's wire (:mod:`bench.hops`): hv1, the reflector, hv2.

The listeners run SCHED_FIFO (``chrt -f``). As normal tasks on this 2-CPU machine they
often waited for a CPU that the speaker (and ``ip``) held, and read the event late:
TAP up "took" as little as 0.29 ms, less than hv1's own path to its UPDATE (~0.45 ms,
traced), because the start was stamped up to 0.8 ms late, at random; half the TAP-up
samples were such. Even so a listener can wake late (a halted vCPU takes ~0.2 ms to wake
on this VM): when hv1's is later than the whole propagation (BIRD's ~0.2 ms) a sample
comes out negative. It is kept as measured (the ``negative`` count says how many), not
clamped and not dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import yaml

from bench.common import IpBatch, event_prefix, listen, tap_pair, wait_event
from bench.guard import new_lab
from bench.hops import Capture, Segment, split
from bench.listen import Listener
from bench.report import Row
from bench.scenarios.base import Context, Out, Scenario, measure, missing, pooled
from l3hostd.birdlab import BgpTopology, SpeakerKind
from l3hostd.lab import LabError

PROTO_STATIC = 4

KEYS = (
    # key, label, target
    ("route_add_ms", "kernel route added on hv1 -> in hv2's FIB", "median <= 1 ms, p95 <= BIRD"),
    (
        "route_del_ms",
        "kernel route deleted on hv1 -> gone from hv2's FIB",
        "median <= 1 ms, p95 <= BIRD",
    ),
    ("tap_up_ms", "TAP up (endpoint) on hv1 -> in hv2's FIB", "median <= 1 ms"),
    ("tap_del_ms", "TAP deleted on hv1 -> gone from hv2's FIB", "median <= 5 ms"),
)

LATENCIES = [key for key, _, _ in KEYS]

#: ``--hops``: which events are split at the reflector (key prefix, label)
HOP_EVENTS = (("hop", "route added/deleted"), ("tap_up_hop", "TAP up"))
#: the three parts of an event (key infix, label)
HOP_PARTS = (
    ("hv1", "hv1's event -> its UPDATE at the reflector"),
    ("rr", "the reflector, UPDATE in -> out to hv2"),
    ("hv2", "UPDATE leaves the reflector -> hv2's FIB"),
)
HOPS = tuple(
    (f"{prefix}_{part}_ms", f"{events}, hop {i + 1}: {text}")
    for prefix, events in HOP_EVENTS
    for i, (part, text) in enumerate(HOP_PARTS)
)

MAX_MISSES = 3

#: a route event as measured: prefix, command written, hv1's and hv2's listener times
Event = tuple[str, float, float, float]


def _deleted_at(src: Listener, tap: str, after: float) -> float:
    """Kernel time of a TAP's deletion: the first of its down and RTM_DELLINK events."""
    gone = wait_event(src, src.link_gone, tap, after, what="hv1: TAP deleted")
    down = src.link_down.get(tap, 0.0)
    return down if after < down < gone else gone


def _route_change(
    batch: IpBatch, src: Listener, dst: Listener, ip: str, add: bool, seen: list[Event]
) -> float:
    """A Felix-style route added to (or deleted from) tapbench0 on hv1 -> hv2, in ms;
    appended to ``seen`` for :mod:`bench.hops`."""
    verb = "add" if add else "del"
    t_cmd = batch(f"route {verb} {ip} dev tapbench0 proto static")
    t_src = wait_event(src, src.route_added if add else src.route_deleted, ip, t_cmd,
                       what=f"hv1: {verb}")
    # after t_cmd, not t_src: hv2's listener may read its event before hv1's does
    t_dst = wait_event(dst, dst.route_added if add else dst.route_deleted, ip, t_cmd,
                       what=f"hv2: {verb}")
    seen.append((ip, t_cmd, t_src, t_dst))
    return 1000 * (t_dst - t_src)


def _tap_up(
    batch: IpBatch, src: Listener, dst: Listener, tap: str, ip: str, seen: list[Event]
) -> float:
    """The (down) TAP of an endpoint comes up on hv1 -> its /32 in hv2's FIB, in ms;
    appended to ``seen`` for :mod:`bench.hops`."""
    t_cmd = batch(f"link set {tap} up")
    t_up = wait_event(src, src.link_up, tap, t_cmd, what="hv1: TAP up")
    t_dst = wait_event(dst, dst.route_added, ip, t_cmd, what="hv2: add")
    seen.append((ip, t_cmd, t_up, t_dst))
    return 1000 * (t_dst - t_up)


def _tap_delete(batch: IpBatch, src: Listener, dst: Listener, tap: str, ip: str) -> float:
    """The TAP is deleted on hv1 -> its /32 leaves hv2's FIB, in ms."""
    t_cmd = batch(f"link del {tap}")
    t_del = _deleted_at(src, tap, t_cmd)
    return 1000 * (wait_event(dst, dst.route_deleted, ip, t_cmd, what="hv2: del") - t_del)


def measure_events(
    kind: SpeakerKind, events: int, gap: float, hops: bool = False
) -> dict[str, Any]:
    """One lab; ``events`` of each kind; latencies in ms to hv2's FIB. With ``hops``, the
    route events are also split at the reflector (:mod:`bench.hops`).

    An event whose change does not show within :data:`~bench.common.EVENT_TIMEOUT` is
    counted in ``missed`` (what, which prefix, which side waited) and the run goes on; more
    than :data:`MAX_MISSES` of them fail the run."""
    out: dict[str, list[float]] = {"route_add_ms": [], "route_del_ms": [], "tap_del_ms": []}
    missed: list[str] = []

    def attempt(key: str, what: str, fn: Callable[[], float]) -> bool:
        try:
            value = fn()
        except LabError as exc:
            missed.append(f"{key} {what}: {exc}")
            if len(missed) > MAX_MISSES:
                raise LabError(f"{len(missed)} events missed: {'; '.join(missed)}") from exc
            return False
        if key:
            out[key].append(value)
        return True

    with new_lab("l3s") as lab:
        topo = BgpTopology(lab, hypervisors=2, ipv6=False, speaker=kind)
        vms = lab.netns("vms")
        hv1, hv2 = topo.hv(1), topo.hv(2)
        tap_pair(hv1, vms, "tapbench0", "p0")
        topo.start(timeout=30)
        src = listen(lab, hv1.ns, PROTO_STATIC, realtime=True)
        dst = listen(lab, hv2.ns, topo.learned_proto, realtime=True)
        batch = IpBatch(lab, hv1.ns)
        capture = Capture(lab, topo.rr_ns) if hops else None
        time.sleep(0.5)  # both speakers past their initial table exchange

        seen: list[Event] = []
        seen_tap: list[Event] = []
        for j in range(events):
            ip = event_prefix(30, j)
            for add, key in ((True, "route_add_ms"), (False, "route_del_ms")):
                attempt(key, ip, partial(_route_change, batch, src, dst, ip, add, seen))
                time.sleep(gap)

        if kind == "l3hostd":
            out["tap_up_ms"] = []
        for j in range(events):
            ip = event_prefix(31, j)
            port = f"c{j:05d}00-0000-4000-8000-{lab.tag}000000"
            tap = f"tap{port[:11]}"
            if kind == "l3hostd":
                mac = f"fa:16:3e:31:{j // 256:02x}:{j % 256:02x}"
                ep = {"id": port, "interface": tap, "mac": mac, "ips": [ip.removesuffix("/32")]}
                path = hv1.endpoints / f"{tap}.yaml"
                path.with_suffix(".tmp").write_text(yaml.safe_dump(ep))
                path.with_suffix(".tmp").rename(path)
                tap_pair(hv1, vms, tap, f"q{j}", up=False)
                time.sleep(0.05)  # the daemon has read the file and seen the (down) TAP
                ready = attempt("tap_up_ms", ip,
                                partial(_tap_up, batch, src, dst, tap, ip, seen_tap))
            else:
                tap_pair(hv1, vms, tap, f"q{j}")
                t_cmd = batch(f"route add {ip} dev {tap} proto static")
                ready = attempt("", ip, partial(wait_event, dst, dst.route_added, ip, t_cmd,
                                                what="hv2: add (Felix route on a TAP)"))
            time.sleep(gap)
            if ready:
                attempt("tap_del_ms", ip, partial(_tap_delete, batch, src, dst, tap, ip))
            else:
                batch(f"link del {tap}")
            time.sleep(gap)
        if src.overflows or dst.overflows:
            raise LabError(f"listener overflow: hv1 {src.overflows}, hv2 {dst.overflows}")
        unmatched = None
        if capture is not None:
            segments, offset = capture.segments()
            unmatched = 0
            for (prefix, _), events_seen in zip(HOP_EVENTS, (seen, seen_tap), strict=True):
                samples, missing_here = _hops(segments, offset, events_seen, prefix,
                                              hv1.uplink4, hv2.uplink4)
                out.update(samples)
                unmatched += missing_here
    result: dict[str, Any] = {key: [round(v, 4) for v in values] for key, values in out.items()}
    result["negative"] = sum(v < 0 for key in LATENCIES for v in out.get(key, ()))
    if unmatched is not None:
        result["hop_unmatched"] = unmatched
    result["missed_count"] = len(missed)
    result["missed"] = missed
    return result


def _hops(
    segments: list[Segment], offset: float, seen: list[Event], prefix: str, hv1: str, hv2: str
) -> tuple[dict[str, list[float]], int]:
    """Events split at the reflector (``<prefix>_<hv1|rr|hv2>_ms``; ``offset``: the
    capture's clock minus ours), and how many the capture could not place."""
    parts: list[tuple[float, float, float]] = []
    for ip, t_cmd, t_src, t_dst in seen:
        hop = split(segments, ip, t_cmd + offset, t_src + offset, t_dst + offset, hv1, hv2)
        if hop is not None:
            parts.append(hop)
    samples = {f"{prefix}_{part}_ms": [p[i] for p in parts]
               for i, (part, _) in enumerate(HOP_PARTS)}
    return samples, len(seen) - len(parts)


def run(ctx: Context, out: Out) -> None:
    events, gap = ctx.pick(30, 10), ctx.gap
    out["params"] = {"events_per_run": events, "gap_s": gap, "runs": ctx.runs, "hops": ctx.hops}
    for rep in range(ctx.runs):
        for kind in ctx.order(rep):
            measure(ctx, out, "events", kind, rep,
                    partial(measure_events, kind, events, gap, ctx.hops))


def rows(out: Out) -> list[Row]:
    result = []
    for key, label, target in KEYS:
        samples = {kind: pooled(out, "events", kind, key) for kind in ("bird", "l3hostd")}
        row = Row(
            "P1",
            label,
            "ms",
            samples,
            target,
            missing=missing(out, "events", na=("bird",) if key == "tap_up_ms" else ()),
        )
        l3, bird = row.summary("l3hostd"), row.summary("bird")
        met: bool | None = None
        if l3.n:
            if key == "tap_del_ms":
                met = l3.median <= 5
            elif key == "tap_up_ms":
                met = l3.median <= 1
            elif bird.n:
                met = l3.median <= 1 and l3.p95 <= bird.p95
        result.append(
            Row(row.scenario, row.metric, row.unit, row.samples, row.target, met, row.missing)
        )
    for key, label in HOPS:
        samples = {kind: pooled(out, "events", kind, key) for kind in ("bird", "l3hostd")}
        if any(samples.values()):
            na = ("bird",) if key.startswith("tap_up") else ()  # (Felix's job there)
            result.append(Row("P1", label, "ms", samples, "", None,
                              missing(out, "events", na=na)))
    missed = {kind: pooled(out, "events", kind, "missed_count") for kind in ("bird", "l3hostd")}
    if any(count for counts in missed.values() for count in counts):
        result.append(Row("P1", "events missed (no change in hv2's FIB within 10 s), per run", "",
                          missed, "0", max(missed["l3hostd"]) == 0 if missed["l3hostd"] else None,
                          missing(out, "events")))
    return result


SCENARIO = Scenario("p1", "event latency hv1 -> hv2's FIB", (420, 120), run, rows)
