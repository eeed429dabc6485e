"""Errors: client-side validation (nothing sent), every protocol error code mapped to its
exception class, malformed answers, transport failures, and secrets kept out of reprs,
exception texts and logs. Both clients."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aioresponses import aioresponses
from deepexec_protocol.constants import ERROR_CODES

from deepexec_sdk import exceptions
from deepexec_sdk._logging import logger as sdk_logger
from deepexec_sdk.exceptions import (
    MCPAuthError,
    MCPConnectionError,
    MCPError,
    MCPProtocolError,
    MCPProtocolVersionError,
    MCPServerError,
    MCPTimeoutError,
    MCPValidationError,
)

from .conftest import (
    API_KEY,
    BASE,
    CLIENT_TEST,
    DEEPSEEK_KEY,
    E2B_KEY,
    JOB_ID,
    SECRETS,
    Facade,
    ScriptedServer,
    err,
    example,
    execution,
    ok,
    sent,
)

pytestmark = CLIENT_TEST

EXECUTE = f"{BASE}/v1/execute"
HEALTH = f"{BASE}/v1/health"


# --------------------------------------------------------------------------- validation

CODE = ("print(1)", "python")
VALIDATION_CASES: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
    ("input.code", "execute_code_and_wait", ("x" * 100_001, "python"), {}),
    ("input.code", "execute_code_and_wait", ("", "python"), {}),
    ("input.language", "execute_code_and_wait", ("print(1)", "Py thon"), {}),
    ("input.language", "execute_code_and_wait", ("print(1)", "python3!"), {}),
    ("input.timeout", "execute_code_and_wait", CODE, {"timeout": 0}),
    ("input.timeout", "execute_code_and_wait", CODE, {"timeout": 3601}),
    ("input.memory_limit", "execute_code_and_wait", CODE, {"memory_limit": 1024}),
    (
        "input.environment",
        "execute_code_and_wait",
        CODE,
        {"environment": {f"V{i}": "x" for i in range(65)}},
    ),
    ("session_id", "execute_code_and_wait", CODE, {"session_id": "sess_nope"}),
    ("input.temperature", "generate_text_and_wait", ("Hi",), {"temperature": 3}),
    ("input.temperature", "generate_text_and_wait", ("Hi",), {"temperature": -0.1}),
    ("input.max_tokens", "generate_text_and_wait", ("Hi",), {"max_tokens": 0}),
    ("input.max_tokens", "generate_text_and_wait", ("Hi",), {"max_tokens": 32769}),
    ("input.top_p", "generate_text_and_wait", ("Hi",), {"top_p": 0}),
    ("input.prompt", "generate_text_and_wait", ("",), {}),
    ("input.model", "generate_text_and_wait", ("Hi",), {"model": "bad model name"}),
    ("input.stop", "generate_text_and_wait", ("Hi",), {"stop": ["a", "b", "c", "d", "e"]}),
    ("input.temperature", "generate_text_stream", ("Hi",), {"temperature": 3}),
    ("input.data.temperature", "generate_text_job", ("Hi",), {"temperature": 3}),
    ("input.tags[0]", "execute_code_job", CODE, {"tags": ["bad tag"]}),
    ("input.tags[1]", "execute_code_job", CODE, {"tags": ["ok", "x" * 65]}),
    ("input.priority", "execute_code_job", CODE, {"priority": 101}),
    ("input.data.code", "execute_code_stream", ("", "python"), {}),
    ("input.job_type", "submit_job", ("n", "shell", {"code": "x", "language": "bash"}), {}),
    ("input.data.language", "submit_job", ("n", "code_execution", {"code": "x"}), {}),
    ("input.data.prompt", "submit_job", ("n", "text_generation", {"prompt": ""}), {}),
    ("input.name", "submit_job", ("", "code_execution", {"code": "x", "language": "py"}), {}),
    ("job_id", "get_job_status", ("job_xyz",), {}),
    ("job_id", "get_job_status", ("job_" + "0123456789ABCDEF" * 2,), {}),
    ("job_id", "get_job_status", ("../../v1/health",), {}),
    ("job_id", "cancel_job", ("nope",), {}),
    ("job_id", "wait_for_job", ("job_1",), {}),
    ("job_id", "get_code_execution_result", ("job_1",), {}),
    ("job_id", "get_text_generation_result", ("sess_0123456789abcdef0123456789abcdef",), {}),
    ("input.reason", "cancel_job", (JOB_ID,), {"reason": "x" * 501}),
    ("input.ttl", "create_session", (), {"ttl": 0}),
    ("session_id", "close_session", ("sess_x",), {}),
    ("input.tags", "execute_code_job", CODE, {"tags": "urgent"}),  # a str is no list of tags
    (
        "input.tags",
        "submit_job",
        ("n", "code_execution", {"code": "x", "language": "py"}),
        {"tags": "t"},
    ),
    ("input.data", "submit_job", ("n", "code_execution", [("code", "x")]), {}),
    ("input.data", "submit_job", ("n", "code_execution", None), {}),
    ("poll_interval", "wait_for_job", (JOB_ID,), {"poll_interval": -1}),
    ("poll_interval", "wait_for_job", (JOB_ID,), {"poll_interval": 0}),
    ("poll_interval", "wait_for_job", (JOB_ID,), {"poll_interval": float("nan")}),
    ("poll_interval", "wait_for_job", (JOB_ID,), {"poll_interval": "1"}),
    ("max_wait_time", "wait_for_job", (JOB_ID,), {"max_wait_time": -1}),
    ("max_wait_time", "wait_for_job", (JOB_ID,), {"max_wait_time": float("inf")}),
    ("max_wait_time", "get_code_execution_result", (JOB_ID,), {"max_wait_time": float("nan")}),
    ("max_wait_time", "get_text_generation_result", (JOB_ID,), {"max_wait_time": True}),
    # a lone surrogate: a str that is no Unicode text, which JSON can not carry
    ("input.code", "execute_code_and_wait", ("print('\ud800')", "python"), {}),
    ("input.stdin", "execute_code_and_wait", CODE, {"stdin": "\udcff"}),
    ("input.environment.A", "execute_code_and_wait", CODE, {"environment": {"A": "\ud800"}}),
    ("input.prompt", "generate_text_and_wait", ("Hi \ud800",), {}),
    ("input.prompt", "generate_text_stream", ("Hi \ud800",), {}),
    ("input.data.code", "execute_code_job", ("\ud800", "python"), {}),
    ("input.data.code", "execute_code_stream", ("\ud800", "python"), {}),
    (
        "input.name",
        "submit_job",
        ("n\ud800", "code_execution", {"code": "x", "language": "py"}),
        {},
    ),
]


@pytest.mark.parametrize(
    ("path", "method", "args", "kwargs"),
    VALIDATION_CASES,
    ids=[f"{m}-{p}-{i}" for i, (p, m, _, _) in enumerate(VALIDATION_CASES)],
)
async def test_bad_input_raises_validation_error_naming_the_path_and_sends_nothing(
    facade: Facade,
    mock_http: aioresponses,
    path: str,
    method: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    with pytest.raises(MCPValidationError) as info:
        result = await facade(method, *args, **kwargs)
        if hasattr(result, "__aiter__") or hasattr(result, "__iter__"):
            await facade.drain(result)

    assert info.value.path == path
    assert path in str(info.value)
    assert info.value.code == "validation_error"
    assert mock_http.requests == {}  # no route registered, and none was even tried


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("tag", {"tag": "bad tag"}),
        ("status", {"status": "DONE"}),
        ("limit", {"page_size": 0}),
        ("limit", {"page_size": 101}),
        ("limit", {"limit": "3"}),
        ("limit", {"limit": -1}),
    ],
)
async def test_list_jobs_validates_before_iterating(
    facade: Facade, mock_http: aioresponses, path: str, kwargs: dict[str, Any]
) -> None:
    # raised by the call itself, not on the first step of the iteration
    with pytest.raises(MCPValidationError) as info:
        await facade("list_jobs", **kwargs)

    assert info.value.path == path
    assert mock_http.requests == {}


async def test_job_events_validates_the_job_id_at_once(
    facade: Facade, mock_http: aioresponses
) -> None:
    with pytest.raises(MCPValidationError) as info:
        await facade("job_events", "job_bad")

    assert info.value.path == "job_id"
    assert mock_http.requests == {}


# --------------------------------------------------------------------------- error codes


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
async def test_every_error_code_maps_to_its_exception_class(
    facade: Facade, mock_http: aioresponses, code: str
) -> None:
    info = ERROR_CODES[code]
    mock_http.get(
        HEALTH,
        payload=err("health", code, f"server says {code}", {"path": "input.x"}),
        status=info.http_status,
        headers={"X-Request-ID": "req_abc123"},
    )

    with pytest.raises(MCPError) as raised:
        await facade("health")

    exc = raised.value
    assert type(exc) is getattr(exceptions, info.exception)
    assert exc.code == code
    assert exc.http_status == info.http_status
    assert exc.request_id == "req_abc123"
    assert exc.details == {"path": "input.x"}
    assert f"server says {code}" in str(exc) and "req_abc123" in str(exc)
    assert len(sent(mock_http, "GET", HEALTH)) == 1  # max_retries=0: a single attempt


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
async def test_error_codes_of_a_post_operation(
    facade: Facade, mock_http: aioresponses, code: str
) -> None:
    info = ERROR_CODES[code]
    mock_http.post(
        EXECUTE,
        payload=err("code_execution", code),
        status=info.http_status,
        headers={"X-Request-ID": "req_post"},
    )

    with pytest.raises(MCPError) as raised:
        await facade("execute_code_and_wait", "print(1)", "python")

    assert type(raised.value) is getattr(exceptions, info.exception)
    assert (raised.value.code, raised.value.request_id) == (code, "req_post")


async def test_rate_limit_error_carries_retry_after(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.get(
        HEALTH,
        payload=err("health", "rate_limit_exceeded"),
        status=429,
        headers={"Retry-After": "7"},
    )

    with pytest.raises(exceptions.MCPRateLimitError) as raised:
        await facade("health")

    assert raised.value.retry_after == 7.0


# --------------------------------------------------------------------------- bad answers


def _json(body: Any) -> dict[str, Any]:
    return {"payload": body}


BAD_ANSWERS: list[tuple[str, dict[str, Any], type[MCPError]]] = [
    (
        "malformed JSON",
        {"body": b'{"protocol_version": "2024.1", "ty', "status": 200},
        MCPProtocolError,
    ),
    ("empty body", {"body": b"", "status": 200}, MCPProtocolError),
    (
        "HTML 502 page",
        {
            "body": b"<html><body>502 Bad Gateway</body></html>",
            "status": 502,
            "content_type": "text/html",
        },
        MCPServerError,
    ),
    (
        "HTML 200 page",
        {"body": b"<html>captive portal</html>", "status": 200, "content_type": "text/html"},
        MCPProtocolError,
    ),
    ("JSON array", {"payload": [1, 2, 3]}, MCPProtocolError),
    ("JSON string", {"body": b'"ok"', "status": 200}, MCPProtocolError),
    (
        "wrong protocol version",
        {"payload": {**ok("health", example("HealthInfo")), "protocol_version": "2023.1"}},
        MCPProtocolVersionError,
    ),
    (
        "no protocol version",
        {
            "payload": {
                k: v
                for k, v in ok("health", example("HealthInfo")).items()
                if k != "protocol_version"
            }
        },
        MCPProtocolVersionError,
    ),
    ("success without output", {"payload": ok("health", None)}, MCPProtocolError),
    (
        "error without error object",
        {"payload": {**ok("health", None), "status": "error"}, "status": 500},
        MCPError,
    ),
    (
        "output of the wrong shape",
        {"payload": ok("health", {"status": "ok"})},
        MCPProtocolError,
    ),
    (
        "unknown response status",
        {"payload": {**ok("health", example("HealthInfo")), "status": "maybe"}},
        MCPProtocolError,
    ),
    (
        "unknown error code",
        {"payload": err("health", "quota_exceeded_v2"), "status": 403},
        MCPError,
    ),
    (
        "bare 404 text",
        {"body": b"404: Not Found", "status": 404, "content_type": "text/plain"},
        MCPProtocolError,
    ),
    ("bare 500 json garbage", {"body": b"oops", "status": 500}, MCPServerError),
]


@pytest.mark.parametrize(
    ("what", "answer", "expected"), BAD_ANSWERS, ids=[c[0] for c in BAD_ANSWERS]
)
async def test_malformed_answers_raise_mcp_errors(
    facade: Facade,
    mock_http: aioresponses,
    what: str,
    answer: dict[str, Any],
    expected: type[MCPError],
) -> None:
    mock_http.get(HEALTH, **answer)

    with pytest.raises(MCPError) as raised:
        await facade("health")

    assert isinstance(raised.value, expected), repr(raised.value)


async def test_a_newer_minor_version_with_unknown_fields_is_accepted(
    facade: Facade, mock_http: aioresponses
) -> None:
    answer = ok("health", {**example("HealthInfo"), "gpu_count": 2})
    answer["protocol_version"] = "2024.9"
    answer["trace"] = {"span": "x"}
    mock_http.get(HEALTH, payload=answer)

    assert (await facade("health")).status == "ok"


TRANSPORT_FAILURES: list[tuple[str, Callable[[], BaseException], type[MCPError]]] = [
    ("refused", lambda: aiohttp.ClientConnectionError("Connection refused"), MCPConnectionError),
    ("disconnected", lambda: aiohttp.ServerDisconnectedError(), MCPConnectionError),
    ("payload", lambda: aiohttp.ClientPayloadError("truncated"), MCPConnectionError),
    (
        "os error",
        lambda: aiohttp.ClientOSError(104, "Connection reset by peer"),
        MCPConnectionError,
    ),
    ("timeout", lambda: TimeoutError(), MCPTimeoutError),
]


@pytest.mark.parametrize(
    ("what", "make", "expected"), TRANSPORT_FAILURES, ids=[c[0] for c in TRANSPORT_FAILURES]
)
async def test_transport_failures_raise_mcp_errors(
    facade: Facade,
    mock_http: aioresponses,
    what: str,
    make: Callable[[], BaseException],
    expected: type[MCPError],
) -> None:
    mock_http.post(EXECUTE, exception=make())

    with pytest.raises(expected) as raised:
        await facade("execute_code_and_wait", "print(1)", "python")

    assert raised.value.http_status is None


async def test_client_timeout_error_says_how_long(
    make_facade: Any, mock_http: aioresponses
) -> None:
    client = make_facade(timeout=1.5, max_retries=0)
    mock_http.get(HEALTH, exception=TimeoutError())

    with pytest.raises(MCPTimeoutError) as raised:
        await client("health")

    assert raised.value.timeout == 1.5


async def test_nothing_but_mcp_errors_escape_for_unreachable_server(make_facade: Any) -> None:
    # a real refused connection (nothing listens on port 9 of the loopback)
    client = make_facade(endpoint="http://127.0.0.1:9", max_retries=0)

    with pytest.raises(MCPConnectionError) as raised:
        await client("health")

    assert raised.value.code is None and raised.value.http_status is None


# --------------------------------------------------------------------------- secrets


def _keyed(make_facade: Any, **config: Any) -> Facade:
    facade: Facade = make_facade(
        deepseek_key=DEEPSEEK_KEY, e2b_key=E2B_KEY, api_key=API_KEY, **config
    )
    return facade


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


async def test_keys_are_sent_as_headers_on_every_request(
    make_facade: Any, mock_http: aioresponses
) -> None:
    client = _keyed(make_facade, max_retries=0)
    mock_http.get(HEALTH, payload=example("HealthResponse"))
    mock_http.post(EXECUTE, payload=ok("code_execution", execution()))

    await client("health")
    await client("execute_code_and_wait", "print(1)", "python")

    for call in [*sent(mock_http, "GET", HEALTH), *sent(mock_http, "POST", EXECUTE)]:
        headers = call.kwargs["headers"]
        assert headers["X-DeepSeek-Key"] == DEEPSEEK_KEY
        assert headers["X-E2B-Key"] == E2B_KEY
        assert headers["Authorization"] == f"Bearer {API_KEY}"


async def test_no_key_headers_when_no_keys(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    await facade("health")

    headers = sent(mock_http, "GET", HEALTH)[0].kwargs["headers"]
    assert not {"X-DeepSeek-Key", "X-E2B-Key", "Authorization"} & set(headers)


async def test_keys_from_the_environment_are_sent(
    make_facade: Any, mock_http: aioresponses, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPEXEC_DEEPSEEK_KEY", DEEPSEEK_KEY)
    monkeypatch.setenv("DEEPEXEC_E2B_KEY", E2B_KEY)
    client = make_facade(max_retries=0)
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    await client("health")

    headers = sent(mock_http, "GET", HEALTH)[0].kwargs["headers"]
    assert (headers["X-DeepSeek-Key"], headers["X-E2B-Key"]) == (DEEPSEEK_KEY, E2B_KEY)


async def test_keys_never_appear_in_reprs(make_facade: Any) -> None:
    client = _keyed(make_facade)

    for text in (
        repr(client.client),
        str(client.client),
        repr(client.client.config),
        str(client.client.config),
    ):
        _assert_no_secret(text)
    assert "deepexec.test" in repr(client.client)


async def test_keys_never_appear_in_exceptions_or_debug_logs(
    make_facade: Any,
    mock_http: aioresponses,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    sleeps: list[float],
) -> None:
    monkeypatch.setenv("DEEPEXEC_LOG", "debug")
    level = sdk_logger.level
    try:
        client = _keyed(make_facade, max_retries=2)
        caplog.set_level(logging.DEBUG)  # everything, every logger
        # a server that misbehaves and echoes the key back in its messages
        mock_http.get(
            HEALTH,
            payload=err(
                "health",
                "authentication_error",
                f"bad key {DEEPSEEK_KEY}",
                {"header": f"X-DeepSeek-Key: {DEEPSEEK_KEY}", "token": API_KEY},
            ),
            status=401,
        )
        mock_http.post(
            EXECUTE,
            status=503,
            payload=err("code_execution", "service_unavailable", f"e2b said no to {E2B_KEY}"),
            repeat=True,
        )
        mock_http.get(
            f"{BASE}/v1/languages", exception=aiohttp.ClientConnectionError("refused"), repeat=True
        )
        raised: list[MCPError] = []
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: client("health"),
            lambda: client("execute_code_and_wait", "print(1)", "python"),
            lambda: client("list_languages"),
            lambda: client("generate_text_and_wait", "hi", temperature=9),
        ]
        for call in calls:
            with pytest.raises(MCPError) as info:
                await call()
            raised.append(info.value)
    finally:
        sdk_logger.setLevel(level)

    assert isinstance(raised[0], MCPAuthError)
    assert "bad key" in str(raised[0])
    for exc in raised:
        for text in (str(exc), repr(exc), repr(exc.args), repr(exc.details), exc.message):
            _assert_no_secret(text)
    # the DEBUG log did record the attempts and the retries
    assert any("attempt" in r.getMessage() for r in caplog.records)
    assert any("Retrying" in r.getMessage() for r in caplog.records)
    _assert_no_secret(caplog.text)
    for record in caplog.records:
        _assert_no_secret(record.getMessage())
    assert re.search(r"attempt \d", caplog.text)


def _pieces(secret: str, size: int = 8) -> list[str]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


async def test_a_piece_of_a_key_quoted_by_the_http_layer_is_masked_in_errors_and_logs(
    make_facade: Any,
    mock_http: aioresponses,
    caplog: pytest.LogCaptureFixture,
    sleeps: list[float],
) -> None:
    """aiohttp's 400 for an oversized header, or a proxy's error page, quotes the start of
    what was sent, cut short: no pattern recognises a bare piece of an opaque token. Every
    run of 8 characters of a configured secret, or of a sensitive header's value, is
    masked out of the error and of the retry log."""
    team_token = "QzX81mPq7rT2vW9yK4nB6cD3fG5hJ0"
    client = _keyed(make_facade, max_retries=1, headers={"X-Team-Token": team_token})
    caplog.set_level(logging.INFO, logger="deepexec")
    mock_http.get(
        HEALTH,
        status=400,
        body=f"Got more than 8190 bytes when reading: b'Bearer {API_KEY[:20]}'".encode(),
        content_type="text/plain",
    )
    mock_http.get(
        f"{BASE}/v1/languages",
        status=503,
        body=f"<html>upstream refused token {team_token[3:25]}</html>".encode(),
        content_type="text/html",
        repeat=True,
    )
    with pytest.raises(MCPProtocolError) as refused:
        await client("health")
    with pytest.raises(MCPServerError) as unavailable:
        await client("list_languages")

    assert "Got more than 8190 bytes when reading" in refused.value.message
    assert "upstream refused token ***" in unavailable.value.message
    assert any("Retrying" in r.getMessage() for r in caplog.records)
    texts = [
        str(refused.value),
        repr(unavailable.value),
        caplog.text,
        *(r.getMessage() for r in caplog.records),
    ]
    for text in texts:
        for piece in [*_pieces(API_KEY), *_pieces(team_token)]:
            assert piece not in text, (piece, text)


async def test_an_answer_cut_off_mid_body_raises_connection_error_and_the_next_call_works(
    live: Facade, server: ScriptedServer
) -> None:
    """The server promises a body and closes the connection halfway (a crash, a proxy
    timeout): MCPConnectionError, and the broken connection is not used again."""
    whole = orjson.dumps(example("CodeExecutionResponse"))
    cut = [True]

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        if not cut[0]:
            return web.Response(body=whole, content_type="application/json")
        cut[0] = False
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = len(whole)
        await response.prepare(request)
        await response.write(whole[: len(whole) // 2])
        assert request.transport is not None
        request.transport.close()
        return response

    server.on("POST", "/v1/execute", handler)

    with pytest.raises(MCPConnectionError):
        await live("execute_code_and_wait", "print(1)", "python")
    result = await live("execute_code_and_wait", "print(1)", "python", check=False)

    assert result.exit_code == example("CodeExecutionResponse")["output"]["exit_code"]
    assert len(server.requests) == 2
