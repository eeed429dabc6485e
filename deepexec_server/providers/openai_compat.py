"""A text provider for any server speaking the OpenAI chat completions API.

Works with OpenAI itself, DeepSeek, Ollama (``http://localhost:11434/v1``), vLLM
(``http://host:8000/v1``), the llama.cpp server (``http://host:8080/v1``) and others:
``POST {base_url}/chat/completions``.

* Non-streaming: one JSON answer.
* Streaming: ``stream: true`` with ``stream_options: {"include_usage": true}``; the
  Server-Sent Events are parsed line by line as they arrive and each delta is yielded
  at once (never buffered to the end). A server that sends no usage gets an estimate
  (about four characters per token).
* Errors map to protocol codes: HTTP 401/403 -> ``authentication_error``; 429 ->
  ``rate_limit_exceeded`` (``retry_after`` from the ``Retry-After`` header); any other
  failure (other statuses, connection errors, timeouts, malformed answers, an error
  reported mid-stream) -> ``generation_error``.
* The key is sent as ``Authorization: Bearer``. It never appears in ``repr``, logs or
  exception messages; upstream error text is redacted before it is quoted, and the
  text of an authentication failure is not quoted at all.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, NoReturn

import aiohttp

from .base import (
    AUTHENTICATION_ERROR,
    GENERATION_ERROR,
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

__all__ = ["OpenAICompatibleProvider", "parse_retry_after"]

logger = logging.getLogger(__name__)

_MAX_QUOTED_ERROR = 300


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def _upstream_message(body: str) -> str:
    """The human part of an upstream error body (OpenAI style, or plain text)."""
    text = body.strip()
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        err = parsed.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
        elif isinstance(err, str):
            text = err
        elif isinstance(parsed.get("message"), str):
            text = parsed["message"]
        elif isinstance(parsed.get("detail"), str):
            text = parsed["detail"]
    text = " ".join(text.split())
    if len(text) > _MAX_QUOTED_ERROR:
        text = text[:_MAX_QUOTED_ERROR] + "..."
    return text


class OpenAICompatibleProvider(TextProvider):
    """Chat completions over aiohttp against ``base_url``.

    ``default_model`` serves requests without a model; ``model_aliases`` maps the
    names clients use to the names the upstream knows (others pass through).
    ``allow_key_override`` lets a request's ``api_key`` replace the configured key
    (only for providers whose requests carry a key meant for them); with
    ``require_key`` a missing key is :class:`ProviderNotConfigured`.
    """

    def __init__(
        self,
        *,
        base_url: str,
        api_key: str | None = None,
        default_model: str | None = None,
        model_aliases: Mapping[str, str] | None = None,
        name: str = "openai-compatible",
        allow_key_override: bool = False,
        require_key: bool = False,
        connect_timeout: float = 10.0,
        read_timeout: float = 120.0,
        request_timeout: float = 600.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.default_model = default_model
        self.model_aliases: dict[str, str] = dict(model_aliases or {})
        self.allow_key_override = allow_key_override
        self.require_key = require_key
        self._api_key = api_key or None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._request_timeout = request_timeout
        self._session = session
        self._owns_session = session is None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, base_url={self.base_url!r}, "
            f"default_model={self.default_model!r}, has_key={self.has_key})"
        )

    @property
    def has_key(self) -> bool:
        """Whether a server-side key is configured."""
        return self._api_key is not None

    def can_serve(self, request: GenerationRequest) -> bool:
        """Whether a key is available for this request (always true without ``require_key``)."""
        return not self.require_key or self._key_for(request) is not None

    def requested_model(self, model: str | None) -> str:
        """The client-facing model name: ``model``, else the default model."""
        name = model or self.default_model
        if not name:
            raise ProviderError(
                GENERATION_ERROR,
                f"no model was given and the {self.name} provider has no default model",
            )
        return name

    def upstream_model(self, model: str | None) -> str:
        """The model name sent upstream for a client-facing ``model`` (aliases applied)."""
        name = self.requested_model(model)
        return self.model_aliases.get(name, name)

    # -- TextProvider -------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        """Non-streaming chat completion."""
        key = self._key_or_raise(request)
        requested = self.requested_model(request.model)
        model = self.upstream_model(request.model)
        payload = self._payload(request, model, stream=False)
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(total=self._request_timeout, connect=self._connect_timeout)
        with self._mapped_errors(key):
            async with self._client().post(
                f"{self.base_url}/chat/completions",
                json=payload,
                headers=self._headers(key),
                timeout=timeout,
            ) as resp:
                if resp.status != 200:
                    await self._raise_for_status(resp, key)
                try:
                    body = await resp.json(content_type=None)
                except ValueError:
                    self._malformed("the answer is not JSON")
        if not isinstance(body, dict):
            self._malformed("the answer is not a JSON object")
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            self._malformed("the answer has no choices")
        message = choices[0].get("message") or {}
        text = message.get("content") if isinstance(message, dict) else None
        if text is None:
            text = ""
        if not isinstance(text, str):
            self._malformed("the answer's content is not text")
        finish_reason = choices[0].get("finish_reason")
        return GenerationResult(
            text=text,
            model=requested,
            upstream_model=str(body.get("model") or model),
            usage=self._usage(body.get("usage"), request, text),
            finish_reason=finish_reason if isinstance(finish_reason, str) else None,
            generation_time=(time.monotonic() - started) * 1000.0,
        )

    async def stream(self, request: GenerationRequest) -> AsyncIterator[StreamChunk]:
        """Streaming chat completion; see :meth:`TextProvider.stream`."""
        key = self._key_or_raise(request)
        requested = self.requested_model(request.model)
        model = self.upstream_model(request.model)
        payload = self._payload(request, model, stream=True)
        started = time.monotonic()
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._connect_timeout, sock_read=self._read_timeout
        )
        answered_model = model
        finish_reason: str | None = None
        usage: Usage | None = None
        parts: list[str] = []
        done = False
        with self._mapped_errors(key):
            async with self._client().post(
                f"{self.base_url}/chat/completions",
                json=payload,
                headers={**self._headers(key), "Accept": "text/event-stream"},
                timeout=timeout,
            ) as resp:
                if resp.status != 200:
                    await self._raise_for_status(resp, key)
                async for data in _sse_data(resp):
                    if data.strip() == "[DONE]":
                        done = True
                        break
                    try:
                        event = json.loads(data)
                    except ValueError:
                        self._malformed("a stream event is not JSON")
                    if not isinstance(event, dict):
                        self._malformed("a stream event is not a JSON object")
                    if "error" in event:
                        raise ProviderError(
                            GENERATION_ERROR,
                            "the provider reported an error mid-stream: "
                            + redact(_upstream_message(json.dumps(event)), [key]),
                        )
                    if isinstance(event.get("model"), str):
                        answered_model = event["model"]
                    if event.get("usage"):
                        usage = self._usage(event["usage"], request, "")
                    choices = event.get("choices") or []
                    if not choices or not isinstance(choices[0], dict):
                        continue
                    choice = choices[0]
                    if isinstance(choice.get("finish_reason"), str):
                        finish_reason = choice["finish_reason"]
                    delta = choice.get("delta") or {}
                    content = delta.get("content") if isinstance(delta, dict) else None
                    if isinstance(content, str) and content:
                        parts.append(content)
                        yield StreamChunk(
                            delta=content, model=requested, upstream_model=answered_model
                        )
        if not done and finish_reason is None:
            raise ProviderError(GENERATION_ERROR, "the provider's stream ended unexpectedly")
        if usage is None:
            usage = self._usage(None, request, "".join(parts))
        yield StreamChunk(
            delta="",
            model=requested,
            upstream_model=answered_model,
            finish_reason=finish_reason,
            usage=usage,
            generation_time=(time.monotonic() - started) * 1000.0,
            done=True,
        )

    async def close(self) -> None:
        """Close the HTTP session if this provider created it."""
        if self._session is not None and self._owns_session:
            await self._session.close()
        self._session = None

    # -- internals ----------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._owns_session = True
        return self._session

    def _key_for(self, request: GenerationRequest) -> str | None:
        if self.allow_key_override and request.api_key:
            return request.api_key
        return self._api_key

    def _key_or_raise(self, request: GenerationRequest) -> str | None:
        key = self._key_for(request)
        if key is None and self.require_key:
            raise ProviderNotConfigured(
                f"the {self.name} provider has no API key: set DEEPEXEC_SERVER_DEEPSEEK_KEY "
                "on the server or send your own key in the X-DeepSeek-Key header"
            )
        return key

    @staticmethod
    def _headers(key: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    @staticmethod
    def _payload(request: GenerationRequest, model: str, *, stream: bool) -> dict[str, Any]:
        messages: list[dict[str, str]] = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        payload: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if request.max_tokens is not None:
            payload["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            payload["temperature"] = request.temperature
        if request.top_p is not None:
            payload["top_p"] = request.top_p
        if request.stop:
            payload["stop"] = list(request.stop)
        if stream:
            payload["stream_options"] = {"include_usage": True}
        return payload

    @staticmethod
    def _usage(raw: Any, request: GenerationRequest, text: str) -> Usage:
        if isinstance(raw, dict):
            try:
                prompt = int(raw.get("prompt_tokens") or 0)
                completion = int(raw.get("completion_tokens") or 0)
                total = int(raw.get("total_tokens") or prompt + completion)
                return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=total)
            except (TypeError, ValueError):
                pass
        prompt = estimate_tokens((request.system_prompt or "") + request.prompt)
        completion = estimate_tokens(text)
        return Usage(
            prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
        )

    def _malformed(self, what: str) -> NoReturn:
        raise ProviderError(GENERATION_ERROR, f"the {self.name} provider answered badly: {what}")

    async def _raise_for_status(self, resp: aiohttp.ClientResponse, key: str | None) -> NoReturn:
        status = resp.status
        try:
            body = await resp.text(errors="replace")
        except (TimeoutError, aiohttp.ClientError):
            body = ""
        if status in (401, 403):
            raise ProviderError(
                AUTHENTICATION_ERROR,
                f"the {self.name} provider rejected the API key (HTTP {status})",
                http_status=status,
            )
        quoted = redact(_upstream_message(body), [key, self._api_key])
        if status == 429:
            raise ProviderError(
                RATE_LIMIT_EXCEEDED,
                f"the {self.name} provider is rate limiting requests (HTTP 429)"
                + (f": {quoted}" if quoted else ""),
                retry_after=parse_retry_after(resp.headers.get("Retry-After")),
                http_status=status,
            )
        raise ProviderError(
            GENERATION_ERROR,
            f"the {self.name} provider failed (HTTP {status})" + (f": {quoted}" if quoted else ""),
            http_status=status,
        )

    @contextmanager
    def _mapped_errors(self, key: str | None) -> Any:
        """Turn transport failures into ``generation_error`` (no URL, no key, no headers)."""
        started = time.monotonic()
        try:
            yield
        except ProviderError:
            raise
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            logger.warning(
                "%s provider timed out after %.1f s", self.name, time.monotonic() - started
            )
            raise ProviderError(
                GENERATION_ERROR, f"the {self.name} provider did not answer in time"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            logger.warning("%s provider unreachable: %s", self.name, type(exc).__name__)
            raise ProviderError(
                GENERATION_ERROR, f"could not connect to the {self.name} provider"
            ) from None
        except (aiohttp.ClientError, ValueError) as exc:
            detail = redact(str(exc), [key, self._api_key])
            logger.warning("%s provider connection failed: %s", self.name, detail)
            raise ProviderError(
                GENERATION_ERROR,
                f"the connection to the {self.name} provider failed ({type(exc).__name__})",
            ) from None


async def _sse_data(resp: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """Yield the ``data`` of each Server-Sent Event as soon as its blank line arrives."""
    data_lines: list[str] = []
    async for raw in resp.content:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if not line:
            if data_lines:
                yield "\n".join(data_lines)
                data_lines = []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data_lines.append(value)
    if data_lines:
        yield "\n".join(data_lines)
