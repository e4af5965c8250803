"""Bench: l3hostd's BGP speaker side by side with BIRD 2 on the same namespace topology.

Topology (:class:`l3hostd.birdlab.BgpTopology`): a BIRD 2 route reflector ``rr`` and two
hypervisors ``hv1``/``hv2``, each on its own veth link to ``rr`` (100.64.<i>.0/24, iBGP AS
65501, ADD-PATH tx on the reflector, graceful restart). The hypervisors run either BIRD
with Calico's configuration (:func:`l3hostd.birdlab.calico_hv_config`) or l3hostd with a
``bgp:`` section; everything else is identical. A fresh lab is built for every measurement.

What is measured
    (a) **Event latency**, one change at a time, ``--events`` of each kind per run:
        - ``route_add``: ``ip route add <p>/32 dev tapbench0 proto static`` on hv1 (how Felix
          installs a VM's host route; BIRD's kernel protocol ``learn``s it, l3hostd's
          kernel-learn mode exports it) -> the route appears in hv2's kernel FIB;
        - ``route_del``: ``ip route del`` of it on hv1 -> the route leaves hv2's FIB;
        - l3hostd only: ``tap_up``: a TAP with an endpoint file comes up on hv1 -> its /32
          appears in hv2's FIB; ``tap_down``: the TAP goes down -> the /32 leaves hv2's FIB.
        Both ends are timestamped from the kernel's own netlink notifications by
        :mod:`bench.listen` processes, one in hv1 (``proto static`` routes and link-up),
        one in hv2 (the speaker's learned routes: ``proto bird`` 12 or ``l3hostd-bgp`` 45),
        on CLOCK_MONOTONIC. The kernel sends no notification the listener reports for a
        link going down, so ``tap_down`` starts when the bench writes the command to an
        ``ip -batch`` process that is already running in hv1 (microseconds early).
    (b) **Bulk**: the reflector originates ``--routes`` /32s (``protocol static``,
        blackholes, so each client gets the reflector's link address as the next hop).
        With the reflector loaded, hv2's speaker is started; the time from its session
        being Established (the reflector's log line, microsecond wall clock: the speaker
        under test may answer its own control socket late while it is busy) to the last
        of the routes in hv2's FIB, the first-to-last route time, and the speaker's
        peak RSS (``VmHWM``) once they are all installed. The FIB is counted from
        ``fib_triestat`` every ``--poll`` s (10 ms), not by a netlink listener: parsing
        100k notifications in Python on this 2-vCPU machine made BIRD's install 5x slower.

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
import platform
import re
import statistics
import subprocess
import time
import traceback
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from bench.listen import Listener
from l3hostd.birdlab import BgpTopology, BirdRouter, SpeakerKind
from l3hostd.lab import Hypervisor, Lab, LabError, Netns, wait_until

PROTO_STATIC = 4
EVENT_TIMEOUT = 10.0
BULK_TIMEOUT = 180.0


# ------------------------------------------------------------------------------ helpers


class IpBatch:
    """A running ``ip -force -batch -`` in a namespace: a command costs a pipe write, not a
    process start, so the time the bench writes it is the time it happens (to ~0.1 ms)."""

    def __init__(self, lab: Lab, ns: Netns) -> None:
        self.proc = subprocess.Popen(
            ["ip", "-n", ns.name, "-force", "-batch", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, bufsize=1,
        )
        lab.on_close(self.close)

    def __call__(self, line: str) -> float:
        assert self.proc.stdin is not None
        t = time.monotonic()
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return t

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def listen(lab: Lab, ns: Netns, protocols: int | str) -> Listener:
    listener = Listener(ns.name, str(protocols))
    listener.start()
    lab.on_close(listener.stop)
    return listener


def tap_pair(hv: Hypervisor, vms: Netns, tap: str, peer: str, up: bool = True) -> None:
    """A TAP-named veth on ``hv`` whose peer (up) sits in ``vms``: it has carrier when up.
    With ``up=False`` the TAP is created down and never seen up before the bench says so."""
    hv.ns.ip("link", "add", tap, "type", "veth", "peer", "name", peer, "netns", vms.name)
    vms.ip("link", "set", peer, "up")
    if up:
        hv.ns.ip("link", "set", tap, "up")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(values: list[float], digits: int = 3) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "median": round(statistics.median(values), digits),
        "p95": round(pct(values, 95), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
    }


def wait_event(table: dict[str, float], key: str, after: float = 0.0) -> float:
    """Wait until ``table[key]`` holds a time later than ``after``; return it."""
    wait_until(lambda: table.get(key, 0.0) > after, EVENT_TIMEOUT, interval=0.0005,
               what=f"event for {key}")
    return table[key]


def event_prefix(block: int, j: int) -> str:
    """A /32 as the listener prints it."""
    return f"10.{block}.{j // 250}.{j % 250 + 1}/32"


# ------------------------------------------------------------------------------ (a) events


def measure_events(kind: SpeakerKind, events: int, gap: float) -> dict[str, list[float]]:
    """One lab; ``events`` kernel-route adds and deletes on hv1 (and for l3hostd, as many
    TAP ups and downs); latency in ms to hv2's FIB."""
    out: dict[str, list[float]] = {"route_add_ms": [], "route_del_ms": []}
    with Lab("l3bgp") as lab:
        topo = BgpTopology(lab, hypervisors=2, ipv6=False, speaker=kind)
        vms = lab.netns("vms")
        hv1, hv2 = topo.hv(1), topo.hv(2)
        tap_pair(hv1, vms, "tapbench0", "p0")
        topo.start(timeout=30)
        src = listen(lab, hv1.ns, PROTO_STATIC)
        dst = listen(lab, hv2.ns, topo.learned_proto)
        batch = IpBatch(lab, hv1.ns)
        time.sleep(0.5)  # both speakers past their initial table exchange

        for j in range(events):
            ip = event_prefix(30, j)
            batch(f"route add {ip} dev tapbench0 proto static")
            t_src = wait_event(src.route_added, ip)
            out["route_add_ms"].append(1000 * (wait_event(dst.route_added, ip, t_src) - t_src))
            time.sleep(gap)
            batch(f"route del {ip} dev tapbench0 proto static")
            t_src = wait_event(src.route_deleted, ip)
            out["route_del_ms"].append(
                1000 * (wait_event(dst.route_deleted, ip, t_src) - t_src))
            time.sleep(gap)

        if kind == "l3hostd":
            out["tap_up_ms"], out["tap_down_ms"] = [], []
            for j in range(events):
                ip = event_prefix(31, j)
                port = f"c{j:05d}00-0000-4000-8000-{lab.tag}000000"
                tap = f"tap{port[:11]}"
                mac = f"fa:16:3e:31:{j // 256:02x}:{j % 256:02x}"
                ep = {"id": port, "interface": tap, "mac": mac, "ips": [ip.removesuffix("/32")]}
                path = hv1.endpoints / f"{tap}.yaml"
                path.with_suffix(".tmp").write_text(yaml.safe_dump(ep))
                path.with_suffix(".tmp").rename(path)
                tap_pair(hv1, vms, tap, f"q{j}", up=False)
                time.sleep(0.05)  # the daemon has read the file and seen the (down) TAP
                batch(f"link set {tap} up")
                t_up = wait_event(src.link_up, tap)
                out["tap_up_ms"].append(1000 * (wait_event(dst.route_added, ip, t_up) - t_up))
                time.sleep(gap)
                t_down = batch(f"link set {tap} down")
                out["tap_down_ms"].append(
                    1000 * (wait_event(dst.route_deleted, ip, t_down) - t_down))
                time.sleep(gap)
        if src.overflows or dst.overflows:
            raise LabError(f"listener overflow: hv1 {src.overflows}, hv2 {dst.overflows}")
    return {key: [round(v, 4) for v in values] for key, values in out.items()}


