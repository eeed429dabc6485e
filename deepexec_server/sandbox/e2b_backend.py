"""The ``e2b`` backend: run code in E2B cloud sandboxes with the caller's key.

Needs the optional ``e2b-code-interpreter`` package (``pip install
e2b-code-interpreter``); :meth:`E2BExecutor.start` raises
:class:`~.base.SandboxUnavailableError` without it. Each execution uses the
request's ``e2b_key`` (the caller's ``X-E2B-Key`` header), falling back to
``SandboxSettings.e2b_api_key``; a request with neither raises
:class:`E2BKeyMissingError`. Keys are never logged, put in a repr or an error
message.

Mapping to :class:`~.base.ExecutionOutcome`: stdout/stderr are the concatenated
log lines (an uncaught error's traceback is appended to stderr), ``exit_code`` is
1 when the code raised and 0 otherwise (E2B runs code in a Jupyter kernel: there is
no process exit status), ``timed_out`` when E2B reports a timeout, ``memory_usage``
is 0 (E2B does not report it), ``execution_time_ms`` is measured here around the
call. Output caps are applied here (the remote sandbox is then killed). stdin is not
supported by E2B's code interpreter: a request with ``stdin`` raises
:class:`ValueError`. Executions with a ``workdir`` (a session) share one E2B sandbox
per work dir until :meth:`E2BExecutor.release_workdir`; others get a fresh sandbox,
killed afterwards.

No network test is possible on the build machines: the tests replace the SDK's
``AsyncSandbox`` class with a fake at the import boundary.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from pathlib import Path
from typing import Any

from .base import (
    ExecutionOutcome,
    ExecutionRequest,
    Executor,
    LanguageInfo,
    OutputCallback,
    SandboxError,
    SandboxUnavailableError,
    UnsupportedLanguageError,
    validate_env,
)
from .languages import resolve_language
from .settings import SandboxSettings

__all__ = ["E2B_LANGUAGES", "E2BExecutor", "E2BKeyMissingError"]

log = logging.getLogger(__name__)

#: Our language id -> (E2B's language name, display name, file extension).
E2B_LANGUAGES: dict[str, tuple[str, str, str]] = {
    "python": ("python", "Python", "py"),
    "javascript": ("js", "JavaScript", "js"),
    "bash": ("bash", "Bash", "sh"),
    "r": ("r", "R", "r"),
    "java": ("java", "Java", "java"),
}


class E2BKeyMissingError(SandboxError):
    """Neither the request nor the server configuration provides an E2B API key."""

    def __init__(self) -> None:
        super().__init__("an E2B API key is required (X-E2B-Key header) for the e2b backend")


class _Capture:
    """Collects one stream with the output cap; forwards chunks to the caller in order."""

    def __init__(self, name: str, cap: int, sink: asyncio.Queue[tuple[str, str] | None]) -> None:
        self.name = name
        self.cap = cap
        self.kept = 0
        self.parts: list[str] = []
        self.truncated = False
        self.sink = sink

    def __call__(self, message: Any) -> None:
        text = str(getattr(message, "line", message))
        if self.truncated or not text:
            return
        data = text.encode("utf-8", "surrogateescape")
        room = self.cap - self.kept
        if len(data) > room:
            text = data[:room].decode("utf-8", "ignore")
            self.truncated = True
        self.kept += len(text.encode("utf-8", "surrogateescape"))
        if text:
            self.parts.append(text)
            self.sink.put_nowait((self.name, text))

    @property
    def text(self) -> str:
        return "".join(self.parts)


class E2BExecutor(Executor):
    """Executes code in E2B sandboxes (see the module docstring)."""

    name = "e2b"

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._sdk: Any = None
        self._sessions: dict[str, Any] = {}
        self._started = False

    async def start(self) -> None:
        """Import the E2B SDK (optional dependency)."""
        try:
            self._sdk = importlib.import_module("e2b_code_interpreter")
        except ImportError as exc:
            raise SandboxUnavailableError(
                "the e2b backend needs the e2b-code-interpreter package "
                "(pip install e2b-code-interpreter)"
            ) from exc
        self._started = True

    async def close(self) -> None:
        """Kill the sandboxes kept for sessions."""
        sessions, self._sessions = self._sessions, {}
        for sbx in sessions.values():
            await _kill_quietly(sbx)
        self._started = False

    def languages(self) -> list[LanguageInfo]:
        """The languages of E2B's code-interpreter template (versions are remote)."""
        return [
            LanguageInfo(id=k, name=name, version="remote (e2b)", file_extension=ext)
            for k, (_, name, ext) in E2B_LANGUAGES.items()
        ]

    async def release_workdir(self, workdir: Path) -> None:
        """Kill the E2B sandbox kept for this session, if any."""
        sbx = self._sessions.pop(str(workdir), None)
        if sbx is not None:
            await _kill_quietly(sbx)

    async def execute(
        self, req: ExecutionRequest, on_output: OutputCallback | None = None
    ) -> ExecutionOutcome:
        """Run ``req`` in an E2B sandbox (see the module docstring)."""
        lang = resolve_language(req.language)
        if lang not in E2B_LANGUAGES:
            raise UnsupportedLanguageError(req.language)
        if not self._started:
            raise SandboxError("the executor is not running")
        if req.stdin is not None:
            raise ValueError("the e2b backend does not support stdin")
        validate_env(req.env)
        key = req.e2b_key or self.settings.e2b_api_key
        if not key:
            raise E2BKeyMissingError()
        limits = req.limits
        session_key = str(req.workdir) if req.workdir is not None else None
        sbx = self._sessions.get(session_key) if session_key is not None else None
        if sbx is None:
            kwargs: dict[str, Any] = {
                "api_key": key,
                "timeout": max(60, int(limits.timeout) + 60),
            }
            if self.settings.e2b_template:
                kwargs["template"] = self.settings.e2b_template
            sbx = await self._sdk.AsyncSandbox.create(**kwargs)
            if session_key is not None:
                self._sessions[session_key] = sbx
        queue: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        out = _Capture("stdout", limits.max_output, queue)
        err = _Capture("stderr", limits.max_output, queue)
        forward = asyncio.create_task(_forward(queue, on_output))
        timed_out = False
        error: Any = None
        t0 = time.monotonic()
        keep = session_key is not None
        try:
            run = sbx.run_code(
                req.code,
                language=E2B_LANGUAGES[lang][0],
                on_stdout=out,
                on_stderr=err,
                envs=dict(req.env),
                timeout=limits.timeout,
            )
            execution = await asyncio.wait_for(run, timeout=limits.timeout + 30)
            error = getattr(execution, "error", None)
        except TimeoutError:
            timed_out = True
            keep = False
        except Exception as exc:
            if type(exc).__name__ != "TimeoutException":
                if session_key is not None:
                    self._sessions.pop(session_key, None)
                await _kill_quietly(sbx)
                raise SandboxError(f"E2B execution failed: {type(exc).__name__}") from None
            timed_out = True
            keep = False
        except asyncio.CancelledError:
            if session_key is not None:
                self._sessions.pop(session_key, None)
            await asyncio.shield(_kill_quietly(sbx))
            raise
        finally:
            elapsed_ms = (time.monotonic() - t0) * 1000.0
            queue.put_nowait(None)
            await forward
        if out.truncated or err.truncated:
            keep = False
        if not keep:
            if session_key is not None:
                self._sessions.pop(session_key, None)
            await _kill_quietly(sbx)
        stderr = err.text
        if error is not None:
            tb = str(getattr(error, "traceback", "") or "")
            stderr += (
                tb if tb else f"{getattr(error, 'name', 'Error')}: {getattr(error, 'value', '')}\n"
            )
        return ExecutionOutcome(
            stdout=out.text,
            stderr=stderr,
            exit_code=None if timed_out else (1 if error is not None else 0),
            signal=None,
            timed_out=timed_out,
            stdout_truncated=out.truncated,
            stderr_truncated=err.truncated,
            execution_time_ms=elapsed_ms,
            memory_usage=0,
            compile_output=None,
        )


async def _forward(
    queue: asyncio.Queue[tuple[str, str] | None], on_output: OutputCallback | None
) -> None:
    while True:
        item = await queue.get()
        if item is None:
            return
        if on_output is not None:
            result = on_output(*item)
            if result is not None:
                await result


async def _kill_quietly(sbx: Any) -> None:
    try:
        result = sbx.kill()
        if asyncio.iscoroutine(result):
            await result
    except Exception as exc:  # never let cleanup mask the real outcome; never log keys
        log.warning("could not kill an E2B sandbox: %s", type(exc).__name__)
