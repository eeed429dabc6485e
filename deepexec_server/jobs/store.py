"""Durable job store: one SQLite database (``jobs.sqlite3``) in the server's state dir.

Design
------
* WAL journal mode, ``synchronous=NORMAL``: a committed job survives the server
  process being killed at any point (a power loss may lose the last few commits).
* One writer path: one connection, used only from the event loop's thread. Every
  call is one short transaction run inline (no thread hop): with WAL and
  ``synchronous=NORMAL`` a commit appends to the WAL without an fsync, so an insert,
  claim or completion costs 75-140 us here, less than handing the work to a thread
  and waking the loop again (measured: five hops per job added 2.2 ms to its wait,
  bench/bench_server.py). Calls are serialized by the loop itself, and a read
  issued after a write returned sees that write. The only bulk write, :meth:`purge`,
  deletes in batches and yields to the loop between them.
* Checkpoints (copying the WAL back into the database, with an fsync) never run on the
  event loop: SQLite's automatic checkpoint is off on the writer connection, and a
  background task checkpoints from a worker thread, on a connection of its own, about
  once a second after writes (measured: inline checkpoints stalled one commit in a
  hundred, by up to 9 ms).
* Every state transition is a guarded ``UPDATE ... WHERE status IN (...)``, so races
  (a job finishing while it is being canceled) resolve to exactly one winner.
* Timestamps are stored as integer microseconds since the Unix epoch (UTC) and
  surfaced as aware UTC datetimes.
* Owners are token fingerprints; the anonymous owner (``None``) is stored as ``''``.
  A job of another owner is invisible: :meth:`JobStore.get` answers ``None`` exactly
  as for a job that does not exist.
* Listing is ordered by ``created_at`` descending, then ``job_id`` descending, with an
  opaque keyset cursor: pages stay stable while new jobs are added (new jobs appear
  before the first page, never twice, never shifting later pages).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import json
import logging
import re
import sqlite3
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from attrs import define, evolve

from .models import (
    IdempotencyConflict,
    InvalidCursor,
    JobAlreadyFinished,
    JobError,
    JobNotFound,
    JobRecord,
    JobStatus,
    NewJob,
    TooManyActiveJobs,
    new_job_id,
    utc_now,
)

__all__ = [
    "CANCELED_ERROR_CODE",
    "DEFAULT_MAX_ATTEMPTS",
    "INTERRUPTED_MESSAGE",
    "JobPage",
    "JobStore",
    "RecoveryReport",
]

T = TypeVar("T")

#: A job that was RUNNING when the server died is retried until it has been started
#: this many times; after that it is FAILED with :data:`INTERRUPTED_MESSAGE`.
DEFAULT_MAX_ATTEMPTS = 2
#: The error code recorded on a CANCELED job.
CANCELED_ERROR_CODE = "job_canceled"
INTERRUPTED_MESSAGE = "interrupted by a server restart"

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id          TEXT PRIMARY KEY,
    owner           TEXT NOT NULL,
    name            TEXT NOT NULL,
    job_type        TEXT NOT NULL,
    data            TEXT NOT NULL,
    timeout         REAL,
    priority        INTEGER NOT NULL,
    tags            TEXT NOT NULL,
    session_id      TEXT,
    status          TEXT NOT NULL,
    progress        INTEGER NOT NULL,
    result          TEXT,
    error           TEXT,
    created_us      INTEGER NOT NULL,
    started_us      INTEGER,
    finished_us     INTEGER,
    canceled_us     INTEGER,
    cancel_reason   TEXT,
    idempotency_key TEXT,
    fingerprint     TEXT NOT NULL,
    attempts        INTEGER NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency
    ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_owner_created ON jobs (owner, created_us DESC, job_id DESC);
CREATE INDEX IF NOT EXISTS jobs_queue ON jobs (status, priority DESC, created_us ASC);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_us) WHERE finished_us IS NOT NULL;
"""

_COLUMNS = (
    "job_id, owner, name, job_type, data, timeout, priority, tags, session_id, status, "
    "progress, result, error, created_us, started_us, finished_us, canceled_us, "
    "cancel_reason, idempotency_key, fingerprint, attempts"
)

