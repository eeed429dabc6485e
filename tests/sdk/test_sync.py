"""LoopThread: a private event loop on a daemon thread for the sync client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import os
import signal
import threading
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator

import pytest

from deepexec_sdk._sync import LoopThread

# Any warning (RuntimeWarning "coroutine ... was never awaited", ResourceWarning
# "unclosed ...") fails the test.
pytestmark = pytest.mark.filterwarnings("error")


def loop_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == name]


@pytest.fixture
def name() -> str:
    return f"test-loop-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def lt(name: str, caplog: pytest.LogCaptureFixture) -> Iterator[LoopThread]:
    """A LoopThread with a unique thread name; checks for asyncio errors afterwards."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    loop_thread = LoopThread(name=name)
    yield loop_thread
    loop_thread.close()
    gc.collect()
    assert loop_threads(name) == []
    problems = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
    assert problems == []  # e.g. "Task was destroyed but it is pending!", "Unclosed ..."


async def where() -> tuple[str, asyncio.AbstractEventLoop]:
    return threading.current_thread().name, asyncio.get_running_loop()


# --------------------------------------------------------------------------- run


def test_run_from_plain_thread_uses_private_loop_thread(lt: LoopThread, name: str) -> None:
    assert lt.thread is None  # started lazily
    thread_name, loop = lt.run(where())
    assert thread_name == name
    assert lt.thread is not None and lt.thread.daemon
    assert lt.run(where())[1] is loop  # the same loop every time


def test_run_returns_result_and_propagates_exceptions(lt: LoopThread) -> None:
    async def add(a: int, b: int) -> int:
        await asyncio.sleep(0.001)
        return a + b

    async def boom() -> None:
        raise ValueError("boom")

    assert lt.run(add(2, 3)) == 5
    with pytest.raises(ValueError, match="boom"):
        lt.run(boom())
    assert lt.run(add(1, 1)) == 2  # still usable after an error


async def test_run_inside_a_running_event_loop(lt: LoopThread, name: str) -> None:
    """As in a Jupyter cell: the caller's own loop is running in this thread."""
    caller_loop = asyncio.get_running_loop()
    thread_name, loop = lt.run(where())
    assert thread_name == name
    assert loop is not caller_loop
    assert lt.run(asyncio.sleep(0.01, result="done")) == "done"


def test_run_from_eight_threads_concurrently(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    lt = LoopThread(name=name)  # fresh: the 8 threads race to start it
    barrier = threading.Barrier(8)
    running = 0
    all_running: asyncio.Event | None = None

    async def job(i: int) -> tuple[int, str]:
        # Completes only if all 8 coroutines are running on the loop at the same time.
        nonlocal running, all_running
        if all_running is None:
            all_running = asyncio.Event()
        running += 1
        if running == 8:
            all_running.set()
        await asyncio.wait_for(all_running.wait(), timeout=10)
        return i, threading.current_thread().name

    def worker(i: int) -> tuple[int, str]:
        barrier.wait()
        return lt.run(job(i))

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))
    assert results == [(i, name) for i in range(8)]
    assert len(loop_threads(name)) == 1  # one loop thread despite the race
    lt.close()
    assert loop_threads(name) == []
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_timeout_cancels_the_coroutine_before_returning(lt: LoopThread) -> None:
    events: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # cleanup that takes a moment
            events.append("cancelled")
            raise

    start = time.monotonic()
    with pytest.raises(TimeoutError):
        lt.run(slow(), timeout=0.05)
    assert time.monotonic() - start < 5
    assert events == ["cancelled"]  # cleanup finished before run() returned


def test_keyboard_interrupt_cancels_the_running_coroutine(lt: LoopThread) -> None:
    # KeyboardInterrupt reaches the main thread only, through Python's default handler
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    started = threading.Event()
    events: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    def interrupt() -> None:
        started.wait(10)
        time.sleep(0.05)  # let the main thread block in run()
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        lt.run(forever())
    assert events == ["cancelled"]
    assert lt.run(asyncio.sleep(0, result=1)) == 1  # the loop is still healthy


def test_run_from_own_loop_raises_instead_of_deadlocking(lt: LoopThread) -> None:
    async def nested() -> str:
        async def inner() -> int:
            return 1

        try:
            lt.run(inner())
        except RuntimeError as exc:
            return str(exc)
        return "no error"

    assert "own event loop" in lt.run(nested())  # and no "never awaited" warning


