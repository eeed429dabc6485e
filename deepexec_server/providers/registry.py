"""Choosing a text provider for a request, and building providers from settings.

The server has at most two providers: DeepSeek (always present, so that a client's
own ``X-DeepSeek-Key`` works even when the server has no key) and one
OpenAI-compatible server (present when ``DEEPEXEC_SERVER_OPENAI_BASE_URL`` is set).

"A DeepSeek key is available" means: the request carries ``X-DeepSeek-Key``, or the
server has ``DEEPEXEC_SERVER_DEEPSEEK_KEY``. The request's model decides:

==========================  =================================================================
requested model             served by
==========================  =================================================================
none                        DeepSeek ``deepseek-v3`` if a DeepSeek key is available, else the
                            OpenAI-compatible server's default model
``deepseek-v3``,            DeepSeek if a DeepSeek key is available; else the
``deepseek-r1``,            OpenAI-compatible server's default model (so the SDK's default
``deepseek-*``              model works on a server that only has, say, Ollama; the result's
                            ``model`` names the model that actually answered)
any other name              the OpenAI-compatible server, name passed through; without one,
                            DeepSeek if a DeepSeek key is available
==========================  =================================================================

When nothing fits, :class:`ProviderNotConfigured` explains how to configure one. A
request's DeepSeek key is only ever sent to DeepSeek: it is dropped from requests
routed to the OpenAI-compatible server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from typing import Any

from attrs import define, evolve

from .base import (
    GenerationRequest,
    GenerationResult,
    ProviderNotConfigured,
    StreamChunk,
    TextProvider,
)
from .deepseek import DEEPSEEK_BASE_URL, DEEPSEEK_DEFAULT_MODEL, DeepSeekProvider
from .openai_compat import OpenAICompatibleProvider

__all__ = [
    "NOT_CONFIGURED_MESSAGE",
    "ProviderRegistry",
    "Route",
    "providers_from_env",
    "providers_from_settings",
]

NOT_CONFIGURED_MESSAGE = (
    "no text generation provider is configured on this server. Either set "
    "DEEPEXEC_SERVER_DEEPSEEK_KEY (DeepSeek), or set DEEPEXEC_SERVER_OPENAI_BASE_URL and "
    "DEEPEXEC_SERVER_OPENAI_MODEL (plus DEEPEXEC_SERVER_OPENAI_API_KEY if the endpoint needs "
    "one) for any OpenAI-compatible server such as Ollama, vLLM or llama.cpp; or send your "
    "own DeepSeek key with each request in the X-DeepSeek-Key header (deepseek_key in the SDK)"
)


@define(frozen=True, kw_only=True)
class Route:
    """Where a request goes: the provider and the request to send it (model resolved)."""

    provider: TextProvider
    request: GenerationRequest


class ProviderRegistry:
    """Routes generation requests to a provider by model name (see the module docstring)."""

    def __init__(
        self,
        *,
        deepseek: DeepSeekProvider | None = None,
        openai: OpenAICompatibleProvider | None = None,
    ) -> None:
        self.deepseek = deepseek
        self.openai = openai

    def __repr__(self) -> str:
        return f"ProviderRegistry(deepseek={self.deepseek!r}, openai={self.openai!r})"

    @property
    def configured(self) -> bool:
        """Whether the server itself can generate text (without a per-request key)."""
        return self.openai is not None or (self.deepseek is not None and self.deepseek.has_key)

    def describe(self) -> dict[str, Any]:
        """What is configured, for health reports (never a key)."""
        return {
            "deepseek": None
            if self.deepseek is None
            else {"base_url": self.deepseek.base_url, "server_key": self.deepseek.has_key},
            "openai_compatible": None
            if self.openai is None
            else {"base_url": self.openai.base_url, "default_model": self.openai.default_model},
        }

    def route(self, request: GenerationRequest) -> Route:
        """Pick the provider for ``request``; raises :class:`ProviderNotConfigured`."""
        deepseek_ok = self.deepseek is not None and self.deepseek.can_serve(request)
        model = request.model or None
        if model is None or DeepSeekProvider.is_deepseek_model(model):
            if deepseek_ok:
                assert self.deepseek is not None
                return Route(
                    provider=self.deepseek,
                    request=evolve(request, model=model or DEEPSEEK_DEFAULT_MODEL),
                )
            if self.openai is not None:
                substitute = self.openai.default_model or model
                return Route(
                    provider=self.openai, request=evolve(request, model=substitute, api_key=None)
                )
        else:
            if self.openai is not None:
                return Route(provider=self.openai, request=evolve(request, api_key=None))
            if deepseek_ok:
                assert self.deepseek is not None
                return Route(provider=self.deepseek, request=request)
        raise ProviderNotConfigured(NOT_CONFIGURED_MESSAGE)

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Route and generate the whole text; ``model`` in the result is as requested."""
        route = self.route(request)
        result = await route.provider.generate(route.request)
        return evolve(result, model=request.model or result.model)

    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Route (raising :class:`ProviderNotConfigured` at once) and stream.

        Errors of the provider surface at the first ``__anext__``; pull one chunk
        before committing to a streaming response.
        """
        route = self.route(request)
        return _renamed(route.provider.stream(route.request), request.model)

    async def close(self) -> None:
        """Close every provider."""
        for provider in (self.deepseek, self.openai):
            if provider is not None:
                await provider.close()


async def _renamed(
    chunks: AsyncIterator[StreamChunk], model: str | None
) -> AsyncIterator[StreamChunk]:
    """Report the model as requested on every chunk; close the provider's stream with ours."""
    try:
        async for chunk in chunks:
            yield chunk if not model or chunk.model == model else evolve(chunk, model=model)
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()


