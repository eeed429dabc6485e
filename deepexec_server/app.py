"""The reference server's HTTP layer (aiohttp.web).

Routes come from the generated operation table (``deepexec_protocol.constants.OPERATIONS``);
every request body is structured into its generated request model (strict: unknown fields
are rejected) and every response is built from the generated output models, so the server
and the SDK can not disagree about the protocol.

Errors are answered as response envelopes with the HTTP status the schema's x-error-codes
gives each code. No request can crash the server: anything unexpected becomes
``internal_error`` (and is logged with its request id), never a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import attrs
import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp_sse import EventSourceResponse
from deepexec_protocol import PROTOCOL_VERSION, StructureError, structure, unstructure
from deepexec_protocol import models as m
from deepexec_protocol.constants import ERROR_CODES, OPERATIONS, Operation

from . import __version__
from .jobs.manager import EventStream, JobManager
from .jobs.models import (
    IdempotencyConflict,
    InvalidCursor,
    JobAlreadyFinished,
    JobNotFound,
    TooManyActiveJobs,
)
from .jobs.progress import strip_progress_lines
from .jobs.store import JobStore
from .limits import ConcurrencyLimiter, RateLimiter, token_fingerprint
from .providers.base import GenerationRequest, ProviderError, ProviderNotConfigured
from .providers.registry import ProviderRegistry
from .runners import JobSecrets, code_runner, execution_result, text_runner
from .sandbox import ExecutionRequest, Executor, SandboxSettings, UnsupportedLanguageError
from .sandbox.base import validate_env
from .sessions import SessionClosed, SessionLimitExceeded, SessionManager, SessionNotFound
from .settings import ServerSettings

log = logging.getLogger("deepexec.server")
access_log = logging.getLogger("deepexec.server.access")

T = TypeVar("T")

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_SSE_PING_SECONDS = 15.0


class _ClientHttpErrors(logging.Filter):
    """aiohttp logs a request it can not parse (a header or URL over its limits, broken
    HTTP) at ERROR with a traceback whose message quotes the offending bytes (an oversized
    Authorization header would be in the log). That is the client's error, answered 400
    before any of the server's code runs: one INFO line instead, naming the error class and
    nothing the client sent."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError) and 400 <= (exc.code or 400) < 500:
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else "?"
            record.msg = "refused an unreadable HTTP request from %s: %s (HTTP %d)"
            record.args = (remote, type(exc).__name__, exc.code or 400)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def _quiet_client_http_errors() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _ClientHttpErrors) for f in server_log.filters):
        server_log.addFilter(_ClientHttpErrors())


