"""The job manager: an async worker pool over the durable :class:`JobStore`, job
cancellation, progress, and per-job event streams.

Scheduling
    ``concurrency`` worker tasks each claim the next PENDING job from the store
    (highest ``priority`` first, then oldest) and run it with the runner registered
    for its ``job_type``. Idle workers sleep on an event that :meth:`JobManager.submit`
    sets; there is no polling. When a worker is idle and nothing else is pending,
    :meth:`JobManager.submit` stores the new job already RUNNING, starts its runner
    and hands it to that worker (one store transaction instead of two, and the
    program is already running when the submit is answered).

Runners
    ``async def runner(job: JobRecord, ctx: JobContext) -> dict`` returns the job's
    result (COMPLETED). Raising :class:`JobFailure` fails the job with that error code
    (and an optional partial result); any other exception fails it with
    ``internal_error``. Runners report through ``ctx.progress(n)`` and
    ``ctx.output(stream, text)``; both are synchronous and never block.

Timeouts
    A runner is expected to honour the job's ``timeout`` itself (the sandbox kills the
    program). As a safety net the manager cancels a runner still going
    ``timeout_grace`` seconds after the timeout and fails the job with code
    ``execution_timeout``.

Progress
    Explicit progress from the runner wins. For code, see
    :mod:`deepexec_server.jobs.progress` (``##deepexec-progress N`` lines on stdout,
    stripped from the output; ``ctx.output(..., parse_progress=True)`` applies it).
    Until a runner reports progress, a job with a timeout gets a time-based estimate:
    ``elapsed / timeout``, capped at 99 %. Progress never goes backwards while a job
    runs; it is 100 on COMPLETED.

Cancellation
    :meth:`JobManager.cancel` records CANCELED (with ``canceled_at`` and the reason)
    first, then cancels a running job's task at once: the runner sees
    ``CancelledError`` at its next await (the sandbox executor kills the process group
    on it). The worker slot is freed only when the runner has finished unwinding.

Events (:meth:`JobManager.subscribe`)
    A subscriber first gets the CURRENT state: a ``job_status_event`` (with progress),
    then the output published so far (replayed from memory for a running job, up to
    ``max_buffered_output_chars``; rebuilt from the result for a finished one) and, if
    the job has finished, the final ``job_result_event``; then every status change,
    progress change and output chunk as it happens; the stream ends after the
    ``job_result_event``. Event dicts::

        {"type": "job_status_event", "job_id", "status", "progress", "timestamp"}
        {"type": "job_progress_event", "job_id", "progress", "timestamp"}
        {"type": "job_output_event", "job_id", "stream": "stdout"|"stderr", "data",
         "timestamp"}
        {"type": "job_result_event", "job_id", "job": <JobRecord.to_status_dict()>,
         "timestamp"}

    (timestamps are RFC 3339 strings: when the event happened).

    Slow subscribers never slow a job down. Each subscriber has its own buffer:
    status, progress and result events are always kept (progress only ever rises, so a
    run has at most 100 progress events), and output chunks beyond
    ``max_buffered_output_chars`` (1 MiB of text by default) of not yet consumed
    output are DROPPED for that subscriber only (a chunk reaching an empty buffer is
    always kept, however large); its
    :attr:`EventStream.dropped_output_chunks` counts them.

Shutdown (:meth:`JobManager.stop`)
    Stops claiming jobs, lets running jobs finish within ``grace`` seconds, then
    cancels the rest and puts them back to PENDING (the interrupted run does not
    count as an attempt); they run again after the next start. Open event streams
    end without a terminal event.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import os
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from datetime import timedelta
from typing import Any, Final

from attrs import define, evolve

from .models import (
    JobAlreadyFinished,
    JobError,
    JobFailure,
    JobNotFound,
    JobRecord,
    JobStatus,
    NewJob,
    UnknownJobType,
    rfc3339,
    utc_now,
)
from .progress import ProgressLineFilter
from .store import DEFAULT_MAX_ATTEMPTS, JobPage, JobStore, RecoveryReport

__all__ = [
    "DEFAULT_MAX_BUFFERED_OUTPUT_CHARS",
    "TIMEOUT_ERROR_CODE",
    "EventStream",
    "JobContext",
    "JobManager",
    "Runner",
    "SubmitResult",
]

logger = logging.getLogger(__name__)

#: A runner: ``async def run(job, ctx) -> result dict``.
Runner = Callable[[JobRecord, "JobContext"], Awaitable[dict[str, Any]]]

DEFAULT_MAX_BUFFERED_OUTPUT_CHARS: Final = 1 << 20
TIMEOUT_ERROR_CODE: Final = "execution_timeout"
_STREAMS: Final = frozenset({"stdout", "stderr"})
#: seconds before trying again to record a finished job's outcome the store refused (a
#: full disk, say), doubling up to the second
_RECORD_RETRY_FIRST: Final = 0.25
_RECORD_RETRY_MAX: Final = 5.0


@define(frozen=True, kw_only=True)
class SubmitResult:
    """What :meth:`JobManager.submit` did: ``created`` is False for an idempotent replay."""

    job: JobRecord
    created: bool
    #: with ``follow``: the job's event stream, from its state when it was stored
    stream: EventStream | None = None


def _status_event(job_id: str, status: JobStatus, progress: int) -> dict[str, Any]:
    return {
        "type": "job_status_event",
        "job_id": job_id,
        "status": status.value,
        "progress": progress,
        "timestamp": rfc3339(utc_now()),
    }


def _result_event(record: JobRecord) -> dict[str, Any]:
    return {
        "type": "job_result_event",
        "job_id": record.job_id,
        "job": record.to_status_dict(),
        "timestamp": rfc3339(utc_now()),
    }


class EventStream:
    """An async iterator over one job's events for one subscriber.

    Obtain one from :meth:`JobManager.subscribe`; iterate with ``async for``; close
    with :meth:`aclose` (or use ``async with``) if you stop early.
    """

    def __init__(
        self, job_id: str, max_buffered_output_chars: int, on_close: Callable[[EventStream], None]
    ) -> None:
        self.job_id = job_id
        self._max_output = max_buffered_output_chars
        self._on_close = on_close
        self._events: deque[dict[str, Any]] = deque()
        self._buffered_output = 0
        self._wakeup = asyncio.Event()
        self._sealed = False  # no more events will be pushed
        self._finished = False  # the result event was yielded
        self._closed = False
        self._last_status: str | None = None
        self._last_progress = -1
        #: Output chunks (and their characters) dropped because this subscriber lagged.
        self.dropped_output_chunks = 0
        self.dropped_output_chars = 0

    # -- producer side (the manager) --------------------------------------------------

    def _push(self, event: dict[str, Any]) -> None:
        if self._sealed:
            return
        kind = event["type"]
        if kind == "job_output_event":
            size = len(event["data"])
            if self._buffered_output and self._buffered_output + size > self._max_output:
                self.dropped_output_chunks += 1
                self.dropped_output_chars += size
                return
            self._buffered_output += size
        self._events.append(event)
        if kind == "job_result_event":
            self._sealed = True
        self._wakeup.set()

    def _push_snapshot(
        self, record: JobRecord, progress: int, history: list[dict[str, Any]]
    ) -> None:
        """Put the current state in front of anything already buffered.

        ``history`` is every output event the job has published so far (for a finished
        job: its output rebuilt from the result), so a subscriber that connects late
        still gets the whole output. Output events buffered since this stream was
        registered are in ``history`` too, so they are replaced, not repeated.
        """
        others = [e for e in self._events if e["type"] != "job_output_event"]
        self._events.clear()
        self._buffered_output = 0
        self._events.append(_status_event(record.job_id, record.status, progress))
        for event in history:
            self._buffered_output += len(event["data"])
            self._events.append(event)
        if record.is_terminal:
            self._events.append(_result_event(record))
            self._sealed = True
        else:
            self._events.extend(others)
        self._wakeup.set()

    def _seal(self) -> None:
        """No more events: iteration ends once the buffer is drained."""
        self._sealed = True
        self._wakeup.set()

    # -- consumer side ------------------------------------------------------------------

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        while True:
            if self._finished or self._closed:
                await self.aclose()
                raise StopAsyncIteration
            if self._events:
                event = self._events.popleft()
                kind = event["type"]
                if kind == "job_output_event":
                    self._buffered_output -= len(event["data"])
                    return event
                if kind == "job_progress_event":
                    if event["progress"] <= self._last_progress:
                        continue
                    self._last_progress = event["progress"]
                    return event
                if kind == "job_status_event":
                    if event["status"] == self._last_status:
                        if event["progress"] > self._last_progress:
                            self._last_progress = event["progress"]
                            return {
                                "type": "job_progress_event",
                                "job_id": self.job_id,
                                "progress": event["progress"],
                                "timestamp": event["timestamp"],
                            }
                        continue
                    self._last_status = event["status"]
                    self._last_progress = event["progress"]
                    return event
                # job_result_event: always delivered, and it is the last one.
                self._finished = True
                return event
            if self._sealed:
                await self.aclose()
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()

    async def aclose(self) -> None:
        """Stop receiving events and unregister. Idempotent."""
        if not self._closed:
            self._closed = True
            self._sealed = True
            self._events.clear()
            self._on_close(self)

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class _Live:
    """In-memory state of one running job."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        self.progress = 0
        self.persisted_progress = 0
        self.explicit_progress = False
        self.task: asyncio.Task[dict[str, Any]] | None = None
        self.ticker: asyncio.Task[None] | None = None
        self.flush_task: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self.shutdown = False
        self.finished = False
        self.filters: dict[str, ProgressLineFilter] = {}
        self.started_monotonic = time.monotonic()
        #: output published so far, replayed to late subscribers (bounded)
        self.output_log: list[dict[str, Any]] = []
        self.output_log_chars = 0


