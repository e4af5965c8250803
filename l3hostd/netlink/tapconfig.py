"""TAP configuration reconciler: proxy-ARP and forwarding sysctls, IPv6 gateway address.

One key per managed TAP (its ifindex). "Observed" means every setting is already right
(:mod:`l3hostd.netlink.sysctl`) and, with IPv6, ``fe80::1/64`` is on the TAP. Removing a
TapConfig from the desired state writes nothing: settings of a TAP whose endpoint went
away are harmless and the TAP normally disappears with its VM.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from l3hostd.model import TapConfig
from l3hostd.netlink.kernel import Kernel
from l3hostd.reconcile import Reconciler


class TapConfigReconciler(Reconciler[int, TapConfig]):
    name = "tapconfig"

    def __init__(self, kernel: Kernel, candidates: Callable[[], Collection[TapConfig]]) -> None:
        super().__init__()
        self._kernel = kernel
        self._candidates = candidates

    async def _dump(self) -> dict[int, TapConfig]:
        return {t.ifindex: t for t in await self._kernel.dump_tap_configs(self._candidates())}

    async def _write(
        self, deletes: Sequence[tuple[int, TapConfig]], adds: Sequence[tuple[int, TapConfig]]
    ) -> list[int]:
        errs = [0] * len(deletes)
        if adds:
            errs += await self._kernel.write_tap_configs([t for _, t in adds])
        return errs