_JOB_ID_RE = re.compile(r"^job_[0-9a-f]{32}$")
_UNFINISHED = (JobStatus.PENDING.value, JobStatus.RUNNING.value)
#: An owner's unfinished jobs, counted through the queue index (few rows: the unfinished
#: jobs of everyone) rather than the owner index (all of the owner's jobs ever kept): the
#: unary ``+`` keeps SQLite from using an index on owner.
_COUNT_UNFINISHED = "SELECT count(*) FROM jobs WHERE +owner = ? AND status IN (?, ?)"
_ANY_PENDING = "SELECT 1 FROM jobs WHERE status = ? LIMIT 1"
_MAX_LIST_LIMIT = 1000


@define(frozen=True, kw_only=True)
class JobPage:
    """One page of :meth:`JobStore.list`; ``next_cursor`` is ``None`` on the last page."""

    jobs: list[JobRecord]
    next_cursor: str | None


@define(frozen=True, kw_only=True)
class RecoveryReport:
    """What :meth:`JobStore.recover_on_start` did."""

    requeued: list[str]
    failed: list[str]
    pending: int


def _to_us(value: datetime) -> int:
    delta = value.astimezone(UTC) - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_us(value: int | None) -> datetime | None:
    if value is None:
        return None
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=value)


def _owner_key(owner: str | None) -> str:
    return owner if owner is not None else ""


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


#: the columns a new job is inserted without (NULL until it finishes or is canceled)
_UNSET_AT_INSERT = {
    "result": None,
    "error": None,
    "finished_us": None,
    "canceled_us": None,
    "cancel_reason": None,
}


def _row_to_record(row: sqlite3.Row | dict[str, Any]) -> JobRecord:
    created_at = _from_us(row["created_us"])
    assert created_at is not None
    result, error = row["result"], row["error"]
    return JobRecord(
        job_id=row["job_id"],
        owner=row["owner"] or None,
        name=row["name"],
        job_type=row["job_type"],
        data=json.loads(row["data"]),
        timeout=row["timeout"],
        priority=row["priority"],
        tags=tuple(json.loads(row["tags"])),
        session_id=row["session_id"],
        status=JobStatus(row["status"]),
        progress=row["progress"],
        result=json.loads(result) if result is not None else None,
        error=JobError.from_dict(json.loads(error)) if error is not None else None,
        created_at=created_at,
        started_at=_from_us(row["started_us"]),
        finished_at=_from_us(row["finished_us"]),
        canceled_at=_from_us(row["canceled_us"]),
        cancel_reason=row["cancel_reason"],
        idempotency_key=row["idempotency_key"],
        fingerprint=row["fingerprint"],
        attempts=row["attempts"],
    )


def _encode_cursor(created_us: int, job_id: str) -> str:
    raw = json.dumps([created_us, job_id], separators=(",", ":")).encode("ascii")
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, binascii.Error, UnicodeError) as exc:
        raise InvalidCursor() from exc
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not isinstance(value[0], int)
        or isinstance(value[0], bool)
        or not isinstance(value[1], str)
        or not _JOB_ID_RE.match(value[1])
    ):
        raise InvalidCursor()
    return value[0], value[1]


logger = logging.getLogger(__name__)

#: seconds between background checkpoints (when something was written meanwhile)
_CHECKPOINT_INTERVAL = 1.0


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _checkpoint(path: Path, conn: sqlite3.Connection | None) -> sqlite3.Connection:
    """Checkpoint the WAL of ``path`` (PASSIVE: never waits for the writer) on ``conn``,
    opening it on first use; returns the connection for next time. Blocking."""
    if conn is None:
        conn = _connect(path)
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    return conn