class JobContext:
    """Handed to a runner: reports progress and output of the job it runs."""

    def __init__(self, manager: JobManager, live: _Live) -> None:
        self._manager = manager
        self._live = live

    @property
    def job(self) -> JobRecord:
        """The job being run (as claimed: status RUNNING)."""
        return self._live.record

    @property
    def job_id(self) -> str:
        """The id of the job being run."""
        return self._live.record.job_id

    def progress(self, value: int) -> None:
        """Report progress in percent (clamped to 0..100; lower values than before are ignored)."""
        self._live.explicit_progress = True
        self._manager._set_progress(self._live, value)

    def output(self, stream: str, text: str, *, parse_progress: bool = False) -> None:
        """Publish an output chunk of ``stream`` (``"stdout"`` or ``"stderr"``).

        With ``parse_progress`` (meant for program output), stdout goes through the
        progress-line convention: ``##deepexec-progress N`` lines set the progress and
        are removed. Call :meth:`flush_output` when the program ends.
        """
        if stream not in _STREAMS:
            raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")
        if parse_progress and stream == "stdout":
            line_filter = self._live.filters.setdefault(stream, ProgressLineFilter())
            text, values = line_filter.feed(text)
            for value in values:
                self.progress(value)
        if text:
            self._manager._publish_output(self._live, stream, text)

    def flush_output(self) -> None:
        """Release output held back by progress parsing (call once the program has ended)."""
        for stream, line_filter in self._live.filters.items():
            text, values = line_filter.flush()
            for value in values:
                self.progress(value)
            if text:
                self._manager._publish_output(self._live, stream, text)


