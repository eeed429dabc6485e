"""Job runners: code_execution through the sandbox executor, text_generation through the
text providers. Each returns the job's result as a dict shaped like the protocol's result
model; failures raise JobFailure with a protocol error code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .jobs.manager import JobContext, Runner
from .jobs.models import JobFailure, JobRecord
from .jobs.progress import strip_progress_lines
from .providers.base import GenerationRequest, ProviderError, ProviderNotConfigured, estimate_tokens
from .providers.registry import ProviderRegistry
from .sandbox import (
    ExecutionOutcome,
    ExecutionRequest,
    Executor,
    SandboxSettings,
    UnsupportedLanguageError,
)
from .sessions import SessionManager, SessionNotFound


class JobSecrets:
    """Provider keys a job was submitted with, kept in memory only (never in the job
    database): a job that outlives a server restart runs with the server's own keys."""

    def __init__(self) -> None:
        self._keys: dict[str, dict[str, str]] = {}

    def __repr__(self) -> str:
        return f"JobSecrets(<{len(self._keys)} job(s)>)"

    def remember(self, job_id: str, headers: Mapping[str, str]) -> None:
        keys = {
            name: headers[name] for name in ("X-DeepSeek-Key", "X-E2B-Key") if headers.get(name)
        }
        if keys:
            self._keys[job_id] = keys

    def get(self, job_id: str, name: str) -> str | None:
        return self._keys.get(job_id, {}).get(name)

    def forget(self, job_id: str) -> None:
        self._keys.pop(job_id, None)


def execution_result(
    outcome: ExecutionOutcome, language: str, clean: Callable[[str], str] = lambda s: s
) -> dict[str, Any]:
    """The protocol's CodeExecutionResult (as a dict) of a sandbox outcome."""
    stdout = clean(outcome.stdout)
    stderr = outcome.stderr
    if outcome.exit_code is not None:
        exit_code = outcome.exit_code
    elif outcome.signal is not None:
        exit_code = 128 + outcome.signal
    else:
        exit_code = -1
    return {
        "type": "code_execution_result",
        "output": stdout + stderr,
        "stdout": stdout,
        "stderr": stderr,
        "exit_code": exit_code,
        "signal": outcome.signal,
        "timed_out": outcome.timed_out,
        "stdout_truncated": outcome.stdout_truncated,
        "stderr_truncated": outcome.stderr_truncated,
        "execution_time": round(outcome.execution_time_ms, 3),
        "memory_usage": outcome.memory_usage,
        "language": language,
    }


def code_runner(
    executor: Executor,
    sandbox_settings: SandboxSettings,
    sessions: SessionManager,
    secrets: JobSecrets,
) -> Runner:
    """The runner of code_execution jobs."""

    async def run(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        data = job.data
        limits = sandbox_settings.clamp(
            {"timeout": job.timeout or data.get("timeout"), "memory": data.get("memory_limit")}
        )

        def on_output(stream: str, text: str) -> None:
            ctx.output(stream, text, parse_progress=stream == "stdout")

        async def execute(workdir: Any) -> ExecutionOutcome:
            return await executor.execute(
                ExecutionRequest(
                    code=data["code"],
                    language=data["language"],
                    stdin=data.get("stdin"),
                    env=dict(data.get("environment") or {}),
                    limits=limits,
                    workdir=workdir,
                    e2b_key=secrets.get(job.job_id, "X-E2B-Key"),
                ),
                on_output=on_output,
            )

        try:
            if job.session_id is None:
                outcome = await execute(None)
            else:
                async with sessions.use(job.session_id, job.owner) as session:
                    outcome = await execute(session.workdir)
        except SessionNotFound:
            raise JobFailure(
                "not_found", f"session {job.session_id} is closed or expired"
            ) from None
        except UnsupportedLanguageError as exc:
            raise JobFailure("unsupported_language", str(exc)) from None
        except ValueError as exc:  # the executor's word for a malformed request
            raise JobFailure("validation_error", str(exc)) from None
        finally:
            secrets.forget(job.job_id)
        ctx.flush_output()
        result = execution_result(outcome, data["language"], strip_progress_lines)
        if outcome.timed_out:
            raise JobFailure(
                "execution_timeout",
                f"the program ran past its time limit of {limits.timeout:g} s",
                details={"timeout": limits.timeout},
                result=result,
            )
        return result

    return run


def text_runner(providers: ProviderRegistry, secrets: JobSecrets) -> Runner:
    """The runner of text_generation jobs: streams from the provider, reporting each
    piece as output and progress as tokens generated against max_tokens."""

    async def run(job: JobRecord, ctx: JobContext) -> dict[str, Any]:
        data = job.data
        max_tokens = int(data.get("max_tokens") or 1024)
        request = GenerationRequest(
            prompt=data["prompt"],
            model=data.get("model"),
            max_tokens=data.get("max_tokens"),
            temperature=data.get("temperature"),
            top_p=data.get("top_p"),
            stop=data.get("stop"),
            system_prompt=data.get("system_prompt"),
            api_key=secrets.get(job.job_id, "X-DeepSeek-Key"),
        )
        started = time.perf_counter()
        text: list[str] = []
        tokens = 0
        usage: dict[str, int] | None = None
        finish_reason = None
        try:
            async for chunk in providers.stream(request):
                if chunk.delta:
                    text.append(chunk.delta)
                    tokens += max(1, estimate_tokens(chunk.delta))
                    ctx.output("stdout", chunk.delta)
                    ctx.progress(min(99, tokens * 100 // max_tokens))
                if chunk.usage is not None:
                    usage = chunk.usage.to_dict()
                if chunk.finish_reason is not None:
                    finish_reason = chunk.finish_reason
        except ProviderNotConfigured as exc:
            raise JobFailure("provider_not_configured", str(exc)) from None
        except ProviderError as exc:
            details = {"retry_after": exc.retry_after} if exc.retry_after is not None else None
            raise JobFailure(exc.code, exc.message, details=details) from None
        finally:
            secrets.forget(job.job_id)
        full = "".join(text)
        if usage is None:
            prompt_tokens = estimate_tokens(data["prompt"])
            completion = estimate_tokens(full)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion,
            }
        return {
            "type": "text_generation_result",
            "text": full,
            "model": data.get("model") or "deepseek-v3",
            "generation_time": round((time.perf_counter() - started) * 1000, 3),
            "usage": usage,
            "finish_reason": finish_reason,
        }

    return run
