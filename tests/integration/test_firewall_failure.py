"""nft failing: the endpoint is not activated (no route, no announcement), the error is
visible, and everything recovers once nft works again. Also: a restart adopts the table
as it is (enforcement never stops, nothing is rewritten)."""

from __future__ import annotations

import os
import shutil
import signal
import stat

from l3hostd.lab import Hypervisor, Lab, wait_until


def test_nft_failure_fails_closed_and_recovers(lab: Lab) -> None:
    fabric = lab.netns("fabric")
    hv = Hypervisor(lab, "hv", 1)
    hv.attach_uplink(fabric)
    stub = lab.workdir / "nft"
    real = shutil.which("nft")
    assert real is not None
    stub.write_text("#!/bin/sh\necho 'Error: simulated nft failure' >&2\nexit 1\n")
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    hv.write_config()
    hv.start({**os.environ, "NFT": str(stub)})
    wait_until(lambda: hv.socket.exists(), 10, what="control socket")
    vm = hv.add_vm("vm1", 11)
    hv.write_endpoint(vm)

    def row() -> dict[str, object]:
        rows = hv.ctl("show", "endpoints")
        assert isinstance(rows, list)
        return rows[0] if rows else {}

    wait_until(lambda: row().get("state") == "firewall-pending", 10, what="pending state")
    assert "simulated nft failure" in str(row()["reason"])
    assert hv.routes("-4") == [], "no route for an endpoint whose firewall failed"
    status = hv.ctl("show", "status")
    assert isinstance(status, dict) and "simulated" in str(status["firewall_error"])

    stub.write_text(f'#!/bin/sh\nexec {real} "$@"\n')  # nft works again
    wait_until(lambda: row().get("state") == "active", 40, interval=0.2,
               what="activation after nft recovered (backoff)")
    wait_until(lambda: len(hv.routes("-4")) == 1, 5, what="route")


def test_restart_adopts_the_table_without_rewriting_it(lab: Lab) -> None:
    fabric = lab.netns("fabric")
    hv = Hypervisor(lab, "hv", 1)
    hv.attach_uplink(fabric)
    hv.start()
    hv.wait_ready()
    vm = hv.add_vm("vm1", 11)
    hv.write_endpoint(vm)
    wait_until(lambda: len(hv.routes("-4")) == 1, 10, what="route")
    chains = hv.ns.run("nft", "-a", "list", "table", "inet", "l3hostd").stdout
    hv.stop(signal.SIGKILL)
    hv.start()
    hv.wait_ready()
    after = hv.ns.run("nft", "-a", "list", "table", "inet", "l3hostd").stdout
    # rule handles of the endpoint's chains are unchanged: adopted, not rewritten
    ep_lines = [line for line in chains.splitlines() if "l3hostd:" in line]
    assert ep_lines and all(line in after for line in ep_lines), (chains, after)
