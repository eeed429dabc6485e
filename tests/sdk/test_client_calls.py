"""Every plain request/response method of both clients, against mocked HTTP (aioresponses):
what is sent (method, path, envelope, headers) and what comes back (typed results)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from aioresponses import CallbackResult, aioresponses
from deepexec_protocol import PROTOCOL_VERSION

from deepexec_sdk import (
    CodeExecutionResult,
    DeepExecAsyncClient,
    DeepExecClient,
    HealthInfo,
    JobCanceled,
    JobState,
    JobStatus,
    JobSubmitted,
    LanguageInfo,
    TextGenerationResult,
)
from deepexec_sdk.exceptions import MCPExecutionError, MCPTimeoutError

from .conftest import (
    BASE,
    CLIENT_TEST,
    JOB_ID,
    JOB_ID_2,
    SESSION_ID,
    Facade,
    err,
    example,
    execution,
    generation,
    job,
    ok,
    sent,
    sent_json,
    submitted_event,
)

pytestmark = CLIENT_TEST

EXECUTE = f"{BASE}/v1/execute"
GENERATE = f"{BASE}/v1/generate"
JOBS = f"{BASE}/v1/jobs"
JOBS_STREAM = f"{BASE}/v1/jobs/stream"


# --------------------------------------------------------------------------- execute


async def test_execute_code_and_wait_returns_the_result(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(EXECUTE, payload=ok("code_execution", execution("Hello, World!\n")))

    result = await facade("execute_code_and_wait", "print('Hello, World!')", "python")

    assert isinstance(result, CodeExecutionResult)
    assert (result.output, result.exit_code, result.execution_time) == ("Hello, World!\n", 0, 21.4)
    assert result.memory_usage == 9437184 and result.timed_out is False
    (call,) = sent(mock_http, "POST", EXECUTE)
    # exactly the envelope of the protocol: nothing unset is sent as null
    assert sent_json(call) == {
        "protocol_version": PROTOCOL_VERSION,
        "type": "code_execution",
        "input": {"code": "print('Hello, World!')", "language": "python"},
    }
    headers = call.kwargs["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Accept"] == "application/json"
    assert headers["User-Agent"].startswith("deepexec-sdk/")
    assert re.fullmatch(r"[0-9a-f-]{36}", headers["Idempotency-Key"])


async def test_execute_code_and_wait_sends_every_option(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(EXECUTE, payload=ok("code_execution", execution()))

    await facade(
        "execute_code_and_wait",
        "import os; print(os.environ['DEBUG'])",
        "python",
        {"DEBUG": "true"},
        30,
        "some input",
        memory_limit=64 * 2**20,
    )

    (call,) = sent(mock_http, "POST", EXECUTE)
    assert sent_json(call)["input"] == {
        "code": "import os; print(os.environ['DEBUG'])",
        "language": "python",
        "environment": {"DEBUG": "true"},
        "timeout": 30,
        "stdin": "some input",
        "memory_limit": 64 * 2**20,
    }
    # the HTTP timeout leaves the program its whole time limit plus slack
    assert call.kwargs["timeout"].total >= 30


async def test_non_zero_exit_raises_execution_error_with_exit_code_and_output(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(
        EXECUTE,
        payload=ok("code_execution", execution("partial\n", exit_code=3, stderr="boom\n")),
    )

    with pytest.raises(MCPExecutionError) as info:
        await facade("execute_code_and_wait", "import sys; sys.exit(3)", "python")

    assert info.value.exit_code == 3
    assert info.value.output == "partial\nboom\n"
    assert isinstance(info.value.result, CodeExecutionResult)
    assert info.value.result.stderr == "boom\n"
    assert "3" in str(info.value)


async def test_check_false_returns_a_failed_result(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.post(EXECUTE, payload=ok("code_execution", execution("", exit_code=1)))

    result = await facade("execute_code_and_wait", "exit 1", "bash", check=False)

    assert result.exit_code == 1


async def test_timed_out_program_raises_timeout_error_carrying_the_limit(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(
        EXECUTE, payload=ok("code_execution", execution("", exit_code=137, timed_out=True))
    )

    with pytest.raises(MCPTimeoutError) as info:
        await facade("execute_code_and_wait", "while True: pass", "python", timeout=2)

    assert info.value.timeout == 2
    assert info.value.code == "execution_timeout"


async def test_timed_out_program_raises_even_with_check_false(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(
        EXECUTE, payload=ok("code_execution", execution("", exit_code=137, timed_out=True))
    )

    with pytest.raises(MCPTimeoutError):
        await facade("execute_code_and_wait", "while True: pass", "python", check=False)


# --------------------------------------------------------------------------- generate


async def test_generate_text_and_wait(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.post(GENERATE, payload=ok("text_generation", generation("Qubits!")))

    result = await facade(
        "generate_text_and_wait",
        "Explain quantum computing in simple terms",
        model="deepseek-r1",
        max_tokens=500,
        temperature=0.2,
        system_prompt="Be brief.",
        stop=["\n\n"],
    )

    assert isinstance(result, TextGenerationResult)
    assert (result.text, result.model, result.generation_time) == ("Qubits!", "deepseek-v3", 812.5)
    assert result.usage.total_tokens == 12
    (call,) = sent(mock_http, "POST", GENERATE)
    body = sent_json(call)
    assert body["type"] == "text_generation"
    assert body["input"] == {
        "prompt": "Explain quantum computing in simple terms",
        "model": "deepseek-r1",
        "max_tokens": 500,
        "temperature": 0.2,
        "system_prompt": "Be brief.",
        "stop": ["\n\n"],
    }


async def test_generate_text_defaults_leave_the_server_defaults(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(GENERATE, payload=ok("text_generation", generation()))

    await facade("generate_text_and_wait", "Hi")

    body = sent_json(sent(mock_http, "POST", GENERATE)[0])
    assert body["input"]["prompt"] == "Hi"
    assert body["input"]["model"] == "deepseek-v3"
    assert "top_p" not in body["input"] and "system_prompt" not in body["input"]


# --------------------------------------------------------------------------- jobs


async def test_submit_job(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.post(JOBS_STREAM, body=submitted_event(), content_type="text/event-stream")

    response = await facade(
        "submit_job",
        name="my_analysis_job",
        job_type="code_execution",
        data={"code": "print('Analyzing data...')", "language": "python"},
        priority=5,
        tags=["nightly"],
        timeout=60,
    )

    assert isinstance(response, JobSubmitted)
    assert response.job_id == JOB_ID and response.status == JobState.PENDING
    (call,) = sent(mock_http, "POST", JOBS_STREAM)
    assert sent_json(call)["input"] == {
        "name": "my_analysis_job",
        "job_type": "code_execution",
        "data": {"code": "print('Analyzing data...')", "language": "python"},
        "timeout": 60,
        "priority": 5,
        "tags": ["nightly"],
    }
    assert call.kwargs["headers"]["Idempotency-Key"]


async def test_get_job_status(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.get(f"{JOBS}/{JOB_ID}", payload=example("JobStatusResponse"))

    status = await facade("get_job_status", JOB_ID)

    assert isinstance(status, JobStatus)
    assert status.status == JobState.COMPLETED and status.progress == 100
    assert isinstance(status.result, CodeExecutionResult)
    assert status.result.output == "Analyzing data...\n"


async def test_cancel_job(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.post(f"{JOBS}/{JOB_ID}/cancel", payload=example("CancelJobResponse"))

    canceled = await facade("cancel_job", JOB_ID, reason="No longer needed")

    assert isinstance(canceled, JobCanceled)
    assert canceled.status == JobState.CANCELED
    assert canceled.canceled_at == "2026-11-26T13:41:00.000Z"
    (call,) = sent(mock_http, "POST", f"{JOBS}/{JOB_ID}/cancel")
    assert sent_json(call)["input"] == {"reason": "No longer needed"}


def _paged(pages: dict[str | None, tuple[list[dict[str, Any]], str | None]]) -> Any:
    """A list_jobs callback answering by cursor, recording each query."""
    queries: list[dict[str, str]] = []

    def callback(url: Any, **kwargs: Any) -> CallbackResult:
        query = dict(url.query)
        queries.append(query)
        jobs, next_cursor = pages[query.get("cursor")]
        return CallbackResult(payload=ok("list_jobs", {"jobs": jobs, "next_cursor": next_cursor}))

    callback.queries = queries  # type: ignore[attr-defined]
    return callback


def _ids(n: int) -> list[str]:
    return [f"job_{i:032x}" for i in range(n)]


LIST_URL = re.compile(r"^http://deepexec\.test/v1/jobs(\?.*)?$")


async def test_list_jobs_follows_cursors_across_pages(
    facade: Facade, mock_http: aioresponses
) -> None:
    ids = _ids(5)
    pages = {
        None: ([job("COMPLETED", 100, job_id=i) for i in ids[:2]], "c1"),
        "c1": ([job("COMPLETED", 100, job_id=i) for i in ids[2:4]], "c2"),
        "c2": ([job("COMPLETED", 100, job_id=ids[4])], None),
    }
    callback = _paged(pages)
    mock_http.get(LIST_URL, callback=callback, repeat=True)

    jobs = await facade.iterate("list_jobs", status="COMPLETED", tag="nightly", page_size=2)

    assert [j.job_id for j in jobs] == ids
    assert callback.queries == [
        {"status": "COMPLETED", "tag": "nightly", "limit": "2"},
        {"status": "COMPLETED", "tag": "nightly", "limit": "2", "cursor": "c1"},
        {"status": "COMPLETED", "tag": "nightly", "limit": "2", "cursor": "c2"},
    ]


async def test_list_jobs_honours_limit_and_fetches_no_more_than_needed(
    facade: Facade, mock_http: aioresponses
) -> None:
    ids = _ids(6)
    pages = {
        None: ([job(job_id=i) for i in ids[:2]], "c1"),
        "c1": ([job(job_id=ids[2])], "c2"),
        "c2": ([job(job_id=i) for i in ids[3:]], None),
    }
    callback = _paged(pages)
    mock_http.get(LIST_URL, callback=callback, repeat=True)

    jobs = await facade.iterate("list_jobs", limit=3, page_size=2)

    assert [j.job_id for j in jobs] == ids[:3]
    # the second page asks only for what is still missing; the third is never fetched
    assert [q["limit"] for q in callback.queries] == ["2", "1"]


async def test_list_jobs_empty(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.get(LIST_URL, payload=example("ListJobsResponse"))

    assert await facade.iterate("list_jobs") == []


async def test_list_jobs_limit_zero_sends_nothing(facade: Facade, mock_http: aioresponses) -> None:
    assert await facade.iterate("list_jobs", limit=0) == []
    assert mock_http.requests == {}


async def test_execute_code_job_submits_a_code_execution_job(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(JOBS_STREAM, body=submitted_event(JOB_ID_2), content_type="text/event-stream")

    response = await facade(
        "execute_code_job",
        code="print(1)",
        language="python",
        environment={"DEBUG": "true"},
        timeout=30,
        tags=["t1"],
    )

    assert response.job_id == JOB_ID_2
    body = sent_json(sent(mock_http, "POST", JOBS_STREAM)[0])
    assert body["input"]["job_type"] == "code_execution"
    assert body["input"]["data"] == {
        "code": "print(1)",
        "language": "python",
        "environment": {"DEBUG": "true"},
        "timeout": 30,
    }
    assert body["input"]["timeout"] == 30 and body["input"]["tags"] == ["t1"]


async def test_generate_text_job_submits_a_text_generation_job(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(JOBS_STREAM, body=submitted_event(), content_type="text/event-stream")

    response = await facade(
        "generate_text_job",
        prompt="Write a short poem about artificial intelligence",
        model="deepseek-v3",
        max_tokens=200,
        temperature=0.8,
    )

    assert response.job_id == JOB_ID
    body = sent_json(sent(mock_http, "POST", JOBS_STREAM)[0])
    assert body["input"]["job_type"] == "text_generation"
    assert body["input"]["data"] == {
        "prompt": "Write a short poem about artificial intelligence",
        "model": "deepseek-v3",
        "max_tokens": 200,
        "temperature": 0.8,
    }


# --------------------------------------------------------------------------- server


async def test_health(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.get(f"{BASE}/v1/health", payload=example("HealthResponse"))

    health = await facade("health")

    assert isinstance(health, HealthInfo)
    assert (health.status, health.protocol_version, health.jobs_running) == ("ok", "2024.1", 1)


async def test_list_languages(facade: Facade, mock_http: aioresponses) -> None:
    langs = {
        "languages": [
            {"id": "python", "name": "Python", "version": "3.11.2", "file_extension": "py"},
            {"id": "bash", "name": "Bash", "version": "5.2", "file_extension": "sh"},
        ]
    }
    mock_http.get(f"{BASE}/v1/languages", payload=ok("list_languages", langs))

    languages = await facade("list_languages")

    assert all(isinstance(lang, LanguageInfo) for lang in languages)
    assert [lang.id for lang in languages] == ["python", "bash"]


async def test_endpoint_with_path_prefix_and_trailing_slash(
    make_facade: Any, mock_http: aioresponses
) -> None:
    client = make_facade(endpoint=f"{BASE}/api/", max_retries=0)
    mock_http.get(f"{BASE}/api/v1/health", payload=example("HealthResponse"))

    assert (await client("health")).status == "ok"


# --------------------------------------------------------------------------- sessions


SESSIONS = f"{BASE}/v1/sessions"


async def test_session_calls_carry_its_session_id_and_context_manager_closes_it(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(SESSIONS, payload=example("CreateSessionResponse"))
    mock_http.post(EXECUTE, payload=ok("code_execution", execution(), SESSION_ID), repeat=True)
    mock_http.post(JOBS_STREAM, body=submitted_event(), content_type="text/event-stream")
    mock_http.post(GENERATE, payload=ok("text_generation", generation()))
    mock_http.delete(f"{SESSIONS}/{SESSION_ID}", payload=example("CloseSessionResponse"))

    if facade.is_async:
        assert isinstance(facade.client, DeepExecAsyncClient)
        async with await facade.client.create_session(ttl=600) as session:
            assert session.session_id == SESSION_ID
            await session.execute_code_and_wait("open('f', 'w').write('x')", "python")
            await session.execute_code_and_wait("print(open('f').read())", "python")
            await session.execute_code_job("print(1)", "python")
            await session.generate_text_and_wait("Hi")
    else:

        def use() -> None:
            assert isinstance(facade.client, DeepExecClient)
            with facade.client.create_session(ttl=600) as session:
                assert session.session_id == SESSION_ID
                session.execute_code_and_wait("open('f', 'w').write('x')", "python")
                session.execute_code_and_wait("print(open('f').read())", "python")
                session.execute_code_job("print(1)", "python")
                session.generate_text_and_wait("Hi")

        await facade.run(use)

    (create,) = sent(mock_http, "POST", SESSIONS)
    assert sent_json(create)["input"] == {"ttl": 600}
    runs = sent(mock_http, "POST", EXECUTE)
    assert [sent_json(c)["session_id"] for c in runs] == [SESSION_ID, SESSION_ID]
    assert sent_json(sent(mock_http, "POST", JOBS_STREAM)[0])["session_id"] == SESSION_ID
    assert sent_json(sent(mock_http, "POST", GENERATE)[0])["session_id"] == SESSION_ID
    assert len(sent(mock_http, "DELETE", f"{SESSIONS}/{SESSION_ID}")) == 1


async def test_session_close_is_idempotent(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.post(SESSIONS, payload=example("CreateSessionResponse"))
    mock_http.delete(f"{SESSIONS}/{SESSION_ID}", payload=example("CloseSessionResponse"))

    session = await facade("create_session")
    for _ in range(3):
        await facade.run(session.close)

    assert len(sent(mock_http, "DELETE", f"{SESSIONS}/{SESSION_ID}")) == 1
    assert "closed=True" in repr(session)


async def test_session_close_tolerates_an_expired_session(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(SESSIONS, payload=example("CreateSessionResponse"))
    mock_http.delete(
        f"{SESSIONS}/{SESSION_ID}", payload=err("close_session", "not_found"), status=404
    )

    session = await facade("create_session")
    await facade.run(session.close)
    await facade.run(session.close)

    assert len(sent(mock_http, "DELETE", f"{SESSIONS}/{SESSION_ID}")) == 1


async def test_session_close_that_fails_can_be_retried(
    facade: Facade, mock_http: aioresponses
) -> None:
    mock_http.post(SESSIONS, payload=example("CreateSessionResponse"))
    mock_http.delete(
        f"{SESSIONS}/{SESSION_ID}", payload=err("close_session", "internal_error"), status=500
    )
    mock_http.delete(f"{SESSIONS}/{SESSION_ID}", payload=example("CloseSessionResponse"))

    session = await facade("create_session")
    with pytest.raises(Exception) as info:
        await facade.run(session.close)
    assert type(info.value).__name__ == "MCPServerError"
    await facade.run(session.close)

    assert len(sent(mock_http, "DELETE", f"{SESSIONS}/{SESSION_ID}")) == 2


async def test_close_session_by_id(facade: Facade, mock_http: aioresponses) -> None:
    mock_http.delete(f"{SESSIONS}/{SESSION_ID}", payload=example("CloseSessionResponse"))

    closed = await facade("close_session", SESSION_ID)

    assert closed.session_id == SESSION_ID