def test_coroutine_cancelled_before_it_starts_is_closed(lt: LoopThread) -> None:
    lt.run(asyncio.sleep(0))
    with pytest.raises(TimeoutError):
        lt.run(asyncio.sleep(1), timeout=0)  # may be cancelled before its first step
    gc.collect()  # a "never awaited" RuntimeWarning would fail the test here


# --------------------------------------------------------------------------- iterate


def test_iterate_yields_all_items_on_the_loop_thread(lt: LoopThread, name: str) -> None:
    threads: list[str] = []

    async def numbers(n: int) -> AsyncIterator[int]:
        threads.append(threading.current_thread().name)
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def factory() -> AsyncIterator[int]:
        threads.append(threading.current_thread().name)  # factory runs on the loop too
        return numbers(5)

    assert list(lt.iterate(factory)) == [0, 1, 2, 3, 4]
    assert set(threads) == {name}


def test_iterate_early_break_acloses_the_async_side(lt: LoopThread) -> None:
    events: list[str] = []

    async def stream() -> AsyncIterator[int]:
        try:
            for i in range(1000):
                await asyncio.sleep(0)
                yield i
        finally:
            await asyncio.sleep(0)  # async cleanup, like closing an HTTP response
            events.append("closed")

    seen = []
    for item in lt.iterate(stream):
        seen.append(item)
        if item == 2:
            break
    assert seen == [0, 1, 2]
    assert events == ["closed"]  # closed right at the break, not at garbage collection


def test_iterate_explicit_close_while_referenced(lt: LoopThread) -> None:
    events: list[str] = []

    async def stream() -> AsyncIterator[str]:
        try:
            yield "a"
            yield "b"
        finally:
            events.append("closed")

    iterator = lt.iterate(stream)
    assert next(iterator) == "a"
    assert events == []
    iterator.close()  # type: ignore[attr-defined]
    assert events == ["closed"]


def test_iterate_closes_plain_async_iterator_with_aclose(lt: LoopThread) -> None:
    class Counter:
        def __init__(self) -> None:
            self.i = 0
            self.closed = False

        def __aiter__(self) -> Counter:
            return self

        async def __anext__(self) -> int:
            self.i += 1
            return self.i

        async def aclose(self) -> None:
            self.closed = True

    counter = Counter()
    for item in lt.iterate(lambda: counter):
        if item == 3:
            break
    assert counter.closed


def test_iterate_propagates_errors(lt: LoopThread) -> None:
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise ConnectionError("stream dropped")

    got = []
    with pytest.raises(ConnectionError, match="stream dropped"):
        for item in lt.iterate(broken):
            got.append(item)
    assert got == [1]


async def test_iterate_inside_a_running_event_loop(lt: LoopThread) -> None:
    async def letters() -> AsyncIterator[str]:
        for ch in "abc":
            yield ch

    assert list(lt.iterate(letters)) == ["a", "b", "c"]


def test_close_while_iterating_finalizes_async_generator(lt: LoopThread, name: str) -> None:
    events: list[str] = []

    async def stream() -> AsyncIterator[int]:
        try:
            yield 1
            yield 2
        finally:
            events.append("closed")

    iterator = lt.iterate(stream)
    assert next(iterator) == 1
    lt.close()
    assert events == ["closed"]  # shutdown_asyncgens ran it
    iterator.close()  # type: ignore[attr-defined]  # no error after the loop is gone
    assert loop_threads(name) == []


# --------------------------------------------------------------------------- close


def test_close_joins_thread_and_is_idempotent(name: str) -> None:
    lt = LoopThread(name=name)
    lt.run(asyncio.sleep(0))
    thread = lt.thread
    assert thread is not None and thread.is_alive()
    lt.close()
    assert not thread.is_alive()
    assert loop_threads(name) == []
    assert lt.closed
    lt.close()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        lt.run(asyncio.sleep(0))  # the coroutine is closed: no "never awaited" warning
    gc.collect()


def test_close_before_start_creates_no_thread(name: str) -> None:
    lt = LoopThread(name=name)
    lt.close()
    assert lt.thread is None and loop_threads(name) == []
    with pytest.raises(RuntimeError):
        lt.run(asyncio.sleep(0))


def test_context_manager_closes(name: str) -> None:
    with LoopThread(name=name) as lt:
        assert lt.run(asyncio.sleep(0, result=7)) == 7
    assert lt.closed and loop_threads(name) == []


