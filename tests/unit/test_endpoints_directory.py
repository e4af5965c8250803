"""The endpoint directory source: initial load, deltas, bad files, inotify and rescans.

Synchronous tests drive :meth:`DirectorySource.rescan` directly (the safety-net path);
the asynchronous ones run :meth:`DirectorySource.run` on a real inotify watch, under both
the default asyncio loop and uvloop, with bounded waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import pytest
import uvloop

import l3hostd.endpoints.directory as directory_module
from l3hostd.endpoints.directory import DirectorySource, SourceChange, is_source_name
from l3hostd.endpoints.inotify import Event, Mask

# ----------------------------------------------------------------------------- helpers


def endpoint_doc(n: int, **changes: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "id": f"port-{n}",
        "interface": f"tap-port-{n}",
        "mac": f"fa:16:3e:00:00:{n:02x}",
        "ips": [f"192.0.2.{n}"],
        "security_groups": ["default"],
    }
    doc.update(changes)
    return doc


def write_atomic(path: Path, doc: object | str) -> None:
    """How the orchestrator writes: a temporary file in the same directory, then rename."""
    text = doc if isinstance(doc, str) else json.dumps(doc)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Recorder:
    def __init__(self) -> None:
        self.changes: list[SourceChange] = []

    def __call__(self, change: SourceChange) -> None:
        self.changes.append(change)

    def last(self) -> SourceChange:
        assert self.changes, "on_change was not called"
        return self.changes[-1]

    def take(self) -> list[SourceChange]:
        taken, self.changes = self.changes, []
        return taken


def make_source(
    directory: Path, rescan_interval: float = 3600.0
) -> tuple[DirectorySource, Recorder]:
    recorder = Recorder()
    return DirectorySource(directory, recorder, rescan_interval=rescan_interval), recorder


@pytest.fixture
def epdir(tmp_path: Path) -> Path:
    d = tmp_path / "endpoints"
    (d / "security-groups").mkdir(parents=True)
    (d / "group-members").mkdir()
    write_atomic(d / "a.yaml", endpoint_doc(1))
    write_atomic(d / "b.json", endpoint_doc(2))
    write_atomic(
        d / "security-groups" / "default.yaml",
        "name: default\n"
        "rules:\n"
        "  - {direction: egress}\n"
        "  - {direction: ingress, remote_group: default}\n",
    )
    write_atomic(
        d / "group-members" / "default.yaml", {"group": "default", "ips": ["198.51.100.5"]}
    )
    return d


# ----------------------------------------------------------------------------- synchronous


def test_is_source_name() -> None:
    for name in ("a.yaml", "b.yml", "c.json", "tap1.YAML"):
        assert is_source_name(name)
    for name in (".a.yaml", "a.yaml.tmp", "a.yaml~", ".a.yaml.swp", "a.yaml.swp", "a.txt", "a"):
        assert not is_source_name(name)


def test_initial_load(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    assert set(source.endpoints()) == {"port-1", "port-2"}
    assert source.endpoints()["port-1"].ips == (IPv4Address("192.0.2.1"),)
    assert set(source.security_groups()) == {"default"}
    assert source.group_members() == {"default": frozenset({IPv4Address("198.51.100.5")})}
    assert source.errors == {}
    assert source.parse_errors_total == 0
    assert source.endpoint_file("port-2") == "b.json"
    assert recorder.changes == []  # load_initial leaves the first read to the caller


def test_missing_directory_is_created(tmp_path: Path) -> None:
    d = tmp_path / "not" / "yet"
    source, _ = make_source(d)
    source.load_initial()
    assert d.is_dir()
    assert source.endpoints() == {}
    assert source.errors == {}


def test_change_gives_delta(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    write_atomic(epdir / "a.yaml", endpoint_doc(1, ips=["192.0.2.1", "192.0.2.101"]))
    write_atomic(epdir / "c.yaml", endpoint_doc(3))
    source.rescan()
    change = recorder.last()
    assert set(change.endpoints_upserted) == {"port-1", "port-3"}
    assert change.endpoints_upserted["port-1"].ips[1] == IPv4Address("192.0.2.101")
    assert change.endpoints_removed == set()
    assert change.groups_changed == set()
    assert change.members_changed == set()


def test_unchanged_rescan_calls_nothing(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    source.rescan()
    source.rescan(force=True)  # re-reads everything, finds the same meaning
    assert recorder.changes == []


def test_malformed_rewrite_keeps_previous_version(
    epdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    before = source.endpoints()["port-1"]
    caplog.set_level(logging.INFO, logger="l3hostd.endpoints")

    write_atomic(epdir / "a.yaml", endpoint_doc(1, mac="not-a-mac"))
    source.rescan()
    assert source.endpoints()["port-1"] == before  # still in force
    assert source.errors == {
        "a.yaml": "a.yaml: mac: not a MAC address (expected six hex octets like "
        "fa:16:3e:12:34:56) (got 'not-a-mac')"
    }
    assert source.endpoint_errors() == {"port-1": source.errors["a.yaml"]}
    assert source.parse_errors_total == 1
    change = recorder.last()
    assert change.errors_changed and not change.endpoints_upserted
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [source.errors["a.yaml"]]

    source.rescan()  # nothing changed on disk: not re-read, not re-logged
    assert source.parse_errors_total == 1
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

    write_atomic(epdir / "a.yaml", endpoint_doc(1, mac="fa:16:3e:00:00:99"))
    source.rescan()
    assert source.errors == {}
    assert source.endpoint_errors() == {}
    assert recorder.last().endpoints_upserted["port-1"].mac == "fa:16:3e:00:00:99"
    assert any(
        r.levelno == logging.INFO and r.getMessage() == "a.yaml: valid again"
        for r in caplog.records
    )


def test_new_bad_file_is_only_an_error(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    (epdir / "c.yaml").write_text("id: port-3\ninterface: tap-3\n")  # no mac, no ips
    (epdir / "d.yaml").write_text("")  # empty: half-written
    source.rescan()
    assert set(source.errors) == {"c.yaml", "d.yaml"}
    assert source.errors["c.yaml"] == "c.yaml: mac: required key missing"
    assert source.errors["d.yaml"] == "d.yaml: empty file (half-written?)"
    assert set(source.endpoints()) == {"port-1", "port-2"}
    assert recorder.last() == SourceChange(errors_changed=True)


def test_delete_removes(epdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    (epdir / "b.json").unlink()
    (epdir / "security-groups" / "default.yaml").unlink()
    (epdir / "group-members" / "default.yaml").unlink()
    source.rescan()
    change = recorder.last()
    assert change.endpoints_removed == {"port-2"}
    assert change.groups_changed == {"default"}
    assert change.members_changed == {"default"}
    assert set(source.endpoints()) == {"port-1"}
    assert source.security_groups() == {}
    assert source.group_members() == {}

    # A bad file that is deleted takes its error with it.
    caplog.set_level(logging.INFO, logger="l3hostd.endpoints")
    (epdir / "x.yaml").write_text("id: [")
    source.rescan()
    assert "x.yaml" in source.errors
    (epdir / "x.yaml").unlink()
    source.rescan()
    assert source.errors == {}
    assert "x.yaml: removed (its error is cleared)" in caplog.messages


def test_deleting_a_bad_file_removes_its_previous_version(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    (epdir / "a.yaml").write_text("id: port-1\n")
    source.rescan()
    assert "port-1" in source.endpoints()
    (epdir / "a.yaml").unlink()
    source.rescan()
    assert recorder.last().endpoints_removed == {"port-1"}
    assert "a.yaml" not in source.errors


def test_id_change_is_remove_plus_upsert(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    write_atomic(epdir / "a.yaml", endpoint_doc(1, id="port-1-new"))
    source.rescan()
    change = recorder.last()
    assert change.endpoints_removed == {"port-1"}
    assert set(change.endpoints_upserted) == {"port-1-new"}


def test_rename_with_same_content_is_no_change(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    os.rename(epdir / "a.yaml", epdir / "z.yaml")
    source.rescan()
    assert recorder.changes == []
    assert source.endpoint_file("port-1") == "z.yaml"


def test_duplicate_id_first_by_sorted_name_wins(tmp_path: Path) -> None:
    d = tmp_path / "eps"
    d.mkdir()
    write_atomic(d / "b.yaml", endpoint_doc(1, interface="tap-b"))
    write_atomic(d / "a.yaml", endpoint_doc(1, interface="tap-a"))
    source, recorder = make_source(d)
    source.load_initial()
    assert source.endpoints()["port-1"].interface == "tap-a"
    assert source.errors == {
        "b.yaml": "b.yaml: id: endpoint already defined by a.yaml (got 'port-1')"
    }

    # A later file claiming a held id does not take it, whatever its name.
    write_atomic(d / "0.yaml", endpoint_doc(1, interface="tap-0"))
    source.rescan()
    assert source.endpoints()["port-1"].interface == "tap-a"
    assert set(source.errors) == {"0.yaml", "b.yaml"}
    assert not recorder.last().endpoints_upserted

    # When the holder goes, the first remaining claimant by name takes over.
    (d / "a.yaml").unlink()
    source.rescan()
    assert source.endpoints()["port-1"].interface == "tap-0"
    assert recorder.last().endpoints_upserted["port-1"].interface == "tap-0"
    assert set(source.errors) == {"b.yaml"}
    assert source.endpoint_file("port-1") == "0.yaml"


def test_temp_and_editor_files_are_ignored(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    for name in (".c.yaml", "c.yaml.tmp", "c.yaml~", ".c.yaml.swp", "c.txt", "README"):
        (epdir / name).write_text(json.dumps(endpoint_doc(3)))
    (epdir / "security-groups" / "x.yaml.tmp").write_text("name: [")
    source.rescan(force=True)
    assert recorder.changes == []
    assert set(source.endpoints()) == {"port-1", "port-2"}
    assert source.errors == {}


def test_group_name_differs_from_stem(epdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_atomic(epdir / "security-groups" / "webservers.yaml", "name: web\n")
    write_atomic(epdir / "group-members" / "webservers.yaml", {"group": "web", "ips": []})
    source, _ = make_source(epdir)
    with caplog.at_level(logging.WARNING, logger="l3hostd.endpoints"):
        source.load_initial()
    assert set(source.security_groups()) == {"default", "web"}
    assert source.group_members()["web"] == frozenset()
    assert (
        "security-groups/webservers.yaml: name 'web' differs from the file name; "
        "the name: key is what counts" in caplog.messages
    )
    assert source.errors == {}


def test_duplicate_group_name_is_an_error(epdir: Path) -> None:
    write_atomic(epdir / "security-groups" / "other.yaml", "name: default\n")
    source, _ = make_source(epdir)
    source.load_initial()
    assert source.security_groups()["default"].rules  # default.yaml < other.yaml
    assert source.errors == {
        "security-groups/other.yaml": "security-groups/other.yaml: name: security group "
        "already defined by security-groups/default.yaml (got 'default')"
    }


def test_group_and_member_changes(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    write_atomic(epdir / "security-groups" / "web.yaml", "name: web\nrules: []\n")
    write_atomic(epdir / "group-members" / "default.yaml", {"group": "default", "ips": []})
    source.rescan()
    change = recorder.last()
    assert change.groups_changed == {"web"}
    assert change.members_changed == {"default"}
    assert source.group_members()["default"] == frozenset()


def test_rescan_catches_changes_made_while_not_watching(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    # Rewrite in place keeping the inode, with a different size: the signature differs.
    (epdir / "a.yaml").write_text(json.dumps(endpoint_doc(1, ips=["192.0.2.201"])))
    (epdir / "b.json").unlink()
    source.rescan()
    change = recorder.last()
    assert change.endpoints_upserted["port-1"].ips == (IPv4Address("192.0.2.201"),)
    assert change.endpoints_removed == {"port-2"}
    assert source.rescans_total == 1


def test_subdirectory_created_later_is_scanned(tmp_path: Path) -> None:
    d = tmp_path / "eps"
    source, recorder = make_source(d)
    source.load_initial()
    (d / "group-members").mkdir()
    write_atomic(d / "group-members" / "web.json", {"group": "web", "ips": ["192.0.2.0/28"]})
    source.rescan()
    assert recorder.last().members_changed == {"web"}
    assert source.group_members()["web"] == frozenset({IPv4Network("192.0.2.0/28")})


def test_unreadable_directory_keeps_state(
    epdir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    real_scandir = os.scandir

    def failing_scandir(path: Any) -> Any:
        if Path(path) == epdir:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", failing_scandir)
    with caplog.at_level(logging.ERROR, logger="l3hostd.endpoints"):
        source.rescan()
    assert set(source.endpoints()) == {"port-1", "port-2"}  # nothing removed
    assert "./" in source.errors
    assert "cannot read directory" in source.errors["./"]
    assert any("retrying at the next rescan" in m for m in caplog.messages)
    assert recorder.last() == SourceChange(errors_changed=True)

    monkeypatch.setattr(os, "scandir", real_scandir)
    source.rescan()
    assert source.errors == {}


def test_unreadable_file_is_an_error(epdir: Path) -> None:
    source, _ = make_source(epdir)
    source.load_initial()
    (epdir / "dir.yaml").mkdir()
    (epdir / "big.yaml").write_bytes(b"#" * (directory_module.MAX_FILE_SIZE + 1))
    source.rescan()
    assert source.errors["dir.yaml"] == "dir.yaml: not a regular file"
    assert source.errors["big.yaml"].startswith("big.yaml: file too large")


def test_removed_directory_removes_everything_and_is_recreated(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    os.rename(epdir, epdir.with_name("moved-away"))
    source.rescan()
    change = recorder.last()
    assert change.endpoints_removed == {"port-1", "port-2"}
    assert change.groups_changed == {"default"}
    assert epdir.is_dir()


def test_rescan_interval_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        DirectorySource(tmp_path, lambda change: None, rescan_interval=0)


# ----------------------------------------------------------------------------- asyncio / inotify

LOOPS = ["asyncio", "uvloop"]


def run_on(loop_kind: str, coro: Coroutine[Any, Any, None]) -> None:
    factory = uvloop.new_event_loop if loop_kind == "uvloop" else asyncio.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(coro, timeout=20))


async def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> float:
    """Poll until ``predicate()``; returns the time it took. Fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.001)
    return time.monotonic() - start


