"""DeepExecClient specifics: callable from a plain thread, from inside a running event loop
and from many threads at once; streams are plain iterators; closing leaves no thread, no
unclosed session and no pending task behind."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aioresponses import CallbackResult, aioresponses

from deepexec_sdk import DeepExecAsyncClient, DeepExecClient, JobOutputEvent
from deepexec_sdk.exceptions import MCPError, MCPValidationError

from .conftest import (
    BASE,
    CLIENT_TEST,
    JOB_ID,
    ScriptedServer,
    chunk_event,
    done_event,
    example,
    execution,
    generation,
    job,
    ok,
    output_event,
    result_event,
    sent,
    status_event,
    submitted,
)

pytestmark = CLIENT_TEST

EXECUTE = f"{BASE}/v1/execute"
HEALTH = f"{BASE}/v1/health"


def _sync_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "deepexec-sync-client"]


@pytest.fixture
def client() -> Iterator[DeepExecClient]:
    before = set(_sync_threads())
    with DeepExecClient(endpoint=BASE, max_retries=0) as made:
        yield made
    assert set(_sync_threads()) <= before


def _echo(url: Any, **kwargs: Any) -> CallbackResult:
    """An execute answer whose output is the code that was sent."""
    code = orjson.loads(kwargs["data"])["input"]["code"]
    return CallbackResult(payload=ok("code_execution", execution(code)))


def test_sync_client_from_the_main_thread(client: DeepExecClient, mock_http: aioresponses) -> None:
    mock_http.post(EXECUTE, callback=_echo)

    result = client.execute_code_and_wait("print('Hello, World!')", "python")

    assert result.output == "print('Hello, World!')"
    # the calling thread ran the private loop itself: no hand-off, no helper thread
    assert client._loop.thread is None
    assert client._loop.loop is not None and not client._loop.loop.is_running()


def test_sync_client_from_a_plain_thread(client: DeepExecClient, mock_http: aioresponses) -> None:
    mock_http.get(HEALTH, payload=example("HealthResponse"))
    outcome: list[Any] = []

    def worker() -> None:
        try:
            outcome.append(client.health().status)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            outcome.append(exc)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join(10)

    assert outcome == ["ok"]


async def test_sync_client_inside_a_running_event_loop(mock_http: aioresponses) -> None:
    # as in a Jupyter cell: this coroutine runs on a loop and calls the blocking client
    running = asyncio.get_running_loop()
    mock_http.post(EXECUTE, callback=_echo)
    mock_http.get(HEALTH, payload=example("HealthResponse"))

    with DeepExecClient(endpoint=BASE, max_retries=0) as client:
        assert client.health().status == "ok"
        result = client.execute_code_and_wait("print(1)", "python")
        assert client._loop.thread is not None

    assert result.output == "print(1)"
    assert asyncio.get_running_loop() is running and running.is_running()


def test_eight_threads_at_once_each_get_their_own_answer(
    client: DeepExecClient, mock_http: aioresponses
) -> None:
    mock_http.post(EXECUTE, callback=_echo, repeat=True)
    barrier = threading.Barrier(8)

    def worker(n: int) -> list[str]:
        barrier.wait()
        return [
            client.execute_code_and_wait(f"print({n}, {i})", "python").output for i in range(10)
        ]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(worker, range(8)))

    for n, outputs in enumerate(results):
        assert outputs == [f"print({n}, {i})" for i in range(10)]
    assert len(sent(mock_http, "POST", EXECUTE)) == 80
    # one private loop serves them all: run by a caller, or by the client's one helper thread
    assert len(_sync_threads()) <= 1


def test_one_private_loop_per_client_and_close_leaves_no_thread(mock_http: aioresponses) -> None:
    mock_http.get(HEALTH, payload=example("HealthResponse"), repeat=True)
    before = set(threading.enumerate())

    clients = [DeepExecClient(endpoint=BASE, max_retries=0) for _ in range(3)]
    for c in clients:
        c.health()
    loops = [c._loop.loop for c in clients]
    assert len({id(loop) for loop in loops}) == 3

    async def from_a_running_loop() -> None:  # as in Jupyter: helper threads run the loops
        for c in clients:
            c.health()

    asyncio.run(from_a_running_loop())
    threads = [c._loop.thread for c in clients]
    assert len({id(t) for t in threads}) == 3 and all(t and t.is_alive() for t in threads)
    for c in clients:
        c.close()
        c.close()  # idempotent

    assert all(t is not None and not t.is_alive() for t in threads)
    assert all(loop is not None and loop.is_closed() for loop in loops)
    assert set(threading.enumerate()) <= before


def test_a_client_never_used_starts_no_thread() -> None:
    before = set(threading.enumerate())

    with DeepExecClient(endpoint=BASE):
        pass

    assert set(threading.enumerate()) <= before


def test_close_leaves_no_unclosed_session_or_pending_task(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="asyncio")
    script: list[bytes | float | str] = []
    for i in range(40):
        script += [chunk_event(i, f"w{i} "), 0.02]
    server.on_sse("POST", "/v1/generate/stream", [*script, done_event(generation())])
    server.on_json("GET", "/v1/health", (200, example("HealthResponse")))

    before = set(threading.enumerate())
    client = DeepExecClient(endpoint=server.url, max_retries=0)
    assert client.health().status == "ok"
    stream = client.generate_text_stream("Hi")
    for piece in stream:
        if piece == "w1 ":
            break
    loop = client._loop.loop
    client.close()
    del client, stream
    gc.collect()

    assert loop is not None and loop.is_closed()
    assert set(threading.enumerate()) <= before
    complaints = [
        r.getMessage()
        for r in caplog.records
        if "Unclosed" in r.getMessage()
        or "destroyed" in r.getMessage()
        or r.levelno >= logging.WARNING
    ]
    assert complaints == []


def test_a_forgotten_client_is_closed_when_collected(mock_http: aioresponses) -> None:
    mock_http.get(HEALTH, payload=example("HealthResponse"), repeat=True)
    client = DeepExecClient(endpoint=BASE, max_retries=0)
    client.health()
    loop = client._loop.loop

    del client
    gc.collect()

    assert loop is not None and loop.is_closed()

    second = DeepExecClient(endpoint=BASE, max_retries=0)

    async def from_a_running_loop(c: DeepExecClient) -> None:  # starts the helper thread
        c.health()

    asyncio.run(from_a_running_loop(second))
    thread = second._loop.thread
    del second
    gc.collect()

    assert thread is not None
    thread.join(5)
    assert not thread.is_alive()


def test_a_closed_client_raises_mcp_error(mock_http: aioresponses) -> None:
    client = DeepExecClient(endpoint=BASE)
    client.close()

    with pytest.raises(MCPError, match="closed"):
        client.health()
    with pytest.raises(MCPError, match="closed"):
        client.list_jobs()
    assert mock_http.requests == {}


async def test_a_closed_async_client_raises_mcp_error(mock_http: aioresponses) -> None:
    mock_http.get(HEALTH, payload=example("HealthResponse"))
    client = DeepExecAsyncClient(endpoint=BASE)
    async with client:
        await client.health()

    with pytest.raises(MCPError, match="closed"):
        await client.health()
    await client.close()  # idempotent
    assert len(sent(mock_http, "GET", HEALTH)) == 1


def _never_answer(server: ScriptedServer) -> None:
    """The scripted server holds a job's event stream open without a final event, and an
    execution without an answer (aiohttp's session close does not interrupt a body being
    read: a waiting call would hang there)."""
    server.on_sse("GET", f"/v1/jobs/{JOB_ID}/events", [status_event("RUNNING", 0), "wait:never"])

    async def execute(request: Any) -> Any:
        await server.flag("never").wait()

    server.on("POST", "/v1/execute", execute)


def _until(condition: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_close_ends_the_calls_other_threads_are_waiting_in(server: ScriptedServer) -> None:
    _never_answer(server)
    client = DeepExecClient(endpoint=server.url, max_retries=2)
    errors: dict[str, BaseException] = {}

    def call(name: str, fn: Any) -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - what the call raised is the result
            errors[name] = exc

    threads = [
        threading.Thread(target=call, args=("wait", lambda: client.wait_for_job(JOB_ID))),
        threading.Thread(
            target=call, args=("execute", lambda: client.execute_code_and_wait("1", "python"))
        ),
    ]
    for thread in threads:
        thread.start()
    _until(lambda: len(server.requests) == 2)  # both are waiting on the server

    started = time.monotonic()
    client.close()
    for thread in threads:
        thread.join(5)

    assert not any(thread.is_alive() for thread in threads)
    assert time.monotonic() - started < 3
    assert set(errors) == {"wait", "execute"}
    for exc in errors.values():
        assert type(exc) is MCPError and "closed" in str(exc)
    assert _sync_threads() == []
    server.release("never")


async def test_close_ends_the_calls_other_tasks_are_waiting_in(server: ScriptedServer) -> None:
    _never_answer(server)
    client = DeepExecAsyncClient(endpoint=server.url, max_retries=2)
    calls = [
        asyncio.ensure_future(client.wait_for_job(JOB_ID)),
        asyncio.ensure_future(client.execute_code_and_wait("1", "python")),
    ]
    await asyncio.to_thread(_until, lambda: len(server.requests) == 2)

    await client.close()
    async with asyncio.timeout(3):
        outcomes = await asyncio.gather(*calls, return_exceptions=True)

    for exc in outcomes:
        assert type(exc) is MCPError and "closed" in str(exc), repr(exc)
    server.release("never")


def test_validation_errors_reach_the_caller_and_nothing_is_sent(
    client: DeepExecClient, mock_http: aioresponses
) -> None:
    with pytest.raises(MCPValidationError) as info:
        client.generate_text_and_wait("Hi", temperature=3)

    assert info.value.path == "input.temperature"
    assert mock_http.requests == {}


# --------------------------------------------------------------------------- streams


def test_text_stream_is_a_plain_iterator(server: ScriptedServer) -> None:
    server.on_sse(
        "POST",
        "/v1/generate/stream",
        [chunk_event(0, "a"), chunk_event(1, "b"), done_event(generation("ab"))],
    )

    with DeepExecClient(endpoint=server.url) as client:
        stream = client.generate_text_stream("Hi")
        iterator = iter(stream)
        assert isinstance(iterator, Iterator)
        assert next(iterator) == "a"
        assert next(iterator) == "b"
        with pytest.raises(StopIteration):
            next(iterator)

        assert stream.result is not None and stream.result.text == "ab"
        assert stream.usage is not None and stream.text == "ab"


def test_breaking_out_of_a_text_stream_closes_it(server: ScriptedServer) -> None:
    script: list[bytes | float | str] = []
    for i in range(50):
        script += [chunk_event(i, str(i)), 0.02]
    server.on_sse("POST", "/v1/generate/stream", [*script, done_event(generation())])

    with DeepExecClient(endpoint=server.url) as client:
        started = time.monotonic()
        for piece in client.generate_text_stream("count"):
            if piece == "1":
                break
        deadline = time.monotonic() + 2
        while not server.disconnects and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.disconnects == 1
        assert time.monotonic() - started < 0.9
        # the client is still good for more
        server.on_sse(
            "POST", "/v1/generate/stream", [chunk_event(0, "x"), done_event(generation("x"))]
        )
        assert list(client.generate_text_stream("again")) == ["x"]


def test_text_stream_close_stops_receiving(server: ScriptedServer) -> None:
    script: list[bytes | float | str] = []
    for i in range(50):
        script += [chunk_event(i, str(i)), 0.02]
    server.on_sse("POST", "/v1/generate/stream", [*script, done_event(generation())])

    with DeepExecClient(endpoint=server.url) as client:
        stream = client.generate_text_stream("count")
        iterator = iter(stream)
        assert next(iterator) == "0"
        iterator.close()  # type: ignore[attr-defined]
        stream.close()
        deadline = time.monotonic() + 2
        while not server.disconnects and time.monotonic() < deadline:
            time.sleep(0.01)

    assert server.disconnects == 1


def test_execution_stream_is_a_plain_iterator(server: ScriptedServer) -> None:
    server.on_json("POST", "/v1/jobs", (200, ok("submit_job", submitted())))
    server.on_sse(
        "GET",
        f"/v1/jobs/{JOB_ID}/events",
        [
            status_event(),
            output_event("stdout", "1\n"),
            output_event("stderr", "2\n"),
            result_event(job("COMPLETED", 100, result=execution("1\n", stderr="2\n"))),
        ],
    )
    seen: list[tuple[str, str]] = []

    with DeepExecClient(endpoint=server.url) as client:
        stream = client.execute_code_stream(
            "x",
            "python",
            on_stdout=lambda d: seen.append(("out", d)),
            on_stderr=lambda d: seen.append(("err", d)),
        )
        assert stream.job_id == JOB_ID
        chunks = list(stream)

    assert all(isinstance(c, JobOutputEvent) for c in chunks)
    assert [c.data for c in chunks] == ["1\n", "2\n"]
    assert seen == [("out", "1\n"), ("err", "2\n")]
    assert stream.result is not None and stream.result.output == "1\n2\n"
    assert stream.job is not None and stream.job.progress == 100


def test_list_jobs_is_a_plain_iterator(client: DeepExecClient, mock_http: aioresponses) -> None:
    import re

    ids = [f"job_{i:032x}" for i in range(3)]
    mock_http.get(
        re.compile(r"^http://deepexec\.test/v1/jobs\?limit=2$"),
        payload=ok("list_jobs", {"jobs": [job(job_id=i) for i in ids[:2]], "next_cursor": "n"}),
    )
    mock_http.get(
        re.compile(r"^http://deepexec\.test/v1/jobs\?.*cursor=n.*$"),
        payload=ok("list_jobs", {"jobs": [job(job_id=ids[2])], "next_cursor": None}),
    )

    jobs = client.list_jobs(page_size=2)
    assert isinstance(jobs, Iterator)
    first = next(jobs)
    rest = list(jobs)

    assert [first.job_id, *(j.job_id for j in rest)] == ids


def test_a_connection_the_server_closed_between_calls_is_not_reused() -> None:
    """The server drops idle keep-alive connections quickly (as uvicorn's 5 s do); between
    two calls no loop runs in the client. The next POST, which is never retried, must see
    the close and take a new connection instead of failing on the dead one."""
    scripted = ScriptedServer(keepalive_timeout=0.05)
    scripted.start()
    try:
        scripted.on_json("POST", "/v1/execute", (200, example("CodeExecutionResponse")))
        with DeepExecClient(endpoint=scripted.url, max_retries=0) as client:
            for _ in range(5):
                assert client.execute_code_and_wait("print(1)", "python", check=False)
                time.sleep(0.2)  # the server closes the idle connection meanwhile
        assert len(scripted.requests) == 5
    finally:
        scripted.stop()
