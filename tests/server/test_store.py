"""The durable job store: real SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import subprocess
import sys
import textwrap
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from deepexec_server.jobs import (
    INTERRUPTED_MESSAGE,
    IdempotencyConflict,
    InvalidCursor,
    JobAlreadyFinished,
    JobError,
    JobNotFound,
    JobStatus,
    JobStore,
    NewJob,
    TooManyActiveJobs,
    request_fingerprint,
)

RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


class Clock:
    """A controllable UTC clock."""

    def __init__(self) -> None:
        self.now = datetime(2026, 11, 26, 13, 40, 0, 123456, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


def job(owner: str | None = "alice", **kwargs: object) -> NewJob:
    fields: dict[str, object] = {
        "owner": owner,
        "name": "analysis",
        "job_type": "code_execution",
        "data": {"code": "print(1)", "language": "python"},
    }
    fields.update(kwargs)
    return NewJob(**fields)  # type: ignore[arg-type]


async def test_insert_get_round_trip_and_status_dict(store: JobStore) -> None:
    record, created = await store.insert(
        job(timeout=30.0, priority=5, tags=["a", "b"], session_id="sess_" + "0" * 32)
    )
    assert created
    assert re.fullmatch(r"job_[0-9a-f]{32}", record.job_id)
    assert record.status is JobStatus.PENDING
    assert record.progress == 0 and record.attempts == 0
    assert record.created_at.tzinfo is not None
    assert record.started_at is None and record.result is None and record.error is None

    loaded = await store.get(record.job_id, "alice")
    assert loaded == record
    assert loaded.tags == ("a", "b") and loaded.timeout == 30.0 and loaded.priority == 5

    status = record.to_status_dict()
    assert set(status) == {
        "job_id",
        "name",
        "job_type",
        "status",
        "progress",
        "result",
        "error",
        "created_at",
        "started_at",
        "finished_at",
        "canceled_at",
        "cancel_reason",
        "tags",
        "session_id",
    }
    assert RFC3339_MS.match(status["created_at"])
    assert status["status"] == "PENDING" and status["tags"] == ["a", "b"]
    assert store.path.name == "jobs.sqlite3"
    journal = sqlite3.connect(store.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert journal == "wal"


async def test_other_owner_sees_nothing(store: JobStore) -> None:
    record, _ = await store.insert(job(owner="alice"))
    assert await store.get(record.job_id, "bob") is None
    assert await store.get(record.job_id, None) is None
    assert await store.get("job_" + "f" * 32, "alice") is None
    assert (await store.list("bob")).jobs == []
    with pytest.raises(JobNotFound):
        await store.cancel(record.job_id, "bob", "nope")
    # The anonymous owner is an owner like any other.
    anon, _ = await store.insert(job(owner=None))
    assert (await store.get(anon.job_id, None)) is not None
    assert await store.get(anon.job_id, "alice") is None


async def test_idempotency_replay_and_conflict(store: JobStore) -> None:
    body = {"name": "x", "data": {"a": 1, "b": 2}}
    same_body = {"data": {"b": 2, "a": 1}, "name": "x"}
    assert request_fingerprint(body) == request_fingerprint(same_body)

    first, created = await store.insert(
        job(idempotency_key="key-1", fingerprint=request_fingerprint(body))
    )
    again, created_again = await store.insert(
        job(idempotency_key="key-1", fingerprint=request_fingerprint(same_body))
    )
    assert created and not created_again
    assert again.job_id == first.job_id

    with pytest.raises(IdempotencyConflict) as info:
        await store.insert(job(idempotency_key="key-1", fingerprint=request_fingerprint({"x": 1})))
    assert info.value.existing_job_id == first.job_id

    # Keys are per owner.
    other, created_other = await store.insert(
        job(owner="bob", idempotency_key="key-1", fingerprint=request_fingerprint(body))
    )
    assert created_other and other.job_id != first.job_id

    # Without an explicit fingerprint the job's own fields are hashed.
    a, _ = await store.insert(job(idempotency_key="key-2", name="one"))
    b, created_b = await store.insert(job(idempotency_key="key-2", name="one"))
    assert b.job_id == a.job_id and not created_b
    with pytest.raises(IdempotencyConflict):
        await store.insert(job(idempotency_key="key-2", name="two"))


async def test_concurrent_idempotent_submits_create_one_job(store: JobStore) -> None:
    results = await asyncio.gather(
        *(store.insert(job(idempotency_key="race", fingerprint="f")) for _ in range(30))
    )
    assert sum(created for _, created in results) == 1
    assert len({record.job_id for record, _ in results}) == 1


async def test_active_job_limit_is_enforced_per_owner(store: JobStore) -> None:
    for _ in range(2):
        await store.insert(job(), max_active_per_owner=2)
    with pytest.raises(TooManyActiveJobs):
        await store.insert(job(), max_active_per_owner=2)
    await store.insert(job(owner="bob"), max_active_per_owner=2)
    running = await store.claim_next()
    assert running is not None
    await store.complete(running.job_id, {"ok": True})
    await store.insert(job(owner=running.owner), max_active_per_owner=2)
    assert await store.count_active("alice") == 2


async def test_claiming_with_nothing_pending_opens_no_write_transaction(store: JobStore) -> None:
    """Idle workers woken together mostly find nothing: that costs a read, not a write."""
    statements: list[str] = []
    store._connection().set_trace_callback(statements.append)
    try:
        assert await store.claim_next() is None
        assert not any(s.startswith("BEGIN") for s in statements), statements
        pending, _ = await store.insert(job())
        claimed = await store.claim_next()
    finally:
        store._connection().set_trace_callback(None)
    assert claimed is not None and claimed.job_id == pending.job_id
    assert claimed.status is JobStatus.RUNNING and claimed.attempts == 1


async def test_checkpoints_run_in_a_worker_thread_not_in_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer connection never checkpoints (it would fsync on the event loop); a
    background task copies the WAL into the database file from a worker thread."""
    from deepexec_server.jobs import store as store_module

    monkeypatch.setattr(store_module, "_CHECKPOINT_INTERVAL", 0.02)
    threads: set[int] = set()
    checkpoint = store_module._checkpoint

    def spy(path: Path, conn: sqlite3.Connection | None) -> sqlite3.Connection:
        threads.add(threading.get_ident())
        return checkpoint(path, conn)

    monkeypatch.setattr(store_module, "_checkpoint", spy)
    store = await JobStore.open_in(tmp_path)

    def rows_in_database_file() -> int:
        # immutable: read the database file alone, ignoring the WAL
        conn = sqlite3.connect(f"file:{store.path}?immutable=1", uri=True)
        try:
            return int(conn.execute("SELECT count(*) FROM jobs").fetchone()[0])
        except sqlite3.OperationalError:  # not even the table is in the file yet
            return 0
        finally:
            conn.close()

    try:
        writer = store._connection()
        assert writer.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        for _ in range(20):
            await store.insert(job())
        for _ in range(250):
            if rows_in_database_file() == 20:
                break
            await asyncio.sleep(0.02)
        assert rows_in_database_file() == 20
        assert threads and threading.get_ident() not in threads
    finally:
        await store.close()


