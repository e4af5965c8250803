"""Run inside a test namespace by test_driver.py (on uvloop): exercises the real driver
and the link monitor and prints one JSON object with what it saw."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from ipaddress import ip_address, ip_network

import uvloop

from l3hostd.model import HostRoute, Link, Neighbour, TapConfig
from l3hostd.netlink.driver import NetlinkDriver, open_pyroute2
from l3hostd.netlink.monitor import LinkMonitor


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


async def main() -> dict[str, object]:
    out: dict[str, object] = {"loop": type(asyncio.get_running_loop()).__module__}
    driver = NetlinkDriver()
    await driver.open()

    # 1. our link parser agrees with pyroute2's (on uvloop, through the compat layer)
    ipr = open_pyroute2()
    ref = {}
    async for msg in await ipr.link("dump"):
        ref[msg["index"]] = [msg.get_attr("IFLA_IFNAME"), msg["flags"]]
    ipr.close()
    ours = {link.ifindex: [link.ifname, (1 if link.admin_up else 0)] for link in
            await driver.dump_links()}
    for v in ref.values():
        v[1] = v[1] & 1  # IFF_UP (the carrier flag may change between the two dumps)
    out["links_match_pyroute2"] = ours == ref
    out["links"] = len(ours)

    # 2. the monitor sees appear, up, rename, delete
    events: list[tuple[str, int, str, bool]] = []
    monitor = LinkMonitor(
        lambda link: events.append(("link", link.ifindex, link.ifname, link.up)),
        lambda ifindex: events.append(("gone", ifindex, "", False)),
        lambda: events.append(("overflow", 0, "", False)),
    )
    monitor.start()
    ip("link", "add", "tapmon0", "type", "veth", "peer", "name", "peer0")
    ip("link", "set", "peer0", "up")
    ip("link", "set", "tapmon0", "up")
    ip("link", "set", "tapmon0", "down")
    ip("link", "set", "tapmon0", "name", "tapmon1")
    ip("link", "del", "tapmon1")
    await asyncio.sleep(0.2)
    monitor.stop()
    out["events"] = events

    # 3. routes, neighbours, tap config: write, dump, delete
    ip("link", "add", "tapdrv0", "type", "veth", "peer", "name", "peer1")
    ip("link", "set", "peer1", "up")
    ip("link", "set", "tapdrv0", "up")
    link = next(li for li in await driver.dump_links() if li.ifname == "tapdrv0")
    assert isinstance(link, Link)
    routes = [HostRoute(ip_network("10.9.0.1/32"), link.ifindex, scope=253),
              HostRoute(ip_network("2001:db8:9::1/128"), link.ifindex, scope=0)]
    neighs = [Neighbour(link.ifindex, ip_address("10.9.0.1"), "fa:16:3e:00:00:09"),
              Neighbour(link.ifindex, ip_address("2001:db8:9::1"), "fa:16:3e:00:00:09")]
    tap = TapConfig(link.ifindex, link.ifname)
    out["write_routes"] = await driver.write_routes([], routes)
    out["write_again_eexist"] = await driver.write_routes([], routes[:1])
    out["write_neigh"] = await driver.write_neighbours([], neighs)
    out["tap_before"] = len(await driver.dump_tap_configs([tap]))
    out["write_tap"] = await driver.write_tap_configs([tap])
    out["tap_after"] = len(await driver.dump_tap_configs([tap]))
    out["dump_routes"] = sorted(str(r) for r in await driver.dump_routes(44))
    out["routes_equal"] = sorted(map(str, routes)) == out["dump_routes"]
    out["dump_neigh_equal"] = set(await driver.dump_neighbours({link.ifindex})) == set(neighs)
    out["ip_route"] = subprocess.run(["ip", "route", "show", "10.9.0.1/32"], capture_output=True,
                                     text=True).stdout.strip()
    out["del_routes"] = await driver.write_routes(routes, [])
    out["del_neigh"] = await driver.write_neighbours(neighs, [])
    out["after_delete"] = [len(await driver.dump_routes(44)),
                           len(await driver.dump_neighbours({link.ifindex}))]
    driver.close()
    return out


if __name__ == "__main__":
    print(json.dumps(uvloop.run(main())))
    sys.exit(0)
