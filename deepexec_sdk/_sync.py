"""Run the async client from synchronous code: a private event loop, run by the caller.

The sync client owns one :class:`LoopThread` and turns every call into
``loop_thread.run(async_client.method(...))``. Every coroutine runs on one private event
loop, where the client's HTTP session and its connections live; which thread runs that
loop changes from call to call:

* A caller whose thread runs no event loop (a script, a worker thread) runs the private
  loop itself for the time of its call. No thread hand-off: a blocking call costs what
  its coroutine costs, and callbacks (``on_stdout``...) run in the caller's thread.
* A caller that can not (its thread runs an event loop, as a Jupyter cell's does; or
  another thread runs the private loop at that moment) hands its coroutine to whoever
  runs the loop, and blocks until the result is ready.
* A helper daemon thread, started the first time it is needed, runs the loop while work
  is left on it and no caller runs it: a call handed over as above, or tasks a call left
  behind (a stream being closed, a job being cancelled). It parks the loop once it is idle;
  after a call from a thread that runs an event loop, a few milliseconds later, so that
  calls in a row from a Jupyter cell find it running (a caller that can run the loop
  itself takes it back at once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import selectors
import sys
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sized
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
    """What the calls of one loop share; touched on the loop only (in whichever thread runs
    it), except ``stopping``."""

    __slots__ = ("changed", "inflight", "on_settle", "release", "selector", "stopping")

    def __init__(self, stopping: threading.Event, selector: _WakingSelector | None) -> None:
        self.stopping = stopping
        #: called on the loop with each call that settles (the LoopThread counts the calls
        #: handed to the loop's runner)
        self.on_settle: Callable[[_Call], None] | None = None
        #: set when a call settles: the helper thread's cue to see whether the loop is idle
        self.changed = asyncio.Event()
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
        "driven",
        "error",
        "finished",
        "grace",
        "handed",
        "hub",
        "linger",
        "settled",
        "started",
        "task",
        "timed_out",
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
        self.handed = False  # given to the loop's runner (not run by its caller)
        self.linger = False  # its caller runs an event loop: the helper keeps the loop a while
        self.driven = False  # its caller runs the loop for it: its end stops the loop
        self.grace: asyncio.TimerHandle | None = None  # the end of a timed-out call's grace
        self.timed_out = False

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
        except KeyboardInterrupt as exc:
            if threading.current_thread() is threading.main_thread():
                # Ctrl-C landed while the main thread, running the loop, ran this call for
                # another thread: this call is cancelled, and the interrupt is raised again
                # in the main thread's run of the loop (by a callback: not from a task
                # whose exception no one would retrieve)
                self.cancelled = True
                asyncio.get_running_loop().call_soon(_raise, exc)
            else:  # raised by the coroutine itself: its caller's
                self.error = exc
        except BaseException as exc:  # SystemExit too: its caller's, not the loop runner's
            self.error = exc
        finally:
            self._settle()

    async def run_driven(self, loop: asyncio.AbstractEventLoop) -> None:
        """The call of a caller that runs the loop itself: stores the outcome, then stops
        the loop, so that the caller's ``run_forever`` returns."""
        self.started = True
        try:
            try:
                # One loop iteration first: the I/O that came while the loop was parked
                # (a server that closed an idle keep-alive connection) is handled before
                # the coroutine picks a pooled connection.
                await asyncio.sleep(0)
            except asyncio.CancelledError:
                self.coro.close()  # never started: no "never awaited" warning
                self.cancelled = True
                return
            try:
                self.value = await self.coro
            except asyncio.CancelledError:
                self.cancelled = True
            except BaseException as exc:  # KeyboardInterrupt too: raised in the caller
                self.error = exc
        finally:
            self.settled = True
            if self.driven:  # else its caller left already: another thread runs the loop
                loop.stop()

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
        hub = self.hub
        hub.inflight.discard(self)
        hub.release(self.finished)
        if hub.on_settle is not None:
            hub.on_settle(self)

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


