"""Streaming, against a real HTTP server speaking server-sent events: generate_text_stream
(chunks, result, usage; SSE framing; cuts; stream errors) and execute_code_stream (stdout
and stderr in order, callbacks, result, kill). Both clients."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiohttp import web

from deepexec_sdk import (
    CodeExecutionResult,
    DeepExecAsyncClient,
    JobOutputEvent,
    JobState,
    TextGenerationResult,
)
from deepexec_sdk.exceptions import (
    MCPAuthError,
    MCPCanceledError,
    MCPConnectionError,
    MCPError,
    MCPExecutionError,
    MCPGenerationError,
    MCPPermissionError,
    MCPProviderNotConfiguredError,
    MCPRateLimitError,
    MCPTimeoutError,
    MCPUnsupportedLanguageError,
)

from .conftest import (
    CLIENT_TEST,
    DEEPSEEK_KEY,
    E2B_KEY,
    JOB_ID,
    TS,
    Facade,
    ScriptedServer,
    chunk_event,
    done_event,
    err,
    execution,
    generation,
    job,
    ok,
    output_event,
    progress_event,
    result_event,
    status_event,
    stream_error_event,
    submitted,
)

pytestmark = CLIENT_TEST

STREAM = "/v1/generate/stream"
EVENTS = f"/v1/jobs/{JOB_ID}/events"


async def _text_stream(
    live: Facade, prompt: str = "Explain quantum computing", **kwargs: Any
) -> Any:
    return await live("generate_text_stream", prompt, **kwargs)


# --------------------------------------------------------------------------- text


async def test_text_stream_yields_chunks_then_result_and_usage(
    live: Facade, server: ScriptedServer
) -> None:
    deltas = ["Quantum", " computers", " use", " qubits."]
    server.on_sse(
        "POST",
        STREAM,
        [
            *[chunk_event(i, d) for i, d in enumerate(deltas)],
            done_event(generation("".join(deltas), total=13)),
        ],
    )

    stream = await _text_stream(live, model="deepseek-r1", max_tokens=50)
    assert stream.result is None and stream.usage is None
    pieces = await live.drain(stream)

    assert pieces == deltas
    assert stream.text == "Quantum computers use qubits."
    assert isinstance(stream.result, TextGenerationResult)
    assert stream.result.text == "Quantum computers use qubits."
    assert stream.usage is not None and stream.usage.total_tokens == 13
    (request,) = server.requests
    assert request.headers["Accept"] == "text/event-stream"
    assert request.headers["Idempotency-Key"]
    assert request.json()["type"] == "text_generation"
    assert (
        request.json()["input"].items()
        >= {
            "prompt": "Explain quantum computing",
            "model": "deepseek-r1",
            "max_tokens": 50,
        }.items()
    )


async def test_text_stream_decodes_frames_split_anywhere(
    live: Facade, server: ScriptedServer
) -> None:
    deltas = ["héllo", " wörld ", "→ ✓", " 🚀"]
    whole = b"".join(
        [
            *[chunk_event(i, d) for i, d in enumerate(deltas)],
            done_event(generation("".join(deltas))),
        ]
    )
    # 3-byte pieces: lines, field names and multi-byte UTF-8 characters are all cut in two
    pieces: list[bytes | float | str] = []
    for start in range(0, len(whole), 3):
        pieces += [whole[start : start + 3], 0.0005]
    server.on_sse("POST", STREAM, pieces)

    stream = await _text_stream(live)
    received = await live.drain(stream)

    assert received == deltas
    assert stream.result.text == "héllo wörld → ✓ 🚀"


async def test_text_stream_skips_comments_and_joins_multi_line_data(
    live: Facade, server: ScriptedServer
) -> None:
    first = json.dumps({"type": "text_generation_chunk", "index": 0, "delta": "one"})
    second = {"type": "text_generation_chunk", "index": 1, "delta": "two"}
    done = json.dumps({"type": "text_generation_done", "result": generation("onetwo")})
    script: list[bytes | float | str] = [
        b": keep-alive\n\n",
        b":another comment\r\n",
        f"event: text_generation_chunk\r\nid: 1\r\nretry: 500\r\ndata: {first}\r\n\r\n".encode(),
        # one JSON document over three data lines (joined with newlines: still valid JSON)
        b"event: text_generation_chunk\n",
        b'data: {"type": "text_generation_chunk",\n',
        f'data: "index": {second["index"]},\n'.encode(),
        b'data: "delta": "two"}\n\n',
        b": ping\n\n",
        f"data: {done}\n\n".encode(),  # no event line: the type is in the data
    ]
    server.on_sse("POST", STREAM, script)

    stream = await _text_stream(live)

    assert await live.drain(stream) == ["one", "two"]
    assert stream.result.text == "onetwo"


@pytest.mark.parametrize("how", ["abrupt", "clean end"])
async def test_text_stream_cut_in_the_middle_raises_connection_error(
    live: Facade, server: ScriptedServer, how: str
) -> None:
    # the pause before the cut: aiohttp raises a connection's error before handing out the
    # data it has buffered, so bytes still unread when the reset arrives are lost (a race
    # this test is not about)
    server.on_sse(
        "POST",
        STREAM,
        [
            chunk_event(0, "half"),
            chunk_event(1, " a sent"),
            *([0.05, "cut"] if how == "abrupt" else []),
        ],
    )

    stream = await _text_stream(live)
    received: list[str] = []

    def collect(piece: str) -> bool:
        received.append(piece)
        return False

    with pytest.raises(MCPConnectionError):
        await live.drain(stream, until=collect)

    assert received == ["half", " a sent"]  # what came before the cut was delivered
    assert stream.text == "half a sent"
    assert stream.result is None


async def test_text_stream_cut_inside_a_frame_raises_connection_error(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse(  # the pause: see test_text_stream_cut_in_the_middle_raises_connection_error
        "POST", STREAM, [chunk_event(0, "a"), chunk_event(1, "bcd")[:20], 0.05, "cut"]
    )

    stream = await _text_stream(live)

    with pytest.raises(MCPConnectionError):
        await live.drain(stream)
    assert stream.text == "a"


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("generation_error", MCPGenerationError),
        ("rate_limit_exceeded", MCPRateLimitError),
        ("provider_not_configured", MCPProviderNotConfiguredError),
    ],
)
async def test_stream_error_event_raises_the_typed_error(
    live: Facade, server: ScriptedServer, code: str, expected: type[Exception]
) -> None:
    server.on_sse(
        "POST",
        STREAM,
        [chunk_event(0, "so far"), stream_error_event(code, "provider closed the connection")],
    )

    stream = await _text_stream(live)
    with pytest.raises(expected) as info:
        await live.drain(stream)

    assert info.value.code == code  # type: ignore[attr-defined]
    assert "provider closed the connection" in str(info.value)
    assert info.value.request_id == "req_stream"  # type: ignore[attr-defined]
    assert stream.text == "so far"


async def test_error_before_the_stream_starts_comes_as_envelope(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_json(
        "POST",
        STREAM,
        (503, err("text_generation", "provider_not_configured", "set DEEPSEEK_API_KEY")),
    )

    stream = await _text_stream(live)
    with pytest.raises(MCPProviderNotConfiguredError) as info:
        await live.drain(stream)

    assert info.value.http_status == 503


async def test_stream_idle_past_timeout_raises_timeout_error(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse("POST", STREAM, [chunk_event(0, "a"), 2.0, done_event(generation("a"))])

    stream = await _text_stream(live, timeout=0.2)
    started = time.monotonic()
    with pytest.raises(MCPTimeoutError):
        await live.drain(stream)

    assert time.monotonic() - started < 1.5


async def test_leaving_a_text_stream_early_closes_the_connection(
    live: Facade, server: ScriptedServer
) -> None:
    script: list[bytes | float | str] = []
    for i in range(50):
        script += [chunk_event(i, f"w{i} "), 0.02]
    server.on_sse("POST", STREAM, [*script, done_event(generation("..."))])

    stream = await _text_stream(live)
    started = time.monotonic()
    taken = await live.drain(stream, until=lambda piece: piece == "w2 ")

    assert taken == ["w0 ", "w1 ", "w2 "]
    for _ in range(100):  # the server notices at its next write
        if server.disconnects:
            break
        await asyncio.sleep(0.01)
    assert server.disconnects == 1
    assert time.monotonic() - started < 0.9  # well before the 50 chunks' second
    assert stream.result is None


# --------------------------------------------------------------------------- execution


def _code_job_server(server: ScriptedServer, *event_scripts: list[bytes | float | str]) -> None:
    server.on_json("POST", "/v1/jobs", (200, ok("submit_job", submitted())))
    server.on_sse("GET", EVENTS, *event_scripts)


FINISHED = job(
    "COMPLETED",
    100,
    result=execution("a\nb\n", stderr="warn\n"),
)


async def test_execute_code_stream_yields_stdout_and_stderr_in_order(
    live: Facade, server: ScriptedServer
) -> None:
    _code_job_server(
        server,
        [
            status_event("PENDING"),
            status_event("RUNNING"),
            output_event("stdout", "a\n"),
            output_event("stderr", "warn\n"),
            progress_event(50),
            output_event("stdout", "b\n"),
            status_event("COMPLETED", 100),
            result_event(FINISHED),
        ],
    )
    out: list[str] = []
    err_: list[str] = []

    stream = await live(
        "execute_code_stream",
        "print('a'); import sys; print('warn', file=sys.stderr); print('b')",
        "python",
        on_stdout=out.append,
        on_stderr=err_.append,
    )
    assert stream.job_id == JOB_ID
    chunks = await live.drain(stream)

    assert all(isinstance(c, JobOutputEvent) for c in chunks)
    assert [(c.stream.value, c.data) for c in chunks] == [
        ("stdout", "a\n"),
        ("stderr", "warn\n"),
        ("stdout", "b\n"),
    ]
    assert out == ["a\n", "b\n"] and err_ == ["warn\n"]
    assert isinstance(stream.result, CodeExecutionResult)
    assert stream.result.stdout == "a\nb\n" and stream.result.exit_code == 0
    assert stream.job.status == JobState.COMPLETED
    # this server has no submit_job_stream (404): the client fell back to submit_job
    assert [(r.method, r.path) for r in server.requests[:2]] == [
        ("POST", "/v1/jobs/stream"),
        ("POST", "/v1/jobs"),
    ]
    submit = server.requests[1]
    assert submit.json()["input"]["data"]["code"].startswith("print('a')")


async def test_execute_code_stream_yields_output_of_a_stream_it_does_not_know(
    live: Facade, server: ScriptedServer
) -> None:
    """OutputStream is response-only: a later MINOR version may add a stream name. Its
    chunks are yielded (no callback is called for them), the others are unaffected."""
    _code_job_server(
        server,
        [
            status_event("RUNNING"),
            output_event("stdout", "a\n"),
            output_event("stdlog", "note\n"),
            output_event("stdout", "b\n"),
            result_event(FINISHED),
        ],
    )
    out: list[str] = []

    stream = await live("execute_code_stream", "print(1)", "python", on_stdout=out.append)
    chunks = await live.drain(stream)

    assert [(c.stream.value, c.data) for c in chunks] == [
        ("stdout", "a\n"),
        ("stdlog", "note\n"),
        ("stdout", "b\n"),
    ]
    assert out == ["a\n", "b\n"]
    assert stream.result is not None and stream.result.stdout == "a\nb\n"


async def test_execute_code_stream_awaits_async_callbacks(
    live: Facade, server: ScriptedServer
) -> None:
    # (the sync client's callbacks run on its private loop, so coroutines work there too)
    _code_job_server(
        server,
        [
            status_event(),
            output_event("stdout", "x"),
            output_event("stderr", "y"),
            result_event(FINISHED),
        ],
    )
    seen: list[tuple[str, str]] = []

    async def on_out(data: str) -> None:
        await asyncio.sleep(0)
        seen.append(("out", data))

    async def on_err(data: str) -> None:
        seen.append(("err", data))

    stream = await live("execute_code_stream", "x", "python", on_stdout=on_out, on_stderr=on_err)
    await live.drain(stream)

    assert seen == [("out", "x"), ("err", "y")]


async def test_a_non_zero_exit_is_a_result_not_an_error_when_streaming(
    live: Facade, server: ScriptedServer
) -> None:
    _code_job_server(
        server,
        [
            status_event(),
            output_event("stderr", "boom\n"),
            result_event(job("COMPLETED", 100, result=execution("", exit_code=2, stderr="boom\n"))),
        ],
    )

    stream = await live("execute_code_stream", "exit(2)", "python")
    await live.drain(stream)

    assert stream.result.exit_code == 2


async def test_execute_code_and_wait_with_callbacks_streams_and_checks(
    live: Facade, server: ScriptedServer
) -> None:
    _code_job_server(
        server,
        [
            status_event(),
            output_event("stdout", "1\n"),
            output_event("stdout", "2\n"),
            result_event(job("COMPLETED", 100, result=execution("1\n2\n", exit_code=3))),
        ],
    )
    out: list[str] = []

    with pytest.raises(MCPExecutionError) as info:
        await live(
            "execute_code_and_wait", "print(1); print(2); exit(3)", "python", on_stdout=out.append
        )

    assert out == ["1\n", "2\n"]
    assert info.value.exit_code == 3 and info.value.output == "1\n2\n"


async def test_execute_code_and_wait_with_callbacks_returns_the_result(
    live: Facade, server: ScriptedServer
) -> None:
    _code_job_server(server, [status_event(), output_event("stderr", "e"), result_event(FINISHED)])
    errs: list[str] = []

    result = await live("execute_code_and_wait", "x", "python", on_stderr=errs.append)

    assert result.stdout == "a\nb\n" and errs == ["e"]


async def test_a_timed_out_streamed_execution_raises_timeout_error(
    live: Facade, server: ScriptedServer
) -> None:
    failed = job(
        "FAILED",
        100,
        result=execution("", exit_code=137, timed_out=True),
        error={"code": "execution_timeout", "message": "ran past 2 s", "details": {"timeout": 2}},
    )
    _code_job_server(
        server, [status_event(), output_event("stdout", "tick\n"), result_event(failed)]
    )

    with pytest.raises(MCPTimeoutError) as info:
        await live(
            "execute_code_and_wait", "while True: pass", "python", timeout=2, on_stdout=print
        )

    assert info.value.timeout == 2


async def test_execute_code_stream_reconnects_when_cut(
    live: Facade, server: ScriptedServer
) -> None:
    _code_job_server(
        server,
        [status_event(), output_event("stdout", "first\n"), 0.05, "cut"],  # pause: see above
        # a new connection starts with the current state and replays the output so far
        # (which the stream must not yield twice), then what follows
        [
            status_event("RUNNING", 50),
            output_event("stdout", "fir"),
            output_event("stdout", "st\nsec"),
            output_event("stdout", "ond\n"),
            result_event(FINISHED),
        ],
    )

    stream = await live("execute_code_stream", "x", "python")
    chunks = await live.drain(stream)

    assert "".join(c.data for c in chunks) == "first\nsecond\n"
    assert [c.data for c in chunks] == ["first\n", "sec", "ond\n"]
    assert stream.result.exit_code == 0
    assert server.paths("GET").count(EVENTS) == 2


async def test_execute_code_stream_job_failing_to_start_raises_its_error(
    live: Facade, server: ScriptedServer
) -> None:
    failed = job("FAILED", 0, error={"code": "unsupported_language", "message": "no cobol here"})
    _code_job_server(server, [status_event("PENDING"), result_event(failed)])

    stream = await live("execute_code_stream", "x", "python")
    with pytest.raises(MCPUnsupportedLanguageError):
        await live.drain(stream)


def _cancel_route(server: ScriptedServer, then: str | None = None) -> None:
    """Answer the job's cancel (and set the flag ``then``)."""

    async def cancel(request: web.Request) -> web.Response:
        if then is not None:
            server.flag(then).set()
        return web.json_response(
            ok(
                "cancel_job",
                {
                    "job_id": JOB_ID,
                    "status": "CANCELED",
                    "canceled_at": TS,
                    "reason": (await request.json())["input"].get("reason"),
                },
            )
        )

    server.on("POST", f"/v1/jobs/{JOB_ID}/cancel", cancel)


