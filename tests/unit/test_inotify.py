"""l3hostd.endpoints.inotify on the real kernel (no root needed), under asyncio and uvloop;
the record parser on synthetic reads; and the imports it spares the daemon."""

from __future__ import annotations

import asyncio
import errno
import os
import struct
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

import l3hostd.endpoints.inotify as inotify_module
from l3hostd.endpoints.inotify import Event, Inotify, Mask, Watch, parse_events

LOOPS = ["asyncio", "uvloop"]
FILE_MASK = Mask.CREATE | Mask.CLOSE_WRITE | Mask.MOVED_TO | Mask.MOVED_FROM | Mask.DELETE
DIR_MASK = FILE_MASK | Mask.DELETE_SELF | Mask.MOVE_SELF | Mask.ONLYDIR


class AsyncioLoop(asyncio.SelectorEventLoop):
    """The loop, with a record of the fds it watches for reading."""

    readers: set[int]

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        self.readers = getattr(self, "readers", set()) | {fd}
        super().add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self.readers = getattr(self, "readers", set()) - {fd}
        return super().remove_reader(fd)


class UvLoop(uvloop.Loop):  # type: ignore[misc]
    readers: set[int]

    def add_reader(self, fd: Any, callback: Callable[..., object], *args: Any) -> None:
        self.readers = getattr(self, "readers", set()) | {fd}
        super().add_reader(fd, callback, *args)

    def remove_reader(self, fd: Any) -> bool:
        self.readers = getattr(self, "readers", set()) - {fd}
        return bool(super().remove_reader(fd))


def run_on(loop_kind: str, body: Callable[[], Coroutine[Any, Any, None]]) -> None:
    factory = UvLoop if loop_kind == "uvloop" else AsyncioLoop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(body(), timeout=20))


def readers() -> set[int]:
    return set(getattr(asyncio.get_running_loop(), "readers", set()))


async def collect(ino: Inotify, count: int) -> list[Event]:
    """``count`` events: the first ones awaited, the rest drained with sync_get()."""
    events: list[Event] = []
    while len(events) < count:
        events.append(await asyncio.wait_for(ino.get(), timeout=2))
        while len(events) < count and (event := ino.sync_get()) is not None:
            events.append(event)
    return events


def summary(events: list[Event]) -> list[tuple[str | None, Mask]]:
    return [(event.name, event.mask) for event in events]


def open_fds() -> set[int]:
    """This process's open fds (not counting the one that listed them)."""
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue  # the listing's own fd, closed by now
        fds.add(int(name))
    return fds


def record(wd: int, mask: int, cookie: int, name: bytes = b"", length: int = 0) -> bytes:
    """One ``struct inotify_event``; the name NUL-padded to ``length`` bytes."""
    raw = name.ljust(length, b"\0")
    return struct.pack("iIII", wd, mask, cookie, len(raw)) + raw


