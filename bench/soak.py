"""Soak: TAPs created and deleted at 10/s on a hypervisor with BGP sessions up, for
minutes; the daemon's memory and file descriptors must stay flat and nothing may be
left behind.

Topology: :class:`~l3hostd.birdlab.BgpTopology` (BIRD 2 reflector ``rr``, l3hostd on
``hv1`` and ``hv2``, IPv4 sessions). On hv1, every ``1/rate`` seconds an endpoint is
created (its file written, atomic rename, then its TAP -- a macvlan named like a TAP,
IPv4 only, see ``bench/common.py`` -- added and set up through one long-running
``ip -batch``), and once ``live`` endpoints exist the oldest is deleted at the same time
(TAP deleted, then its file): ``rate`` creations and ``rate`` deletions per second, every
TAP name and address new. Every ``sample_every`` seconds the daemon's VmRSS
(``/proc/PID/status``) and open file descriptors (``/proc/PID/fd``) are sampled.

Verdict (:class:`SoakResult`): RSS drift = median RSS of the last samples minus median RSS
of the samples at the end of the warm-up (the first ``warmup`` seconds: the interpreter's
caches and arenas fill), and the slope of a least-squares line through the samples after
the warm-up; file descriptors after the warm-up must stay at their count at its end (a
socket opened on first use, e.g. the nf_tables one, is not a leak); and after the churn
the exact state
(:func:`bench.kstate.state_diff`): hv1's routes, neighbours and nft elements, the
reflector's table and hv2's learned routes hold exactly the live endpoints. The BGP
sessions must not have flapped.

Run: ``sudo .venv/bin/python -m bench.soak [--minutes 10] [--rate 10] [--live 50]
[--out bench/results/soak.json]``. ``tests/integration/test_soak.py`` runs one minute.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.common import IPV4_ONLY_TAPS, IpBatch, Port, ip_batch
from bench.kstate import state_diff
from bench.stats import linear_fit
from l3hostd.birdlab import BgpTopology, process_rss
from l3hostd.lab import Hypervisor, Lab

#: Endpoints of the soak: 10.43.0.0/16 is room for 65k TAPs (10 min at 10/s: 6,000).
SOAK_NET = "10.43.0.0"


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the churn started
    rss_kib: int
    fds: int
    live: int


@dataclass
class SoakResult:
    seconds: float
    rate: float
    created: int = 0
    deleted: int = 0
    warmup: float = 0.0
    fds_before: int = 0
    fds_warm: int = 0
    fds_max_after_warmup: int = 0
    fds_after: int = 0
    rss_warm_kib: float = 0.0
    rss_end_kib: float = 0.0
    rss_slope_kib_per_min: float | None = None
    converge_seconds: float = 0.0
    final_diff: str = ""
    flaps: dict[str, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)

    @property
    def rss_drift_kib(self) -> float:
        return self.rss_end_kib - self.rss_warm_kib

    def summary(self) -> str:
        slope = ("n/a" if self.rss_slope_kib_per_min is None
                 else f"{self.rss_slope_kib_per_min:+.0f} KiB/min")
        return (f"soak {self.seconds:.0f}s at {self.rate:g}/s: {self.created} TAPs created, "
                f"{self.deleted} deleted; RSS after warm-up {self.rss_warm_kib / 1024:.1f} MiB "
                f"-> end {self.rss_end_kib / 1024:.1f} MiB (drift "
                f"{self.rss_drift_kib / 1024:+.2f} MiB, slope {slope}); fds before "
                f"{self.fds_before}, after warm-up {self.fds_warm}, max after warm-up "
                f"{self.fds_max_after_warmup}, at the end {self.fds_after}; exact state "
                f"{self.converge_seconds:.1f}s after the churn: {self.final_diff or 'ok'}; "
                f"flaps {self.flaps}")

    def problems(self, max_drift_mib: float = 2.0) -> list[str]:
        """What fails the soak: state not exact, RSS drift, file descriptors not flat
        after the warm-up (a socket or two opened on first use are fine), flaps."""
        out = []
        if self.final_diff:
            out.append(f"state not exact: {self.final_diff}")
        if self.rss_drift_kib >= max_drift_mib * 1024:
            out.append(f"RSS drift {self.rss_drift_kib / 1024:.2f} MiB >= {max_drift_mib} MiB")
        if self.fds_after > self.fds_warm or self.fds_max_after_warmup > self.fds_warm + 2:
            out.append(f"file descriptors grew: {self.fds_warm} after warm-up, max "
                       f"{self.fds_max_after_warmup}, {self.fds_after} at the end")
        if any(self.flaps.values()):
            out.append(f"sessions flapped: {self.flaps}")
        return out


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _median(values: list[int]) -> float:
    return float(statistics.median(values)) if values else 0.0


class Churn:
    """Creates and deletes the soak's endpoints on ``hv`` (see the module docstring)."""

    def __init__(self, lab: Lab, hv: Hypervisor, live: int) -> None:
        self.hv = hv
        self.target = live
        self.live: deque[Port] = deque()
        self.created = 0
        self.deleted = 0
        # every TAP without IPv6 (see bench.common.fake_taps); their parent once
        hv.ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1")
        ip_batch(hv.ns, ["link add vmlink0 type veth peer name vmlink1",
                         "link set vmlink1 up", "link set vmlink0 up"])
        self.ip = IpBatch(lab, hv.ns)

    @staticmethod
    def port(n: int) -> Port:
        """The n-th endpoint of the soak (as :func:`bench.common.ports` numbers them)."""
        port_id = f"s{n:06x}0-0000-4000-8000-000000000000"
        return Port(port_id, f"tap{port_id[:11]}",
                    f"fa:16:3e:{(n >> 16) & 255:02x}:{(n >> 8) & 255:02x}:{n & 255:02x}",
                    str(ipaddress.IPv4Address(SOAK_NET) + 1 + n))

    def step(self) -> None:
        """One tick: create an endpoint; past the target, delete the oldest."""
        p = self.port(self.created)
        path = self.hv.endpoints / f"{p.tap}.yaml"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(f'id: {p.id}\ninterface: {p.tap}\nmac: "{p.mac}"\n'
                       f"ips: [{p.ip}]\nsecurity_groups: [default]\n")
        tmp.rename(path)
        self.ip(f"link add {p.tap} link vmlink0 type macvlan mode private")
        self.ip(f"link set {p.tap} up")
        self.live.append(p)
        self.created += 1
        if len(self.live) > self.target:
            old = self.live.popleft()
            self.ip(f"link del {old.tap}")
            (self.hv.endpoints / f"{old.tap}.yaml").unlink(missing_ok=True)
            self.deleted += 1


