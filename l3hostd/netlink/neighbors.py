"""Neighbour reconciler: ``<vm ip> lladdr <vm mac> dev <tap> nud permanent``.

The host never has to ARP/ND for a VM it routes to: the entry is permanent. Ours are the
permanent entries on managed TAPs (interfaces matching ``interface_patterns``); entries on
other devices, and dynamic entries, are not read, so never swept. Adds use NLM_F_REPLACE:
on a managed TAP a learnt (dynamic) entry for a VM address is ours to overwrite.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import Any

from l3hostd.model import Neighbour, NeighbourKey
from l3hostd.netlink.kernel import Kernel
from l3hostd.reconcile import Reconciler


class NeighbourReconciler(Reconciler[NeighbourKey, Neighbour]):
    name = "neighbours"

    def __init__(self, kernel: Kernel, managed_ifindexes: Callable[[], Collection[int]]) -> None:
        super().__init__()
        self._kernel = kernel
        self._managed = managed_ifindexes
        self._by_group = {}  # observed entries by device (forget_ifindex)

    def _group(self, key: NeighbourKey, value: Neighbour) -> int:
        return key.ifindex

    async def _dump(self) -> dict[NeighbourKey, Neighbour]:
        return {n.key: n for n in await self._kernel.dump_neighbours(self._managed())}

    async def _write(
        self, deletes: Sequence[tuple[Any, Neighbour]], adds: Sequence[tuple[Any, Neighbour]]
    ) -> list[int]:
        return await self._kernel.write_neighbours([v for _, v in deletes], [v for _, v in adds])

    def forget_ifindex(self, ifindex: int) -> None:
        self.forget_observed(self.observed_in(ifindex))
