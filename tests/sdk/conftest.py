"""Fixtures of the SDK client tests.

* ``facade`` (parametrized: ``async`` and ``sync``): a client behind one awaitable calling
  convention, so each behaviour is tested once for DeepExecAsyncClient and once for
  DeepExecClient (whose calls run in a worker thread, the way a blocking caller would).
* ``mock_http``: aioresponses, for plain request/response operations.
* ``server``: a real aiohttp.web server on 127.0.0.1 (its own thread and loop) whose
  routes each test scripts, for everything that streams (SSE).
* ``isolated_config`` / ``no_asyncio_complaints``: used by every client test module
  (``pytestmark = CLIENT_TEST``): no machine config leaks in; no asyncio error leaks out.
* ``sleeps``: records the retry policy's back-off delays instead of sleeping them.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_asyncio
from aiohttp import web
from aioresponses import aioresponses

import deepexec_sdk._client as client_module
from deepexec_sdk import DeepExecAsyncClient, DeepExecClient
from deepexec_sdk._retry import call_with_retries

BASE = "http://deepexec.test"
JOB_ID = "job_0123456789abcdef0123456789abcdef"
JOB_ID_2 = "job_fedcba9876543210fedcba9876543210"
SESSION_ID = "sess_0123456789abcdef0123456789abcdef"
TS = "2026-11-26T13:40:00.123Z"

DEEPSEEK_KEY = "sk-deepseek-SECRET-0123456789abcdef"
E2B_KEY = "e2b_SECRET_e2bkey_0123456789abcdef"
API_KEY = "tok-SECRET-server-access-0123456789"
SECRETS = (DEEPSEEK_KEY, E2B_KEY, API_KEY)

_BUNDLE = Path(__file__).resolve().parents[2] / "generated" / "schema"
_DEFS: dict[str, Any] = json.loads((_BUNDLE / "deepexec.bundle.schema.json").read_text())["$defs"]


def example(name: str) -> dict[str, Any]:
    """A deep copy of the schema's first example of ``name``."""
    value: dict[str, Any] = json.loads(json.dumps(_DEFS[name]["examples"][0]))
    return value


# --------------------------------------------------------------------------- messages


def ok(op: str, output: Any, session_id: str | None = None) -> dict[str, Any]:
    """A success envelope of operation ``op`` (``code_execution`` ...)."""
    return {
        "protocol_version": "2024.1",
        "type": f"{op}_response",
        "session_id": session_id,
        "status": "success",
        "output": output,
        "metadata": {},
    }


def err(op: str, code: str, message: str = "it failed", details: Any = None) -> dict[str, Any]:
    """An error envelope of operation ``op``."""
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return {
        "protocol_version": "2024.1",
        "type": f"{op}_response",
        "status": "error",
        "error": error,
        "metadata": {},
    }


def execution(
    output: str = "Hello, World!\n",
    *,
    exit_code: int = 0,
    timed_out: bool = False,
    stderr: str = "",
) -> dict[str, Any]:
    return {
        "type": "code_execution_result",
        "output": output + stderr,
        "stdout": output,
        "stderr": stderr,
        "exit_code": exit_code,
        "signal": None,
        "timed_out": timed_out,
        "stdout_truncated": False,
        "stderr_truncated": False,
        "execution_time": 21.4,
        "memory_usage": 9437184,
        "language": "python",
    }


def generation(text: str = "Quantum computers use qubits.", total: int = 12) -> dict[str, Any]:
    return {
        "type": "text_generation_result",
        "text": text,
        "model": "deepseek-v3",
        "generation_time": 812.5,
        "usage": {"prompt_tokens": 9, "completion_tokens": total - 9, "total_tokens": total},
        "finish_reason": "stop",
    }


