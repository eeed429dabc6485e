"""The DeepSeek provider: the OpenAI-compatible provider pointed at DeepSeek's API.

Model names clients may use, and what is sent to DeepSeek:

=================  ===================  ==========================================
client model       DeepSeek model       notes
=================  ===================  ==========================================
``deepseek-v3``    ``deepseek-chat``    the default model
``deepseek-r1``    ``deepseek-reasoner`` reasoning model (its reasoning_content is
                                        not part of the returned text)
anything else      passed through       e.g. ``deepseek-chat``, ``deepseek-reasoner``
=================  ===================  ==========================================

The key used is the request's own (the ``X-DeepSeek-Key`` header) when it has one,
else the server's ``DEEPEXEC_SERVER_DEEPSEEK_KEY``; with neither, requests fail with
:class:`~deepexec_server.providers.base.ProviderNotConfigured`.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

import aiohttp

from .openai_compat import OpenAICompatibleProvider

__all__ = [
    "DEEPSEEK_BASE_URL",
    "DEEPSEEK_DEFAULT_MODEL",
    "DEEPSEEK_MODEL_ALIASES",
    "DeepSeekProvider",
]

DEEPSEEK_BASE_URL: Final = "https://api.deepseek.com"
DEEPSEEK_DEFAULT_MODEL: Final = "deepseek-v3"
DEEPSEEK_MODEL_ALIASES: Final = MappingProxyType(
    {"deepseek-v3": "deepseek-chat", "deepseek-r1": "deepseek-reasoner"}
)


class DeepSeekProvider(OpenAICompatibleProvider):
    """DeepSeek's chat completions API, with the model alias table above."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str = DEEPSEEK_BASE_URL,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        request_timeout: float = 600.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        super().__init__(
            base_url=base_url,
            api_key=api_key,
            default_model=DEEPSEEK_DEFAULT_MODEL,
            model_aliases=DEEPSEEK_MODEL_ALIASES,
            name="deepseek",
            allow_key_override=True,
            require_key=True,
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            request_timeout=request_timeout,
            session=session,
        )

    @staticmethod
    def is_deepseek_model(model: str) -> bool:
        """Whether ``model`` names a DeepSeek model (an alias or ``deepseek-*``)."""
        return model in DEEPSEEK_MODEL_ALIASES or model.startswith("deepseek-")
