"""Provider-neutral types of text generation: requests, results, stream chunks, errors.

Secrets: a request's ``api_key`` (the per-request ``X-DeepSeek-Key`` override) is
excluded from ``repr``; providers never put a key in a log line or an exception
message (upstream error text is redacted before it is quoted).
"""

from __future__ import annotations

import math
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Iterable
from typing import Any, Final

from attrs import define, field

__all__ = [
    "AUTHENTICATION_ERROR",
    "GENERATION_ERROR",
    "PROVIDER_NOT_CONFIGURED",
    "RATE_LIMIT_EXCEEDED",
    "GenerationRequest",
    "GenerationResult",
    "ProviderError",
    "ProviderNotConfigured",
    "StreamChunk",
    "TextProvider",
    "Usage",
    "estimate_tokens",
    "redact",
]

AUTHENTICATION_ERROR: Final = "authentication_error"
RATE_LIMIT_EXCEEDED: Final = "rate_limit_exceeded"
GENERATION_ERROR: Final = "generation_error"
PROVIDER_NOT_CONFIGURED: Final = "provider_not_configured"


def _to_stop(value: str | Iterable[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    return tuple(value)


@define(frozen=True, kw_only=True)
class GenerationRequest:
    """One text generation request, provider-neutral.

    ``model`` ``None`` means "the server's default". ``api_key`` is the caller's own
    provider key (``X-DeepSeek-Key``); it is honoured only by providers that accept
    per-request keys (DeepSeek) and is never sent to any other host.
    """

    prompt: str
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = field(default=None, converter=_to_stop)
    system_prompt: str | None = None
    api_key: str | None = field(default=None, repr=False)


@define(frozen=True, kw_only=True)
class Usage:
    """Token counts of one generation."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    def to_dict(self) -> dict[str, int]:
        """JSON-able form."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@define(frozen=True, kw_only=True)
class GenerationResult:
    """A complete generation.

    ``model`` is the model as the client requested it (``deepseek-v3``);
    ``upstream_model`` is the name the provider reported (``deepseek-chat``).
    ``generation_time`` is the measured wall-clock time in milliseconds.
    """

    text: str
    model: str
    usage: Usage
    finish_reason: str | None
    generation_time: float
    upstream_model: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (the protocol's text generation result fields)."""
        return {
            "text": self.text,
            "model": self.model,
            "usage": self.usage.to_dict(),
            "finish_reason": self.finish_reason,
            "generation_time": self.generation_time,
        }


@define(frozen=True, kw_only=True)
class StreamChunk:
    """One piece of a streamed generation.

    A stream yields chunks with a non-empty ``delta`` as the provider produces them,
    then exactly one last chunk with ``done=True``, an empty ``delta``, the
    ``finish_reason``, the ``usage`` and the ``generation_time`` (ms). ``model`` is the
    model as requested, ``upstream_model`` the name the provider reported.
    """

    delta: str
    model: str
    upstream_model: str
    finish_reason: str | None = None
    usage: Usage | None = None
    generation_time: float | None = None
    done: bool = False


class ProviderError(Exception):
    """A text generation failure, carrying the protocol error ``code``.

    ``http_status`` is the upstream provider's HTTP status when there was one (not the
    status the server should answer with); ``retry_after`` (seconds) comes from the
    upstream ``Retry-After`` header on rate limiting. The message never contains a key.
    """

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        http_status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.http_status = http_status

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, "
            f"retry_after={self.retry_after!r}, http_status={self.http_status!r})"
        )


class ProviderNotConfigured(ProviderError):
    """No provider can serve the request; the message says how to configure one."""

    def __init__(self, message: str) -> None:
        super().__init__(PROVIDER_NOT_CONFIGURED, message)


class TextProvider(ABC):
    """A source of generated text (DeepSeek, any OpenAI-compatible server, ...)."""

    #: Short identifier used in logs and health reports (never contains a key).
    name: str = "provider"

    @abstractmethod
    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Generate the whole text at once."""

    @abstractmethod
    def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Generate incrementally: yields :class:`StreamChunk` as they are produced.

        Errors before the first chunk (bad key, rate limit, unreachable) are raised by
        the first ``__anext__``, so a caller can pull one chunk before it commits to a
        streaming response.
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Release network resources."""


_SECRET_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_\-*.]{4,}"),
    re.compile(r"(?i)\bbearer\s+[A-Za-z0-9_\-.~+/=*]{8,}"),
)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove the given secrets and anything shaped like an API key from ``text``."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[REDACTED]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[REDACTED]", text)
    return text


def estimate_tokens(text: str) -> int:
    """Rough token count (about 4 characters per token), used only when a provider
    reports no usage."""
    return math.ceil(len(text) / 4) if text else 0
