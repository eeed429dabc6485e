"""Turning finished jobs and executions into results or the exceptions they call for."""

from __future__ import annotations

from typing import TypeVar

from deepexec_protocol import models as m

from .exceptions import (
    MCPCanceledError,
    MCPExecutionError,
    MCPProtocolError,
    MCPTimeoutError,
    exception_for_code,
)

T = TypeVar("T")


def job_result(job: m.JobStatus, kind: type[T]) -> T:
    """The result of a finished job, or the exception its end calls for."""
    if job.status == m.JobState.CANCELED:
        raise MCPCanceledError(
            f"job {job.job_id} was canceled"
            + (f": {job.cancel_reason}" if job.cancel_reason else ""),
            code="job_canceled",
        )
    if job.status == m.JobState.FAILED:
        error = job.error
        code = error.code.value if error is not None else "internal_error"
        message = error.message if error is not None else "job failed"
        details = dict(error.details or {}) if error is not None else {}
        cls = exception_for_code(code)
        if cls is MCPTimeoutError:
            raise MCPTimeoutError(
                f"job {job.job_id}: {message}",
                code=code,
                timeout=details.get("timeout"),
                details=details,
            )
        raise cls(f"job {job.job_id}: {message}", code=code, details=details)
    if not isinstance(job.result, kind):
        raise MCPProtocolError(
            f"job {job.job_id} is {job.job_type.value}; its result is not a {kind.__name__}"
        )
    return job.result


def check_execution(
    result: m.CodeExecutionResult | None, check: bool, timeout: float | None
) -> m.CodeExecutionResult:
    if result is None:
        raise MCPProtocolError("the execution ended without a result")
    if result.timed_out:
        raise MCPTimeoutError(
            f"the program ran past its time limit ({timeout} s)"
            if timeout
            else "the program ran past its time limit",
            code="execution_timeout",
            timeout=timeout,
        )
    if check and result.exit_code != 0:
        raise MCPExecutionError(
            f"the program exited with code {result.exit_code}",
            exit_code=result.exit_code,
            output=result.output,
            result=result,
        )
    return result