# ------------------------------------------------------------------------------ (b) bulk


def session_up_at(rr: BirdRouter, client: str, after: float) -> float | None:
    """When the reflector's session to ``client`` last went up (its log line ``<client>:
    State changed to up``, wall clock with microseconds), as CLOCK_MONOTONIC; None if not
    after ``after``. Taken on the reflector, not from the speaker under test: a speaker
    busy decoding 100k routes answers its control socket late (l3hostctl showed
    Established ~0.7 s after the first route was installed)."""
    found = re.findall(rf"^(\S+ \S+) <\w+> {re.escape(client)}: State changed to up$",
                       rr.log(), re.M)
    if not found:
        return None
    wall = datetime.strptime(found[-1], "%Y-%m-%d %H:%M:%S.%f").timestamp()
    mono = wall - (time.time() - time.monotonic())
    return mono if mono > after else None


def fib_prefixes(path: str) -> int:
    """IPv4 prefixes in a namespace's FIB, from ``fib_triestat`` (main and local tables;
    ``Main:`` comes first). Kernel-side count, no dump: ~30 us empty, 3-5 ms at 100k."""
    with open(path) as f:
        text = f.read()
    match = re.search(r"Prefixes:\s+(\d+)", text)
    if not match:
        raise LabError(f"{path}: no prefix count")
    return int(match.group(1))


