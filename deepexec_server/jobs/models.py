"""Plain data types of the job subsystem: job records, statuses, errors, timestamps.

These types are independent of the generated protocol models: the HTTP layer converts
:meth:`JobRecord.to_status_dict` (a JSON-able dict) into the protocol's job status
message.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from attrs import define, field

__all__ = [
    "JOB_TYPES",
    "TERMINAL_STATUSES",
    "IdempotencyConflict",
    "InvalidCursor",
    "JobAlreadyFinished",
    "JobError",
    "JobFailure",
    "JobNotFound",
    "JobRecord",
    "JobStatus",
    "JobStoreError",
    "NewJob",
    "TooManyActiveJobs",
    "UnknownJobType",
    "new_job_id",
    "request_fingerprint",
    "rfc3339",
    "utc_now",
]


class JobStatus(StrEnum):
    """Lifecycle of a job: PENDING -> RUNNING -> COMPLETED | FAILED | CANCELED.

    A RUNNING job goes back to PENDING only when the server stops (gracefully, or by
    crashing and recovering on the next start).
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"

    @property
    def is_terminal(self) -> bool:
        """True for COMPLETED, FAILED and CANCELED: the job will never change again."""
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED}
)

JOB_TYPES: frozenset[str] = frozenset({"code_execution", "text_generation"})


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def rfc3339(value: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC with milliseconds: ``2026-11-26T13:40:00.123Z``."""
    if value.tzinfo is None:
        raise ValueError("naive datetimes are not accepted; use an aware UTC datetime")
    if value.utcoffset():
        value = value.astimezone(UTC)
    # isoformat truncates to milliseconds as the format asks (and is ~5x faster than
    # strftime, which events call for every timestamp)
    return value.isoformat(timespec="milliseconds")[:23] + "Z"


def new_job_id() -> str:
    """A fresh job id: ``job_`` followed by 32 lowercase hex digits."""
    return "job_" + secrets.token_hex(16)


def request_fingerprint(body: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a request body in canonical JSON form (sorted keys, no spaces).

    Two bodies that differ only in key order or whitespace get the same fingerprint;
    the store uses it to tell an idempotent retry from a conflicting reuse of an
    ``Idempotency-Key``.
    """
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@define(frozen=True, kw_only=True)
class JobError:
    """The ``error`` of a FAILED job: a protocol error code, a message and details."""

    code: str
    message: str
    details: dict[str, Any] = field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form ``{code, message, details}``."""
        return {"code": self.code, "message": self.message, "details": dict(self.details)}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> JobError:
        """Inverse of :meth:`to_dict`."""
        return cls(
            code=str(value["code"]),
            message=str(value["message"]),
            details=dict(value.get("details") or {}),
        )


def _to_tags(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@define(frozen=True, kw_only=True)
class NewJob:
    """What a client submits; :meth:`JobStore.insert` turns it into a :class:`JobRecord`.

    ``fingerprint`` is the hash of the submit body (see :func:`request_fingerprint`);
    when left ``None`` the store computes one from the job's own fields.
    """

    owner: str | None
    name: str
    job_type: str
    data: dict[str, Any]
    timeout: float | None = None
    priority: int = 0
    tags: tuple[str, ...] = field(default=(), converter=_to_tags)
    session_id: str | None = None
    idempotency_key: str | None = None
    fingerprint: str | None = None

    def computed_fingerprint(self) -> str:
        """The explicit fingerprint, or a hash of the job's defining fields."""
        if self.fingerprint is not None:
            return self.fingerprint
        return request_fingerprint(
            {
                "name": self.name,
                "job_type": self.job_type,
                "data": self.data,
                "timeout": self.timeout,
                "priority": self.priority,
                "tags": list(self.tags),
                "session_id": self.session_id,
            }
        )


@define(frozen=True, kw_only=True)
class JobRecord:
    """One job as stored. Immutable: every change produces a new record.

    ``owner`` is a token fingerprint (never a token) or ``None`` for the anonymous
    owner of a server without tokens. Timestamps are aware UTC datetimes.
    """

    job_id: str
    owner: str | None
    name: str
    job_type: str
    data: dict[str, Any]
    timeout: float | None
    priority: int
    tags: tuple[str, ...]
    session_id: str | None
    status: JobStatus
    progress: int
    result: dict[str, Any] | None
    error: JobError | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    canceled_at: datetime | None
    cancel_reason: str | None
    idempotency_key: str | None
    fingerprint: str
    attempts: int

    @property
    def is_terminal(self) -> bool:
        """True when the job reached COMPLETED, FAILED or CANCELED."""
        return self.status.is_terminal

    def to_status_dict(self) -> dict[str, Any]:
        """The job status as the HTTP layer returns it (JSON-able; RFC 3339 timestamps)."""

        def ts(value: datetime | None) -> str | None:
            return rfc3339(value) if value is not None else None

        return {
            "job_id": self.job_id,
            "name": self.name,
            "job_type": self.job_type,
            "status": self.status.value,
            "progress": self.progress,
            "result": self.result,
            "error": self.error.to_dict() if self.error is not None else None,
            "created_at": ts(self.created_at),
            "started_at": ts(self.started_at),
            "finished_at": ts(self.finished_at),
            "canceled_at": ts(self.canceled_at),
            "cancel_reason": self.cancel_reason,
            "tags": list(self.tags),
            "session_id": self.session_id,
        }


class JobStoreError(Exception):
    """Base class of the job subsystem's errors."""


class JobNotFound(JobStoreError):
    """No such job for this owner (a job of another owner is reported the same way)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} not found")
        self.job_id = job_id


class JobAlreadyFinished(JobStoreError):
    """The job is COMPLETED, FAILED or CANCELED and cannot be canceled any more.

    ``job`` is the finished record, so a caller may answer with its final state.
    """

    def __init__(self, job: JobRecord) -> None:
        super().__init__(f"job {job.job_id} already finished with status {job.status.value}")
        self.job = job


class IdempotencyConflict(JobStoreError):
    """An ``Idempotency-Key`` was reused by the same owner with a different request body."""

    def __init__(self, idempotency_key: str, existing_job_id: str) -> None:
        super().__init__(
            "this Idempotency-Key was already used with a different request body "
            f"(by job {existing_job_id})"
        )
        self.idempotency_key = idempotency_key
        self.existing_job_id = existing_job_id


class InvalidCursor(JobStoreError, ValueError):
    """A pagination cursor that this store did not produce."""

    def __init__(self) -> None:
        super().__init__("invalid pagination cursor")


class UnknownJobType(JobStoreError, ValueError):
    """A job type the server has no runner for."""

    def __init__(self, job_type: str, known: frozenset[str] | set[str]) -> None:
        super().__init__(
            f"unknown job type {job_type!r}; expected one of {', '.join(sorted(known))}"
        )
        self.job_type = job_type


class TooManyActiveJobs(JobStoreError):
    """The owner already has ``limit`` unfinished (PENDING or RUNNING) jobs."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"too many unfinished jobs for this token (limit {limit}); "
            "wait for some to finish or cancel them"
        )
        self.limit = limit


class JobFailure(Exception):
    """Raised by a runner to fail its job with a protocol error code.

    ``result`` optionally records a partial result alongside the error (for example
    the output of a program that timed out).
    """

    def __init__(
        self,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.result: dict[str, Any] | None = dict(result) if result is not None else None

    def to_error(self) -> JobError:
        """The :class:`JobError` this failure records."""
        return JobError(code=self.code, message=self.message, details=self.details)