def _raise(exc: BaseException) -> None:
    raise exc


def _cancel_tasks(loop: asyncio.AbstractEventLoop) -> set[asyncio.Task[Any]]:
    """Cancel every task of ``loop``; the tasks (close() asks this of a caller's run, on
    the loop)."""
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    return tasks


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel every task of ``loop`` and run it until they are done (the loop is not
    running); report the errors they ended with."""
    tasks = _cancel_tasks(loop)
    if not tasks:
        return
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


#: the helper thread runs the loop (otherwise ``_Engine.driver`` is a caller's thread id,
#: or None: nobody runs it)
_HELPER: Final = "helper"

#: how often, in seconds, the helper thread looks whether tasks a call left behind ended
_IDLE_POLL: Final = 0.05

#: how long, in seconds, the helper thread keeps the loop after a call from a thread that
#: runs an event loop (a Jupyter cell making calls in a row), before it parks it
_LINGER: Final = 0.005


#: loop iterations a caller runs after its call to run the callbacks its call made ready;
#: callbacks still ready after that are the helper thread's
_FLUSH_ITERATIONS: Final = 3


_ALWAYS: Final = (None,)


def _ready(loop: asyncio.AbstractEventLoop) -> Sized:
    """The callbacks ready to run on ``loop`` (asyncio's own loops keep them in ``_ready``;
    another loop is taken as always having some, which hands it to the helper thread)."""
    ready: Sized = getattr(loop, "_ready", _ALWAYS)
    return ready


class _Engine:
    """What a LoopThread's callers, its helper thread and its finalizer share. Nothing here
    refers to the LoopThread, so an unreferenced LoopThread is collected (and its loop
    closed) like any other object.

    ``driver`` says who runs the loop: None (parked: the next caller that can runs it),
    a caller's thread id, or _HELPER. It changes under ``lock`` only, and only the
    current driver gives the role up, once its ``run_forever`` has returned: the loop never
    runs in two threads.
    """

    def __init__(self, name: str, cancel_grace: float) -> None:
        self.name = name
        self.cancel_grace = cancel_grace
        self.lock = threading.Lock()
        self.wake = threading.Condition(self.lock)  # the helper thread waits on it
        self.loop: asyncio.AbstractEventLoop | None = None
        self.hub: _Hub | None = None
        self.driver: int | str | None = None
        self.handed = 0  # calls handed to the loop's runner and not settled yet
        self.closed = False
        self.shut = threading.Event()  # set once the loop is closed (or was never made)
        self.stopping = threading.Event()
        self.helper: threading.Thread | None = None
        self.linger_until = 0.0  # loop time until which the helper keeps the loop when idle
        self.lingering = False  # the helper keeps the idle loop only for that
        self.yielding = False  # a caller that can run the loop asks the lingering helper for it

    # ------------------------------------------------------------------ roles

    def inside(self) -> bool:
        """True when called from a coroutine or callback running on the private loop."""
        loop = self.loop
        return loop is not None and asyncio._get_running_loop() is loop

    def ensure_loop_locked(self) -> tuple[asyncio.AbstractEventLoop, _Hub]:
        if self.loop is None or self.hub is None:
            self.loop, self.hub = _new_loop(self.stopping)
            self.hub.on_settle = self._settled
        return self.loop, self.hub

    def _settled(self, call: _Call) -> None:
        """On the loop: a call settled."""
        if call.handed:
            call.handed = False
            with self.lock:
                self.handed -= 1
                if call.linger and self.loop is not None:
                    # The helper keeps the loop a moment longer (no need to wake its idle
                    # check), and a caller that can run the loop may take it back at once.
                    self.linger_until = self.loop.time() + _LINGER
                    if not self.handed:
                        self.lingering = True
                    return
        hub = self.hub
        if hub is not None:
            hub.changed.set()

    def wake_helper_locked(self) -> None:
        """Make the helper thread the loop's runner (starting it the first time)."""
        self.driver = _HELPER
        if self.helper is None:
            self.helper = threading.Thread(
                target=_helper_main, args=(self,), name=self.name, daemon=True
            )
            self.helper.start()
        self.wake.notify_all()

    def busy(self) -> bool:
        """Work left on the (not running) loop: handed calls, callbacks ready to run or
        unfinished tasks."""
        loop = self.loop
        if self.handed:
            return True
        return loop is not None and (bool(_ready(loop)) or bool(asyncio.all_tasks(loop)))

    def flush_releases(self) -> None:
        """Wake the handed callers whose calls settled in the loop's last iteration: the
        selector wakes them at the next select, and a loop that stopped has none."""
        hub = self.hub
        if hub is not None and hub.selector is not None:
            hub.selector.flush()

    def give_up_role(self) -> None:
        """The caller that ran the loop is done with it: park the loop, pass it to the
        helper thread while work is left on it, or close it when close() came meanwhile."""
        self.flush_releases()
        with self.lock:
            closing = self.closed
            if not closing:
                if self.busy():
                    self.wake_helper_locked()
                else:
                    self.driver = None
        if closing:
            self.shutdown()

    # ------------------------------------------------------------------ running

    def drive(self, call: _Call, timeout: float | None) -> Any:
        """Run the loop in this thread until ``call`` settles; its outcome."""
        loop = self.loop
        assert loop is not None
        try:
            call.driven = True
            task = loop.create_task(call.run_driven(loop))
            call.task = task
            timer = None if timeout is None else loop.call_later(timeout, self._expire, call)
            try:
                while not task.done():
                    loop.run_forever()  # call.run_driven stops it
                    if call.timed_out and not task.done():
                        break  # its cleanup outlasted cancel_grace: the helper goes on
                # What the call's end made ready (a transport's close, a future's callbacks)
                # runs now, not whenever the loop runs next.
                for _ in range(_FLUSH_ITERATIONS):
                    if not _ready(loop):
                        break
                    loop.call_soon(loop.stop)
                    loop.run_forever()
            except BaseException:  # KeyboardInterrupt, raised in the loop: cancel the call
                if not task.done():
                    task.cancel()
                    self._run_for(task, self.cancel_grace)
                raise
            finally:
                call.driven = False
                if timer is not None:
                    timer.cancel()
                if call.grace is not None:
                    call.grace.cancel()
        finally:
            self.give_up_role()
        if call.timed_out:
            raise TimeoutError()
        return call.outcome()

    def _expire(self, call: _Call) -> None:
        """On the loop: ``call``'s timeout passed. Cancel it; give up on it after
        cancel_grace seconds of cleanup."""
        if call.settled or call.task is None:
            return
        call.timed_out = True
        call.task.cancel()
        assert self.loop is not None
        call.grace = self.loop.call_later(self.cancel_grace, self.loop.stop)

    def _run_for(self, task: asyncio.Task[Any], seconds: float) -> None:
        """Run the loop until ``task`` (a run_driven, which stops the loop as it ends) is
        done, ``seconds`` at most."""
        loop = self.loop
        assert loop is not None
        deadline = loop.time() + seconds
        timer = loop.call_at(deadline, loop.stop)
        try:
            while not task.done() and loop.time() < deadline:
                loop.run_forever()
        finally:
            timer.cancel()

    def wait_handed(self, call: _Call, timeout: float | None) -> Any:
        """Block until the loop's runner has run ``call``; its outcome."""
        loop = self.loop
        assert loop is not None
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
                call.wait(self.cancel_grace)
            raise
        return call.outcome()

    async def until_idle(self) -> None:
        """The helper's run: until no handed call and no other task is left, or close();
        then it stops the loop."""
        hub = self.hub
        assert hub is not None
        loop = asyncio.get_running_loop()
        me = asyncio.current_task()
        try:
            while not self.closed:
                with self.lock:
                    if not self.handed and all(task is me for task in asyncio.all_tasks()):
                        wait = self.linger_until - loop.time()
                        if wait <= 0 or self.yielding:
                            return
                        self.lingering = True
                    else:
                        wait = _IDLE_POLL
                        self.lingering = False
                        if self.yielding:  # work came in: the caller hands its call over
                            self.yielding = False
                            self.wake.notify_all()
                hub.changed.clear()
                try:
                    async with asyncio.timeout(wait):
                        await hub.changed.wait()
                except TimeoutError:
                    pass
        finally:
            loop.stop()

    def serve(self) -> bool:
        """The helper thread's turn: run the loop until it is idle (then park it: True) or
        the LoopThread is closed (False: the loop is shut down)."""
        loop = self.loop
        assert loop is not None
        while True:
            task = loop.create_task(self.until_idle())
            while not task.done():  # a stray loop.stop() only ends one run_forever
                loop.run_forever()
            self.flush_releases()
            with self.lock:
                if self.closed:
                    break
                if not self.busy():
                    self.driver = None
                    self.lingering = self.yielding = False
                    self.wake.notify_all()  # a caller waiting to take the loop back
                    return True
        self.shutdown()
        return False

    # ------------------------------------------------------------------ closing

    def shutdown(self) -> None:
        """Cancel what is left, finalize async generators, close the loop. Runs in the
        thread that holds the loop's role, with no loop running."""
        loop, hub = self.loop, self.hub
        self.stopping.set()
        try:
            if loop is not None and hub is not None and not loop.is_closed():
                try:
                    _cancel_all_tasks(loop)
                    # a task cancelled before its first step never ran _run: wake its caller
                    hub.abandon_all()
                    loop.run_until_complete(loop.shutdown_asyncgens())
                    loop.run_until_complete(loop.shutdown_default_executor())
                finally:
                    loop.close()
                    hub.abandon_all()
        finally:
            with self.lock:
                self.driver = None
                self.wake.notify_all()
            self.shut.set()

    def close(self, timeout: float | None, *, wait: bool = True) -> None:
        """Close: cancel what runs, close the loop, stop the helper thread. ``wait``: block
        until done (``timeout`` bounds each wait)."""
        inline = False
        with self.lock:
            if self.closed:
                return
            self.closed = True
            loop, hub = self.loop, self.hub
            if loop is None or hub is None:
                self.shut.set()
            elif self.driver is None:
                if asyncio._get_running_loop() is None:
                    self.driver = threading.get_ident()  # close it here
                    inline = True
                else:
                    self.wake_helper_locked()  # no loop can run in this thread
            elif self.driver == _HELPER:
                loop.call_soon_threadsafe(hub.changed.set)  # until_idle sees `closed`
            else:  # a caller's run: end it; that caller then closes the loop
                loop.call_soon_threadsafe(_cancel_tasks, loop)
            self.wake.notify_all()
            helper = self.helper
        if inline:
            self.shutdown()
        if not wait:
            return
        self.shut.wait(timeout)
        if helper is not None and helper is not threading.current_thread():
            helper.join(timeout)


