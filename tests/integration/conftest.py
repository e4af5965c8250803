"""Integration tests: root, network namespaces created and removed by each test."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest

from l3hostd.lab import Lab


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    missing = [t for t in ("ip", "ping") if shutil.which(t) is None]
    reason = "needs root" if os.geteuid() != 0 else f"missing tools: {missing}" if missing else ""
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.root)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Iterator[Lab]:
    with Lab("l3t") as lab:
        yield lab
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            for log in sorted(lab.workdir.glob("*.log")):
                print(f"----- {log.name}\n{log.read_text(errors='replace')[-4000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)