def test_close_cancels_work_running_in_other_threads(
    name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="asyncio")
    lt = LoopThread(name=name)
    started = threading.Event()
    events: list[str] = []

    async def forever() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        finally:
            events.append("cleaned up")

    async def with_child_task() -> None:
        # A task the coroutine spawned and never awaited: close() must cancel it too.
        asyncio.get_running_loop().create_task(asyncio.sleep(3600))
        await forever()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        future = pool.submit(lt.run, with_child_task())
        assert started.wait(10)
        lt.close()
        with pytest.raises(concurrent.futures.CancelledError):
            future.result(10)
    assert events == ["cleaned up"]
    assert loop_threads(name) == []
    gc.collect()
    assert [r for r in caplog.records if r.name == "asyncio"] == []


def test_unreferenced_loop_thread_is_stopped_by_gc(name: str) -> None:
    lt = LoopThread(name=name)
    lt.run(asyncio.sleep(0))
    thread = lt.thread
    assert thread is not None
    del lt
    gc.collect()
    thread.join(10)
    assert not thread.is_alive()


def test_no_unclosed_warnings_with_real_aiohttp_session(name: str) -> None:
    """The sync client's life cycle: open a session on the loop, use it, close, stop."""
    import aiohttp

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lt = LoopThread(name=name)

        async def open_session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession()

        session = lt.run(open_session())
        lt.run(session.close())
        lt.close()
        del session
        gc.collect()
    assert loop_threads(name) == []


# --------------------------------------------------------------------------- hand-off


def test_caller_is_woken_while_the_loop_never_waits(lt: LoopThread) -> None:
    """The loop thread wakes a caller at its next select; a loop kept busy by another task
    (never blocking) still selects, with a zero timeout, on every iteration."""
    spinning = threading.Event()
    stop = False

    def spin() -> None:  # always one more callback ready: every select has a zero timeout
        spinning.set()
        if not stop:
            asyncio.get_running_loop().call_soon(spin)

    async def start_spinning() -> None:
        asyncio.get_running_loop().call_soon(spin)

    lt.run(start_spinning())
    assert spinning.wait(10)
    try:
        for i in range(50):
            assert lt.run(asyncio.sleep(0, result=i), timeout=10) == i
    finally:
        stop = True


def test_task_cancelled_before_its_first_step_wakes_its_caller() -> None:
    """What the loop's shutdown does to a call whose task has not run yet: its coroutine
    never started, so nothing in it could wake the caller; the shutdown does."""
    from deepexec_sdk import _sync

    loop, hub = _sync._new_loop(threading.Event())
    coro = asyncio.sleep(3600)
    call = _sync._Call(coro, hub)

    async def start_then_cancel() -> None:
        call.start()
        assert call.task is not None
        call.task.cancel()  # as _cancel_all_tasks does
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    try:
        loop.run_until_complete(start_then_cancel())
        assert call.task is not None and call.task.cancelled()
        assert not call.settled and not call.wait(0)
        hub.abandon_all()
        assert call.wait(0)
        with pytest.raises(concurrent.futures.CancelledError):
            call.outcome()
        assert coro.cr_frame is None  # closed: no "never awaited" warning
    finally:
        loop.close()


def test_cancel_between_start_and_first_step_closes_the_coroutine() -> None:
    from deepexec_sdk import _sync

    loop, hub = _sync._new_loop(threading.Event())
    coro = asyncio.sleep(3600)
    call = _sync._Call(coro, hub)

    async def start_then_cancel() -> None:
        call.start()
        call.cancel()  # the task exists, its first step has not run
        for _ in range(3):
            await asyncio.sleep(0)

    try:
        loop.run_until_complete(start_then_cancel())
        assert call.settled and call.wait(0)
        with pytest.raises(concurrent.futures.CancelledError):
            call.outcome()
        assert coro.cr_frame is None
        assert hub.inflight == set()
    finally:
        loop.close()


def test_results_and_errors_cross_over_from_many_threads(lt: LoopThread) -> None:
    async def echo(i: int) -> int:
        await asyncio.sleep(0)
        if i % 7 == 0:
            raise ValueError(i)
        return i

    def worker(base: int) -> list[object]:
        out: list[object] = []
        for i in range(base, base + 200):
            try:
                out.append(lt.run(echo(i), timeout=10))
            except ValueError as exc:
                out.append(("error", exc.args[0]))
        return out

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(worker, range(0, 800, 200)))
    flat = [x for chunk in results for x in chunk]
    assert flat == [("error", i) if i % 7 == 0 else i for i in range(800)]
