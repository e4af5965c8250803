"""eager.start: the coroutine's first part runs in the caller, the rest as a task would."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from l3hostd import eager

LOOPS = [asyncio.new_event_loop, uvloop.new_event_loop]


def run(factory, main):  # type: ignore[no-untyped-def]
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


@pytest.mark.parametrize("factory", LOOPS)
def test_first_part_runs_in_the_caller_then_the_rest_as_a_task(factory) -> None:  # type: ignore[no-untyped-def]
    log: list[str] = []

    async def work(fut: asyncio.Future[int]) -> int:
        log.append("first")
        got = await fut
        log.append(f"resumed {got}")
        await asyncio.sleep(0)  # a bare yield
        log.append("after a bare yield")
        value = await asyncio.sleep(0.001, result=5)
        return got + value

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        handle = eager.start(work(fut), name="w")
        assert log == ["first"]  # before the caller gave the loop a turn
        assert not handle.done()
        loop.call_soon(fut.set_result, 7)
        assert await handle == 12
        assert log == ["first", "resumed 7", "after a bare yield"]

    run(factory, main)


@pytest.mark.parametrize("factory", LOOPS)
def test_outcomes_without_suspension_and_exceptions(factory) -> None:  # type: ignore[no-untyped-def]
    async def now() -> str:
        return "done"

    async def fails_now() -> None:
        raise ValueError("now")

    async def fails_later(fut: asyncio.Future[None]) -> None:
        await fut  # the awaited future's exception reaches the coroutine
        raise AssertionError("not reached")

    async def catches(fut: asyncio.Future[None]) -> str:
        try:
            await fut
        except KeyError:
            return "caught"
        return "no"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        done = eager.start(now())
        assert done.done() and done.result() == "done"
        failed = eager.start(fails_now())
        with pytest.raises(ValueError, match="now"):
            await failed
        fut: asyncio.Future[None] = loop.create_future()
        task = eager.start(fails_later(fut))
        fut.set_exception(OSError("later"))
        with pytest.raises(OSError, match="later"):
            await task
        fut2: asyncio.Future[None] = loop.create_future()
        task2 = eager.start(catches(fut2))
        loop.call_soon(fut2.set_exception, KeyError("k"))
        assert await task2 == "caught"

    run(factory, main)


@pytest.mark.parametrize("factory", LOOPS)
def test_cancel_reaches_what_it_waits_for_and_the_coroutine(factory) -> None:  # type: ignore[no-untyped-def]
    seen: list[str] = []

    async def work(fut: asyncio.Future[None]) -> str:
        try:
            await fut
        except asyncio.CancelledError:
            seen.append("cancelled inside")
            await asyncio.sleep(0)  # cleanup that waits is allowed
            raise
        return "no"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        task = eager.start(work(fut))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert fut.cancelled() and seen == ["cancelled inside"]

    run(factory, main)


@pytest.mark.parametrize("factory", LOOPS)
def test_locks_tasks_and_queues_work_as_in_a_task(factory) -> None:  # type: ignore[no-untyped-def]
    async def work(lock: asyncio.Lock, q: asyncio.Queue[int]) -> int:
        async with lock:  # taken by someone else: waits
            inner = asyncio.ensure_future(asyncio.sleep(0.001, result=1))
            total = await inner
            total += await q.get()
        return total

    async def main() -> None:
        lock = asyncio.Lock()
        q: asyncio.Queue[int] = asyncio.Queue()
        await lock.acquire()
        task = eager.start(work(lock, q))
        assert not task.done()
        lock.release()
        await asyncio.sleep(0.01)
        q.put_nowait(41)
        assert await task == 42

    run(factory, main)
