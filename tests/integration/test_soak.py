"""The soak, CI-sized: one minute of TAPs created and deleted at 10/s on hv1 with BGP
sessions up to a BIRD 2 reflector (:mod:`bench.soak`; the long run is
``python -m bench.soak --minutes 10``). ``L3HOSTD_SOAK_SECONDS`` changes the duration.

Asserted: after a 20 s warm-up the daemon's RSS grows by less than 2 MiB and its open
file descriptors stay flat; once the churn stops, hv1's routes, neighbour entries and nft
elements, the reflector's table and hv2's learned routes hold exactly the live endpoints
(nothing of the deleted ones); no session flapped; the churn kept its rate.
"""

from __future__ import annotations

import os

from bench.soak import run_soak
from l3hostd.lab import Lab

SECONDS = float(os.environ.get("L3HOSTD_SOAK_SECONDS", "60"))


def test_soak_taps_at_10_per_second_flat_memory_nothing_left(lab: Lab) -> None:
    result = run_soak(lab, SECONDS, rate=10.0, live=50, warmup=min(20.0, SECONDS / 3),
                      log=lambda _line: None)
    print(result.summary())
    assert result.problems(max_drift_mib=2.0) == [], result.summary()
    # the churn ran at its rate (creations and deletions), so the numbers mean something
    assert result.created >= 0.9 * 10 * SECONDS, result.created
    assert result.deleted >= result.created - 50 - 1