async def test_kill_cancels_the_job_and_ends_the_stream(
    live: Facade, server: ScriptedServer
) -> None:
    canceled = job(
        "CANCELED",
        10,
        error={"code": "job_canceled", "message": "canceled"},
        cancel_reason="killed by the client",
    )
    _code_job_server(
        server,
        [
            status_event(),
            output_event("stdout", "tick\n"),
            "mark:ticked",
            "wait:killed",
            status_event("CANCELED", 10),
            result_event(canceled),
        ],
    )

    _cancel_route(server, then="killed")

    stream = await live("execute_code_stream", "while True: print('tick')", "python")
    consumer = asyncio.ensure_future(live.drain(stream))
    for _ in range(200):
        if "ticked" in server.marks:
            break
        await asyncio.sleep(0.01)
    killed = await live.run(stream.kill)

    assert killed.status == JobState.CANCELED
    assert killed.reason == "killed by the client"
    with pytest.raises(MCPCanceledError):
        await asyncio.wait_for(consumer, 5)
    assert stream.result is None
    cancel_request = [r for r in server.requests if r.path.endswith("/cancel")]
    assert len(cancel_request) == 1


def _cancel_requests(server: ScriptedServer) -> list[Any]:
    return [r for r in server.requests if r.path == f"/v1/jobs/{JOB_ID}/cancel"]