def test_rfc3339_is_utc_with_milliseconds_truncated() -> None:
    from datetime import timezone

    from deepexec_server.jobs.models import rfc3339

    cases = {
        datetime(2026, 11, 26, 13, 40, 0, 123999, tzinfo=UTC): "2026-11-26T13:40:00.123Z",
        datetime(2026, 11, 26, 13, 40, tzinfo=UTC): "2026-11-26T13:40:00.000Z",
        datetime(2026, 1, 1, 0, 30, 0, 5000, tzinfo=timezone(timedelta(hours=1))): (
            "2025-12-31T23:30:00.005Z"
        ),
        datetime(2026, 6, 1, 19, 0, tzinfo=timezone(timedelta(hours=-5))): (
            "2026-06-02T00:00:00.000Z"
        ),
    }
    for value, expected in cases.items():
        assert rfc3339(value) == expected
    with pytest.raises(ValueError):
        rfc3339(datetime(2026, 1, 1))  # noqa: DTZ001 - naive on purpose


async def test_records_made_without_reading_back_equal_what_a_read_gives(
    store: JobStore,
) -> None:
    """insert and complete(running=...) build their records in memory: the same as a read."""
    for start in (True, False):
        record, created = await store.insert(
            job(tags=("a", "b"), timeout=5.0, idempotency_key=f"k{start}"), start=start
        )
        assert created and record == await store.load(record.job_id)
    running = await store.claim_next()
    assert running is not None and running == await store.load(running.job_id)
    done = await store.complete(running.job_id, {"out": [1, "x"]}, running=running)
    assert done is not None and done == await store.load(running.job_id)
    assert done.status is JobStatus.COMPLETED and done.progress == 100
    # no longer RUNNING: nothing is written, nothing returned
    assert await store.complete(running.job_id, {"out": 2}, running=running) is None


async def test_a_submit_costs_the_same_however_many_finished_jobs_the_owner_has(
    store: JobStore,
) -> None:
    """The active-job limit counts the unfinished jobs only: the SQLite work of an insert
    (counted in virtual-machine steps, not time) does not grow with the owner's history."""
    conn = store._connection()

    async def steps_of_one_insert() -> int:
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0

        conn.set_progress_handler(count, 1)
        try:
            await store.insert(job(), max_active_per_owner=10, start=True)
        finally:
            conn.set_progress_handler(None, 1)
        return steps

    async def finish_many(n: int) -> None:
        for _ in range(n):
            record, _ = await store.insert(job(), start=True)
            await store.complete(record.job_id, {"ok": True})

    await finish_many(20)
    few = await steps_of_one_insert()
    await finish_many(1000)
    many = await steps_of_one_insert()

    assert await store.count_active("alice") == 2
    assert many < few * 1.2, (few, many)


