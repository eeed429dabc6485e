"""The two streaming operations against a real aiohttp server on 127.0.0.1.

aioresponses cannot feed a response in chunks, so a real server writes server-sent events
cut at awkward places (mid-line, inside a UTF-8 character, between CR and LF), with
comments, multi-line data and CR LF / CR line endings, and the client must still yield the
right typed events. An event of a type the stream does not know (a later MINOR version's) is
skipped; one of a known type that does not fit its model is a protocol error.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from deepexec_protocol import _http, api, errors, models
from deepexec_protocol.converter import structure
from protocol_fixtures import DEFS, JOB_ID, VERSION, request_body

Script = list[bytes | float]  # bytes are written as one chunk; a float is a pause


class ScriptedServer:
    """Answers every request with the current script and records what it received."""

    def __init__(self) -> None:
        self.script: Script = []
        self.status = 200
        self.content_type = "text/event-stream"
        self.requests: list[dict[str, Any]] = []
        self.server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        resp = web.StreamResponse(status=self.status, headers={"X-Request-ID": "req_stream"})
        resp.content_type = self.content_type
        await resp.prepare(request)
        for step in self.script:
            if isinstance(step, float):
                await asyncio.sleep(step)
            else:
                await resp.write(step)
                await asyncio.sleep(0.002)  # let each chunk travel on its own
        return resp

    @property
    def base(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    scripted = ScriptedServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", scripted.handle)
    async with TestServer(app, host="127.0.0.1") as test_server:
        scripted.server = test_server
        yield scripted


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def frame(data: dict[str, Any], event: str | None = None, eol: bytes = b"\n") -> bytes:
    lines = ([b"event: " + event.encode()] if event else []) + [
        b"data: " + json.dumps(data, ensure_ascii=False).encode()
    ]
    return eol.join(lines) + eol + eol


def chunk(index: int, delta: str) -> dict[str, Any]:
    return {"type": "text_generation_chunk", "index": index, "delta": delta}


DONE = DEFS["TextGenerationDone"]["examples"][0]


def cut(data: bytes, *points: int) -> list[bytes]:
    """``data`` cut at the given offsets."""
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False) if a != b]


def text_stream(session: aiohttp.ClientSession, base: str, **kwargs: Any) -> Any:
    body = request_body("TextGenerationRequest")
    return api.text_generation_stream.stream(session, base, body=body, **kwargs)


async def collect(stream: Any) -> list[Any]:
    return [event async for event in stream]


async def test_text_stream_split_at_awkward_places(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    first = frame(chunk(0, "Quantum "), event="chunk")
    multi = "données 日本 🎉".encode()
    second = frame(chunk(1, "données 日本 🎉"), eol=b"\r\n")
    at = second.index(multi) + multi.index("本".encode()) + 1  # inside a 3-byte character
    at_emoji = second.index("🎉".encode()) + 2  # inside a 4-byte character
    crlf = second.index(b"\r\n") + 1  # between CR and LF
    # a JSON value on two data lines: joined with LF, which JSON reads as whitespace
    third = b'data: {"type": "text_generation_chunk",\rdata: "index": 2, "delta": "!"}\r\r'
    server.script = [
        b": connected\n\n",
        *cut(first, 3, 11, len(first) - 1),  # mid "data", mid-line, between the two LFs
        *cut(second, at, at_emoji, crlf),
        b": keep-alive\r\n",
        *cut(third, 10, third.index(b"\r") + 1),
        frame(DONE, event="done"),
        frame(chunk(99, "after the end")),  # never read: the done event is final
    ]
    events = await collect(text_stream(session, server.base, headers={"X-Trace": "1"}))
    assert events == [
        models.TextGenerationChunk(index=0, delta="Quantum "),
        models.TextGenerationChunk(index=1, delta="données 日本 🎉"),
        models.TextGenerationChunk(index=2, delta="!"),
        structure(DONE, models.TextGenerationDone),
    ]
    assert isinstance(events[-1].result, models.TextGenerationResult)
    (request,) = server.requests
    assert request["method"] == "POST" and request["raw_path"] == "/v1/generate/stream"
    assert request["headers"]["Accept"] == "text/event-stream"
    assert request["headers"]["X-Trace"] == "1"
    assert json.loads(request["body"])["input"]["prompt"].startswith("Explain")


def _job_event(kind: str) -> dict[str, Any]:
    return dict(DEFS[kind]["examples"][0])


async def test_job_events_all_kinds(server: ScriptedServer, session: aiohttp.ClientSession) -> None:
    kinds = ["JobStatusEvent", "JobProgressEvent", "JobOutputEvent", "JobResultEvent"]
    stream = b"".join(frame(_job_event(k), eol=b"\r") for k in kinds)
    # one byte per chunk for the first events, then the rest at once
    server.script = [stream[i : i + 1] for i in range(120)] + [stream[120:]]
    events = await collect(api.job_events.stream(session, server.base, job_id=JOB_ID))
    assert [type(e).__name__ for e in events] == kinds
    assert events[2] == models.JobOutputEvent(
        job_id=JOB_ID,
        stream=models.OutputStream.STDOUT,
        data="Step 0\n",
        timestamp="2026-11-26T13:40:00.140Z",
    )
    assert events[3].job.status is models.JobState.CANCELED
    (request,) = server.requests
    assert request["method"] == "GET" and request["raw_path"] == f"/v1/jobs/{JOB_ID}/events"
    assert request["body"] == b""


async def test_job_events_path_param_is_quoted(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [frame(_job_event("JobResultEvent"))]
    await collect(api.job_events.stream(session, server.base, job_id="../x y"))
    assert server.requests[0]["raw_path"] == "/v1/jobs/..%2Fx%20y/events"


STREAM_ERROR = {
    "type": "stream_error",
    "error": {
        "code": "generation_error",
        "message": "provider closed the connection",
        "details": {"provider": "deepseek"},
    },
}


async def test_stream_error_raises_its_exception(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [frame(chunk(0, "Quan")), frame(STREAM_ERROR, event="error")]
    seen: list[Any] = []
    with pytest.raises(errors.MCPGenerationError) as raised:
        async for event in text_stream(session, server.base):
            seen.append(event)
    assert seen == [models.TextGenerationChunk(index=0, delta="Quan")]
    assert raised.value.code == "generation_error"
    assert raised.value.http_status == 200
    assert raised.value.request_id == "req_stream"
    assert raised.value.details == {"provider": "deepseek"}
    assert "provider closed the connection" in str(raised.value)


@pytest.mark.parametrize("code", ["job_canceled", "internal_error", "not_found"])
async def test_job_stream_error_codes(
    code: str, server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [
        frame(_job_event("JobStatusEvent")),
        frame({"type": "stream_error", "error": {"code": code, "message": "m"}}),
    ]
    with pytest.raises(errors.MCPError) as raised:
        await collect(api.job_events.stream(session, server.base, job_id=JOB_ID))
    assert type(raised.value) is errors.exception_for_code(code)
    assert raised.value.code == code


CUT_SCRIPTS: dict[str, Callable[[], Script]] = {
    "nothing at all": lambda: [],
    "only a comment": lambda: [b": hello\n\n"],
    "chunks but no done": lambda: [frame(chunk(0, "a")), frame(chunk(1, "b"))],
    "cut inside an event": lambda: [frame(chunk(0, "a")), frame(DONE)[:25]],
    "done without blank line": lambda: [frame(chunk(0, "a")), frame(DONE)[:-1]],
    "an unknown event, no done": lambda: [frame(chunk(0, "a")), frame({"type": "text_later"})],
}


@pytest.mark.parametrize("label", sorted(CUT_SCRIPTS))
async def test_stream_cut_before_final_event(
    label: str, server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = CUT_SCRIPTS[label]()
    seen: list[Any] = []
    with pytest.raises(errors.MCPConnectionError) as raised:
        async for event in text_stream(session, server.base):
            seen.append(event)
    assert type(raised.value) is errors.MCPConnectionError
    assert all(isinstance(e, models.TextGenerationChunk) for e in seen)


async def test_job_stream_cut_before_result(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [frame(_job_event("JobStatusEvent")), frame(_job_event("JobProgressEvent"))]
    with pytest.raises(errors.MCPConnectionError):
        await collect(api.job_events.stream(session, server.base, job_id=JOB_ID))


async def test_malformed_event_is_a_protocol_error(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [frame(chunk(0, "a")), b"data: {not json\n\n"]
    with pytest.raises(errors.MCPProtocolError):
        await collect(text_stream(session, server.base))
    server.script = [frame({"type": "text_generation_chunk", "index": -1, "delta": "a"})]
    with pytest.raises(errors.MCPProtocolError) as raised:
        await collect(text_stream(session, server.base))
    assert "index" in str(raised.value)


@pytest.mark.parametrize(
    "data",
    [
        {"index": 0, "delta": "a"},  # no type
        {"type": 5, "index": 0, "delta": "a"},
        {"type": None},
        {"type": ["text_generation_chunk"]},
        ["text_generation_chunk"],
        "text_generation_chunk",
    ],
    ids=["no type", "type a number", "type null", "type an array", "an array", "a string"],
)
async def test_event_without_a_string_type_is_a_protocol_error(
    data: Any, server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [frame(chunk(0, "a")), frame(data), frame(DONE)]
    with pytest.raises(errors.MCPProtocolError) as raised:
        await collect(text_stream(session, server.base))
    assert type(raised.value) is errors.MCPProtocolError


UNKNOWN_TEXT_EVENT = {"type": "text_generation_thinking", "delta": "hmm", "index": "x"}


async def test_unknown_event_type_is_skipped(
    server: ScriptedServer, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    """A server of a later MINOR version may add event types: the SSE convention is to skip
    the ones a client does not know; the events after it still arrive, up to the final one."""
    server.script = [
        frame(chunk(0, "a")),
        frame(UNKNOWN_TEXT_EVENT, event="thinking"),
        frame({"type": "job_output_event"}),  # a type of another stream: not this one's
        frame(chunk(1, "b")),
        frame(DONE, event="done"),
    ]
    with caplog.at_level(logging.DEBUG, logger="deepexec"):
        events = await collect(text_stream(session, server.base))
    assert events == [
        models.TextGenerationChunk(index=0, delta="a"),
        models.TextGenerationChunk(index=1, delta="b"),
        structure(DONE, models.TextGenerationDone),
    ]
    skipped = [r.getMessage() for r in caplog.records if "unknown type" in r.getMessage()]
    assert skipped == [
        "skipped a stream event of unknown type 'text_generation_thinking'",
        "skipped a stream event of unknown type 'job_output_event'",
    ]


async def test_unknown_job_event_type_is_skipped(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    kinds = ["JobStatusEvent", "JobOutputEvent", "JobResultEvent"]
    later = {"type": "job_log_event", "job_id": JOB_ID, "line": "x", "timestamp": 5}
    server.script = [
        frame(_job_event(kinds[0])),
        frame(later, event="job_log_event"),
        frame(_job_event(kinds[1])),
        frame(later),
        frame(_job_event(kinds[2])),
    ]
    events = await collect(api.job_events.stream(session, server.base, job_id=JOB_ID))
    assert [type(e).__name__ for e in events] == kinds


async def test_known_event_type_with_a_bad_body_after_an_unknown_one_raises(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [
        frame(chunk(0, "a")),
        frame(UNKNOWN_TEXT_EVENT),
        frame({"type": "text_generation_chunk", "index": 1}),  # no delta
        frame(DONE),
    ]
    seen: list[Any] = []
    with pytest.raises(errors.MCPProtocolError) as raised:
        async for event in text_stream(session, server.base):
            seen.append(event)
    assert type(raised.value) is errors.MCPProtocolError
    assert "delta" in str(raised.value)
    assert seen == [models.TextGenerationChunk(index=0, delta="a")]


def _schema_tag(cls: type[Any]) -> str:
    """The ``type`` the schema gives an event model (its const discriminator)."""
    value: str = DEFS[cls.__name__]["properties"]["type"]["const"]
    return value


@pytest.mark.parametrize("name", ["text_generation_stream", "submit_job_stream", "job_events"])
def test_each_stream_knows_the_types_of_its_event_union(name: str) -> None:
    module = getattr(api, name)
    union = getattr(models, module.OPERATION.stream_event)
    tags = {_schema_tag(member) for member in union.__args__}
    assert module.EVENT_TYPES == tags == _http.event_types(union)
    assert module.TERMINAL_EVENTS <= module.EVENT_TYPES
    assert "stream_error" in module.EVENT_TYPES


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (404, "not_found", errors.MCPNotFoundError),
        (503, "provider_not_configured", errors.MCPProviderNotConfiguredError),
        (422, "validation_error", errors.MCPValidationError),
        (429, "rate_limit_exceeded", errors.MCPRateLimitError),
    ],
)
async def test_json_error_answer_instead_of_a_stream(
    status: int,
    code: str,
    expected: type[errors.MCPError],
    server: ScriptedServer,
    session: aiohttp.ClientSession,
) -> None:
    server.status, server.content_type = status, "application/json"
    envelope = {
        "protocol_version": VERSION,
        "type": "text_generation_response",
        "status": "error",
        "error": {"code": code, "message": "no"},
    }
    server.script = [json.dumps(envelope).encode()]
    with pytest.raises(errors.MCPError) as raised:
        await collect(text_stream(session, server.base))
    assert type(raised.value) is expected
    assert raised.value.http_status == status
    assert raised.value.request_id == "req_stream"


async def test_non_sse_success_answer_is_a_protocol_error(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.content_type = "application/json"
    server.script = [json.dumps(DEFS["TextGenerationResponse"]["examples"][0]).encode()]
    with pytest.raises(errors.MCPProtocolError, match="text/event-stream"):
        await collect(text_stream(session, server.base))


async def test_idle_stream_times_out(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    server.script = [frame(chunk(0, "a")), 3.0, frame(DONE)]
    seen: list[Any] = []
    with pytest.raises(errors.MCPTimeoutError) as raised:
        async for event in text_stream(session, server.base, timeout=0.3):
            seen.append(event)
    assert len(seen) == 1
    assert raised.value.timeout == 0.3


async def test_slow_but_steady_stream_does_not_time_out(
    server: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """The timeout bounds each wait for data, not the whole stream."""
    server.script = []
    for i in range(6):
        server.script += [frame(chunk(i, "x")), 0.1]
    server.script.append(frame(DONE))
    events = await collect(text_stream(session, server.base, timeout=0.35))
    assert len(events) == 7
