"""Bench: endpoints -> host routes on one hypervisor, with the real ``l3hostd run``.

Two numbers (issue 2's acceptance), measured in a throw-away namespace lab:

1. **Burst**: 1000 endpoints created at once (endpoint files written and TAPs created in
   one go) -> time until all 2000 host routes (/32 + /128) are in the kernel. The time to
   create 1000 veth pairs is part of it and is reported separately.
2. **Per-event latency** with those 1000 endpoints loaded: TAP up (the kernel's
   RTM_NEWLINK with IFF_UP|IFF_LOWER_UP) -> RTM_NEWROUTE of its /32, both timestamped by
   one netlink listener in the hypervisor namespace, so the latency is the daemon's alone.

TAPs are veth pairs named like TAPs whose peers sit in a "vms" namespace (a veth has
carrier when both ends are up, as a tap has when its VM is attached).

Run: ``sudo .venv/bin/python -m bench.endpoints [--endpoints 1000] [--events 40]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import time
from pathlib import Path

import yaml

from bench.listen import Listener
from l3hostd.lab import Hypervisor, Lab, wait_until


def endpoint(i: int) -> dict[str, object]:
    port = f"b{i:05d}00-0000-4000-8000-000000000000"
    return {
        "id": port,
        "interface": f"tap{port[:11]}",
        "mac": f"fa:16:3e:20:{i // 256:02x}:{i % 256:02x}",
        "ips": [f"10.20.{i // 250}.{i % 250 + 2}", f"2001:db8:20::{i:x}"],
    }


def ip_batch(ns: str, lines: list[str]) -> None:
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n",
                   text=True, check=True, capture_output=True)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoints", type=int, default=1000)
    parser.add_argument("--events", type=int, default=40)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--profile", help="cProfile the daemon into this file")
    parser.add_argument("--out", default="bench/results/endpoints.json")
    args = parser.parse_args()
    n = args.endpoints
    with Lab("l3b") as lab:
        fabric = lab.netns("fabric")
        vms = lab.netns("vms")
        hv = Hypervisor(lab, "hv", 1)
        hv.attach_uplink(fabric)
        hv.write_config({"logging": {"level": args.log_level}})
        env = None
        if args.profile:
            env = {**os.environ, "L3HOSTD_PROFILE": args.profile}
        hv.start(env)
        hv.wait_ready()
        listener = Listener(hv.ns.name)
        listener.start()
        lab.on_close(listener.stop)

        # 1. burst: files and TAPs at once
        eps = [endpoint(i) for i in range(n)]
        # rendered beforehand: the orchestrator's YAML rendering is not the daemon's cost
        files = [(hv.endpoints / f"{ep['interface']}.yaml", yaml.safe_dump(ep)) for ep in eps]
        t0 = time.monotonic()
        for path, text in files:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.rename(path)
        t_files = time.monotonic()
        ip_batch(hv.ns.name, [f"link add {ep['interface']} type veth peer name p{i} netns "
                              f"{vms.name}" for i, ep in enumerate(eps)])
        ip_batch(vms.name, [f"link set p{i} up" for i in range(n)])
        ip_batch(hv.ns.name, [f"link set {ep['interface']} up" for ep in eps])
        t_taps = time.monotonic()
        try:
            wait_until(lambda: len(listener.routes_now) >= 2 * n, 60, interval=0.002,
                       what=f"{2 * n} routes")
        except Exception:
            # say whose view is short: the listener's (missed events) or the kernel's
            kernel = hv.ns.run("sh", "-c", "ip route show proto 44; ip -6 route show proto 44")
            print(f"listener saw {len(listener.routes_now)} routes, overflows "
                  f"{listener.overflows}; kernel has {len(kernel.stdout.splitlines())}; "
                  f"daemon: {json.dumps(hv.ctl('show', 'status'))[:2000]}", flush=True)
            raise
        t_done = max(listener.route_added.values())
        last_up = max(listener.link_up.values())
        burst = {
            "endpoints": n,
            "routes": len(listener.routes_now),
            "all_routes_installed_s": round(t_done - t0, 3),
            "writing_files_s": round(t_files - t0, 3),
            "creating_taps_s": round(t_taps - t_files, 3),
            "last_tap_up_to_last_route_ms": round(1000 * (t_done - last_up), 1),
        }
        print(json.dumps({"burst": burst}, indent=2), flush=True)

        # 2. one TAP at a time, 1000 loaded
        lat: list[float] = []
        for j in range(args.events):
            i = n + j
            ep = endpoint(i)
            path = hv.endpoints / f"{ep['interface']}.yaml"
            path.write_text(yaml.safe_dump(ep))
            ip_batch(hv.ns.name, [f"link add {ep['interface']} type veth peer name p{i} netns "
                                  f"{vms.name}"])
            ip_batch(vms.name, [f"link set p{i} up"])
            time.sleep(0.05)  # the daemon has read the file and seen the (down) TAP
            ip_batch(hv.ns.name, [f"link set {ep['interface']} up"])
            dst = f"{ep['ips'][0]}/32"  # type: ignore[index]
            wait_until(lambda dst=dst: dst in listener.route_added, 5, interval=0.001)
            lat.append(1000 * (listener.route_added[dst] - listener.link_up[ep["interface"]]))  # type: ignore[index]
        per_event = {
            "events": len(lat),
            "loaded_endpoints": n,
            "median_ms": round(statistics.median(lat), 3),
            "p95_ms": round(pct(lat, 95), 3),
            "min_ms": round(min(lat), 3),
            "max_ms": round(max(lat), 3),
        }
        print(json.dumps({"tap_up_to_route": per_event}, indent=2), flush=True)
        status = hv.ctl("show", "status")
        result = {
            "machine": {"kernel": platform.release(), "cpus": _cpus(),
                        "python": platform.python_version()},
            "burst": burst,
            "tap_up_to_route": per_event,
            "daemon": {"passes": status["passes"] if isinstance(status, dict) else None},
            "listener_overflows": listener.overflows,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {args.out}")


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


if __name__ == "__main__":
    socket.setdefaulttimeout(10)
    main()