def providers_from_settings(
    *,
    deepseek_key: str | None = None,
    deepseek_base_url: str | None = None,
    openai_base_url: str | None = None,
    openai_api_key: str | None = None,
    openai_model: str | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 120.0,
    request_timeout: float = 600.0,
) -> ProviderRegistry:
    """Build the registry from explicit settings (empty strings count as unset)."""
    deepseek = DeepSeekProvider(
        api_key=deepseek_key or None,
        base_url=deepseek_base_url or DEEPSEEK_BASE_URL,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        request_timeout=request_timeout,
    )
    openai = None
    if openai_base_url:
        openai = OpenAICompatibleProvider(
            base_url=openai_base_url,
            api_key=openai_api_key or None,
            default_model=openai_model or None,
            name="openai-compatible",
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_timeout=request_timeout,
        )
    return ProviderRegistry(deepseek=deepseek, openai=openai)


def providers_from_env(environ: Mapping[str, str] | None = None) -> ProviderRegistry:
    """Build the registry from ``DEEPEXEC_SERVER_*`` environment variables.

    ``DEEPEXEC_SERVER_DEEPSEEK_KEY``, ``DEEPEXEC_SERVER_DEEPSEEK_BASE_URL`` (default
    ``https://api.deepseek.com``), ``DEEPEXEC_SERVER_OPENAI_BASE_URL``,
    ``DEEPEXEC_SERVER_OPENAI_API_KEY``, ``DEEPEXEC_SERVER_OPENAI_MODEL``.
    """
    env = os.environ if environ is None else environ
    return providers_from_settings(
        deepseek_key=env.get("DEEPEXEC_SERVER_DEEPSEEK_KEY"),
        deepseek_base_url=env.get("DEEPEXEC_SERVER_DEEPSEEK_BASE_URL"),
        openai_base_url=env.get("DEEPEXEC_SERVER_OPENAI_BASE_URL"),
        openai_api_key=env.get("DEEPEXEC_SERVER_OPENAI_API_KEY"),
        openai_model=env.get("DEEPEXEC_SERVER_OPENAI_MODEL"),
    )
