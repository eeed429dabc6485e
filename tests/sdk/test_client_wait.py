"""wait_for_job and the result getters built on it, against a real server: the event stream
is followed (no polling), progress callbacks, max_wait_time, the polling fallback, and
reconnection. Both clients."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import deepexec_sdk._client as client_module
from deepexec_sdk import CodeExecutionResult, JobState, JobStatus, TextGenerationResult
from deepexec_sdk.exceptions import (
    MCPCanceledError,
    MCPExecutionError,
    MCPGenerationError,
    MCPNotFoundError,
    MCPPermissionError,
    MCPProtocolError,
    MCPTimeoutError,
    MCPUnsupportedLanguageError,
)

from .conftest import (
    CLIENT_TEST,
    JOB_ID,
    Facade,
    ScriptedServer,
    err,
    execution,
    generation,
    job,
    ok,
    progress_event,
    result_event,
    sse,
    status_event,
    stream_error_event,
    submitted,
    submitted_event,
)

pytestmark = CLIENT_TEST

EVENTS = f"/v1/jobs/{JOB_ID}/events"
STATUS = f"/v1/jobs/{JOB_ID}"
DONE = job("COMPLETED", 100, result=execution("42\n"))


def _pings(seconds: float) -> list[bytes | float | str]:
    """Keep a stream open for ``seconds`` with comments (so a gone client is noticed)."""
    return [item for _ in range(int(seconds / 0.05)) for item in (0.05, b": ping\n\n")]


async def test_wait_follows_the_event_stream_and_returns_at_once(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse(
        "GET",
        EVENTS,
        [
            status_event("RUNNING", 0),
            0.05,
            progress_event(10),
            progress_event(10),
            0.05,
            progress_event(50),
            0.3,  # long past the first poll intervals (50 ms, 75 ms, 112 ms...)
            "mark:result",
            result_event(DONE),
        ],
    )
    server.on_json("GET", STATUS, (200, ok("job_status", job("RUNNING", 50))))
    progress: list[int] = []

    status = await live("wait_for_job", JOB_ID, on_progress=progress.append)
    returned = time.monotonic()

    assert isinstance(status, JobStatus)
    assert status.status == JobState.COMPLETED
    assert isinstance(status.result, CodeExecutionResult) and status.result.output == "42\n"
    assert server.paths("GET") == [EVENTS]  # the job's status was never polled
    assert returned - server.marks["result"] < client_module._POLL_START  # not a poll later
    assert progress == [0, 10, 50, 100]  # every change, and only changes


async def test_on_progress_may_be_a_coroutine(live: Facade, server: ScriptedServer) -> None:
    server.on_sse(
        "GET", EVENTS, [status_event("RUNNING", 5), progress_event(70), result_event(DONE)]
    )
    seen: list[int] = []

    async def on_progress(value: int) -> None:
        await asyncio.sleep(0)
        seen.append(value)

    await live("wait_for_job", JOB_ID, on_progress=on_progress)

    assert seen == [5, 70, 100]


async def test_max_wait_time_raises_timeout_error_carrying_it(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse("GET", EVENTS, [status_event("RUNNING", 0), *_pings(3)])

    started = time.monotonic()
    with pytest.raises(MCPTimeoutError) as info:
        await live("wait_for_job", JOB_ID, max_wait_time=0.3)
    elapsed = time.monotonic() - started

    assert info.value.timeout == 0.3
    assert "0.3" in str(info.value)
    assert 0.3 <= elapsed < 1.5


async def test_max_wait_time_also_bounds_polling(live: Facade, server: ScriptedServer) -> None:
    server.on_json("GET", STATUS, (200, ok("job_status", job("RUNNING", 1))))

    with pytest.raises(MCPTimeoutError) as info:
        await live("wait_for_job", JOB_ID, poll_interval=0.05, max_wait_time=0.25)

    assert info.value.timeout == 0.25
    assert 2 <= server.paths("GET").count(STATUS) <= 8
    assert EVENTS not in server.paths()  # with a poll_interval, no event stream


@pytest.mark.parametrize("answer", ["not_found envelope", "bare 404 page"])
async def test_falls_back_to_polling_with_growing_intervals(
    live: Facade,
    server: ScriptedServer,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
) -> None:
    monkeypatch.setattr(client_module, "_POLL_START", 0.01)
    if answer == "not_found envelope":
        server.on_json("GET", EVENTS, (404, err("job_events", "not_found", "no route")))
    else:

        async def bare(request: Any) -> Any:
            from aiohttp import web

            return web.Response(status=404, text="404: Not Found")

        server.on("GET", EVENTS, bare)
    running = [(200, ok("job_status", job("RUNNING", p))) for p in (0, 0, 20, 40, 40, 60, 80)]
    server.on_json("GET", STATUS, *running, (200, ok("job_status", DONE)))
    progress: list[int] = []

    status = await live("wait_for_job", JOB_ID, on_progress=progress.append)

    assert status.status == JobState.COMPLETED
    assert progress == [0, 20, 40, 60, 80, 100]
    polls = [r.at for r in server.requests if r.path == STATUS]
    assert len(polls) == 8  # one to see the job exists, then one per poll
    gaps = [b - a for a, b in zip(polls[1:], polls[2:], strict=False)]
    assert gaps[-1] > 2.5 * gaps[0]  # intervals grow (x1.5 each)
    assert gaps[0] >= 0.008

    # the client remembers: the next wait polls at once, without trying the stream
    server.on_json("GET", STATUS, (200, ok("job_status", DONE)))
    await live("wait_for_job", JOB_ID)
    assert server.paths().count(EVENTS) == 1


async def test_no_such_job_raises_not_found(live: Facade, server: ScriptedServer) -> None:
    server.on_json("GET", EVENTS, (404, err("job_events", "not_found", f"no job {JOB_ID}")))
    server.on_json("GET", STATUS, (404, err("job_status", "not_found", f"no job {JOB_ID}")))

    with pytest.raises(MCPNotFoundError) as info:
        await live("wait_for_job", JOB_ID)

    assert info.value.http_status == 404


@pytest.mark.parametrize("cut", ["abrupt", "clean end"])
async def test_reconnects_when_the_stream_is_cut(
    live: Facade, server: ScriptedServer, cut: str
) -> None:
    server.on_sse(
        "GET",
        EVENTS,
        [status_event("RUNNING", 0), progress_event(30), *(["cut"] if cut == "abrupt" else [])],
        [status_event("RUNNING", 30), progress_event(60), result_event(DONE)],
    )
    server.on_json("GET", STATUS, (200, ok("job_status", job("RUNNING", 30))))
    progress: list[int] = []

    status = await live("wait_for_job", JOB_ID, on_progress=progress.append)

    assert status.status == JobState.COMPLETED
    assert server.paths().count(EVENTS) == 2
    assert progress == [0, 30, 60, 100]


async def test_a_silent_stream_counts_as_dead_and_is_reconnected(
    make_facade: Any, server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_module, "_STREAM_IDLE_LIMIT", 0.2)
    live = make_facade(endpoint=server.url, max_retries=0, timeout=0.2)
    # the first connection says one thing, then nothing at all (no pings): a dead peer
    server.on_sse(
        "GET",
        EVENTS,
        [status_event("RUNNING", 10), "wait:silence"],
        [status_event("RUNNING", 10), result_event(DONE)],
    )
    server.on_json("GET", STATUS, (200, ok("job_status", job("RUNNING", 10))))

    started = time.monotonic()
    status = await live("wait_for_job", JOB_ID)

    assert status.status == JobState.COMPLETED
    assert server.paths().count(EVENTS) == 2
    assert time.monotonic() - started < 4.0  # did not wait for the silent peer
    server.flag("silence").set()  # let the silent handler finish before teardown
    await asyncio.sleep(0.05)


async def test_a_job_that_ends_while_disconnected_is_seen_on_reconnect(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse("GET", EVENTS, [status_event("RUNNING", 0), "cut"])
    server.on_json("GET", STATUS, (200, ok("job_status", DONE)))

    status = await live("wait_for_job", JOB_ID)

    assert status.status == JobState.COMPLETED
    assert server.paths().count(EVENTS) == 1


async def test_a_transient_stream_error_event_is_survived(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse(
        "GET",
        EVENTS,
        [status_event("RUNNING", 0), stream_error_event("service_unavailable", "restarting")],
        [status_event("RUNNING", 0), result_event(DONE)],
    )
    server.on_json("GET", STATUS, (200, ok("job_status", job("RUNNING", 0))))

    status = await live("wait_for_job", JOB_ID)

    assert status.status == JobState.COMPLETED


async def test_a_permanent_stream_error_event_is_raised(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse(
        "GET",
        EVENTS,
        [status_event("RUNNING", 0), stream_error_event("permission_denied", "not yours")],
    )

    with pytest.raises(MCPPermissionError):
        await live("wait_for_job", JOB_ID)


async def test_unknown_events_are_skipped(live: Facade, server: ScriptedServer) -> None:
    """An event type of a later MINOR version is skipped (the SSE convention)."""
    server.on_sse(
        "GET",
        EVENTS,
        [
            status_event("RUNNING", 0),
            sse("job_weird_event", {"type": "job_weird_event"}),
            result_event(DONE),
        ],
    )

    status = await live("wait_for_job", JOB_ID)

    assert status.status == JobState.COMPLETED


async def test_a_known_event_that_does_not_fit_is_a_protocol_error(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse(
        "GET", EVENTS, [sse("job_progress_event", {"type": "job_progress_event", "job_id": 5})]
    )

    with pytest.raises(MCPProtocolError):
        await live("wait_for_job", JOB_ID)


# --------------------------------------------------------------------------- results


async def test_execute_code_job_then_get_code_execution_result(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_json("POST", "/v1/jobs", (200, ok("submit_job", submitted())))
    server.on_sse(
        "GET", EVENTS, [status_event("PENDING"), status_event("RUNNING"), result_event(DONE)]
    )

    submitted_job = await live("execute_code_job", "print(42)", "python", timeout=30)
    result = await live("get_code_execution_result", submitted_job.job_id)

    assert submitted_job.job_id == JOB_ID
    assert isinstance(result, CodeExecutionResult)
    assert result.output == "42\n" and result.exit_code == 0
    assert server.requests[0].json()["input"]["data"] == {
        "code": "print(42)",
        "language": "python",
        "timeout": 30,
    }


async def test_get_code_execution_result_checks_the_exit_code(
    live: Facade, server: ScriptedServer
) -> None:
    failed_run = job("COMPLETED", 100, result=execution("oops\n", exit_code=1))
    server.on_sse("GET", EVENTS, [result_event(failed_run)])

    with pytest.raises(MCPExecutionError) as info:
        await live("get_code_execution_result", JOB_ID)
    assert info.value.exit_code == 1 and info.value.output == "oops\n"

    result = await live("get_code_execution_result", JOB_ID, check=False)
    assert result.exit_code == 1


@pytest.mark.parametrize(
    ("end", "expected", "attrs"),
    [
        (
            job(
                "FAILED",
                100,
                result=execution("", exit_code=137, timed_out=True),
                error={
                    "code": "execution_timeout",
                    "message": "ran past 5 s",
                    "details": {"timeout": 5},
                },
            ),
            MCPTimeoutError,
            {"timeout": 5, "code": "execution_timeout"},
        ),
        (
            job("FAILED", 0, error={"code": "unsupported_language", "message": "no cobol"}),
            MCPUnsupportedLanguageError,
            {"code": "unsupported_language"},
        ),
        (
            job(
                "CANCELED",
                10,
                error={"code": "job_canceled", "message": "canceled"},
                cancel_reason="no longer needed",
            ),
            MCPCanceledError,
            {"code": "job_canceled"},
        ),
    ],
    ids=["timed out", "unsupported language", "canceled"],
)
async def test_a_job_that_did_not_complete_raises_its_error(
    live: Facade,
    server: ScriptedServer,
    end: dict[str, Any],
    expected: type[Exception],
    attrs: dict[str, Any],
) -> None:
    server.on_sse("GET", EVENTS, [status_event("RUNNING"), result_event(end)])

    with pytest.raises(expected) as info:
        await live("get_code_execution_result", JOB_ID)

    for name, value in attrs.items():
        assert getattr(info.value, name) == value
    assert JOB_ID in str(info.value)


async def test_generate_text_job_then_get_text_generation_result(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_json("POST", "/v1/jobs", (200, ok("submit_job", submitted())))
    finished = job("COMPLETED", 100, job_type="text_generation", result=generation("A poem."))
    server.on_sse(
        "GET", EVENTS, [status_event("RUNNING", 0), progress_event(40), result_event(finished)]
    )
    progress: list[int] = []

    submitted_job = await live("generate_text_job", "Write a short poem", max_tokens=200)
    result = await live(
        "get_text_generation_result", submitted_job.job_id, on_progress=progress.append
    )

    assert isinstance(result, TextGenerationResult)
    assert result.text == "A poem." and result.usage.total_tokens == 12
    assert progress == [0, 40, 100]


async def test_a_failed_generation_job_raises_the_generation_error(
    live: Facade, server: ScriptedServer
) -> None:
    failed = job(
        "FAILED",
        30,
        job_type="text_generation",
        error={"code": "generation_error", "message": "provider died"},
    )
    server.on_sse("GET", EVENTS, [result_event(failed)])

    with pytest.raises(MCPGenerationError, match="provider died"):
        await live("get_text_generation_result", JOB_ID)


async def test_asking_a_code_job_for_a_text_result_is_a_protocol_error(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse("GET", EVENTS, [result_event(DONE)])

    with pytest.raises(MCPProtocolError):
        await live("get_text_generation_result", JOB_ID)


async def test_get_result_honours_max_wait_time(live: Facade, server: ScriptedServer) -> None:
    server.on_sse("GET", EVENTS, [status_event("RUNNING", 0), *_pings(3)])

    with pytest.raises(MCPTimeoutError) as info:
        await live("get_code_execution_result", JOB_ID, max_wait_time=0.2)

    assert info.value.timeout == 0.2


async def test_job_events_iterates_typed_events(live: Facade, server: ScriptedServer) -> None:
    server.on_sse(
        "GET", EVENTS, [status_event("RUNNING", 0), progress_event(50), result_event(DONE)]
    )

    events = await live.iterate("job_events", JOB_ID)

    assert [e.type for e in events] == [
        "job_status_event",
        "job_progress_event",
        "job_result_event",
    ]
    assert events[-1].job.status == JobState.COMPLETED


# --------------------------------------------------------------------------- submit_job_stream

JOBS_STREAM = "/v1/jobs/stream"


async def _disconnects(server: ScriptedServer, n: int) -> None:
    """Give the server up to 2 s to notice ``n`` clients gone (at its next write)."""
    for _ in range(200):
        if server.disconnects >= n:
            return
        await asyncio.sleep(0.01)


def _job_id(i: int) -> str:
    return f"job_{i:032x}"


async def test_the_wait_reads_the_stream_its_submit_opened(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse(
        "POST",
        JOBS_STREAM,
        [
            submitted_event(status="RUNNING"),
            status_event("RUNNING"),
            progress_event(60),
            result_event(DONE),
        ],
    )
    progress: list[int] = []

    submitted_job = await live("execute_code_job", "print(42)", "python")
    result = await live(
        "get_code_execution_result", submitted_job.job_id, on_progress=progress.append
    )

    assert submitted_job.job_id == JOB_ID and submitted_job.status == JobState.RUNNING
    assert result.stdout == "42\n" and progress == [0, 60, 100]
    assert server.paths() == [JOBS_STREAM]  # no second request


async def test_a_held_stream_cut_before_the_result_reconnects_to_the_job_events(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse("POST", JOBS_STREAM, [submitted_event(), status_event("RUNNING"), "cut"])
    server.on_json("GET", STATUS, (200, ok("job_status", job("RUNNING", 10))))
    server.on_sse("GET", EVENTS, [status_event("RUNNING", 10), result_event(DONE)])

    submitted_job = await live("execute_code_job", "print(42)", "python")
    result = await live("get_code_execution_result", submitted_job.job_id)

    assert result.stdout == "42\n"
    assert server.paths().count(EVENTS) == 1


async def test_a_wait_with_a_poll_interval_closes_the_held_stream_and_polls(
    live: Facade, server: ScriptedServer
) -> None:
    server.on_sse("POST", JOBS_STREAM, [submitted_event(), *_pings(5.0)])
    server.on_json("GET", STATUS, (200, ok("job_status", DONE)))

    submitted_job = await live("execute_code_job", "print(42)", "python")
    status = await live("wait_for_job", submitted_job.job_id, poll_interval=0.01)

    assert status.status == JobState.COMPLETED
    assert server.paths() == [JOBS_STREAM, STATUS]
    await _disconnects(server, 1)
    assert server.disconnects == 1  # the held stream was closed, not left open


async def test_at_most_eight_submit_streams_are_held_and_close_closes_them(
    live: Facade, server: ScriptedServer
) -> None:
    scripts = [[submitted_event(_job_id(i)), *_pings(5.0)] for i in range(10)]
    server.on_sse("POST", JOBS_STREAM, *scripts)
    done = job("COMPLETED", 100, result=execution("42\n"))
    server.on_sse(
        "GET", f"/v1/jobs/{_job_id(0)}/events", [result_event({**done, "job_id": _job_id(0)})]
    )

    ids = [(await live("execute_code_job", "print(42)", "python")).job_id for _ in range(10)]

    assert ids == [_job_id(i) for i in range(10)]
    await _disconnects(server, 2)
    assert server.disconnects == 2  # the two oldest, beyond the cap of 8
    # the oldest job's stream is gone: its wait opens the job's event stream
    status = await live("wait_for_job", _job_id(0))
    assert status.job_id == _job_id(0) and status.status == JobState.COMPLETED
    await live.aclose()
    await _disconnects(server, 10)
    assert server.disconnects == 10  # close() closed the 8 held streams


async def test_a_finished_stream_gives_its_connection_back_for_the_next_call(
    live: Facade, server: ScriptedServer
) -> None:
    # (the server ends each stream a moment after its final event, as the reference
    # server does once its handler returns)
    server.on_sse(
        "POST", JOBS_STREAM, [submitted_event(), status_event("RUNNING"), result_event(DONE), 0.01]
    )
    server.on_sse("GET", EVENTS, [status_event("RUNNING"), result_event(DONE), 0.01])
    server.on_json("GET", STATUS, (200, ok("job_status", DONE)))

    for _ in range(3):
        submitted_job = await live("execute_code_job", "print(42)", "python")
        assert (await live("get_code_execution_result", submitted_job.job_id)).stdout == "42\n"
        await asyncio.sleep(0.05)  # the stream's end is read in the background
    await live("wait_for_job", JOB_ID)  # a job_events stream, read to its end too
    await asyncio.sleep(0.05)
    await live("get_job_status", JOB_ID)

    assert server.paths() == [JOBS_STREAM, JOBS_STREAM, JOBS_STREAM, EVENTS, STATUS]
    assert len({r.peer for r in server.requests}) == 1  # one connection for all
