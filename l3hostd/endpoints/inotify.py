"""A small asyncio inotify: what the endpoint directory source needs, and nothing more.

Why not a library: ``asyncinotify`` cost the daemon 0.8 MiB of RSS, mostly through
``ctypes.util.find_library`` (its imports pull in shutil, tempfile, bz2, lzma and zlib).
Python has no ``os.inotify``, so the three system calls go through ctypes, but through
``ctypes.CDLL(None)``: the symbols of the libc the process has loaded already (as
:mod:`l3hostd.memory` does), with ``use_errno`` so that a failure raises :class:`OSError`
with the kernel's errno (EMFILE: too many instances, ENOSPC: too many watches, ENOENT /
ENOTDIR: no such directory). The rest is plain ``os``:

* the fd is made by ``inotify_init1(IN_NONBLOCK | IN_CLOEXEC)``; events are read with
  ``os.read`` (EAGAIN: nothing queued, which is how :meth:`Inotify.sync_get` returns None);
* :meth:`Inotify.get` waits with ``loop.add_reader`` (works on asyncio's and uvloop's
  loops), registered only while it waits, so unread events stay in the kernel's queue,
  which is bounded (``max_queued_events``; past it the kernel drops events and queues one
  IN_Q_OVERFLOW, ``wd`` -1). What one read returned is kept on the instance, not in the
  future, so cancelling :meth:`~Inotify.get` loses no event;
* a read returns whole records, ``struct inotify_event {int wd; uint32 mask; uint32 cookie;
  uint32 len; char name[len]}``, parsed with :mod:`struct`; ``name`` is NUL-padded (``len``
  counts the padding) and empty for an event on the watched directory itself.

Watches: an event carries the :class:`Watch` its ``wd`` belongs to (None for
IN_Q_OVERFLOW, or for a ``wd`` already forgotten). IN_IGNORED (the watch is gone: removed
by :meth:`~Inotify.rm_watch`, or its directory deleted or unmounted) is the watch's last
event: it still carries the watch, which is then forgotten. Adding a watch on an inode
already watched returns the same :class:`Watch` object (the kernel returns the same wd).
"""

from __future__ import annotations

import asyncio
import ctypes
import enum
import errno
import os
import struct
from collections import deque
from pathlib import Path
from typing import Final

__all__ = ["Event", "Inotify", "Mask", "Watch", "parse_events"]


class Mask(enum.IntFlag):
    """inotify event bits (``<sys/inotify.h>``): the watch mask and each event's mask."""

    ACCESS = 0x1
    MODIFY = 0x2
    ATTRIB = 0x4
    CLOSE_WRITE = 0x8
    CLOSE_NOWRITE = 0x10
    OPEN = 0x20
    MOVED_FROM = 0x40
    MOVED_TO = 0x80
    CREATE = 0x100
    DELETE = 0x200
    DELETE_SELF = 0x400
    MOVE_SELF = 0x800
    UNMOUNT = 0x2000
    Q_OVERFLOW = 0x4000
    IGNORED = 0x8000
    ONLYDIR = 0x1000000
    DONT_FOLLOW = 0x2000000
    EXCL_UNLINK = 0x4000000
    MASK_ADD = 0x20000000
    ISDIR = 0x40000000
    ONESHOT = 0x80000000


_HEADER: Final = struct.Struct("iIII")  # wd, mask, cookie, len (16 bytes, native order)
_NAME_MAX: Final = 255


def _load() -> tuple[ctypes._NamedFuncPointer, ...] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init1, add, rm = libc.inotify_init1, libc.inotify_add_watch, libc.inotify_rm_watch
    except (OSError, AttributeError):
        return None  # no inotify in this libc: Inotify() raises ENOSYS
    init1.argtypes = (ctypes.c_int,)
    add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    rm.argtypes = (ctypes.c_int, ctypes.c_int)
    init1.restype = add.restype = rm.restype = ctypes.c_int
    return init1, add, rm


_FUNCS: Final = _load()


def _check(result: int, path: str | os.PathLike[str] | None = None) -> int:
    if result == -1:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return result


class Watch:
    """One watched path; compare by identity (``is``)."""

    __slots__ = ("mask", "path", "wd")

    def __init__(self, wd: int, path: Path, mask: Mask) -> None:
        self.wd = wd
        self.path = path
        self.mask = mask

    def __repr__(self) -> str:
        return f"<Watch wd={self.wd} path={str(self.path)!r}>"