async def test_pagination_is_stable_and_filtered(tmp_path: Path) -> None:
    clock = Clock()
    store = await JobStore.open_in(tmp_path, clock=clock)
    try:
        ids = []
        for i in range(25):
            # Pairs of jobs share a timestamp: the job_id breaks the tie.
            if i % 2 == 0:
                clock.advance(seconds=1)
            record, _ = await store.insert(job(tags=["even"] if i % 2 == 0 else ["odd"]))
            ids.append(record.job_id)
        await store.insert(job(owner="bob"))

        page1 = await store.list("alice", limit=10)
        assert len(page1.jobs) == 10 and page1.next_cursor is not None
        # New jobs arriving between pages do not shift later pages.
        clock.advance(seconds=1)
        await store.insert(job())
        page2 = await store.list("alice", limit=10, cursor=page1.next_cursor)
        page3 = await store.list("alice", limit=10, cursor=page2.next_cursor)
        assert page3.next_cursor is None and len(page3.jobs) == 5
        listed = [r.job_id for r in page1.jobs + page2.jobs + page3.jobs]
        assert sorted(listed) == sorted(ids)
        assert len(set(listed)) == 25
        keys = [(r.created_at, r.job_id) for r in page1.jobs + page2.jobs + page3.jobs]
        assert keys == sorted(keys, reverse=True)

        odd = await store.list("alice", tag="odd", limit=100)
        assert len(odd.jobs) == 12 and all(r.tags == ("odd",) for r in odd.jobs)
        claimed = await store.claim_next()
        assert claimed is not None
        running = await store.list("alice", status=JobStatus.RUNNING)
        assert [r.job_id for r in running.jobs] == [claimed.job_id]
        assert (await store.list("alice", status="COMPLETED")).jobs == []

        with pytest.raises(InvalidCursor):
            await store.list("alice", cursor="not-a-cursor")
        with pytest.raises(InvalidCursor):
            await store.list("alice", cursor="WzEsMl0")  # base64 of [1,2]
        with pytest.raises(ValueError):
            await store.list("alice", limit=0)
    finally:
        await store.close()


async def test_claim_order_and_transition_guards(store: JobStore) -> None:
    low, _ = await store.insert(job(priority=0))
    high, _ = await store.insert(job(priority=10))
    high2, _ = await store.insert(job(priority=10))
    mid, _ = await store.insert(job(priority=5))
    order = []
    while (claimed := await store.claim_next()) is not None:
        assert claimed.status is JobStatus.RUNNING and claimed.started_at is not None
        assert claimed.attempts == 1
        order.append(claimed.job_id)
    assert order == [high.job_id, high2.job_id, mid.job_id, low.job_id]

    assert await store.set_progress(high.job_id, 250)
    assert (await store.load(high.job_id)).progress == 100  # type: ignore[union-attr]
    done = await store.complete(high.job_id, {"output": "1\n"})
    assert done is not None and done.status is JobStatus.COMPLETED
    assert done.progress == 100 and done.finished_at is not None
    assert not await store.set_progress(high.job_id, 5)

    with pytest.raises(JobAlreadyFinished) as info:
        await store.cancel(high.job_id, "alice", "too late")
    assert info.value.job.status is JobStatus.COMPLETED

    canceled = await store.cancel(mid.job_id, "alice", "no longer needed")
    assert canceled.status is JobStatus.CANCELED
    assert canceled.cancel_reason == "no longer needed"
    assert canceled.canceled_at is not None and canceled.finished_at == canceled.canceled_at
    assert canceled.error is not None and canceled.error.code == "job_canceled"
    # The runner finishing after the cancel changes nothing.
    assert await store.complete(mid.job_id, {"late": True}) is None
    assert await store.fail(mid.job_id, JobError(code="internal_error", message="x")) is None
    with pytest.raises(JobAlreadyFinished):
        await store.cancel(mid.job_id, "alice", "twice")

    failed = await store.fail(
        low.job_id, JobError(code="execution_timeout", message="slow"), result={"partial": 1}
    )
    assert failed is not None and failed.status is JobStatus.FAILED
    assert failed.error == JobError(code="execution_timeout", message="slow")
    assert failed.result == {"partial": 1}
    assert await store.counts() == {
        "PENDING": 0,
        "RUNNING": 1,
        "COMPLETED": 1,
        "FAILED": 1,
        "CANCELED": 1,
    }


