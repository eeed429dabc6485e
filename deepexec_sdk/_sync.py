"""Run the async client from synchronous code: a private event loop on a daemon thread.

The sync client owns one :class:`LoopThread` and turns every call into
``loop_thread.run(async_client.method(...))``. Because the coroutine runs on the
private loop, this works from any thread, including one whose own event loop is
running (a Jupyter cell): the caller simply blocks until the result is ready.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, Final, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")

_DEFAULT_NAME: Final = "deepexec-loop"


class _Call:
    """One coroutine submitted to the loop; every method except ``result`` runs on it."""

    def __init__(self, coro: Coroutine[Any, Any, Any], stopping: threading.Event) -> None:
        self.coro = coro
        self.stopping = stopping
        self.future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.task: asyncio.Task[Any] | None = None
        self.cancel_requested = False

    def start(self) -> None:
        if self.cancel_requested or self.stopping.is_set():
            self.coro.close()  # never started: close it, or Python warns "never awaited"
            self.future.cancel()
            self.future.set_running_or_notify_cancel()
            return
        self.task = asyncio.get_running_loop().create_task(self.coro)
        self.task.add_done_callback(self._copy_result)

    def _copy_result(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            # cancel() alone does not wake concurrent.futures.wait(); this does.
            self.future.cancel()
            self.future.set_running_or_notify_cancel()
        elif (exc := task.exception()) is not None:
            self.future.set_exception(exc)
        else:
            self.future.set_result(task.result())

    def cancel(self) -> None:
        if self.task is None:
            self.cancel_requested = True  # start() has not run yet
        else:
            self.task.cancel()


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


def _run_loop(
    loop: asyncio.AbstractEventLoop, started: threading.Event, stopping: threading.Event
) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(started.set)
    try:
        loop.run_forever()
    finally:
        stopping.set()
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


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
            loop = asyncio.new_event_loop()
            started = threading.Event()
            thread = threading.Thread(
                target=_run_loop, args=(loop, started, self._stopping), name=self._name, daemon=True
            )
            thread.start()
            started.wait()
            self._loop, self._thread = loop, thread
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
            call = _Call(coro, self._stopping)
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
        try:
            result: T = call.future.result(timeout)
        except BaseException:
            if not call.future.done():
                try:
                    loop.call_soon_threadsafe(call.cancel)
                except RuntimeError:  # the loop closed meanwhile, cancelling everything
                    pass
                concurrent.futures.wait([call.future], timeout=self._cancel_grace)
            raise
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