class Event:
    """One event. ``name``: the file's name in the watched directory, None for an event
    on the directory itself. ``watch``: None for IN_Q_OVERFLOW or a forgotten wd."""

    __slots__ = ("cookie", "mask", "name", "watch")

    def __init__(self, watch: Watch | None, mask: Mask, cookie: int, name: str | None) -> None:
        self.watch = watch
        self.mask = mask
        self.cookie = cookie
        self.name = name

    @property
    def path(self) -> Path | None:
        """The watch's path joined with ``name``; None if the watch is unknown."""
        if self.watch is None:
            return None
        return self.watch.path / self.name if self.name else self.watch.path

    def __repr__(self) -> str:
        return f"<Event {self.mask!r} name={self.name!r} watch={self.watch!r}>"


def parse_events(data: bytes, watches: dict[int, Watch]) -> list[Event]:
    """The records of one read. A watch whose IN_IGNORED is seen leaves ``watches``."""
    events: list[Event] = []
    offset = 0
    while offset < len(data):
        wd, mask, cookie, length = _HEADER.unpack_from(data, offset)
        offset += _HEADER.size
        raw = data[offset : offset + length].split(b"\0", 1)[0]
        offset += length
        watch = watches.pop(wd, None) if mask & Mask.IGNORED else watches.get(wd)
        events.append(Event(watch, Mask(mask), cookie, os.fsdecode(raw) if raw else None))
    return events


class Inotify:
    """An inotify instance (a context manager: closing it closes the fd).

    ``cache_size``: how many full-size records one read may return."""

    def __init__(self, cache_size: int = 256) -> None:
        if _FUNCS is None:
            raise OSError(errno.ENOSYS, "inotify is not available in this libc")
        self._fd = _check(_FUNCS[0](os.O_NONBLOCK | os.O_CLOEXEC))
        self._read_size = max(1, cache_size) * (_HEADER.size + _NAME_MAX + 1)
        self._watches: dict[int, Watch] = {}
        self._pending: deque[Event] = deque()
        self._waiting: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    @property
    def fd(self) -> int:
        """The inotify fd; -1 once closed."""
        return self._fd

    def add_watch(self, path: str | os.PathLike[str], mask: Mask) -> Watch:
        """Watch ``path`` (OSError with the errno if that fails: ENOENT, ENOTDIR...)."""
        assert _FUNCS is not None
        wd = _check(_FUNCS[1](self._fd, os.fsencode(path), int(mask)), path)
        watch = self._watches.get(wd)
        if watch is None:
            watch = self._watches[wd] = Watch(wd, Path(path), mask)
        return watch

    def rm_watch(self, watch: Watch) -> None:
        """Remove a watch (OSError EINVAL if already gone). Its IN_IGNORED follows."""
        assert _FUNCS is not None
        _check(_FUNCS[2](self._fd, watch.wd), watch.path)

    def sync_get(self) -> Event | None:
        """The next event already queued, or None (never blocks)."""
        if not self._pending:
            self._read()
        return self._pending.popleft() if self._pending else None

    async def get(self) -> Event:
        """The next event, waiting for one (one caller at a time). OSError EBADF: the
        instance is closed (also when close() is called while waiting)."""
        while not self._pending:
            if self._fd < 0:
                raise OSError(errno.EBADF, "inotify instance closed")
            if self._waiting is not None:
                raise RuntimeError("another get() is already waiting")
            loop = asyncio.get_running_loop()
            future: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self._fd, self._on_readable, future)
            self._waiting = (loop, future)
            try:
                await future
            finally:
                if self._waiting is not None and self._waiting[1] is future:
                    self._waiting = None
                    loop.remove_reader(self._fd)
        return self._pending.popleft()

    def _on_readable(self, future: asyncio.Future[None]) -> None:
        if future.done():
            return  # cancelled: get() removes the reader
        try:
            if self._read():
                future.set_result(None)
        except OSError as exc:
            future.set_exception(exc)

    def _read(self) -> bool:
        try:
            data = os.read(self._fd, self._read_size)
        except BlockingIOError:
            return False
        self._pending.extend(parse_events(data, self._watches))
        return bool(data)

    def close(self) -> None:
        """Stop a waiting :meth:`get` and close the fd (idempotent)."""
        if self._fd < 0:
            return
        if self._waiting is not None:
            loop, future = self._waiting
            self._waiting = None
            loop.remove_reader(self._fd)
            if not future.done():
                future.set_exception(OSError(errno.EBADF, "inotify instance closed"))
        os.close(self._fd)
        self._fd = -1
        self._watches.clear()

    def __enter__(self) -> Inotify:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