# ----------------------------------------------------------------------------- real kernel


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_file_events_carry_names(tmp_path: Path, loop_kind: str) -> None:
    watched, outside = tmp_path / "watched", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()

    async def body() -> None:
        with Inotify(cache_size=256) as ino:
            watch = ino.add_watch(watched, DIR_MASK)
            assert watch.path == watched and watch.mask == DIR_MASK
            (watched / "a.yaml").write_text("a")  # create + close-write
            (outside / "b.yaml").write_text("b")  # not watched: no event
            (outside / "b.yaml").rename(watched / "b.yaml")  # moved in
            (watched / "a.yaml").rename(outside / "a.yaml")  # moved out
            (watched / "b.yaml").unlink()
            events = await collect(ino, 5)
            assert summary(events) == [
                ("a.yaml", Mask.CREATE),
                ("a.yaml", Mask.CLOSE_WRITE),
                ("b.yaml", Mask.MOVED_TO),
                ("a.yaml", Mask.MOVED_FROM),
                ("b.yaml", Mask.DELETE),
            ]
            assert all(event.watch is watch for event in events)
            assert events[0].path == watched / "a.yaml"
            assert events[2].cookie != 0 and events[0].cookie == 0
            assert ino.sync_get() is None

    run_on(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_subdirectory_watch_and_its_ignored(tmp_path: Path, loop_kind: str) -> None:
    sub = tmp_path / "security-groups"

    async def body() -> None:
        with Inotify() as ino:
            top = ino.add_watch(tmp_path, DIR_MASK)
            sub.mkdir()
            [created] = await collect(ino, 1)
            assert (created.name, created.mask, created.watch) == (
                "security-groups", Mask.CREATE | Mask.ISDIR, top,
            )  # fmt: skip
            watch = ino.add_watch(sub, DIR_MASK)
            assert watch is not top and watch.wd != top.wd
            assert ino.add_watch(sub, DIR_MASK) is watch  # same inode, same wd: same Watch
            (sub / "web.yaml").write_text("x")
            events = await collect(ino, 2)
            assert summary(events) == [("web.yaml", Mask.CREATE), ("web.yaml", Mask.CLOSE_WRITE)]
            assert all(event.watch is watch for event in events)
            assert events[0].path == sub / "web.yaml"

            (sub / "web.yaml").unlink()
            sub.rmdir()
            events = await collect(ino, 4)
            assert {(e.name, e.mask, e.watch) for e in events} == {
                ("web.yaml", Mask.DELETE, watch),
                (None, Mask.DELETE_SELF, watch),
                (None, Mask.IGNORED, watch),  # its last event still names it
                ("security-groups", Mask.DELETE | Mask.ISDIR, top),
            }
            ignored = next(e for e in events if e.mask == Mask.IGNORED)
            assert ignored.path == sub
            # Forgotten: a new directory of that name gets a new Watch; the old one is gone.
            sub.mkdir()
            await collect(ino, 1)
            again = ino.add_watch(sub, DIR_MASK)
            assert again is not watch
            with pytest.raises(OSError) as info:
                ino.rm_watch(watch)
            assert info.value.errno == errno.EINVAL

    run_on(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_rm_watch_is_followed_by_ignored(tmp_path: Path, loop_kind: str) -> None:
    async def body() -> None:
        with Inotify() as ino:
            watch = ino.add_watch(tmp_path, DIR_MASK)
            ino.rm_watch(watch)
            [event] = await collect(ino, 1)
            assert (event.mask, event.watch, event.name) == (Mask.IGNORED, watch, None)
            (tmp_path / "late.yaml").write_text("x")  # no watch any more: no event
            await asyncio.sleep(0.02)
            assert ino.sync_get() is None

    run_on(loop_kind, body)


def test_sync_get_returns_none_when_drained(tmp_path: Path) -> None:
    with Inotify(cache_size=1) as ino:
        assert ino.sync_get() is None
        watch = ino.add_watch(tmp_path, FILE_MASK)
        assert ino.sync_get() is None
        for n in range(5):
            (tmp_path / f"f{n}.json").write_text("{}")
        # cache_size=1: one full-size record per read; the queue is drained over reads
        events = [ino.sync_get() for _ in range(10)]
        assert [(e.name, e.mask) for e in events if e is not None] == [
            (f"f{n}.json", mask) for n in range(5) for mask in (Mask.CREATE, Mask.CLOSE_WRITE)
        ]
        assert all(e is not None and e.watch is watch for e in events)
        assert ino.sync_get() is None
        assert ino.sync_get() is None


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_cancelled_get_loses_nothing(tmp_path: Path, loop_kind: str) -> None:
    async def body() -> None:
        with Inotify() as ino:
            ino.add_watch(tmp_path, FILE_MASK)
            task = asyncio.create_task(ino.get())
            await asyncio.sleep(0.01)
            assert readers() == {ino.fd}
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert readers() == set()
            (tmp_path / "x.yaml").write_text("x")
            assert summary(await collect(ino, 2)) == [
                ("x.yaml", Mask.CREATE),
                ("x.yaml", Mask.CLOSE_WRITE),
            ]

    run_on(loop_kind, body)


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_close_removes_the_reader_and_closes_the_fd(tmp_path: Path, loop_kind: str) -> None:
    async def body() -> None:
        before = open_fds()
        ino = Inotify()
        fd = ino.fd
        assert open_fds() - before == {fd}
        assert os.get_inheritable(fd) is False and os.get_blocking(fd) is False
        ino.add_watch(tmp_path, FILE_MASK)
        waiter = asyncio.create_task(ino.get())
        await asyncio.sleep(0.01)
        assert readers() == {fd}  # waiting: the reader is registered
        ino.close()
        assert readers() == set()
        with pytest.raises(OSError) as info:
            await waiter
        assert info.value.errno == errno.EBADF
        assert open_fds() == before and ino.fd == -1
        ino.close()  # idempotent
        with pytest.raises(OSError) as info:
            await ino.get()
        assert info.value.errno == errno.EBADF
        with pytest.raises(OSError) as info:
            ino.add_watch(tmp_path, FILE_MASK)
        assert info.value.errno == errno.EBADF
        # The fd number, reused by a pipe, works with the loop (a registration left on a
        # closed fd would, with uvloop, leave the new one deaf).
        r, w = os.pipe()
        try:
            assert r == fd
            readable = asyncio.Event()
            asyncio.get_running_loop().add_reader(r, readable.set)
            os.write(w, b"x")
            await asyncio.wait_for(readable.wait(), timeout=2)
            asyncio.get_running_loop().remove_reader(r)
        finally:
            os.close(r)
            os.close(w)

    run_on(loop_kind, body)


def test_context_manager_closes_without_a_loop(tmp_path: Path) -> None:
    before = open_fds()
    with Inotify() as ino:
        ino.add_watch(tmp_path, FILE_MASK)
        (tmp_path / "a.yaml").write_text("a")
    assert open_fds() == before
    with pytest.raises(OSError):
        ino.sync_get()


def test_errors_are_oserror_with_errno(tmp_path: Path) -> None:
    with Inotify() as ino:
        with pytest.raises(FileNotFoundError) as missing:
            ino.add_watch(tmp_path / "missing", DIR_MASK)
        assert missing.value.errno == errno.ENOENT
        assert missing.value.filename == tmp_path / "missing"
        (tmp_path / "file").write_text("")
        with pytest.raises(NotADirectoryError) as not_dir:
            ino.add_watch(tmp_path / "file", DIR_MASK)  # ONLYDIR
        assert not_dir.value.errno == errno.ENOTDIR
        with pytest.raises(OSError) as bad_mask:
            ino.add_watch(tmp_path, Mask(0))  # no event in the mask
        assert bad_mask.value.errno == errno.EINVAL


def test_init_failure_is_oserror_emfile() -> None:
    """Out of file descriptors: Inotify() raises OSError(EMFILE), which the directory
    source takes as "inotify unavailable". In a child, not to starve this process."""
    code = (
        "import os, resource\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit("
        "resource.RLIMIT_NOFILE)[1]))\n"
        "from l3hostd.endpoints.inotify import Inotify\n"
        "try:\n"
        "    while True: os.open(os.devnull, os.O_RDONLY)\n"
        "except OSError: pass\n"
        "try:\n"
        "    Inotify()\n"
        "except OSError as exc:\n"
        "    print(type(exc).__name__, exc.errno)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["OSError", str(errno.EMFILE)]


def test_no_inotify_in_libc_is_oserror_enosys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inotify_module, "_FUNCS", None)
    with pytest.raises(OSError) as info:
        Inotify()
    assert info.value.errno == errno.ENOSYS


# ----------------------------------------------------------------------------- parser


def test_parse_several_records_with_nul_padding() -> None:
    top = Watch(1, Path("/d"), Mask.CREATE)
    sub = Watch(2, Path("/d/sub"), Mask.CREATE)
    watches = {1: top, 2: sub}
    data = (
        record(1, Mask.CREATE, 0, b"a.yaml", length=16)
        + record(1, Mask.MOVED_FROM, 7, b"exactly-sixteen!", 16)  # no NUL: fills its len
        + record(2, Mask.CREATE | Mask.ISDIR, 0, b"d", length=32)
        + record(2, Mask.DELETE_SELF, 0)  # the directory itself: len 0, no name
        + record(1, Mask.CREATE, 0, b"caf\xe9.yaml", length=16)  # not UTF-8
        + record(9, Mask.DELETE, 0, b"x", length=16)  # a wd not known here
        + record(2, Mask.IGNORED, 0)
        + record(-1, Mask.Q_OVERFLOW, 0)
    )
    assert len(data) == 16 * 8 + 16 + 16 + 32 + 16 + 16
    events = parse_events(data, watches)
    assert [(e.watch, e.mask, e.cookie, e.name) for e in events] == [
        (top, Mask.CREATE, 0, "a.yaml"),
        (top, Mask.MOVED_FROM, 7, "exactly-sixteen!"),
        (sub, Mask.CREATE | Mask.ISDIR, 0, "d"),
        (sub, Mask.DELETE_SELF, 0, None),
        (top, Mask.CREATE, 0, os.fsdecode(b"caf\xe9.yaml")),
        (None, Mask.DELETE, 0, "x"),
        (sub, Mask.IGNORED, 0, None),  # the last event still carries its watch...
        (None, Mask.Q_OVERFLOW, 0, None),
    ]
    assert watches == {1: top}  # ...which is then forgotten
    assert isinstance(events[0].mask, Mask)
    assert events[0].path == Path("/d/a.yaml")
    assert events[3].path == Path("/d/sub")
    assert events[5].path is None and events[7].path is None
    assert parse_events(b"", watches) == []


def test_parse_overflow_record() -> None:
    [event] = parse_events(record(-1, Mask.Q_OVERFLOW, 0), {})
    assert event.watch is None and event.name is None
    assert Mask.Q_OVERFLOW in event.mask


def test_mask_values_are_the_kernels() -> None:
    assert {m.name: m.value for m in Mask} == {
        "ACCESS": 0x1, "MODIFY": 0x2, "ATTRIB": 0x4, "CLOSE_WRITE": 0x8,
        "CLOSE_NOWRITE": 0x10, "OPEN": 0x20, "MOVED_FROM": 0x40, "MOVED_TO": 0x80,
        "CREATE": 0x100, "DELETE": 0x200, "DELETE_SELF": 0x400, "MOVE_SELF": 0x800,
        "UNMOUNT": 0x2000, "Q_OVERFLOW": 0x4000, "IGNORED": 0x8000,
        "ONLYDIR": 0x1000000, "DONT_FOLLOW": 0x2000000, "EXCL_UNLINK": 0x4000000,
        "MASK_ADD": 0x20000000, "ISDIR": 0x40000000, "ONESHOT": 0x80000000,
    }  # fmt: skip


# ----------------------------------------------------------------------------- imports


def test_daemon_import_spares_find_library_and_its_imports() -> None:
    """The reason this module exists: ctypes.util.find_library (asyncinotify used it)
    imports shutil, tempfile, bz2 and lzma, ~0.8 MiB of RSS in all."""
    heavy = ["asyncinotify", "ctypes.util", "shutil", "tempfile", "bz2", "lzma"]
    code = f"import sys, l3hostd.daemon\nprint([m for m in {heavy!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
