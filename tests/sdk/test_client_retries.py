"""Retries of both clients: which failures are retried for which operations, how many
attempts, the waits in between (Retry-After), and one Idempotency-Key per logical call."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.client_reqrep import ConnectionKey
from aioresponses import aioresponses

from deepexec_sdk.exceptions import (
    MCPConflictError,
    MCPConnectionError,
    MCPError,
    MCPNotFoundError,
    MCPProviderNotConfiguredError,
    MCPRateLimitError,
    MCPServerError,
    MCPServiceUnavailableError,
    MCPTimeoutError,
)

from .conftest import (
    BASE,
    CLIENT_TEST,
    JOB_ID,
    Facade,
    err,
    example,
    execution,
    generation,
    ok,
    sent,
    submitted,
    submitted_event,
)

pytestmark = CLIENT_TEST

HEALTH = f"{BASE}/v1/health"
EXECUTE = f"{BASE}/v1/execute"
GENERATE = f"{BASE}/v1/generate"
JOBS = f"{BASE}/v1/jobs"
JOBS_STREAM = f"{BASE}/v1/jobs/stream"
SESSIONS = f"{BASE}/v1/sessions"


def refused() -> aiohttp.ClientConnectorError:
    """What aiohttp raises when nothing listens: the request never left."""
    key = ConnectionKey("deepexec.test", 80, False, True, None, None, None)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))


# (label, aioresponses kwargs of the failed answer)
FAILURE = dict[str, Any]
TRANSIENT_FOR_READS: list[tuple[str, FAILURE]] = [
    ("connection refused", {"exception": refused()}),
    ("connection reset", {"exception": aiohttp.ServerDisconnectedError()}),
    ("client timeout", {"exception": TimeoutError()}),
    ("500 internal_error", {"status": 500, "payload": err("health", "internal_error")}),
    ("502 generation_error", {"status": 502, "payload": err("health", "generation_error")}),
    (
        "502 html page",
        {"status": 502, "body": "<html>Bad Gateway</html>", "content_type": "text/html"},
    ),
    ("503 service_unavailable", {"status": 503, "payload": err("health", "service_unavailable")}),
    ("503 bare", {"status": 503, "body": "Service Unavailable", "content_type": "text/plain"}),
    ("429 rate_limit_exceeded", {"status": 429, "payload": err("health", "rate_limit_exceeded")}),
    ("429 bare", {"status": 429, "body": "slow down", "content_type": "text/plain"}),
    ("408 bare", {"status": 408, "body": "Request Timeout", "content_type": "text/plain"}),
]


@pytest.mark.parametrize(
    ("what", "failure"), TRANSIENT_FOR_READS, ids=[c[0] for c in TRANSIENT_FOR_READS]
)
async def test_idempotent_operations_retry_transient_failures(
    make_facade: Callable[..., Facade],
    mock_http: aioresponses,
    sleeps: list[float],
    what: str,
    failure: FAILURE,
) -> None:
    client = make_facade(max_retries=3)
    mock_http.get(HEALTH, **failure)
    mock_http.get(HEALTH, **failure)
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    health = await client("health")

    assert health.status == "ok"
    assert len(sent(mock_http, "GET", HEALTH)) == 3
    assert len(sleeps) == 2


NOT_RETRIED: list[tuple[str, FAILURE, type[MCPError]]] = [
    ("400 invalid_request", {"status": 400, "payload": err("health", "invalid_request")}, MCPError),
    ("401", {"status": 401, "payload": err("health", "authentication_error")}, MCPError),
    ("404 not_found", {"status": 404, "payload": err("health", "not_found")}, MCPNotFoundError),
    ("409 conflict", {"status": 409, "payload": err("health", "conflict")}, MCPConflictError),
    ("422 validation", {"status": 422, "payload": err("health", "validation_error")}, MCPError),
    (
        "503 provider_not_configured",
        {"status": 503, "payload": err("health", "provider_not_configured")},
        MCPProviderNotConfiguredError,
    ),
    (
        "504 execution_timeout",
        {"status": 504, "payload": err("health", "execution_timeout")},
        MCPTimeoutError,
    ),
    ("malformed 200", {"status": 200, "body": "{nope"}, MCPError),
]


@pytest.mark.parametrize(
    ("what", "failure", "expected"), NOT_RETRIED, ids=[c[0] for c in NOT_RETRIED]
)
async def test_permanent_failures_are_not_retried(
    make_facade: Callable[..., Facade],
    mock_http: aioresponses,
    sleeps: list[float],
    what: str,
    failure: FAILURE,
    expected: type[MCPError],
) -> None:
    client = make_facade(max_retries=3)
    mock_http.get(HEALTH, **failure)
    mock_http.get(HEALTH, payload=example("HealthResponse"))  # never reached

    with pytest.raises(expected):
        await client("health")

    assert len(sent(mock_http, "GET", HEALTH)) == 1
    assert sleeps == []


async def test_retries_stop_after_max_retries_with_the_last_error(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    client = make_facade(max_retries=2)
    mock_http.get(HEALTH, status=503, payload=err("health", "service_unavailable", "1st"))
    mock_http.get(HEALTH, status=503, payload=err("health", "service_unavailable", "2nd"))
    mock_http.get(HEALTH, status=503, payload=err("health", "service_unavailable", "3rd"))
    mock_http.get(HEALTH, payload=example("HealthResponse"))  # never reached

    with pytest.raises(MCPServiceUnavailableError) as info:
        await client("health")

    assert "3rd" in str(info.value)
    assert len(sent(mock_http, "GET", HEALTH)) == 3
    assert len(sleeps) == 2


async def test_max_retries_zero_means_one_attempt(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    client = make_facade(max_retries=0)
    mock_http.get(HEALTH, exception=refused())
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    with pytest.raises(MCPConnectionError):
        await client("health")

    assert len(sent(mock_http, "GET", HEALTH)) == 1
    assert sleeps == []


async def test_backoff_grows_exponentially(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    client = make_facade(max_retries=3, retry_delay=0.1)
    for _ in range(3):
        mock_http.get(HEALTH, status=500, payload=err("health", "internal_error"))
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    await client("health")

    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps):
        nominal = 0.1 * 2**n
        assert 0.75 * nominal <= delay <= nominal  # jitter only ever shortens


async def test_retry_after_replaces_the_backoff(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    client = make_facade(max_retries=2, retry_delay=5.0)
    mock_http.get(
        HEALTH,
        status=429,
        payload=err("health", "rate_limit_exceeded"),
        headers={"Retry-After": "0.25"},
    )
    mock_http.get(
        HEALTH,
        status=503,
        payload=err("health", "service_unavailable"),
        headers={"Retry-After": "0"},
    )
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    await client("health")

    assert sleeps == [0.25, 0.0]


async def test_retry_after_as_a_date_or_in_milliseconds_is_honoured(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    """Proxies send Retry-After as an HTTP-date; some servers retry-after-ms."""
    client = make_facade(max_retries=3, retry_delay=5.0)
    in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
    mock_http.get(
        HEALTH,
        status=503,
        body=b"<html>busy</html>",
        content_type="text/html",
        headers={"Retry-After": in_a_minute},
    )
    mock_http.get(
        HEALTH,
        status=503,
        payload=err("health", "service_unavailable"),
        headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"},  # past: at once
    )
    mock_http.get(
        HEALTH,
        status=429,
        payload=err("health", "rate_limit_exceeded"),
        headers={"retry-after-ms": "1500"},
    )
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    await client("health")

    assert 58 <= sleeps[0] <= 60  # capped by max_retry_after, if that is lower
    assert sleeps[1:] == [0.0, 1.5]


async def test_retry_after_is_really_waited(
    make_facade: Callable[..., Facade], mock_http: aioresponses
) -> None:
    client = make_facade(max_retries=1, retry_delay=30.0)
    mock_http.get(
        HEALTH,
        status=429,
        payload=err("health", "rate_limit_exceeded"),
        headers={"Retry-After": "0.2"},
    )
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    started = time.monotonic()
    await client("health")
    elapsed = time.monotonic() - started

    assert 0.2 <= elapsed < 5  # waited Retry-After, not the 30 s back-off


async def test_rate_limit_retries_exhausted_keeps_retry_after(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    client = make_facade(max_retries=1)
    for _ in range(2):
        mock_http.get(
            HEALTH,
            status=429,
            payload=err("health", "rate_limit_exceeded"),
            headers={"Retry-After": "3"},
        )

    with pytest.raises(MCPRateLimitError) as info:
        await client("health")

    assert info.value.retry_after == 3.0
    assert sleeps == [3.0]


# --------------------------------------------------------------------------- idempotency keys


def _keys(mocked: aioresponses, method: str, url: str) -> list[str]:
    return [call.kwargs["headers"]["Idempotency-Key"] for call in sent(mocked, method, url)]


async def test_one_idempotency_key_per_logical_call_reused_by_its_retries(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    client = make_facade(max_retries=3)
    stream_answer = {"body": submitted_event(), "content_type": "text/event-stream"}
    # may have been created:
    mock_http.post(JOBS_STREAM, exception=aiohttp.ServerDisconnectedError())
    mock_http.post(JOBS_STREAM, status=503, payload=err("submit_job", "service_unavailable"))
    mock_http.post(JOBS_STREAM, **stream_answer)
    mock_http.post(JOBS_STREAM, **stream_answer)

    await client("execute_code_job", "print(1)", "python")
    await client("execute_code_job", "print(1)", "python")

    keys = _keys(mock_http, "POST", JOBS_STREAM)
    assert len(keys) == 4
    assert keys[0] == keys[1] == keys[2]  # the retries of the first call
    assert keys[3] != keys[0]  # the second call


@pytest.mark.parametrize(
    "no_route",
    [
        {"status": 405, "body": "405: Method Not Allowed"},  # GET /v1/jobs/{job_id} exists
        {"status": 404, "body": "404: Not Found"},
        # a DeepExec server of protocol 2024.1
        {"status": 400, "payload": err("submit_job", "invalid_request", "POST is not allowed")},
    ],
)
async def test_a_server_without_submit_job_stream_gets_submit_job_with_the_same_key(
    make_facade: Callable[..., Facade],
    mock_http: aioresponses,
    sleeps: list[float],
    no_route: dict[str, Any],
) -> None:
    client = make_facade(max_retries=3)
    mock_http.post(JOBS_STREAM, **no_route)
    mock_http.post(JOBS, status=503, payload=err("submit_job", "service_unavailable"))
    mock_http.post(JOBS, payload=ok("submit_job", submitted()))
    mock_http.post(JOBS, payload=ok("submit_job", submitted()))

    first = await client("execute_code_job", "print(1)", "python")
    second = await client("execute_code_job", "print(1)", "python")

    assert first.job_id == second.job_id == JOB_ID
    (stream_key,) = _keys(mock_http, "POST", JOBS_STREAM)  # asked once, then no more
    keys = _keys(mock_http, "POST", JOBS)
    assert len(keys) == 3
    assert keys[0] == keys[1] == stream_key  # one logical call: one key, retries included
    assert keys[2] != stream_key
    assert len(sleeps) == 1  # the 503 was retried once


async def test_create_session_retries_with_one_key(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    client = make_facade(max_retries=1)
    mock_http.post(SESSIONS, status=502, body="<html>bad gateway</html>", content_type="text/html")
    mock_http.post(SESSIONS, payload=example("CreateSessionResponse"))

    session = await client("create_session")

    keys = _keys(mock_http, "POST", SESSIONS)
    assert len(keys) == 2 and keys[0] == keys[1]
    assert session.session_id.startswith("sess_")


async def test_idempotency_keys_are_distinct_across_many_calls(
    make_facade: Callable[..., Facade], mock_http: aioresponses
) -> None:
    client = make_facade(max_retries=0)
    mock_http.post(EXECUTE, payload=ok("code_execution", execution()), repeat=True)

    for _ in range(20):
        await client("execute_code_and_wait", "print(1)", "python")

    keys = _keys(mock_http, "POST", EXECUTE)
    assert len(set(keys)) == 20


async def test_gets_and_deletes_carry_no_idempotency_key(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.get(f"{JOBS}/{JOB_ID}", payload=example("JobStatusResponse"))

    await facade("get_job_status", JOB_ID)

    assert "Idempotency-Key" not in sent(mock_http, "GET", f"{JOBS}/{JOB_ID}")[0].kwargs["headers"]


# --------------------------------------------------------------------------- non-idempotent


DIRECT = [
    ("execute_code_and_wait", EXECUTE, ("print(1)", "python"), ok("code_execution", execution())),
    ("generate_text_and_wait", GENERATE, ("Hi",), ok("text_generation", generation())),
]

NOT_RETRIED_DIRECT: list[tuple[str, FAILURE]] = [
    ("500 internal_error", {"status": 500, "payload": err("x", "internal_error")}),
    ("502 generation_error", {"status": 502, "payload": err("x", "generation_error")}),
    ("502 html page", {"status": 502, "body": "<html/>", "content_type": "text/html"}),
    ("connection reset", {"exception": aiohttp.ServerDisconnectedError()}),
    ("client timeout", {"exception": TimeoutError()}),
    ("408 bare", {"status": 408, "body": "Request Timeout", "content_type": "text/plain"}),
]


@pytest.mark.parametrize(("method", "url", "args", "answer"), DIRECT, ids=[d[0] for d in DIRECT])
@pytest.mark.parametrize(
    ("what", "failure"), NOT_RETRIED_DIRECT, ids=[c[0] for c in NOT_RETRIED_DIRECT]
)
async def test_direct_execution_and_generation_are_not_run_twice(
    make_facade: Callable[..., Facade],
    mock_http: aioresponses,
    sleeps: list[float],
    method: str,
    url: str,
    args: tuple[Any, ...],
    answer: dict[str, Any],
    what: str,
    failure: FAILURE,
) -> None:
    client = make_facade(max_retries=3)
    mock_http.post(url, **failure)
    mock_http.post(url, payload=answer)  # never reached

    with pytest.raises(MCPError) as info:
        await client(method, *args)

    assert isinstance(info.value, (MCPServerError, MCPConnectionError, MCPTimeoutError))
    assert len(sent(mock_http, "POST", url)) == 1
    assert sleeps == []


RETRIED_DIRECT: list[tuple[str, FAILURE]] = [
    ("connection refused", {"exception": refused()}),
    ("429 rate_limit_exceeded", {"status": 429, "payload": err("x", "rate_limit_exceeded")}),
    ("429 bare", {"status": 429, "body": "slow down", "content_type": "text/plain"}),
    ("503 service_unavailable", {"status": 503, "payload": err("x", "service_unavailable")}),
    ("503 bare", {"status": 503, "body": "Service Unavailable", "content_type": "text/plain"}),
]


@pytest.mark.parametrize(("method", "url", "args", "answer"), DIRECT, ids=[d[0] for d in DIRECT])
@pytest.mark.parametrize(("what", "failure"), RETRIED_DIRECT, ids=[c[0] for c in RETRIED_DIRECT])
async def test_direct_calls_retry_what_proves_nothing_ran(
    make_facade: Callable[..., Facade],
    mock_http: aioresponses,
    sleeps: list[float],
    method: str,
    url: str,
    args: tuple[Any, ...],
    answer: dict[str, Any],
    what: str,
    failure: FAILURE,
) -> None:
    client = make_facade(max_retries=3)
    mock_http.post(url, **failure)
    mock_http.post(url, payload=answer)

    await client(method, *args)

    keys = _keys(mock_http, "POST", url)
    assert len(keys) == 2 and keys[0] == keys[1]
    assert len(sleeps) == 1


async def test_provider_not_configured_is_not_retried_even_though_503(
    make_facade: Callable[..., Facade], mock_http: aioresponses, sleeps: list[float]
) -> None:
    client = make_facade(max_retries=3)
    mock_http.post(
        GENERATE,
        status=503,
        payload=err("text_generation", "provider_not_configured", "set DEEPSEEK_API_KEY"),
    )

    with pytest.raises(MCPProviderNotConfiguredError):
        await client("generate_text_and_wait", "Hi")

    assert len(sent(mock_http, "POST", GENERATE)) == 1
