"""DeepExecAsyncClient: the asynchronous facade over the generated protocol layer.

Every call builds its request as JSON-shaped data and structures it into the generated
request model first, so bad input raises MCPValidationError (naming the field path) before
anything touches the network. Calls then go through one retry loop (tenacity, see _retry)
with one Idempotency-Key per logical call, reused across its retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import re
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
from deepexec_protocol import PROTOCOL_VERSION, StructureError, structure
from deepexec_protocol import api as ops
from deepexec_protocol import models as m
from deepexec_protocol.constants import ERROR_CODES, OPERATIONS, Operation

from . import __version__
from ._config import ClientConfig, header_secrets, mask_secrets, resolve_config
from ._logging import logger, setup_logging, watch_secrets
from ._results import check_execution as _check_execution
from ._results import job_result as _job_result
from ._retry import RetryPolicy, call_with_retries, is_retryable_status
from ._retry import new_idempotency_key as _new_idempotency_key
from ._streams import ExecutionStream, TextStream
from .exceptions import (
    MCPConnectionError,
    MCPError,
    MCPNotFoundError,
    MCPProtocolError,
    MCPTimeoutError,
    MCPValidationError,
)

T = TypeVar("T")

TERMINAL_STATES = frozenset({m.JobState.COMPLETED, m.JobState.FAILED, m.JobState.CANCELED})
ProgressCallback = Callable[[int], Awaitable[None] | None]
OutputCallback = Callable[[str], Awaitable[None] | None]

#: slack added to the HTTP timeout of a call whose server-side work has its own limit
_SERVER_SLACK = 10.0
#: seconds without a byte after which a job event stream counts as dead (3 server pings)
_STREAM_IDLE_LIMIT = 45.0
#: polling fallback: first interval and cap, in seconds (the interval grows by half each poll)
_POLL_START, _POLL_MAX = 0.05, 1.0


#: the variant nibble of a UUID4 (binary 10xx) for each random hex digit: keeps 2 random bits


#: the event streams of each session that may still be read, so that the client's close()
#: can end them: aiohttp's session close does not interrupt a body being read (a wait on an
#: event stream would hang until the server sent something; a call still waiting for its
#: answer's head is ended by the session close itself)
_OPEN_STREAMS: weakref.WeakKeyDictionary[aiohttp.ClientSession, weakref.WeakSet[Any]] = (
    weakref.WeakKeyDictionary()
)


class _ClosableResponse(aiohttp.ClientResponse):
    """A ClientResponse whose client can close it while its event stream is being read
    (see _OPEN_STREAMS); other responses cost nothing more."""

    async def start(self, connection: Any) -> _ClosableResponse:
        await super().start(connection)
        session = getattr(self, "_session", None)  # aiohttp keeps it until released
        if session is not None and self.headers.get("Content-Type", "").startswith(
            "text/event-stream"
        ):
            streams = _OPEN_STREAMS.get(session)
            if streams is None:
                streams = _OPEN_STREAMS[session] = weakref.WeakSet()
            streams.add(self)
        return self


#: at most this many submit_job_stream streams are held for a later wait (the oldest is
#: closed beyond it; a wait for its job then opens the job's event stream)
_MAX_FOLLOWERS = 8


async def _open_submit_stream(
    session: aiohttp.ClientSession,
    endpoint: str,
    *,
    headers: Mapping[str, str] | None,
    timeout: float,
    body: m.SubmitJobRequest,
) -> tuple[m.JobSubmitted, AsyncIterator[Any]]:
    """Submit through submit_job_stream: (the accepted job, the open stream of its events
    after the job_submitted_event). Raises like submit_job when the job is not accepted."""
    events = ops.submit_job_stream.stream(
        session,
        endpoint,
        body=body,
        headers=headers,
        # the server sends a comment every 15 s on an idle stream
        timeout=max(timeout, _STREAM_IDLE_LIMIT),
    )
    first = await anext(aiter(events))
    if not isinstance(first, m.JobSubmittedEvent):
        await _close_events(events)
        raise MCPProtocolError(
            f"submit_job_stream began with {first.type!r}, not job_submitted_event"
        )
    return first.job, events


async def _close_events(events: AsyncIterator[Any]) -> None:
    """Close an event stream (and its connection), whatever state it is in."""
    close = getattr(events, "aclose", None)
    if close is not None:
        try:
            await close()
        except Exception:  # noqa: BLE001 - a broken stream is closed all the same
            logger.debug("closing an event stream failed", exc_info=True)


async def _maybe_await(value: Awaitable[None] | None) -> None:
    if inspect.isawaitable(value):
        await value


def _validated(data: dict[str, Any], model: type[T], prefix: str = "") -> T:
    """Structure request data into its model; bad input becomes MCPValidationError."""
    try:
        return structure(data, model)
    except StructureError as exc:
        raise _validation_error(exc, prefix) from None


def _validation_error(exc: StructureError, prefix: str) -> MCPValidationError:
    path = prefix + exc.path if exc.path else prefix.rstrip(".")
    return MCPValidationError(
        f"invalid request: {path}: {exc.reason}" if path else f"invalid request: {exc}",
        code="validation_error",
        details={"path": path, "reason": exc.reason},
    )


def _drop_none(data: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None}


def _check_seconds(value: float | None, name: str, *, zero_ok: bool) -> None:
    """A duration argument of the SDK itself (not sent): None, or a finite number of
    seconds, > 0 (``zero_ok``: >= 0)."""
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero_ok)
    ):
        bound = ">= 0" if zero_ok else "> 0"
        raise MCPValidationError(
            f"invalid request: {name}: expected a finite number of seconds {bound}, "
            f"got {value!r:.40}",
            code="validation_error",
            details={"path": name},
        )


class DeepExecAsyncClient:
    """Asynchronous client of a DeepExec server.

    Configuration comes, per setting, from the constructor argument, else the environment
    (``DEEPEXEC_*``), else the TOML config file (``DEEPEXEC_CONFIG`` or the user's config
    dir), else the default. Use it as ``async with DeepExecAsyncClient() as client:`` or
    call :meth:`close` when done.

    Args:
        endpoint: base URL of the server (default ``http://127.0.0.1:8787``).
        timeout: seconds one HTTP request may take (default 60).
        max_retries: retries of a failed retryable request (default 3).
        retry_delay: base of the exponential backoff, in seconds (default 0.5).
        deepseek_key: DeepSeek API key, sent as ``X-DeepSeek-Key``.
        e2b_key: E2B API key, sent as ``X-E2B-Key``.
        verify_ssl: verify the server's TLS certificate (default True).
        api_key: the server's access token, sent as ``Authorization: Bearer``.
        headers: extra headers sent with every request.

    Raises:
        MCPConfigurationError: a setting is invalid; the message names its source.
    """

    def __init__(
        self,
        *,
        endpoint: str | None = None,
        timeout: float | None = None,
        max_retries: int | None = None,
        retry_delay: float | None = None,
        deepseek_key: str | None = None,
        e2b_key: str | None = None,
        verify_ssl: bool | None = None,
        api_key: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self._config: ClientConfig = resolve_config(
            endpoint=endpoint,
            timeout=timeout,
            max_retries=max_retries,
            retry_delay=retry_delay,
            deepseek_key=deepseek_key,
            e2b_key=e2b_key,
            verify_ssl=verify_ssl,
            api_key=api_key,
            headers=headers,
        )
        setup_logging(self._config.log_level)
        self._policy = RetryPolicy.from_config(self._config)
        self._session: aiohttp.ClientSession | None = None
        self._base_headers = self._make_headers()
        self._events_supported = True
        self._submit_stream_supported = True
        #: open submit_job_stream streams no one waits on yet, by job id (oldest first):
        #: a wait for such a job reads it instead of opening the job's event stream
        self._followers: OrderedDict[str, AsyncIterator[Any]] = OrderedDict()
        #: event streams being closed after their final event (see _close_later)
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False
        self._secrets = tuple(
            secret
            for secret in (
                self._config.deepseek_key,
                self._config.e2b_key,
                self._config.api_key,
                *header_secrets(self._config.headers),
            )
            if secret
        )
        watch_secrets(self)  # out of every log record too, whatever their form
        self._retry_checks = {name: self._retry_check(op) for name, op in OPERATIONS.items()}

    # ------------------------------------------------------------------ plumbing

    @property
    def config(self) -> ClientConfig:
        """The resolved configuration (secrets are left out of its repr)."""
        return self._config

    def __repr__(self) -> str:
        return f"DeepExecAsyncClient(endpoint={self._config.endpoint!r})"

    def _make_headers(self) -> dict[str, str]:
        cfg = self._config
        out = {"User-Agent": f"deepexec-sdk/{__version__}"}
        out.update(cfg.headers)
        if cfg.api_key:
            out["Authorization"] = f"Bearer {cfg.api_key}"
        if cfg.deepseek_key:
            out["X-DeepSeek-Key"] = cfg.deepseek_key
        if cfg.e2b_key:
            out["X-E2B-Key"] = cfg.e2b_key
        return out

    def _http(self) -> aiohttp.ClientSession:
        if self._closed:
            raise MCPError("the DeepExecAsyncClient is closed")
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self._config.verify_ssl)
            # the client's fixed headers (user agent, token, provider keys) are the
            # session's defaults; a call adds only its Idempotency-Key
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self._base_headers,
                response_class=_ClosableResponse,
            )
        return self._session

    async def close(self) -> None:
        """Close the HTTP connections (idempotent). The client can not be used afterwards:
        its calls raise MCPError, and so do the calls still waiting in other tasks (a wait
        on a job, a stream being read) at once. Jobs already submitted go on running on the
        server."""
        if self._closing:  # what finished calls left to do (a stream's end, a cancel)
            await asyncio.gather(*self._closing, return_exceptions=True)
        self._closed = True
        while self._followers:
            await _close_events(self._followers.popitem()[1])
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        if self._session is not None:
            # a call still reading (a wait on an event stream, a stream being iterated, in
            # another task) ends at once, with MCPError, rather than waiting for the server
            for response in list(_OPEN_STREAMS.pop(self._session, ())):
                response.close()
            if not self._session.closed:
                await self._session.close()
        self._session = None

    async def __aenter__(self) -> DeepExecAsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _is_retryable(self, op: Operation) -> Callable[[Exception], bool]:
        """Which failures of ``op`` are worth a retry.

        Operations that are idempotent (reads, and creations keyed by Idempotency-Key)
        retry connection failures, timeouts and the retryable protocol errors. The others
        (a direct execution or generation would run twice) retry only what proves the
        server did nothing: a refused connection, 429, 503.

        A protocol error envelope is judged by its code; an answer that is no protocol
        message (a proxy's 502 page, a bare 408) by its HTTP status, since the exception
        class it was given carries only a default code.
        """
        return self._retry_checks[op.name]

    @staticmethod
    def _retry_check(op: Operation) -> Callable[[Exception], bool]:
        idempotent = op.idempotent

        def check(exc: Exception) -> bool:
            if isinstance(exc, MCPConnectionError):
                cause = exc.__cause__
                if isinstance(cause, aiohttp.ClientSSLError):
                    return False  # a certificate problem does not go away
                refused = isinstance(cause, aiohttp.ClientConnectorError)
                return idempotent or refused
            if not isinstance(exc, MCPError):
                return False
            status = exc.http_status
            if isinstance(exc, MCPTimeoutError) and status is None:
                return idempotent  # our own client-side timeout
            info = ERROR_CODES.get(exc.code) if exc.code is not None else None
            # an error envelope carries its code's status; a stream_error event, the
            # stream's 200
            if info is not None and status in (info.http_status, 200):
                if not idempotent:
                    return info.code in ("rate_limit_exceeded", "service_unavailable")
                return info.retryable
            if status is None:
                return False
            if not idempotent:
                return status in (429, 503)
            return is_retryable_status(status)

        return check

    async def _call(
        self,
        name: str,
        fn: Callable[..., Awaitable[T]],
        *,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Call generated operation ``name`` with retries; one idempotency key for all.

        The first attempt runs directly: the retry machinery (tenacity) and the timing log
        are entered only once an attempt has failed with a retryable error, or when DEBUG
        logging is on, so a call that succeeds pays nothing for them.
        """
        op = OPERATIONS[name]
        if op.method != "POST":
            headers = None
        else:
            key = kwargs.pop("idempotency_key", None) or _new_idempotency_key()
            headers = {"Idempotency-Key": key}
        session = self._http()
        limit = self._config.timeout if timeout is None else timeout
        try:
            if logger.isEnabledFor(logging.DEBUG):
                return await self._attempt(op, fn, session, headers, limit, kwargs, 0)
            # hot path: no closure, no extra coroutine level
            return await fn(
                session, self._config.endpoint, headers=headers, timeout=limit, **kwargs
            )
        except MCPError as exc:
            if self._closed:  # close() ended this call's connection
                raise MCPError("the DeepExecAsyncClient was closed during the call") from None
            if self._policy.max_retries == 0 or not self._retry_checks[name](exc):
                self._scrub(exc)
                raise
            first_failure = exc
        return await self._retry(op, fn, session, headers, limit, kwargs, first_failure)

    async def _attempt(
        self,
        op: Operation,
        fn: Callable[..., Awaitable[T]],
        session: aiohttp.ClientSession,
        headers: dict[str, str] | None,
        limit: float,
        kwargs: dict[str, Any],
        number: int,
    ) -> T:
        """Attempt ``number`` (0-based) of a call, timed in the DEBUG log."""
        if self._closed:  # closed while this call waited to retry: no more attempts
            raise MCPError("the DeepExecAsyncClient was closed during the call")
        endpoint = self._config.endpoint
        if not logger.isEnabledFor(logging.DEBUG):
            return await fn(session, endpoint, headers=headers, timeout=limit, **kwargs)
        started = time.perf_counter()
        try:
            return await fn(session, endpoint, headers=headers, timeout=limit, **kwargs)
        finally:
            logger.debug(
                "%s %s%s attempt %d took %.1f ms",
                op.method,
                endpoint,
                op.path,
                number + 1,
                (time.perf_counter() - started) * 1000,
            )

    async def _retry(
        self,
        op: Operation,
        fn: Callable[..., Awaitable[T]],
        session: aiohttp.ClientSession,
        headers: dict[str, str] | None,
        limit: float,
        kwargs: dict[str, Any],
        first_failure: MCPError,
    ) -> T:
        """The retries of a call whose first attempt failed with a retryable error (the
        same Idempotency-Key on every attempt)."""

        async def again(number: int) -> T:
            if number == 0:
                raise first_failure  # already happened: let the policy decide the wait
            return await self._attempt(op, fn, session, headers, limit, kwargs, number)

        try:
            return await call_with_retries(
                self._policy, again, is_retryable=self._retry_checks[op.name]
            )
        except MCPError as exc:
            self._scrub(exc)
            raise

    def _scrubbing(self, events: AsyncIterator[T]) -> AsyncIterator[T]:
        """``events``, with :meth:`_scrub` applied to the errors its iteration raises."""
        if not self._secrets:
            return events
        return self._scrub_stream(events)

    async def _scrub_stream(self, events: AsyncIterator[T]) -> AsyncIterator[T]:
        try:
            async for event in events:
                yield event
        except MCPError as exc:
            self._scrub(exc)
            raise
        finally:
            close = getattr(events, "aclose", None)
            if close is not None:
                await close()

    def _scrub(self, exc: MCPError) -> None:
        """Mask any configured secret, or a piece of one, out of ``exc``'s message and
        details. A server must never echo a key; a misbehaving one (or the HTTP layer
        quoting an oversized header) must not make the SDK leak it either."""
        secrets = self._secrets
        if not secrets:
            return
        message = mask_secrets(exc.message, secrets)
        if message != exc.message:
            exc.message = message
            exc.args = (message, *exc.args[1:])
        details: dict[str, Any] = {}
        for key, value in exc.details.items():
            text = value if isinstance(value, str) else repr(value)
            masked = mask_secrets(text, secrets)
            details[key] = masked if masked != text else value
        exc.details = details

    def _envelope(
        self, type_: str, payload: dict[str, Any], session_id: str | None
    ) -> dict[str, Any]:
        env: dict[str, Any] = {
            "protocol_version": PROTOCOL_VERSION,
            "type": type_,
            "input": _drop_none(payload),
        }
        if session_id is not None:
            env["session_id"] = session_id
        return env

    # ------------------------------------------------------------------ server

    async def health(self) -> m.HealthInfo:
        """The server's health, versions and job counts.

        Returns:
            HealthInfo: ``status`` (``ok`` or ``degraded``), the server's ``version`` and
            ``protocol_version``, ``uptime`` (s), ``sandbox_backend``,
            ``text_generation_available`` and the ``jobs_pending`` / ``jobs_running`` counts.

        Raises:
            MCPConnectionError: the server can not be reached.
            MCPAuthError: the server has tokens and ``api_key`` is missing or wrong.
        """
        return await self._call("health", ops.health.asyncio)

    async def list_languages(self) -> list[m.LanguageInfo]:
        """The languages installed in the server's sandbox, with their versions.

        Returns:
            list[LanguageInfo]: one entry per language: ``id`` (what ``language``
            arguments take, such as ``python``), ``name``, ``version`` and
            ``file_extension``.

        Raises:
            MCPConnectionError: the server can not be reached.
            MCPAuthError: the server has tokens and ``api_key`` is missing or wrong.
        """
        out = await self._call("list_languages", ops.list_languages.asyncio)
        return list(out.languages)

    # ------------------------------------------------------------------ code execution

    def _code_input(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None,
        timeout: float | None,
        stdin: str | None,
        memory_limit: int | None,
    ) -> dict[str, Any]:
        # only the fields given: the request leaves out what is None
        data: dict[str, Any] = {"code": code, "language": language}
        if environment is not None:
            data["environment"] = dict(environment)
        if timeout is not None:
            data["timeout"] = timeout
        if stdin is not None:
            data["stdin"] = stdin
        if memory_limit is not None:
            data["memory_limit"] = memory_limit
        return data

    def _http_timeout(self, work_timeout: float | None) -> float:
        if work_timeout is None:
            return self._config.timeout
        return max(self._config.timeout, work_timeout + _SERVER_SLACK)

    async def execute_code_and_wait(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        session_id: str | None = None,
        *,
        memory_limit: int | None = None,
        check: bool = True,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> m.CodeExecutionResult:
        """Run ``code`` in the sandbox and return what it did.

        Args:
            code: the source code.
            language: a language id from :meth:`list_languages` (``python``, ``bash``...).
            environment: environment variables for the program (nothing else is passed).
            timeout: wall-clock limit of the program, in seconds (server default if None).
            stdin: text fed to the program's standard input.
            session_id: run in this session's persistent working directory.
            memory_limit: memory limit of the program, in bytes.
            check: raise MCPExecutionError on a non-zero exit (default); when False,
                return the result whatever the exit code.
            on_stdout: called with each chunk of standard output as it is produced.
            on_stderr: called with each chunk of standard error as it is produced. With
                either callback the code runs as a job, followed as it goes; should a
                callback raise (or the call be cancelled), the call ends with that and the
                job is cancelled.

        Returns:
            CodeExecutionResult: output, stdout, stderr, exit_code, execution_time (ms),
            memory_usage (bytes), timed_out and truncation flags.

        Raises:
            MCPValidationError: bad input (nothing was sent).
            MCPExecutionError: the program exited non-zero (with ``check``).
            MCPTimeoutError: the program ran past ``timeout``.
            MCPUnsupportedLanguageError: the language is not installed on the server.
            MCPNotFoundError: ``session_id`` names no open session.
            MCPRateLimitError: the server asks to slow down (retried first).
            MCPConnectionError: the server can not be reached.
        """
        if on_stdout is not None or on_stderr is not None:
            stream = await self.execute_code_stream(
                code,
                language,
                environment,
                timeout,
                stdin,
                session_id,
                memory_limit=memory_limit,
                on_stdout=on_stdout,
                on_stderr=on_stderr,
            )
            try:
                async for _ in stream:
                    pass
            except BaseException as exc:
                if not isinstance(exc, MCPError):  # a callback failed, or the caller left
                    self._abandon(stream.job_id)
                raise
            return _check_execution(stream.result, check, timeout)
        # the hot path: the envelope built as _envelope would (no None left), validated as
        # _validated does
        data: dict[str, Any] = {
            "protocol_version": PROTOCOL_VERSION,
            "type": "code_execution",
            "input": self._code_input(code, language, environment, timeout, stdin, memory_limit),
        }
        if session_id is not None:
            data["session_id"] = session_id
        try:
            body = structure(data, m.CodeExecutionRequest)
        except StructureError as exc:
            raise _validation_error(exc, "") from None
        result = await self._call(
            "code_execution",
            ops.code_execution.asyncio,
            body=body,
            timeout=self._http_timeout(timeout),
        )
        return _check_execution(result, check, timeout)

    async def execute_code_job(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        session_id: str | None = None,
        *,
        memory_limit: int | None = None,
        name: str | None = None,
        priority: int = 0,
        tags: list[str] | None = None,
    ) -> m.JobSubmitted:
        """Submit ``code`` as a background job; returns at once with its ``job_id``.

        Follow it with :meth:`get_code_execution_result`, :meth:`wait_for_job`,
        :meth:`get_job_status` or :meth:`job_events`; stop it with :meth:`cancel_job`.

        Args:
            code: the source code.
            language: a language id from :meth:`list_languages`.
            environment: environment variables for the program.
            timeout: wall-clock limit of the program (and of the job), in seconds.
            stdin: text fed to the program's standard input.
            session_id: run in this session's persistent working directory.
            memory_limit: memory limit of the program, in bytes.
            name: a name for people (default ``"<language> execution"``).
            priority: -100..100; higher runs first among pending jobs.
            tags: labels to filter :meth:`list_jobs` by.

        Returns:
            JobSubmitted: ``job_id``, ``status`` (``PENDING``, or ``RUNNING`` when the server
            started it at once) and ``created_at``.

        Raises:
            MCPValidationError: bad input (nothing was sent).
            MCPUnsupportedLanguageError: the language is not installed on the server.
            MCPRateLimitError: too many unfinished jobs or requests for this token.
            MCPConnectionError: the server can not be reached.
        """
        return await self.submit_job(
            name=name or f"{language} execution",
            job_type="code_execution",
            data=self._code_input(code, language, environment, timeout, stdin, memory_limit),
            timeout=timeout,
            priority=priority,
            tags=tags,
            session_id=session_id,
        )

    async def get_code_execution_result(
        self,
        job_id: str,
        *,
        max_wait_time: float | None = None,
        check: bool = True,
        on_progress: ProgressCallback | None = None,
    ) -> m.CodeExecutionResult:
        """Wait for code execution job ``job_id`` and return its result.

        Args:
            job_id: the ``job_id`` of a ``code_execution`` job.
            max_wait_time: give up waiting after this many seconds (the job goes on).
            check: raise MCPExecutionError on a non-zero exit (default); when False,
                return the result whatever the exit code.
            on_progress: called with the progress (0-100) each time it changes.

        Returns:
            CodeExecutionResult: output, stdout, stderr, exit_code, execution_time (ms),
            memory_usage (bytes), timed_out and truncation flags.

        Raises:
            MCPExecutionError: the program exited non-zero (with ``check``).
            MCPTimeoutError: the program ran past its timeout, or ``max_wait_time`` passed.
            MCPCanceledError: the job was canceled.
            MCPNotFoundError: no such job.
            MCPProtocolError: the job is not a code execution job.
        """
        job = await self.wait_for_job(job_id, max_wait_time=max_wait_time, on_progress=on_progress)
        result = _job_result(job, m.CodeExecutionResult)
        return _check_execution(result, check, None)

    async def execute_code_stream(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        session_id: str | None = None,
        *,
        memory_limit: int | None = None,
        on_stdout: OutputCallback | None = None,
        on_stderr: OutputCallback | None = None,
    ) -> ExecutionStream:
        """Run ``code`` and stream its output as it is produced.

        The code runs as a background job; the stream follows the job's events.

        Args:
            code: the source code.
            language: a language id from :meth:`list_languages`.
            environment: environment variables for the program.
            timeout: wall-clock limit of the program, in seconds.
            stdin: text fed to the program's standard input.
            session_id: run in this session's persistent working directory.
            memory_limit: memory limit of the program, in bytes.
            on_stdout: called with each chunk of standard output.
            on_stderr: called with each chunk of standard error.

        Returns:
            ExecutionStream: ``async for chunk in stream`` yields JobOutputEvent chunks
            (``chunk.stream`` is ``stdout`` or ``stderr``, ``chunk.data`` the text); after
            the loop ``stream.result`` is the CodeExecutionResult. A non-zero exit is not
            an error here: inspect ``stream.result.exit_code``.

        Raises:
            MCPValidationError: bad input (nothing was sent).
            MCPUnsupportedLanguageError: the language is not installed on the server.
            MCPRateLimitError: too many unfinished jobs or requests for this token.
            MCPConnectionError: the server can not be reached.
        """
        job = await self.execute_code_job(
            code, language, environment, timeout, stdin, session_id, memory_limit=memory_limit
        )
        return ExecutionStream(self, job.job_id, on_stdout=on_stdout, on_stderr=on_stderr)

    # ------------------------------------------------------------------ text generation

    @staticmethod
    def _text_input(
        prompt: str,
        model: str,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
        system_prompt: str | None,
        stop: list[str] | None,
    ) -> dict[str, Any]:
        return {
            "prompt": prompt,
            "model": model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "system_prompt": system_prompt,
            "stop": stop,
        }

    async def generate_text_and_wait(
        self,
        prompt: str,
        model: str = "deepseek-v3",
        max_tokens: int | None = None,
        temperature: float | None = None,
        *,
        top_p: float | None = None,
        system_prompt: str | None = None,
        stop: list[str] | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> m.TextGenerationResult:
        """Generate text and return the whole result.

        Args:
            prompt: the prompt.
            model: ``deepseek-v3`` (DeepSeek's deepseek-chat), ``deepseek-r1``
                (deepseek-reasoner) or any model the server's provider knows.
            max_tokens: upper bound on generated tokens (1..32768; server default 1024).
            temperature: sampling temperature (0..2).
            top_p: nucleus sampling mass (0..1].
            system_prompt: optional system message.
            stop: up to 4 stop sequences.
            session_id: generate inside this session.
            timeout: seconds to wait for the answer.

        Returns:
            TextGenerationResult: text, model, generation_time (ms), usage (tokens).

        Raises:
            MCPValidationError: bad input (nothing was sent).
            MCPProviderNotConfiguredError: the server has no text provider.
            MCPAuthError: the provider rejected the key.
            MCPRateLimitError: the provider or server asks to slow down (``retry_after``).
            MCPGenerationError: the provider failed.
            MCPTimeoutError: no answer within ``timeout``.
            MCPConnectionError: the server can not be reached.
        """
        body = _validated(
            self._envelope(
                "text_generation",
                self._text_input(
                    prompt, model, max_tokens, temperature, top_p, system_prompt, stop
                ),
                session_id,
            ),
            m.TextGenerationRequest,
        )
        return await self._call(
            "text_generation", ops.text_generation.asyncio, body=body, timeout=timeout
        )

    async def generate_text_stream(
        self,
        prompt: str,
        model: str = "deepseek-v3",
        max_tokens: int | None = None,
        temperature: float | None = None,
        *,
        top_p: float | None = None,
        system_prompt: str | None = None,
        stop: list[str] | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
    ) -> TextStream:
        """Generate text, streamed: ``async for text in stream`` yields each piece as the
        provider produces it; afterwards ``stream.result`` holds the TextGenerationResult
        with the final ``usage``.

        Args:
            prompt: the prompt.
            model: ``deepseek-v3``, ``deepseek-r1`` or any model the server's provider
                knows.
            max_tokens: upper bound on generated tokens (1..32768).
            temperature: sampling temperature (0..2).
            top_p: nucleus sampling mass (0..1].
            system_prompt: optional system message.
            stop: up to 4 stop sequences.
            session_id: generate inside this session.
            timeout: seconds each wait for the next piece may take.

        Returns:
            TextStream: iterate it for the pieces of text; ``stream.result`` and
            ``stream.usage`` are set once it ends.

        Raises:
            MCPValidationError: bad input, at once (nothing was sent).
            MCPProviderNotConfiguredError: the server has no text provider (raised by
                the first iteration).
            MCPGenerationError: the provider failed (raised by the iteration).
            MCPConnectionError: the server can not be reached.
        """
        body = _validated(
            self._envelope(
                "text_generation",
                self._text_input(
                    prompt, model, max_tokens, temperature, top_p, system_prompt, stop
                ),
                session_id,
            ),
            m.TextGenerationRequest,
        )
        headers = {"Idempotency-Key": _new_idempotency_key()}
        events = ops.text_generation_stream.stream(
            self._http(),
            self._config.endpoint,
            body=body,
            headers=headers,
            timeout=self._config.timeout if timeout is None else timeout,
        )
        return TextStream(self._scrubbing(events))

    async def generate_text_job(
        self,
        prompt: str,
        model: str = "deepseek-v3",
        max_tokens: int | None = None,
        temperature: float | None = None,
        *,
        top_p: float | None = None,
        system_prompt: str | None = None,
        stop: list[str] | None = None,
        session_id: str | None = None,
        name: str | None = None,
        priority: int = 0,
        tags: list[str] | None = None,
        timeout: float | None = None,
    ) -> m.JobSubmitted:
        """Submit a text generation as a background job; returns at once with its job_id.

        Follow it with :meth:`get_text_generation_result` or :meth:`wait_for_job`.

        Args:
            prompt: the prompt.
            model: ``deepseek-v3``, ``deepseek-r1`` or any model the server's provider
                knows.
            max_tokens: upper bound on generated tokens (1..32768).
            temperature: sampling temperature (0..2).
            top_p: nucleus sampling mass (0..1].
            system_prompt: optional system message.
            stop: up to 4 stop sequences.
            session_id: run inside this session.
            name: a name for people (default ``"<model> generation"``).
            priority: -100..100; higher runs first among pending jobs.
            tags: labels to filter :meth:`list_jobs` by.
            timeout: limit of the whole job, in seconds.

        Returns:
            JobSubmitted: ``job_id``, ``status`` (``PENDING``, or ``RUNNING`` when the server
            started it at once) and ``created_at``.

        Raises:
            MCPValidationError: bad input (nothing was sent).
            MCPRateLimitError: too many unfinished jobs or requests for this token.
            MCPConnectionError: the server can not be reached.
        """
        return await self.submit_job(
            name=name or f"{model} generation",
            job_type="text_generation",
            data=self._text_input(
                prompt, model, max_tokens, temperature, top_p, system_prompt, stop
            ),
            timeout=timeout,
            priority=priority,
            tags=tags,
            session_id=session_id,
        )

    async def get_text_generation_result(
        self,
        job_id: str,
        *,
        max_wait_time: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> m.TextGenerationResult:
        """Wait for text generation job ``job_id`` and return its result.

        Args:
            job_id: the ``job_id`` of a ``text_generation`` job.
            max_wait_time: give up waiting after this many seconds (the job goes on).
            on_progress: called with the progress (0-100) each time it changes.

        Returns:
            TextGenerationResult: text, model, generation_time (ms), usage (tokens).

        Raises:
            MCPCanceledError: the job was canceled.
            MCPTimeoutError: ``max_wait_time`` passed first.
            MCPNotFoundError: no such job.
            MCPError: the job failed; the subclass is the one of its error code (for
                example MCPProviderNotConfiguredError, MCPGenerationError).
        """
        job = await self.wait_for_job(job_id, max_wait_time=max_wait_time, on_progress=on_progress)
        return _job_result(job, m.TextGenerationResult)

    # ------------------------------------------------------------------ jobs

    async def submit_job(
        self,
        name: str,
        job_type: str,
        data: Mapping[str, Any],
        timeout: float | None = None,
        priority: int = 0,
        tags: list[str] | None = None,
        *,
        session_id: str | None = None,
    ) -> m.JobSubmitted:
        """Submit a background job.

        Args:
            name: a name for people (1..128 characters).
            job_type: ``code_execution`` (data as CodeExecutionInput: code, language, ...)
                or ``text_generation`` (data as TextGenerationInput: prompt, model, ...).
            data: what to run.
            timeout: limit of the whole job, in seconds.
            priority: -100..100; higher runs first among pending jobs.
            tags: labels to filter :meth:`list_jobs` by.
            session_id: run inside this session.

        Returns:
            JobSubmitted with ``job_id``, ``status`` and ``created_at``. A retried submit
            reuses its Idempotency-Key, so it never creates two jobs.

        Raises:
            MCPValidationError: bad input, such as ``data`` that does not match
                ``job_type`` (nothing was sent).
            MCPUnsupportedLanguageError: the language is not installed on the server.
            MCPNotFoundError: ``session_id`` names no open session.
            MCPRateLimitError: too many unfinished jobs or requests for this token.
            MCPConnectionError: the server can not be reached.
        """
        if not isinstance(data, Mapping):
            raise MCPValidationError(
                f"invalid request: input.data: expected an object, got {type(data).__name__}",
                code="validation_error",
                details={"path": "input.data"},
            )
        job_data = _drop_none(dict(data))
        payload: dict[str, Any] = {
            "name": name,
            "job_type": str(job_type),
            "data": job_data,
            "timeout": timeout,
            "priority": priority,
            # any iterable of tags, but a string is no list of tags: validation rejects it
            "tags": tags if tags is None or isinstance(tags, str | bytes) else list(tags),
        }
        if payload["job_type"] not in {t.value for t in m.JobType}:
            raise MCPValidationError(
                f"invalid request: input.job_type: {job_type!r} is not one of "
                f"{', '.join(t.value for t in m.JobType)}",
                code="validation_error",
                details={"path": "input.job_type"},
            )
        expected = m.CodeExecutionInput if job_type == "code_execution" else m.TextGenerationInput
        _validated(job_data, expected, "input.data.")  # data must match its job type
        body = _validated(self._envelope("submit_job", payload, session_id), m.SubmitJobRequest)
        if not self._submit_stream_supported or not self._events_supported:
            return await self._call("submit_job", ops.submit_job.asyncio, body=body)
        # submit_job_stream: the answer, then the job's events on the same connection, held
        # for a later wait (which then needs no second request)
        key = _new_idempotency_key()
        try:
            job, events = await self._call(
                "submit_job_stream", _open_submit_stream, body=body, idempotency_key=key
            )
        except MCPError as exc:
            # a server without submit_job_stream: 404 or 405, or, from a DeepExec server
            # of protocol 2024.1, invalid_request ("POST is not allowed"); the same
            # answers for a request submit_job refuses too (no such session, ...), and
            # then submit_job says so. The same key: a job the stream made is not made
            # twice.
            if not (_no_such_endpoint(exc) or exc.code == "invalid_request"):
                raise
            job = await self._call(
                "submit_job", ops.submit_job.asyncio, body=body, idempotency_key=key
            )
            self._submit_stream_supported = False
            return job
        stale = self._followers.pop(job.job_id, None)
        self._followers[job.job_id] = events
        if stale is not None:
            await _close_events(stale)
        while len(self._followers) > _MAX_FOLLOWERS:
            await _close_events(self._followers.popitem(last=False)[1])
        return job

    async def get_job_status(self, job_id: str) -> m.JobStatus:
        """Everything known about job ``job_id`` now (status, progress, result, error).

        Args:
            job_id: the ``job_id`` from :meth:`submit_job` (``job_`` and 32 hex digits).

        Returns:
            JobStatus: ``status`` (PENDING, RUNNING, COMPLETED, FAILED or CANCELED),
            ``progress`` (0-100), ``result`` once COMPLETED, ``error`` once FAILED,
            ``canceled_at`` and ``cancel_reason`` once CANCELED, and the timestamps.

        Raises:
            MCPValidationError: ``job_id`` is not a job id (nothing was sent).
            MCPNotFoundError: no such job (or it belongs to another token).
        """
        return await self._call("job_status", ops.job_status.asyncio, job_id=_job_id(job_id))

    async def cancel_job(self, job_id: str, reason: str | None = None) -> m.JobCanceled:
        """Cancel a pending or running job; its processes are killed at once.

        Args:
            job_id: the job to cancel.
            reason: recorded with the job (``JobStatus.cancel_reason``).

        Returns:
            JobCanceled: ``job_id``, ``status`` (``CANCELED``), ``canceled_at`` and
            ``reason``.

        Raises:
            MCPConflictError: the job had already finished.
            MCPNotFoundError: no such job.
            MCPValidationError: ``job_id`` is not a job id (nothing was sent).
        """
        body = _validated(
            self._envelope("cancel_job", {"reason": reason}, None), m.CancelJobRequest
        )
        return await self._call(
            "cancel_job", ops.cancel_job.asyncio, job_id=_job_id(job_id), body=body
        )

    def list_jobs(
        self,
        status: str | None = None,
        tag: str | None = None,
        limit: int | None = None,
        *,
        page_size: int = 50,
    ) -> AsyncIterator[m.JobStatus]:
        """Iterate over jobs, newest first, fetching pages as needed:
        ``async for job in client.list_jobs(status="RUNNING"):``.

        Args:
            status: only jobs in this state (``PENDING``, ``RUNNING``, ``COMPLETED``...).
            tag: only jobs with this tag.
            limit: stop after this many jobs (all when None).
            page_size: jobs fetched per request (1..100).

        Returns:
            AsyncIterator[JobStatus]: the jobs, newest first; pages are fetched as the
            iteration reaches them.

        Raises:
            MCPValidationError: bad arguments, at once (nothing is sent).
            MCPConnectionError: the server can not be reached (raised by the iteration).
        """
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 0
        ):
            raise MCPValidationError(
                f"invalid request: limit: expected a whole number >= 0, got {limit!r:.40}",
                code="validation_error",
                details={"path": "limit"},
            )
        _validated(_drop_none({"status": status, "tag": tag, "limit": page_size}), m.ListJobsQuery)
        return self._list_pages(status, tag, limit, page_size)

    async def _list_pages(
        self, status: str | None, tag: str | None, limit: int | None, page_size: int
    ) -> AsyncIterator[m.JobStatus]:
        remaining = limit
        cursor: str | None = None
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            query = _validated(
                _drop_none({"status": status, "tag": tag, "limit": size, "cursor": cursor}),
                m.ListJobsQuery,
            )
            page = await self._call("list_jobs", ops.list_jobs.asyncio, query=query)
            for job in page.jobs:
                yield job
                if remaining is not None:
                    remaining -= 1
                    if remaining == 0:
                        return
            cursor = page.next_cursor
            if not cursor:
                return

    async def wait_for_job(
        self,
        job_id: str,
        poll_interval: float | None = None,
        max_wait_time: float | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> m.JobStatus:
        """Wait until job ``job_id`` is COMPLETED, FAILED or CANCELED; return its status.

        Follows the server's job event stream, so it returns within milliseconds of the
        end; where the server offers no stream it polls, every ``poll_interval`` seconds
        when given, else at growing intervals (50 ms up to 1 s).

        Args:
            job_id: the job to wait for.
            poll_interval: poll every this many seconds (> 0) instead of following the
                event stream.
            max_wait_time: give up after this many seconds (>= 0; the job goes on).
            on_progress: called with the progress (0-100) each time it changes; may be
                a coroutine function.

        Returns:
            JobStatus: the final status; ``result`` or ``error`` says how it ended.
            A FAILED or CANCELED job is returned, not raised.

        Raises:
            MCPValidationError: a bad job id, ``poll_interval`` or ``max_wait_time``
                (nothing is sent).
            MCPTimeoutError: ``max_wait_time`` passed first (``error.timeout`` says how long).
            MCPNotFoundError: no such job.
        """
        job_id = _job_id(job_id)
        _check_seconds(poll_interval, "poll_interval", zero_ok=False)
        _check_seconds(max_wait_time, "max_wait_time", zero_ok=True)
        tracker = _ProgressTracker(on_progress)
        try:
            async with asyncio.timeout(max_wait_time):
                return await self._wait(job_id, poll_interval, tracker)
        except TimeoutError:
            raise MCPTimeoutError(
                f"job {job_id} did not finish within {max_wait_time} s", timeout=max_wait_time
            ) from None

    async def _wait(
        self, job_id: str, poll_interval: float | None, tracker: _ProgressTracker
    ) -> m.JobStatus:
        retryable = self._retry_checks["job_events"]
        backoff = _POLL_START
        if poll_interval is not None:
            held = self._followers.pop(job_id, None)
            if held is not None:
                await _close_events(held)
        while self._events_supported and poll_interval is None:
            try:
                events = self._follow(job_id)
                async for event in events:
                    backoff = _POLL_START  # the stream works: a later cut reconnects at once
                    if isinstance(event, (m.JobStatusEvent, m.JobProgressEvent)):
                        await tracker.update(event.progress)
                    elif isinstance(event, m.JobResultEvent):
                        self._close_later(events)
                        await tracker.update(event.job.progress)
                        return event.job
            except MCPError as exc:
                if _no_such_endpoint(exc):
                    # MCPNotFoundError from here: there is no such job; else the job
                    # exists and the server has no event stream: poll it
                    await self.get_job_status(job_id)
                    self._events_supported = False
                    break
                if not retryable(exc):
                    raise
            # stream cut (or a transient error): the job's status says whether it is over;
            # if not, reconnect (the server sends the current state first)
            status = await self.get_job_status(job_id)
            await tracker.update(status.progress)
            if status.status in TERMINAL_STATES:
                return status
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, _POLL_MAX)
        interval = poll_interval or _POLL_START
        while True:
            status = await self.get_job_status(job_id)
            await tracker.update(status.progress)
            if status.status in TERMINAL_STATES:
                return status
            await asyncio.sleep(interval)
            if poll_interval is None:
                interval = min(interval * 1.5, _POLL_MAX)

    def _abandon(self, job_id: str) -> None:
        """Cancel, in the background, the job of a call that ended without its result (its
        output callback raised, or the caller was cancelled): its program has no one left
        to report to. A direct execution ends the same way when its request is cut."""
        if self._closed:
            return

        async def cancel() -> None:
            with contextlib.suppress(MCPError):
                await self.cancel_job(job_id, reason="the caller stopped waiting")

        task = asyncio.get_running_loop().create_task(cancel())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _close_later(self, events: AsyncIterator[Any]) -> None:
        """Close a stream that gave its final event, in the background: reading its end
        lets its connection be reused (a new one costs a TCP handshake on both sides),
        and the caller need not wait for that end to arrive."""
        task = asyncio.get_running_loop().create_task(_close_events(events))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _follow(self, job_id: str) -> AsyncIterator[m.JobEvent]:
        """The job's events from now on: the stream its submit left open, if this client
        holds one (all events since the submit, then on), else :meth:`job_events`."""
        held = self._followers.pop(job_id, None)
        return self.job_events(job_id) if held is None else self._scrubbing(held)

    def job_events(self, job_id: str) -> AsyncIterator[m.JobEvent]:
        """The job's events as they happen: its current state first, then every status,
        progress and output change, ending with a JobResultEvent carrying the final status.

        Args:
            job_id: the job to follow.

        Returns:
            AsyncIterator[JobEvent]: JobStatusEvent, JobProgressEvent, JobOutputEvent and
            finally JobResultEvent (or StreamError); iterate with ``async for``.

        Raises:
            MCPValidationError: ``job_id`` is not a job id, at once.
            MCPNotFoundError: no such job (raised by the iteration).
            MCPConnectionError: the stream could not be opened or broke.
        """
        events = ops.job_events.stream(
            self._http(),
            self._config.endpoint,
            job_id=_job_id(job_id),
            # the server sends a comment every 15 s on an idle stream: a longer silence
            # means a dead connection (the waiters reconnect on it)
            timeout=max(self._config.timeout, _STREAM_IDLE_LIMIT),
        )
        return self._scrubbing(events)

    # ------------------------------------------------------------------ sessions

    async def create_session(self, ttl: int | None = None) -> AsyncSession:
        """Open a session: a working directory whose files persist between the session's
        executions (and nowhere else). Use it as ``async with await client.create_session()
        as session:`` or call ``await session.close()``.

        Args:
            ttl: idle seconds after which the server closes it (server default if None).

        Returns:
            AsyncSession: with ``session_id`` and ``info`` (SessionInfo: ``created_at``,
            ``expires_at``), and the execution and generation methods of the client.

        Raises:
            MCPValidationError: ``ttl`` out of range (1..86400), at once.
            MCPRateLimitError: this token reached the server's request or session limit.
            MCPConnectionError: the server can not be reached.
        """
        body = _validated(
            self._envelope("create_session", {"ttl": ttl}, None), m.CreateSessionRequest
        )
        info = await self._call("create_session", ops.create_session.asyncio, body=body)
        return AsyncSession(self, info)

    async def close_session(self, session_id: str) -> m.SessionClosed:
        """Close session ``session_id`` and free everything it holds: its jobs still
        pending or running are canceled (reason "its session was closed"), an execution
        running in it is stopped (that call raises MCPNotFoundError), and its directory
        is deleted, all before this returns.

        Args:
            session_id: the session's id (``sess_`` and 32 hex digits).

        Returns:
            SessionClosed: ``session_id`` and ``closed_at``.

        Raises:
            MCPNotFoundError: no such open session.
            MCPValidationError: ``session_id`` is not a session id (nothing was sent).
        """
        return await self._call(
            "close_session", ops.close_session.asyncio, session_id=_session_id(session_id)
        )


def _no_such_endpoint(exc: MCPError) -> bool:
    """Whether an error answer to the job event stream may mean the server has none: a
    not_found envelope (no such route, or no such job) or a bare 404, 405 or 501 page."""
    return isinstance(exc, MCPNotFoundError) or exc.http_status in (404, 405, 501)


class _ProgressTracker:
    def __init__(self, callback: ProgressCallback | None) -> None:
        self.callback = callback
        self.last: int | None = None

    async def update(self, progress: int) -> None:
        if self.callback is not None and progress != self.last:
            self.last = progress
            await _maybe_await(self.callback(progress))


_JOB_ID = re.compile(r"job_[0-9a-f]{32}")
_SESSION_ID = re.compile(r"sess_[0-9a-f]{32}")


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _job_id(job_id: str) -> str:
    if not isinstance(job_id, str) or _JOB_ID.fullmatch(job_id) is None:
        raise MCPValidationError(
            f"invalid request: job_id: {_show(job_id)} is not a job id "
            "('job_' and 32 lowercase hex digits)",
            code="validation_error",
            details={"path": "job_id"},
        )
    return job_id


def _session_id(session_id: str) -> str:
    if not isinstance(session_id, str) or _SESSION_ID.fullmatch(session_id) is None:
        raise MCPValidationError(
            f"invalid request: session_id: {_show(session_id)} is not a session id "
            "('sess_' and 32 lowercase hex digits)",
            code="validation_error",
            details={"path": "session_id"},
        )
    return session_id


class AsyncSession:
    """A session on the server: its executions share a persistent working directory.

    Its methods are the client's, with ``session_id`` filled in.
    """

    def __init__(self, client: DeepExecAsyncClient, info: m.SessionInfo) -> None:
        self._client = client
        self.info = info
        self.session_id: str = info.session_id
        self.closed = False

    def __repr__(self) -> str:
        return f"AsyncSession(session_id={self.session_id!r}, closed={self.closed})"

    async def execute_code_and_wait(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        **kwargs: Any,
    ) -> m.CodeExecutionResult:
        """:meth:`DeepExecAsyncClient.execute_code_and_wait` inside this session."""
        return await self._client.execute_code_and_wait(
            code, language, environment, timeout, stdin, self.session_id, **kwargs
        )

    async def execute_code_job(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        **kwargs: Any,
    ) -> m.JobSubmitted:
        """:meth:`DeepExecAsyncClient.execute_code_job` inside this session."""
        return await self._client.execute_code_job(
            code, language, environment, timeout, stdin, self.session_id, **kwargs
        )

    async def execute_code_stream(
        self,
        code: str,
        language: str,
        environment: Mapping[str, str] | None = None,
        timeout: float | None = None,
        stdin: str | None = None,
        **kwargs: Any,
    ) -> ExecutionStream:
        """:meth:`DeepExecAsyncClient.execute_code_stream` inside this session."""
        return await self._client.execute_code_stream(
            code, language, environment, timeout, stdin, self.session_id, **kwargs
        )

    async def generate_text_and_wait(self, prompt: str, **kwargs: Any) -> m.TextGenerationResult:
        """:meth:`DeepExecAsyncClient.generate_text_and_wait` inside this session."""
        return await self._client.generate_text_and_wait(
            prompt, session_id=self.session_id, **kwargs
        )

    async def generate_text_stream(self, prompt: str, **kwargs: Any) -> TextStream:
        """:meth:`DeepExecAsyncClient.generate_text_stream` inside this session."""
        return await self._client.generate_text_stream(prompt, session_id=self.session_id, **kwargs)

    async def generate_text_job(self, prompt: str, **kwargs: Any) -> m.JobSubmitted:
        """:meth:`DeepExecAsyncClient.generate_text_job` inside this session."""
        return await self._client.generate_text_job(prompt, session_id=self.session_id, **kwargs)

    async def close(self) -> None:
        """Close the session on the server (idempotent): what still runs in it is
        stopped, its jobs canceled, its files deleted (see
        :meth:`DeepExecAsyncClient.close_session`). If closing fails (the server is
        unreachable), the session stays open and ``close`` may be called again.

        Raises:
            MCPConnectionError: the server can not be reached.
        """
        if not self.closed:
            try:
                await self._client.close_session(self.session_id)
            except MCPNotFoundError:
                pass  # already expired or closed
            self.closed = True

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
