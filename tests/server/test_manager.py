"""The job manager: scheduling, cancellation, events, shutdown. Real store, real tasks."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from deepexec_server.jobs import (
    EventStream,
    IdempotencyConflict,
    JobAlreadyFinished,
    JobContext,
    JobFailure,
    JobManager,
    JobNotFound,
    JobRecord,
    JobStatus,
    JobStore,
    NewJob,
    TooManyActiveJobs,
    UnknownJobType,
)
from deepexec_server.jobs import manager as manager_module

OWNER = "alice"


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


class Harness:
    """A runner whose behaviour each job chooses through its data."""

    def __init__(self) -> None:
        self.gates: dict[str, asyncio.Event] = {}
        self.started: list[str] = []
        self.cancelled: dict[str, float] = {}
        self.running = 0
        self.max_running = 0

    def gate(self, name: str) -> asyncio.Event:
        return self.gates.setdefault(name, asyncio.Event())

    async def run(self, job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        self.started.append(job.name)
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        data = job.data
        try:
            for step in data.get("steps", []):
                kind = step[0]
                if kind == "out":
                    ctx.output(step[1], step[2])
                elif kind == "prog_out":
                    ctx.output("stdout", step[1], parse_progress=True)
                elif kind == "flush":
                    ctx.flush_output()
                elif kind == "progress":
                    ctx.progress(step[1])
                elif kind == "gate":
                    await self.gate(step[1]).wait()
                elif kind == "sleep":
                    await asyncio.sleep(step[1])
                elif kind == "flood":
                    for i in range(step[1]):
                        ctx.output("stdout", "x" * 100)
                        ctx.progress(i * 100 // step[1])
                elif kind == "forever":
                    await asyncio.Event().wait()
                elif kind == "fail":
                    raise JobFailure(step[1], "the program failed", {"k": 1}, result={"part": 1})
                elif kind == "crash":
                    raise RuntimeError("secret internal detail")
                elif kind == "return":
                    return step[1]  # type: ignore[no-any-return]
            return {"name": job.name}
        except asyncio.CancelledError:
            self.cancelled[job.name] = time.monotonic()
            raise
        finally:
            self.running -= 1


@pytest_asyncio.fixture
async def harness() -> Harness:
    return Harness()


@pytest_asyncio.fixture
async def make_manager(
    store: JobStore, harness: Harness
) -> AsyncIterator[Callable[..., JobManager]]:
    managers: list[JobManager] = []

    def make(**kwargs: Any) -> JobManager:
        kwargs.setdefault("concurrency", 1)
        manager = JobManager(store, {"code_execution": harness.run}, **kwargs)
        managers.append(manager)
        return manager

    yield make
    for manager in managers:
        await manager.stop(grace=0)


async def submit(manager: JobManager, name: str, *steps: Any, **kwargs: Any) -> JobRecord:
    result = await manager.submit(
        OWNER, name=name, job_type="code_execution", data={"steps": list(steps)}, **kwargs
    )
    return result.job


async def finished(manager: JobManager, job_id: str, timeout: float = 5.0) -> JobRecord:
    deadline = time.monotonic() + timeout
    while True:
        record = await manager.get(job_id, OWNER)
        assert record is not None
        if record.is_terminal:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"job still {record.status}")
        await asyncio.sleep(0.01)


async def collect(stream: EventStream) -> list[dict[str, Any]]:
    return [event async for event in stream]


async def test_jobs_run_by_priority_then_age(make_manager: Any, harness: Harness) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    blocker = await submit(manager, "blocker", ("gate", "b"))
    await wait_for(lambda: harness.started == ["blocker"])
    jobs = [
        await submit(manager, "low", priority=0),
        await submit(manager, "high", priority=10),
        await submit(manager, "mid", priority=5),
        await submit(manager, "high2", priority=10),
    ]
    harness.gate("b").set()
    for record in [blocker, *jobs]:
        assert (await finished(manager, record.job_id)).status is JobStatus.COMPLETED
    assert harness.started == ["blocker", "high", "high2", "mid", "low"]


async def test_concurrency_is_bounded(make_manager: Any, harness: Harness) -> None:
    manager = make_manager(concurrency=2)
    await manager.start()
    jobs = [await submit(manager, f"j{i}", ("gate", "all")) for i in range(5)]
    await wait_for(lambda: len(harness.started) == 2)
    await asyncio.sleep(0.05)
    assert harness.running == 2 and manager.running_count == 2
    harness.gate("all").set()
    for record in jobs:
        done = await finished(manager, record.job_id)
        assert done.status is JobStatus.COMPLETED and done.result == {"name": record.name}
    assert harness.max_running == 2


async def test_cancel_running_job_interrupts_the_runner_at_once(
    make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    record = await submit(manager, "forever", ("forever",))
    await wait_for(lambda: "forever" in harness.started)
    stream = await manager.subscribe(record.job_id, OWNER)
    asked = time.monotonic()
    canceled = await manager.cancel(record.job_id, OWNER, "user asked")
    assert canceled.status is JobStatus.CANCELED
    assert canceled.cancel_reason == "user asked" and canceled.canceled_at is not None
    await wait_for(lambda: "forever" in harness.cancelled, timeout=1.0)
    assert harness.cancelled["forever"] - asked < 0.5

    events = await asyncio.wait_for(collect(stream), 2)
    assert [e["type"] for e in events] == [
        "job_status_event",
        "job_status_event",
        "job_result_event",
    ]
    assert events[1]["status"] == "CANCELED"
    assert events[2]["job"]["error"]["code"] == "job_canceled"
    assert events[2]["job"]["cancel_reason"] == "user asked"

    stored = await manager.get(record.job_id, OWNER)
    assert stored is not None and stored.status is JobStatus.CANCELED
    with pytest.raises(JobAlreadyFinished):
        await manager.cancel(record.job_id, OWNER, "again")
    with pytest.raises(JobNotFound):
        await manager.cancel(record.job_id, "mallory", "not mine")
    # The worker slot is free again.
    after = await submit(manager, "after")
    assert (await finished(manager, after.job_id)).status is JobStatus.COMPLETED


async def test_cancel_pending_job_means_it_never_runs(make_manager: Any, harness: Harness) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    await submit(manager, "blocker", ("gate", "b"))
    await wait_for(lambda: harness.started == ["blocker"])
    queued = await submit(manager, "queued")
    canceled = await manager.cancel(queued.job_id, OWNER, None)
    assert canceled.status is JobStatus.CANCELED and canceled.started_at is None
    harness.gate("b").set()
    last = await submit(manager, "last")
    await finished(manager, last.job_id)
    assert harness.started == ["blocker", "last"]


async def test_events_arrive_in_order_from_pending_to_result(
    make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    await submit(manager, "blocker", ("gate", "b"))
    await wait_for(lambda: harness.started == ["blocker"])
    record = await submit(
        manager,
        "target",
        ("out", "stdout", "hello\n"),
        ("progress", 50),
        ("out", "stderr", "warn\n"),
        ("progress", 30),  # lower than before: ignored
        ("progress", 80),
    )
    stream = await manager.subscribe(record.job_id, OWNER)
    collector = asyncio.create_task(collect(stream))
    await asyncio.sleep(0.02)
    harness.gate("b").set()
    events = await asyncio.wait_for(collector, 5)

    summary = [
        (e["type"], e.get("status") or e.get("progress") or e.get("data") or e.get("stream"))
        for e in events
    ]
    assert summary == [
        ("job_status_event", "PENDING"),
        ("job_status_event", "RUNNING"),
        ("job_output_event", "hello\n"),
        ("job_progress_event", 50),
        ("job_output_event", "warn\n"),
        ("job_progress_event", 80),
        ("job_status_event", "COMPLETED"),
        ("job_result_event", None),
    ]
    assert events[4]["stream"] == "stderr"
    assert all(e["job_id"] == record.job_id and "timestamp" in e for e in events)
    result = events[-1]["job"]
    assert result["status"] == "COMPLETED" and result["progress"] == 100
    assert result["result"] == {"name": "target"}


async def test_late_subscriber_gets_current_state_first(
    make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    record = await submit(manager, "midway", ("progress", 40), ("gate", "g"))
    await wait_for(lambda: "midway" in harness.started)
    await asyncio.sleep(0.02)
    stream = await manager.subscribe(record.job_id, OWNER)
    first = await asyncio.wait_for(stream.__anext__(), 1)
    assert first["type"] == "job_status_event"
    assert (first["status"], first["progress"]) == ("RUNNING", 40)
    harness.gate("g").set()
    rest = await asyncio.wait_for(collect(stream), 5)
    assert [e["type"] for e in rest] == ["job_status_event", "job_result_event"]
    assert rest[0]["status"] == "COMPLETED"

    # After the end: the final state and result, then the stream ends.
    late = await asyncio.wait_for(collect(await manager.subscribe(record.job_id, OWNER)), 1)
    assert [(e["type"], e.get("status")) for e in late] == [
        ("job_status_event", "COMPLETED"),
        ("job_result_event", None),
    ]
    with pytest.raises(JobNotFound):
        await manager.subscribe(record.job_id, "mallory")


async def test_late_subscriber_gets_the_output_so_far_then_live_output(
    make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    record = await submit(
        manager,
        "chatty",
        ("out", "stdout", "one\n"),
        ("out", "stderr", "oops\n"),
        ("gate", "g"),
        ("out", "stdout", "two\n"),
    )
    await wait_for(lambda: "chatty" in harness.started)
    await asyncio.sleep(0.02)
    stream = await manager.subscribe(record.job_id, OWNER)
    head = [await asyncio.wait_for(stream.__anext__(), 1) for _ in range(3)]
    assert [(e["type"], e.get("stream"), e.get("data")) for e in head] == [
        ("job_status_event", None, None),
        ("job_output_event", "stdout", "one\n"),
        ("job_output_event", "stderr", "oops\n"),
    ]
    harness.gate("g").set()
    rest = await asyncio.wait_for(collect(stream), 5)
    outputs = [e["data"] for e in rest if e["type"] == "job_output_event"]
    assert outputs == ["two\n"]  # live output, nothing repeated
    assert rest[-1]["type"] == "job_result_event"


async def test_slow_subscriber_loses_output_but_never_status_or_result(
    make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    await submit(manager, "blocker", ("gate", "b"))
    await wait_for(lambda: harness.started == ["blocker"])
    record = await submit(manager, "flood", ("flood", 2000))
    slow = await manager.subscribe(record.job_id, OWNER, max_buffered_output_chars=5000)
    fast = await manager.subscribe(record.job_id, OWNER)
    fast_events = asyncio.create_task(collect(fast))
    harness.gate("b").set()
    # The job finishes although the slow subscriber reads nothing.
    done = await finished(manager, record.job_id)
    assert done.status is JobStatus.COMPLETED

    events = await asyncio.wait_for(collect(slow), 2)
    outputs = [e for e in events if e["type"] == "job_output_event"]
    assert len(outputs) == 50
    assert slow.dropped_output_chunks == 1950
    assert slow.dropped_output_chars == 195_000
    statuses = [e["status"] for e in events if e["type"] == "job_status_event"]
    assert statuses == ["PENDING", "RUNNING", "COMPLETED"]
    assert events[-1]["type"] == "job_result_event"
    progress = [e["progress"] for e in events if e["type"] == "job_progress_event"]
    assert progress == sorted(set(progress)) and progress[-1] == 99

    fast_list = await asyncio.wait_for(fast_events, 2)
    assert sum(e["type"] == "job_output_event" for e in fast_list) == 2000
    assert fast.dropped_output_chunks == 0


async def test_progress_lines_become_progress_events(make_manager: Any, harness: Harness) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    await submit(manager, "blocker", ("gate", "b"))
    await wait_for(lambda: harness.started == ["blocker"])
    record = await submit(
        manager,
        "progress-lines",
        ("prog_out", "start\n##deepexec-pro"),
        ("prog_out", "gress 30\nmiddle\n##deepexec-progress 60\n"),
        ("prog_out", "tail-without-newline"),
        ("prog_out", "\n##deepexec-progress 9"),
        ("flush",),
    )
    stream = await manager.subscribe(record.job_id, OWNER)
    collector = asyncio.create_task(collect(stream))
    harness.gate("b").set()
    events = await asyncio.wait_for(collector, 5)
    text = "".join(e["data"] for e in events if e["type"] == "job_output_event")
    assert text == "start\nmiddle\ntail-without-newline\n"
    assert [e["progress"] for e in events if e["type"] == "job_progress_event"] == [30, 60]


async def test_time_based_progress_without_explicit_reports(
    make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1, progress_tick=0.05)
    await manager.start()
    record = await submit(manager, "sleepy", ("sleep", 0.4), timeout=1.0)
    stream = await manager.subscribe(record.job_id, OWNER)
    events = await asyncio.wait_for(collect(stream), 5)
    progress = [e["progress"] for e in events if e["type"] == "job_progress_event"]
    assert len(progress) >= 3
    assert progress == sorted(progress)
    assert 0 < progress[-1] < 100


async def test_runner_failures_map_to_failed_jobs(make_manager: Any, harness: Harness) -> None:
    manager = make_manager(concurrency=2, timeout_grace=0.05)
    await manager.start()
    failing = await submit(manager, "failing", ("fail", "execution_timeout"))
    crashing = await submit(manager, "crashing", ("crash",))
    bad = await submit(manager, "bad", ("return", ["not", "a", "dict"]))
    slow = await submit(manager, "slow", ("forever",), timeout=0.1)

    failed = await finished(manager, failing.job_id)
    assert failed.status is JobStatus.FAILED and failed.error is not None
    assert (failed.error.code, failed.error.details) == ("execution_timeout", {"k": 1})
    assert failed.result == {"part": 1}

    crashed = await finished(manager, crashing.job_id)
    assert crashed.error is not None and crashed.error.code == "internal_error"
    assert "secret internal detail" not in crashed.error.message

    wrong = await finished(manager, bad.job_id)
    assert wrong.error is not None and wrong.error.code == "internal_error"

    timed_out = await finished(manager, slow.job_id)
    assert timed_out.error is not None and timed_out.error.code == "execution_timeout"
    assert "slow" in harness.cancelled


async def test_graceful_stop_requeues_unfinished_jobs(
    store: JobStore, make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=2)
    await manager.start()
    short = await submit(manager, "short", ("gate", "s"))
    long = await submit(manager, "long", ("forever",))
    await wait_for(lambda: sorted(harness.started) == ["long", "short"])
    stream = await manager.subscribe(long.job_id, OWNER)

    async def release_short() -> None:
        await asyncio.sleep(0.05)
        harness.gate("s").set()

    releaser = asyncio.create_task(release_short())
    started = time.monotonic()
    await manager.stop(grace=0.3)
    await releaser
    assert 0.25 < time.monotonic() - started < 2.0
    assert "long" in harness.cancelled

    done = await store.load(short.job_id)
    assert done is not None and done.status is JobStatus.COMPLETED
    requeued = await store.load(long.job_id)
    assert requeued is not None and requeued.status is JobStatus.PENDING
    assert requeued.started_at is None and requeued.attempts == 0
    # Open streams end (the job is not finished, so there is no result event).
    events = await asyncio.wait_for(collect(stream), 1)
    assert all(e["type"] != "job_result_event" for e in events)

    # The next server run picks the job up again.
    async def finish(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        return {"second": "run"}

    second = JobManager(store, {"code_execution": finish}, concurrency=1)
    await second.start()
    try:
        rerun = await finished(second, long.job_id)
        assert rerun.status is JobStatus.COMPLETED and rerun.result == {"second": "run"}
        assert rerun.attempts == 1
    finally:
        await second.stop(grace=0)


async def test_start_recovers_jobs_of_a_crashed_server(
    store: JobStore, make_manager: Any, harness: Harness
) -> None:
    record, _ = await store.insert(
        NewJob(owner=OWNER, name="orphan", job_type="code_execution", data={})
    )
    await store.claim_next()  # left RUNNING by a "crashed" server
    manager = make_manager(concurrency=1)
    report = await manager.start()
    assert report is not None and report.requeued == [record.job_id]
    assert (await finished(manager, record.job_id)).status is JobStatus.COMPLETED
    assert harness.started == ["orphan"]


async def test_submit_validation_idempotency_and_limits(
    make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1, max_active_per_owner=2)
    await manager.start()
    with pytest.raises(UnknownJobType):
        await manager.submit(OWNER, name="x", job_type="mining", data={})
    first = await manager.submit(
        OWNER,
        name="a",
        job_type="code_execution",
        data={"steps": [["gate", "g"]]},
        idempotency_key="k",
        fingerprint="body-1",
    )
    replay = await manager.submit(
        OWNER,
        name="a",
        job_type="code_execution",
        data={"steps": [["gate", "g"]]},
        idempotency_key="k",
        fingerprint="body-1",
    )
    assert first.created and not replay.created and replay.job.job_id == first.job.job_id
    with pytest.raises(IdempotencyConflict):
        await manager.submit(
            OWNER,
            name="b",
            job_type="code_execution",
            data={},
            idempotency_key="k",
            fingerprint="body-2",
        )
    await submit(manager, "second", ("gate", "g"))
    with pytest.raises(TooManyActiveJobs):
        await submit(manager, "third")
    harness.gate("g").set()
    await finished(manager, first.job.job_id)
    page = await manager.list(OWNER, limit=10)
    assert [r.name for r in page.jobs] == ["second", "a"]


async def test_submit_to_an_idle_worker_starts_the_job_before_returning(
    store: JobStore, make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    await asyncio.sleep(0.01)  # the worker found nothing and sleeps
    record = await submit(manager, "fast", ("gate", "f"))
    # stored RUNNING in the same transaction as the insert, runner already started
    assert record.status is JobStatus.RUNNING and record.attempts == 1
    assert record.started_at == record.created_at
    assert harness.started == ["fast"]
    stored = await store.load(record.job_id)
    assert stored is not None and stored.status is JobStatus.RUNNING
    # the worker is busy with it: the next job waits in the queue
    queued = await submit(manager, "queued")
    assert queued.status is JobStatus.PENDING
    harness.gate("f").set()
    assert (await finished(manager, record.job_id)).result == {"name": "fast"}
    assert (await finished(manager, queued.job_id)).status is JobStatus.COMPLETED
    assert harness.max_running == 1


async def test_submit_with_follow_streams_every_event_from_the_stored_state(
    store: JobStore, make_manager: Any, harness: Harness
) -> None:
    """follow=True: the stream starts from the state the job was stored in (no store read)
    and misses nothing, whether the job started at once or was queued; an idempotent
    replay gets the job's current state."""
    manager = make_manager(concurrency=1)
    await manager.start()
    await asyncio.sleep(0.01)  # the worker is idle: the first job starts at submit
    reads = 0
    load = store.load

    async def counting_load(job_id: str) -> Any:
        nonlocal reads
        reads += 1
        return await load(job_id)

    store.load = counting_load  # type: ignore[method-assign]
    steps = (("gate", "s"), ("out", "stdout", "hi\n"), ("progress", 40))
    started = await manager.submit(
        OWNER, name="now", job_type="code_execution", data={"steps": list(steps)}, follow=True
    )
    later: dict[str, Any] = {
        "name": "later",
        "job_type": "code_execution",
        "data": {"steps": [("out", "stdout", "q\n")]},
        "idempotency_key": "k1",
    }
    queued = await manager.submit(OWNER, **later, follow=True)
    assert reads == 0
    assert started.job.status is JobStatus.RUNNING and queued.job.status is JobStatus.PENDING
    assert started.stream is not None and queued.stream is not None
    collectors = [asyncio.create_task(collect(r.stream)) for r in (started, queued)]  # type: ignore[arg-type]
    harness.gate("s").set()
    first, second = await asyncio.wait_for(asyncio.gather(*collectors), 5)

    def summary(events: list[dict[str, Any]]) -> list[tuple[str, Any]]:
        return [(e["type"], e.get("status") or e.get("progress") or e.get("data")) for e in events]

    assert summary(first) == [
        ("job_status_event", "RUNNING"),
        ("job_output_event", "hi\n"),
        ("job_progress_event", 40),
        ("job_status_event", "COMPLETED"),
        ("job_result_event", None),
    ]
    assert summary(second) == [
        ("job_status_event", "PENDING"),
        ("job_status_event", "RUNNING"),
        ("job_output_event", "q\n"),
        ("job_status_event", "COMPLETED"),
        ("job_result_event", None),
    ]
    replay = await manager.submit(OWNER, **later, follow=True)
    assert not replay.created and replay.job.job_id == queued.job.job_id
    assert replay.stream is not None
    again = await asyncio.wait_for(collect(replay.stream), 5)
    assert summary(again)[0] == ("job_status_event", "COMPLETED")
    assert again[-1]["type"] == "job_result_event"