def _helper_main(engine: _Engine) -> None:
    """The helper thread: run the loop whenever it is given the role, until closed."""
    loop = engine.loop
    assert loop is not None
    asyncio.set_event_loop(loop)
    try:
        while True:
            with engine.lock:
                while engine.driver != _HELPER:
                    if engine.closed:
                        return  # another thread closes the loop (or did)
                    engine.wake.wait()
                closing = engine.closed
            if closing:
                engine.shutdown()
                return
            if not engine.serve():
                return
    finally:
        asyncio.set_event_loop(None)


def _finalize(engine: _Engine) -> None:
    """An unreferenced LoopThread: close its loop (without waiting inside its own loop)."""
    engine.close(None, wait=not engine.inside())


class LoopThread:
    """A private asyncio event loop for synchronous callers, run by the calling thread when
    it can, else by a helper daemon thread (started lazily: see the module's docstring).

    * :meth:`run` executes a coroutine on the loop and blocks until it finishes.
    * :meth:`iterate` turns an async iterator into a blocking iterator.
    * :meth:`close` (or leaving a ``with`` block) cancels whatever is still running,
      finalizes async generators, closes the loop and joins the helper thread. It is
      idempotent; a forgotten LoopThread is closed when garbage-collected or at exit.

    All methods may be called from several threads at once. Do not call :meth:`run`
    from a coroutine running on this same loop (it would wait for itself): that
    raises :class:`RuntimeError`.
    """

    def __init__(self, *, name: str = _DEFAULT_NAME, cancel_grace: float = 5.0) -> None:
        """``name`` names the helper thread; ``cancel_grace`` bounds, in seconds, how long
        an interrupted :meth:`run` waits for its cancelled coroutine to clean up."""
        self._engine = _Engine(name, cancel_grace)
        self._finalizer = weakref.finalize(self, _finalize, self._engine)
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._engine.closed

    @property
    def thread(self) -> threading.Thread | None:
        """The helper thread, or ``None`` while no call has needed it."""
        return self._engine.helper

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The private loop, or ``None`` before the first call."""
        return self._engine.loop

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

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
        engine = self._engine
        if engine.inside():
            coro.close()
            raise RuntimeError(
                "LoopThread.run() called from its own event loop; await the coroutine instead"
            )
        me = threading.get_ident()
        free_thread = asyncio._get_running_loop() is None
        with engine.lock:
            if engine.closed:
                coro.close()
                raise RuntimeError("LoopThread is closed")
            loop, hub = engine.ensure_loop_locked()
            if free_thread and engine.driver == _HELPER and engine.lingering:
                # The helper keeps the idle loop only for calls from an event loop that may
                # follow: take it back rather than hand this call over.
                engine.yielding = True
                loop.call_soon_threadsafe(hub.changed.set)
                while engine.driver == _HELPER and engine.yielding and not engine.closed:
                    engine.wake.wait()
                if engine.closed:
                    coro.close()
                    raise RuntimeError("LoopThread is closed")
            call = _Call(coro, hub)
            # the role left behind by an interrupted run of this very thread is free too
            drive = free_thread and engine.driver in (None, me)
            if drive:
                engine.driver = me
            else:
                call.handed = True
                call.linger = not free_thread
                engine.handed += 1
                # Submitted under the lock: close() cannot slip in between, so this start()
                # runs (or the shutdown abandons the call and wakes this caller).
                loop.call_soon_threadsafe(call.start)
                if engine.driver is None:
                    engine.wake_helper_locked()
        if drive:
            result: T = engine.drive(call, timeout)
        else:
            result = engine.wait_handed(call, timeout)
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
        engine = self._engine
        if engine.inside():
            # Garbage-collected on the loop itself: schedule instead of waiting.
            assert engine.loop is not None
            task = engine.loop.create_task(aclose())
            self._background.add(task)  # keep a reference until it is done
            task.add_done_callback(self._background.discard)
            return
        try:
            self.run(aclose())
        except RuntimeError:
            pass  # LoopThread closed: the loop's shutdown already finalized async generators

    def close(self, timeout: float | None = None) -> None:
        """Cancel remaining work, close the loop and join the helper thread. Idempotent.

        ``timeout`` bounds each wait (``None``: wait). Must not be called from a coroutine
        running on the loop.
        """
        engine = self._engine
        if engine.closed:
            return
        if engine.inside():
            raise RuntimeError("LoopThread.close() called from its own event loop")
        self._finalizer.detach()
        engine.close(timeout)
