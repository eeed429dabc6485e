"""Text generation through the real server and the fake OpenAI-compatible provider:
direct, streamed (incrementally), as a job with progress; provider errors mapped to SDK
exceptions; the client's X-DeepSeek-Key never echoed or logged."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from deepexec_protocol import models as m

from deepexec_sdk.exceptions import (
    MCPAuthError,
    MCPGenerationError,
    MCPRateLimitError,
)
from tests.e2e.conftest import (
    DEEPSEEK_KEY,
    FAKE_MODEL,
    ServerFactory,
    ServerProcess,
    envelope,
    make_client,
)
from tests.fakes.fake_openai_provider import FakeOpenAIServer


async def test_direct_generation(server: ServerProcess, fake: FakeOpenAIServer) -> None:
    async with make_client(server) as c:
        result = await c.generate_text_and_wait("one two three", model=FAKE_MODEL, max_tokens=50)
        assert result.text == "Echo: one two three"
        assert result.model == FAKE_MODEL
        assert result.finish_reason == "stop"
        assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (3, 4)
        assert result.usage.total_tokens == 7
        assert result.generation_time > 0
        sent = fake.requests[-1]["body"]
        assert sent["model"] == FAKE_MODEL and sent["max_tokens"] == 50
        assert sent["messages"][-1] == {"role": "user", "content": "one two three"}

        cut = await c.generate_text_and_wait(
            "a b c d e", model=FAKE_MODEL, max_tokens=2, system_prompt="be brief"
        )
        assert cut.text == "Echo: a" and cut.finish_reason == "length"
        assert fake.requests[-1]["body"]["messages"][0] == {
            "role": "system",
            "content": "be brief",
        }

        # the SDK's default model on a server whose only provider is OpenAI-compatible
        default = await c.generate_text_and_wait("hello")
        assert default.text == "Echo: hello" and default.model == "deepseek-v3"
        assert fake.requests[-1]["body"]["model"] == FAKE_MODEL


async def test_stream_arrives_incrementally(server: ServerProcess, fake: FakeOpenAIServer) -> None:
    fake.chunk_delay = 0.1
    words = "alpha beta gamma delta epsilon zeta eta".split()
    async with make_client(server) as c:
        stream = await c.generate_text_stream(" ".join(words), model=FAKE_MODEL)
        arrivals: list[float] = []
        pieces: list[str] = []
        async with asyncio.timeout(20):
            async for piece in stream:
                arrivals.append(time.monotonic())
                pieces.append(piece)
    assert "".join(pieces) == "Echo: " + " ".join(words)
    assert len(pieces) == len(words) + 1
    assert stream.result is not None and stream.result.text == "".join(pieces)
    assert stream.usage is not None and stream.usage.completion_tokens == len(words) + 1
    # the first piece reached the client before the fake had written its last one
    assert arrivals[0] < fake.chunk_times[-1] - 0.3
    # and each piece came about when the fake produced it, not all at the end
    gaps = sorted(abs(a - t) for a, t in zip(arrivals, fake.chunk_times, strict=True))
    assert gaps[len(gaps) // 2] < 0.05, gaps


async def test_generation_job_with_progress(server: ServerProcess, fake: FakeOpenAIServer) -> None:
    fake.chunk_delay = 0.03
    prompt = " ".join(f"w{i}" for i in range(19))
    async with make_client(server) as c:
        job = await c.generate_text_job(prompt, model=FAKE_MODEL, max_tokens=40, tags=["gen"])
        progress: list[int] = []
        output: list[str] = []
        final: m.JobStatus | None = None
        async with asyncio.timeout(20):
            async for event in c.job_events(job.job_id):
                if isinstance(event, m.JobProgressEvent | m.JobStatusEvent):
                    progress.append(event.progress)
                elif isinstance(event, m.JobOutputEvent):
                    assert event.stream.value == "stdout"
                    output.append(event.data)
                elif isinstance(event, m.JobResultEvent):
                    final = event.job
        assert final is not None and final.status.value == "COMPLETED"
        assert isinstance(final.result, m.TextGenerationResult)
        assert final.result.text == "Echo: " + prompt == "".join(output)
        assert progress == sorted(progress) and progress[-1] == 100
        assert len([p for p in progress if 0 < p < 100]) >= 3, progress
        again = await c.get_text_generation_result(job.job_id, max_wait_time=10)
        assert again == final.result
        assert final.tags == ["gen"] and final.job_type.value == "text_generation"


async def test_provider_rejects_key(server: ServerProcess, fake: FakeOpenAIServer) -> None:
    """The provider says 401 (and, like OpenAI, quotes the key): MCPAuthError everywhere,
    and the key appears in no message, response or log."""
    fake.fail_status = 401
    async with make_client(server, deepseek_key=DEEPSEEK_KEY, max_retries=0) as c:
        with pytest.raises(MCPAuthError) as direct:
            await c.generate_text_and_wait("hi", model="deepseek-v3")
        assert direct.value.http_status == 401 and direct.value.code == "authentication_error"
        # the key really went to the provider (as DeepSeek's bearer token)...
        assert fake.requests[-1]["authorization"] == f"Bearer {DEEPSEEK_KEY}"
        assert fake.requests[-1]["body"]["model"] == "deepseek-chat"
        # ...and came back in the provider's message, which must have been redacted
        assert DEEPSEEK_KEY not in str(direct.value)
        assert DEEPSEEK_KEY not in repr(direct.value.details)

        with pytest.raises(MCPAuthError) as streamed:
            stream = await c.generate_text_stream("hi", model="deepseek-v3")
            async for _ in stream:
                pass
        assert DEEPSEEK_KEY not in str(streamed.value)

        job = await c.generate_text_job("hi", model="deepseek-v3")
        with pytest.raises(MCPAuthError) as in_job:
            await c.get_text_generation_result(job.job_id, max_wait_time=20)
        assert DEEPSEEK_KEY not in str(in_job.value)
        status = await c.get_job_status(job.job_id)
        assert status.status.value == "FAILED"
        assert status.error is not None and status.error.code.value == "authentication_error"
        assert DEEPSEEK_KEY not in str(status)
    await asyncio.sleep(0.2)
    assert DEEPSEEK_KEY not in server.log()


async def test_provider_rate_limit(server: ServerProcess, fake: FakeOpenAIServer) -> None:
    fake.fail_status = 429
    fake.retry_after = "7"
    async with make_client(server, max_retries=0) as c:
        with pytest.raises(MCPRateLimitError) as direct:
            await c.generate_text_and_wait("hi", model=FAKE_MODEL)
        assert direct.value.http_status == 429
        assert direct.value.retry_after == 7.0

        with pytest.raises(MCPRateLimitError) as streamed:
            stream = await c.generate_text_stream("hi", model=FAKE_MODEL)
            async for _ in stream:
                pass
        assert streamed.value.retry_after == 7.0

        job = await c.generate_text_job("hi", model=FAKE_MODEL)
        with pytest.raises(MCPRateLimitError) as in_job:
            await c.get_text_generation_result(job.job_id, max_wait_time=20)
        assert in_job.value.details.get("retry_after") == 7.0

        fake.fail_status = 500
        with pytest.raises(MCPGenerationError) as broken:
            await c.generate_text_and_wait("hi", model=FAKE_MODEL)
        assert broken.value.http_status == 502

        fake.fail_status = None  # the provider recovers: so does the server
        assert (await c.generate_text_and_wait("ok", model=FAKE_MODEL)).text == "Echo: ok"


async def test_deepseek_key_never_echoed(server: ServerProcess, fake: FakeOpenAIServer) -> None:
    """Raw requests carrying X-DeepSeek-Key: the key is in no response (body or header),
    whatever the outcome, and in no log line."""
    headers = {"X-DeepSeek-Key": DEEPSEEK_KEY, "X-Request-ID": "key-check"}
    seen: list[str] = []

    async def call(s: aiohttp.ClientSession, method: str, path: str, body: Any = None) -> None:
        async with s.request(method, server.url + path, json=body, headers=headers) as r:
            seen.append(str(dict(r.headers)))
            seen.append(await r.text())

    gen = envelope("text_generation", {"prompt": "x y", "model": "deepseek-v3"})
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        await call(s, "GET", "/v1/health")
        await call(s, "POST", "/v1/generate", gen)
        await call(s, "POST", "/v1/generate/stream", gen)
        fake.fail_status = 401
        await call(s, "POST", "/v1/generate", gen)
        await call(s, "POST", "/v1/generate/stream", gen)
        fake.fail_status = None
        await call(s, "POST", "/v1/generate", {**gen, "bogus": 1})
        job_body = envelope(
            "submit_job",
            {"name": "k", "job_type": "text_generation", "data": {"prompt": "x", "model": "m"}},
        )
        async with s.post(server.url + "/v1/jobs", json=job_body, headers=headers) as r:
            job_id = (await r.json())["output"]["job_id"]
        await call(s, "GET", f"/v1/jobs/{job_id}/events")
        await call(s, "GET", f"/v1/jobs/{job_id}")
        await call(s, "GET", "/v1/jobs")
    assert len(seen) == 18
    assert "Echo: x y" in seen[3]
    for text in seen:
        assert DEEPSEEK_KEY not in text
    await asyncio.sleep(0.2)
    assert DEEPSEEK_KEY not in server.log()


async def test_provider_dies_mid_stream(start_server: ServerFactory, unused_tcp_port: int) -> None:
    """The provider sends two pieces, then drops the connection: the SDK's stream yields
    the two pieces and raises MCPGenerationError; a job fails with generation_error; the
    server stays healthy."""

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not body.get("stream"):
            raise web.HTTPInternalServerError()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for delta in ({"role": "assistant", "content": ""}, {"content": "half"}, {"content": " a"}):
            chunk = {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(0.05)
        assert request.transport is not None
        request.transport.abort()  # no finish_reason, no [DONE]
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        srv = start_server(
            env={
                "DEEPEXEC_SERVER_OPENAI_BASE_URL": f"http://127.0.0.1:{unused_tcp_port}/v1",
                "DEEPEXEC_SERVER_OPENAI_MODEL": FAKE_MODEL,
            }
        )
        async with make_client(srv, max_retries=0) as c:
            pieces: list[str] = []
            with pytest.raises(MCPGenerationError) as err:
                stream = await c.generate_text_stream("hi", model=FAKE_MODEL)
                async with asyncio.timeout(20):
                    async for piece in stream:
                        pieces.append(piece)
            assert "".join(pieces) == "half a"
            assert err.value.code == "generation_error"

            job = await c.generate_text_job("hi", model=FAKE_MODEL)
            with pytest.raises(MCPGenerationError):
                await c.get_text_generation_result(job.job_id, max_wait_time=20)
            status = await c.get_job_status(job.job_id)
            assert status.status.value == "FAILED" and status.result is None
            assert (await c.health()).status.value == "ok"
    finally:
        await runner.cleanup()