async def test_a_failing_output_callback_cancels_the_job_it_was_waiting_for(
    live: Facade, server: ScriptedServer
) -> None:
    """execute_code_and_wait with a callback runs a job: when the callback raises, the call
    ends with that error and the job, whose output now goes nowhere, is cancelled."""
    _code_job_server(server, [status_event(), output_event("stdout", "1\n"), "wait:never"])
    _cancel_route(server)

    def callback(text: str) -> None:
        raise ValueError("the callback failed")

    with pytest.raises(ValueError, match="the callback failed"):
        await live("execute_code_and_wait", "print(1)", "python", on_stdout=callback)
    await live.aclose()  # waits for the background cancel

    (cancel,) = _cancel_requests(server)
    assert cancel.json()["input"]["reason"] == "the caller stopped waiting"
    server.release("never")


async def test_a_cancelled_wait_with_callbacks_cancels_its_job(
    make_facade: Any, server: ScriptedServer
) -> None:
    _code_job_server(server, [status_event(), output_event("stdout", "1\n"), "wait:never"])
    _cancel_route(server)
    got = asyncio.Event()
    client = DeepExecAsyncClient(endpoint=server.url, max_retries=0)
    call = asyncio.ensure_future(
        client.execute_code_and_wait("print(1)", "python", on_stdout=lambda text: got.set())
    )
    await asyncio.wait_for(got.wait(), 5)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await client.close()

    assert len(_cancel_requests(server)) == 1
    server.release("never")


