"""LoopThread: the sync client's private event loop, run by the caller or a helper thread."""

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


def test_run_from_plain_thread_runs_the_private_loop_in_that_thread(lt: LoopThread) -> None:
    """No hand-off: a thread without an event loop runs the private loop itself."""
    thread_name, loop = lt.run(where())
    assert thread_name == threading.current_thread().name
    assert loop is lt.loop
    assert lt.run(where())[1] is loop  # the same loop every time
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # and from another thread
        other_name, other_loop = pool.submit(lt.run, where()).result(10)
    assert other_name != thread_name and other_loop is loop
    assert lt.thread is None  # no helper thread was needed


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
    assert thread_name == name  # a loop can not run in this thread: the helper runs it
    assert loop is not caller_loop and loop is lt.loop
    assert lt.thread is not None and lt.thread.daemon
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
    # one loop for all: each ran in its caller's thread or in the one helper thread
    assert sorted(i for i, _ in results) == list(range(8))
    assert len(loop_threads(name)) <= 1
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


def _ctrl_c_reaches_this_thread() -> None:
    """KeyboardInterrupt reaches the main thread only, through Python's default handler."""
    assert threading.current_thread() is threading.main_thread()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_keyboard_interrupt_cancels_the_running_coroutine(lt: LoopThread) -> None:
    _ctrl_c_reaches_this_thread()
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


def test_ctrl_c_in_a_call_run_for_another_thread_interrupts_only_the_main_thread(
    lt: LoopThread,
) -> None:
    """The main thread runs the loop; a call handed over by another thread runs on it when
    Ctrl-C lands. The main thread gets the KeyboardInterrupt; the other thread's call is
    cancelled (it does not get the interrupt)."""
    _ctrl_c_reaches_this_thread()
    started = threading.Event()
    outcome: list[object] = []

    async def forever() -> None:
        started.set()
        await asyncio.Event().wait()

    async def interrupted() -> str:
        assert threading.current_thread() is threading.main_thread()  # run by main's loop
        os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does; handled in this coroutine
        for _ in range(100_000):
            pass
        return "not interrupted"

    def other() -> None:
        started.wait(10)
        try:
            outcome.append(lt.run(interrupted(), timeout=10))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(type(exc))

    thread = threading.Thread(target=other)
    thread.start()
    with pytest.raises(KeyboardInterrupt):
        lt.run(forever())
    thread.join(10)
    assert outcome == [concurrent.futures.CancelledError]
    assert lt.run(asyncio.sleep(0, result=1)) == 1  # the loop is still healthy


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_a_coroutine_raising_a_base_exception_hands_it_to_its_caller_only(
    lt: LoopThread, exc_type: type[BaseException]
) -> None:
    """Raised by the coroutine itself, run by the helper thread for a caller whose event
    loop runs: that caller gets it, and the helper thread goes on serving."""

    async def leave() -> None:
        raise exc_type()

    async def from_a_running_loop() -> int:
        with pytest.raises(exc_type):
            lt.run(leave(), timeout=10)
        return lt.run(asyncio.sleep(0, result=7), timeout=10)

    assert asyncio.run(from_a_running_loop()) == 7
    assert lt.thread is not None and lt.thread.is_alive()


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


def test_iterate_yields_all_items_on_the_private_loop(lt: LoopThread) -> None:
    threads: list[str] = []

    async def numbers(n: int) -> AsyncIterator[int]:
        threads.append(threading.current_thread().name)
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    def factory() -> AsyncIterator[int]:
        assert asyncio.get_running_loop() is lt.loop  # the factory runs on the loop too
        threads.append(threading.current_thread().name)
        return numbers(5)

    assert list(lt.iterate(factory)) == [0, 1, 2, 3, 4]
    assert set(threads) == {threading.current_thread().name}


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


def _start_helper(lt: LoopThread) -> None:
    """Run a call from a thread whose own event loop runs: the helper thread runs it."""

    async def from_a_running_loop() -> None:
        lt.run(asyncio.sleep(0))

    asyncio.run(from_a_running_loop())


