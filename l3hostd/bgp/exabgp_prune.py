"""Keep the parts of ExaBGP a unicast speaker never runs out of the daemon's memory.

Why: importing ExaBGP's message package imports every family and attribute it knows --
BGP-LS (57 modules), FlowSpec, EVPN, MUP, MVPN, VPLS, RTC, SR Prefix-SID -- because its
package ``__init__`` files import them to register their parsers. Measured: 4.9 MiB of
RSS for ExaBGP and our codec, 3.0 MiB without those (a 50 MiB budget for the daemon).
None of it can run here: we negotiate IPv4 and IPv6 unicast only, and ExaBGP refuses an
MP_REACH/MP_UNREACH of a family that was not negotiated before it looks for the family's
parser (``MPRNLRI.unpack``: "presented a non-negotiated family"); the two attributes
(BGP-LS, type 29, and Prefix-SID, type 40) are then not registered, so ExaBGP reads them
as the unknown optional attributes they are to a unicast speaker (kept, never used).

How: :func:`install` puts a finder first on ``sys.meta_path`` that answers for those
subpackages (and only them) with placeholder modules: any name imported from one is an
inert class of that name, so the registering ``__init__`` files import without running a
line of the families' code. Installed by ``l3hostd.bgp`` before the codec imports ExaBGP;
the codec's tests (round trips, malformed UPDATEs, the fuzzers) run with it in place.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types
from collections.abc import Sequence

__all__ = ["PRUNED", "install"]

_UPDATE = "exabgp.bgp.message.update."
PRUNED: tuple[str, ...] = (
    _UPDATE + "attribute.bgpls",
    _UPDATE + "attribute.sr",
    _UPDATE + "nlri.bgpls",
    _UPDATE + "nlri.evpn",
    _UPDATE + "nlri.flow",
    _UPDATE + "nlri.mup",
    _UPDATE + "nlri.mvpn",
    _UPDATE + "nlri.rtc",
    _UPDATE + "nlri.vpls",
)


class _Placeholder(types.ModuleType):
    """A pruned module: every name imported from it is a class of that name, doing
    nothing (ExaBGP's ``__init__`` files only bind them)."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (), {"__module__": self.__name__})
        setattr(self, name, placeholder)
        return placeholder


class _Pruner:
    """Finder and loader of the placeholders (the protocols, not importlib.abc: that
    imports importlib.resources, tempfile, shutil... 0.5 MiB)."""

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.startswith(PRUNED) and (
            fullname in PRUNED or fullname.startswith(tuple(p + "." for p in PRUNED))
        ):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)  # type: ignore[arg-type]
        return None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        module = _Placeholder(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> None:
    """Idempotent; before ExaBGP's message package is imported (later has no effect)."""
    if not any(isinstance(f, _Pruner) for f in sys.meta_path):
        sys.meta_path.insert(0, _Pruner())