def job(
    status: str = "RUNNING",
    progress: int = 0,
    *,
    job_id: str = JOB_ID,
    job_type: str = "code_execution",
    result: Any = None,
    error: Any = None,
    cancel_reason: str | None = None,
) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "name": "my_job",
        "job_type": job_type,
        "status": status,
        "progress": progress,
        "result": result,
        "error": error,
        "created_at": TS,
        "started_at": TS if status != "PENDING" else None,
        "finished_at": TS if status in ("COMPLETED", "FAILED", "CANCELED") else None,
        "canceled_at": TS if status == "CANCELED" else None,
        "cancel_reason": cancel_reason,
        "tags": [],
        "session_id": None,
    }


def submitted(job_id: str = JOB_ID) -> dict[str, Any]:
    return {"job_id": job_id, "status": "PENDING", "created_at": TS}


def submitted_event(job_id: str = JOB_ID, status: str = "PENDING") -> bytes:
    """The first event of submit_job_stream."""
    return sse(
        "job_submitted_event",
        {"type": "job_submitted_event", "job": {**submitted(job_id), "status": status}},
    )


def sse(kind: str, data: dict[str, Any]) -> bytes:
    """One server-sent event frame."""
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


def status_event(status: str = "RUNNING", progress: int = 0, job_id: str = JOB_ID) -> bytes:
    return sse(
        "job_status_event",
        {
            "type": "job_status_event",
            "job_id": job_id,
            "status": status,
            "progress": progress,
            "timestamp": TS,
        },
    )


def progress_event(progress: int, job_id: str = JOB_ID) -> bytes:
    return sse(
        "job_progress_event",
        {"type": "job_progress_event", "job_id": job_id, "progress": progress, "timestamp": TS},
    )


def output_event(stream: str, data: str, job_id: str = JOB_ID) -> bytes:
    return sse(
        "job_output_event",
        {
            "type": "job_output_event",
            "job_id": job_id,
            "stream": stream,
            "data": data,
            "timestamp": TS,
        },
    )


def result_event(job_status: dict[str, Any]) -> bytes:
    return sse(
        "job_result_event",
        {
            "type": "job_result_event",
            "job_id": job_status["job_id"],
            "job": job_status,
            "timestamp": TS,
        },
    )


def chunk_event(index: int, delta: str) -> bytes:
    return sse(
        "text_generation_chunk", {"type": "text_generation_chunk", "index": index, "delta": delta}
    )


def done_event(result: dict[str, Any]) -> bytes:
    return sse("text_generation_done", {"type": "text_generation_done", "result": result})


def stream_error_event(code: str, message: str = "the provider failed") -> bytes:
    return sse(
        "stream_error", {"type": "stream_error", "error": {"code": code, "message": message}}
    )


# --------------------------------------------------------------------------- environment

CLIENT_TEST = [
    pytest.mark.usefixtures("isolated_config", "no_asyncio_complaints"),
    # "coroutine was never awaited", "unclosed transport/session" fail the test
    pytest.mark.filterwarnings("error"),
]


@pytest.fixture
def isolated_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """No DEEPEXEC_* variable or config file of the machine leaks into a test."""
    import os

    for name in list(os.environ):
        if name.startswith("DEEPEXEC_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DEEPEXEC_CONFIG", os.devnull)


