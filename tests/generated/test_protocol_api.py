"""Every generated request function against mocked HTTP (aioresponses).

Success returns the typed output; every protocol error code, sent as an error envelope with
its HTTP status, raises exactly the exception class of that code with code, HTTP status and
request id; malformed answers raise protocol errors, never a raw KeyError, TypeError or
JSONDecodeError; transport failures become MCPConnectionError / MCPTimeoutError.
"""

from __future__ import annotations

import json
import re
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from deepexec_protocol import api, errors, models
from deepexec_protocol.constants import ERROR_CODES, OPERATIONS
from deepexec_protocol.converter import structure, unstructure
from protocol_fixtures import (
    BASE,
    VERSION,
    call_args,
    success_example,
)
from yarl import URL

REQUEST_ID = "req_0123abcd"


@dataclass(frozen=True)
class Case:
    """How to call one operation in these tests."""

    name: str
    kwargs: dict[str, Any]
    url: str

    @property
    def op(self) -> Any:
        return OPERATIONS[self.name]

    @property
    def module(self) -> Any:
        return getattr(api, self.name)

    @property
    def streaming(self) -> bool:
        return self.op.stream_event is not None

    async def call(self, session: aiohttp.ClientSession, **extra: Any) -> Any:
        if self.streaming:
            return [e async for e in self.module.stream(session, BASE, **self.kwargs, **extra)]
        return await self.module.asyncio(session, BASE, **self.kwargs, **extra)


def _case(name: str) -> Case:
    kwargs, url = call_args(name)
    return Case(name, kwargs, url)


CASES = {name: _case(name) for name in OPERATIONS}
UNARY = [c for c in CASES.values() if not c.streaming]
STREAMING = [c for c in CASES.values() if c.streaming]


def test_every_operation_has_a_module() -> None:
    assert set(api.__all__) == set(OPERATIONS)
    assert len(OPERATIONS) == 13
    for name in OPERATIONS:
        module = getattr(api, name)
        if OPERATIONS[name].stream_event:
            assert hasattr(module, "stream") and not hasattr(module, "asyncio")
        else:
            assert hasattr(module, "asyncio") and hasattr(module, "asyncio_detailed")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def mocked() -> AsyncIterator[aioresponses]:
    with aioresponses() as m:
        yield m


def _mock(mocked: aioresponses, case: Case, **kwargs: Any) -> None:
    kwargs.setdefault("headers", {"X-Request-ID": REQUEST_ID})
    mocked.add(case.url, case.op.method, **kwargs)


def _sent(mocked: aioresponses, case: Case) -> Any:
    (call,) = mocked.requests[(case.op.method, URL(case.url))]
    return call.kwargs


def error_envelope(case: Case, code: str, message: str = "it went wrong") -> dict[str, Any]:
    response_type = f"{case.name}_response" if not case.streaming else "text_generation_response"
    return {
        "protocol_version": VERSION,
        "type": response_type,
        "status": "error",
        "error": {"code": code, "message": message, "details": {"path": "input.code"}},
    }


# --- success ---------------------------------------------------------------------------