def _print(line: str) -> None:
    print(line, flush=True)


def run_soak(lab: Lab, seconds: float, rate: float = 10.0, live: int = 50,
             warmup: float | None = None, sample_every: float = 2.0,
             log: Callable[[str], None] = _print) -> SoakResult:
    """Run the soak in ``lab`` for ``seconds`` of churn; see the module docstring."""
    warmup = min(60.0, seconds / 3) if warmup is None else warmup
    result = SoakResult(seconds=seconds, rate=rate, warmup=warmup)
    topo = BgpTopology(lab, hypervisors=2, ipv6=False, speaker="l3hostd",
                       l3hostd_config={**IPV4_ONLY_TAPS, "logging": {"level": "info"}})
    topo.start(timeout=30)
    hv = topo.hv(1)
    pid = topo.speaker(1).pid
    churn = Churn(lab, hv, live)
    time.sleep(1)
    result.fds_before = open_fds(pid)
    start = time.monotonic()
    next_tick = next_sample = start
    while (now := time.monotonic()) - start < seconds:
        if now >= next_sample:
            s = Sample(round(now - start, 2), process_rss(pid).rss_kib, open_fds(pid),
                       len(churn.live))
            result.samples.append(s)
            if len(result.samples) % 15 == 1:
                log(f"  t={s.t:6.1f}s rss {s.rss_kib / 1024:.1f} MiB fds {s.fds} "
                    f"created {churn.created}")
            next_sample += sample_every
        if now >= next_tick:
            churn.step()
            next_tick += 1 / rate
            if next_tick < now - 1:  # more than a second behind: do not burst to catch up
                next_tick = now
        time.sleep(max(0.0, min(next_tick, next_sample) - time.monotonic()))
    result.created, result.deleted = churn.created, churn.deleted

    # converged to exactly the live endpoints, then idle: file descriptors back
    live_ports = list(churn.live)
    t = time.monotonic()
    diff = state_diff(topo, live_ports)
    while diff and time.monotonic() - t < 30:
        time.sleep(0.5)
        diff = state_diff(topo, live_ports)
    result.converge_seconds = time.monotonic() - t
    result.final_diff = diff
    time.sleep(1)
    result.fds_after = open_fds(pid)
    for i in (1, 2):
        peers = topo.hv(i).ctl("show", "peers")
        assert isinstance(peers, list)
        for peer in peers:
            result.flaps[f"hv{i}/{peer['name']}"] = int(str(peer["flaps"]))

    warm = [s for s in result.samples if s.t <= warmup]
    after = [s for s in result.samples if s.t > warmup]
    result.rss_warm_kib = _median([s.rss_kib for s in warm[-3:]])
    result.fds_warm = warm[-1].fds if warm else result.fds_before
    result.fds_max_after_warmup = max((s.fds for s in after), default=result.fds_warm)
    result.rss_end_kib = _median([s.rss_kib for s in result.samples[-3:]])
    fit = linear_fit([s.t for s in after], [float(s.rss_kib) for s in after])
    result.rss_slope_kib_per_min = None if fit is None else fit.slope * 60
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=10.0, help="creations (and deletions) /s")
    parser.add_argument("--live", type=int, default=50, help="endpoints alive at a time")
    parser.add_argument("--warmup", type=float, help="seconds (default: a third, <= 60)")
    parser.add_argument("--max-drift-mib", type=float, default=2.0)
    parser.add_argument("--out", default="bench/results/soak.json")
    args = parser.parse_args(argv)
    with Lab("l3s") as lab:
        result = run_soak(lab, args.minutes * 60, args.rate, args.live, args.warmup)
    print(result.summary())
    out = {**asdict(result), "rss_drift_kib": result.rss_drift_kib}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    problems = result.problems(args.max_drift_mib)
    print("PASS" if not problems else "FAIL: " + "; ".join(problems), f"(results in {args.out})")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