@pytest.fixture
def no_asyncio_complaints(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test whose clients leave "Unclosed client session", "Task was destroyed but
    it is pending!" or any other asyncio error behind."""
    caplog.set_level(logging.WARNING, logger="asyncio")
    yield
    problems = [
        r.getMessage()
        for r in caplog.records
        if r.name == "asyncio" and r.levelno >= logging.WARNING
    ]
    assert problems == []


# --------------------------------------------------------------------------- retry sleeps


class Sleeps(list[float]):
    """The back-off delays the retry loop asked for (nothing is actually slept)."""


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> Sleeps:
    recorded = Sleeps()

    async def fake_sleep(delay: float) -> None:
        recorded.append(delay)
        await asyncio.sleep(0)

    monkeypatch.setattr(
        client_module, "call_with_retries", functools.partial(call_with_retries, sleep=fake_sleep)
    )
    return recorded


# --------------------------------------------------------------------------- clients


class Facade:
    """One calling convention over both clients: ``await facade("method", ...)``.

    For the sync client each call runs in a worker thread (as a blocking caller would),
    so a test's event loop, and the scripted server, keep running meanwhile.
    """

    def __init__(self, kind: str, **config: Any) -> None:
        self.kind = kind
        config.setdefault("endpoint", BASE)
        config.setdefault("retry_delay", 0.0)
        self.client: DeepExecAsyncClient | DeepExecClient
        if kind == "async":
            self.client = DeepExecAsyncClient(**config)
        else:
            self.client = DeepExecClient(**config)

    @property
    def is_async(self) -> bool:
        return self.kind == "async"

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        fn = getattr(self.client, method)
        if self.is_async:
            return await fn(*args, **kwargs)
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def iterate(self, method: str, *args: Any, **kwargs: Any) -> list[Any]:
        """All items of an iterating method (list_jobs, job_events)."""
        fn = getattr(self.client, method)
        if self.is_async:
            return [item async for item in fn(*args, **kwargs)]
        return await asyncio.to_thread(lambda: list(fn(*args, **kwargs)))

    async def drain(self, stream: Any, until: Callable[[Any], bool] | None = None) -> list[Any]:
        """Iterate a stream handle returned by the client, optionally stopping early."""

        def take_sync() -> list[Any]:
            items = []
            for item in stream:
                items.append(item)
                if until is not None and until(item):
                    break
            return items

        if not self.is_async:
            return await asyncio.to_thread(take_sync)
        items = []
        async for item in stream:
            items.append(item)
            if until is not None and until(item):
                break
        return items

    async def run(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (a sync-side call on a handle, such as ``stream.kill``)."""
        if self.is_async:
            result = fn()
            return await result if isinstance(result, Awaitable) else result
        return await asyncio.to_thread(fn)

    async def aclose(self) -> None:
        if isinstance(self.client, DeepExecAsyncClient):
            await self.client.close()
        else:
            await asyncio.to_thread(self.client.close)


@pytest.fixture(params=["async", "sync"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest_asyncio.fixture
async def make_facade(kind: str) -> AsyncIterator[Callable[..., Facade]]:
    """``make_facade(**config)``: a client of the parametrized kind, closed afterwards
    (a sync client's loop thread must be gone then)."""
    made: list[Facade] = []

    def make(**config: Any) -> Facade:
        facade = Facade(kind, **config)
        made.append(facade)
        return facade

    yield make
    for facade in made:
        await facade.aclose()
        if isinstance(facade.client, DeepExecClient):
            thread = facade.client._loop.thread
            assert thread is None or not thread.is_alive()


@pytest_asyncio.fixture
async def facade(make_facade: Callable[..., Facade]) -> Facade:
    """A client of the parametrized kind against BASE, no retries unless a test asks."""
    return make_facade(max_retries=0)


@pytest.fixture
def mock_http() -> Iterator[aioresponses]:
    with aioresponses() as mocked:
        yield mocked


def sent(mocked: aioresponses, method: str, url: str) -> list[Any]:
    """The recorded requests (aioresponses RequestCall) of ``method url``."""
    from yarl import URL

    return list(mocked.requests.get((method, URL(url)), []))


def sent_json(call: Any) -> Any:
    data = call.kwargs.get("data")
    return orjson.loads(data) if data else None


# --------------------------------------------------------------------------- real server


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Recorded:
    def __init__(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        query: Any,
        peer: Any = None,
    ):
        self.peer = peer  # the client's address and port: one per connection
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body
        self.query = dict(query)
        self.at = time.monotonic()

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None


class ScriptedServer:
    """A real HTTP server on 127.0.0.1 whose routes tests script with :meth:`on`.

    It runs on its own thread and loop, so both the async client (on the test's loop)
    and the sync client (on its private loop) talk to it over real sockets.
    """

    def __init__(self, *, keepalive_timeout: float = 75.0) -> None:
        self.keepalive_timeout = keepalive_timeout  # seconds an idle connection is kept
        self.handlers: dict[tuple[str, str], Handler] = {}
        self.requests: list[Recorded] = []
        self.marks: dict[str, float] = {}
        self.flags: dict[str, asyncio.Event] = {}
        self.disconnects = 0
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self.url = ""

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(
            app,
            shutdown_timeout=0.5,
            handle_signals=False,
            keepalive_timeout=self.keepalive_timeout,
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def flag(self, name: str) -> asyncio.Event:
        """A named event, to be set and awaited by handlers (on the server's loop)."""
        if name not in self.flags:
            self.flags[name] = asyncio.Event()
        return self.flags[name]

    def release(self, name: str) -> None:
        """Set the flag ``name`` from any thread (handlers waiting on it go on)."""
        event = self.flag(name)
        self._loop.call_soon_threadsafe(event.set)

    def on(self, method: str, path: str, handler: Handler) -> None:
        self.handlers[(method, path)] = handler

    def on_json(self, method: str, path: str, *answers: tuple[int, Any]) -> None:
        """Answer ``method path`` with these (status, envelope) in turn; the last repeats."""
        queue = list(answers)

        async def handler(request: web.Request) -> web.Response:
            status, body = queue.pop(0) if len(queue) > 1 else queue[0]
            return web.json_response(body, status=status)

        self.on(method, path, handler)

    def on_sse(self, method: str, path: str, *scripts: list[bytes | float | str]) -> None:
        """Answer ``method path`` with server-sent events, one script per connection (the
        last repeats). A script item is bytes to write, a float to sleep, ``"cut"`` to drop
        the connection abruptly, ``"mark:NAME"`` to note the time in ``marks``, or
        ``"wait:NAME"`` to wait until a handler sets ``flag(NAME)``."""
        queue = list(scripts)

        async def handler(request: web.Request) -> web.StreamResponse:
            script = queue.pop(0) if len(queue) > 1 else queue[0]
            return await self.play(request, script)

        self.on(method, path, handler)

    async def play(
        self, request: web.Request, script: list[bytes | float | str]
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Request-ID": "req_stream"}
        )
        await resp.prepare(request)
        try:
            for item in script:
                if isinstance(item, bytes):
                    await resp.write(item)
                elif isinstance(item, float):
                    await asyncio.sleep(item)
                elif item == "cut":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                elif item.startswith("mark:"):
                    self.marks[item[5:]] = time.monotonic()
                elif item.startswith("wait:"):
                    await self.flag(item[5:]).wait()
            await resp.write_eof()
        except (ConnectionResetError, asyncio.CancelledError):
            self.disconnects += 1  # the client left
        return resp

    def paths(self, method: str | None = None) -> list[str]:
        return [r.path for r in self.requests if method is None or r.method == method]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests.append(
            Recorded(
                request.method,
                request.path,
                dict(request.headers),
                body,
                request.query,
                request.transport.get_extra_info("peername") if request.transport else None,
            )
        )
        handler = self.handlers.get((request.method, request.path))
        if handler is None:
            return web.json_response(
                err("unknown", "not_found", f"no route {request.method} {request.path}"),
                status=404,
            )
        return await handler(request)


@pytest.fixture(scope="session")
def _server_instance() -> Iterator[ScriptedServer]:
    srv = ScriptedServer()
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def server(_server_instance: ScriptedServer) -> ScriptedServer:
    """The scripted server, with no routes and nothing recorded."""
    _server_instance.handlers.clear()
    _server_instance.requests.clear()
    _server_instance.marks.clear()
    _server_instance.flags.clear()
    _server_instance.disconnects = 0
    return _server_instance


@pytest_asyncio.fixture
async def live(make_facade: Callable[..., Facade], server: ScriptedServer) -> Facade:
    """A client of the parametrized kind against the scripted server."""
    return make_facade(endpoint=server.url, max_retries=0)