@pytest.mark.parametrize("case", UNARY, ids=lambda c: c.name)
async def test_success_returns_typed_output(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    example = success_example(case.op.response)
    _mock(mocked, case, status=200, payload=example)
    output = await case.call(session, headers={"X-Custom": "yes"})
    response_model = getattr(models, case.op.response)
    expected = structure(example, response_model).output
    assert output == expected
    assert type(output) is type(expected)
    sent = _sent(mocked, case)
    assert sent["headers"]["X-Custom"] == "yes"
    assert sent["headers"]["Accept"] == "application/json"
    if case.op.request:
        assert sent["headers"]["Content-Type"] == "application/json"
        assert orjson.loads(sent["data"]) == unstructure(case.kwargs["body"])
    else:
        assert sent["data"] is None


@pytest.mark.parametrize("case", UNARY, ids=lambda c: c.name)
async def test_detailed_returns_envelope_and_http_details(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    _mock(mocked, case, status=201, payload=success_example(case.op.response))
    response = await case.module.asyncio_detailed(session, BASE, **case.kwargs)
    assert response.status_code == 201
    assert response.request_id == REQUEST_ID
    assert type(response.parsed).__name__ == case.op.response
    assert response.parsed.status is models.ResponseStatus.SUCCESS


async def test_idempotency_key_and_custom_headers_are_sent(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    for name in ("submit_job", "create_session"):
        case = CASES[name]
        assert case.op.idempotency_key
        _mock(mocked, case, payload=success_example(case.op.response))
        headers = {
            "Idempotency-Key": f"key-{name}",
            "Authorization": "Bearer t0k",
            "X-E2B-Key": "e",
        }
        await case.call(session, headers=headers)
        sent = _sent(mocked, case)["headers"]
        assert sent["Idempotency-Key"] == f"key-{name}"
        assert sent["Authorization"] == "Bearer t0k"
        assert sent["X-E2B-Key"] == "e"


@pytest.mark.parametrize("name", ["job_status", "cancel_job", "close_session"])
async def test_path_params_are_quoted(
    name: str, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    case = CASES[name]
    (param,) = case.op.path_params
    hostile = "a/../b c?d#é"
    expected = BASE + case.op.path.replace("{" + param + "}", "a%2F..%2Fb%20c%3Fd%23%C3%A9")
    mocked.add(expected, case.op.method, payload=success_example(case.op.response))
    await case.module.asyncio(session, BASE + "/", **{**case.kwargs, param: hostile})
    (key,) = mocked.requests
    assert key == (case.op.method, URL(expected, encoded=True))
    assert str(key[1]).startswith(BASE + case.op.path.split("{")[0])


async def test_list_jobs_query_is_encoded_without_none(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    case = CASES["list_jobs"]
    example = success_example("ListJobsResponse")
    mocked.get(re.compile(r"^http://deepexec\.test/v1/jobs(\?.*)?$"), payload=example, repeat=True)
    query = models.ListJobsQuery(status=models.JobState.RUNNING, tag="team:data", limit=5)
    await api.list_jobs.asyncio(session, BASE, query=query)
    await api.list_jobs.asyncio(session, BASE, query=models.ListJobsQuery(cursor="c/1 2"))
    await api.list_jobs.asyncio(session, BASE)
    calls = [
        (url, call.kwargs["params"])
        for (_, url), calls in mocked.requests.items()
        for call in calls
    ]
    assert calls[0][1] == {"status": "RUNNING", "tag": "team:data", "limit": "5"}
    assert calls[0][0].query == {"status": "RUNNING", "tag": "team:data", "limit": "5"}
    assert calls[1][1] == {"limit": "20", "cursor": "c/1 2"}
    assert calls[1][0].query["cursor"] == "c/1 2"
    assert calls[2][1] is None
    assert case.op.query == "ListJobsQuery"


# --- error envelopes ---------------------------------------------------------------------

ALL = list(CASES.values())


@pytest.mark.parametrize("code", sorted(ERROR_CODES))
@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_each_error_code_raises_its_exception(
    case: Case, code: str, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    info = ERROR_CODES[code]
    headers = {"X-Request-ID": REQUEST_ID, "Retry-After": "3"}
    _mock(
        mocked, case, status=info.http_status, payload=error_envelope(case, code), headers=headers
    )
    with pytest.raises(errors.MCPError) as raised:
        await case.call(session)
    exc = raised.value
    assert type(exc) is errors.exception_for_code(code)
    assert type(exc).__name__ == info.exception
    assert exc.code == code
    assert exc.http_status == info.http_status
    assert exc.request_id == REQUEST_ID
    assert exc.details == {"path": "input.code"}
    assert exc.retry_after == 3.0
    assert "it went wrong" in str(exc) and REQUEST_ID in str(exc)


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_error_code_this_sdk_predates_raises_mcp_error(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    """A newer server (same year) may add error codes: the base class carries the code."""
    _mock(mocked, case, status=418, payload=error_envelope(case, "quota_exhausted"))
    with pytest.raises(errors.MCPError) as raised:
        await case.call(session)
    assert type(raised.value) is errors.MCPError
    assert raised.value.code == "quota_exhausted"
    assert raised.value.http_status == 418
    assert raised.value.request_id == REQUEST_ID
    assert raised.value.message == "it went wrong"


async def test_error_envelope_without_a_usable_error_is_a_protocol_error(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    case = CASES["health"]
    _mock(
        mocked, case, status=400, payload={**error_envelope(case, "conflict"), "error": {"code": 5}}
    )
    with pytest.raises(errors.MCPProtocolError) as raised:
        await case.call(session)
    assert type(raised.value) is errors.MCPProtocolError
    assert "error.code" in str(raised.value)


# --- malformed answers -------------------------------------------------------------------


def _truncated(case: Case) -> bytes:
    response = case.op.response or "TextGenerationResponse"
    raw = json.dumps(success_example(response)).encode()
    return raw[: len(raw) // 2]


MALFORMED = {
    # label: (body, content type, status, exact exception class)
    "malformed json": (b"{not json", "application/json", 200, errors.MCPProtocolError),
    "empty body": (b"", "application/json", 200, errors.MCPProtocolError),
    "json array": (b'[{"status": "success"}]', "application/json", 200, errors.MCPProtocolError),
    "json string": (b'"success"', "application/json", 200, errors.MCPProtocolError),
    "html 502": (b"<html>Bad gateway</html>", "text/html", 502, errors.MCPServerError),
    "html 200": (b"<html>Welcome to nginx</html>", "text/html", 200, errors.MCPProtocolError),
    "malformed json 500": (b"{oops", "application/json", 500, errors.MCPServerError),
}


@pytest.mark.parametrize("label", sorted(MALFORMED))
@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_malformed_answer_raises_protocol_error(
    case: Case, label: str, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    body, ctype, status, expected = MALFORMED[label]
    _mock(
        mocked,
        case,
        status=status,
        body=body,
        content_type=ctype,
        headers={"X-Request-ID": REQUEST_ID},
    )
    with pytest.raises(errors.MCPError) as raised:
        await case.call(session)
    assert type(raised.value) is expected
    assert raised.value.http_status == status
    assert raised.value.request_id == REQUEST_ID


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_a_non_protocol_answer_says_what_it_said(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    """An answer of a proxy or of the HTTP layer (such as aiohttp's "Got more than 8190
    bytes" for an oversized header) is no envelope: the error quotes its start, on one
    line and bounded, so the caller learns what went wrong."""
    body = b"<html>\n  <h1>502 Bad   Gateway</h1>\n" + b"x" * 1000 + b"</html>"
    _mock(mocked, case, status=502, body=body, content_type="text/html")
    with pytest.raises(errors.MCPServerError) as raised:
        await case.call(session)
    message = raised.value.message
    assert "<html> <h1>502 Bad Gateway</h1> xxx" in message
    assert "\n" not in message and message.endswith("...") and len(message) < 300


@pytest.mark.parametrize("case", UNARY, ids=lambda c: c.name)
async def test_an_empty_non_protocol_answer_quotes_nothing(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    _mock(mocked, case, status=404, body=b"", content_type="text/plain")
    with pytest.raises(errors.MCPProtocolError) as raised:
        await case.call(session)
    assert raised.value.message == "unexpected content type 'text/plain' (HTTP 404)"


@pytest.mark.parametrize("case", UNARY, ids=lambda c: c.name)
async def test_truncated_json_raises_protocol_error(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    _mock(mocked, case, status=200, body=_truncated(case), content_type="application/json")
    with pytest.raises(errors.MCPError) as raised:
        await case.call(session)
    assert type(raised.value) is errors.MCPProtocolError
    assert "malformed JSON" in raised.value.message


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_other_protocol_year_raises_version_error(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    if case.streaming:  # a stream answers JSON only to refuse
        envelope, status = error_envelope(case, "internal_error"), 500
    else:
        envelope, status = success_example(case.op.response), 200
    _mock(mocked, case, status=status, payload={**envelope, "protocol_version": "2099.1"})
    with pytest.raises(errors.MCPError) as raised:
        await case.call(session)
    assert type(raised.value) is errors.MCPProtocolVersionError
    assert raised.value.code == "protocol_version_mismatch"
    assert raised.value.http_status == status
    assert "2099.1" in str(raised.value)


async def test_newer_minor_version_is_accepted(
    mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    case = CASES["health"]
    year = VERSION.split(".")[0]
    _mock(
        mocked,
        case,
        payload={**success_example("HealthResponse"), "protocol_version": f"{year}.99"},
    )
    assert isinstance(await case.call(session), models.HealthInfo)


OUTPUT_BREAKS = {
    # operation: (field of the output to break, bad value, path named in the message)
    "code_execution": ("exit_code", "0", "output.exit_code"),
    "health": ("uptime", -1, "output.uptime"),
    "job_status": ("progress", 101, "output.progress"),
    "submit_job": ("job_id", "job_nope", "output.job_id"),
    "list_languages": ("languages", [{"id": "Py"}], "output.languages[0]"),
    "text_generation": ("usage", {"prompt_tokens": 1}, "output.usage.completion_tokens"),
}


@pytest.mark.parametrize("name", sorted(OUTPUT_BREAKS))
async def test_output_breaking_the_model_names_the_path(
    name: str, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    case = CASES[name]
    field, value, path = OUTPUT_BREAKS[name]
    example = success_example(case.op.response)
    _mock(mocked, case, payload={**example, "output": {**example["output"], field: value}})
    with pytest.raises(errors.MCPProtocolError) as raised:
        await case.call(session)
    assert type(raised.value) is errors.MCPProtocolError
    assert path in str(raised.value)
    assert raised.value.details["path"].startswith(path)


@pytest.mark.parametrize("case", UNARY, ids=lambda c: c.name)
async def test_envelope_without_output_or_error(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    example = success_example(case.op.response)
    _mock(mocked, case, payload={k: v for k, v in example.items() if k != "output"})
    with pytest.raises(errors.MCPProtocolError, match="without an output"):
        await case.call(session)
    _mock(mocked, case, payload={**error_envelope(case, "conflict"), "error": None})
    with pytest.raises(errors.MCPProtocolError, match="without an error"):
        await case.call(session)


# --- transport failures ------------------------------------------------------------------


def _refused_base() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there now


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_connection_refused(case: Case, session: aiohttp.ClientSession) -> None:
    base = _refused_base()
    with pytest.raises(errors.MCPConnectionError) as raised:
        if case.streaming:
            [e async for e in case.module.stream(session, base, **case.kwargs, timeout=5)]
        else:
            await case.module.asyncio(session, base, **case.kwargs, timeout=5)
    assert type(raised.value) is errors.MCPConnectionError
    assert raised.value.http_status is None and raised.value.request_id is None


@pytest.mark.parametrize("case", ALL, ids=lambda c: c.name)
async def test_timeout_is_mcp_timeout_error(
    case: Case, mocked: aioresponses, session: aiohttp.ClientSession
) -> None:
    _mock(mocked, case, timeout=True)
    with pytest.raises(errors.MCPTimeoutError) as raised:
        await case.call(session, timeout=1.5)
    assert raised.value.timeout == 1.5
    assert raised.value.code == "execution_timeout"


async def test_per_call_timeout_is_applied_on_a_real_slow_server() -> None:
    async def slow(_: web.Request) -> web.Response:
        import asyncio

        await asyncio.sleep(5)
        return web.json_response(success_example("HealthResponse"))

    app = web.Application()
    app.router.add_get("/v1/health", slow)
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as s:
        import time

        started = time.monotonic()
        with pytest.raises(errors.MCPTimeoutError) as raised:
            await api.health.asyncio(s, str(server.make_url("")), timeout=0.2)
        assert time.monotonic() - started < 2
        assert raised.value.timeout == 0.2
