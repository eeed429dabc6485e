"""Text generation providers: DeepSeek and any OpenAI-compatible server, and the
registry that routes a request to one of them by model name."""

from .base import (
    AUTHENTICATION_ERROR,
    GENERATION_ERROR,
    PROVIDER_NOT_CONFIGURED,
    RATE_LIMIT_EXCEEDED,
    GenerationRequest,
    GenerationResult,
    ProviderError,
    ProviderNotConfigured,
    StreamChunk,
    TextProvider,
    Usage,
    estimate_tokens,
    redact,
)
from .deepseek import (
    DEEPSEEK_BASE_URL,
    DEEPSEEK_DEFAULT_MODEL,
    DEEPSEEK_MODEL_ALIASES,
    DeepSeekProvider,
)
from .openai_compat import OpenAICompatibleProvider, parse_retry_after
from .registry import (
    NOT_CONFIGURED_MESSAGE,
    ProviderRegistry,
    Route,
    providers_from_env,
    providers_from_settings,
)

__all__ = [
    "AUTHENTICATION_ERROR",
    "DEEPSEEK_BASE_URL",
    "DEEPSEEK_DEFAULT_MODEL",
    "DEEPSEEK_MODEL_ALIASES",
    "GENERATION_ERROR",
    "NOT_CONFIGURED_MESSAGE",
    "PROVIDER_NOT_CONFIGURED",
    "RATE_LIMIT_EXCEEDED",
    "DeepSeekProvider",
    "GenerationRequest",
    "GenerationResult",
    "OpenAICompatibleProvider",
    "ProviderError",
    "ProviderNotConfigured",
    "ProviderRegistry",
    "Route",
    "StreamChunk",
    "TextProvider",
    "Usage",
    "estimate_tokens",
    "parse_retry_after",
    "providers_from_env",
    "providers_from_settings",
    "redact",
]
