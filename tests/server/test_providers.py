"""Text providers against the fake OpenAI-compatible server over loopback."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import pytest_asyncio

from deepexec_server.providers import (
    DeepSeekProvider,
    GenerationRequest,
    OpenAICompatibleProvider,
    ProviderError,
    ProviderNotConfigured,
    StreamChunk,
    parse_retry_after,
    providers_from_env,
    providers_from_settings,
    redact,
)
from tests.fakes.fake_openai_provider import FakeOpenAIServer

SECRET = "sk-server-secret-0123456789abcdef"
USER_SECRET = "sk-user-own-key-9876543210fedcba"


@pytest_asyncio.fixture
async def openai_provider(
    fake_openai_server: FakeOpenAIServer,
) -> AsyncIterator[OpenAICompatibleProvider]:
    provider = OpenAICompatibleProvider(
        base_url=fake_openai_server.base_url, api_key=SECRET, default_model="fake-model"
    )
    yield provider
    await provider.close()


@pytest_asyncio.fixture
async def deepseek(fake_openai_server: FakeOpenAIServer) -> AsyncIterator[DeepSeekProvider]:
    provider = DeepSeekProvider(api_key=SECRET, base_url=fake_openai_server.base_url)
    yield provider
    await provider.close()


async def drain(chunks: AsyncIterator[StreamChunk]) -> list[StreamChunk]:
    return [chunk async for chunk in chunks]


async def test_generate_returns_text_usage_and_finish_reason(
    openai_provider: OpenAICompatibleProvider, fake_openai_server: FakeOpenAIServer
) -> None:
    result = await openai_provider.generate(
        GenerationRequest(
            prompt="hello brave new world",
            max_tokens=50,
            temperature=0.2,
            top_p=0.9,
            stop="END",
            system_prompt="be brief",
        )
    )
    assert result.text == "Echo: hello brave new world"
    assert result.model == "fake-model" and result.upstream_model == "fake-model"
    assert result.finish_reason == "stop"
    assert result.usage.to_dict() == {
        "prompt_tokens": 6,
        "completion_tokens": 5,
        "total_tokens": 11,
    }
    assert result.generation_time > 0
    sent = fake_openai_server.requests[-1]
    assert sent["path"] == "/v1/chat/completions"
    assert sent["authorization"] == f"Bearer {SECRET}"
    body = sent["body"]
    assert body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hello brave new world"},
    ]
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["stop"]) == (
        50,
        0.2,
        0.9,
        ["END"],
    )
    assert body["stream"] is False

    short = await openai_provider.generate(GenerationRequest(prompt="a b c d", max_tokens=2))
    assert (short.text, short.finish_reason) == ("Echo: a", "length")


async def test_deepseek_model_names_and_key_override(
    deepseek: DeepSeekProvider, fake_openai_server: FakeOpenAIServer
) -> None:
    for requested, upstream in [
        ("deepseek-v3", "deepseek-chat"),
        ("deepseek-r1", "deepseek-reasoner"),
        ("deepseek-chat", "deepseek-chat"),
        ("some-future-model", "some-future-model"),
        (None, "deepseek-chat"),
    ]:
        result = await deepseek.generate(GenerationRequest(prompt="hi", model=requested))
        assert fake_openai_server.requests[-1]["body"]["model"] == upstream
        assert result.model == (requested or "deepseek-v3")
        assert result.upstream_model == upstream
    assert fake_openai_server.requests[-1]["authorization"] == f"Bearer {SECRET}"
    await deepseek.generate(GenerationRequest(prompt="hi", api_key=USER_SECRET))
    assert fake_openai_server.requests[-1]["authorization"] == f"Bearer {USER_SECRET}"

    keyless = DeepSeekProvider(base_url=fake_openai_server.base_url)
    try:
        with pytest.raises(ProviderNotConfigured) as info:
            await keyless.generate(GenerationRequest(prompt="hi"))
        assert "DEEPEXEC_SERVER_DEEPSEEK_KEY" in info.value.message
        assert "X-DeepSeek-Key" in info.value.message
        ok = await keyless.generate(GenerationRequest(prompt="hi", api_key=USER_SECRET))
        assert ok.text == "Echo: hi"
    finally:
        await keyless.close()


async def test_stream_delivers_chunks_as_they_are_produced(
    openai_provider: OpenAICompatibleProvider, fake_openai_server: FakeOpenAIServer
) -> None:
    fake_openai_server.chunk_delay = 0.04
    prompt = " ".join(f"w{i}" for i in range(9))
    arrivals: list[float] = []
    chunks: list[StreamChunk] = []
    async for chunk in openai_provider.stream(GenerationRequest(prompt=prompt)):
        arrivals.append(time.monotonic())
        chunks.append(chunk)
    deltas = [c.delta for c in chunks if not c.done]
    assert len(deltas) == 10
    assert "".join(deltas) == "Echo: " + prompt
    # The first chunk reached us before the fake produced its last one ...
    produced = fake_openai_server.chunk_times
    assert len(produced) == 10
    assert arrivals[0] < produced[-1]
    # ... and each chunk arrived before the fake produced the one two steps later:
    # chunks are relayed one by one, not gathered.
    for i in range(len(produced) - 2):
        assert arrivals[i] < produced[i + 2]
    final = chunks[-1]
    assert final.done and final.delta == "" and final.finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == 10
    assert final.generation_time is not None and final.generation_time >= 350
    body = fake_openai_server.requests[-1]["body"]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_stream_closed_early_releases_the_connection(
    openai_provider: OpenAICompatibleProvider, fake_openai_server: FakeOpenAIServer
) -> None:
    fake_openai_server.chunk_delay = 0.05
    stream = openai_provider.stream(GenerationRequest(prompt="a b c d e f g h i j k l"))
    first = await anext(stream)
    assert first.delta == "Echo:"
    await stream.aclose()  # type: ignore[attr-defined]
    # The provider keeps working for the next request.
    result = await openai_provider.generate(GenerationRequest(prompt="again"))
    assert result.text == "Echo: again"


@pytest.mark.parametrize(
    ("status", "code", "retry_after"),
    [
        (401, "authentication_error", None),
        (429, "rate_limit_exceeded", 7.0),
        (500, "generation_error", None),
        (503, "generation_error", None),
    ],
)
async def test_http_errors_map_to_protocol_codes(
    openai_provider: OpenAICompatibleProvider,
    fake_openai_server: FakeOpenAIServer,
    status: int,
    code: str,
    retry_after: float | None,
) -> None:
    fake_openai_server.fail_status = status
    with pytest.raises(ProviderError) as info:
        await openai_provider.generate(GenerationRequest(prompt="hi"))
    with pytest.raises(ProviderError) as streamed:
        await drain(openai_provider.stream(GenerationRequest(prompt="hi")))
    for error in (info.value, streamed.value):
        assert error.code == code
        assert error.http_status == status
        assert error.retry_after == retry_after
        for text in (str(error), repr(error), error.message):
            assert SECRET not in text and "sk-" not in text


async def test_rejected_key_is_never_echoed(fake_openai_server: FakeOpenAIServer) -> None:
    fake_openai_server.api_key = "the-right-key"
    provider = DeepSeekProvider(api_key=SECRET, base_url=fake_openai_server.base_url)
    try:
        with pytest.raises(ProviderError) as info:
            await provider.generate(GenerationRequest(prompt="hi", api_key=USER_SECRET))
    finally:
        await provider.close()
    error = info.value
    assert error.code == "authentication_error"
    rendered = " ".join([str(error), repr(error), repr(provider), str(error.__cause__)])
    for secret in (SECRET, USER_SECRET, USER_SECRET[:5], USER_SECRET[-4:]):
        assert secret not in rendered
    request = GenerationRequest(prompt="hi", api_key=USER_SECRET)
    assert USER_SECRET not in repr(request)


async def test_unreachable_provider_is_a_generation_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    provider = OpenAICompatibleProvider(
        base_url=f"http://127.0.0.1:{port}/v1", api_key=SECRET, default_model="m"
    )
    try:
        with pytest.raises(ProviderError) as info:
            await provider.generate(GenerationRequest(prompt="hi"))
        assert info.value.code == "generation_error" and info.value.http_status is None
        assert SECRET not in str(info.value)
        with pytest.raises(ProviderError) as streamed:
            await drain(provider.stream(GenerationRequest(prompt="hi")))
        assert streamed.value.code == "generation_error"
    finally:
        await provider.close()


async def test_registry_routes_by_model_and_never_leaks_the_deepseek_key(
    fake_openai_server: FakeOpenAIServer,
) -> None:
    async with FakeOpenAIServer() as local_llm:
        registry = providers_from_settings(
            deepseek_base_url=fake_openai_server.base_url,
            openai_base_url=local_llm.base_url,
            openai_model="llama3",
        )
        try:
            # No DeepSeek key anywhere: DeepSeek names fall back to the local default model.
            result = await registry.generate(GenerationRequest(prompt="hi", model="deepseek-v3"))
            assert result.model == "deepseek-v3" and result.upstream_model == "llama3"
            assert local_llm.requests[-1]["body"]["model"] == "llama3"
            # Other names go to the local server as they are.
            await registry.generate(GenerationRequest(prompt="hi", model="qwen2"))
            assert local_llm.requests[-1]["body"]["model"] == "qwen2"
            # With the caller's DeepSeek key, DeepSeek names go to DeepSeek ...
            chunks = await drain(
                registry.stream(
                    GenerationRequest(prompt="hi", model="deepseek-r1", api_key=USER_SECRET)
                )
            )
            assert chunks[-1].done and chunks[-1].model == "deepseek-r1"
            assert fake_openai_server.requests[-1]["body"]["model"] == "deepseek-reasoner"
            assert fake_openai_server.requests[-1]["authorization"] == f"Bearer {USER_SECRET}"
            # ... and the key is never sent to the other server.
            await registry.generate(
                GenerationRequest(prompt="hi", model="qwen2", api_key=USER_SECRET)
            )
            assert all(r["authorization"] is None for r in local_llm.requests)
        finally:
            await registry.close()


async def test_registry_without_any_provider_explains_configuration() -> None:
    registry = providers_from_env({})
    try:
        assert not registry.configured
        with pytest.raises(ProviderNotConfigured) as info:
            await registry.generate(GenerationRequest(prompt="hi"))
        message = info.value.message
        assert info.value.code == "provider_not_configured"
        for hint in (
            "DEEPEXEC_SERVER_DEEPSEEK_KEY",
            "DEEPEXEC_SERVER_OPENAI_BASE_URL",
            "DEEPEXEC_SERVER_OPENAI_API_KEY",
            "DEEPEXEC_SERVER_OPENAI_MODEL",
            "X-DeepSeek-Key",
        ):
            assert hint in message
        with pytest.raises(ProviderNotConfigured):
            registry.stream(GenerationRequest(prompt="hi", model="llama3"))
        # A per-request key is enough for DeepSeek names and others.
        route = registry.route(GenerationRequest(prompt="hi", model="x", api_key=USER_SECRET))
        assert route.provider is registry.deepseek
    finally:
        await registry.close()


async def test_registry_from_env_reads_server_variables() -> None:
    registry = providers_from_env(
        {
            "DEEPEXEC_SERVER_DEEPSEEK_KEY": SECRET,
            "DEEPEXEC_SERVER_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
            "DEEPEXEC_SERVER_OPENAI_MODEL": "llama3",
        }
    )
    try:
        assert registry.configured
        description = registry.describe()
        assert description["deepseek"]["server_key"] is True
        assert description["openai_compatible"]["default_model"] == "llama3"
        assert SECRET not in repr(registry) and SECRET not in repr(description)
        default = registry.route(GenerationRequest(prompt="hi"))
        assert default.provider is registry.deepseek
        assert default.request.model == "deepseek-v3"
    finally:
        await registry.close()


def test_retry_after_and_redaction_helpers() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = datetime(2026, 11, 26, 13, 40, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 26 Nov 2026 13:40:30 GMT", now=now) == 30.0
    text = f"bad key {SECRET} and Bearer abcdefghijklmnop and custom-secret-value"
    cleaned = redact(text, ["custom-secret-value"])
    assert SECRET not in cleaned and "abcdefghijklmnop" not in cleaned
    assert "custom-secret-value" not in cleaned


async def test_concurrent_streams_interleave(
    openai_provider: OpenAICompatibleProvider, fake_openai_server: FakeOpenAIServer
) -> None:
    fake_openai_server.chunk_delay = 0.03
    request = GenerationRequest(prompt="a b c d e")
    started = time.monotonic()
    await drain(openai_provider.stream(request))
    single = time.monotonic() - started
    started = time.monotonic()
    results = await asyncio.gather(*(drain(openai_provider.stream(request)) for _ in range(5)))
    together = time.monotonic() - started
    assert all("".join(c.delta for c in r) == "Echo: a b c d e" for r in results)
    # Side by side, five streams take far less than five times one stream.
    assert together < 3 * single