def test_close_joins_thread_and_is_idempotent(name: str) -> None:
    lt = LoopThread(name=name)
    _start_helper(lt)
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
    _start_helper(lt)
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
    """The helper thread wakes a caller at its next select; a loop kept busy by a task that
    never blocks still selects, with a zero timeout, on every iteration."""
    spinning = threading.Event()
    stop = False

    async def spin() -> None:  # always ready again: every select has a zero timeout
        while not stop:
            spinning.set()
            await asyncio.sleep(0)

    async def start_spinning() -> None:
        asyncio.get_running_loop().create_task(spin())

    lt.run(start_spinning())  # the task outlives the call: the helper thread runs it
    assert spinning.wait(10)
    assert lt.thread is not None
    try:
        for i in range(50):  # handed to the helper thread, which never waits
            assert lt.run(asyncio.sleep(0, result=i), timeout=10) == i
    finally:
        stop = True


def test_tasks_a_call_left_behind_go_on_between_calls(lt: LoopThread) -> None:
    """A task a call spawned runs on after the call returned (the helper thread runs the
    loop), and the next call from a plain thread runs the loop itself again."""
    done = threading.Event()

    async def later() -> None:
        await asyncio.sleep(0.05)
        done.set()

    async def spawn() -> str:
        asyncio.get_running_loop().create_task(later())
        return "spawned"

    assert lt.run(spawn()) == "spawned"
    assert done.wait(10)  # no call ran the loop meanwhile
    assert lt.thread is not None and lt.thread.is_alive()
    deadline = time.monotonic() + 10
    while True:  # the helper parks the loop once idle; calls then run it themselves
        name, _ = lt.run(where())
        if name == threading.current_thread().name or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert name == threading.current_thread().name


def test_connection_closed_while_parked_is_seen_before_the_next_call(lt: LoopThread) -> None:
    """A peer that closed an idle connection while no call ran the loop: the next call sees
    the close before it looks at the connection (what a pooled HTTP connection needs)."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    transports: list[asyncio.BaseTransport] = []

    async def connect() -> None:
        # a plain protocol closes its transport at EOF, as aiohttp's client protocol does
        transport, _ = await asyncio.get_running_loop().create_connection(
            asyncio.Protocol, "127.0.0.1", port
        )
        transports.append(transport)

    lt.run(connect())
    peer, _ = listener.accept()
    peer.close()  # while the loop is parked
    listener.close()
    time.sleep(0.05)

    async def closing() -> bool:  # what aiohttp asks of a pooled connection
        return transports[0].is_closing()

    assert lt.run(closing())


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


def test_a_call_handed_to_a_caller_outlives_that_callers_run(lt: LoopThread) -> None:
    """Thread B's call is handed to thread A, which runs the loop; A's own call ends first.
    A gives the loop to the helper thread, which finishes B's call."""
    b_started = threading.Event()
    a_running = threading.Event()

    async def a_call() -> str:
        a_running.set()
        while not b_started.is_set():  # noqa: ASYNC110 - set from another thread
            await asyncio.sleep(0.005)
        return "a"

    async def b_call() -> tuple[str, str]:
        b_started.set()
        first = threading.current_thread().name
        await asyncio.sleep(0.2)  # A returns meanwhile
        return first, threading.current_thread().name

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a = pool.submit(lt.run, a_call())
        assert a_running.wait(10)
        b = pool.submit(lt.run, b_call())
        assert a.result(10) == "a"
        began, ended = b.result(10)
    assert lt.thread is not None
    assert began != ended == lt.thread.name  # begun in A's run, ended by the helper


