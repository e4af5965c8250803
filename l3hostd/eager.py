"""Start a coroutine now, in the caller, up to its first suspension; the rest in a task.

Why: an event (a link change, an UPDATE) is read in a callback of the event loop; the
dataplane pass it causes runs in the dataplane's task, which an ``asyncio.Event`` resumes
only at the next turn of the loop: ~70 us on a cold CPU (the loop iteration, the task
step, the wait's futures) before the first netlink write, on the path of every event.
Started here, the pass reaches its first write -- the kernel's route -- inside the
callback that read the event. Python 3.12 has this built in (eager tasks); this is the
same for 3.11, for one coroutine at a time.

How: :func:`start` sends ``None`` into the coroutine; if it finishes, its outcome is a
finished future. Otherwise it has yielded what it waits for -- a future, or ``None`` for
a bare yield (``asyncio.sleep(0)``) -- and :func:`_finish`, a task, goes on exactly as a
task would: it waits until that future is done (without consuming its outcome: the
coroutine reads it when resumed), then resumes the coroutine, until it returns.
Cancelling the task cancels what the coroutine waits for and throws the cancellation into
it, as ``Task.cancel`` does.

Limits: the first part runs in the caller's context and ``asyncio.current_task()`` there
is the caller's task (or None); the coroutine must not need its own task before its first
suspension (``asyncio.timeout`` would). Callers must be ready for the coroutine's first
part to run inside their own call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["start"]


def start(coro: Coroutine[Any, Any, T], name: str | None = None) -> asyncio.Future[T]:
    """Run ``coro`` until it first waits; return a future of its result (a task if it
    waits, a finished future if it did not)."""
    loop = asyncio.get_running_loop()
    try:
        waiting = coro.send(None)
    except StopIteration as stop:
        done: asyncio.Future[T] = loop.create_future()
        done.set_result(stop.value)
        return done
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # the coroutine's own failure: in its future, as a task
        failed: asyncio.Future[T] = loop.create_future()
        failed.set_exception(exc)
        return failed
    return loop.create_task(_finish(coro, waiting), name=name)


async def _finish(coro: Coroutine[Any, Any, T], waiting: object) -> T:
    while True:
        try:
            if waiting is None:
                await asyncio.sleep(0)  # a bare yield: one turn of the loop
            else:
                await _Settled(waiting)
        except asyncio.CancelledError as exc:
            if isinstance(waiting, asyncio.Future):
                waiting.cancel()
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return stop.value  # type: ignore[no-any-return]
            continue
        try:
            waiting = coro.send(None)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]


class _Settled:
    """Wait until ``fut`` is done, whatever its outcome (the coroutine reads it)."""

    __slots__ = ("_waiter",)

    def __init__(self, fut: object) -> None:
        if not isinstance(fut, asyncio.Future):
            raise RuntimeError(f"eager.start: the coroutine yielded {fut!r}, not a future")
        fut._asyncio_future_blocking = False  # as Task.__step does with what it is given
        waiter: asyncio.Future[None] = fut.get_loop().create_future()

        def wake(_: object) -> None:
            if not waiter.done():
                waiter.set_result(None)

        fut.add_done_callback(wake)
        self._waiter = waiter

    def __await__(self) -> Generator[Any, None, None]:
        return self._waiter.__await__()