async def settle() -> None:
    """Give inotify a moment to deliver anything still in flight."""
    await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running(source: DirectorySource) -> AsyncIterator[asyncio.Task[None]]:
    source.load_initial()
    task = asyncio.create_task(source.run())
    await wait_until(lambda: source.directory in source.watched())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def run_async_test(loop_kind: str, body: Callable[[], Awaitable[None]]) -> None:
    async def main() -> None:
        await body()

    run_on(loop_kind, main())


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_inotify_change_within_100ms(epdir: Path, loop_kind: str) -> None:
    async def body() -> None:
        source, recorder = make_source(epdir)
        async with running(source):
            start = time.monotonic()
            write_atomic(epdir / "a.yaml", endpoint_doc(1, ips=["192.0.2.77"]))
            await wait_until(lambda: bool(recorder.changes), timeout=1.0)
            elapsed = time.monotonic() - start
            assert elapsed < 0.1, f"inotify path took {elapsed * 1000:.1f} ms"
            assert recorder.last().endpoints_upserted["port-1"].ips == (IPv4Address("192.0.2.77"),)

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_atomic_rename_write_is_seen_once(epdir: Path, loop_kind: str) -> None:
    async def body() -> None:
        source, recorder = make_source(epdir)
        async with running(source):
            write_atomic(epdir / "c.yaml", endpoint_doc(3))
            await wait_until(lambda: bool(recorder.changes))
            await settle()
            assert recorder.take() == [
                SourceChange(endpoints_upserted={"port-3": source.endpoints()["port-3"]})
            ]
            assert source.parse_errors_total == 0

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_non_atomic_writer(epdir: Path, loop_kind: str) -> None:
    """A writer that creates the file and writes it in two steps: the half-written state
    is never recorded as an error (the bare IN_CREATE read is tentative), and the
    complete file is picked up at IN_CLOSE_WRITE."""

    async def body() -> None:
        source, recorder = make_source(epdir)
        async with running(source):
            text = json.dumps(endpoint_doc(4)).encode()
            with open(epdir / "d.json", "wb") as f:
                f.write(text[:20])
                f.flush()
                await asyncio.sleep(0.02)
                f.write(text[20:])
            await wait_until(lambda: "port-4" in source.endpoints())
            await settle()
            assert source.errors == {}
            assert source.parse_errors_total == 0
            assert [set(c.endpoints_upserted) for c in recorder.changes] == [{"port-4"}]

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_malformed_then_fixed_then_deleted(epdir: Path, loop_kind: str) -> None:
    async def body() -> None:
        source, recorder = make_source(epdir)
        async with running(source):
            before = source.endpoints()["port-2"]
            write_atomic(epdir / "b.json", '{"id": "port-2", "interface": ')  # truncated
            await wait_until(lambda: "b.json" in source.errors)
            assert source.endpoints()["port-2"] == before
            assert "invalid JSON" in source.errors["b.json"]

            write_atomic(epdir / "b.json", endpoint_doc(2, security_groups=[]))
            await wait_until(lambda: "b.json" not in source.errors)
            assert source.endpoints()["port-2"].security_groups == ()

            recorder.take()
            (epdir / "b.json").unlink()
            await wait_until(lambda: bool(recorder.changes))
            assert recorder.last().endpoints_removed == {"port-2"}

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_temp_files_ignored_by_watch(epdir: Path, loop_kind: str) -> None:
    async def body() -> None:
        source, recorder = make_source(epdir)
        async with running(source):
            for name in (".c.yaml", "c.yaml.tmp", "c.yaml~", "c.yaml.swp", "notes.txt"):
                (epdir / name).write_text("id: [")
            await settle()
            assert recorder.changes == []
            assert source.errors == {}

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_subdirectory_created_after_start_is_watched(tmp_path: Path, loop_kind: str) -> None:
    async def body() -> None:
        d = tmp_path / "eps"
        source, recorder = make_source(d)
        async with running(source):
            sg_dir = d / "security-groups"
            sg_dir.mkdir()
            await wait_until(lambda: sg_dir in source.watched())
            write_atomic(sg_dir / "web.yaml", "name: web\nrules: [{direction: egress}]\n")
            await wait_until(lambda: "web" in source.security_groups())
            assert recorder.last().groups_changed == {"web"}

            # Removed and created again: watched again.
            recorder.take()
            (sg_dir / "web.yaml").unlink()
            sg_dir.rmdir()
            await wait_until(lambda: bool(recorder.changes))
            assert recorder.last().groups_changed == {"web"}
            assert source.security_groups() == {}
            sg_dir.mkdir()
            await wait_until(lambda: sg_dir in source.watched())
            write_atomic(sg_dir / "db.yaml", "name: db\n")
            await wait_until(lambda: "db" in source.security_groups())

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_hard_link_creation_is_seen(epdir: Path, loop_kind: str) -> None:
    """link(2)-based atomic writers produce only IN_CREATE for the final name."""

    async def body() -> None:
        source, _ = make_source(epdir)
        async with running(source):
            tmp = epdir / "e.yaml.tmp"
            tmp.write_text(json.dumps(endpoint_doc(5)))
            await settle()
            os.link(tmp, epdir / "e.yaml")
            tmp.unlink()
            await wait_until(lambda: "port-5" in source.endpoints())

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_directory_removed_and_recreated_while_running(epdir: Path, loop_kind: str) -> None:
    async def body() -> None:
        source, recorder = make_source(epdir)
        async with running(source):
            os.rename(epdir, epdir.with_name("old"))
            await wait_until(lambda: not source.endpoints())
            removed = set().union(*(c.endpoints_removed for c in recorder.changes))
            assert removed == {"port-1", "port-2"}
            # Re-created by the source and watched again.
            await wait_until(lambda: epdir.is_dir() and epdir in source.watched())
            write_atomic(epdir / "f.yaml", endpoint_doc(6))
            await wait_until(lambda: "port-6" in source.endpoints())

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_periodic_rescan_without_inotify(
    epdir: Path, loop_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No inotify (instance limit reached): the periodic rescan alone keeps up."""

    def no_inotify(*args: object, **kwargs: object) -> None:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(directory_module, "Inotify", no_inotify)

    async def body() -> None:
        source, recorder = make_source(epdir, rescan_interval=0.05)
        source.load_initial()
        task = asyncio.create_task(source.run())
        try:
            write_atomic(epdir / "g.yaml", endpoint_doc(7))
            await wait_until(lambda: "port-7" in source.endpoints(), timeout=2.0)
            assert source.rescans_total >= 1
            assert recorder.last().endpoints_upserted.keys() == {"port-7"}
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    run_async_test(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_run_without_load_initial_and_catch_up(epdir: Path, loop_kind: str) -> None:
    async def body() -> None:
        source, recorder = make_source(epdir)
        task = asyncio.create_task(source.run())
        await wait_until(lambda: epdir in source.watched())
        assert set(source.endpoints()) == {"port-1", "port-2"}
        assert recorder.changes == []
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        # Changed while nobody watched: the rescan at the start of run() catches it.
        write_atomic(epdir / "h.yaml", endpoint_doc(8))
        task = asyncio.create_task(source.run())
        await wait_until(lambda: "port-8" in source.endpoints())
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    run_async_test(loop_kind, body)


def test_queue_overflow_forces_full_rescan(epdir: Path) -> None:
    source, recorder = make_source(epdir)
    source.load_initial()
    # Events were lost: an in-place rewrite (same inode, same size, mtime put back) must
    # still be found by the rescan the overflow triggers (it re-reads every file).
    path = epdir / "a.yaml"
    st = path.stat()
    path.write_text(json.dumps(endpoint_doc(1, mac="fa:16:3e:00:00:42")))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    source._handle_events([Event(None, Mask.Q_OVERFLOW, 0, None)])
    assert source.inotify_overflows_total == 1
    assert recorder.last().endpoints_upserted["port-1"].mac == "fa:16:3e:00:00:42"


def test_on_change_exception_propagates(epdir: Path) -> None:
    def broken(change: SourceChange) -> None:
        raise RuntimeError("consumer bug")

    async def body() -> None:
        source = DirectorySource(epdir, broken, rescan_interval=3600)
        source.load_initial()
        task = asyncio.create_task(source.run())
        await wait_until(lambda: epdir in source.watched())
        write_atomic(epdir / "c.yaml", endpoint_doc(3))
        with pytest.raises(RuntimeError, match="consumer bug"):
            await asyncio.wait_for(task, timeout=2)

    run_async_test("asyncio", body)
