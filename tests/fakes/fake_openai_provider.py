"""TEST DOUBLE: a fake OpenAI-compatible chat completions server.

This is not a language model. It serves ``POST /v1/chat/completions`` (and
``GET /v1/models``) the way OpenAI, DeepSeek, Ollama, vLLM or llama.cpp do, so the
server's text providers can be exercised over a real loopback HTTP connection:

* The answer is deterministic: ``"Echo: "`` followed by the words of the last user
  message, cut to ``max_tokens`` words (then ``finish_reason`` is ``"length"``, else
  ``"stop"``). One word is one token; the prompt's token count is the number of words
  of all messages.
* ``stream: true`` sends one SSE event per word, ``chunk_delay`` seconds apart, then
  a final event with the finish reason, a usage event when
  ``stream_options.include_usage`` is set, and ``data: [DONE]``.
* ``api_key``: when set, requests must carry ``Authorization: Bearer <api_key>`` or
  get a 401 (whose message echoes part of the key, as OpenAI's does, so tests can
  check that providers redact it).
* ``fail_status``: answer every request with this status (401, 429 with
  ``Retry-After: <retry_after>``, 500, ...).
* Every request is recorded in ``requests`` (path, Authorization header, JSON body);
  the monotonic time at which each streamed chunk was written is recorded in
  ``chunk_times``.

Use it as an async context manager, as the ``fake_openai_server`` pytest fixture, or
standalone for a demo::

    python -m tests.fakes.fake_openai_provider --port 8765 [--chunk-delay 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

__all__ = ["FakeOpenAIServer", "fake_openai_server", "fake_reply_words", "main"]


def fake_reply_words(prompt: str) -> list[str]:
    """The words of the fake's full answer to ``prompt``."""
    return ["Echo:", *prompt.split()]


def _count_prompt_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(len(str(m.get("content", "")).split()) for m in messages)


class FakeOpenAIServer:
    """TEST DOUBLE of an OpenAI-compatible server on ``127.0.0.1`` (see module docstring)."""

    def __init__(
        self,
        *,
        api_key: str | None = None,
        chunk_delay: float = 0.0,
        fail_status: int | None = None,
        retry_after: str = "7",
        model_name: str | None = None,
    ) -> None:
        self.api_key = api_key
        self.chunk_delay = chunk_delay
        self.fail_status = fail_status
        self.retry_after = retry_after
        #: When set, answers report this model name instead of the requested one.
        self.model_name = model_name
        self.requests: list[dict[str, Any]] = []
        self.chunk_times: list[float] = []
        self.port: int | None = None
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (``http://127.0.0.1:<port>/v1``)."""
        if self.port is None:
            raise RuntimeError("the fake server is not running")
        return f"http://127.0.0.1:{self.port}/v1"

    def app(self) -> web.Application:
        """The aiohttp application."""
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat_completions)
        app.router.add_get("/v1/models", self._models)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> FakeOpenAIServer:
        """Listen on ``host:port`` (port 0: a free port, see :attr:`port`)."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        address = self._runner.addresses[0]
        self.port = int(address[1])
        return self

    async def stop(self) -> None:
        """Stop listening and close open connections."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeOpenAIServer:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- handlers -------------------------------------------------------------------------

    def _error(self, status: int, message: str, **headers: str) -> web.Response:
        kind = {401: "invalid_request_error", 429: "rate_limit_error"}.get(status, "server_error")
        body = {"error": {"message": message, "type": kind, "code": None}}
        return web.json_response(body, status=status, headers=headers)

    def _check(self, request: web.Request) -> web.Response | None:
        auth = request.headers.get("Authorization", "")
        if self.fail_status is not None:
            status = self.fail_status
            if status == 401:
                return self._error(401, f"Incorrect API key provided: {auth[7:]}")
            if status == 429:
                return self._error(
                    429, "Rate limit reached for requests", **{"Retry-After": self.retry_after}
                )
            return self._error(status, "The server had an error while processing your request")
        if self.api_key is not None and auth != f"Bearer {self.api_key}":
            given = auth[7:]
            shown = f"{given[:5]}****{given[-4:]}" if len(given) > 9 else given
            return self._error(401, f"Incorrect API key provided: {shown}")
        return None

    async def _models(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        return web.json_response(
            {"object": "list", "data": [{"id": self.model_name or "fake-model", "object": "model"}]}
        )

    async def _chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            return self._error(400, "body is not JSON")
        self.requests.append(
            {
                "path": request.path,
                "authorization": request.headers.get("Authorization"),
                "body": body,
            }
        )
        refused = self._check(request)
        if refused is not None:
            return refused
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return self._error(400, "messages must be a non-empty list")
        model = self.model_name or str(body.get("model") or "fake-model")
        prompt = str(messages[-1].get("content", ""))
        words = fake_reply_words(prompt)
        max_tokens = body.get("max_tokens")
        finish_reason = "stop"
        if isinstance(max_tokens, int) and len(words) > max_tokens:
            words = words[:max_tokens]
            finish_reason = "length"
        usage = {
            "prompt_tokens": _count_prompt_tokens(messages),
            "completion_tokens": len(words),
            "total_tokens": _count_prompt_tokens(messages) + len(words),
        }
        created = int(time.time())
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": " ".join(words)},
                            "finish_reason": finish_reason,
                        }
                    ],
                    "usage": usage,
                }
            )

        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)

        async def send(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload)
            await response.write(f"data: {data}\n\n".encode())

        def chunk(delta: dict[str, str], reason: str | None) -> dict[str, Any]:
            return {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
            }

        await send(chunk({"role": "assistant", "content": ""}, None))
        for i, word in enumerate(words):
            if self.chunk_delay:
                await asyncio.sleep(self.chunk_delay)
            await send(chunk({"content": word if i == 0 else " " + word}, None))
            self.chunk_times.append(time.monotonic())
        await send(chunk({}, finish_reason))
        options = body.get("stream_options") or {}
        if options.get("include_usage"):
            await send(
                {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": usage,
                }
            )
        await send("[DONE]")
        await response.write_eof()
        return response


try:
    import pytest_asyncio
except ImportError:  # standalone use without the test dependencies
    pass
else:

    @pytest_asyncio.fixture
    async def fake_openai_server() -> AsyncIterator[FakeOpenAIServer]:
        """A running :class:`FakeOpenAIServer` on a free loopback port."""
        async with FakeOpenAIServer() as server:
            yield server


def main(argv: list[str] | None = None) -> None:
    """Run the fake standalone until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--chunk-delay", type=float, default=0.02)
    parser.add_argument("--api-key", default=None, help="require this bearer key")
    args = parser.parse_args(argv)

    async def serve() -> None:
        server = FakeOpenAIServer(api_key=args.api_key, chunk_delay=args.chunk_delay)
        await server.start(args.host, args.port)
        print(
            f"fake OpenAI-compatible server (TEST DOUBLE) at http://{args.host}:{server.port}/v1",
            flush=True,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await server.stop()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
