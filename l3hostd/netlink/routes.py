"""Host-route reconciler: ``<ip>/32|/128 dev <tap> scope link proto l3hostd``.

Ownership is the ``rtm_protocol`` (:data:`~l3hostd.model.RTPROT_L3HOSTD`): the resync dump
asks the kernel for our protocol only (a kernel-side filtered dump: 36 ms at 100k routes),
so a route of another protocol is never observed, never compared, never deleted. Adds are
exclusive: when another daemon's route already holds the key the add fails with EEXIST, the
conflict is logged and retried with backoff, and the foreign route stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from l3hostd.model import RTPROT_L3HOSTD, HostRoute, RouteKey
from l3hostd.netlink.kernel import Kernel
from l3hostd.reconcile import Reconciler


class RouteReconciler(Reconciler[RouteKey, HostRoute]):
    name = "routes"

    def __init__(self, kernel: Kernel, protocol: int = RTPROT_L3HOSTD) -> None:
        super().__init__()
        self._kernel = kernel
        self._protocol = protocol
        self._by_group = {}  # observed routes by device (forget_ifindex)

    def _group(self, key: RouteKey, value: HostRoute) -> int:
        return value.ifindex

    async def _dump(self) -> dict[RouteKey, HostRoute]:
        return {r.key: r for r in await self._kernel.dump_routes(self._protocol)}

    async def _write(
        self, deletes: Sequence[tuple[Any, HostRoute]], adds: Sequence[tuple[Any, HostRoute]]
    ) -> list[int]:
        return await self._kernel.write_routes([v for _, v in deletes], [v for _, v in adds])

    def forget_ifindex(self, ifindex: int) -> list[RouteKey]:
        """The device went down or away: the kernel flushed its routes silently. Returns
        their keys."""
        keys = self.observed_in(ifindex)
        self.forget_observed(keys)
        return keys
