"""The hot paths of the generated transport send and accept exactly what the plain paths do.

Every operation's ``asyncio`` goes through ``_http.exchange`` with positional arguments;
``exchange`` reuses ClientTimeout objects, takes a short cut for the usual JSON
Content-Type values and skips parsing a protocol_version equal to the SDK's; the converter
remembers the values a pattern matched. None of that may change a byte on the wire, an
accepted or rejected message, or an error.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.helpers import parse_content_type
from aiohttp.test_utils import TestServer
from aioresponses import aioresponses
from deepexec_protocol import _http, _validators, api, errors, models
from deepexec_protocol.constants import OPERATIONS
from deepexec_protocol.converter import StructureError, structure, unstructure
from protocol_fixtures import (
    BASE,
    JOB_ID,
    VERSION,
    call_args,
    request_body,
    success_example,
)
from yarl import URL

UNARY = [name for name, op in OPERATIONS.items() if not op.stream_event]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.mark.parametrize("name", UNARY)
async def test_asyncio_sends_what_the_reference_construction_sends(
    name: str, session: aiohttp.ClientSession
) -> None:
    """The request arguments handed to aiohttp: the same as the code before the fast path
    built them (payload = orjson.dumps(unstructure(body)), Accept and Content-Type, then the
    caller's headers, ClientTimeout(total=timeout))."""
    op = OPERATIONS[name]
    kwargs, url = call_args(name)
    module = getattr(api, name)
    extra = {"Idempotency-Key": "key-1", "X-Custom": "yes"}
    with aioresponses() as mocked:
        mocked.add(url, op.method, payload=success_example(op.response), repeat=True)
        await module.asyncio(session, BASE, **kwargs, headers=extra, timeout=12.5)
        await module.asyncio_detailed(session, BASE, **kwargs, headers=extra, timeout=12.5)
        fast, detailed = mocked.requests[(op.method, URL(url))]
    body = kwargs.get("body")
    expected_headers = {"Accept": "application/json"}
    if body is not None:
        expected_headers["Content-Type"] = "application/json"
    expected_headers.update(extra)
    for sent in (fast.kwargs, detailed.kwargs):
        assert sent["data"] == (None if body is None else orjson.dumps(unstructure(body)))
        assert sent["headers"] == expected_headers
        assert list(sent["headers"]) == list(expected_headers)  # the same order on the wire
        assert sent["timeout"] == aiohttp.ClientTimeout(total=12.5)
        assert sent["params"] is None


async def test_the_same_bytes_reach_a_real_server() -> None:
    """Method, path, headers and body as a server receives them, for a request with a
    body and one with path parameters."""
    seen: list[tuple[str, str, dict[str, str], bytes]] = []

    async def record(request: web.Request) -> web.Response:
        seen.append((request.method, request.path, dict(request.headers), await request.read()))
        response = "CodeExecutionResponse" if request.method == "POST" else "JobStatusResponse"
        return web.json_response(success_example(response))

    app = web.Application()
    app.router.add_post("/v1/execute", record)
    app.router.add_get("/v1/jobs/{job_id}", record)
    body = request_body("CodeExecutionRequest")
    async with TestServer(app, host="127.0.0.1") as server, aiohttp.ClientSession() as s:
        base = str(server.make_url(""))
        await api.code_execution.asyncio(s, base, body=body, headers={"Idempotency-Key": "k"})
        await api.job_status.asyncio(s, base, job_id=JOB_ID, timeout=3)
    (post_method, post_path, post_headers, post_body), (get_method, get_path, get_headers, _) = seen
    assert (post_method, post_path) == ("POST", "/v1/execute")
    assert post_body == orjson.dumps(unstructure(body))
    assert post_headers["Content-Type"] == "application/json"
    assert post_headers["Accept"] == "application/json"
    assert post_headers["Idempotency-Key"] == "k"
    assert post_headers["Content-Length"] == str(len(post_body))
    assert (get_method, get_path) == ("GET", f"/v1/jobs/{JOB_ID}")
    assert get_headers["Accept"] == "application/json"
    assert "Content-Type" not in get_headers


def test_client_timeouts_are_made_once_per_value() -> None:
    assert _http._client_timeout(None) is None
    first = _http._client_timeout(7.5)
    assert first == aiohttp.ClientTimeout(total=7.5)
    assert _http._client_timeout(7.5) is first
    assert _http._client_timeout(8) == aiohttp.ClientTimeout(total=8)
    for i in range(_http._TIMEOUTS_MAX * 2):
        assert _http._client_timeout(1000.0 + i) == aiohttp.ClientTimeout(total=1000.0 + i)
    assert len(_http._TIMEOUTS) <= _http._TIMEOUTS_MAX


@pytest.mark.parametrize("value", sorted(_http._PLAIN_JSON_TYPES))
def test_content_type_short_cut_agrees_with_aiohttp(value: str) -> None:
    assert parse_content_type(value)[0] == "application/json"


@pytest.mark.parametrize(
    ("content_type", "accepted"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ("Application/JSON; charset=UTF-8", True),  # not in the short cut: parsed
        ("text/html; charset=utf-8", False),
        ("application/problem+json", False),
    ],
)
async def test_content_types_outside_the_short_cut_are_parsed_as_before(
    content_type: str, accepted: bool, session: aiohttp.ClientSession
) -> None:
    raw = orjson.dumps(success_example("HealthResponse"))
    with aioresponses() as mocked:
        mocked.get(f"{BASE}/v1/health", body=raw, content_type=content_type, repeat=True)
        if accepted:
            assert isinstance(await api.health.asyncio(session, BASE), models.HealthInfo)
            return
        with pytest.raises(errors.MCPProtocolError) as raised:
            await api.health.asyncio(session, BASE)
    media_type = parse_content_type(content_type)[0]
    assert str(raised.value).startswith(f"unexpected content type {media_type!r}")


@pytest.mark.parametrize(
    ("version", "error"),
    [
        (2024, errors.MCPProtocolVersionError),
        (None, errors.MCPProtocolVersionError),
        ("2023.1", errors.MCPProtocolVersionError),
        ("", errors.MCPProtocolVersionError),
        ("2024", errors.MCPProtocolError),  # this year, but not a version the model takes
    ],
)
async def test_versions_other_than_the_sdks_are_still_checked(
    version: Any, error: type[errors.MCPError], session: aiohttp.ClientSession
) -> None:
    assert VERSION.startswith("2024.")
    answer = {**success_example("HealthResponse"), "protocol_version": version}
    with aioresponses() as mocked:
        mocked.get(f"{BASE}/v1/health", payload=answer, repeat=True)
        for _ in range(2):  # a refused version is never remembered as compatible
            with pytest.raises(errors.MCPError) as raised:
                await api.health.asyncio(session, BASE)
            assert type(raised.value) is error


async def test_an_earlier_minor_version_is_accepted_every_time(
    session: aiohttp.ClientSession,
) -> None:
    older = VERSION.split(".")[0] + ".0"
    assert older != VERSION
    answer = {**success_example("HealthResponse"), "protocol_version": older}
    with aioresponses() as mocked:
        mocked.get(f"{BASE}/v1/health", payload=answer, repeat=True)
        for _ in range(3):  # parsed once, then remembered
            assert isinstance(await api.health.asyncio(session, BASE), models.HealthInfo)


# --------------------------------------------------------------------------- patterns


def test_remembering_search_answers_as_the_plain_search() -> None:
    regex = "^[a-z][a-z0-9_+-]{0,31}$"
    plain = _validators.compile_pattern(regex)
    remembering, seen = _validators.remembering_search(regex)
    values = ["python", "python", "c++", "Python", "python\n", "", "a" * 32, "a" * 33, "x y"]
    for value in values * 2:
        assert (remembering(value) is None) is (plain(value) is None)
    assert set(seen) == {v for v in values if plain(v) is not None}


def test_remembering_search_keeps_only_short_exact_strings_and_a_bounded_number() -> None:
    remembering, seen = _validators.remembering_search("^x")

    class Text(str):
        pass

    assert remembering(Text("xyz")) is not None
    assert remembering("x" * (_validators.SEEN_MAX_LEN + 1)) is not None
    assert len(seen) == 0
    for i in range(_validators.SEEN_MAX * 3):
        remembering(f"x{i}")
    assert 0 < len(seen) <= _validators.SEEN_MAX


class _Impostor(str):
    """A string that claims to equal every other (and hashes like ``python``)."""

    def __eq__(self, other: object) -> bool:
        return True

    def __hash__(self) -> int:
        return hash("python")


def test_a_str_subclass_can_not_pass_for_a_remembered_value() -> None:
    good = request_body("CodeExecutionRequest")
    data = unstructure(good)
    data["input"]["language"] = "python"
    structure(data, models.CodeExecutionRequest)  # "python" is now remembered
    data["input"]["language"] = _Impostor("NOT A LANGUAGE")
    with pytest.raises(StructureError, match=re.escape("input.language")):
        structure(data, models.CodeExecutionRequest)


def test_remembered_values_are_accepted_and_others_rejected_as_before() -> None:
    data = success_example("CodeExecutionResponse")
    for _ in range(3):  # the second and third time from the remembered values
        envelope = structure(data, models.CodeExecutionResponse)
        assert envelope.protocol_version == data["protocol_version"]
    for bad in ("2024.1\n", "2024.1 ", "v2024.1", "20241"):
        with pytest.raises(StructureError, match="protocol_version"):
            structure({**data, "protocol_version": bad}, models.CodeExecutionResponse)


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"input": {"code": "\ud800"}}, "input.code"),
        ({"input": {"tags": ["ok", "x\udcff"]}}, "input.tags[1]"),
        ({"input": {"environment": {"A": "fine", "B": "\ud800"}}}, "input.environment.B"),
        ({"input": {"environment": {"\ud800": "x"}}}, "input.environment.\ud800"),
    ],
)
def test_a_string_that_is_no_unicode_text_is_a_validation_error_naming_it(
    data: dict[str, Any], path: str
) -> None:
    """A lone surrogate can not go out as UTF-8 JSON: the body encoder (hot and plain path
    alike) raises MCPValidationError with the field's path, not orjson's TypeError."""
    with pytest.raises(errors.MCPValidationError) as info:
        _http._encode(data)
    assert info.value.path == path
    assert info.value.code == "validation_error"
    assert _http._encode({"input": {"code": "ok \u00e9 \U0001f600"}}) == orjson.dumps(
        {"input": {"code": "ok \u00e9 \U0001f600"}}
    )


async def test_exchange_rejects_a_body_that_is_no_unicode_text_before_sending(
    session: aiohttp.ClientSession,
) -> None:
    body = structure(
        {
            "protocol_version": VERSION,
            "type": "code_execution",
            "input": {"code": "print('\ud800')", "language": "python"},
        },
        models.CodeExecutionRequest,
    )
    with aioresponses() as mocked:  # nothing registered: any request would fail otherwise
        with pytest.raises(errors.MCPValidationError) as info:
            await api.code_execution.asyncio(session, BASE, body=body)
        assert mocked.requests == {}
    assert info.value.path == "input.code"
