"""Access tokens and per-token limits: isolation between two tokens, 401 without or
with a wrong token, the per-token rate limit (429 + Retry-After, honoured by SDK
retries) and the per-token quota of unfinished jobs."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from deepexec_sdk.exceptions import MCPAuthError, MCPNotFoundError, MCPRateLimitError
from tests.e2e.conftest import (
    FAKE_MODEL,
    TOKEN_A,
    TOKEN_B,
    TOKEN_WRONG,
    ServerPool,
    ServerProcess,
    envelope,
    make_client,
    provider_env,
    wait_until,
)
from tests.fakes.fake_openai_provider import FakeOpenAIServer


@pytest.fixture(scope="module")
def tokens_server(module_servers: ServerPool) -> ServerProcess:
    return module_servers.start(
        tokens=[TOKEN_A, TOKEN_B],
        env={"DEEPEXEC_SERVER_MAX_JOBS_PER_TOKEN": "3", "DEEPEXEC_SERVER_RATE_LIMIT": "0"},
    )


async def test_tokens_are_isolated(tokens_server: ServerProcess) -> None:
    async with (
        make_client(tokens_server, api_key=TOKEN_A) as a,
        make_client(tokens_server, api_key=TOKEN_B, max_retries=0) as b,
    ):
        done = await a.execute_code_job("print('A')", "python", name="a-done")
        await a.get_code_execution_result(done.job_id, max_wait_time=30)
        running = await a.execute_code_job(
            "import time; time.sleep(300)", "python", timeout=600, name="a-running"
        )
        session = await a.create_session()
        await session.execute_code_and_wait("open('secret.txt', 'w').write('A only')", "python")

        for job_id in (done.job_id, running.job_id):
            with pytest.raises(MCPNotFoundError):
                await b.get_job_status(job_id)
            with pytest.raises(MCPNotFoundError):
                await b.cancel_job(job_id, reason="B tries")
            with pytest.raises(MCPNotFoundError):
                async for _ in b.job_events(job_id):
                    pass
            with pytest.raises(MCPNotFoundError):
                await b.get_code_execution_result(job_id, max_wait_time=5)
        with pytest.raises(MCPNotFoundError):
            await b.execute_code_and_wait(
                "print(open('secret.txt').read())", "python", session_id=session.session_id
            )
        with pytest.raises(MCPNotFoundError):
            await b.execute_code_job("print(1)", "python", session_id=session.session_id)
        with pytest.raises(MCPNotFoundError):
            await b.close_session(session.session_id)
        b_jobs = [j.job_id async for j in b.list_jobs()]
        assert done.job_id not in b_jobs and running.job_id not in b_jobs

        # B's own work is fine, and A's is untouched
        assert (await b.execute_code_and_wait("print('B')", "python")).stdout == "B\n"
        assert (await a.get_job_status(running.job_id)).status.value in ("PENDING", "RUNNING")
        again = await session.execute_code_and_wait("print(open('secret.txt').read())", "python")
        assert again.stdout == "A only\n"
        a_jobs = {j.job_id async for j in a.list_jobs()}
        assert {done.job_id, running.job_id} <= a_jobs
        assert not a_jobs & set(b_jobs)
        await a.cancel_job(running.job_id, reason="end of test")
        await session.close()


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {TOKEN_WRONG}"},
        {"Authorization": f"Basic {TOKEN_A}"},
        {"Authorization": "Bearer"},
        {"Authorization": f"Bearer {TOKEN_A}x"},
    ],
    ids=["none", "wrong", "basic-scheme", "empty-bearer", "near-miss"],
)
async def test_unauthenticated_requests_get_401(
    tokens_server: ServerProcess, headers: dict[str, str]
) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        for method, path, body in (
            ("GET", "/v1/health", None),
            ("GET", "/v1/jobs", None),
            (
                "POST",
                "/v1/execute",
                envelope("code_execution", {"code": "1", "language": "python"}),
            ),
            ("POST", "/v1/jobs", b"not even json"),
            ("GET", "/v1/nope", None),
        ):
            data = body if isinstance(body, bytes) or body is None else None
            async with s.request(
                method,
                tokens_server.url + path,
                json=body if isinstance(body, dict) else None,
                data=data,
                headers=headers,
            ) as r:
                assert r.status == 401, (path, await r.text())
                assert r.headers.get("WWW-Authenticate") == "Bearer"
                payload = await r.json()
                assert payload["error"]["code"] == "authentication_error"
                text = str(payload) + str(dict(r.headers))
                assert TOKEN_A not in text and TOKEN_WRONG not in text


async def test_sdk_auth_errors(tokens_server: ServerProcess) -> None:
    async with make_client(tokens_server) as anonymous:
        with pytest.raises(MCPAuthError) as err:
            await anonymous.health()
        assert err.value.http_status == 401 and err.value.code == "authentication_error"
    async with make_client(tokens_server, api_key=TOKEN_WRONG) as wrong:
        with pytest.raises(MCPAuthError):
            await wrong.execute_code_and_wait("print(1)", "python")
        assert TOKEN_WRONG not in str(err.value)
    async with make_client(tokens_server, api_key=TOKEN_A) as right:
        assert (await right.health()).status.value == "ok"


async def test_unfinished_jobs_quota_per_token(tokens_server: ServerProcess) -> None:
    async with (
        make_client(tokens_server, api_key=TOKEN_B, max_retries=0) as b,
        make_client(tokens_server, api_key=TOKEN_A) as a,
    ):
        jobs = [
            await b.execute_code_job("import time; time.sleep(300)", "python", timeout=600)
            for _ in range(3)
        ]
        with pytest.raises(MCPRateLimitError) as over:
            await b.execute_code_job("print(1)", "python")
        assert over.value.http_status == 429 and over.value.retry_after is not None
        # the quota is B's alone: A is accepted
        other = await a.execute_code_job("print('A')", "python")
        await b.cancel_job(jobs[0].job_id)
        fourth = await b.execute_code_job("print('fits now')", "python")
        for job in jobs[1:]:
            await b.cancel_job(job.job_id)
        result = await b.get_code_execution_result(fourth.job_id, max_wait_time=30)
        assert result.stdout == "fits now\n"
        assert (await a.get_code_execution_result(other.job_id, max_wait_time=30)).stdout == "A\n"


# ---------------------------------------------------------------------------- rate limit


async def test_rate_limit_per_token(module_servers: ServerPool) -> None:
    srv = module_servers.start(
        tokens=[TOKEN_A, TOKEN_B],
        env={"DEEPEXEC_SERVER_RATE_LIMIT": "2", "DEEPEXEC_SERVER_RATE_BURST": "3"},
    )
    auth_a = {"Authorization": f"Bearer {TOKEN_A}"}
    auth_b = {"Authorization": f"Bearer {TOKEN_B}"}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        statuses = []
        for _ in range(3):
            async with s.get(srv.url + "/v1/health", headers=auth_a) as r:
                statuses.append(r.status)
        assert statuses == [200, 200, 200]
        async with s.get(srv.url + "/v1/health", headers=auth_a) as r:
            assert r.status == 429
            retry_after = int(r.headers["Retry-After"])
            payload: dict[str, Any] = await r.json()
        assert retry_after >= 1
        assert payload["error"]["code"] == "rate_limit_exceeded"
        assert 0 < payload["error"]["details"]["retry_after"] <= retry_after
        # another token has a bucket of its own
        async with s.get(srv.url + "/v1/health", headers=auth_b) as r:
            assert r.status == 200

    async with make_client(srv, api_key=TOKEN_A, max_retries=0) as impatient:
        with pytest.raises(MCPRateLimitError) as err:
            await impatient.health()
        assert err.value.retry_after is not None and err.value.retry_after >= 1

    await wait_until(lambda: _health_ok(srv, TOKEN_A), 5, interval=0.5, what="the bucket to refill")
    await asyncio.sleep(1.5)  # full again
    refused_before = srv.log().count('"GET /v1/health" 429')
    # the SDK retries after the Retry-After the server asked for, and then succeeds
    async with make_client(srv, api_key=TOKEN_A, max_retries=5, retry_delay=0.01) as patient:
        started = time.monotonic()
        for _ in range(6):
            assert (await patient.health()).status.value == "ok"
        elapsed = time.monotonic() - started
    # 3 at once (burst), then one per Retry-After (1 s) at most: waited, never hammered
    assert elapsed >= 0.9, elapsed
    assert elapsed < 10, elapsed
    await asyncio.sleep(0.2)  # let the access log reach the file
    refused = srv.log().count('"GET /v1/health" 429') - refused_before
    assert 1 <= refused <= 3, f"{refused} refusals: the SDK did not wait as asked"


async def _health_ok(srv: ServerProcess, token: str) -> bool:
    async with (
        aiohttp.ClientSession() as s,
        s.get(srv.url + "/v1/health", headers={"Authorization": f"Bearer {token}"}) as r,
    ):
        return r.status == 200


# ---------------------------------------------------------------------------- running cap


async def test_direct_runs_at_once_are_capped_per_token(
    module_servers: ServerPool, fake: FakeOpenAIServer
) -> None:
    srv = module_servers.start(
        tokens=[TOKEN_A, TOKEN_B],
        env={
            "DEEPEXEC_SERVER_MAX_RUNNING_PER_TOKEN": "2",
            "DEEPEXEC_SERVER_RATE_LIMIT": "0",
            **provider_env(fake),
        },
    )
    fake.chunk_delay = 0.2
    words = "one two three four five six seven eight".split()
    async with (
        make_client(srv, api_key=TOKEN_A, max_retries=0) as a,
        make_client(srv, api_key=TOKEN_B, max_retries=0) as b,
    ):
        # two streamed generations hold A's two slots while they last
        streams = [
            await a.generate_text_stream(" ".join(words), model=FAKE_MODEL) for _ in range(2)
        ]
        pieces = [aiter(st) for st in streams]
        assert all([await anext(it) for it in pieces])  # both under way
        with pytest.raises(MCPRateLimitError) as over:
            await a.execute_code_and_wait("print('third')", "python")
        assert over.value.http_status == 429 and over.value.retry_after == 1
        assert "2 executions and generations at once" in str(over.value)
        with pytest.raises(MCPRateLimitError):
            await a.generate_text_and_wait("x", model=FAKE_MODEL)
        # the cap is A's alone, and jobs (which queue) are not refused
        assert (await b.execute_code_and_wait("print('B')", "python")).stdout == "B\n"
        job = await a.execute_code_job("print('queued')", "python")
        for st, it in zip(streams, pieces, strict=True):
            async for _ in it:
                pass
            assert st.result is not None and st.result.text.startswith("Echo: one two")
        # the slots are free again
        assert (await a.execute_code_and_wait("print('again')", "python")).stdout == "again\n"
        done = await a.get_code_execution_result(job.job_id, max_wait_time=30)
        assert done.stdout == "queued\n"