async def test_cancel_pending_job_is_never_claimed(store: JobStore) -> None:
    record, _ = await store.insert(job())
    await store.cancel(record.job_id, "alice", None)
    assert await store.claim_next() is None


async def test_purge_deletes_only_finished_jobs_past_retention(tmp_path: Path) -> None:
    clock = Clock()
    store = await JobStore.open_in(tmp_path, clock=clock)
    try:
        old_done, _ = await store.insert(job(idempotency_key="old"))
        old_pending, _ = await store.insert(job(priority=-1))
        claimed = await store.claim_next()
        assert claimed is not None and claimed.job_id == old_done.job_id
        await store.complete(old_done.job_id, {})
        clock.advance(days=8)
        recent, _ = await store.insert(job())
        await store.cancel(recent.job_id, "alice", None)

        assert await store.purge(timedelta(days=7)) == 1
        assert await store.load(old_done.job_id) is None
        assert await store.load(old_pending.job_id) is not None
        assert await store.load(recent.job_id) is not None
        # The purged job's idempotency key is free again.
        _, created = await store.insert(job(idempotency_key="old"))
        assert created
    finally:
        await store.close()


async def test_purge_in_batches_deletes_every_expired_job_and_yields_between(
    tmp_path: Path,
) -> None:
    clock = Clock()
    store = await JobStore.open_in(tmp_path, clock=clock)
    try:
        done = []
        for _ in range(7):
            record, _ = await store.insert(job())
            claimed = await store.claim_next()
            assert claimed is not None
            await store.complete(claimed.job_id, {})
            done.append(record.job_id)
        clock.advance(days=8)
        kept, _ = await store.insert(job())
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        start = ticks
        assert await store.purge(timedelta(days=7), batch=3) == 7
        task.cancel()
        assert ticks - start >= 2  # batches of 3, 3, 1: the loop ran between them
        assert all([await store.load(job_id) is None for job_id in done])
        assert await store.load(kept.job_id) is not None
    finally:
        await store.close()


async def test_recover_after_crash_requeues_or_fails_running_jobs(tmp_path: Path) -> None:
    store = await JobStore.open_in(tmp_path)
    first, _ = await store.insert(job(priority=3))
    second, _ = await store.insert(job(priority=2))
    pending, _ = await store.insert(job(priority=1))
    await store.claim_next()  # first: attempt 1
    await store.requeue(first.job_id, count_attempt=True)
    await store.claim_next()  # first: attempt 2
    await store.claim_next()  # second: attempt 1
    # "Crash": the process goes away with both jobs RUNNING.
    await store.close()

    store = await JobStore.open_in(tmp_path)
    try:
        report = await store.recover_on_start(max_attempts=2)
        assert report.requeued == [second.job_id]
        assert report.failed == [first.job_id]
        assert report.pending == 2
        failed = await store.load(first.job_id)
        assert failed is not None and failed.status is JobStatus.FAILED
        assert failed.error is not None
        assert failed.error.code == "internal_error"
        assert failed.error.message == INTERRUPTED_MESSAGE
        requeued = await store.load(second.job_id)
        assert requeued is not None and requeued.status is JobStatus.PENDING
        assert requeued.started_at is None and requeued.attempts == 1
        untouched = await store.load(pending.job_id)
        assert untouched is not None and untouched.status is JobStatus.PENDING
        again = await store.claim_next()
        assert again is not None and again.job_id == second.job_id and again.attempts == 2
    finally:
        await store.close()


async def test_graceful_requeue_does_not_use_up_an_attempt(store: JobStore) -> None:
    record, _ = await store.insert(job())
    await store.claim_next()
    requeued = await store.requeue(record.job_id)
    assert requeued is not None and requeued.attempts == 0
    assert await store.requeue(record.job_id) is None  # not RUNNING any more


def test_jobs_survive_a_killed_process(tmp_path: Path) -> None:
    """A process that dies without closing anything keeps its committed jobs."""
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from deepexec_server.jobs import JobStore, NewJob

        async def main():
            store = await JobStore.open_in({str(tmp_path)!r})
            for i in range(3):
                await store.insert(NewJob(owner="o", name=f"j{{i}}", job_type="code_execution",
                                          data={{"i": i}}))
            await store.claim_next()
            os._exit(9)

        asyncio.run(main())
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], timeout=60, capture_output=True)
    assert proc.returncode == 9, proc.stderr.decode()

    async def check() -> None:
        store = await JobStore.open_in(tmp_path)
        try:
            report = await store.recover_on_start()
            assert len(report.requeued) == 1 and report.pending == 3
            page = await store.list("o")
            assert sorted(r.name for r in page.jobs) == ["j0", "j1", "j2"]
        finally:
            await store.close()

    asyncio.run(check())
