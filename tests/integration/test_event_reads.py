"""An isolated event is read without a recv() that would block (l3hostd.netlink.queued).

Such a recv() raises BlockingIOError, and building that exception cost ~40 us on a CPU
back from idle, once per event and per request batch: three times on the path from a TAP
coming up to its announcement. The probe runs the link monitor, the kernel-learn watcher
and a request batch on uvloop inside a throw-away namespace and counts those reads.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from l3hostd.lab import Lab

PROBE = Path(__file__).with_name("reads_probe.py")


def test_one_event_is_read_without_a_read_that_would_block(lab: Lab) -> None:
    out = json.loads(lab.netns("reads").run(sys.executable, str(PROBE), timeout=60).stdout)

    monitor = out["monitor"]
    assert monitor["events"] >= 3  # up, down, up (a carrier change may add one)
    assert monitor["would_block"] == 0, monitor
    assert monitor["reads"] == monitor["events"]

    watch = out["watch"]
    assert watch["changes"] == [["10.77.0.1/32", 0], ["10.77.0.1/32", None]]
    assert watch["would_block"] == 0, watch

    small = out["small"]
    assert small["results"] == [[0]] * 5
    assert small["would_block"] == 0, small
    assert small["reads"] == 5  # one answer, one read
    assert out["bulk"] == {"ok": True, "dumped": 3005}