class JobManager:
    """Runs jobs from a :class:`JobStore` with a bounded pool of async workers."""

    def __init__(
        self,
        store: JobStore,
        runners: dict[str, Runner],
        *,
        concurrency: int | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        max_active_per_owner: int | None = None,
        retention: timedelta | None = timedelta(days=7),
        purge_interval: float = 3600.0,
        timeout_grace: float = 5.0,
        progress_tick: float = 1.0,
        max_buffered_output_chars: int = DEFAULT_MAX_BUFFERED_OUTPUT_CHARS,
    ) -> None:
        """Configure the manager; nothing runs until :meth:`start`.

        ``concurrency`` defaults to the number of CPUs. ``max_active_per_owner``
        bounds each owner's unfinished jobs (None: unbounded). Finished jobs older
        than ``retention`` are purged every ``purge_interval`` seconds (None: kept).
        """
        if not runners:
            raise ValueError("at least one runner is required")
        self._store = store
        self._runners = dict(runners)
        self._concurrency = max(1, concurrency if concurrency is not None else os.cpu_count() or 1)
        self._max_attempts = max_attempts
        self._max_active_per_owner = max_active_per_owner
        self._retention = retention
        self._purge_interval = purge_interval
        self._timeout_grace = timeout_grace
        self._progress_tick = progress_tick
        self._max_buffered_output = max_buffered_output_chars
        self._wakeup = asyncio.Event()
        self._idle_workers = 0
        #: jobs started by submit(), waiting for the idle worker they were meant for
        self._handed_off: deque[_Live] = deque()
        self._workers: list[asyncio.Task[None]] = []
        self._background: list[asyncio.Task[None]] = []
        self._running: dict[str, _Live] = {}
        self._subscribers: dict[str, set[EventStream]] = {}
        self._started = False
        self._stopping = False

    @property
    def store(self) -> JobStore:
        """The underlying store."""
        return self._store

    @property
    def concurrency(self) -> int:
        """Number of jobs run at once."""
        return self._concurrency

    @property
    def job_types(self) -> frozenset[str]:
        """The job types this manager has runners for."""
        return frozenset(self._runners)

    @property
    def running_count(self) -> int:
        """Number of jobs running now."""
        return len(self._running)

    # -- lifecycle ----------------------------------------------------------------------

    async def start(self, *, recover: bool = True) -> RecoveryReport | None:
        """Recover the queue after an unclean stop (unless ``recover=False``), start workers."""
        if self._started:
            raise RuntimeError("the job manager was already started")
        self._started = True
        report = None
        if recover:
            report = await self._store.recover_on_start(max_attempts=self._max_attempts)
            if report.requeued or report.failed:
                logger.warning(
                    "recovered after an unclean stop: %d job(s) re-queued, %d failed",
                    len(report.requeued),
                    len(report.failed),
                )
        for n in range(self._concurrency):
            self._workers.append(asyncio.create_task(self._worker(), name=f"job-worker-{n}"))
        if self._retention is not None:
            self._background.append(asyncio.create_task(self._purge_loop(), name="job-purge"))
        return report

    async def stop(self, grace: float = 10.0, *, cancel_timeout: float = 10.0) -> None:
        """Graceful shutdown; see the module docstring. Does not close the store."""
        if self._stopping:
            return
        self._stopping = True
        self._wakeup.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=max(0.0, grace))
            if pending:
                for live in list(self._running.values()):
                    live.shutdown = True
                    if live.task is not None:
                        live.task.cancel()
                _, stuck = await asyncio.wait(self._workers, timeout=cancel_timeout)
                if stuck:
                    logger.error(
                        "%d job runner(s) ignored cancellation; their jobs stay RUNNING "
                        "and are recovered on the next start",
                        len(stuck),
                    )
                    for task in stuck:
                        task.cancel()
        if self._handed_off:  # only when workers were stuck: the next start recovers them
            logger.error("%d started job(s) were left without a worker", len(self._handed_off))
            for live in self._handed_off:
                assert live.task is not None
                live.task.cancel()
            self._handed_off.clear()
        for streams in list(self._subscribers.values()):
            for stream in list(streams):
                stream._seal()
        self._subscribers.clear()

    # -- client operations ------------------------------------------------------------

    async def submit(
        self,
        owner: str | None,
        *,
        name: str,
        job_type: str,
        data: dict[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 - the job's timeout, not this call's
        priority: int = 0,
        tags: Iterable[str] = (),
        session_id: str | None = None,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
        follow: bool = False,
    ) -> SubmitResult:
        """Queue a job (durably) and wake a worker.

        With ``follow``, the result carries an event stream of the job (as
        :meth:`subscribe` opens), registered before the job can change: no store read.

        Raises :class:`UnknownJobType`, :class:`IdempotencyConflict`,
        :class:`TooManyActiveJobs` (see :meth:`JobStore.insert`).
        """
        if job_type not in self._runners:
            raise UnknownJobType(job_type, set(self._runners))
        new = NewJob(
            owner=owner,
            name=name,
            job_type=job_type,
            data=data,
            timeout=timeout,
            priority=priority,
            tags=tuple(tags),
            session_id=session_id,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
        record, created = await self._store.insert(
            new,
            max_active_per_owner=self._max_active_per_owner,
            start=not self._stopping and self._idle_workers > len(self._handed_off),
        )
        if not created:
            stream = await self.subscribe(record.job_id, owner) if follow else None
            return SubmitResult(job=self._overlay(record), created=False, stream=stream)
        started = record.status is JobStatus.RUNNING
        if started:
            live = self._begin(record)
            assert live is not None  # job_type was checked above
            self._handed_off.append(live)
        self._wakeup.set()
        stream = None
        if follow:  # no await since the insert: nothing happened to the job meanwhile
            stream = self._register(record.job_id, self._max_buffered_output)
            stream._push_snapshot(record, 0, [])
        if started:
            # let the runner take its first steps (start the program) before the
            # caller goes on answering the request
            await asyncio.sleep(0)
        return SubmitResult(job=self._overlay(record), created=True, stream=stream)

    async def get(self, job_id: str, owner: str | None) -> JobRecord | None:
        """The job's current state (``None`` if not found for this owner)."""
        record = await self._store.get(job_id, owner)
        return self._overlay(record) if record is not None else None

    async def list(
        self,
        owner: str | None,
        *,
        status: JobStatus | str | None = None,
        tag: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """A page of the owner's jobs, newest first (see :meth:`JobStore.list`)."""
        page = await self._store.list(owner, status=status, tag=tag, limit=limit, cursor=cursor)
        return JobPage(jobs=[self._overlay(r) for r in page.jobs], next_cursor=page.next_cursor)

    async def cancel(self, job_id: str, owner: str | None, reason: str | None = None) -> JobRecord:
        """Cancel a PENDING or RUNNING job; return its CANCELED record.

        Raises :class:`JobNotFound` or :class:`JobAlreadyFinished`.
        """
        record = await self._store.cancel(job_id, owner, reason)
        live = self._running.get(job_id)
        if live is not None:
            live.cancel_requested = True
            live.finished = True
            if live.task is not None:
                live.task.cancel()
        self._publish_terminal(record)
        return record

    async def cancel_session_jobs(
        self, session_id: str, owner: str | None, reason: str
    ) -> builtins.list[str]:
        """Cancel every PENDING or RUNNING job of ``owner`` in session ``session_id`` (it
        is being closed); return their ids."""
        canceled = []
        for job_id in await self._store.unfinished_in_session(session_id, owner):
            try:
                await self.cancel(job_id, owner, reason)
            except (JobNotFound, JobAlreadyFinished):
                continue  # it ended meanwhile
            canceled.append(job_id)
        return canceled

    async def subscribe(
        self, job_id: str, owner: str | None, *, max_buffered_output_chars: int | None = None
    ) -> EventStream:
        """Open an event stream for a job; raises :class:`JobNotFound` up front."""
        stream = self._register(
            job_id,
            max_buffered_output_chars
            if max_buffered_output_chars is not None
            else self._max_buffered_output,
        )
        try:
            # Read the state only after registering: whatever changes from here on is
            # also delivered to the stream, so nothing falls between snapshot and events.
            record = await self._store.get(job_id, owner)
        except BaseException:
            await stream.aclose()
            raise
        if record is None:  # no such job for this owner
            await stream.aclose()
            raise JobNotFound(job_id)
        record = self._overlay(record)
        stream._push_snapshot(record, record.progress, self._history(record))
        if record.is_terminal:
            self._unsubscribe(stream)  # nothing more will come
        return stream

    # -- internals: events --------------------------------------------------------------

    def _register(self, job_id: str, max_buffered_output_chars: int) -> EventStream:
        """A new event stream of ``job_id``, receiving whatever is published from now on
        (sealed at once while the manager stops)."""
        stream = EventStream(job_id, max_buffered_output_chars, self._unsubscribe)
        if self._stopping:
            stream._seal()
        else:
            self._subscribers.setdefault(job_id, set()).add(stream)
        return stream

    def _unsubscribe(self, stream: EventStream) -> None:
        streams = self._subscribers.get(stream.job_id)
        if streams is not None:
            streams.discard(stream)
            if not streams:
                del self._subscribers[stream.job_id]

    def _publish(self, job_id: str, event: dict[str, Any]) -> None:
        for stream in list(self._subscribers.get(job_id, ())):
            stream._push(event)

    def _publish_output(self, live: _Live, stream: str, text: str) -> None:
        if live.finished:
            return
        event = {
            "type": "job_output_event",
            "job_id": live.record.job_id,
            "stream": stream,
            "data": text,
            "timestamp": rfc3339(utc_now()),
        }
        if live.output_log_chars + len(text) <= self._max_buffered_output:
            live.output_log.append(event)
            live.output_log_chars += len(text)
        self._publish(live.record.job_id, event)

    def _history(self, record: JobRecord) -> builtins.list[dict[str, Any]]:
        """The output a new subscriber has missed (see :meth:`EventStream._push_snapshot`)."""
        live = self._running.get(record.job_id)
        if not record.is_terminal:
            return list(live.output_log) if live is not None else []
        result = record.result or {}
        if record.job_type == "text_generation":
            chunks = [("stdout", result.get("text"))]
        else:
            chunks = [("stdout", result.get("stdout")), ("stderr", result.get("stderr"))]
        stamp = rfc3339(record.finished_at or utc_now())
        return [
            {
                "type": "job_output_event",
                "job_id": record.job_id,
                "stream": stream,
                "data": text,
                "timestamp": stamp,
            }
            for stream, text in chunks
            if isinstance(text, str) and text
        ]

    def _publish_terminal(self, record: JobRecord) -> None:
        self._publish(record.job_id, _status_event(record.job_id, record.status, record.progress))
        self._publish(record.job_id, _result_event(record))
        self._subscribers.pop(record.job_id, None)

    def _overlay(self, record: JobRecord) -> JobRecord:
        """Use the in-memory progress of a running job (the stored one may lag)."""
        live = self._running.get(record.job_id)
        if record.status is JobStatus.RUNNING and live is not None:
            if live.progress > record.progress:
                return evolve(record, progress=live.progress)
        return record

    # -- internals: progress ------------------------------------------------------------

    def _set_progress(self, live: _Live, value: int) -> None:
        value = max(0, min(100, int(value)))
        if live.finished or value <= live.progress:
            return
        live.progress = value
        job_id = live.record.job_id
        self._publish(
            job_id,
            {
                "type": "job_progress_event",
                "job_id": job_id,
                "progress": value,
                "timestamp": rfc3339(utc_now()),
            },
        )
        if live.flush_task is None or live.flush_task.done():
            live.flush_task = asyncio.create_task(self._flush_progress(live))

    async def _flush_progress(self, live: _Live) -> None:
        """Persist the latest progress, coalescing bursts into few writes."""
        while live.persisted_progress != live.progress and not live.finished:
            value = live.progress
            try:
                await self._store.set_progress(live.record.job_id, value)
            except Exception:  # the store is closing; progress is best effort
                logger.debug("could not persist progress of %s", live.record.job_id)
                return
            live.persisted_progress = value

    async def _time_progress(self, live: _Live, job_timeout: float) -> None:
        """Estimate progress from elapsed time until the runner reports its own."""
        while not live.explicit_progress and not live.finished:
            await asyncio.sleep(self._progress_tick)
            if live.explicit_progress or live.finished:
                return
            elapsed = time.monotonic() - live.started_monotonic
            self._set_progress(live, min(99, int(elapsed / job_timeout * 100)))

    # -- internals: workers -------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            if self._handed_off:
                live = self._handed_off.popleft()
                try:
                    await self._finish(live)
                except Exception:
                    logger.exception(
                        "job %s: unexpected error in the job manager", live.record.job_id
                    )
                continue
            if self._stopping:
                return
            self._wakeup.clear()
            try:
                claimed = await self._store.claim_next()
            except Exception:
                logger.exception("could not claim a job; retrying in 1 s")
                await asyncio.sleep(1.0)
                continue
            if claimed is None:
                self._idle_workers += 1
                try:
                    await self._wakeup.wait()
                finally:
                    self._idle_workers -= 1
                continue
            try:
                started = self._begin(claimed)
                if started is None:
                    await self._fail_unrunnable(claimed)
                else:
                    await self._finish(started)
            except Exception:
                logger.exception("job %s: unexpected error in the job manager", claimed.job_id)

    async def _invoke(self, runner: Runner, record: JobRecord, ctx: JobContext) -> dict[str, Any]:
        if record.timeout is None:
            return await runner(record, ctx)
        async with asyncio.timeout(record.timeout + self._timeout_grace):
            return await runner(record, ctx)

    async def _fail_unrunnable(self, record: JobRecord) -> None:
        failed = await self._store.fail(
            record.job_id,
            JobError(
                code="internal_error",
                message=f"this server cannot run jobs of type {record.job_type!r}",
            ),
        )
        if failed is not None:
            self._publish_terminal(failed)

    def _begin(self, record: JobRecord) -> _Live | None:
        """Start the runner task of a RUNNING job (None: no runner for its type)."""
        runner = self._runners.get(record.job_type)
        if runner is None:
            return None
        job_id = record.job_id
        live = _Live(record)
        self._running[job_id] = live
        self._publish(job_id, _status_event(job_id, JobStatus.RUNNING, 0))
        ctx = JobContext(self, live)
        if record.timeout is not None and record.timeout > 0:
            live.ticker = asyncio.create_task(self._time_progress(live, record.timeout))
        live.task = asyncio.create_task(self._invoke(runner, record, ctx), name=f"job-{job_id}")
        return live

    async def _finish(self, live: _Live) -> None:
        """Wait for a started job's runner, record and publish its outcome, clean up."""
        task, ticker, job_id = live.task, live.ticker, live.record.job_id
        assert task is not None
        try:
            await asyncio.wait({task})
            final = await self._settle_durably(live, task)
            live.finished = True
            if final is not None:
                self._publish_terminal(final)  # before the clean-up below: it can wait
        finally:
            live.finished = True
            if ticker is not None:
                ticker.cancel()
                await asyncio.gather(ticker, return_exceptions=True)
            if live.flush_task is not None:
                await asyncio.gather(live.flush_task, return_exceptions=True)
            self._running.pop(job_id, None)

    async def _settle_durably(
        self, live: _Live, task: asyncio.Task[dict[str, Any]]
    ) -> JobRecord | None:
        """:meth:`_settle`, tried again until the store takes the outcome (a full disk, an
        I/O error): until then the job stays RUNNING, and its waiters wait, rather than
        the outcome being lost or shown before it is durable. Given up only when the
        manager stops (the job is then re-queued at the next start)."""
        delay = _RECORD_RETRY_FIRST
        while True:
            try:
                return await self._settle(live, task)
            except sqlite3.Error as exc:
                if self._stopping:
                    raise
                logger.error(
                    "job %s: could not record how it ended (%s); trying again in %g s",
                    live.record.job_id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RECORD_RETRY_MAX)

    async def _settle(self, live: _Live, task: asyncio.Task[dict[str, Any]]) -> JobRecord | None:
        """Record the outcome of a finished runner task; return the terminal record."""
        job_id = live.record.job_id
        if task.cancelled():
            if live.cancel_requested:
                return None  # cancel() already recorded and published CANCELED
            if live.shutdown:
                live.finished = True
                requeued = await self._store.requeue(job_id)
                if requeued is not None:
                    self._publish(job_id, _status_event(job_id, JobStatus.PENDING, 0))
                return None
            error = JobError(code="internal_error", message="the job runner was cancelled")
            return await self._store.fail(job_id, error)
        exc = task.exception()
        live.finished = True
        if exc is None:
            result = task.result()
            if not isinstance(result, dict):
                error = JobError(
                    code="internal_error",
                    message=f"the job runner returned {type(result).__name__}, not a dict",
                )
                return await self._store.fail(job_id, error)
            return await self._store.complete(job_id, result, running=live.record)
        if isinstance(exc, JobFailure):
            return await self._store.fail(job_id, exc.to_error(), result=exc.result)
        if isinstance(exc, TimeoutError) and live.record.timeout is not None:
            error = JobError(
                code=TIMEOUT_ERROR_CODE,
                message=f"the job exceeded its timeout of {live.record.timeout:g} s",
                details={"timeout": live.record.timeout},
            )
            return await self._store.fail(job_id, error)
        logger.error("job %s: runner crashed", job_id, exc_info=exc)
        error = JobError(
            code="internal_error",
            message=f"the job runner failed unexpectedly ({type(exc).__name__})",
        )
        return await self._store.fail(job_id, error)

    async def _purge_loop(self) -> None:
        assert self._retention is not None
        while True:
            try:
                purged = await self._store.purge(self._retention)
                if purged:
                    logger.info("purged %d finished job(s) past retention", purged)
            except Exception:
                logger.exception("purging old jobs failed")
            await asyncio.sleep(self._purge_interval)