async def test_submit_does_not_jump_the_queue_when_jobs_are_pending(
    make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=2)
    await manager.start()
    await submit(manager, "blocker", ("gate", "b"))
    await submit(manager, "blocker2", ("gate", "b"))
    await wait_for(lambda: len(harness.started) == 2)
    high = await submit(manager, "high", priority=10)
    low = await submit(manager, "low")
    assert high.status is JobStatus.PENDING and low.status is JobStatus.PENDING
    harness.gate("b").set()
    await finished(manager, low.job_id)
    assert harness.started[2:] == ["high", "low"]
    # once the queue is empty and a worker idles, a new job starts at submit again
    await wait_for(lambda: manager.running_count == 0)
    await asyncio.sleep(0.01)
    assert (await submit(manager, "next")).status is JobStatus.RUNNING


async def test_cancel_and_stop_reach_a_job_started_at_submit(
    store: JobStore, make_manager: Any, harness: Harness
) -> None:
    manager = make_manager(concurrency=1)
    await manager.start()
    await asyncio.sleep(0.01)
    record = await submit(manager, "forever", ("forever",))
    assert record.status is JobStatus.RUNNING
    # canceled before its worker even picked it up
    canceled = await manager.cancel(record.job_id, OWNER, "changed my mind")
    assert canceled.status is JobStatus.CANCELED
    await wait_for(lambda: "forever" in harness.cancelled, timeout=1.0)
    await wait_for(lambda: manager.running_count == 0, timeout=1.0)

    await asyncio.sleep(0.01)
    again = await submit(manager, "again", ("forever",))
    assert again.status is JobStatus.RUNNING
    await manager.stop(grace=0.05)
    requeued = await store.load(again.job_id)
    assert requeued is not None and requeued.status is JobStatus.PENDING
    assert requeued.attempts == 0