async def test_a_program_error_does_not_cancel_anything(
    live: Facade, server: ScriptedServer
) -> None:
    """A job that failed on the server is no abandoned job: nothing is cancelled."""
    failed = job("FAILED", 100, error={"code": "execution_timeout", "message": "too long"})
    _code_job_server(server, [status_event(), result_event(failed)])
    _cancel_route(server)

    with pytest.raises(MCPError):
        await live("execute_code_and_wait", "x", "python", on_stdout=lambda text: None)
    await live.aclose()

    assert _cancel_requests(server) == []


# --------------------------------------------------------------------------- sessions


SESSION = "sess_0123456789abcdef0123456789abcdef"


async def test_session_streams_and_jobs_carry_the_session_id(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_json(
        "POST",
        "/v1/sessions",
        (
            200,
            ok(
                "create_session",
                {"session_id": SESSION, "created_at": TS, "expires_at": TS},
            ),
        ),
    )
    server.on_json(
        "DELETE",
        f"/v1/sessions/{SESSION}",
        (200, ok("close_session", {"session_id": SESSION, "closed_at": TS})),
    )
    server.on_sse("POST", STREAM, [chunk_event(0, "hi"), done_event(generation("hi"))])
    _code_job_server(server, [status_event(), output_event("stdout", "x"), result_event(FINISHED)])

    session = await live("create_session")
    text = await live.drain(await live.run(lambda: session.generate_text_stream("Hi")))
    chunks = await live.drain(
        await live.run(lambda: session.execute_code_stream("print(1)", "python", {"A": "1"}))
    )
    await live.run(lambda: session.generate_text_job("Hi", max_tokens=5))
    await live.run(session.close)

    assert text == ["hi"] and [c.data for c in chunks] == ["x"]
    bodies = [
        r.json()
        for r in server.requests
        if r.method == "POST" and r.path not in ("/v1/sessions", "/v1/jobs/stream")
    ]
    assert [b["session_id"] for b in bodies] == [SESSION, SESSION, SESSION]
    assert bodies[1]["input"]["data"]["environment"] == {"A": "1"}
    assert bodies[2]["input"]["job_type"] == "text_generation"
    assert server.paths("DELETE") == [f"/v1/sessions/{SESSION}"]


async def test_execution_stream_survives_many_cuts_while_output_flows(
    live: Facade, server: ScriptedServer
) -> None:
    # each connection replays the output so far, adds one line, and is cut
    cut_after_output = [
        [status_event(), *(output_event("stdout", f"{j}\n") for j in range(i + 1)), "cut"]
        for i in range(7)
    ]
    replay = [output_event("stdout", f"{j}\n") for j in range(7)]
    _code_job_server(server, *cut_after_output, [status_event(), *replay, result_event(FINISHED)])

    stream = await live("execute_code_stream", "x", "python")
    chunks = await live.drain(stream)

    assert [c.data for c in chunks] == [f"{i}\n" for i in range(7)]
    assert stream.result.exit_code == 0
    assert server.paths("GET").count(EVENTS) == 8


async def test_execution_stream_gives_up_after_cuts_in_a_row(
    live: Facade, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepexec_sdk._streams as streams_module

    monkeypatch.setattr(streams_module, "_MAX_RECONNECTS", 3)
    _code_job_server(server, [status_event(), "cut"])
    server.on_json("GET", f"/v1/jobs/{JOB_ID}", (200, ok("job_status", job("RUNNING", 5))))

    stream = await live("execute_code_stream", "x", "python")
    with pytest.raises(MCPConnectionError, match="3 times in a row"):
        await live.drain(stream)

    assert server.paths("GET").count(EVENTS) == 3
    assert stream.result is None


async def test_execution_stream_that_ended_while_cut_off_finishes(
    live: Facade, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import deepexec_sdk._streams as streams_module

    monkeypatch.setattr(streams_module, "_MAX_RECONNECTS", 2)
    _code_job_server(server, [status_event(), "cut"])
    server.on_json("GET", f"/v1/jobs/{JOB_ID}", (200, ok("job_status", FINISHED)))

    stream = await live("execute_code_stream", "x", "python")
    assert await live.drain(stream) == []

    assert stream.result.stdout == "a\nb\n"


# --------------------------------------------------------------------------- secrets


async def test_stream_errors_never_carry_a_key(make_facade: Any, server: ScriptedServer) -> None:
    live = make_facade(
        endpoint=server.url, max_retries=0, deepseek_key=DEEPSEEK_KEY, e2b_key=E2B_KEY
    )
    server.on_sse(
        "POST",
        STREAM,
        [
            chunk_event(0, "a"),
            stream_error_event("authentication_error", f"key {DEEPSEEK_KEY} rejected"),
        ],
    )
    server.on_sse(
        "GET",
        EVENTS,
        [status_event(), stream_error_event("permission_denied", f"not for {E2B_KEY}")],
    )

    stream = await _text_stream(live)
    with pytest.raises(MCPAuthError) as text_error:
        await live.drain(stream)
    with pytest.raises(MCPPermissionError) as job_error:
        await live.iterate("job_events", JOB_ID)

    assert server.requests[0].headers["X-DeepSeek-Key"] == DEEPSEEK_KEY
    for exc in (text_error.value, job_error.value):
        for text in (str(exc), repr(exc), repr(exc.args)):
            assert DEEPSEEK_KEY not in text and E2B_KEY not in text
    assert "rejected" in str(text_error.value)


async def test_leaving_a_keyed_text_stream_early_closes_the_connection(
    make_facade: Any, server: ScriptedServer
) -> None:
    live = make_facade(endpoint=server.url, max_retries=0, deepseek_key=DEEPSEEK_KEY)
    script: list[bytes | float | str] = []
    for i in range(50):
        script += [chunk_event(i, f"w{i} "), 0.02]
    server.on_sse("POST", STREAM, [*script, done_event(generation("..."))])

    stream = await _text_stream(live)
    assert await live.drain(stream, until=lambda piece: piece == "w0 ") == ["w0 "]
    for _ in range(100):
        if server.disconnects:
            break
        await asyncio.sleep(0.01)

    assert server.disconnects == 1