class JobStore:
    """Durable, owner-scoped job storage.

    Either ``store = JobStore(path_to_db); await store.open()`` or, in one step,
    ``store = await JobStore.open_in(state_dir)``; end with :meth:`close`.
    """

    def __init__(self, path: Path | str, *, clock: Callable[[], datetime] = utc_now) -> None:
        """Prepare a store for the database file ``path`` (nothing is opened yet)."""
        self._path = Path(path)
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        self._writes = 0  # commits since the last checkpoint
        self._checkpointer: asyncio.Task[None] | None = None

    @classmethod
    async def open_in(
        cls,
        state_dir: Path | str,
        *,
        filename: str = "jobs.sqlite3",
        clock: Callable[[], datetime] = utc_now,
    ) -> JobStore:
        """Open (creating if needed) the store ``filename`` in ``state_dir``."""
        return await cls(Path(state_dir) / filename, clock=clock).open()

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    async def open(self) -> JobStore:
        """Open the database, creating it and its directory if needed; idempotent.

        Returns the store itself.
        """
        if self._closed:
            raise RuntimeError("the job store is closed")
        if self._conn is not None:
            return self
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = _connect(self._path)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > _SCHEMA_VERSION:
            conn.close()
            raise RuntimeError(
                f"{self._path} has schema version {version}, newer than this server "
                f"understands ({_SCHEMA_VERSION})"
            )
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        conn.execute("PRAGMA wal_autocheckpoint=0")  # see _checkpoint_loop
        self._conn = conn
        self._checkpointer = asyncio.get_running_loop().create_task(
            self._checkpoint_loop(), name="job-store-checkpoint"
        )
        return self

    async def close(self) -> None:
        """Close the connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._checkpointer is not None:
            self._checkpointer.cancel()
            await asyncio.gather(self._checkpointer, return_exceptions=True)
            self._checkpointer = None
        if self._conn is not None:
            self._conn.close()  # the last connection to close checkpoints the rest
            self._conn = None

    async def _checkpoint_loop(self) -> None:
        """Checkpoint in a worker thread, about once a second after writes."""
        conn: sqlite3.Connection | None = None
        running: asyncio.Future[sqlite3.Connection] | None = None
        try:
            while True:
                await asyncio.sleep(_CHECKPOINT_INTERVAL)
                if not self._writes:
                    continue
                self._writes = 0
                running = asyncio.ensure_future(asyncio.to_thread(_checkpoint, self._path, conn))
                try:
                    conn = await asyncio.shield(running)
                except sqlite3.Error as exc:  # a full disk, say: the WAL keeps the rows
                    logger.warning("job store checkpoint failed (%s); trying again later", exc)
                    self._writes += 1  # at the next interval, even without new writes
                running = None
        finally:
            if running is not None:  # cancelled meanwhile: let the thread finish first
                with contextlib.suppress(Exception):
                    conn = await running
            if conn is not None:
                conn.close()

    # -- plumbing -----------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise RuntimeError("the job store is closed")
        if self._conn is None:
            raise RuntimeError("the job store is not open")
        return self._conn

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in one IMMEDIATE transaction (inline: see the module docstring)."""
        conn = self._connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            value = fn(conn)
            conn.execute("COMMIT")
            self._writes += 1
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return value

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self._connection())

    def _now_us(self) -> int:
        return _to_us(self._clock())

    @staticmethod
    def _fetch(conn: sqlite3.Connection, job_id: str) -> JobRecord | None:
        row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _row_to_record(row) if row is not None else None

    # -- creation and reads ----------------------------------------------------------

    async def insert(
        self, new: NewJob, *, max_active_per_owner: int | None = None, start: bool = False
    ) -> tuple[JobRecord, bool]:
        """Store a new PENDING job; return ``(record, created)``.

        With an ``idempotency_key``: when the same owner already used that key with
        the same fingerprint, the existing job is returned with ``created=False``; with
        a different fingerprint, :class:`IdempotencyConflict` is raised. With
        ``max_active_per_owner``, :class:`TooManyActiveJobs` is raised when the owner
        already has that many PENDING or RUNNING jobs (checked in the same
        transaction as the insert, so concurrent submits cannot overshoot).

        With ``start`` (a worker is idle), a new job that would be the next one claimed
        anyway (no other job is PENDING) is stored already RUNNING, as
        :meth:`claim_next` would leave it: one transaction instead of two.
        """
        owner = _owner_key(new.owner)
        fingerprint = new.computed_fingerprint()
        created_us = self._now_us()
        job_id = new_job_id()

        def run(conn: sqlite3.Connection) -> tuple[JobRecord, bool]:
            if new.idempotency_key is not None:
                row = conn.execute(
                    f"SELECT {_COLUMNS} FROM jobs WHERE owner = ? AND idempotency_key = ?",
                    (owner, new.idempotency_key),
                ).fetchone()
                if row is not None:
                    existing = _row_to_record(row)
                    if existing.fingerprint != fingerprint:
                        raise IdempotencyConflict(new.idempotency_key, existing.job_id)
                    return existing, False
            if max_active_per_owner is not None:
                (active,) = conn.execute(_COUNT_UNFINISHED, (owner, *_UNFINISHED)).fetchone()
                if active >= max_active_per_owner:
                    raise TooManyActiveJobs(max_active_per_owner)
            running = (
                start and conn.execute(_ANY_PENDING, (JobStatus.PENDING.value,)).fetchone() is None
            )
            values = {
                "job_id": job_id,
                "owner": owner,
                "name": new.name,
                "job_type": new.job_type,
                "data": _dump(new.data),
                "timeout": new.timeout,
                "priority": new.priority,
                "tags": _dump(list(new.tags)),
                "session_id": new.session_id,
                "status": (JobStatus.RUNNING if running else JobStatus.PENDING).value,
                "progress": 0,
                "created_us": created_us,
                "started_us": created_us if running else None,
                "idempotency_key": new.idempotency_key,
                "fingerprint": fingerprint,
                "attempts": 1 if running else 0,
            }
            conn.execute(
                f"INSERT INTO jobs ({', '.join(values)}) "
                f"VALUES ({', '.join(':' + name for name in values)})",
                values,
            )
            # the record as a read would give it, without reading it back
            return _row_to_record({**values, **_UNSET_AT_INSERT}), True

        return await self._write(run)

    async def get(self, job_id: str, owner: str | None) -> JobRecord | None:
        """The job if it exists and belongs to ``owner``; otherwise ``None``."""
        record = await self.load(job_id)
        if record is None or _owner_key(record.owner) != _owner_key(owner):
            return None
        return record

    async def load(self, job_id: str) -> JobRecord | None:
        """The job regardless of its owner (for the server's own use, never for a client)."""
        return await self._read(lambda conn: self._fetch(conn, job_id))

    async def list(
        self,
        owner: str | None,
        *,
        status: JobStatus | str | None = None,
        tag: str | None = None,
        limit: int = 20,
        cursor: str | None = None,
    ) -> JobPage:
        """Jobs of ``owner``, newest first, optionally filtered by status and/or tag.

        ``limit`` must be 1..1000. Pass the returned ``next_cursor`` to get the next
        page. Raises :class:`InvalidCursor` for a malformed cursor.
        """
        if not 1 <= limit <= _MAX_LIST_LIMIT:
            raise ValueError(f"limit must be between 1 and {_MAX_LIST_LIMIT}")
        clauses = ["owner = ?"]
        params: list[Any] = [_owner_key(owner)]
        if status is not None:
            clauses.append("status = ?")
            params.append(JobStatus(status).value)
        if tag is not None:
            clauses.append("EXISTS (SELECT 1 FROM json_each(jobs.tags) WHERE value = ?)")
            params.append(tag)
        if cursor is not None:
            c_us, c_id = _decode_cursor(cursor)
            clauses.append("(created_us < ? OR (created_us = ? AND job_id < ?))")
            params.extend((c_us, c_us, c_id))
        sql = (
            f"SELECT {_COLUMNS} FROM jobs WHERE {' AND '.join(clauses)} "
            "ORDER BY created_us DESC, job_id DESC LIMIT ?"
        )
        params.append(limit + 1)

        def run(conn: sqlite3.Connection) -> list[sqlite3.Row]:
            return conn.execute(sql, params).fetchall()

        rows = await self._read(run)
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = (
            _encode_cursor(rows[-1]["created_us"], rows[-1]["job_id"]) if more and rows else None
        )
        return JobPage(jobs=[_row_to_record(r) for r in rows], next_cursor=next_cursor)

    async def count_active(self, owner: str | None) -> int:
        """Number of PENDING or RUNNING jobs of ``owner``."""

        def run(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute(_COUNT_UNFINISHED, (_owner_key(owner), *_UNFINISHED)).fetchone()
            return int(n)

        return await self._read(run)

    async def counts(self) -> dict[str, int]:
        """Number of jobs per status, over all owners (for health reports)."""

        def run(conn: sqlite3.Connection) -> dict[str, int]:
            found = dict(conn.execute("SELECT status, count(*) FROM jobs GROUP BY status"))
            return {s.value: int(found.get(s.value, 0)) for s in JobStatus}

        return await self._read(run)

    # -- transitions -------------------------------------------------------------------

    async def claim_next(self) -> JobRecord | None:
        """Atomically move the next PENDING job to RUNNING and return it.

        "Next" is the highest priority, then the oldest. Sets ``started_at`` and
        increments ``attempts``. Returns ``None`` when nothing is pending.
        """
        now = self._now_us()

        def run(conn: sqlite3.Connection) -> JobRecord | None:
            row = conn.execute(
                "SELECT job_id FROM jobs WHERE status = ? "
                "ORDER BY priority DESC, created_us ASC, rowid ASC LIMIT 1",
                (JobStatus.PENDING.value,),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = ?, started_us = ?, progress = 0, "
                "attempts = attempts + 1 WHERE job_id = ?",
                (JobStatus.RUNNING.value, now, row[0]),
            )
            return self._fetch(conn, row[0])

        # Nothing pending (what an idle worker woken with others mostly finds): a plain
        # read says so without a write transaction. Only this connection writes, so a job
        # inserted after this read wakes the workers again.
        if self._connection().execute(_ANY_PENDING, (JobStatus.PENDING.value,)).fetchone() is None:
            return None
        return await self._write(run)

    async def set_progress(self, job_id: str, progress: int) -> bool:
        """Record the progress (clamped to 0..100) of a RUNNING job; False if not running."""
        value = max(0, min(100, int(progress)))

        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE jobs SET progress = ? WHERE job_id = ? AND status = ?",
                (value, job_id, JobStatus.RUNNING.value),
            )
            return cur.rowcount == 1

        return await self._write(run)

    async def complete(
        self, job_id: str, result: dict[str, Any], *, running: JobRecord | None = None
    ) -> JobRecord | None:
        """RUNNING -> COMPLETED with ``result`` and progress 100.

        Returns ``None`` when the job was no longer RUNNING (canceled meanwhile). Given
        ``running``, the job's record as it was claimed, the completed record is made from
        it rather than read back (nothing else of a RUNNING job changes in the store).
        """
        now = self._now_us()
        payload = _dump(result)

        def run(conn: sqlite3.Connection) -> JobRecord | None:
            cur = conn.execute(
                "UPDATE jobs SET status = ?, result = ?, progress = 100, finished_us = ? "
                "WHERE job_id = ? AND status = ?",
                (JobStatus.COMPLETED.value, payload, now, job_id, JobStatus.RUNNING.value),
            )
            if cur.rowcount != 1:
                return None
            if running is None or running.job_id != job_id:
                return self._fetch(conn, job_id)
            return evolve(
                running,
                status=JobStatus.COMPLETED,
                result=json.loads(payload),
                progress=100,
                finished_at=_from_us(now),
            )

        return await self._write(run)

    async def fail(
        self, job_id: str, error: JobError, *, result: dict[str, Any] | None = None
    ) -> JobRecord | None:
        """PENDING or RUNNING -> FAILED with ``error`` (and an optional partial result).

        Returns ``None`` when the job had already finished.
        """
        now = self._now_us()
        err = _dump(error.to_dict())
        res = _dump(result) if result is not None else None

        def run(conn: sqlite3.Connection) -> JobRecord | None:
            cur = conn.execute(
                "UPDATE jobs SET status = ?, error = ?, result = ?, finished_us = ? "
                "WHERE job_id = ? AND status IN (?, ?)",
                (JobStatus.FAILED.value, err, res, now, job_id, *_UNFINISHED),
            )
            return self._fetch(conn, job_id) if cur.rowcount == 1 else None

        return await self._write(run)

    async def cancel(self, job_id: str, owner: str | None, reason: str | None) -> JobRecord:
        """PENDING or RUNNING -> CANCELED, recording ``canceled_at`` and ``reason``.

        The job's ``error`` becomes ``{"code": "job_canceled", ...}`` (the protocol
        reports why a job was canceled there too).

        Raises :class:`JobNotFound` (no such job for this owner) or
        :class:`JobAlreadyFinished` (COMPLETED, FAILED or already CANCELED).
        """
        now = self._now_us()
        owner_key = _owner_key(owner)
        error = _dump(
            JobError(
                code=CANCELED_ERROR_CODE,
                message=f"the job was canceled: {reason}" if reason else "the job was canceled",
                details={"reason": reason} if reason else {},
            ).to_dict()
        )

        def run(conn: sqlite3.Connection) -> JobRecord:
            record = self._fetch(conn, job_id)
            if record is None or _owner_key(record.owner) != owner_key:
                raise JobNotFound(job_id)
            if record.is_terminal:
                raise JobAlreadyFinished(record)
            conn.execute(
                "UPDATE jobs SET status = ?, canceled_us = ?, finished_us = ?, "
                "cancel_reason = ?, error = ? WHERE job_id = ?",
                (JobStatus.CANCELED.value, now, now, reason, error, job_id),
            )
            updated = self._fetch(conn, job_id)
            assert updated is not None
            return updated

        return await self._write(run)

    async def unfinished_in_session(self, session_id: str, owner: str | None) -> builtins.list[str]:
        """Ids of ``owner``'s PENDING or RUNNING jobs that run in session ``session_id``."""
        owner_key = _owner_key(owner)

        def run(conn: sqlite3.Connection) -> builtins.list[str]:
            rows = conn.execute(
                "SELECT job_id FROM jobs WHERE status IN (?, ?) AND session_id = ? AND owner = ?",
                (*_UNFINISHED, session_id, owner_key),
            ).fetchall()
            return [row["job_id"] for row in rows]

        return await self._read(run)

    async def requeue(self, job_id: str, *, count_attempt: bool = False) -> JobRecord | None:
        """RUNNING -> PENDING (progress and ``started_at`` reset).

        Used when the server stops while the job runs. Unless ``count_attempt``, the
        interrupted run does not count against the job's attempts. Returns ``None``
        when the job was not RUNNING.
        """
        decrement = 0 if count_attempt else 1

        def run(conn: sqlite3.Connection) -> JobRecord | None:
            cur = conn.execute(
                "UPDATE jobs SET status = ?, started_us = NULL, progress = 0, "
                "attempts = max(0, attempts - ?) WHERE job_id = ? AND status = ?",
                (JobStatus.PENDING.value, decrement, job_id, JobStatus.RUNNING.value),
            )
            return self._fetch(conn, job_id) if cur.rowcount == 1 else None

        return await self._write(run)

    async def recover_on_start(self, *, max_attempts: int = DEFAULT_MAX_ATTEMPTS) -> RecoveryReport:
        """Repair the queue after an unclean stop; call once before starting workers.

        A job left RUNNING by a dead server goes back to PENDING when it has been
        started fewer than ``max_attempts`` times, else becomes FAILED with code
        ``internal_error`` and message "interrupted by a server restart". PENDING jobs
        are left queued.
        """
        now = self._now_us()
        error = _dump(
            JobError(
                code="internal_error",
                message=INTERRUPTED_MESSAGE,
                details={"max_attempts": max_attempts},
            ).to_dict()
        )

        def run(conn: sqlite3.Connection) -> RecoveryReport:
            rows = conn.execute(
                "SELECT job_id, attempts FROM jobs WHERE status = ?", (JobStatus.RUNNING.value,)
            ).fetchall()
            requeued = [job_id for job_id, attempts in rows if attempts < max_attempts]
            failed = [job_id for job_id, attempts in rows if attempts >= max_attempts]
            conn.executemany(
                "UPDATE jobs SET status = ?, started_us = NULL, progress = 0 WHERE job_id = ?",
                [(JobStatus.PENDING.value, job_id) for job_id in requeued],
            )
            conn.executemany(
                "UPDATE jobs SET status = ?, error = ?, finished_us = ? WHERE job_id = ?",
                [(JobStatus.FAILED.value, error, now, job_id) for job_id in failed],
            )
            (pending,) = conn.execute(
                "SELECT count(*) FROM jobs WHERE status = ?", (JobStatus.PENDING.value,)
            ).fetchone()
            return RecoveryReport(requeued=requeued, failed=failed, pending=int(pending))

        return await self._write(run)

    async def purge(self, retention: timedelta, *, batch: int = 500) -> int:
        """Delete finished jobs whose ``finished_at`` is older than ``retention``.

        Unfinished jobs are never purged. Returns the number of jobs deleted; their
        idempotency keys are forgotten with them. Deletes at most ``batch`` jobs per
        transaction and lets the event loop run between transactions.
        """
        cutoff = _to_us(self._clock() - retention)

        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "DELETE FROM jobs WHERE rowid IN (SELECT rowid FROM jobs "
                "WHERE finished_us IS NOT NULL AND finished_us < ? AND status NOT IN (?, ?) "
                "LIMIT ?)",
                (cutoff, *_UNFINISHED, batch),
            )
            return int(cur.rowcount)

        total = 0
        while True:
            deleted = await self._write(run)
            total += deleted
            if deleted < batch:
                return total
            await asyncio.sleep(0)