async def test_an_outcome_the_store_refuses_is_recorded_when_it_can_write_again(
    make_manager: Any,
    harness: Harness,
    store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A full disk when a job ends: the job stays RUNNING (its waiters see nothing final
    before it is durable) and its outcome is written as soon as the store takes it."""
    monkeypatch.setattr(manager_module, "_RECORD_RETRY_FIRST", 0.01)
    complete = store.complete
    refusals = 3

    async def full_disk(*args: Any, **kwargs: Any) -> JobRecord | None:
        nonlocal refusals
        if refusals:
            refusals -= 1
            raise sqlite3.OperationalError("database or disk is full")
        return await complete(*args, **kwargs)

    monkeypatch.setattr(store, "complete", full_disk)
    manager = make_manager()
    await manager.start()
    record = await submit(manager, "lucky", ("out", "stdout", "hi\n"))
    stream = await manager.subscribe(record.job_id, OWNER)
    events = await asyncio.wait_for(collect(stream), 5)

    assert refusals == 0
    assert [e["type"] for e in events][-2:] == ["job_status_event", "job_result_event"]
    assert events[-1]["job"]["status"] == "COMPLETED"
    stored = await store.get(record.job_id, OWNER)
    assert stored is not None and stored.status is JobStatus.COMPLETED
    assert stored.result == {"name": "lucky"}
    assert caplog.text.count("could not record how it ended (database or disk is full)") == 3
