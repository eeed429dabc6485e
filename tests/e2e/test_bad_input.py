"""Bad input, raw and through the SDK: every request gets its documented error code and
HTTP status in a protocol error envelope; after each, the server is healthy and no job
is lost or changed."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from deepexec_protocol import PROTOCOL_VERSION
from deepexec_protocol.constants import ERROR_CODES

from deepexec_sdk.exceptions import (
    MCPConflictError,
    MCPError,
    MCPNotFoundError,
    MCPPayloadTooLargeError,
    MCPProtocolError,
    MCPUnsupportedLanguageError,
    MCPValidationError,
)
from tests.e2e.conftest import (
    ServerPool,
    ServerProcess,
    envelope,
    make_client,
    provider_env,
    wait_until,
)

MAX_BODY = 64 * 1024
MAX_CODE = 20_000
ZERO_JOB = "job_" + "0" * 32


@attrs.define
class Battery:
    server: ServerProcess
    completed: list[str]  # canary jobs that finished
    running: str  # a canary job that runs for the whole module
    snapshot: dict[str, tuple[str, int]]  # canary job_id -> (status, progress)


@pytest.fixture(scope="module")
def battery(module_servers: ServerPool, fake_thread: Any) -> Any:
    """A server with a small body limit and code limit, and canary jobs."""
    srv = module_servers.start(
        env={
            "DEEPEXEC_SERVER_MAX_BODY_BYTES": str(MAX_BODY),
            "DEEPEXEC_SERVER_MAX_CODE_LENGTH": str(MAX_CODE),
            "DEEPEXEC_SERVER_RATE_LIMIT": "0",
            **provider_env(fake_thread),
        }
    )

    async def setup() -> Battery:
        async with make_client(srv) as c:
            completed = []
            for i in range(3):
                job = await c.execute_code_job(f"print({i})", "python", name=f"canary-{i}")
                await c.get_code_execution_result(job.job_id, max_wait_time=30)
                completed.append(job.job_id)
            running = await c.execute_code_job(
                "import time; time.sleep(300)", "python", timeout=600, name="canary-running"
            )
            await wait_until(
                lambda: _state_is(c, running.job_id, "RUNNING"), 20, what="canary to run"
            )
            snapshot = {j.job_id: (j.status.value, j.progress) async for j in c.list_jobs()}
        return Battery(srv, completed, running.job_id, snapshot)

    bat = asyncio.run(setup())
    yield bat

    async def teardown() -> None:
        async with make_client(srv) as c:
            await c.cancel_job(bat.running, reason="end of module")

    asyncio.run(teardown())


async def _state_is(c: Any, job_id: str, state: str) -> bool:
    return (await c.get_job_status(job_id)).status.value == state


@pytest_asyncio.fixture
async def raw() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def assert_unharmed(bat: Battery) -> None:
    """Health ok; every canary job is still there, unchanged (the running one still
    RUNNING); nothing else appeared."""
    async with make_client(bat.server, max_retries=0) as c:
        health = await c.health()
        assert health.status.value == "ok"
        jobs = {j.job_id: j async for j in c.list_jobs()}
    for job_id in bat.completed:
        assert jobs[job_id].status.value == "COMPLETED"
        assert bat.snapshot[job_id] == (jobs[job_id].status.value, jobs[job_id].progress)
    assert jobs[bat.running].status.value == "RUNNING"
    unexpected = set(jobs) - set(bat.snapshot)
    assert not unexpected, f"bad input created jobs: {unexpected}"


def check_envelope(
    body: dict[str, Any], status: int, code: str, headers: Any, request_id: str | None = None
) -> dict[str, Any]:
    assert ERROR_CODES[code].http_status == status
    assert body["protocol_version"] == PROTOCOL_VERSION
    assert body["status"] == "error"
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "output" not in body or body["output"] is None
    rid = headers.get("X-Request-ID")
    assert rid and body["metadata"]["request_id"] == rid
    if request_id is not None:
        assert rid == request_id
    return body["error"]


def _code_body(**input_: Any) -> dict[str, Any]:
    return envelope("code_execution", {"code": "print(1)", "language": "python", **input_})


J = "application/json"

# id, method, path, body (bytes | dict), content type, status, code, must appear in message,
# details.path
CASES: list[tuple[str, str, str, Any, str | None, int, str, str | None, str | None]] = [
    (
        "malformed-json",
        "POST",
        "/v1/execute",
        b'{"protocol_version": ',
        J,
        400,
        "invalid_request",
        "not valid JSON",
        None,
    ),
    ("empty-body", "POST", "/v1/execute", b"", J, 400, "invalid_request", None, None),
    ("json-array", "POST", "/v1/execute", b"[1, 2]", J, 400, "invalid_request", "list", None),
    (
        "invalid-utf8",
        "POST",
        "/v1/jobs",
        b'{"type": "\xff\xfe"}',
        J,
        400,
        "invalid_request",
        None,
        None,
    ),
    (
        "deep-nesting",
        "POST",
        "/v1/execute",
        b"[" * 30_000 + b"]" * 30_000,
        J,
        400,
        "invalid_request",
        None,
        None,
    ),
    (
        "text-plain",
        "POST",
        "/v1/execute",
        b"print(1)",
        "text/plain",
        415,
        "unsupported_media_type",
        "text/plain",
        None,
    ),
    (
        "form-encoded",
        "POST",
        "/v1/jobs",
        b"a=b",
        "application/x-www-form-urlencoded",
        415,
        "unsupported_media_type",
        None,
        None,
    ),
    (
        "no-content-type",
        "POST",
        "/v1/sessions",
        b"{}",
        None,
        415,
        "unsupported_media_type",
        None,
        None,
    ),
    (
        "unknown-type",
        "POST",
        "/v1/execute",
        {**_code_body(), "type": "frobnicate"},
        J,
        422,
        "validation_error",
        "frobnicate",
        "type",
    ),
    (
        "wrong-protocol-year",
        "POST",
        "/v1/execute",
        {**_code_body(), "protocol_version": "2099.1"},
        J,
        400,
        "protocol_version_mismatch",
        "2099.1",
        None,
    ),
    (
        "garbled-protocol-version",
        "POST",
        "/v1/execute",
        {**_code_body(), "protocol_version": "one"},
        J,
        422,
        "validation_error",
        None,
        "protocol_version",
    ),
    (
        "missing-protocol-version",
        "POST",
        "/v1/execute",
        {k: v for k, v in _code_body().items() if k != "protocol_version"},
        J,
        422,
        "validation_error",
        "protocol_version",
        "protocol_version",
    ),
    (
        "missing-input",
        "POST",
        "/v1/execute",
        {"protocol_version": PROTOCOL_VERSION, "type": "code_execution"},
        J,
        422,
        "validation_error",
        "input",
        "input",
    ),
    (
        "missing-code",
        "POST",
        "/v1/execute",
        envelope("code_execution", {"language": "python"}),
        J,
        422,
        "validation_error",
        "input.code",
        "input.code",
    ),
    (
        "extra-top-field",
        "POST",
        "/v1/execute",
        {**_code_body(), "bogus": 1},
        J,
        422,
        "validation_error",
        "bogus",
        None,
    ),
    (
        "extra-input-field",
        "POST",
        "/v1/execute",
        _code_body(codez="x"),
        J,
        422,
        "validation_error",
        "codez",
        None,
    ),
    (
        "wrong-field-type",
        "POST",
        "/v1/execute",
        _code_body(timeout="ten"),
        J,
        422,
        "validation_error",
        "input.timeout",
        "input.timeout",
    ),
    (
        "out-of-range",
        "POST",
        "/v1/execute",
        _code_body(timeout=100_000),
        J,
        422,
        "validation_error",
        "input.timeout",
        "input.timeout",
    ),
    (
        "code-over-server-limit",
        "POST",
        "/v1/execute",
        _code_body(code="#" * (MAX_CODE + 1)),
        J,
        422,
        "validation_error",
        "input.code",
        "input.code",
    ),
    (
        "unsupported-language",
        "POST",
        "/v1/execute",
        _code_body(language="cobol"),
        J,
        422,
        "unsupported_language",
        "cobol",
        "input.language",
    ),
    (
        "unknown-session",
        "POST",
        "/v1/execute",
        {**_code_body(), "session_id": "sess_" + "0" * 32},
        J,
        404,
        "not_found",
        None,
        "session_id",
    ),
    (
        "env-value-with-nul",
        "POST",
        "/v1/execute",
        _code_body(environment={"GOOD": "1", "BAD": "x\u0000y"}),
        J,
        422,
        "validation_error",
        "BAD",
        "input.environment['BAD']",
    ),
    (
        "job-env-value-with-nul",
        "POST",
        "/v1/jobs",
        envelope(
            "submit_job",
            {
                "name": "x",
                "job_type": "code_execution",
                "data": {"code": "1", "language": "python", "environment": {"BAD": "\u0000"}},
            },
        ),
        J,
        422,
        "validation_error",
        "BAD",
        "input.data.environment['BAD']",
    ),
    (
        "job-data-mismatch",
        "POST",
        "/v1/jobs",
        envelope(
            "submit_job", {"name": "x", "job_type": "code_execution", "data": {"prompt": "hello"}}
        ),
        J,
        422,
        "validation_error",
        None,
        None,
    ),
    (
        "oversized-body",
        "POST",
        "/v1/jobs",
        b'{"x": "' + b"a" * (MAX_BODY + 1000) + b'"}',
        J,
        413,
        "payload_too_large",
        str(MAX_BODY),
        None,
    ),
    (
        "oversized-valid-execute",
        "POST",
        "/v1/execute",
        _code_body(code="x = 1\n" * (MAX_BODY // 6 + 100)),
        J,
        413,
        "payload_too_large",
        None,
        None,
    ),
    ("unknown-job", "GET", f"/v1/jobs/{ZERO_JOB}", None, None, 404, "not_found", ZERO_JOB, None),
    (
        "malformed-job-id",
        "GET",
        "/v1/jobs/../../etc/passwd",
        None,
        None,
        404,
        "not_found",
        None,
        None,
    ),
    ("garbage-job-id", "GET", "/v1/jobs/job_XYZ", None, None, 404, "not_found", None, None),
    (
        "unknown-job-events",
        "GET",
        f"/v1/jobs/{ZERO_JOB}/events",
        None,
        None,
        404,
        "not_found",
        None,
        None,
    ),
    (
        "cancel-unknown-job",
        "POST",
        f"/v1/jobs/{ZERO_JOB}/cancel",
        envelope("cancel_job", {"reason": "x"}),
        J,
        404,
        "not_found",
        None,
        None,
    ),
    (
        "close-unknown-session",
        "DELETE",
        "/v1/sessions/sess_" + "1" * 32,
        None,
        None,
        404,
        "not_found",
        None,
        None,
    ),
    ("unknown-path", "GET", "/v1/nope", None, None, 404, "not_found", "/v1/nope", None),
    ("unknown-root", "POST", "/", b"{}", J, 404, "not_found", None, None),
    (
        "wrong-method-put",
        "PUT",
        "/v1/execute",
        _code_body(),
        J,
        400,
        "invalid_request",
        "POST",
        None,
    ),
    ("wrong-method-get", "GET", "/v1/execute", None, None, 400, "invalid_request", "POST", None),
    (
        "wrong-method-delete-job",
        "DELETE",
        f"/v1/jobs/{ZERO_JOB}",
        None,
        None,
        400,
        "invalid_request",
        "GET",
        None,
    ),
    (
        "list-bad-limit",
        "GET",
        "/v1/jobs?limit=abc",
        None,
        None,
        422,
        "validation_error",
        None,
        "limit",
    ),
    (
        "list-limit-too-big",
        "GET",
        "/v1/jobs?limit=1000",
        None,
        None,
        422,
        "validation_error",
        None,
        "limit",
    ),
    (
        "list-bad-status",
        "GET",
        "/v1/jobs?status=SLEEPING",
        None,
        None,
        422,
        "validation_error",
        None,
        "status",
    ),
    (
        "list-bad-cursor",
        "GET",
        "/v1/jobs?cursor=%00%01garbage",
        None,
        None,
        422,
        "validation_error",
        None,
        "cursor",
    ),
    (
        "list-param-twice",  # one of the two would be dropped silently
        "GET",
        "/v1/jobs?status=RUNNING&status=PENDING",
        None,
        None,
        422,
        "validation_error",
        "more than once",
        "status",
    ),
    (
        "list-unknown-param",
        "GET",
        "/v1/jobs?colour=red",
        None,
        None,
        422,
        "validation_error",
        "colour",
        None,
    ),
    (
        "text-bad-temperature",
        "POST",
        "/v1/generate",
        envelope("text_generation", {"prompt": "hi", "temperature": 7}),
        J,
        422,
        "validation_error",
        "input.temperature",
        "input.temperature",
    ),
    (
        "stream-unknown-type",
        "POST",
        "/v1/generate/stream",
        envelope("code_execution", {"prompt": "hi"}),
        J,
        422,
        "validation_error",
        None,
        "type",
    ),
    (
        "session-bad-ttl",
        "POST",
        "/v1/sessions",
        envelope("create_session", {"ttl": -5}),
        J,
        422,
        "validation_error",
        "input.ttl",
        "input.ttl",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_bad_request(battery: Battery, raw: aiohttp.ClientSession, case: Any) -> None:
    _id, method, path, body, ctype, status, code, needle, detail_path = case
    headers = {"X-Request-ID": f"bad-{_id}"}
    data: bytes | None
    if isinstance(body, dict):
        import orjson

        data = orjson.dumps(body)
    else:
        data = body
    if ctype is not None:
        headers["Content-Type"] = ctype
    async with raw.request(
        method,
        battery.server.url + path,
        data=data,
        headers=headers,
        skip_auto_headers=["Content-Type"],
    ) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        error = check_envelope(await resp.json(), status, code, resp.headers, f"bad-{_id}")
    if needle is not None:
        assert needle in error["message"], error
    if detail_path is not None:
        assert (error.get("details") or {}).get("path") == detail_path, error
    await assert_unharmed(battery)


async def test_cancel_of_finished_job_is_conflict(
    battery: Battery, raw: aiohttp.ClientSession
) -> None:
    job_id = battery.completed[0]
    async with raw.post(
        f"{battery.server.url}/v1/jobs/{job_id}/cancel", json=envelope("cancel_job", {})
    ) as resp:
        assert resp.status == 409
        check_envelope(await resp.json(), 409, "conflict", resp.headers)
    await assert_unharmed(battery)


async def test_bad_request_id_is_replaced(battery: Battery, raw: aiohttp.ClientSession) -> None:
    async with raw.get(
        f"{battery.server.url}/v1/health", headers={"X-Request-ID": "bad id\twith spaces" * 20}
    ) as resp:
        assert resp.status == 200
        rid = resp.headers["X-Request-ID"]
        assert rid.startswith("req_") and (await resp.json())["metadata"]["request_id"] == rid


async def test_an_unreadable_request_is_one_log_line_without_what_it_carried(
    battery: Battery, raw: aiohttp.ClientSession
) -> None:
    """A header over the HTTP layer's limit is refused (400) before the server's code runs;
    aiohttp would log it at ERROR with a traceback quoting the header: the server logs one
    INFO line that names the error and quotes nothing (it may be a token)."""
    secret = "tok_" + "s3cr3t" * 2000
    async with raw.get(
        f"{battery.server.url}/v1/health", headers={"Authorization": f"Bearer {secret}"}
    ) as resp:
        assert resp.status == 400
    log = battery.server.log()
    assert "refused an unreadable HTTP request from 127.0.0.1: LineTooLong (HTTP 400)" in log
    assert "s3cr3ts3cr3t" not in log and "Traceback" not in log
    await assert_unharmed(battery)


async def test_head_of_get_resources(battery: Battery, raw: aiohttp.ClientSession) -> None:
    """HEAD works wherever GET does (load balancers probe health with it)."""
    async with raw.head(f"{battery.server.url}/v1/health") as resp:
        assert resp.status == 200 and resp.content_type == "application/json"
        assert await resp.read() == b""
    async with raw.head(f"{battery.server.url}/v1/jobs/{battery.completed[0]}") as resp:
        assert resp.status == 200
    async with raw.head(f"{battery.server.url}/v1/jobs/{ZERO_JOB}") as resp:
        assert resp.status == 404


async def test_chunked_oversized_body(battery: Battery, raw: aiohttp.ClientSession) -> None:
    """A body without Content-Length (chunked) is held to the same limit."""

    async def body() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 1024 + 8):
            yield b" " * 1024

    async with raw.post(
        f"{battery.server.url}/v1/jobs", data=body(), headers={"Content-Type": J}
    ) as resp:
        assert resp.status == 413
        check_envelope(await resp.json(), 413, "payload_too_large", resp.headers)
    await assert_unharmed(battery)


async def test_random_garbage_never_crashes(battery: Battery, raw: aiohttp.ClientSession) -> None:
    """Junk bodies to every POST operation: always a 4xx error envelope."""
    import random

    rng = random.Random(1234)
    junk: list[bytes] = [
        b"null",
        b"42",
        b'"string"',
        b"{}",
        b'{"type": null}',
        b'{"protocol_version": 2024.1, "type": []}',
        b'{"input": {"code": {"$gt": ""}}}',
        bytes(rng.randrange(256) for _ in range(512)),
    ]
    for path in (
        "/v1/execute",
        "/v1/generate",
        "/v1/generate/stream",
        "/v1/jobs",
        "/v1/sessions",
        f"/v1/jobs/{battery.completed[0]}/cancel",
    ):
        for data in junk:
            async with raw.post(
                battery.server.url + path, data=data, headers={"Content-Type": J}
            ) as resp:
                assert 400 <= resp.status < 500, (path, data, await resp.text())
                assert (await resp.json())["status"] == "error"
    await assert_unharmed(battery)


# ---------------------------------------------------------------------------- via the SDK


async def test_sdk_errors(battery: Battery) -> None:
    async with make_client(battery.server, max_retries=0) as c:
        with pytest.raises(MCPNotFoundError) as nf:
            await c.get_job_status(ZERO_JOB)
        assert nf.value.http_status == 404 and nf.value.code == "not_found"
        assert nf.value.request_id

        with pytest.raises(MCPConflictError) as conflict:
            await c.cancel_job(battery.completed[1], reason="too late")
        assert conflict.value.http_status == 409
        assert (await c.get_job_status(battery.completed[1])).status.value == "COMPLETED"

        with pytest.raises(MCPUnsupportedLanguageError) as lang:
            await c.execute_code_and_wait("PROCEDURE DIVISION.", "cobol")
        assert lang.value.http_status == 422

        with pytest.raises(MCPValidationError) as long_code:
            await c.execute_code_and_wait("#" * (MAX_CODE + 1), "python")
        assert long_code.value.http_status == 422
        assert long_code.value.details.get("path") == "input.code"

        with pytest.raises(MCPPayloadTooLargeError) as big:
            await c.execute_code_job("x = 1\n" * (MAX_BODY // 6 + 100), "python")
        assert big.value.http_status == 413

        with pytest.raises(MCPNotFoundError):
            await c.execute_code_and_wait("print(1)", "python", session_id="sess_" + "2" * 32)

        session = await c.create_session()
        await session.close()
        with pytest.raises(MCPNotFoundError):
            await c.execute_code_and_wait("print(1)", "python", session_id=session.session_id)
        with pytest.raises(MCPNotFoundError):
            await c.close_session(session.session_id)

        # bad input the SDK catches itself: nothing is sent
        with pytest.raises(MCPValidationError) as local:
            await c.execute_code_and_wait("print(1)", "python", timeout=-1)
        assert local.value.http_status is None and local.value.details["path"] == "input.timeout"

    # a header the HTTP layer refuses before the server's code sees it (no envelope): the
    # error quotes what it said
    async with make_client(battery.server, max_retries=0, headers={"X-Big": "a" * 10_000}) as c:
        with pytest.raises(MCPProtocolError) as refused:
            await c.health()
        assert refused.value.http_status == 400
        assert "8190 bytes" in refused.value.message
    await assert_unharmed(battery)


# ---------------------------------------------------------------------------- disconnects


async def test_client_leaves_job_event_stream(battery: Battery, raw: aiohttp.ClientSession) -> None:
    """A client that disconnects mid-stream does not cancel or harm the job."""
    async with make_client(battery.server) as c:
        job = await c.execute_code_job(
            "import time\nfor i in range(6):\n    print(i, flush=True)\n    time.sleep(0.25)",
            "python",
            name="watched",
        )
        battery.snapshot[job.job_id] = ("COMPLETED", 100)
        for _ in range(3):
            resp = await raw.get(
                f"{battery.server.url}/v1/jobs/{job.job_id}/events",
                headers={"Accept": "text/event-stream"},
            )
            assert resp.status == 200 and resp.content_type == "text/event-stream"
            first = await asyncio.wait_for(resp.content.readline(), 10)
            assert first.startswith(b"event: job_status_event") or first.startswith(b"id:"), first
            resp.close()  # drop the connection mid-stream
        result = await c.get_code_execution_result(job.job_id, max_wait_time=30)
        assert result.stdout == "0\n1\n2\n3\n4\n5\n"
    await assert_unharmed(battery)


async def test_client_leaves_text_stream(
    battery: Battery, raw: aiohttp.ClientSession, fake: Any
) -> None:
    """A client that disconnects from a text stream: the server stops pulling from the
    provider and stays healthy."""
    fake.chunk_delay = 0.05
    words = 60
    resp = await raw.post(
        f"{battery.server.url}/v1/generate/stream",
        json=envelope("text_generation", {"prompt": " ".join(["w"] * words), "model": "x"}),
    )
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    async with asyncio.timeout(10):
        while b"text_generation_chunk" not in await resp.content.readline():
            pass
    resp.close()
    await asyncio.sleep(0.5)
    sent = len(fake.chunk_times)
    await asyncio.sleep(0.5)
    assert len(fake.chunk_times) == sent < words, "the provider stream was not closed"
    await assert_unharmed(battery)


async def test_client_leaves_a_direct_execution(
    battery: Battery, raw: aiohttp.ClientSession
) -> None:
    """A client that disconnects while its program runs (no job: the answer was the only
    use of it): the request is cancelled and the sandbox killed at once, not left to run
    to its timeout (60 s here)."""
    marker = f"{uuid.uuid4().int % 10**6}.{uuid.uuid4().int % 1000}"
    code = f"import os\nos.execv('/bin/sleep', ['sleep', '{marker}'])"

    def sandboxes() -> bytes:
        found = subprocess.run(["pgrep", "-f", f"sleep {marker}"], capture_output=True)
        return found.stdout

    async def run() -> None:
        async with raw.post(
            f"{battery.server.url}/v1/execute",
            json=envelope("code_execution", {"code": code, "language": "python", "timeout": 60}),
        ) as resp:
            await resp.read()

    call = asyncio.ensure_future(run())
    await wait_until(lambda: bool(sandboxes()), timeout=10)
    call.cancel()  # the client leaves: its connection is closed
    with contextlib.suppress(asyncio.CancelledError):
        await call
    await wait_until(lambda: not sandboxes(), timeout=5)
    # the handler logs once its cleanup is over, which may be just after the kill
    await wait_until(
        lambda: '"POST /v1/execute" ended early (the client left' in battery.server.log(),
        timeout=5,
        what="the server's log of the request that ended early",
    )
    await assert_unharmed(battery)


async def test_health_through_sdk_after_battery(battery: Battery) -> None:
    async with make_client(battery.server) as c:
        info = await c.health()
    assert info.status.value == "ok" and info.jobs_running == 1
    assert info.jobs_pending == 0
    with pytest.raises(MCPError):
        async with make_client(battery.server, max_retries=0) as c:
            await c.get_job_status("job_" + uuid.uuid4().hex)