def measure_bulk(kind: SpeakerKind, routes: int, poll: float) -> dict[str, Any]:
    """One lab; the reflector holds ``routes`` statics; hv2's speaker is started and
    timed until all of them are in its kernel FIB.

    The FIB is counted by polling ``/proc/<speaker pid>/net/fib_triestat`` every ``poll``
    seconds rather than with the netlink listener: 100k notifications parsed by a Python
    process on this 2-vCPU machine slowed BIRD's install from ~0.7 s to ~3.4 s, and the
    kernel would build route notifications that l3hostd, which subscribes to no route
    group, never asks for."""
    with Lab("l3bgp") as lab:
        topo = BgpTopology(lab, hypervisors=2, ipv6=False, speaker=kind,
                           rr_static_routes=routes, rr_static_prefix="10.200.0.0/13")
        t0 = time.monotonic()
        topo.start_rr()
        wait_until(lambda: topo.rr.route_count() >= routes, 120, interval=0.1,
                   what="reflector's static routes")
        rr_loaded_s = time.monotonic() - t0
        hv2 = topo.hv(2)
        base = int(re.findall(r"Prefixes:\s+(\d+)", hv2.ns.run(
            "cat", "/proc/net/fib_triestat").stdout)[0])
        speaker = topo.speaker(2)
        t_start = time.monotonic()
        speaker.start()
        stat = f"/proc/{speaker.pid}/net/fib_triestat"
        t_first = 0.0
        limit = time.monotonic() + BULK_TIMEOUT
        while True:
            now = time.monotonic()
            if now > t_start + 60 and session_up_at(topo.rr, "hv2", t_start) is None:
                raise LabError(f"{kind} on hv2: no session to the reflector after 60 s")
            count = fib_prefixes(stat) - base
            if count > 0 and not t_first:
                t_first = now
            if count >= routes:
                t_all = now
                break
            if now > limit:
                raise LabError(f"{count} of {routes} routes in hv2's FIB after {BULK_TIMEOUT}s")
            if not speaker.running():
                raise LabError(f"{kind} on hv2 exited")
            time.sleep(poll)
        t_est = session_up_at(topo.rr, "hv2", t_start)
        if t_est is None:
            raise LabError(f"{kind} on hv2: the reflector logged no session up")
        in_fib = len(hv2.ns.ip("route", "show", "proto", str(topo.learned_proto)
                               ).stdout.splitlines())
        rss = speaker.rss_kib()
        return {
            "routes": routes,
            "in_fib": in_fib,
            "rr_loaded_s": round(rr_loaded_s, 3),
            "start_to_established_s": round(t_est - t_start, 3),
            "established_to_all_s": round(t_all - t_est, 3),
            "established_to_first_s": round(t_first - t_est, 3),
            "first_to_last_s": round(t_all - t_first, 3),
            "peak_rss_mib": round(rss.hwm_kib / 1024, 1),
            "rss_mib": round(rss.rss_kib / 1024, 1),
        }


# ------------------------------------------------------------------------------ report

ROWS: list[tuple[str, str, str, str]] = [
    # (label, section, key, unit)
    ("kernel route add hv1 -> hv2 FIB", "events", "route_add_ms", "ms"),
    ("kernel route del hv1 -> gone from hv2 FIB", "events", "route_del_ms", "ms"),
    ("TAP up (endpoint file) hv1 -> hv2 FIB", "events", "tap_up_ms", "ms"),
    ("TAP down hv1 -> gone from hv2 FIB", "events", "tap_down_ms", "ms"),
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
    parser.add_argument("--gap", type=float, default=0.05,
                        help="pause between events, seconds")
    parser.add_argument("--poll", type=float, default=0.01,
                        help="bulk: FIB count poll interval, seconds")
    parser.add_argument("--speaker", choices=["both", "bird", "l3hostd"], default="both")
    parser.add_argument("--skip", choices=["events", "bulk"], action="append", default=[])
    parser.add_argument("--out", default="bench/results/bgp.json")
    args = parser.parse_args()
    kinds: list[SpeakerKind] = ["bird", "l3hostd"] if args.speaker == "both" else [args.speaker]
    result: dict[str, Any] = {
        "machine": {"kernel": platform.release(), "cpus": _cpus(),
                    "python": platform.python_version(), "bird": _bird_version()},
        "params": {"runs": args.runs, "routes": args.routes, "events": args.events,
                   "gap_s": args.gap, "poll_s": args.poll},
        "runs": [],
    }
    for r in range(args.runs):
        run: dict[str, Any] = {}
        result["runs"].append(run)
        for kind in kinds:
            data: dict[str, Any] = run.setdefault(kind, {})
            for section, fn in (("events", lambda k=kind: measure_events(k, args.events,
                                                                         args.gap)),
                                ("bulk", lambda k=kind: measure_bulk(k, args.routes, args.poll))):
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
                    brief = {k: summary(v)["median"] for k, v in data[section].items() if v}
                    print(f"  medians (ms): {brief}", flush=True)
                else:
                    print(f"  {data[section]}", flush=True)
    print()
    print(report(result, kinds))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwritten to {args.out}")


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


def _bird_version() -> str:
    proc = subprocess.run(["bird", "--version"], capture_output=True, text=True, check=False)
    return (proc.stdout + proc.stderr).strip()


if __name__ == "__main__":
    main()
