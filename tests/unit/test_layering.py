"""Import layering: pure modules import no IO, and only driver.py imports pyroute2."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "l3hostd"
PURE = [
    "model.py",
    "calc.py",
    "reconcile.py",
    "endpoints/parse.py",
    "netlink/wire.py",
    "bgp/messages.py",
    "bgp/fsm.py",
    "bgp/framing.py",
    "bgp/rib.py",
    "bgp/adj_rib_out.py",
    "firewall/compile.py",
    "fastnet.py",
]
IO_MODULES = {
    "asyncio",
    "socket",
    "subprocess",
    "pyroute2",
    "uvloop",
    "exabgp",
    "os",
    "select",
    "selectors",
}
#: Our own IO modules (by full dotted name).
IO_OWN_MODULES = {"l3hostd.endpoints.inotify"}


def imports(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module.split(".")[0])
    return out


def dotted_imports(path: Path) -> set[str]:
    """Full names: ``import a.b`` -> a.b; ``from a.b import c`` -> a.b and a.b.c."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{alias.name}" for alias in node.names)
    return out


@pytest.mark.parametrize("module", PURE)
def test_pure_modules_do_no_io(module: str) -> None:
    assert not imports(ROOT / module) & IO_MODULES
    assert not dotted_imports(ROOT / module) & IO_OWN_MODULES


def test_only_the_driver_imports_pyroute2() -> None:
    users = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "pyroute2" in imports(p))
    assert users == ["netlink/driver.py"]


def test_only_the_codec_imports_exabgp() -> None:
    users = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if "exabgp" in imports(p))
    assert users in ([], ["bgp/codec.py"])