class ApiError(Exception):
    """An error answer: a protocol error code, a message, optional details and headers."""

    def __init__(
        self,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = dict(details) if details else None
        self.headers = dict(headers or {})

    @property
    def status(self) -> int:
        return ERROR_CODES[self.code].http_status


def _response_type(op: Operation) -> str:
    if op.response is None:
        return f"{op.name}_response"
    cls = getattr(m, op.response)
    return str(attrs.fields_dict(cls)["type"].default)


RESPONSE_TYPES = {name: _response_type(op) for name, op in OPERATIONS.items()}


@attrs.define
class ServerState:
    """Everything a request handler needs."""

    settings: ServerSettings
    sandbox_settings: SandboxSettings
    executor: Executor
    providers: ProviderRegistry
    store: JobStore
    manager: JobManager
    sessions: SessionManager
    limiter: RateLimiter | None
    secrets: JobSecrets
    #: direct executions and generations in progress per token (jobs have their own cap)
    running: ConcurrencyLimiter | None = None
    started: float = attrs.field(factory=time.monotonic)
    session_keys: dict[tuple[str | None, str], m.SessionInfo] = attrs.field(factory=dict)


STATE = web.AppKey("deepexec_state", ServerState)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def _envelope(op_name: str, request: web.Request) -> dict[str, Any]:
    return {
        "protocol_version": PROTOCOL_VERSION,
        "type": RESPONSE_TYPES.get(op_name, "error_response"),
        "session_id": request.get("session_id"),
        "metadata": {"request_id": request["request_id"]},
    }


def success(op_name: str, request: web.Request, output: Any) -> web.Response:
    """A success envelope around a generated output model."""
    body = _envelope(op_name, request)
    body["status"] = "success"
    body["output"] = unstructure(output)
    return _json(body)


def failure(request: web.Request, error: ApiError) -> web.Response:
    """An error envelope with the code's HTTP status."""
    body = _envelope(request.get("op_name", ""), request)
    body["status"] = "error"
    body["error"] = {"code": error.code, "message": error.message}
    if error.details:
        body["error"]["details"] = error.details
    return _json(body, status=error.status, headers=error.headers)


# ---------------------------------------------------------------------------- middleware


@web.middleware
async def protocol_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Request id, authentication, rate limit, error envelopes and the access log."""
    started = time.perf_counter()
    given = request.headers.get("X-Request-ID", "")
    request["request_id"] = given if _REQUEST_ID_RE.match(given) else "req_" + secrets.token_hex(8)
    state = request.app[STATE]
    response: web.StreamResponse
    try:
        request["owner"] = _authenticate(state, request)
        _rate_limit(state, request)
        response = await handler(request)
    except ApiError as exc:
        response = failure(request, exc)
    except web.HTTPRequestEntityTooLarge:
        response = failure(
            request,
            ApiError(
                "payload_too_large",
                f"request body larger than {state.settings.max_body_bytes} bytes",
            ),
        )
    except web.HTTPNotFound:
        response = failure(
            request, ApiError("not_found", f"no operation at {request.method} {request.path}")
        )
    except web.HTTPMethodNotAllowed as exc:
        response = failure(
            request,
            ApiError(
                "invalid_request",
                f"{request.method} is not allowed on {request.path}; allowed: "
                f"{', '.join(sorted(exc.allowed_methods))}",
            ),
        )
    except (asyncio.CancelledError, ConnectionResetError):
        access_log.info(
            '%s "%s %s" ended early (the client left, or the server is stopping) %.1fms '
            "request_id=%s",
            request.remote,
            request.method,
            request.path,
            (time.perf_counter() - started) * 1000,
            request["request_id"],
        )
        raise
    except sqlite3.Error as exc:  # the job store refused a write (a full disk, say)
        log.error("job store error (request_id=%s): %s", request["request_id"], exc)
        response = failure(
            request,
            ApiError(
                "service_unavailable",
                f"the job store can not be written now ({exc}); nothing was changed",
                headers={"Retry-After": "5"},
            ),
        )
    except Exception:
        log.exception("internal error (request_id=%s)", request["request_id"])
        response = failure(
            request,
            ApiError(
                "internal_error", "the server failed to handle the request; nothing was changed"
            ),
        )
    if not response.prepared:
        response.headers["X-Request-ID"] = request["request_id"]
    access_log.info(
        '%s "%s %s" %d %.1fms request_id=%s',
        request.remote,
        request.method,
        request.path,
        response.status,
        (time.perf_counter() - started) * 1000,
        request["request_id"],
    )
    return response


def _authenticate(state: ServerState, request: web.Request) -> str | None:
    tokens = state.settings.tokens
    if not tokens:
        return None
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            "authentication_error",
            "this server requires 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    token = token.strip()
    if not any(secrets.compare_digest(token, t) for t in tokens):
        raise ApiError(
            "authentication_error", "invalid token", headers={"WWW-Authenticate": "Bearer"}
        )
    return token_fingerprint(token)


def _rate_limit(state: ServerState, request: web.Request) -> None:
    if state.limiter is None:
        return
    decision = state.limiter.check(request["owner"])
    if not decision.allowed:
        retry = max(1, int(decision.retry_after + 0.999))
        raise ApiError(
            "rate_limit_exceeded",
            f"more than {state.settings.rate_limit:g} requests per second; retry in {retry} s",
            details={"retry_after": decision.retry_after},
            headers={"Retry-After": str(retry)},
        )


# ---------------------------------------------------------------------------- request parsing


async def read_request(request: web.Request, op: Operation, model: type[T]) -> T:
    """Read, decode and validate a request envelope into its generated model."""
    ctype = request.content_type
    if ctype != "application/json":
        raise ApiError(
            "unsupported_media_type",
            f"expected Content-Type application/json, got {ctype or 'none'}",
        )
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError("invalid_request", f"body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_request", f"body is a JSON {type(data).__name__}, not an object")
    version = data.get("protocol_version")
    if isinstance(version, str) and re.fullmatch(r"[0-9]{4}\.[0-9]{1,3}", version):
        if version.split(".")[0] != PROTOCOL_VERSION.split(".")[0]:
            raise ApiError(
                "protocol_version_mismatch",
                f"protocol_version {version} is not compatible with this server's "
                f"{PROTOCOL_VERSION}",
                details={"supported": PROTOCOL_VERSION},
            )
    expected = str(attrs.fields_dict(model)["type"].default)  # type: ignore[arg-type]
    if "type" in data and data["type"] != expected:
        raise ApiError(
            "validation_error",
            f"type: unknown message type {str(data['type'])[:64]!r} for {op.method} "
            f"{op.path} (expected {expected!r})",
            details={"path": "type"},
        )
    try:
        parsed = structure(data, model)
    except StructureError as exc:
        raise ApiError(
            "validation_error", str(exc), details={"path": exc.path, "reason": exc.reason}
        ) from None
    request["session_id"] = getattr(parsed, "session_id", None)
    return parsed


def _check_code(state: ServerState, code: str, language: str, path: str) -> None:
    if len(code) > state.settings.max_code_length:
        raise ApiError(
            "validation_error",
            f"{path}.code: must be at most {state.settings.max_code_length} characters long "
            f"on this server (got {len(code)})",
            details={"path": f"{path}.code"},
        )
    if language not in {lang.id for lang in state.executor.languages()}:
        available = ", ".join(sorted(lang.id for lang in state.executor.languages()))
        raise ApiError(
            "unsupported_language",
            f"{path}.language: {language!r} is not installed here; available: {available}",
            details={"path": f"{path}.language", "available": available},
        )


def _check_env(env: Mapping[str, str] | None, path: str) -> None:
    """Environment variables a POSIX environment can carry (names, no NUL in values):
    refused up front, as the executor would refuse them (never quoting a value)."""
    try:
        validate_env(env or {})
    except ValueError as exc:
        raise ApiError("validation_error", f"{path}: {exc}", details={"path": path}) from None


def _provider_error(exc: ProviderError) -> ApiError:
    if isinstance(exc, ProviderNotConfigured):
        return ApiError("provider_not_configured", str(exc))
    headers = {}
    details: dict[str, Any] = {}
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, int(exc.retry_after + 0.999)))
        details["retry_after"] = exc.retry_after
    code = exc.code if exc.code in ERROR_CODES else "generation_error"
    return ApiError(code, exc.message, details=details or None, headers=headers)


def _generation_request(inp: m.TextGenerationInput, request: web.Request) -> GenerationRequest:
    return GenerationRequest(
        prompt=inp.prompt,
        model=inp.model,
        max_tokens=inp.max_tokens,
        temperature=inp.temperature,
        top_p=inp.top_p,
        stop=tuple(inp.stop) if inp.stop else None,
        system_prompt=inp.system_prompt,
        api_key=request.headers.get("X-DeepSeek-Key") or None,
    )


# ---------------------------------------------------------------------------- handlers


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    counts = await state.store.counts()
    info = m.HealthInfo(
        status=m.HealthState.OK,
        version=__version__,
        protocol_version=PROTOCOL_VERSION,
        uptime=round(time.monotonic() - state.started, 3),
        sandbox_backend=state.executor.name,
        text_generation_available=state.providers.configured,
        jobs_pending=counts.get("PENDING", 0),
        jobs_running=state.manager.running_count,
    )
    return success("health", request, info)


async def list_languages(request: web.Request) -> web.Response:
    state = request.app[STATE]
    langs = [
        m.LanguageInfo(
            id=lang.id, name=lang.name, version=lang.version, file_extension=lang.file_extension
        )
        for lang in state.executor.languages()
    ]
    return success("list_languages", request, m.LanguageList(languages=langs))


def _session_info(session: Any) -> m.SessionInfo:
    data = session.to_dict()
    return m.SessionInfo(
        session_id=data["session_id"],
        created_at=data["created_at"],
        expires_at=data["expires_at"],
    )


async def create_session(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_request(request, OPERATIONS["create_session"], m.CreateSessionRequest)
    key = request.headers.get("Idempotency-Key")
    owner = request["owner"]
    if key:
        cached = state.session_keys.get((owner, key))
        if cached is not None:
            if state.sessions.get(cached.session_id, owner, touch=False) is not None:
                return success("create_session", request, cached)
            del state.session_keys[(owner, key)]  # closed or expired: forget the key
    try:
        session = await state.sessions.create(owner, ttl=body.input.ttl)
    except SessionLimitExceeded as exc:
        raise ApiError("rate_limit_exceeded", str(exc)) from None
    info = _session_info(session)
    if key:
        _forget_closed_session_keys(state)
        state.session_keys[(owner, key)] = info
    request["session_id"] = info.session_id
    return success("create_session", request, info)


def _forget_closed_session_keys(state: ServerState) -> None:
    """Keep the Idempotency-Key -> session map from outgrowing the open sessions: once it
    holds more than twice as many keys (plus slack), drop the keys of sessions that are
    closed or expired. Amortized O(1) per create."""
    if len(state.session_keys) <= 2 * len(state.sessions) + 64:
        return
    for owner_key, info in list(state.session_keys.items()):
        if state.sessions.get(info.session_id, owner_key[0], touch=False) is None:
            del state.session_keys[owner_key]


async def close_session(request: web.Request) -> web.Response:
    """Close a session: its jobs still pending or running are canceled, the programs
    running in it stopped, its directory removed; then the answer."""
    state = request.app[STATE]
    session_id = request.match_info["session_id"]
    owner = request["owner"]
    closing = state.sessions.begin_close(session_id, owner)  # no new job or use from now
    if closing is None:
        raise ApiError("not_found", f"no open session {session_id[:64]!r}")
    try:
        await state.manager.cancel_session_jobs(session_id, owner, "its session was closed")
    finally:
        await closing.finish()
    return success(
        "close_session", request, m.SessionClosed(session_id=session_id, closed_at=_now())
    )


async def code_execution(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_request(request, OPERATIONS["code_execution"], m.CodeExecutionRequest)
    inp = body.input
    _check_code(state, inp.code, inp.language, "input")
    _check_env(inp.environment, "input.environment")
    limits = state.sandbox_settings.clamp({"timeout": inp.timeout, "memory": inp.memory_limit})
    e2b_key = request.headers.get("X-E2B-Key") or None

    async def run(workdir: Any) -> web.Response:
        try:
            outcome = await state.executor.execute(
                ExecutionRequest(
                    code=inp.code,
                    language=inp.language,
                    stdin=inp.stdin,
                    env=dict(inp.environment or {}),
                    limits=limits,
                    workdir=workdir,
                    e2b_key=e2b_key,
                )
            )
        except ValueError as exc:  # the executor's word for a malformed request
            raise ApiError("validation_error", f"input: {exc}", details={"path": "input"}) from None
        result = execution_result(outcome, inp.language, strip_progress_lines)
        return success("code_execution", request, structure(result, m.CodeExecutionResult))

    try:
        if body.session_id is None:
            return await run(None)
        async with state.sessions.use(body.session_id, request["owner"]) as session:
            return await run(session.workdir)
    except SessionClosed as exc:
        raise ApiError("not_found", str(exc), details={"path": "session_id"}) from None
    except SessionNotFound:
        raise ApiError(
            "not_found", f"no open session {body.session_id!r}", details={"path": "session_id"}
        ) from None
    except UnsupportedLanguageError as exc:
        raise ApiError("unsupported_language", str(exc)) from None


async def text_generation(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_request(request, OPERATIONS["text_generation"], m.TextGenerationRequest)
    try:
        result = await state.providers.generate(_generation_request(body.input, request))
    except ProviderError as exc:
        raise _provider_error(exc) from None
    return success("text_generation", request, structure(result.to_dict(), m.TextGenerationResult))


async def text_generation_stream(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    body = await read_request(
        request, OPERATIONS["text_generation_stream"], m.TextGenerationRequest
    )
    try:
        chunks = state.providers.stream(_generation_request(body.input, request))
        first = await anext(chunks)  # fail with a JSON envelope before the stream starts
    except ProviderError as exc:
        raise _provider_error(exc) from None
    except StopAsyncIteration:
        raise ApiError("generation_error", "the provider ended the stream at once") from None

    async def events() -> AsyncIterator[Any]:
        index = 0
        text: list[str] = []
        chunk = first
        while True:
            if chunk.delta:
                text.append(chunk.delta)
                yield m.TextGenerationChunk(index=index, delta=chunk.delta)
                index += 1
            if chunk.done:
                usage = chunk.usage
                yield m.TextGenerationDone(
                    result=structure(
                        {
                            "type": "text_generation_result",
                            "text": "".join(text),
                            "model": body.input.model,
                            "generation_time": chunk.generation_time or 0.0,
                            "usage": usage.to_dict()
                            if usage is not None
                            else {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                            "finish_reason": chunk.finish_reason,
                        },
                        m.TextGenerationResult,
                    )
                )
                return
            chunk = await anext(chunks)

    try:
        return await _relay(request, events())
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()


async def _relay(request: web.Request, events: AsyncIterator[Any]) -> web.StreamResponse:
    """Relay typed events as server-sent events, each written as soon as it exists."""
    response = EventSourceResponse(
        headers={"X-Request-ID": request["request_id"]},
        allow_all_methods=True,
        ping_interval=_SSE_PING_SECONDS,
    )
    await response.prepare(request)
    try:
        async with response:
            try:
                async for event in events:
                    await response.send(orjson.dumps(unstructure(event)).decode(), event=event.type)
                # end the response at once: the client reads its end to reuse the connection
                await response.write_eof()
            except (ProviderError, ApiError) as exc:
                error = _provider_error(exc) if isinstance(exc, ProviderError) else exc
                payload = {
                    "type": "stream_error",
                    "error": {"code": error.code, "message": error.message},
                }
                await response.send(orjson.dumps(payload).decode(), event="stream_error")
            except StopAsyncIteration:
                payload = {
                    "type": "stream_error",
                    "error": {
                        "code": "generation_error",
                        "message": "the provider ended the stream early",
                    },
                }
                await response.send(orjson.dumps(payload).decode(), event="stream_error")
    except ConnectionResetError:
        log.info("client left the stream (request_id=%s)", request["request_id"])
    return response


async def _accept_job(
    request: web.Request, operation: str
) -> tuple[m.JobSubmitted, EventStream | None]:
    """Validate and store the job a submit request carries (submit_job and
    submit_job_stream alike); the same Idempotency-Key returns the same job. For
    submit_job_stream, also the job's event stream."""
    state = request.app[STATE]
    raw = await request.read() if request.can_read_body else b""
    body = await read_request(request, OPERATIONS[operation], m.SubmitJobRequest)
    inp = body.input
    if inp.job_type == m.JobType.CODE_EXECUTION:
        if not isinstance(inp.data, m.CodeExecutionInput):
            raise ApiError(
                "validation_error",
                "input.data: a code_execution job needs code and language",
                details={"path": "input.data"},
            )
        _check_code(state, inp.data.code, inp.data.language, "input.data")
        _check_env(inp.data.environment, "input.data.environment")
    elif not isinstance(inp.data, m.TextGenerationInput):
        raise ApiError(
            "validation_error",
            "input.data: a text_generation job needs a prompt",
            details={"path": "input.data"},
        )
    owner = request["owner"]
    if body.session_id is not None and state.sessions.get(body.session_id, owner) is None:
        raise ApiError(
            "not_found", f"no open session {body.session_id!r}", details={"path": "session_id"}
        )
    try:
        submitted = await state.manager.submit(
            owner,
            name=inp.name,
            job_type=inp.job_type.value,
            data=unstructure(inp.data),
            timeout=inp.timeout,
            priority=inp.priority,
            tags=inp.tags,
            session_id=body.session_id,
            idempotency_key=request.headers.get("Idempotency-Key") or None,
            fingerprint=hashlib.sha256(raw).hexdigest(),
            follow=operation == "submit_job_stream",
        )
    except IdempotencyConflict as exc:
        raise ApiError("conflict", str(exc)) from None
    except TooManyActiveJobs as exc:
        raise ApiError("rate_limit_exceeded", str(exc), headers={"Retry-After": "1"}) from None
    job = submitted.job
    if submitted.created:
        state.secrets.remember(job.job_id, request.headers)
    accepted = m.JobSubmitted(
        job_id=job.job_id,
        status=m.JobState(job.status.value),
        created_at=job.to_status_dict()["created_at"],
    )
    return accepted, submitted.stream


async def submit_job(request: web.Request) -> web.Response:
    job, _ = await _accept_job(request, "submit_job")
    return success("submit_job", request, job)


async def submit_job_stream(request: web.Request) -> web.StreamResponse:
    """submit_job, then the job's events on the same connection (as job_events sends
    them): a client that waits for the job needs no second request."""
    job, stream = await _accept_job(request, "submit_job_stream")
    assert stream is not None  # asked for with follow

    async def events() -> AsyncIterator[Any]:
        yield m.JobSubmittedEvent(job=job)
        async for event in stream:
            yield structure(event, m.JobEvent)  # type: ignore[arg-type]

    return await _follow(request, stream, events())


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not re.fullmatch(r"job_[0-9a-f]{32}", job_id):
        raise ApiError("not_found", f"no job {job_id[:64]!r}")
    return job_id


async def job_status(request: web.Request) -> web.Response:
    state = request.app[STATE]
    job_id = _job_id(request)
    record = await state.manager.get(job_id, request["owner"])
    if record is None:
        raise ApiError("not_found", f"no job {job_id}")
    return success("job_status", request, structure(record.to_status_dict(), m.JobStatus))


async def cancel_job(request: web.Request) -> web.Response:
    state = request.app[STATE]
    job_id = _job_id(request)
    body = await read_request(request, OPERATIONS["cancel_job"], m.CancelJobRequest)
    try:
        record = await state.manager.cancel(job_id, request["owner"], body.input.reason)
    except JobNotFound:
        raise ApiError("not_found", f"no job {job_id}") from None
    except JobAlreadyFinished as exc:
        raise ApiError("conflict", str(exc)) from None
    status = record.to_status_dict()
    return success(
        "cancel_job",
        request,
        m.JobCanceled(
            job_id=job_id,
            status=m.JobState(status["status"]),
            canceled_at=status["canceled_at"],
            reason=record.cancel_reason,
        ),
    )


async def list_jobs(request: web.Request) -> web.Response:
    state = request.app[STATE]
    params: dict[str, Any] = dict(request.query)
    for name in params:
        if len(request.query.getall(name)) > 1:  # dict() would keep one of them silently
            raise ApiError(
                "validation_error", f"{name}: given more than once", details={"path": name}
            )
    if "limit" in params:
        try:
            params["limit"] = int(params["limit"])
        except ValueError:
            raise ApiError(
                "validation_error", "limit: expected an integer", details={"path": "limit"}
            ) from None
    try:
        query = structure(params, m.ListJobsQuery)
    except StructureError as exc:
        raise ApiError("validation_error", str(exc), details={"path": exc.path}) from None
    try:
        page = await state.manager.list(
            request["owner"],
            status=query.status.value if query.status else None,
            tag=query.tag,
            limit=query.limit,
            cursor=query.cursor,
        )
    except InvalidCursor as exc:
        raise ApiError("validation_error", f"cursor: {exc}", details={"path": "cursor"}) from None
    jobs = [structure(r.to_status_dict(), m.JobStatus) for r in page.jobs]
    return success("list_jobs", request, m.JobList(jobs=jobs, next_cursor=page.next_cursor))


async def job_events(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    job_id = _job_id(request)
    try:
        stream = await state.manager.subscribe(job_id, request["owner"])
    except JobNotFound:
        raise ApiError("not_found", f"no job {job_id}") from None

    async def events() -> AsyncIterator[Any]:
        async for event in stream:
            yield structure(event, m.JobEvent)  # type: ignore[arg-type]

    return await _follow(request, stream, events())


async def _follow(
    request: web.Request, stream: EventStream, events: AsyncIterator[Any]
) -> web.StreamResponse:
    """Relay a job's events; the subscription ends with the response, however it ends."""
    try:
        return await _relay(request, events)
    finally:
        await stream.aclose()


HANDLERS: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
    "health": health,
    "list_languages": list_languages,
    "create_session": create_session,
    "close_session": close_session,
    "code_execution": code_execution,
    "text_generation": text_generation,
    "text_generation_stream": text_generation_stream,
    "submit_job": submit_job,
    "submit_job_stream": submit_job_stream,
    "job_status": job_status,
    "cancel_job": cancel_job,
    "list_jobs": list_jobs,
    "job_events": job_events,
}


#: operations that run code or a generation while the request lasts
_RUNNING_OPS = frozenset({"code_execution", "text_generation", "text_generation_stream"})


def _named(name: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    async def wrapped(request: web.Request) -> web.StreamResponse:
        request["op_name"] = name
        return await handler(request)

    if name not in _RUNNING_OPS:
        return wrapped

    async def capped(request: web.Request) -> web.StreamResponse:
        running = request.app[STATE].running
        owner = request["owner"]
        if running is None:
            return await wrapped(request)
        if not running.try_acquire(owner):
            raise ApiError(
                "rate_limit_exceeded",
                f"more than {running.limit} executions and generations at once for this "
                "token; retry in 1 s (or submit jobs, which queue)",
                details={"retry_after": 1},
                headers={"Retry-After": "1"},
            )
        try:
            return await wrapped(request)
        finally:
            running.release(owner)

    return capped


# ---------------------------------------------------------------------------- application


def create_app(
    settings: ServerSettings,
    *,
    executor: Executor,
    sandbox_settings: SandboxSettings,
    providers: ProviderRegistry,
) -> web.Application:
    """Build the aiohttp application; services start on app startup, stop on cleanup."""
    missing = set(OPERATIONS) - set(HANDLERS)
    if missing:
        raise RuntimeError(f"operations without a handler: {sorted(missing)}")
    _quiet_client_http_errors()
    app = web.Application(
        client_max_size=settings.max_body_bytes, middlewares=[protocol_middleware]
    )
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    store = JobStore(settings.state_dir / "jobs.sqlite3")
    job_secrets = JobSecrets()
    sessions = SessionManager(
        settings.state_dir,
        ttl=settings.session_ttl,
        prepare_workdir=_workdir_hook(executor, "prepare_workdir"),
        release_workdir=_workdir_hook(executor, "release_workdir"),
    )
    manager = JobManager(
        store,
        {
            "code_execution": code_runner(executor, sandbox_settings, sessions, job_secrets),
            "text_generation": text_runner(providers, job_secrets),
        },
        concurrency=settings.concurrency,
        max_active_per_owner=settings.max_jobs_per_token or None,
        retention=None if settings.retention <= 0 else timedelta(seconds=settings.retention),
    )
    limiter = (
        RateLimiter(settings.rate_limit, settings.rate_burst) if settings.rate_limit > 0 else None
    )
    app[STATE] = ServerState(
        settings=settings,
        sandbox_settings=sandbox_settings,
        executor=executor,
        providers=providers,
        store=store,
        manager=manager,
        sessions=sessions,
        limiter=limiter,
        secrets=job_secrets,
        running=ConcurrencyLimiter(settings.max_running_per_token)
        if settings.max_running_per_token > 0
        else None,
    )
    for name, op in OPERATIONS.items():
        if op.method == "GET":  # and HEAD, as HTTP expects of every GET resource
            app.router.add_get(op.path, _named(name, HANDLERS[name]))
        else:
            app.router.add_route(op.method, op.path, _named(name, HANDLERS[name]))

    async def startup(app: web.Application) -> None:
        await store.open()
        await executor.start()
        await sessions.start()
        await manager.start()
        log.info(
            "DeepExec server %s: sandbox %s, text generation %s",
            __version__,
            executor.name,
            "configured" if providers.configured else "not configured",
        )

    async def shutdown(app: web.Application) -> None:
        await manager.stop(grace=settings.shutdown_grace)

    async def cleanup(app: web.Application) -> None:
        await sessions.stop()
        await executor.close()
        await providers.close()
        await store.close()

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.on_cleanup.append(cleanup)
    return app


def _workdir_hook(executor: Executor, name: str) -> Any:
    """Adapt an executor's ``hook(workdir: Path)`` to the session manager's hooks."""
    method = getattr(executor, name, None)
    if method is None:
        return None

    async def hook(session: Any) -> None:
        await method(session.workdir)

    return hook
