"""Run the async client from synchronous code: a private event loop on a daemon thread.

The sync client owns one :class:`LoopThread` and turns every call into
``loop_thread.run(async_client.method(...))``. Because the coroutine runs on the
private loop, this works from any thread, including one whose own event loop is
running (a Jupyter cell): the caller simply blocks until the result is ready.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Final, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")

_DEFAULT_NAME: Final = "deepexec-loop"


class _WakingSelector(selectors.DefaultSelector):
    """The private loop's selector. It wakes the callers whose coroutines have ended just
    before the loop waits for I/O, not when their coroutines end.

    A caller woken while the loop thread still runs Python code (finishing the task, the
    rest of the loop iteration) wakes only to wait for the GIL: one more sleep and wake-up
    per call. Woken as the loop thread enters ``select``, which releases the GIL, it runs at
    once. Every loop iteration calls ``select``, so a wake-up is put off by one iteration at
    most.
    """

    def __init__(self) -> None:
        super().__init__()
        self._to_release: list[threading.Lock] = []

    def release_later(self, lock: threading.Lock) -> None:
        self._to_release.append(lock)

    def flush(self) -> None:
        to_release, self._to_release = self._to_release, []
        for lock in to_release:
            lock.release()

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        if self._to_release:
            self.flush()
        events: list[tuple[Any, int]] = super().select(timeout)
        return events

    def close(self) -> None:
        self.flush()
        super().close()


def _release_now(lock: threading.Lock) -> None:
    lock.release()


class _Hub:
    """What the calls of one loop share; touched on the loop thread only, except
    ``stopping``."""

    __slots__ = ("inflight", "release", "selector", "stopping")

    def __init__(self, stopping: threading.Event, selector: _WakingSelector | None) -> None:
        self.stopping = stopping
        self.selector = selector
        #: how a settled call wakes its caller: at the loop's next select, or at once
        self.release: Callable[[threading.Lock], None] = (
            selector.release_later if selector is not None else _release_now
        )
        #: calls started and not settled yet
        self.inflight: set[_Call] = set()

    def abandon_all(self) -> None:
        """Settle every call still in flight (the loop is shutting down) and wake every
        caller."""
        for call in list(self.inflight):
            call.abandon()
        if self.selector is not None:
            self.selector.flush()


def _new_loop(stopping: threading.Event) -> tuple[asyncio.AbstractEventLoop, _Hub]:
    """The private loop: asyncio's selector loop with a _WakingSelector, whatever loop
    policy the application installed (the loop is private); on Windows asyncio's default
    (proactor) loop, which wakes callers as their coroutines end."""
    if sys.platform == "win32":
        return asyncio.new_event_loop(), _Hub(stopping, None)
    selector = _WakingSelector()
    return asyncio.SelectorEventLoop(selector), _Hub(stopping, selector)


class _Call:
    """One coroutine submitted to the loop; every method except ``wait`` and ``outcome``
    runs on it.

    The hand-off is a single pre-acquired lock, released by the loop thread once the
    outcome is stored (see _WakingSelector for when exactly); the calling thread blocks on
    acquiring it. A ``concurrent.futures.Future`` takes a Condition and its waiter locks,
    and is completed from a done callback the loop runs one iteration after the coroutine
    ended.
    """

    __slots__ = (
        "cancel_requested",
        "cancelled",
        "coro",
        "error",
        "finished",
        "hub",
        "settled",
        "started",
        "task",
        "value",
    )

    def __init__(self, coro: Coroutine[Any, Any, Any], hub: _Hub) -> None:
        self.coro = coro
        self.hub = hub
        self.finished = threading.Lock()
        self.finished.acquire()  # released by the loop thread once the outcome is set
        self.task: asyncio.Task[Any] | None = None
        self.started = False  # _run has begun
        self.cancel_requested = False
        self.settled = False
        self.value: Any = None
        self.error: BaseException | None = None
        self.cancelled = False

    def start(self) -> None:
        if self.cancel_requested or self.hub.stopping.is_set():
            self.abandon()
            return
        self.hub.inflight.add(self)
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        # The outcome is stored the moment the coroutine ends, not in a done callback the
        # loop would run one iteration later.
        self.started = True
        if self.cancel_requested:  # cancel() came between start() and this first step
            self.abandon()
            return
        try:
            self.value = await self.coro
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        except BaseException as exc:
            self.error = exc
            if not isinstance(exc, Exception):
                raise  # KeyboardInterrupt, SystemExit: the loop's business too, as before
        finally:
            self._settle()

    def abandon(self) -> None:
        """Settle as cancelled a call whose coroutine never started (or, at the loop's
        shutdown, never got to run _run)."""
        if self.settled:
            return
        self.coro.close()  # never started: close it, or Python warns "never awaited"
        self.cancelled = True
        self._settle()

    def _settle(self) -> None:
        self.settled = True
        self.hub.inflight.discard(self)
        self.hub.release(self.finished)

    def cancel(self) -> None:
        if self.task is None or not self.started:
            # start() has not run, or its task has not taken its first step: a
            # task.cancel() now would skip _run altogether and leave the caller waiting
            self.cancel_requested = True
        elif not self.settled:
            self.task.cancel()

    def wait(self, timeout: float | None) -> bool:
        """Block until the outcome is set (True) or ``timeout`` seconds pass (False); as
        ``concurrent.futures.Future.result`` waits: None waits for ever, 0 or less does
        not wait."""
        if timeout is None:
            return self.finished.acquire()
        if timeout > 0:
            return self.finished.acquire(True, timeout)
        return self.finished.acquire(False)

    def outcome(self) -> Any:
        """The coroutine's result; or raise its exception, or CancelledError (the
        ``concurrent.futures`` one) when it was cancelled."""
        if self.cancelled:
            raise concurrent.futures.CancelledError()
        error = self.error
        if error is not None:
            self.error = None  # no reference cycle through the traceback
            try:
                raise error
            finally:
                error = None
        return self.value


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception while closing the DeepExec loop thread",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def _run_loop(loop: asyncio.AbstractEventLoop, started: threading.Event, hub: _Hub) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        hub.stopping.set()
        try:
            _cancel_all_tasks(loop)
            # a task cancelled before its first step never ran _run: wake its caller here
            hub.abandon_all()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()
            hub.abandon_all()


def _stop_loop(
    loop: asyncio.AbstractEventLoop, thread: threading.Thread, timeout: float | None = None
) -> None:
    try:
        loop.call_soon_threadsafe(loop.stop)
    except RuntimeError:  # already closed
        pass
    if threading.current_thread() is not thread:
        thread.join(timeout)


class LoopThread:
    """A private asyncio event loop running on a daemon thread, started lazily.

    * :meth:`run` executes a coroutine on the loop and blocks until it finishes.
    * :meth:`iterate` turns an async iterator into a blocking iterator.
    * :meth:`close` (or leaving a ``with`` block) cancels whatever is still running,
      finalizes async generators, closes the loop and joins the thread. It is
      idempotent; a forgotten LoopThread is closed when garbage-collected or at exit.

    All methods may be called from several threads at once. Do not call :meth:`run`
    from a coroutine running on this same loop (it would wait for itself): that
    raises :class:`RuntimeError`.
    """

    def __init__(self, *, name: str = _DEFAULT_NAME, cancel_grace: float = 5.0) -> None:
        """``name`` names the thread; ``cancel_grace`` bounds, in seconds, how long an
        interrupted :meth:`run` waits for its cancelled coroutine to clean up."""
        self._name = name
        self._cancel_grace = cancel_grace
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._hub: _Hub | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._closed = False
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    @property
    def thread(self) -> threading.Thread | None:
        """The loop's thread, or ``None`` before the first call."""
        return self._thread

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _start_locked(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop, hub = _new_loop(self._stopping)
            started = threading.Event()
            thread = threading.Thread(
                target=_run_loop, args=(loop, started, hub), name=self._name, daemon=True
            )
            thread.start()
            started.wait()
            self._loop, self._thread, self._hub = loop, thread, hub
            # Neither the thread nor the finalizer refers to self, so an unreferenced
            # LoopThread is collected, and its loop stopped, like any other object.
            self._finalizer = weakref.finalize(self, _stop_loop, loop, thread)
        return self._loop

    def _submit(self, coro: Coroutine[Any, Any, T]) -> tuple[asyncio.AbstractEventLoop, _Call]:
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError(
                "LoopThread.run() called from its own event loop; await the coroutine instead"
            )
        with self._lock:
            if self._closed:
                coro.close()
                raise RuntimeError("LoopThread is closed")
            loop = self._start_locked()
            assert self._hub is not None
            call = _Call(coro, self._hub)
            # Submitted under the lock: close() cannot slip in between, so this start()
            # is queued before the loop's stop and always runs.
            loop.call_soon_threadsafe(call.start)
        return loop, call

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the private loop and return its result (or raise its error).

        ``timeout`` (seconds) bounds the wait: when it expires the coroutine is
        cancelled and :class:`TimeoutError` raised. If the caller is interrupted
        (``KeyboardInterrupt``) the coroutine is cancelled too, and the interrupt
        propagates. Either way the cancelled coroutine gets up to ``cancel_grace``
        seconds to run its cleanup before this returns. If the loop is closed while
        the coroutine runs, it is cancelled and :class:`concurrent.futures.CancelledError`
        is raised.
        """
        loop, call = self._submit(coro)
        finished = False
        try:
            finished = call.wait(timeout)
            if not finished:
                raise TimeoutError()
        except BaseException:
            if not finished:
                try:
                    loop.call_soon_threadsafe(call.cancel)
                except RuntimeError:  # the loop closed meanwhile, cancelling everything
                    pass
                call.wait(self._cancel_grace)
            raise
        result: T = call.outcome()
        return result

    def iterate(self, factory: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """Iterate an async iterator from synchronous code.

        ``factory`` is called on the loop (so it may create loop-bound objects) and
        returns the async iterator, e.g. ``lambda: client.stream_text(prompt)``.
        Each ``next()`` blocks for one item. Leaving the ``for`` loop early
        (``break``, an exception) or calling ``close()`` on the returned iterator
        acloses the async iterator on the loop, so its ``finally`` blocks run.
        """

        async def open_iterator() -> AsyncIterator[T]:
            return aiter(factory())

        async def step(iterator: AsyncIterator[T]) -> tuple[T, ...]:
            try:
                return (await anext(iterator),)
            except StopAsyncIteration:
                return ()

        iterator = self.run(open_iterator())
        finished = False
        try:
            while True:
                item = self.run(step(iterator))
                if not item:
                    finished = True
                    return
                yield item[0]
        finally:
            if not finished:
                self._aclose(iterator)

    def _aclose(self, iterator: AsyncIterator[Any]) -> None:
        aclose: Callable[[], Coroutine[Any, Any, Any]] | None = getattr(iterator, "aclose", None)
        if aclose is None:
            return
        if threading.current_thread() is self._thread:
            # Garbage-collected on the loop thread itself: schedule instead of waiting.
            assert self._loop is not None
            task = self._loop.create_task(aclose())
            self._background.add(task)  # keep a reference until it is done
            task.add_done_callback(self._background.discard)
            return
        try:
            self.run(aclose())
        except RuntimeError:
            pass  # LoopThread closed: the loop's shutdown already finalized async generators

    def close(self, timeout: float | None = None) -> None:
        """Cancel remaining work, close the loop and join its thread. Idempotent.

        ``timeout`` bounds the join (``None``: wait). Must not be called from the
        loop's own thread.
        """
        with self._lock:
            if self._closed:
                return
            if self._thread is not None and threading.current_thread() is self._thread:
                raise RuntimeError("LoopThread.close() called from its own event loop")
            self._closed = True
            loop, thread, finalizer = self._loop, self._thread, self._finalizer
        if finalizer is not None:
            finalizer.detach()
        if loop is not None and thread is not None:
            _stop_loop(loop, thread, timeout)