def test_cleanup_longer_than_the_grace_goes_on_after_the_timeout(name: str) -> None:
    lt = LoopThread(name=name, cancel_grace=0.05)
    done = threading.Event()

    async def stubborn() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)  # longer than the grace
            done.set()
            raise

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        lt.run(stubborn(), timeout=0.05)
    assert time.monotonic() - started < 0.3  # did not wait for the whole cleanup
    assert done.wait(10)  # the helper thread ran the rest of it
    lt.close()
    assert loop_threads(name) == []


def test_calls_from_a_running_loop_and_from_plain_code_in_turn(lt: LoopThread) -> None:
    """The helper thread keeps the loop a moment after a call from an event loop, and gives
    it back to a plain caller at once: calls in turn from both never wait for ever (each
    has a deadline), every one returns its own result, and every plain call runs the loop
    in its own thread."""

    async def echo(i: int) -> tuple[int, str]:
        if i % 3 == 0:
            await asyncio.sleep(0)
        return i, threading.current_thread().name

    async def from_a_running_loop(base: int) -> list[int]:
        return [lt.run(echo(base + i), timeout=10)[0] for i in range(20)]

    me = threading.current_thread().name
    for round_ in range(40):
        base = round_ * 100
        assert asyncio.run(from_a_running_loop(base)) == list(range(base, base + 20))
        plain = [lt.run(echo(base + 50 + i), timeout=10) for i in range(20)]
        assert plain == [(base + 50 + i, me) for i in range(20)]


def test_a_call_settled_in_the_helpers_last_iteration_still_wakes_its_caller(name: str) -> None:
    """A caller is woken at the loop's next select; when the helper thread parks the loop
    right after the iteration in which the call settled, there is no next select: parking
    wakes it instead (this hung a benchmark once)."""
    from deepexec_sdk import _sync

    lt = LoopThread(name=name)
    engine = lt._engine
    with engine.lock:
        loop, hub = engine.ensure_loop_locked()
        engine.driver = _sync._HELPER  # serve() runs in this thread, as the helper's would
    caller = threading.Lock()
    caller.acquire()
    loop.call_soon(hub.release, caller)  # settles in the same iteration as the idle check
    assert engine.serve()  # idle: parked
    assert caller.acquire(timeout=5)
    lt.close()


def test_plain_threads_event_loop_threads_and_iterators_at_once(name: str) -> None:
    """Every way of calling, at once: three plain threads, two threads whose event loop
    runs, one iterating; calls that sleep, yield or leave a task behind. Each call has a
    deadline; every result comes back to its own caller, and close() leaves no thread."""
    import random

    lt = LoopThread(name=name)
    failures: list[object] = []

    async def work(i: int) -> int:
        r = random.random()
        if r < 0.3:
            await asyncio.sleep(random.random() * 0.002)
        elif r < 0.4:  # a task left behind for a moment
            asyncio.get_running_loop().create_task(asyncio.sleep(random.random() * 0.01))
        elif r < 0.5:
            await asyncio.sleep(0)
        return i

    def check(i: int) -> None:
        try:
            got = lt.run(work(i), timeout=10)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append((i, exc))
            return
        if got != i:
            failures.append((i, got))

    def plain(base: int) -> None:
        for k in range(300):
            check(base + k)

    def with_a_running_loop(base: int) -> None:
        async def body() -> None:
            for k in range(300):
                check(base + k)
                if k % 10 == 0:
                    await asyncio.sleep(0.001)

        asyncio.run(body())

    def iterating() -> None:
        async def numbers() -> AsyncIterator[int]:
            for j in range(10):
                await asyncio.sleep(0)
                yield j

        for _ in range(30):
            got = list(lt.iterate(numbers))
            if got != list(range(10)):
                failures.append(("iterate", got))

    workers = [threading.Thread(target=plain, args=(n * 1000,)) for n in range(3)]
    workers += [threading.Thread(target=with_a_running_loop, args=(n * 1000,)) for n in (3, 4)]
    workers.append(threading.Thread(target=iterating))
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not any(worker.is_alive() for worker in workers)
    assert failures == []
    lt.close()
    assert loop_threads(name) == []
